/*
 * libmla: conventions shared by every part of the API.
 *
 * Status codes, the thread-local error message, the version, element types and the tensor view
 * that getters hand out. See doc/api.md for the rules these follow (ownership, threading, ABI).
 */
#ifndef MLA_COMMON_H
#define MLA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include <mla/version.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MLA_BUILDING_LIBRARY) && defined(__GNUC__)
#  define MLA_API __attribute__((visibility("default")))
#else
#  define MLA_API
#endif

/* Every fallible call returns one of these. Values are fixed forever; new ones are appended. */
typedef enum mla_status {
    MLA_OK = 0,
    MLA_ERR_INVALID_ARGUMENT = 1, /* a NULL, out-of-range or contradictory argument */
    MLA_ERR_SHAPE_MISMATCH = 2,   /* tensors whose shapes do not fit together */
    MLA_ERR_OUT_OF_MEMORY = 3,
    MLA_ERR_IO = 4,               /* the operating system refused a read, write or rename */
    MLA_ERR_BAD_FORMAT = 5,       /* a file or buffer that is not what it claims to be */
    MLA_ERR_UNSUPPORTED = 6,      /* valid, but not implemented for this type or geometry */
    MLA_ERR_CAPACITY = 7,         /* a cache or buffer is full */
    MLA_ERR_NUMERICAL = 8,        /* NaN/Inf in input, or a factorization that failed */
    MLA_ERR_INTERNAL = 9,         /* a bug in libmla: please report it */
    MLA_ERR_CANCELLED = 10,       /* a progress callback asked to stop */
} mla_status;

/* Number of status values; every value below it has a message. */
#define MLA_STATUS_COUNT 11

/* A short, static, English description of a status. Never NULL, also for unknown values. */
MLA_API const char *mla_status_string(mla_status status);

/*
 * The detailed message of the last failure on the calling thread: what was wrong and where (layer,
 * tensor, shape, value). Valid until the next libmla call on this thread; "" when none failed yet.
 * Calls that succeed leave it unchanged. Never NULL.
 */
MLA_API const char *mla_last_error(void);

/* Forget the calling thread's last error (mla_last_error() returns "" afterwards). */
MLA_API void mla_clear_error(void);

/* The library's version as MLA_VERSION_NUMBER and as "major.minor.patch": compare them with the
 * header's to detect a mismatch between the headers built against and the library loaded. */
MLA_API int mla_version(void);
MLA_API const char *mla_version_string(void);

/* A human-readable line describing the build: BLAS/LAPACK in use, CPU features detected. Static. */
MLA_API const char *mla_build_info(void);

/* Element types. Values are fixed forever. */
typedef enum mla_dtype {
    MLA_DTYPE_F32 = 0,
    MLA_DTYPE_F16 = 1,  /* IEEE binary16 */
    MLA_DTYPE_BF16 = 2, /* bfloat16 */
    MLA_DTYPE_I8 = 3,   /* signed 8-bit with per-group float scales (cache storage) */
    MLA_DTYPE_I4 = 4,   /* signed 4-bit, two per byte, with per-group float scales (cache storage) */
    MLA_DTYPE_I32 = 5,  /* plain int32 (index tensors) */
    MLA_DTYPE_F64 = 6,
} mla_dtype;

/* Bits per element of a dtype, or 0 for an unknown value. */
MLA_API int mla_dtype_bits(mla_dtype dtype);
/* "f32", "f16", "bf16", "i8", "i4", "i32", "f64"; "?" for an unknown value. Never NULL. */
MLA_API const char *mla_dtype_name(mla_dtype dtype);

/* A read-only view of a tensor owned by a libmla handle; valid while that handle lives and is not
 * modified. Row-major, contiguous. Unused trailing shape entries are 1.
 * No struct_size. Frozen for ABI 0: a view with more fields would come with new functions. */
#define MLA_TENSOR_MAX_DIMS 4
typedef struct mla_tensor {
    const char *name;  /* for example "q_proj.weight" */
    mla_dtype dtype;
    int32_t ndim;
    int64_t shape[MLA_TENSOR_MAX_DIMS];
    const void *data;
} mla_tensor;

/*
 * Progress of long work: called with the units done so far and the total. Return 0 to go on,
 * anything else to cancel: the call then fails with MLA_ERR_CANCELLED and changes nothing.
 */
typedef int (*mla_progress_fn)(void *user, int64_t done, int64_t total);

#ifdef __cplusplus
}
#endif

#endif /* MLA_COMMON_H */

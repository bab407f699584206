/* Internal helpers every module uses: errors, parameter structs, allocation, CPU features. */
#ifndef MLA_CORE_CORE_H
#define MLA_CORE_CORE_H

#include <stddef.h>
#include <stdint.h>

#include <mla/common.h>

#if defined(__GNUC__)
#  define MLA_PRINTF(f, a) __attribute__((format(printf, f, a)))
#  define MLA_INTERNAL __attribute__((visibility("hidden")))
#else
#  define MLA_PRINTF(f, a)
#  define MLA_INTERNAL
#endif

/* Record a failure for mla_last_error() and return its status, so callers can write
 * `return mla_fail(MLA_ERR_SHAPE_MISMATCH, "layer %d: wq has %lld rows, expected %lld", ...)`.
 * The message should say what was wrong and where. */
MLA_INTERNAL mla_status mla_fail(mla_status status, const char *fmt, ...) MLA_PRINTF(2, 3);

/* Prefix the current thread's last error with context ("layer 3: ") and return status. */
MLA_INTERNAL mla_status mla_fail_context(mla_status status, const char *fmt, ...) MLA_PRINTF(2, 3);

/*
 * Params structs start with size_t struct_size. mla_params_read copies the caller's struct into a
 * full-size internal copy that already holds defaults: only the bytes the caller's struct_size
 * covers are taken, so a caller built against an older, shorter struct keeps the new defaults.
 * A larger struct_size (a caller built against a newer header) is accepted: the extra fields are
 * ignored. Fails with INVALID_ARGUMENT, naming `what`, for NULL or struct_size < sizeof(size_t).
 */
MLA_INTERNAL mla_status mla_params_read(void *full, size_t full_size, const void *caller,
                                        const char *what);

/* The counterpart for *_default_params and getters: copy min(struct_size, full_size) bytes of
 * full into the caller's struct and set its struct_size. */
MLA_INTERNAL mla_status mla_params_write(void *caller, size_t struct_size, const void *full,
                                         size_t full_size, const char *what);

/* 64-byte aligned allocation; free with mla_free. NULL on failure (no error recorded). */
MLA_INTERNAL void *mla_alloc(size_t size);
MLA_INTERNAL void *mla_calloc(size_t count, size_t size);
MLA_INTERNAL void mla_free(void *p);
/* An aligned copy of n floats; NULL on failure. */
MLA_INTERNAL float *mla_dup_f32(const float *src, size_t n);
/* Fault injection for tests: after n more successful mla_alloc calls (in any thread) the next
 * one returns NULL, once; n < 0 turns it off. _pending: the count left, negative once it fired
 * (or when off). */
MLA_INTERNAL void mla__alloc_fail_after(long long n);
MLA_INTERNAL long long mla__alloc_fail_pending(void);

/* a·b without overflow: returns 1 and stores the product, or 0 on overflow. */
MLA_INTERNAL int mla_mul_size(size_t a, size_t b, size_t *out);

/* CPU features detected once at first use (x86 cpuid + xgetbv; all false elsewhere). */
typedef struct mla_cpu_features {
    int avx2;
    int fma;
    int f16c;
    int avx512f;
    int avx512bw;
    int avx512vl;
    int avx512_bf16;
    int avx512_vnni;
    int amx_bf16;        /* AMX-TILE and AMX-BF16, tile state saved by the OS (XCR0) */
    int amd;             /* vendor AuthenticAMD: tuning choices (materialized.c, kernels.c) */
} mla_cpu_features;

MLA_INTERNAL const mla_cpu_features *mla_cpu(void);

/* Number of online CPUs, at least 1. */
MLA_INTERNAL int mla_cpu_count(void);

/* Half-precision conversions (portable, round-to-nearest-even). */
MLA_INTERNAL float mla_f16_to_f32(uint16_t h);
MLA_INTERNAL uint16_t mla_f32_to_f16(float f);
MLA_INTERNAL float mla_bf16_to_f32(uint16_t h);
MLA_INTERNAL uint16_t mla_f32_to_bf16(float f);

/* Convert n elements of src (F32, F16, BF16, F64) to float32. */
MLA_INTERNAL void mla_to_f32(float *dst, const void *src, mla_dtype dtype, size_t n);

/* Wall clock in seconds (monotonic). */
MLA_INTERNAL double mla_now(void);

/* Around every call into BLAS or LAPACK (blas.c): fork() in another thread waits until none is
 * running, so a child never inherits BLIS's pool mutexes held. Not to be nested. */
MLA_INTERNAL void mla__blas_enter(void);
MLA_INTERNAL void mla__blas_leave(void);

/*
 * Worker threads (pool.c). mla__pool_run calls fn(arg, item, thread) once for every item in
 * [0, n_items) on at most n_threads threads, the calling thread among them, and returns when
 * every call has returned. Items go one at a time to whichever thread asks next, lowest first;
 * `thread` is 0 on the caller and in [1, n_threads) on workers, and no two threads run under
 * one number at once (index per-thread scratch by it). One caller at a time per pool. A NULL
 * pool, n_threads ≤ 1 or a single item runs everything on the caller.
 */
typedef struct mla__pool mla__pool;
typedef void (*mla__pool_fn)(void *arg, int64_t item, int thread);
/* Room for n_threads − 1 workers of its own (none for 1), each started when a loop first has
 * work for it (if the system refuses one, loops run on those started); or with openmp none:
 * each loop is then an OpenMP parallel region. OUT_OF_MEMORY. */
MLA_INTERNAL mla_status mla__pool_create(int n_threads, int openmp, mla__pool **out);
MLA_INTERNAL void mla__pool_destroy(mla__pool *pool);
/* Workers plus the caller: 1 for NULL. */
MLA_INTERNAL int mla__pool_threads(const mla__pool *pool);
MLA_INTERNAL void mla__pool_run(mla__pool *pool, int n_threads, int64_t n_items,
                                mla__pool_fn fn, void *arg);

#endif /* MLA_CORE_CORE_H */

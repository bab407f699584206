/* Version and dtype metadata (the build description is lib/attn/build_info.c). */
#include <time.h>

#include "core.h"

MLA_API int mla_version(void)
{
    return MLA_VERSION_NUMBER;
}

MLA_API const char *mla_version_string(void)
{
    return MLA_VERSION_STRING;
}

MLA_API int mla_dtype_bits(mla_dtype dtype)
{
    switch (dtype) {
    case MLA_DTYPE_F32: return 32;
    case MLA_DTYPE_F16: return 16;
    case MLA_DTYPE_BF16: return 16;
    case MLA_DTYPE_I8: return 8;
    case MLA_DTYPE_I4: return 4;
    case MLA_DTYPE_I32: return 32;
    case MLA_DTYPE_F64: return 64;
    }
    return 0;
}

MLA_API const char *mla_dtype_name(mla_dtype dtype)
{
    switch (dtype) {
    case MLA_DTYPE_F32: return "f32";
    case MLA_DTYPE_F16: return "f16";
    case MLA_DTYPE_BF16: return "bf16";
    case MLA_DTYPE_I8: return "i8";
    case MLA_DTYPE_I4: return "i4";
    case MLA_DTYPE_I32: return "i32";
    case MLA_DTYPE_F64: return "f64";
    }
    return "?";
}

double mla_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Version, dtype metadata and the build description. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include <blis.h>

#include "attn/kernels/kernels.h"
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

static char build_info[640];
static pthread_once_t build_info_once = PTHREAD_ONCE_INIT;

static void describe_build(void)
{
    const mla_cpu_features *f = mla_cpu();
    const mla__attn_kernels *k = mla__attn_kernels_best();
    char few[48] = "";
    if (k->nine_rows_tile > 0)
        snprintf(few, sizeof few, ", 9-row tiles: %lld tokens", (long long)k->nine_rows_tile);
    snprintf(build_info, sizeof build_info,
             "libmla %s; BLAS: BLIS %s (%s, %s threading); LAPACK: LAPACKE; "
             "CPU: %d cores, avx2=%d fma=%d f16c=%d avx512f=%d avx512bw=%d avx512vl=%d "
             "avx512_bf16=%d avx512_vnni=%d amx_bf16=%d; attention kernels: %s, bf16 products: %s%s",
             MLA_VERSION_STRING, bli_info_get_version_str(), bli_arch_string(bli_arch_query_id()),
             bli_info_get_enable_openmp() ? "OpenMP"
             : bli_info_get_enable_pthreads() ? "pthreads" : "no",
             mla_cpu_count(), f->avx2, f->fma, f->f16c, f->avx512f, f->avx512bw, f->avx512vl,
             f->avx512_bf16, f->avx512_vnni, f->amx_bf16, k->name, k->bf16_products, few);
}

MLA_API const char *mla_build_info(void)
{
    pthread_once(&build_info_once, describe_build);
    return build_info;
}

double mla_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

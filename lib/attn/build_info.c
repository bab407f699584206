/*
 * mla_build_info: the library's version, BLAS and CPU, and the attention kernels it chose. Here
 * rather than in core because it reads the kernel table: core is below every other module.
 */
#include <pthread.h>
#include <stdio.h>

#include <blis.h>

#include "attn/kernels/kernels.h"
#include "core/core.h"

static char build_info[640];
static pthread_once_t build_info_once = PTHREAD_ONCE_INIT;

static void describe_build(void)
{
    const mla_cpu_features *f = mla_cpu();
    const mla__attn_kernels *k = mla__attn_kernels_best();
    char few[48] = "", cpu[192];
    if (k->nine_rows_tile > 0)
        snprintf(few, sizeof few, ", 9-row tiles: %lld tokens", (long long)k->nine_rows_tile);
#if defined(__x86_64__) || defined(__i386__)
    snprintf(cpu, sizeof cpu,
             "%d cores, avx2=%d fma=%d f16c=%d avx512f=%d avx512bw=%d avx512vl=%d "
             "avx512_bf16=%d avx512_vnni=%d amx_bf16=%d",
             mla_cpu_count(), f->avx2, f->fma, f->f16c, f->avx512f, f->avx512bw, f->avx512vl,
             f->avx512_bf16, f->avx512_vnni, f->amx_bf16);
#else
    /* mla_cpu() detects x86 features only: elsewhere it names the architecture. */
    (void)f;
#  if defined(__aarch64__)
    const char *arch = "aarch64";
#  elif defined(__powerpc64__)
    const char *arch = "ppc64";
#  elif defined(__riscv)
    const char *arch = "riscv";
#  else
    const char *arch = "not x86";
#  endif
    snprintf(cpu, sizeof cpu, "%d cores, %s", mla_cpu_count(), arch);
#endif
    snprintf(build_info, sizeof build_info,
             "libmla %s; BLAS: BLIS %s (%s, %s threading); LAPACK: LAPACKE; CPU: %s; "
             "attention kernels: %s, bf16 products: %s%s",
             MLA_VERSION_STRING, bli_info_get_version_str(), bli_arch_string(bli_arch_query_id()),
             bli_info_get_enable_openmp() ? "OpenMP"
             : bli_info_get_enable_pthreads() ? "pthreads" : "no",
             cpu, k->name, k->bf16_products, few);
}

MLA_API const char *mla_build_info(void)
{
    pthread_once(&build_info_once, describe_build);
    return build_info;
}

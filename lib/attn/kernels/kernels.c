/* Run-time kernel selection: once, from the detected CPU features. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attn/kernels/kernels.h"

static const mla__attn_kernels *best;
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static void choose(void)
{
    best = &mla__attn_kernels_portable;
    const char *force = getenv("MLA_ATTN_KERNELS");
    if (force && strcmp(force, "portable") == 0)
        return;
#ifdef MLA_ATTN_HAVE_AVX512
    const mla_cpu_features *f = mla_cpu();
    if (f->avx512f && f->avx512bw && f->avx512vl && f->fma)
        best = &mla__attn_kernels_avx512;
#endif
}

const mla__attn_kernels *mla__attn_kernels_best(void)
{
    pthread_once(&best_once, choose);
    return best;
}

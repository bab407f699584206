/* Run-time kernel selection: once, from the detected CPU features. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attn/kernels/kernels.h"

static const mla__attn_kernels *best;
static mla__attn_kernels avx512_filled; /* the AVX-512 table with its BF16 kernels for this CPU */
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

const mla__attn_kernels *mla__attn_kernels_choose(const mla_cpu_features *f, const char *force,
                                                  mla__attn_kernels *avx512)
{
    const mla__attn_kernels *t = &mla__attn_kernels_portable;
    if (force && strcmp(force, "portable") == 0)
        return t;
#ifdef MLA_ATTN_HAVE_GENERIC
    /* Every CPU the vector extensions compile for; x86 ones with AVX2 or AVX-512 take their own
     * tables below (generic.c measured slower than avx2.c there, doc/attention.md). */
    t = &mla__attn_kernels_generic;
    if (force && strcmp(force, "generic") == 0)
        return t;
#endif
#ifdef MLA_ATTN_HAVE_AVX512
    int has_avx2 = f->avx2 && f->fma && f->f16c;
    if (has_avx2 && force && strcmp(force, "avx2") == 0)
        return &mla__attn_kernels_avx2;
    if (f->avx512f && f->avx512bw && f->avx512vl && f->fma) {
        *avx512 = mla__attn_kernels_avx512;
        /* bf16 pairs on float32 FMAs, and the few-rows absorbed path over BF16 caches in
         * float32 (bf16_few_rows_min_k): no bf16 multiply is faster here. */
        avx512->gemm_bf16 = mla__gemm_bf16_fma;
        avx512->pack_pairs = mla__attn_kernels_portable.pack_pairs;
        avx512->to_bf16 = mla__attn_kernels_portable.to_bf16;
        avx512->bf16_few_rows_min_k = INT64_MAX;
        avx512->bf16_products = "fma";
        if (f->avx512_bf16) {
            avx512->name = "avx512+bf16";
            avx512->pack_pairs = mla__pack_pairs_avx512;
            avx512->to_bf16 = mla__to_bf16_avx512;
            /* vdpbf16ps on AMD, where the bf16 products measured faster than float32 ones
             * (Zen 4, doc/attention.md). The Intel Xeon measured here issues one every 1.7
             * TSC ticks against an FMA every 0.42 (12-24 independent chains): half the
             * multiplies of the FMA kernel. */
            if (f->amd) {
                avx512->gemm_bf16 = mla__gemm_bf16_avx512;
                avx512->bf16_few_rows_min_k = 0;
                avx512->bf16_products = "vdpbf16ps";
            }
            /* AMX tiles for the bf16 products, where the CPU has them and Linux lends them;
             * they pay on few query rows from 64 latent columns (SmolLM-135M: 96 columns
             * 0.47 against 0.60 ms in float32, 48 columns 0.43 against 0.36 ms). */
            if (f->amx_bf16 && !(force && strcmp(force, "avx512") == 0) && mla__amx_request()) {
                avx512->name = "avx512+bf16+amx";
                avx512->gemm_bf16 = mla__gemm_bf16_amx;
                avx512->bf16_few_rows_min_k = 64;
                avx512->bf16_products = "amx";
            }
        }
        /* 9 query rows (SmolLM-135M's heads) in 9 × 48 blocks over 192-token tiles on AMD
         * (avx512.c, mla__gemm_bc_src_w48_avx512: Zen 4, d_kv 32 decode 6-16% faster); the
         * Intel Xeon keeps its 9 × 32 blocks over tiles sized to L1. */
        if (f->amd) {
            avx512->gemm_bc_src = mla__gemm_bc_src_w48_avx512;
            avx512->nine_rows_tile = 192;
        }
        t = avx512;
    } else if (has_avx2) {
        /* No AVX-512: 8-lane kernels with FMA and F16C. */
        t = &mla__attn_kernels_avx2;
    }
#else
    (void)f;
    (void)avx512;
#endif
    return t;
}

static void choose(void)
{
    best = mla__attn_kernels_choose(mla_cpu(), getenv("MLA_ATTN_KERNELS"), &avx512_filled);
}

const mla__attn_kernels *mla__attn_kernels_best(void)
{
    pthread_once(&best_once, choose);
    return best;
}

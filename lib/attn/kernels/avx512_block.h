/*
 * The parts every register-blocked AVX-512 product kernel shares (avx512.c, avx512_bf16.c): the
 * column masks, the zeroed accumulators and the store of an mr × (16·nv) block of C. mr and nv are
 * compile-time constants at every call site and these are always inlined, so the accumulators stay
 * in registers. The target is the subset both files compile with.
 */
#ifndef MLA_ATTN_KERNELS_AVX512_BLOCK_H
#define MLA_ATTN_KERNELS_AVX512_BLOCK_H

#include <immintrin.h>
#include <stdint.h>

#ifdef MLA_X86_EMULATED /* tests/avx512_emulated.h: over SIMDe, for CPUs without AVX-512 */
#  define BLOCK_INL static __attribute__((noinline, unused))
#else
#  define BLOCK_INL \
      static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl")))
#endif

/* Lanes of the last 16-column vector that hold columns, for `left` columns remaining. */
static inline __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

/* Masks of the block's nv column vectors (columns past ncols off) and zeroed accumulators. */
BLOCK_INL void block_begin(const int mr, const int nv, int64_t ncols, __mmask16 msk[4],
                           __m512 acc[12][4])
{
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
        msk[v] = tail_mask(ncols - 16 * v > 0 ? ncols - 16 * v : 0);
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_ps();
}

/* C = acc (+ C when beta ≠ 0) for the block's first `rows` rows and masked columns. */
BLOCK_INL void block_store(const int mr, const int nv, int64_t rows, __m512 acc[12][4],
                           const __mmask16 msk[4], float beta, float *c, ptrdiff_t ldc)
{
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        if (r < rows) {
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                float *cp = c + r * ldc + 16 * v;
                __m512 x = acc[r][v];
                if (beta != 0.0f)
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(msk[v], cp));
                _mm512_mask_storeu_ps(cp, msk[v], x);
            }
        }
    }
}

#endif /* MLA_ATTN_KERNELS_AVX512_BLOCK_H */

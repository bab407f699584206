/*
 * BF16 kernels with vdpbf16ps (AVX512_BF16): 32 bf16 multiply-adds into 16 float32 lanes per
 * instruction, twice the float32 FMA rate. kernels.c installs them only on CPUs that have the
 * extension; the portable versions (portable.c) are the reference.
 */
#include "attn/kernels/kernels.h"

#ifdef MLA_ATTN_HAVE_AVX512

#include <immintrin.h>
#include <string.h>

#include "attn/kernels/avx512_block.h"

/* tests/avx512_emulated.h compiles this file over SIMDe, for CPUs without AVX-512: without the
 * target, and with the blocks called rather than inlined (inlined, they take minutes to compile). */
#ifdef MLA_X86_EMULATED
#  define TGT
#  define INL static __attribute__((noinline, unused))
#else
#  define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#  define INL static inline __attribute__((always_inline)) TGT
#endif

/* The pair A(i, p) broadcast to every lane (a 32-bit load: no alignment assumed). */
INL __m512i pair_bcast(const uint16_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* One mr × (16·nv) block of C, mr and nv compile-time constants; columns past n masked. */
INL void bf_block(const int mr, const int nv, int64_t rows, int64_t ncols, int64_t kp,
                  const uint16_t *a, ptrdiff_t rsa, ptrdiff_t csa, const uint16_t *b,
                  ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    __m512 acc[12][4];
    __mmask16 msk[4];
    block_begin(mr, nv, ncols, msk, acc);
    for (int64_t p = 0; p < kp; p++) {
        __m512i bv[4];
        const uint16_t *bp = b + p * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            bv[v] = _mm512_maskz_loadu_epi32(msk[v], bp + 32 * v);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            if (r < rows) {
                __m512i av = pair_bcast(a + r * rsa + p * csa);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++)
                    acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
            }
        }
    }
    block_store(mr, nv, rows, acc, msk, beta, c, ldc);
}

/* Rows in blocks of equal size (9 rows: 5 + 4, not 8 + 1: every block reloads B). */
INL void bf_panel(const int mr, const int nv, int64_t m, int64_t n, int64_t kp,
                  const uint16_t *a, ptrdiff_t rsa, ptrdiff_t csa, const uint16_t *b,
                  ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    int64_t nb = (m + mr - 1) / mr;
    for (int64_t j = 0; j < n; j += 16 * nv)
        for (int64_t q = 0, i = 0; q < nb; q++) {
            int64_t rows = (m - i) / (nb - q) + ((m - i) % (nb - q) != 0);
            bf_block(mr, nv, rows, n - j, kp, a + i * rsa, rsa, csa, b + 2 * j, ldb, beta,
                     c + i * ldc + j, ldc);
            i += rows;
        }
}

TGT void mla__gemm_bf16_avx512(int64_t m, int64_t n, int64_t kp, const uint16_t *a,
                               ptrdiff_t rsa, ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb,
                               float beta, float *c, ptrdiff_t ldc)
{
    /* Panels of 4 vectors, or 3 when that masks fewer lanes (96 columns: 2 × 3, not 4 + 2). */
    int64_t nvec = (n + 15) / 16;
    if (nvec <= 1)
        bf_panel(12, 1, m, n, kp, a, rsa, csa, b, ldb, beta, c, ldc);
    else if (nvec <= 2)
        bf_panel(12, 2, m, n, kp, a, rsa, csa, b, ldb, beta, c, ldc);
    else if (nvec <= 3 || (nvec + 2) / 3 * 3 < (nvec + 3) / 4 * 4)
        bf_panel(8, 3, m, n, kp, a, rsa, csa, b, ldb, beta, c, ldc);
    else
        bf_panel(6, 4, m, n, kp, a, rsa, csa, b, ldb, beta, c, ldc);
}

TGT void mla__to_bf16_avx512(const float *x, int64_t n, uint16_t *dst)
{
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
        _mm256_mask_storeu_epi16(dst + i, m, (__m256i)v);
    }
}

TGT void mla__pack_pairs_avx512(const mla__src *s, int64_t n, int64_t col0, int64_t w,
                                uint16_t *dst, ptrdiff_t ldd, int64_t t)
{
    int64_t i = 0;
    while (i < n) {
        const unsigned char *r0 = s->p + i * s->ld + 2 * col0;
        uint16_t *d = dst + ((t + i) / 2) * ldd;
        if ((t + i) % 2 == 0 && i + 1 < n) {
            /* Two rows: lane k holds (row0[k], row1[k]) as one 32-bit word. */
            const unsigned char *r1 = r0 + s->ld;
            for (int64_t k = 0; k < w; k += 16) {
                __mmask16 mk = tail_mask(w - k);
                __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r0 + 2 * k));
                __m512i hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r1 + 2 * k));
                _mm512_mask_storeu_epi32(d + 2 * k, mk,
                                         _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
            i += 2;
        } else {
            /* A row alone in its pair (segment boundaries): every other value. */
            d += (t + i) % 2;
            for (int64_t k = 0; k < w; k++)
                memcpy(d + 2 * k, r0 + 2 * k, sizeof *d);
            i++;
        }
    }
}

#endif /* MLA_ATTN_HAVE_AVX512 */

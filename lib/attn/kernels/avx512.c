/*
 * AVX-512 float32 kernels (x86-64 with AVX-512F/BW/VL), selected at run time by kernels.c.
 * Compiled with per-function target attributes so the rest of the library keeps the baseline ISA.
 */
#include "attn/kernels/kernels.h"

#ifdef MLA_ATTN_HAVE_AVX512

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define INL static inline __attribute__((always_inline)) TGT

static inline __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

/*
 * One mr × (16·nv) block of C. mr and nv are compile-time constants at every call site, so the
 * accumulators live in registers. Columns past n are masked off.
 */
INL void bc_block(const int mr, const int nv, int64_t rows, int64_t ncols, int64_t k,
                  const float *a, ptrdiff_t rsa, ptrdiff_t csa, const float *b, ptrdiff_t ldb,
                  float beta, float *c, ptrdiff_t ldc)
{
    __m512 acc[12][4];
    __mmask16 msk[4];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
        msk[v] = tail_mask(ncols - 16 * v > 0 ? ncols - 16 * v : 0);
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        __m512 bv[4];
        const float *bk = b + kk * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            bv[v] = _mm512_maskz_loadu_ps(msk[v], bk + 16 * v);
        const float *ak = a + kk * csa;
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            if (r < rows) {
                __m512 av = _mm512_set1_ps(ak[r * rsa]);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++)
                    acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
            }
        }
    }
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

INL void bc_panel(const int mr, const int nv, int64_t m, int64_t n, int64_t k, const float *a,
                  ptrdiff_t rsa, ptrdiff_t csa, const float *b, ptrdiff_t ldb, float beta,
                  float *c, ptrdiff_t ldc)
{
    for (int64_t j = 0; j < n; j += 16 * nv) {
        int64_t i = 0;
        for (; i + mr <= m; i += mr)
            bc_block(mr, nv, mr, n - j, k, a + i * rsa, rsa, csa, b + j, ldb, beta,
                     c + i * ldc + j, ldc);
        if (i < m)
            bc_block(mr, nv, m - i, n - j, k, a + i * rsa, rsa, csa, b + j, ldb, beta,
                     c + i * ldc + j, ldc);
    }
}

/* Up to 8 columns (the query heads of one KV group): 256-bit vectors, which Zen 4 and most
 * AVX-512 parts issue twice as often as 512-bit ones. */
INL void bc_block8(const int mr, int64_t rows, int64_t ncols, int64_t k, const float *a,
                   ptrdiff_t rsa, ptrdiff_t csa, const float *b, ptrdiff_t ldb, float beta,
                   float *c, ptrdiff_t ldc)
{
    __m256 acc[12];
    __mmask8 msk = (__mmask8)((1u << ncols) - 1u);
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++)
        acc[r] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        __m256 bv = _mm256_maskz_loadu_ps(msk, b + kk * ldb);
        const float *ak = a + kk * csa;
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++)
            if (r < rows)
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(ak[r * rsa]), bv, acc[r]);
    }
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        if (r < rows) {
            float *cp = c + r * ldc;
            __m256 x = acc[r];
            if (beta != 0.0f)
                x = _mm256_add_ps(x, _mm256_maskz_loadu_ps(msk, cp));
            _mm256_mask_storeu_ps(cp, msk, x);
        }
    }
}

static TGT void gemm_bc(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                        ptrdiff_t csa, const float *b, ptrdiff_t ldb, float beta, float *c,
                        ptrdiff_t ldc)
{
    /* Narrow C (few query columns): more rows per block; wide C: as many whole vectors a row
     * as the width needs, so no block computes an all-masked vector. */
    if (n <= 8) {
        int64_t i = 0;
        for (; i + 12 <= m; i += 12)
            bc_block8(12, 12, n, k, a + i * rsa, rsa, csa, b, ldb, beta, c + i * ldc, ldc);
        if (i < m)
            bc_block8(12, m - i, n, k, a + i * rsa, rsa, csa, b, ldb, beta, c + i * ldc, ldc);
    } else if (n <= 16) {
        bc_panel(12, 1, m, n, k, a, rsa, csa, b, ldb, beta, c, ldc);
    } else if (n <= 32) {
        bc_panel(8, 2, m, n, k, a, rsa, csa, b, ldb, beta, c, ldc);
    } else if (n <= 48) {
        bc_panel(8, 3, m, n, k, a, rsa, csa, b, ldb, beta, c, ldc);
    } else {
        bc_panel(6, 4, m, n, k, a, rsa, csa, b, ldb, beta, c, ldc);
    }
}

/* Dot products along k: 2 rows of A × 4 rows of B at a time, reduced at the end. */
INL void dot_block(const int mr, const int nr, int64_t k, const float *a, ptrdiff_t lda,
                   const float *b, ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    __m512 acc[2][4];
#pragma GCC unroll 2
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int q = 0; q < nr; q++)
            acc[r][q] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk += 16) {
        __mmask16 mk = tail_mask(k - kk);
        __m512 av[2];
#pragma GCC unroll 2
        for (int r = 0; r < mr; r++)
            av[r] = _mm512_maskz_loadu_ps(mk, a + r * lda + kk);
#pragma GCC unroll 4
        for (int q = 0; q < nr; q++) {
            __m512 bv = _mm512_maskz_loadu_ps(mk, b + q * ldb + kk);
#pragma GCC unroll 2
            for (int r = 0; r < mr; r++)
                acc[r][q] = _mm512_fmadd_ps(av[r], bv, acc[r][q]);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int q = 0; q < nr; q++) {
            float s = _mm512_reduce_add_ps(acc[r][q]);
            float *cp = c + r * ldc + q;
            *cp = (beta == 0.0f ? 0.0f : *cp) + s;
        }
}

static TGT void gemm_dot(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    int64_t i = 0;
    for (; i + 2 <= m; i += 2) {
        int64_t j = 0;
        for (; j + 4 <= n; j += 4)
            dot_block(2, 4, k, a + i * lda, lda, b + j * ldb, ldb, beta, c + i * ldc + j, ldc);
        for (; j < n; j++)
            dot_block(2, 1, k, a + i * lda, lda, b + j * ldb, ldb, beta, c + i * ldc + j, ldc);
    }
    for (; i < m; i++) {
        int64_t j = 0;
        for (; j + 4 <= n; j += 4)
            dot_block(1, 4, k, a + i * lda, lda, b + j * ldb, ldb, beta, c + i * ldc + j, ldc);
        for (; j < n; j++)
            dot_block(1, 1, k, a + i * lda, lda, b + j * ldb, ldb, beta, c + i * ldc + j, ldc);
    }
}

/*
 * exp(x) for x ≤ 0 (scores minus their running max), 16 lanes: 2^(x·log2 e) split into an
 * integer power (exponent bits) and a degree-6 polynomial of the fraction on [−0.5, 0.5].
 * Relative error below 2e-7; inputs below −87 flush to 0, as expf underflows there too.
 */
INL __m512 exp_neg(__m512 x)
{
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    __m512 t = _mm512_mul_ps(x, log2e);
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n); /* in [−0.5, 0.5] */
    /* 2^f = e^(f·ln 2): Taylor coefficients of e^y with y = f·ln 2 folded in. */
    __m512 p = _mm512_set1_ps(1.5353362e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398874e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6182630e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503366e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* The row layout (materialized and MHA paths: a row's scores contiguous), vectorized along the
 * tokens of each row. */
static TGT void softmax_rows(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_row,
                             const int64_t *nvis, int64_t rows_per_nvis, float *mx, float *l,
                             ptrdiff_t ms, float *o, ptrdiff_t ldo, int64_t dv)
{
    for (int64_t i = 0; i < n_rows; i++) {
        float *si = s + i * s_row;
        int64_t nv = nvis[i / rows_per_nvis];
        float m_old = mx[i * ms];
        __m512 vmax = _mm512_set1_ps(m_old);
        for (int64_t t = 0; t < nv; t += 16) {
            __mmask16 mk = tail_mask(nv - t);
            vmax = _mm512_mask_max_ps(vmax, mk, vmax, _mm512_maskz_loadu_ps(mk, si + t));
        }
        float m_new = _mm512_reduce_max_ps(vmax);
        __m512 mv = _mm512_set1_ps(m_new), sum = _mm512_setzero_ps();
        for (int64_t t = 0; t < nv; t += 16) {
            __mmask16 mk = tail_mask(nv - t);
            __m512 p = _mm512_maskz_mov_ps(
                mk, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, si + t), mv)));
            sum = _mm512_add_ps(sum, p);
            _mm512_mask_storeu_ps(si + t, mk, p);
        }
        if (nv < t_len)
            memset(si + nv, 0, (size_t)(t_len - nv) * sizeof *si);
        if (nv == 0)
            continue;
        float scale = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
        mx[i * ms] = m_new;
        l[i * ms] = l[i * ms] * scale + _mm512_reduce_add_ps(sum);
        if (scale != 1.0f) {
            float *oi = o + i * ldo;
            __m512 sv = _mm512_set1_ps(scale);
            for (int64_t j = 0; j < dv; j += 16) {
                __mmask16 mj = tail_mask(dv - j);
                _mm512_mask_storeu_ps(oi + j, mj,
                                      _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(mj, oi + j)));
            }
        }
    }
}

/*
 * The column layout of the absorbed path (s_row = 1: 16 query rows side by side) vectorizes
 * across rows; anything else goes to the portable loop, which is already dominated by its
 * products.
 */
static TGT void softmax_step(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_row,
                             ptrdiff_t s_col, const int64_t *nvis, int64_t rows_per_nvis,
                             float *mx, float *l, ptrdiff_t ms, float *o, ptrdiff_t ldo,
                             int64_t dv)
{
    if (s_col == 1) {
        softmax_rows(n_rows, t_len, s, s_row, nvis, rows_per_nvis, mx, l, ms, o, ldo, dv);
        return;
    }
    if (s_row != 1 || ms != 1) {
        mla__attn_kernels_portable.softmax_step(n_rows, t_len, s, s_row, s_col, nvis,
                                                rows_per_nvis, mx, l, ms, o, ldo, dv);
        return;
    }
    for (int64_t i0 = 0; i0 < n_rows; i0 += 16) {
        int64_t w = n_rows - i0 < 16 ? n_rows - i0 : 16;
        __mmask16 mk = tail_mask(w);
        /* Visible counts of the 16 rows; rows past the tile's visibility are masked per t. */
        int32_t nv[16];
        int64_t nv_max = 0;
        for (int64_t r = 0; r < 16; r++) {
            int64_t v = r < w ? nvis[(i0 + r) / rows_per_nvis] : 0;
            nv[r] = (int32_t)v;
            if (v > nv_max)
                nv_max = v;
        }
        __m512i nvv = _mm512_loadu_si512(nv);
        __m512 m_old = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, mx + i0);
        __m512 m_new = m_old;
        for (int64_t t = 0; t < nv_max; t++) {
            __mmask16 vis = _mm512_cmpgt_epi32_mask(nvv, _mm512_set1_epi32((int32_t)t)) & mk;
            __m512 x = _mm512_maskz_loadu_ps(vis, s + t * s_col + i0);
            m_new = _mm512_mask_max_ps(m_new, vis, m_new, x);
        }
        __m512 sum = _mm512_setzero_ps();
        for (int64_t t = 0; t < t_len; t++) {
            float *st = s + t * s_col + i0;
            __mmask16 vis = _mm512_cmpgt_epi32_mask(nvv, _mm512_set1_epi32((int32_t)t)) & mk;
            __m512 p = _mm512_maskz_mov_ps(
                vis, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(vis, st), m_new)));
            sum = _mm512_add_ps(sum, p);
            _mm512_mask_storeu_ps(st, mk, p);
        }
        /* Rows with nothing visible keep their state (m_new == m_old, sum 0, scale 1). */
        __mmask16 any = _mm512_cmpgt_epi32_mask(nvv, _mm512_setzero_si512()) & mk;
        __m512 scale = exp_neg(_mm512_sub_ps(m_old, m_new));
        scale = _mm512_mask_blend_ps(any, _mm512_set1_ps(1.0f), scale);
        /* m_old = −inf (first visible tile): exp_neg clamps, and 0 · e^−87 keeps l and o 0. */
        scale = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m_old, _mm512_set1_ps(-INFINITY),
                                                        _CMP_EQ_OQ) & any,
                                     scale, _mm512_setzero_ps());
        __m512 lv = _mm512_maskz_loadu_ps(mk, l + i0);
        lv = _mm512_fmadd_ps(lv, scale, sum);
        _mm512_mask_storeu_ps(l + i0, mk, lv);
        _mm512_mask_storeu_ps(mx + i0, mk, m_new);
        float sc[16];
        _mm512_storeu_ps(sc, scale);
        for (int64_t r = 0; r < w; r++) {
            if (sc[r] == 1.0f)
                continue;
            float *oi = o + (i0 + r) * ldo;
            __m512 sv = _mm512_set1_ps(sc[r]);
            for (int64_t j = 0; j < dv; j += 16) {
                __mmask16 mj = tail_mask(dv - j);
                _mm512_mask_storeu_ps(oi + j, mj,
                                      _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(mj, oi + j)));
            }
        }
    }
}

const mla__attn_kernels mla__attn_kernels_avx512 = {
    "avx512", gemm_bc, gemm_dot, softmax_step,
};

#endif /* MLA_ATTN_HAVE_AVX512 */

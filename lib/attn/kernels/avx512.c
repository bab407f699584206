/*
 * AVX-512 float32 kernels (x86-64 with AVX-512F/BW/VL), selected at run time by kernels.c.
 * Compiled with per-function target attributes so the rest of the library keeps the baseline ISA.
 */
#include "attn/kernels/kernels.h"

#ifdef MLA_ATTN_HAVE_AVX512

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attn/kernels/avx512_block.h"

/* tests/avx512_emulated.h compiles this file over SIMDe, for CPUs without AVX-512: without the
 * target, and with the blocks called rather than inlined (inlined, they take minutes to compile). */
#ifdef MLA_X86_EMULATED
#  define TGT
#  define INL static __attribute__((noinline, unused))
#else
#  define TGT __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#  define INL static inline __attribute__((always_inline)) TGT
#endif

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
    block_begin(mr, nv, ncols, msk, acc);
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
    block_store(mr, nv, rows, acc, msk, beta, c, ldc);
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

/* exp(x) for x ≤ 0 (scores minus their running max), 16 lanes: the polynomial of kernels.h
 * (MLA__EXP_*), the integer power by scalef. */
INL __m512 exp_neg(__m512 x)
{
    const __m512 log2e = _mm512_set1_ps(MLA__EXP_LOG2E);
    /* MIN first: maxps returns its second operand when either is NaN, so a NaN (a score that
     * overflowed, inf − inf) stays NaN and reaches the output check instead of becoming 0. */
    x = _mm512_max_ps(_mm512_set1_ps(MLA__EXP_MIN), x);
    __m512 t = _mm512_mul_ps(x, log2e);
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n); /* in [−0.5, 0.5] */
    __m512 p = _mm512_set1_ps(MLA__EXP_C6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MLA__EXP_C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MLA__EXP_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MLA__EXP_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MLA__EXP_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MLA__EXP_C1));
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

/* ---- cached rows converted in registers --------------------------------------------------- */

/* Storage types as compile-time constants of the inlined loops. */
enum { DT_F32, DT_F16, DT_BF16, DT_I8 };

static int dt_of(mla_dtype t)
{
    return t == MLA_DTYPE_F16 ? DT_F16 : t == MLA_DTYPE_BF16 ? DT_BF16 : t == MLA_DTYPE_I8 ? DT_I8
                                                                                          : DT_F32;
}

/* Where an I8 row keeps the scales of columns k .. k+15 (the lanes in msk): n groups from g0,
 * spread over the lanes by idx when n > 1 (groups of 8, 12 or 24 straddle most vectors). It
 * depends on the columns alone, so loops over rows make it once, outside their conditionals
 * (which a division cannot be hoisted out of). Nothing for the other storage types. */
typedef struct scale_map {
    int64_t g0, n;
    __m512i idx;
} scale_map;

INL scale_map scale_map16(const int dt, const mla__src *s, int64_t k, __mmask16 msk)
{
    scale_map m = {0, 1, _mm512_setzero_si512()};
    if (dt != DT_I8 || !msk)
        return m;
    const int64_t gs = s->group;
    m.g0 = k / gs;
    m.n = (k + 31 - __builtin_clz(msk)) / gs - m.g0 + 1;
    if (m.n > 1) {
        /* lane i's group − g0 = ⌊(r + i) / gs⌋, r = k − g0·gs < gs: (r + i + ½) / gs, rounded
         * once, is at least ½ / gs away from an integer, so truncating it is exact. */
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512 x = _mm512_add_ps(iota, _mm512_set1_ps((float)(k - m.g0 * gs) + 0.5f));
        m.idx = _mm512_cvttps_epi32(_mm512_div_ps(x, _mm512_set1_ps((float)gs)));
    }
    return m;
}

/* The scales of row t under map m; only the n groups the lanes take are read. */
INL __m512 scale16(const mla__src *s, int64_t t, const scale_map *m)
{
    const float *sc = s->sc + t * s->lds + m->g0;
    if (m->n == 1)
        return _mm512_set1_ps(*sc);
    return _mm512_permutexvar_ps(m->idx, _mm512_maskz_loadu_ps(tail_mask(m->n), sc));
}

/* Elements (t, k .. k+15) as float32; lanes outside msk are 0 and their memory is not read. sm:
 * scale_map16(dt, s, k, msk). Every conversion is exact (I8: one float multiplication), as in
 * mla__src_get. */
INL __m512 load16(const int dt, const mla__src *s, int64_t t, int64_t k, __mmask16 msk,
                  const scale_map *sm)
{
    const unsigned char *row = s->p + t * s->ld;
    /* A mask known to be full (after inlining) takes plain loads, which the conversion can take
     * as its memory operand: one instruction fewer a vector. */
    int full = __builtin_constant_p(msk) && msk == 0xffff;
    if (dt == DT_F32)
        return full ? _mm512_loadu_ps(row + 4 * k) : _mm512_maskz_loadu_ps(msk, row + 4 * k);
    if (dt == DT_F16)
        return _mm512_cvtph_ps(full ? _mm256_loadu_si256((const void *)(row + 2 * k))
                                    : _mm256_maskz_loadu_epi16(msk, row + 2 * k));
    if (dt == DT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(full ? _mm256_loadu_si256((const void *)(row + 2 * k))
                                       : _mm256_maskz_loadu_epi16(msk, row + 2 * k)),
            16));
    __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(msk, row + k)));
    return _mm512_mul_ps(q, scale16(s, t, sm));
}

/* In-register transpose of 16 rows of 16 floats: column c of the rows ends up in r[c]. */
INL void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4i + c], 128-bit lane L: rows 4i .. 4i+3 of column 4L + c */
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        __m512 v1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 w0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        __m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(v0, v1, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v0, v1, 0xdd);
        r[4 + c] = _mm512_shuffle_f32x4(w0, w1, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(w0, w1, 0xdd);
    }
}

INL void load_t_dt(const int dt, const mla__src *s, int64_t t0, int64_t n, int64_t col0,
                   int64_t kw, float *dst, ptrdiff_t ldd)
{
    for (int64_t t = 0; t < n; t += 16) {
        int64_t nt = n - t < 16 ? n - t : 16;
        __mmask16 mt = tail_mask(nt);
        for (int64_t k = 0; k < kw; k += 16) {
            int64_t nk = kw - k < 16 ? kw - k : 16;
            __mmask16 mk = tail_mask(nk);
            __m512 r[16];
            scale_map sm = scale_map16(dt, s, col0 + k, mk);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = i < nt ? load16(dt, s, t0 + t + i, col0 + k, mk, &sm) : _mm512_setzero_ps();
            transpose16(r);
#pragma GCC unroll 16
            for (int c = 0; c < 16; c++)
                if (c < nk)
                    _mm512_mask_storeu_ps(dst + (k + c) * ldd + t, mt, r[c]);
        }
    }
}

static TGT void load_t(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                       float *dst, ptrdiff_t ldd)
{
    switch (dt_of(s->t)) {
    case DT_F16: load_t_dt(DT_F16, s, t0, n, col0, kw, dst, ldd); break;
    case DT_BF16: load_t_dt(DT_BF16, s, t0, n, col0, kw, dst, ldd); break;
    case DT_I8: load_t_dt(DT_I8, s, t0, n, col0, kw, dst, ldd); break;
    default: load_t_dt(DT_F32, s, t0, n, col0, kw, dst, ldd); break;
    }
}

/*
 * 16 rows × 16 columns of 16-bit values transposed in 24 shuffles and 8 inserts (load_t's
 * float32 transpose takes 64 shuffles): z[i] holds rows i and i + 8 in its 256-bit halves;
 * two rounds of unpacks within 128-bit lanes gather 4 rows of a column in a quadword; one
 * two-source quadword permute then puts column c (all 16 rows) in the low half of d[c] and
 * column c + 8 in the high half. Rows past nt are zeros, columns outside mk are not read.
 * p: row 0, column 0; ld in bytes.
 */
INL void transpose16_w(const int full, const unsigned char *p, ptrdiff_t ld, int64_t nt,
                       __mmask16 mk, __m512i d[8])
{
    __m512i z[8], a[8], b[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        if (i < nt)
            lo = full ? _mm256_loadu_si256((const void *)(p + i * ld))
                      : _mm256_maskz_loadu_epi16(mk, p + i * ld);
        if (i + 8 < nt)
            hi = full ? _mm256_loadu_si256((const void *)(p + (i + 8) * ld))
                      : _mm256_maskz_loadu_epi16(mk, p + (i + 8) * ld);
        z[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    /* a[2j], a[2j + 1]: rows 2j, 2j + 1 interleaved, columns 0-3 | 8-11 and 4-7 | 12-15. */
#pragma GCC unroll 4
    for (int j = 0; j < 8; j += 2) {
        a[j] = _mm512_unpacklo_epi16(z[j], z[j + 1]);
        a[j + 1] = _mm512_unpackhi_epi16(z[j], z[j + 1]);
    }
    /* b[x] (rows 0-3, and 8-11 in the high half), b[x + 4] (rows 4-7, 12-15): quadwords of 4
     * rows of columns 2x, 2x + 1 in lane 0, of columns 2x + 8, 2x + 9 in lane 1. */
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i *ah = a + 4 * h;
        b[h * 4 + 0] = _mm512_unpacklo_epi32(ah[0], ah[2]);
        b[h * 4 + 1] = _mm512_unpackhi_epi32(ah[0], ah[2]);
        b[h * 4 + 2] = _mm512_unpacklo_epi32(ah[1], ah[3]);
        b[h * 4 + 3] = _mm512_unpackhi_epi32(ah[1], ah[3]);
    }
    const __m512i even = _mm512_set_epi64(14, 6, 10, 2, 12, 4, 8, 0);
    const __m512i odd = _mm512_set_epi64(15, 7, 11, 3, 13, 5, 9, 1);
#pragma GCC unroll 4
    for (int x = 0; x < 4; x++) {
        d[2 * x] = _mm512_permutex2var_epi64(b[x], even, b[x + 4]);
        d[2 * x + 1] = _mm512_permutex2var_epi64(b[x], odd, b[x + 4]);
    }
}

static TGT void load_t16(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                         uint16_t *dst, ptrdiff_t ldd)
{
    for (int64_t t = 0; t < n; t += 16) {
        int64_t nt = n - t < 16 ? n - t : 16;
        __mmask16 mt = tail_mask(nt);
        for (int64_t k = 0; k < kw; k += 16) {
            int64_t nk = kw - k < 16 ? kw - k : 16;
            const unsigned char *p = s->p + (t0 + t) * s->ld + 2 * (col0 + k);
            __m512i d[8];
            if (nk == 16 && nt == 16)
                transpose16_w(1, p, s->ld, 16, 0xffff, d);
            else
                transpose16_w(0, p, s->ld, nt, tail_mask(nk), d);
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                if (c < nk)
                    _mm256_mask_storeu_epi16(dst + (k + c) * ldd + t, mt,
                                             _mm512_castsi512_si256(d[c]));
                if (c + 8 < nk)
                    _mm256_mask_storeu_epi16(dst + (k + c + 8) * ldd + t, mt,
                                             _mm512_extracti64x4_epi64(d[c], 1));
            }
        }
    }
}

/* bc_block with B's rows converted from a source as they are loaded. */
INL void bcs_block(const int dt, const int mr, const int nv, int64_t rows, int64_t ncols,
                   int64_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b,
                   int64_t t0, int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    __m512 acc[12][4];
    __mmask16 msk[4];
    block_begin(mr, nv, ncols, msk, acc);
    scale_map sm[4];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
        sm[v] = scale_map16(dt, b, col0 + 16 * v, msk[v]);
    for (int64_t kk = 0; kk < k; kk++) {
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            bv[v] = load16(dt, b, t0 + kk, col0 + 16 * v, msk[v], &sm[v]);
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
    block_store(mr, nv, rows, acc, msk, beta, c, ldc);
}

INL void bcs_panel(const int dt, const int mr, const int nv, int64_t m, int64_t n, int64_t k,
                   const float *a, ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                   int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    for (int64_t j = 0; j < n; j += 16 * nv) {
        /* Whole vectors as a constant width: unmasked loads, which the conversions take as
         * their memory operand (a masked load adds a shuffle-port uop to each). */
        int whole = n - j >= 16 * nv;
        int64_t i = 0;
        for (; i + mr <= m; i += mr) {
            if (whole)
                bcs_block(dt, mr, nv, mr, 16 * nv, k, a + i * rsa, rsa, csa, b, t0, col0 + j,
                          beta, c + i * ldc + j, ldc);
            else
                bcs_block(dt, mr, nv, mr, n - j, k, a + i * rsa, rsa, csa, b, t0, col0 + j,
                          beta, c + i * ldc + j, ldc);
        }
        if (i < m)
            bcs_block(dt, mr, nv, m - i, n - j, k, a + i * rsa, rsa, csa, b, t0, col0 + j, beta,
                      c + i * ldc + j, ldc);
    }
}

/* Elements (t, k .. k+7) as float32, lanes outside msk 0 and not read; I8 scales by sm
 * (scale_map16 of the same columns and lanes). */
INL __m256 load8(const int dt, const mla__src *s, int64_t t, int64_t k, __mmask8 msk,
                 const scale_map *sm)
{
    const unsigned char *row = s->p + t * s->ld;
    if (dt == DT_I8)
        return _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_maskz_loadu_epi8(msk, row + k))),
            _mm512_castps512_ps256(scale16(s, t, sm)));
    if (dt == DT_F16)
        return _mm256_maskz_cvtph_ps(0xff, _mm_maskz_loadu_epi16(msk, row + 2 * k));
    if (dt == DT_BF16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(msk, row + 2 * k)), 16));
    return _mm256_maskz_loadu_ps(msk, row + 4 * k);
}

/*
 * bcs_block for 17 to 24 columns (SmolLM-135M d_kv 8: a 24-wide value latent): one 512-bit and
 * one 256-bit accumulator a row. A masked 512-bit FMA costs a whole one; Zen 4 and most AVX-512
 * parts issue 256-bit ones twice as often, so a row costs 1.5 vectors instead of 2.
 */
INL void bcs_block24(const int dt, const int mr, int64_t rows, int64_t ncols, int64_t k,
                     const float *a, ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                     int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    __m512 acc[12];
    __m256 acc8[12];
    __mmask8 m8 = (__mmask8)((1u << (ncols - 16)) - 1u);
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        acc[r] = _mm512_setzero_ps();
        acc8[r] = _mm256_setzero_ps();
    }
    scale_map sm = scale_map16(dt, b, col0, 0xffff), sm8 = scale_map16(dt, b, col0 + 16, m8);
    for (int64_t kk = 0; kk < k; kk++) {
        __m512 bv = load16(dt, b, t0 + kk, col0, 0xffff, &sm);
        __m256 bv8 = load8(dt, b, t0 + kk, col0 + 16, m8, &sm8);
        const float *ak = a + kk * csa;
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            if (r < rows) {
                __m512 av = _mm512_set1_ps(ak[r * rsa]);
                acc[r] = _mm512_fmadd_ps(av, bv, acc[r]);
                acc8[r] = _mm256_fmadd_ps(_mm512_castps512_ps256(av), bv8, acc8[r]);
            }
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        if (r < rows) {
            float *cp = c + r * ldc;
            __m512 x = acc[r];
            __m256 y = acc8[r];
            if (beta != 0.0f) {
                x = _mm512_add_ps(x, _mm512_loadu_ps(cp));
                y = _mm256_add_ps(y, _mm256_maskz_loadu_ps(m8, cp + 16));
            }
            _mm512_storeu_ps(cp, x);
            _mm256_mask_storeu_ps(cp + 16, m8, y);
        }
    }
}

/* Blocks chosen by the width as in gemm_bc; up to 9 rows × 48 columns in one block (SmolLM's
 * 9 heads over a 48-wide latent convert each row of B once). w48: 9 rows over a wider B in
 * 9 × 48 blocks where they cover it exactly (mla__gemm_bc_src_w48_avx512 below). */
INL void gemm_bc_src_dt(const int dt, const int w48, int64_t m, int64_t n, int64_t k,
                        const float *a, ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b,
                        int64_t t0, int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    if (n <= 16) {
        bcs_panel(dt, 12, 1, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
    } else if (n <= 24) {
        /* Whole blocks of 12 rows, then the rest; 9 rows (SmolLM's heads) as a constant so
         * the row tests fold away. */
        int64_t i = 0;
        for (; i + 12 <= m; i += 12)
            bcs_block24(dt, 12, 12, n, k, a + i * rsa, rsa, csa, b, t0, col0, beta,
                        c + i * ldc, ldc);
        if (m - i == 9)
            bcs_block24(dt, 9, 9, n, k, a + i * rsa, rsa, csa, b, t0, col0, beta, c + i * ldc,
                        ldc);
        else if (i < m)
            bcs_block24(dt, 12, m - i, n, k, a + i * rsa, rsa, csa, b, t0, col0, beta,
                        c + i * ldc, ldc);
    } else if (n <= 32)
        bcs_panel(dt, 12, 2, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
    else if (n <= 48)
        bcs_panel(dt, 9, 3, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
    else if (m == 9 && dt != DT_F32 && w48 && n % 48 == 0)
        bcs_panel(dt, 9, 3, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
    else if (m == 9 && dt != DT_F32)
        /* SmolLM-135M's 9 heads against a transposed 16-bit tile (absorbed.c): one block of
         * rows, so each B vector is converted once. */
        bcs_panel(dt, 9, 2, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
    else if (m <= 4) {
        /* A GQA group's 1-4 query rows (the MHA baseline's value product), their count a
         * constant: no row tests in the loop (SmolLM-135M's 3 rows × 64: 15.5 → 10.8 TSC
         * ticks a token and KV head in L2, a throwaway harness). */
        switch (m) {
        case 1: bcs_panel(dt, 1, 4, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
        case 2: bcs_panel(dt, 2, 4, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
        case 3: bcs_panel(dt, 3, 4, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
        default: bcs_panel(dt, 4, 4, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
        }
    } else
        bcs_panel(dt, 6, 4, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
}

INL void gemm_bc_src_any(const int w48, int64_t m, int64_t n, int64_t k, const float *a,
                         ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                         int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
#define BCS_DT(dt) gemm_bc_src_dt(dt, w48, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc)
    switch (dt_of(b->t)) {
    case DT_F16: BCS_DT(DT_F16); break;
    case DT_BF16: BCS_DT(DT_BF16); break;
    case DT_I8: BCS_DT(DT_I8); break;
    default: BCS_DT(DT_F32); break;
    }
#undef BCS_DT
}

static TGT void gemm_bc_src(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                            ptrdiff_t csa, const mla__src *b, int64_t t0, int64_t col0,
                            float beta, float *c, ptrdiff_t ldc)
{
    gemm_bc_src_any(0, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
}

/*
 * gemm_bc_src with 9 rows over 16-bit B of a multiple of 48 columns in 9 × 48 blocks (27
 * accumulators, a third fewer broadcasts of A per multiply than 9 × 32). Chosen on AMD CPUs
 * (kernels.c), with few-rows tiles of 192 tokens (forward.c), for the score product over the
 * transposed tile and the value product of a 96-wide latent. Zen 4, SmolLM-135M F16 decode on 2
 * threads, one process alternating the kernel tables (a throwaway program linking libmla.a):
 * d_kv 32 0.177 → 0.153 ms at 4K, 0.611 → 0.512 at 16K, 1.519 → 1.287 at 32K (a slow phase of
 * the machine; 0.153 → 0.144, 0.471 → 0.433, 0.917 → 0.838 in a fast one); d_kv 16 2-6%,
 * within the noise; d_kv 8 unchanged. On the Intel Xeon of doc/attention.md 9 × 48 blocks
 * measured within ±10% depending on the tile, so it keeps gemm_bc_src.
 */
TGT void mla__gemm_bc_src_w48_avx512(int64_t m, int64_t n, int64_t k, const float *a,
                                     ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                                     int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    gemm_bc_src_any(1, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
}

/* The four sums of a, b, c, d (16 lanes each) as one 128-bit vector. */
INL __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 x = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xee));
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    __m256 y = _mm256_add_ps(_mm512_castps512_ps256(x), hi);
    return _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
}

/* One 16-wide step of dots_block: columns kk .. kk+15 (lanes outside mk neither read nor added). */
INL void dots_step(const int dt, int64_t rows, int64_t toks, const float *a, ptrdiff_t lda,
                   const mla__src *b, int64_t t0, int64_t col0, int64_t kk, __mmask16 mk,
                   __m512 acc[4][4])
{
    __m512 bv[4];
    scale_map sm = scale_map16(dt, b, col0 + kk, mk);
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++)
        bv[q] = q < toks ? load16(dt, b, t0 + q, col0 + kk, mk, &sm) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (r < rows) {
            __m512 av = _mm512_maskz_loadu_ps(mk, a + r * lda + kk);
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
                acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
        }
    }
}

/* Up to 4 rows of A × 4 rows of B (tokens), B converted as loaded; the 4 dot products of a row
 * reduced together. Rows are streamed in order: the keys of a tile are read once, contiguously
 * (a transposed copy costs more shuffles than these reductions). */
INL void dots_block(const int dt, int64_t rows, int64_t toks, int64_t k, const float *a,
                    ptrdiff_t lda, const mla__src *b, int64_t t0, int64_t col0, float beta,
                    float *c, ptrdiff_t ldc)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
            acc[r][q] = _mm512_setzero_ps();
    /* Whole vectors with unmasked loads, then the masked tail: masked loads cost extra uops,
     * and on a memory-bound stream every uop in flight counts. */
    int64_t kk = 0;
    for (; kk + 16 <= k; kk += 16)
        dots_step(dt, rows, toks, a, lda, b, t0, col0, kk, 0xffff, acc);
    if (kk < k)
        dots_step(dt, rows, toks, a, lda, b, t0, col0, kk, tail_mask(k - kk), acc);
    __mmask8 mt = (__mmask8)((1u << toks) - 1u);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (r < rows) {
            __m128 sv = reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
            float *cp = c + r * ldc;
            if (beta != 0.0f)
                sv = _mm_add_ps(sv, _mm_maskz_loadu_ps(mt, cp));
            _mm_mask_storeu_ps(cp, mt, sv);
        }
    }
}

INL void gemm_dot_src_dt(const int dt, int64_t m, int64_t n, int64_t k, const float *a,
                         ptrdiff_t lda, const mla__src *b, int64_t t0, int64_t col0, float beta,
                         float *c, ptrdiff_t ldc)
{
    for (int64_t i = 0; i < m; i += 4) {
        int64_t rows = m - i < 4 ? m - i : 4;
        for (int64_t j = 0; j < n; j += 4)
            dots_block(dt, rows, n - j < 4 ? n - j : 4, k, a + i * lda, lda, b, t0 + j, col0,
                       beta, c + i * ldc + j, ldc);
    }
}

static TGT void gemm_dot_src(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
                             const mla__src *b, int64_t t0, int64_t col0, float beta, float *c,
                             ptrdiff_t ldc)
{
    switch (dt_of(b->t)) {
    case DT_F16: gemm_dot_src_dt(DT_F16, m, n, k, a, lda, b, t0, col0, beta, c, ldc); break;
    case DT_BF16: gemm_dot_src_dt(DT_BF16, m, n, k, a, lda, b, t0, col0, beta, c, ldc); break;
    case DT_I8: gemm_dot_src_dt(DT_I8, m, n, k, a, lda, b, t0, col0, beta, c, ldc); break;
    default: gemm_dot_src_dt(DT_F32, m, n, k, a, lda, b, t0, col0, beta, c, ldc); break;
    }
}

/* The one-query MHA step over every KV head, one query row a head: the blocks of gemm_dot_src
 * inlined with one row as a constant. */
INL void mha_scores_dt(const int dt, int64_t n_kv, int64_t d, int64_t n, const float *q,
                       const mla__src *k, int64_t t0, float *s, ptrdiff_t lds)
{
    for (int64_t j = 0; j < n_kv; j++)
        for (int64_t u = 0; u < n; u += 4)
            dots_block(dt, 1, n - u < 4 ? n - u : 4, d, q + j * d, d, k, t0 + u, j * d, 0.0f,
                       s + j * lds + u, lds);
}

static TGT void mha_scores(int64_t n_kv, int64_t d, int64_t n, const float *q, const mla__src *k,
                           int64_t t0, float *s, ptrdiff_t lds)
{
    switch (dt_of(k->t)) {
    case DT_F16: mha_scores_dt(DT_F16, n_kv, d, n, q, k, t0, s, lds); break;
    case DT_BF16: mha_scores_dt(DT_BF16, n_kv, d, n, q, k, t0, s, lds); break;
    case DT_I8: mha_scores_dt(DT_I8, n_kv, d, n, q, k, t0, s, lds); break;
    default: mha_scores_dt(DT_F32, n_kv, d, n, q, k, t0, s, lds); break;
    }
}

/* Up to 8 tokens into one output row of d values: o read and written once a vector per 8
 * tokens, the weights in registers, the 8 rows read side by side a vector at a time in two
 * chains of multiply-adds. On an AMD EPYC, out of DRAM, this streams the values 4–16% faster
 * than 4 tokens a pass with o read and written each time (doc/attention.md, "Kernels"). */
INL void values_vec8(const int dt, int64_t toks, const __m512 *w, const mla__src *v, int64_t t0,
                     int64_t col, __mmask16 mc, float *o)
{
    __m512 x = _mm512_maskz_loadu_ps(mc, o), y = _mm512_setzero_ps();
    scale_map sm = scale_map16(dt, v, col, mc);
#pragma GCC unroll 4
    for (int q = 0; q < 8; q += 2) {
        if (q < toks)
            x = _mm512_fmadd_ps(w[q], load16(dt, v, t0 + q, col, mc, &sm), x);
        if (q + 1 < toks)
            y = _mm512_fmadd_ps(w[q + 1], load16(dt, v, t0 + q + 1, col, mc, &sm), y);
    }
    _mm512_mask_storeu_ps(o, mc, _mm512_add_ps(x, y));
}

INL void values_row8(const int dt, int64_t toks, int64_t d, const float *p, const mla__src *v,
                     int64_t t0, int64_t col0, float *o)
{
    __m512 w[8];
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++)
        w[q] = _mm512_set1_ps(q < toks ? p[q] : 0.0f);
    int64_t c = 0;
    for (; c + 16 <= d; c += 16)
        values_vec8(dt, toks, w, v, t0, col0 + c, 0xffff, o + c);
    if (c < d)
        values_vec8(dt, toks, w, v, t0, col0 + c, tail_mask(d - c), o + c);
}

INL void mha_values_dt(const int dt, int64_t n_kv, int64_t d, int64_t n, const float *p,
                       ptrdiff_t lds, const mla__src *v, int64_t t0, float *o, ptrdiff_t ldo)
{
    for (int64_t u = 0; u < n; u += 8) {
        int64_t toks = n - u < 8 ? n - u : 8;
        for (int64_t j = 0; j < n_kv; j++) {
            if (toks == 8)
                values_row8(dt, 8, d, p + j * lds + u, v, t0 + u, j * d, o + j * ldo);
            else
                values_row8(dt, toks, d, p + j * lds + u, v, t0 + u, j * d, o + j * ldo);
        }
    }
}

static TGT void mha_values(int64_t n_kv, int64_t d, int64_t n, const float *p, ptrdiff_t lds,
                           const mla__src *v, int64_t t0, float *o, ptrdiff_t ldo)
{
    switch (dt_of(v->t)) {
    case DT_F16: mha_values_dt(DT_F16, n_kv, d, n, p, lds, v, t0, o, ldo); break;
    case DT_BF16: mha_values_dt(DT_BF16, n_kv, d, n, p, lds, v, t0, o, ldo); break;
    case DT_I8: mha_values_dt(DT_I8, n_kv, d, n, p, lds, v, t0, o, ldo); break;
    default: mha_values_dt(DT_F32, n_kv, d, n, p, lds, v, t0, o, ldo); break;
    }
}

/* Panels of whole rows of A converted to float32 (panels.c), then the float32 kernel: one
 * conversion per value against n multiply-adds (n = 32 query heads for Llama-2-7B). Whole rows
 * are converted in memory order, so the cached rows stream in at the prefetchers' pace. */
INL void asrc_convert(const int dt, const mla__src *a, int64_t t0, int64_t rows, int64_t col0,
                      int64_t kc, float *buf)
{
    for (int64_t kk = 0; kk < kc; kk += 16) {
        __mmask16 mk = tail_mask(kc - kk);
        scale_map sm = scale_map16(dt, a, col0 + kk, mk);
        for (int64_t r = 0; r < rows; r++)
            _mm512_mask_storeu_ps(buf + r * kc + kk, mk, load16(dt, a, t0 + r, col0 + kk, mk, &sm));
    }
}

static TGT void asrc_panel(const mla__src *a, int64_t t0, int64_t rows, int64_t col0, int64_t kc,
                           float *buf)
{
    switch (dt_of(a->t)) {
    case DT_F16: asrc_convert(DT_F16, a, t0, rows, col0, kc, buf); break;
    case DT_BF16: asrc_convert(DT_BF16, a, t0, rows, col0, kc, buf); break;
    case DT_I8: asrc_convert(DT_I8, a, t0, rows, col0, kc, buf); break;
    default: asrc_convert(DT_F32, a, t0, rows, col0, kc, buf); break;
    }
}

static TGT void gemm_bc_asrc(int64_t m, int64_t n, int64_t k, const mla__src *a, int64_t t0,
                             int64_t col0, const float *b, ptrdiff_t ldb, float beta, float *c,
                             ptrdiff_t ldc)
{
    mla__gemm_bc_asrc_panels(m, n, k, a, t0, col0, b, ldb, beta, c, ldc, gemm_bc, asrc_panel);
}

/* ---- bf16 pairs on float32 FMAs --------------------------------------------------------- */

/*
 * gemm_bf16's contract with float32 FMAs: a bf16 value is the upper half of its float32, so a
 * pair word of B gives its two float32 vectors with one shift and one mask, and each product is
 * exact as in vdpbf16ps. Where vdpbf16ps issues at a quarter of the FMA rate (the Intel Xeon
 * measured: one every 1.7 TSC ticks against an FMA every 0.42, 12-24 independent chains), this
 * doubles the multiply rate. A's block of pairs is widened to float32 once, so its elements are
 * broadcast loads.
 */
#define BF_KC 128
#define BF_MR 12

INL void bff_block(const int mr, const int nv, int64_t rows, int64_t ncols, int64_t kp,
                   const float *af, const uint16_t *b, ptrdiff_t ldb, float beta, float *c,
                   ptrdiff_t ldc)
{
    __m512 acc[12][4];
    __mmask16 msk[4];
    block_begin(mr, nv, ncols, msk, acc);
    const __m512i hi_mask = _mm512_set1_epi32((int32_t)0xffff0000u);
    for (int64_t p = 0; p < kp; p++) {
        __m512 lo[4], hi[4];
        const uint16_t *bp = b + p * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m512i w = _mm512_maskz_loadu_epi32(msk[v], bp + 32 * v);
            lo[v] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
            hi[v] = _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask));
        }
        const float *ap = af + 2 * p;
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            if (r < rows) {
                __m512 a0 = _mm512_set1_ps(ap[r * 2 * BF_KC]);
                __m512 a1 = _mm512_set1_ps(ap[r * 2 * BF_KC + 1]);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++)
                    acc[r][v] = _mm512_fmadd_ps(a1, hi[v], _mm512_fmadd_ps(a0, lo[v], acc[r][v]));
            }
        }
    }
    block_store(mr, nv, rows, acc, msk, beta, c, ldc);
}

INL void bff_panel(const int mr, const int nv, int64_t rows, int64_t n, int64_t kp,
                   const float *af, const uint16_t *b, ptrdiff_t ldb, float beta, float *c,
                   ptrdiff_t ldc)
{
    for (int64_t j = 0; j < n; j += 16 * nv) {
        if (n - j >= 16 * nv)
            bff_block(mr, nv, rows, 16 * nv, kp, af, b + 2 * j, ldb, beta, c + j, ldc);
        else
            bff_block(mr, nv, rows, n - j, kp, af, b + 2 * j, ldb, beta, c + j, ldc);
    }
}

TGT void mla__gemm_bf16_fma(int64_t m, int64_t n, int64_t kp, const uint16_t *a, ptrdiff_t rsa,
                            ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb, float beta,
                            float *c, ptrdiff_t ldc)
{
    _Alignas(64) float af[BF_MR * 2 * BF_KC];
    int64_t nvec = (n + 15) / 16;
    if (kp == 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                c[i * ldc + j] = beta != 0.0f ? c[i * ldc + j] : 0.0f;
        return;
    }
    for (int64_t i = 0; i < m; i += BF_MR) {
        int64_t rows = m - i < BF_MR ? m - i : BF_MR;
        for (int64_t p0 = 0; p0 < kp; p0 += BF_KC) {
            int64_t kc = kp - p0 < BF_KC ? kp - p0 : BF_KC;
            /* A's pairs of these rows as float32 (exact: bf16 is float32's upper half). */
            for (int64_t r = 0; r < rows; r++) {
                const uint16_t *ar = a + (i + r) * rsa + p0 * csa;
                float *dr = af + r * 2 * BF_KC;
                if (csa == 2) {
                    for (int64_t q = 0; q < 2 * kc; q += 16) {
                        __mmask16 mq = tail_mask(2 * kc - q);
                        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mq, ar + q));
                        _mm512_mask_storeu_ps(dr + q, mq,
                                              _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
                    }
                    continue;
                }
                for (int64_t q = 0; q < kc; q++) {
                    uint32_t w0 = (uint32_t)ar[q * csa] << 16, w1 = (uint32_t)ar[q * csa + 1] << 16;
                    memcpy(dr + 2 * q, &w0, 4);
                    memcpy(dr + 2 * q + 1, &w1, 4);
                }
            }
            float bt = p0 == 0 ? beta : 1.0f;
            const uint16_t *bk = b + p0 * ldb;
            float *ci = c + i * ldc;
            /* Blocks as gemm_bc: narrow C, more rows; wide C, more vectors a row. */
            if (nvec <= 1)
                bff_panel(12, 1, rows, n, kc, af, bk, ldb, bt, ci, ldc);
            else if (nvec <= 2)
                bff_panel(12, 2, rows, n, kc, af, bk, ldb, bt, ci, ldc);
            else if (rows == 9)
                bff_panel(9, 2, 9, n, kc, af, bk, ldb, bt, ci, ldc);
            else if (rows == 3) /* SmolLM-135M's RoPE keys: a KV head's 3 query rows */
                bff_panel(3, 4, 3, n, kc, af, bk, ldb, bt, ci, ldc);
            else if (rows <= 4)
                bff_panel(4, 4, rows, n, kc, af, bk, ldb, bt, ci, ldc);
            else if (rows <= 6)
                bff_panel(6, 3, rows, n, kc, af, bk, ldb, bt, ci, ldc);
            else
                bff_panel(12, 2, rows, n, kc, af, bk, ldb, bt, ci, ldc);
        }
    }
}

/* Rounding to bf16 precision in the float32 bits (AVX-512F): add 0x7fff plus the lowest kept
 * bit, clear the low half. Exact RNE for finite values, subnormals included, as
 * mla_f32_to_bf16. */
static TGT void round_bf16(float *x, int64_t n)
{
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
    const __m512i keep = _mm512_set1_epi32((int32_t)0xffff0000u);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512i b = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, x + i));
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
        b = _mm512_and_si512(_mm512_add_epi32(b, _mm512_add_epi32(half, lsb)), keep);
        _mm512_mask_storeu_ps(x + i, m, _mm512_castsi512_ps(b));
    }
}

const mla__attn_kernels mla__attn_kernels_avx512 = {
    "avx512", gemm_bc, gemm_dot, softmax_step, load_t, load_t16, gemm_bc_src, gemm_dot_src,
    gemm_bc_asrc, mha_scores, mha_values,
    /* The BF16 kernels, bf16_few_rows_min_k and the AMD choices are set by kernels.c. */
    NULL, NULL, NULL, round_bf16, mla__seg_dots_avx2, 0, 1, NULL, 0,
    512, /* weights products of fewer rows: gemm_dot_src (kernels.h) */
    NULL, NULL, /* I8 keys dequantized by load_t (not measured otherwise on AVX-512) */
};

#endif /* MLA_ATTN_HAVE_AVX512 */

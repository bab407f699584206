/*
 * AVX2 float32 kernels (x86-64 with AVX2, FMA and F16C but no AVX-512: Intel since Haswell, AMD
 * since Zen, where AVX-512 is missing), selected at run time by kernels.c. The portable kernels
 * stay the oracle; these are the same products in 8-lane vectors, register-blocked so that each
 * converted cache vector feeds several rows. Per-function target attributes keep the rest of
 * the library on the baseline ISA. The bf16 pair packing is the portable one: it touches each
 * value once.
 */
#include "attn/kernels/kernels.h"

/* MLA_ATTN_HAVE_AVX512 (kernels.h) marks x86-64 builds with GCC-style target attributes: the
 * AVX2 table is built beside the AVX-512 one. */
#ifdef MLA_ATTN_HAVE_AVX512

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) TGT

/* DT_I16: int16 codes with a scale a column (gemm_bc_i16s's B): load8 gives the codes, and
 * bcs_block multiplies its sums by the scales sc[col0 + j] before it stores them. DT_Q8: I8
 * codes whose scales were applied to A (gemm_bc_src_i8): load8 gives the codes. */
enum { DT_F32, DT_F16, DT_BF16, DT_I8, DT_I16, DT_Q8 };

static int dt_of(mla_dtype t)
{
    switch (t) {
    case MLA_DTYPE_F16: return DT_F16;
    case MLA_DTYPE_BF16: return DT_BF16;
    case MLA_DTYPE_I8: return DT_I8;
    default: return DT_F32;
    }
}

/* Where an I8 row keeps the scales of columns k .. k+7: n groups from g0, spread over the lanes
 * by idx when n > 1 (groups of 4, 12 or 24 straddle vectors). It depends on the columns alone,
 * so loops over rows make it once, outside their conditionals (which a division cannot be
 * hoisted out of). Nothing for the other storage types. */
typedef struct scale_map {
    int64_t g0, n;
    __m256i idx, ld; /* ld: the lanes of the n scales read */
} scale_map;

INL scale_map scale_map8(const int dt, const mla__src *s, int64_t k)
{
    scale_map m = {0, 1, _mm256_setzero_si256(), _mm256_setzero_si256()};
    if (dt != DT_I8)
        return m;
    const int64_t gs = s->group;
    m.g0 = k / gs;
    m.n = (k + 7) / gs - m.g0 + 1;
    if (m.n > 1) {
        /* lane i's group − g0 = ⌊(r + i) / gs⌋, r = k − g0·gs < gs: (r + i + ½) / gs, rounded
         * once, is at least ½ / gs away from an integer, so truncating it is exact. */
        const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
        __m256 x = _mm256_add_ps(iota, _mm256_set1_ps((float)(k - m.g0 * gs) + 0.5f));
        m.idx = _mm256_cvttps_epi32(_mm256_div_ps(x, _mm256_set1_ps((float)gs)));
        m.ld = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m.n),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    return m;
}

/* The scales of row t under map m; only the n groups the lanes take are read. */
INL __m256 scale8(const mla__src *s, int64_t t, const scale_map *m)
{
    const float *sc = s->sc + t * s->lds + m->g0;
    if (m->n == 1)
        return _mm256_broadcast_ss(sc);
    return _mm256_permutevar8x32_ps(_mm256_maskload_ps(sc, m->ld), m->idx);
}

/* Eight I8 codes as float32. */
INL __m256 codes8(const signed char *p)
{
    const __m128i q = _mm_loadl_epi64((const __m128i *)(const void *)p);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
}

/* Elements (t, k .. k+7) as float32, exactly as mla__src_get converts them. sm: scale_map8(dt,
 * s, k). */
INL __m256 load8(const int dt, const mla__src *s, int64_t t, int64_t k, const scale_map *sm)
{
    const unsigned char *row = s->p + t * s->ld;
    if (dt == DT_F32)
        return _mm256_loadu_ps((const float *)(const void *)(row + 4 * k));
    if (dt == DT_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k)));
    if (dt == DT_Q8)
        return codes8((const signed char *)row + k);
    if (dt == DT_I16)
        return _mm256_cvtepi32_ps(
            _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k))));
    if (dt == DT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k))),
            16));
    __m256 q = _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(row + k))));
    return _mm256_mul_ps(q, scale8(s, t, sm));
}

/* Elements (t, k .. k+n−1), n < 8, and zeros after them. */
INL __m256 load_part(const int dt, const mla__src *s, int64_t t, int64_t k, int64_t n)
{
    float b[8] = {0};
    for (int64_t l = 0; l < n; l++) {
        if (dt == DT_I16) {
            int16_t q;
            memcpy(&q, s->p + t * s->ld + 2 * (k + l), 2);
            b[l] = (float)q;
        } else {
            b[l] = mla__src_get(s, t, k + l);
        }
    }
    return _mm256_loadu_ps(b);
}

/* The first n (< 8) lanes of x added to (beta ≠ 0) or stored over c[0 .. n). */
INL void store_part(__m256 x, float beta, float *c, int64_t n)
{
    float b[8];
    _mm256_storeu_ps(b, x);
    for (int64_t l = 0; l < n; l++)
        c[l] = beta != 0.0f ? c[l] + b[l] : b[l];
}

INL void store8(__m256 x, float beta, float *c)
{
    _mm256_storeu_ps(c, beta != 0.0f ? _mm256_add_ps(_mm256_loadu_ps(c), x) : x);
}

/*
 * C (mr × ncols) [+]= A · B with B read from a source: one mr × (8·nv) block, mr, nv and full
 * (ncols == 8·nv) compile-time constants, so nothing is tested inside the loop over k (12
 * accumulators, two B vectors and a broadcast fit the 16 registers). Each B vector is converted
 * once for all mr rows.
 */
INL void bcs_block(const int dt, const int mr, const int nv, const int full, int64_t ncols,
                   int64_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b,
                   int64_t t0, int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    __m256 acc[12][4]; /* up to 6 rows × 2 vectors here; gemm_bc_src_i8_g8 takes 12 × 1 */
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm256_setzero_ps();
    scale_map sm[4];
#pragma GCC unroll 16
    for (int v = 0; v < nv; v++)
        sm[v] = scale_map8(dt, b, col0 + 8 * v);
    for (int64_t kk = 0; kk < k; kk++) {
        const float *ak = a + kk * csa;
        if (nv > 2) {
            /* Few rows, four vectors (12 accumulators): the rows' broadcasts held, one B
             * vector at a time, so that 16 registers hold it all. */
            __m256 av[3];
#pragma GCC unroll 16
            for (int r = 0; r < mr && r < 3; r++)
                av[r] = _mm256_broadcast_ss(ak + r * rsa);
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++) {
                __m256 bv = full || v + 1 < nv
                                ? load8(dt, b, t0 + kk, col0 + 8 * v, &sm[v])
                                : load_part(dt, b, t0 + kk, col0 + 8 * v, ncols - 8 * v);
#pragma GCC unroll 16
                for (int r = 0; r < mr && r < 3; r++)
                    acc[r][v] = _mm256_fmadd_ps(av[r], bv, acc[r][v]);
            }
            continue;
        }
        __m256 bv[2];
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++)
            bv[v] = full || v + 1 < nv ? load8(dt, b, t0 + kk, col0 + 8 * v, &sm[v])
                                       : load_part(dt, b, t0 + kk, col0 + 8 * v, ncols - 8 * v);
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++) {
            __m256 av = _mm256_broadcast_ss(ak + r * rsa);
#pragma GCC unroll 16
            for (int v = 0; v < nv && v < 2; v++)
                acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    if (dt == DT_I16) {
        /* The columns' scales, after the sums. */
        __m256 cs[4];
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++) {
            if (full || v + 1 < nv) {
                cs[v] = _mm256_loadu_ps(b->sc + col0 + 8 * v);
            } else {
                float t[8] = {0};
                memcpy(t, b->sc + col0 + 8 * v, (size_t)(ncols - 8 * v) * sizeof *t);
                cs[v] = _mm256_loadu_ps(t);
            }
        }
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++)
                acc[r][v] = _mm256_mul_ps(acc[r][v], cs[v]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++) {
            if (full || v + 1 < nv)
                store8(acc[r][v], beta, c + r * ldc + 8 * v);
            else
                store_part(acc[r][v], beta, c + r * ldc + 8 * v, ncols - 8 * v);
        }
}

/* mr rows (a constant) of C: whole 16- and 8-column blocks, then the last partial one. */
INL void bcs_rows(const int dt, const int mr, int64_t n, int64_t k, const float *a,
                  ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0, int64_t col0,
                  float beta, float *c, ptrdiff_t ldc)
{
    int64_t j = 0;
    if (mr == 3 || mr == 1) {
        for (; j + 32 <= n; j += 32)
            bcs_block(dt, mr, 4, 1, 32, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
        if (n - j == 24) {
            bcs_block(dt, mr, 3, 1, 24, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
            return;
        }
    }
    for (; j + 16 <= n; j += 16)
        bcs_block(dt, mr, 2, 1, 16, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
    if (j + 8 <= n) {
        bcs_block(dt, mr, 1, 1, 8, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
        j += 8;
    }
    if (j < n)
        bcs_block(dt, mr, 1, 0, n - j, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
}

INL void gemm_bc_src_dt(const int dt, int64_t m, int64_t n, int64_t k, const float *a,
                        ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                        int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    /* Columns that leave 24 after whole 32-column blocks (SmolLM-135M d_kv 8: 24 latent
     * columns) in blocks of 3 rows × 3 vectors, not 6 rows × 2 vectors and 6 × 1, whose 6
     * chains of multiply-adds leave the FMA units idle (its 9-row value product 1.2 times as
     * fast on Zen 3). */
    const int step = m % 3 == 0 && n % 32 == 24 ? 3 : 6;
    for (int64_t i = 0; i < m; i += step) {
        const float *ai = a + i * rsa;
        float *ci = c + i * ldc;
        switch (m - i < step ? m - i : step) {
        case 1: bcs_rows(dt, 1, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        case 2: bcs_rows(dt, 2, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        case 3: bcs_rows(dt, 3, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        case 4: bcs_rows(dt, 4, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        case 5: bcs_rows(dt, 5, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        default: bcs_rows(dt, 6, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        }
    }
}

/*
 * gemm_bc_src over I8 rows in groups of two or more whole 8-value vectors (the group, col0 and
 * n multiples of 8; groups of 8: gemm_bc_src_i8_g8): the scales move to A.
 * B(t, c) = code(t, c)·sc(t, g(c)), so C(i, c) gets Σ_t (A(i, t)·sc(t, g(c)))·code(t, c). Per
 * chunk of I8_KC tokens, the scales of up to I8_GMAX groups are laid out along the tokens and
 * each block of rows of A is scaled by them into a buffer on the stack (mr/8 multiplies a
 * token and group); a code vector then costs a sign extension and an int-to-float, no
 * multiply beside the FMAs. load8 took one multiply a code vector and row block, and its
 * scales' registers pushed bcs_block's accumulators to the stack: SmolLM-135M's 9-row values
 * over I8 latents took 1.4 times as long as this (perf samples, d_kv 32, Zen 3).
 */
#define I8_KC 128
#define I8_GMAX 4 /* groups a pass: 4 × 6 rows × 128 tokens of scaled A, 12 KiB */

/* Vectors a block of mr (≤ 6) rows takes: 12 accumulators at most (3 rows × 4, 6 × 2). */
#define I8_NV(mr) ((mr) <= 3 ? 4 : 2)

/* Columns j0 .. j1 of mr rows (a constant), in blocks of up to I8_NV(mr) vectors that end at
 * the end of a group, so that one broadcast a row serves the block (a block across groups
 * took one a row and vector, and the loads, not the FMAs, bounded it). Group g0 + q's scaled A
 * at ap + q·mr·I8_KC. */
INL void i8_rows(const int mr, int64_t j0, int64_t j1, int64_t kc, const float *ap,
                 int64_t col0, int64_t g0, int64_t gs, const signed char *row, ptrdiff_t ld,
                 int add, float *c, ptrdiff_t ldc)
{
    /* bcs_block over the codes (DT_Q8) with the group's scaled A, rows I8_KC apart. */
    const mla__src q = {(const unsigned char *)row, ld, MLA_DTYPE_I8, NULL, 0, 1};
    const float beta = add ? 1.0f : 0.0f;
    for (int64_t j = j0; j < j1;) {
        const int64_t g = (col0 + j) / gs, to_end = (g + 1) * gs - (col0 + j);
        int64_t left = j1 - j < to_end ? j1 - j : to_end;
        int nv = (int)(left / 8 < I8_NV(mr) ? left / 8 : I8_NV(mr));
        const float *apg = ap + (g - g0) * mr * I8_KC;
        if (nv >= 4 && I8_NV(mr) >= 4)
            bcs_block(DT_Q8, mr, 4, 1, 32, kc, apg, I8_KC, 1, &q, 0, j, beta, c + j, ldc);
        else if (nv == 3 && I8_NV(mr) >= 3)
            bcs_block(DT_Q8, mr, 3, 1, 24, kc, apg, I8_KC, 1, &q, 0, j, beta, c + j, ldc);
        else if (nv == 2 && I8_NV(mr) >= 2)
            bcs_block(DT_Q8, mr, 2, 1, 16, kc, apg, I8_KC, 1, &q, 0, j, beta, c + j, ldc);
        else
            bcs_block(DT_Q8, mr, 1, 1, 8, kc, apg, I8_KC, 1, &q, 0, j, beta, c + j, ldc);
        j += 8 * (int64_t)nv;
    }
}

static TGT void gemm_bc_src_i8(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                               ptrdiff_t csa, const mla__src *b, int64_t t0, int64_t col0,
                               float beta, float *c, ptrdiff_t ldc)
{
    const int64_t gs = b->group;
    float ap[I8_GMAX * 6 * I8_KC] __attribute__((aligned(32)));
    float sv[I8_GMAX * I8_KC] __attribute__((aligned(32)));
    /* Rows in blocks of at most 6, as even as they go in groups of 16 (SmolLM-135M's 9 heads:
     * 5 + 4); in wider groups 6 + 3, whose 2- and 4-vector blocks fill 32 columns. */
    const int64_t nb = (m + 5) / 6;
    const int64_t mr_even = gs == 16 ? (m + nb - 1) / nb : 6;
    for (int64_t kc0 = 0; kc0 < k; kc0 += I8_KC) {
        const int64_t kc = k - kc0 < I8_KC ? k - kc0 : I8_KC;
        const int add = beta != 0.0f || kc0 > 0;
        const signed char *row = (const signed char *)(b->p + (t0 + kc0) * b->ld) + col0;
        for (int64_t j0 = 0; j0 < n;) {
            const int64_t g0 = (col0 + j0) / gs;
            int64_t j1 = (g0 + I8_GMAX) * gs - col0;
            j1 = j1 < n ? j1 : n;
            const int64_t ng = (col0 + j1 - 1) / gs - g0 + 1;
            /* The chunk's scales of these groups, a group's along the tokens. */
            const float *sc = b->sc + (t0 + kc0) * b->lds + g0;
            const ptrdiff_t lds = b->lds;
            for (int64_t q = 0; q < ng; q++) {
                float *sq = sv + q * I8_KC;
                const float *sg = sc + q;
                for (int64_t kk = 0; kk < kc; kk++)
                    sq[kk] = sg[kk * lds];
            }
            for (int64_t i0 = 0; i0 < m;) {
                const int mr = (int)(m - i0 < mr_even ? m - i0 : mr_even);
                for (int r = 0; r < mr; r++) {
                    /* A's row read once for every group. */
                    const float *ar = a + (i0 + r) * rsa + kc0 * csa;
                    float *d = ap + r * I8_KC;
                    const ptrdiff_t dq = (ptrdiff_t)mr * I8_KC;
                    int64_t kk = 0;
                    if (csa == 1)
                        for (; kk + 8 <= kc; kk += 8) {
                            const __m256 x = _mm256_loadu_ps(ar + kk);
                            for (int64_t q = 0; q < ng; q++) {
                                const __m256 sq = _mm256_load_ps(sv + q * I8_KC + kk);
                                _mm256_store_ps(d + q * dq + kk, _mm256_mul_ps(x, sq));
                            }
                        }
                    for (; kk < kc; kk++)
                        for (int64_t q = 0; q < ng; q++)
                            d[q * dq + kk] = ar[kk * csa] * sv[q * I8_KC + kk];
                }
                float *ci = c + i0 * ldc;
                switch (mr) {
#define I8_ROWS_CASE(R)                                                                        \
    case R: i8_rows(R, j0, j1, kc, ap, col0, g0, gs, row, b->ld, add, ci, ldc); break;
                I8_ROWS_CASE(1)
                I8_ROWS_CASE(2)
                I8_ROWS_CASE(3)
                I8_ROWS_CASE(4)
                I8_ROWS_CASE(5)
                default: i8_rows(6, j0, j1, kc, ap, col0, g0, gs, row, b->ld, add, ci, ldc); break;
#undef I8_ROWS_CASE
                }
                i0 += mr;
            }
            j0 = j1;
        }
    }
}

/*
 * gemm_bc_src over I8 rows in groups of 8 (col0 and n multiples of 8): each code vector has one
 * scale a token, so load8 scales it once, in registers, for every row of a block of up to 12,
 * and A is read as it is. SmolLM-135M's 9 heads make one block of 9 rows, so no vector is
 * scaled twice, and the scales' layout and the pass over A of gemm_bc_src_i8 (a quarter of its
 * perf samples at d_kv 8) are saved: SmolLM-135M decodes over I8 d_kv 8 latents in 0.88–0.92
 * of the time (Zen 3). Wider groups keep gemm_bc_src_i8, where blocks of at most 6 rows would
 * scale each vector once a block.
 */
#define I8_G8_ROWS 12

static TGT void gemm_bc_src_i8_g8(int64_t m, int64_t n, int64_t k, const float *a,
                                  ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                                  int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    /* Rows in even blocks (18 rows: 9 + 9, not 12 + 6). */
    const int64_t nb = (m + I8_G8_ROWS - 1) / I8_G8_ROWS, mr = (m + nb - 1) / nb;
    for (int64_t i0 = 0; i0 < m; i0 += mr) {
        const float *ai = a + i0 * rsa;
        float *ci = c + i0 * ldc;
        for (int64_t j = 0; j < n; j += 8) {
            switch (m - i0 < mr ? m - i0 : mr) {
#define I8_G8_CASE(R)                                                                          \
    case R:                                                                                    \
        bcs_block(DT_I8, R, 1, 1, 8, k, ai, rsa, csa, b, t0, col0 + j, beta, ci + j, ldc);    \
        break;
                I8_G8_CASE(1)
                I8_G8_CASE(2)
                I8_G8_CASE(3)
                I8_G8_CASE(4)
                I8_G8_CASE(5)
                I8_G8_CASE(6)
                I8_G8_CASE(7)
                I8_G8_CASE(8)
                I8_G8_CASE(9)
                I8_G8_CASE(10)
                I8_G8_CASE(11)
                default: I8_G8_CASE(I8_G8_ROWS)
#undef I8_G8_CASE
            }
        }
    }
}

static TGT void gemm_bc_src(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                            ptrdiff_t csa, const mla__src *b, int64_t t0, int64_t col0,
                            float beta, float *c, ptrdiff_t ldc)
{
    switch (dt_of(b->t)) {
    case DT_F16: gemm_bc_src_dt(DT_F16, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
    case DT_BF16: gemm_bc_src_dt(DT_BF16, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
    case DT_I8:
        if (k > 0 && b->group == 8 && col0 % 8 == 0 && n % 8 == 0)
            gemm_bc_src_i8_g8(m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
        else if (k > 0 && b->group > 8 && b->group % 8 == 0 && col0 % 8 == 0 && n % 8 == 0)
            gemm_bc_src_i8(m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
        else
            gemm_bc_src_dt(DT_I8, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc);
        break;
    default: gemm_bc_src_dt(DT_F32, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
    }
}

/* Float32 B as a source: row kk is B's row kk. */
static TGT void gemm_bc(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                        ptrdiff_t csa, const float *b, ptrdiff_t ldb, float beta, float *c,
                        ptrdiff_t ldc)
{
    mla__src s = {(const unsigned char *)b, ldb * (ptrdiff_t)sizeof(float), MLA_DTYPE_F32,
                  NULL, 0, 1};
    gemm_bc_src_dt(DT_F32, m, n, k, a, rsa, csa, &s, 0, 0, beta, c, ldc);
}

/* int16 B with a scale a column (kernels.h): the blocks of gemm_bc_src, DT_I16. */
static TGT void gemm_bc_i16s(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                             ptrdiff_t csa, const int16_t *b, ptrdiff_t ldb, const float *cs,
                             float beta, float *c, ptrdiff_t ldc)
{
    mla__src s = {(const unsigned char *)b, ldb * (ptrdiff_t)sizeof *b, MLA_DTYPE_I32, cs, 0, 1};
    gemm_bc_src_dt(DT_I16, m, n, k, a, rsa, csa, &s, 0, 0, beta, c, ldc);
}

INL float hsum8(__m256 x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The sums of the lanes of a, b, c and d, in that order. */
INL __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
}

/* Dot products of mr rows of A with nr rows of B (tokens) along k, B converted as loaded. */
INL void dots_block(const int dt, const int mr, const int nr, int64_t rows, int64_t toks,
                    int64_t k, const float *a, ptrdiff_t lda, const mla__src *b, int64_t t0,
                    int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    __m256 acc[4][8]; /* mr × nr: 1 × 8, 2 × 6, 3 × 4 or 4 × 3 (gemm_dot_src_dt) */
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            acc[r][q] = _mm256_setzero_ps();
    int64_t kk = 0;
    /* A's rows held, one token of B at a time: mr + 1 + mr·nr registers (16 for 3 × 4), so
     * every accumulator stays in a register. */
    for (; kk + 8 <= k; kk += 8) {
        __m256 av[4];
        scale_map sm = scale_map8(dt, b, col0 + kk);
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
            av[r] = r < rows ? _mm256_loadu_ps(a + r * lda + kk) : _mm256_setzero_ps();
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            if (q < toks) {
                __m256 bv = load8(dt, b, t0 + q, col0 + kk, &sm);
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
                    if (r < rows)
                        acc[r][q] = _mm256_fmadd_ps(av[r], bv, acc[r][q]);
            }
    }
    if (kk < k) {
        __m256 av[4];
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++) {
            float ab[8] = {0};
            if (r < rows)
                memcpy(ab, a + r * lda + kk, (size_t)(k - kk) * sizeof *ab);
            av[r] = _mm256_loadu_ps(ab);
        }
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            if (q < toks) {
                __m256 bv = load_part(dt, b, t0 + q, col0 + kk, k - kk);
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
                    if (r < rows)
                        acc[r][q] = _mm256_fmadd_ps(av[r], bv, acc[r][q]);
            }
    }
    /* Four sums at a time (reduce4: 5 instructions where hsum8 takes 5 for one sum). With
     * whole rows of four, each reduction is four neighbours of C, stored as a vector. */
    if (nr % 4 == 0 && toks == nr) {
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
            if (r < rows)
#pragma GCC unroll 4
                for (int q = 0; q < nr; q += 4) {
                    float *cp = c + r * ldc + q;
                    __m128 x = reduce4(acc[r][q], acc[r][q + 1], acc[r][q + 2], acc[r][q + 3]);
                    _mm_storeu_ps(cp, beta != 0.0f ? _mm_add_ps(_mm_loadu_ps(cp), x) : x);
                }
        return;
    }
    float sv[12];
#pragma GCC unroll 16
    for (int g = 0; g < mr * nr; g += 4) {
        __m256 x[4];
#pragma GCC unroll 4
        for (int e = 0; e < 4; e++)
            x[e] = g + e < mr * nr ? acc[(g + e) / nr][(g + e) % nr] : _mm256_setzero_ps();
        _mm_storeu_ps(sv + g, reduce4(x[0], x[1], x[2], x[3]));
    }
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            if (r < rows && q < toks) {
                float *cp = c + r * ldc + q;
                *cp = beta != 0.0f ? *cp + sv[r * nr + q] : sv[r * nr + q];
            }
}

INL void dots_rows(const int dt, const int mr, const int nr, int64_t rows, int64_t n,
                   int64_t k, const float *a, ptrdiff_t lda, const mla__src *b, int64_t t0,
                   int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    /* Whole blocks with the token count a constant: nothing tested in the loop over k. */
    int64_t j = 0;
    for (; j + nr <= n; j += nr)
        dots_block(dt, mr, nr, rows, nr, k, a, lda, b, t0 + j, col0, beta, c + j, ldc);
    if (j < n)
        dots_block(dt, mr, nr, rows, n - j, k, a, lda, b, t0 + j, col0, beta, c + j, ldc);
}

INL void gemm_dot_src_dt(const int dt, int64_t m, int64_t n, int64_t k, const float *a,
                         ptrdiff_t lda, const mla__src *b, int64_t t0, int64_t col0, float beta,
                         float *c, ptrdiff_t ldc)
{
    /* Rows in threes: a 3 × 4 block has 12 independent sums, more than the 8 chains that keep
     * both FMA pipes busy (Zen 3: 4 cycles of latency, 2 a cycle), and fits the 16 registers.
     * A last 1, 2 or 4 rows take blocks of 8, 12 and 12 sums. */
    for (int64_t i = 0, rows; i < m; i += rows) {
        rows = m - i == 4 || m - i == 2 || m - i == 1 ? m - i : 3;
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        switch (rows) {
        case 1: dots_rows(dt, 1, 8, 1, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        case 2: dots_rows(dt, 2, 6, 2, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        case 3: dots_rows(dt, 3, 4, 3, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        default: dots_rows(dt, 4, 3, 4, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        }
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

/* Float32 B rows as a source. */
static TGT void gemm_dot(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    mla__src s = {(const unsigned char *)b, ldb * (ptrdiff_t)sizeof(float), MLA_DTYPE_F32,
                  NULL, 0, 1};
    gemm_dot_src_dt(DT_F32, m, n, k, a, lda, &s, 0, 0, beta, c, ldc);
}

static TGT void mha_scores(int64_t n_kv, int64_t d, int64_t n, const float *q, const mla__src *k,
                           int64_t t0, float *s, ptrdiff_t lds)
{
    for (int64_t j = 0; j < n_kv; j++)
        gemm_dot_src(1, n, d, q + j * d, d, k, t0, j * d, 0.0f, s + j * lds, lds);
}

static TGT void mha_values(int64_t n_kv, int64_t d, int64_t n, const float *p, ptrdiff_t lds,
                           const mla__src *v, int64_t t0, float *o, ptrdiff_t ldo)
{
    for (int64_t j = 0; j < n_kv; j++)
        gemm_bc_src(1, d, n, p + j * lds, lds, 1, v, t0, j * d, 1.0f, o + j * ldo, ldo);
}

/* A panel of rows converted as load8 converts them (mla__panel_fn). */
INL void asrc_convert(const int dt, const mla__src *a, int64_t t0, int64_t rows, int64_t col0,
                      int64_t kc, float *buf)
{
    int64_t kk = 0;
    for (; kk + 8 <= kc; kk += 8) {
        scale_map sm = scale_map8(dt, a, col0 + kk);
        for (int64_t r = 0; r < rows; r++)
            _mm256_storeu_ps(buf + r * kc + kk, load8(dt, a, t0 + r, col0 + kk, &sm));
    }
    for (; kk < kc; kk++)
        for (int64_t r = 0; r < rows; r++)
            buf[r * kc + kk] = mla__src_get(a, t0 + r, col0 + kk);
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

/* exp(x) for x ≤ 0, 8 lanes: the polynomial of kernels.h (MLA__EXP_*), 2^n built in the
 * exponent bits. */
INL __m256 exp_neg8(__m256 x)
{
    /* MIN first: a NaN stays NaN (as in exp_neg, avx512.c). */
    x = _mm256_max_ps(_mm256_set1_ps(MLA__EXP_MIN), x);
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(MLA__EXP_LOG2E));
    __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_set1_ps(MLA__EXP_C6);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MLA__EXP_C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MLA__EXP_C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MLA__EXP_C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MLA__EXP_C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MLA__EXP_C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    /* n ≥ −126 here, so 2^n is a normal float: its exponent field is n + 127. */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                                  23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* A row of the running output rescaled when its running max moved. */
INL void scale_row(float *oi, int64_t dv, float scale)
{
    __m256 sv = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 8 <= dv; j += 8)
        _mm256_storeu_ps(oi + j, _mm256_mul_ps(sv, _mm256_loadu_ps(oi + j)));
    for (; j < dv; j++)
        oi[j] *= scale;
}

INL __m256i lanes_below(int64_t n)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)), idx);
}

/* The column layout of the absorbed path (s_row = 1: 8 query rows side by side in a vector). */
static TGT void softmax_cols(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_col,
                             const int64_t *nvis, int64_t rows_per_nvis, float *mx, float *l,
                             float *o, ptrdiff_t ldo, int64_t dv)
{
    for (int64_t i0 = 0; i0 < n_rows; i0 += 8) {
        int64_t w = n_rows - i0 < 8 ? n_rows - i0 : 8;
        __m256i mk = lanes_below(w);
        /* Visible counts of the 8 rows; rows past the tile's visibility are masked per t. */
        int32_t nv[8];
        int64_t nv_max = 0;
        for (int64_t r = 0; r < 8; r++) {
            int64_t v = r < w ? nvis[(i0 + r) / rows_per_nvis] : 0;
            nv[r] = (int32_t)v;
            nv_max = v > nv_max ? v : nv_max;
        }
        __m256i nvv = _mm256_loadu_si256((const __m256i *)(const void *)nv);
        __m256 ninf = _mm256_set1_ps(-INFINITY);
        __m256 m_old = _mm256_blendv_ps(ninf, _mm256_maskload_ps(mx + i0, mk),
                                        _mm256_castsi256_ps(mk));
        __m256 m_new = m_old;
        /* Tokens every one of 8 rows sees take whole vectors, unmasked (softmax_step). */
        int64_t nv_all = w == 8 ? nv_max : 0;
        for (int64_t r = 0; r < w; r++)
            nv_all = nv[r] < nv_all ? nv[r] : nv_all;
        for (int64_t t = 0; t < nv_all; t++)
            m_new = _mm256_max_ps(m_new, _mm256_loadu_ps(s + t * s_col + i0));
        for (int64_t t = nv_all; t < nv_max; t++) {
            __m256i vis = _mm256_cmpgt_epi32(nvv, _mm256_set1_epi32((int32_t)t));
            __m256 x = _mm256_blendv_ps(ninf, _mm256_maskload_ps(s + t * s_col + i0, vis),
                                        _mm256_castsi256_ps(vis));
            m_new = _mm256_max_ps(m_new, x);
        }
        __m256 sum = _mm256_setzero_ps();
        for (int64_t t = 0; t < nv_all; t++) {
            float *st = s + t * s_col + i0;
            __m256 p = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(st), m_new));
            sum = _mm256_add_ps(sum, p);
            _mm256_storeu_ps(st, p);
        }
        for (int64_t t = nv_all; t < t_len; t++) {
            float *st = s + t * s_col + i0;
            __m256i vis = _mm256_cmpgt_epi32(nvv, _mm256_set1_epi32((int32_t)t));
            /* Rows that see nothing have m_new = −inf: their lanes are masked off here. */
            __m256 p = _mm256_and_ps(
                exp_neg8(_mm256_sub_ps(_mm256_maskload_ps(st, vis), m_new)),
                _mm256_castsi256_ps(vis));
            sum = _mm256_add_ps(sum, p);
            _mm256_maskstore_ps(st, mk, p);
        }
        float mo[8], mn[8], sm[8];
        _mm256_storeu_ps(mo, m_old);
        _mm256_storeu_ps(mn, m_new);
        _mm256_storeu_ps(sm, sum);
        for (int64_t r = 0; r < w; r++) {
            if (nv[r] == 0)
                continue; /* nothing visible: the row keeps its state */
            float scale = mo[r] == -INFINITY ? 0.0f : expf(mo[r] - mn[r]);
            mx[i0 + r] = mn[r];
            l[i0 + r] = l[i0 + r] * scale + sm[r];
            if (scale != 1.0f)
                scale_row(o + (i0 + r) * ldo, dv, scale);
        }
    }
}

/* The row layout (a row's scores contiguous), vectorized along the tokens; the column layout
 * with unit row stride by softmax_cols, any other by the portable loop. */
static TGT void softmax_step(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_row,
                             ptrdiff_t s_col, const int64_t *nvis, int64_t rows_per_nvis,
                             float *mx, float *l, ptrdiff_t ms, float *o, ptrdiff_t ldo,
                             int64_t dv)
{
    if (s_col != 1 && s_row == 1 && ms == 1) {
        softmax_cols(n_rows, t_len, s, s_col, nvis, rows_per_nvis, mx, l, o, ldo, dv);
        return;
    }
    if (s_col != 1) {
        mla__attn_kernels_portable.softmax_step(n_rows, t_len, s, s_row, s_col, nvis,
                                                rows_per_nvis, mx, l, ms, o, ldo, dv);
        return;
    }
    for (int64_t i = 0; i < n_rows; i++) {
        float *si = s + i * s_row;
        int64_t nv = nvis[i / rows_per_nvis];
        float m_old = mx[i * ms];
        __m256 vmax = _mm256_set1_ps(m_old);
        /* Whole vectors unmasked, then the masked tail: AMD CPUs run a masked store as
         * microcode (SmolLM-135M d_kv 8 decode 22% faster on Zen 3 without them). */
        int64_t t8 = nv / 8 * 8;
        for (int64_t t = 0; t < t8; t += 8)
            vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(si + t));
        if (t8 < nv) {
            __m256i mk = lanes_below(nv - t8);
            __m256 x = _mm256_blendv_ps(vmax, _mm256_maskload_ps(si + t8, mk),
                                        _mm256_castsi256_ps(mk));
            vmax = _mm256_max_ps(vmax, x);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float m_new = _mm_cvtss_f32(m4);
        __m256 mv = _mm256_set1_ps(m_new), sum = _mm256_setzero_ps();
        for (int64_t t = 0; t < t8; t += 8) {
            __m256 p = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(si + t), mv));
            sum = _mm256_add_ps(sum, p);
            _mm256_storeu_ps(si + t, p);
        }
        if (t8 < nv) {
            __m256i mk = lanes_below(nv - t8);
            __m256 p = _mm256_and_ps(
                exp_neg8(_mm256_sub_ps(_mm256_maskload_ps(si + t8, mk), mv)),
                _mm256_castsi256_ps(mk));
            sum = _mm256_add_ps(sum, p);
            _mm256_maskstore_ps(si + t8, mk, p);
        }
        if (nv < t_len)
            memset(si + nv, 0, (size_t)(t_len - nv) * sizeof *si);
        if (nv == 0)
            continue;
        float scale = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
        mx[i * ms] = m_new;
        l[i * ms] = l[i * ms] * scale + hsum8(sum);
        if (scale != 1.0f)
            scale_row(o + i * ldo, dv, scale);
    }
}

/* 8 × 8 floats transposed in registers: column c of the rows ends up in r[c]. */
INL void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

INL void load_t_dt(const int dt, const mla__src *s, int64_t t0, int64_t n, int64_t col0,
                   int64_t kw, float *dst, ptrdiff_t ldd)
{
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        int64_t k = 0;
        for (; k + 8 <= kw; k += 8) {
            __m256 r[8];
            scale_map sm = scale_map8(dt, s, col0 + k);
#pragma GCC unroll 16
            for (int i = 0; i < 8; i++)
                r[i] = load8(dt, s, t0 + t + i, col0 + k, &sm);
            transpose8(r);
#pragma GCC unroll 16
            for (int c = 0; c < 8; c++)
                _mm256_storeu_ps(dst + (k + c) * ldd + t, r[c]);
        }
        for (; k < kw; k++)
            for (int64_t i = 0; i < 8; i++)
                dst[k * ldd + t + i] = mla__src_get(s, t0 + t + i, col0 + k);
    }
    for (; t < n; t++)
        for (int64_t k = 0; k < kw; k++)
            dst[k * ldd + t] = mla__src_get(s, t0 + t, col0 + k);
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

/* Element (t, k) of a 16-bit source (i8 0: its bits) or of an I8 one (i8 1: its code,
 * sign-extended), as 16 bits. */
INL uint16_t bits16(const int i8, const mla__src *s, int64_t t, int64_t k)
{
    if (i8)
        return (uint16_t)(int16_t)(signed char)s->p[t * s->ld + k];
    uint16_t h;
    memcpy(&h, s->p + t * s->ld + 2 * k, 2);
    return h;
}

/* 16-bit rows (or I8 codes widened to 16 bits) transposed bit for bit: 16 tokens × 8 columns at
 * a time, tokens t .. t+7 in the lower 128-bit lanes and t+8 .. t+15 in the upper ones, so that
 * 24 unpacks transpose two 8 × 8 blocks and each column's 16 tokens leave in one 256-bit store;
 * then 8 × 8 blocks of 128-bit rows. */
INL void load_t16_dt(const int i8, const mla__src *s, int64_t t0, int64_t n, int64_t col0,
                     int64_t kw, uint16_t *dst, ptrdiff_t ldd)
{
    const int es = i8 ? 1 : 2;
    int64_t t = 0;
    for (; t + 16 <= n; t += 16) {
        int64_t k = 0;
        for (; k + 8 <= kw; k += 8) {
            __m256i r[8], a[8], b[8];
#pragma GCC unroll 16
            for (int i = 0; i < 8; i++) {
                const unsigned char *lo = s->p + (t0 + t + i) * s->ld + es * (col0 + k);
                if (i8)
                    r[i] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi64(
                        _mm_loadl_epi64((const __m128i *)(const void *)lo),
                        _mm_loadl_epi64((const __m128i *)(const void *)(lo + 8 * s->ld))));
                else
                    r[i] = _mm256_inserti128_si256(
                        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)lo)),
                        _mm_loadu_si128((const __m128i *)(const void *)(lo + 8 * s->ld)), 1);
            }
#pragma GCC unroll 16
            for (int i = 0; i < 8; i += 2) {
                a[i] = _mm256_unpacklo_epi16(r[i], r[i + 1]);
                a[i + 1] = _mm256_unpackhi_epi16(r[i], r[i + 1]);
            }
#pragma GCC unroll 16
            for (int i = 0; i < 8; i += 4) {
                b[i] = _mm256_unpacklo_epi32(a[i], a[i + 2]);
                b[i + 1] = _mm256_unpackhi_epi32(a[i], a[i + 2]);
                b[i + 2] = _mm256_unpacklo_epi32(a[i + 1], a[i + 3]);
                b[i + 3] = _mm256_unpackhi_epi32(a[i + 1], a[i + 3]);
            }
#pragma GCC unroll 16
            for (int c = 0; c < 4; c++) {
                _mm256_storeu_si256((__m256i *)(void *)(dst + (k + 2 * c) * ldd + t),
                                    _mm256_unpacklo_epi64(b[c], b[c + 4]));
                _mm256_storeu_si256((__m256i *)(void *)(dst + (k + 2 * c + 1) * ldd + t),
                                    _mm256_unpackhi_epi64(b[c], b[c + 4]));
            }
        }
        for (; k < kw; k++)
            for (int64_t i = 0; i < 16; i++)
                dst[k * ldd + t + i] = bits16(i8, s, t0 + t + i, col0 + k);
    }
    for (; t + 8 <= n; t += 8) {
        int64_t k = 0;
        for (; k + 8 <= kw; k += 8) {
            __m128i r[8], a[8], b[8];
#pragma GCC unroll 16
            for (int i = 0; i < 8; i++) {
                const unsigned char *lo = s->p + (t0 + t + i) * s->ld + es * (col0 + k);
                r[i] = i8 ? _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)lo))
                          : _mm_loadu_si128((const __m128i *)(const void *)lo);
            }
#pragma GCC unroll 16
            for (int i = 0; i < 8; i += 2) {
                a[i] = _mm_unpacklo_epi16(r[i], r[i + 1]);
                a[i + 1] = _mm_unpackhi_epi16(r[i], r[i + 1]);
            }
#pragma GCC unroll 16
            for (int i = 0; i < 8; i += 4) {
                b[i] = _mm_unpacklo_epi32(a[i], a[i + 2]);
                b[i + 1] = _mm_unpackhi_epi32(a[i], a[i + 2]);
                b[i + 2] = _mm_unpacklo_epi32(a[i + 1], a[i + 3]);
                b[i + 3] = _mm_unpackhi_epi32(a[i + 1], a[i + 3]);
            }
            /* b[0..3]: rows 0-3, columns (0,1), (2,3), (4,5), (6,7); b[4..7]: rows 4-7. */
#pragma GCC unroll 16
            for (int c = 0; c < 4; c++) {
                _mm_storeu_si128((__m128i *)(void *)(dst + (k + 2 * c) * ldd + t),
                                 _mm_unpacklo_epi64(b[c], b[c + 4]));
                _mm_storeu_si128((__m128i *)(void *)(dst + (k + 2 * c + 1) * ldd + t),
                                 _mm_unpackhi_epi64(b[c], b[c + 4]));
            }
        }
        for (; k < kw; k++)
            for (int64_t i = 0; i < 8; i++)
                dst[k * ldd + t + i] = bits16(i8, s, t0 + t + i, col0 + k);
    }
    for (; t < n; t++)
        for (int64_t k = 0; k < kw; k++)
            dst[k * ldd + t] = bits16(i8, s, t0 + t, col0 + k);
}

static TGT void load_t16(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                         uint16_t *dst, ptrdiff_t ldd)
{
    load_t16_dt(0, s, t0, n, col0, kw, dst, ldd);
}

static TGT void load_t8(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                        int16_t *dst, ptrdiff_t ldd)
{
    load_t16_dt(1, s, t0, n, col0, kw, (uint16_t *)(void *)dst, ldd);
}

/*
 * bf16 pairs × bf16 pairs into float32, vectorized along B's columns: each 32-bit pair word of
 * B gives its two float32 vectors with a shift and a mask, then two FMAs (odd element first,
 * as the portable kernel sums them).
 */
INL void bf16_block(const int mr, int64_t rows, int64_t kp, const uint16_t *a, ptrdiff_t rsa,
                    ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb, float beta, float *c,
                    ptrdiff_t ldc)
{
    __m256 acc[4][2];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    for (int64_t p = 0; p < kp; p++) {
        __m256 be[2], bo[2];
#pragma GCC unroll 16
        for (int v = 0; v < 2; v++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(b + p * ldb + 16 * v));
            be[v] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
            bo[v] = _mm256_castsi256_ps(_mm256_and_si256(w, hi));
        }
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
            if (r < rows) {
                const uint16_t *ap = a + r * rsa + p * csa;
                /* bf16 to float32: the 16 bits on top of a zero half (exact). */
                __m256 ae = _mm256_castsi256_ps(_mm256_set1_epi32((int)((uint32_t)ap[0] << 16)));
                __m256 ao = _mm256_castsi256_ps(_mm256_set1_epi32((int)((uint32_t)ap[1] << 16)));
#pragma GCC unroll 16
                for (int v = 0; v < 2; v++) {
                    acc[r][v] = _mm256_fmadd_ps(ao, bo[v], acc[r][v]);
                    acc[r][v] = _mm256_fmadd_ps(ae, be[v], acc[r][v]);
                }
            }
    }
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
        if (r < rows)
#pragma GCC unroll 16
            for (int v = 0; v < 2; v++)
                store8(acc[r][v], beta, c + r * ldc + 8 * v);
}

static TGT void gemm_bf16(int64_t m, int64_t n, int64_t kp, const uint16_t *a, ptrdiff_t rsa,
                          ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb, float beta, float *c,
                          ptrdiff_t ldc)
{
    int64_t n16 = n / 16 * 16;
    for (int64_t i = 0; i < m; i += 4) {
        int64_t rows = m - i < 4 ? m - i : 4;
        for (int64_t j = 0; j < n16; j += 16)
            bf16_block(4, rows, kp, a + i * rsa, rsa, csa, b + 2 * j, ldb, beta, c + i * ldc + j,
                       ldc);
    }
    if (n16 < n)
        mla__attn_kernels_portable.gemm_bf16(m, n - n16, kp, a, rsa, csa, b + 2 * n16, ldb, beta,
                                             c + n16, ldc);
}

static void pack_pairs(const mla__src *s, int64_t n, int64_t col0, int64_t w, uint16_t *dst,
                       ptrdiff_t ldd, int64_t t)
{
    mla__attn_kernels_portable.pack_pairs(s, n, col0, w, dst, ldd, t);
}

/* Finite x rounded to bf16 (nearest, ties to even) in the float32 bits: add 0x7fff and the lowest
 * kept bit, then the top 16 bits are the result (exact for subnormals too). */
INL __m256i bf16_bits(__m256 x)
{
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
}

static TGT void to_bf16(const float *x, int64_t n, uint16_t *dst)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = _mm256_srli_epi32(bf16_bits(_mm256_loadu_ps(x + i)), 16);
        __m256i b = _mm256_srli_epi32(bf16_bits(_mm256_loadu_ps(x + i + 8)), 16);
        /* packus works within 128-bit lanes: put the four quarters back in order. */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
        _mm256_storeu_si256((__m256i *)(void *)(dst + i), p);
    }
    if (i < n)
        mla__attn_kernels_portable.to_bf16(x + i, n - i, dst + i);
}

static TGT void round_bf16(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i r = _mm256_and_si256(bf16_bits(_mm256_loadu_ps(x + i)),
                                     _mm256_set1_epi32((int)0xffff0000u));
        _mm256_storeu_ps(x + i, _mm256_castsi256_ps(r));
    }
    if (i < n)
        mla__attn_kernels_portable.round_bf16(x + i, n - i);
}

/* The sums of 8 vectors' lanes, a[0]'s first. */
INL __m256 reduce8(const __m256 a[8])
{
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    /* u0: the four lower-half sums of a[0..3], then their upper-half sums; u1 of a[4..7]. */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Eight segments' dots (one query row each), in order. r is 2, 4 or a multiple of 8. */
INL __m256 seg_dots8(int64_t r, const float *x, const float *q)
{
    if (r == 2) {
        /* hadd leaves segments 0, 1, 4, 5, 2, 3, 6, 7. */
        __m256 h = _mm256_hadd_ps(_mm256_mul_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(q)),
                                  _mm256_mul_ps(_mm256_loadu_ps(x + 8), _mm256_loadu_ps(q + 8)));
        return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
    }
    if (r == 4) {
        __m256 p[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            p[v] = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * v), _mm256_loadu_ps(q + 8 * v));
        /* Segments 0, 2, 4, 6, then 1, 3, 5, 7. */
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
        return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
    __m256 a[8];
#pragma GCC unroll 8
    for (int h = 0; h < 8; h++) {
        a[h] = _mm256_setzero_ps();
        for (int64_t kk = 0; kk < r; kk += 8)
            a[h] = _mm256_fmadd_ps(_mm256_loadu_ps(x + h * r + kk),
                                   _mm256_loadu_ps(q + h * r + kk), a[h]);
    }
    return reduce8(a);
}

/* g = 1 (one query row a KV head: MHA-born models) in 8 segments at a time; the rest, and
 * other widths, by the portable loop. */
TGT void mla__seg_dots_avx2(int64_t n, int64_t n_kv, int64_t g, int64_t r, const float *x,
                            ptrdiff_t ldx, const float *q, float beta, float *s, ptrdiff_t lds)
{
    if (g != 1 || !(r == 2 || r == 4 || (r > 0 && r % 8 == 0)) || n_kv < 8) {
        mla__seg_dots_portable(n, n_kv, g, r, x, ldx, q, beta, s, lds);
        return;
    }
    int64_t j8 = n_kv / 8 * 8;
    for (int64_t u = 0; u < n; u++) {
        const float *xu = x + u * ldx;
        float *su = s + u * lds;
        for (int64_t j = 0; j < j8; j += 8)
            store8(seg_dots8(r, xu + j * r, q + j * r), beta, su + j);
    }
    if (j8 < n_kv)
        mla__seg_dots_portable(n, n_kv - j8, 1, r, x + j8 * r, ldx, q + j8 * r, beta, s + j8,
                               lds);
}

const mla__attn_kernels mla__attn_kernels_avx2 = {
    "avx2", gemm_bc, gemm_dot, softmax_step, load_t, load_t16, gemm_bc_src, gemm_dot_src,
    gemm_bc_asrc, mha_scores, mha_values, gemm_bf16, pack_pairs, to_bf16, round_bf16,
    mla__seg_dots_avx2,
    INT64_MAX, 0, /* rows over BF16 caches: the float32 loops (kernels.h) */
    "avx2", 0, 64, /* weights products of fewer rows: gemm_dot_src (kernels.h) */
    load_t8, gemm_bc_i16s,
};

#endif

/*
 * Generic vector kernels: the products of the AVX2 table written in the vector extensions of
 * GCC and Clang, in 4-lane float vectors: one register of whatever SIMD the target has (NEON on
 * AArch64, SSE2 on baseline x86-64, VSX on POWER). Wider vectors than the target's registers
 * are not kept in registers by GCC (AArch64: every accumulator of an 8-lane block went through
 * the stack). kernels.c takes them where neither AVX-512 nor AVX2 is there: every CPU but
 * recent x86 ones, which the portable oracle (an element at a time, each cached value converted
 * once per row it meets) served 11-70 times slower than the AVX2 kernels.
 *
 * Same contract as avx2.c, blocked for AArch64's 32 registers: each converted cache vector feeds
 * up to 5 rows, register blocks are compile-time constants. Conversions are exact and equal to
 * mla__src_get: F16 by the hardware on AArch64 (fcvtl), elsewhere by integer arithmetic on the
 * bits (one multiply by 2^112 rebiases normal and subnormal values alike), BF16 by a shift, I8
 * by conversion and one multiply by the group's scale. lib/attn/meson.build compiles this file
 * with -ffp-contract=fast, so that a·b + c is one fused multiply-add where the target has it
 * (ISO C mode forbids the contraction otherwise). doc/attention.md, "Kernels", has the
 * measurements.
 */
#include "attn/kernels/kernels.h"

#ifdef MLA_ATTN_HAVE_GENERIC

#include <math.h>
#include <string.h>

typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
typedef uint32_t vu __attribute__((vector_size(16)));
typedef uint16_t vh __attribute__((vector_size(8)));
#define VL 4 /* lanes a vector */

#define INL static inline __attribute__((always_inline))

enum { DT_F32, DT_F16, DT_BF16, DT_I8 };

static int dt_of(mla_dtype t)
{
    switch (t) {
    case MLA_DTYPE_F16: return DT_F16;
    case MLA_DTYPE_BF16: return DT_BF16;
    case MLA_DTYPE_I8: return DT_I8;
    default: return DT_F32;
    }
}

INL vf splat(float x)
{
    return (vf){x, x, x, x};
}

INL vi splat_i(int32_t x)
{
    return (vi){x, x, x, x};
}

INL vf loadu(const void *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

INL void storeu(void *p, vf v)
{
    memcpy(p, &v, sizeof v);
}

/* Lanes where m is all ones take a, the others b. */
INL vf select(vi m, vf a, vf b)
{
    return (vf)((m & (vi)a) | (~m & (vi)b));
}

INL float hsum(vf x)
{
    return (x[0] + x[2]) + (x[1] + x[3]);
}

/* 4 F16 values to float32, as mla_f16_to_f32. */
INL vf f16_to_f32(vh h)
{
#if defined(__aarch64__)
    /* The hardware's conversion (fcvtl), exact as well. */
    __extension__ typedef _Float16 vhf __attribute__((vector_size(8)));
    return __builtin_convertvector((vhf)h, vf);
#else
    /* Sign apart; exponent and mantissa moved into place and multiplied by 2^112 (exact for
     * normal and subnormal values); Inf and NaN keep their mantissa under an all-ones
     * exponent. Signed compare: SSE2, for one, has no unsigned one (em < 2^15 either way). */
    vu u = __builtin_convertvector(h, vu);
    vu sign = (u & 0x8000u) << 16, em = u & 0x7fffu;
    vf f = (vf)(em << 13) * splat(0x1p112f);
    vu inf_nan = (vu)((vi)em > 0x7bff);
    vu bits = ((vu)f & ~inf_nan) | (((em << 13) | 0x7f800000u) & inf_nan);
    return (vf)(bits | sign);
#endif
}

/* The scales of an I8 row's columns k .. k+3: lane l takes group g0 + off[l]. One broadcast
 * where the four columns share a group. Nothing for the other storage types. */
typedef struct scale_map {
    int64_t g0;
    int one;
    int32_t off[VL];
} scale_map;

INL scale_map scale_map_at(const int dt, const mla__src *s, int64_t k)
{
    scale_map m = {0, 1, {0}};
    if (dt != DT_I8)
        return m;
    m.g0 = k / s->group;
    m.one = (k + VL - 1) / s->group == m.g0;
    for (int l = 0; l < VL; l++)
        m.off[l] = (int32_t)((k + l) / s->group - m.g0);
    return m;
}

INL vf scales(const mla__src *s, int64_t t, const scale_map *m)
{
    const float *sc = s->sc + t * s->lds + m->g0;
    if (m->one)
        return splat(sc[0]);
    return (vf){sc[m->off[0]], sc[m->off[1]], sc[m->off[2]], sc[m->off[3]]};
}

/* Lane l's left shift that puts byte l of a word on top (little- or big-endian memory). */
INL vi byte_shift(void)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return (vi){0, 8, 16, 24};
#else
    return (vi){24, 16, 8, 0};
#endif
}

/* Elements (t, k .. k+3) as float32, exactly as mla__src_get converts them. */
INL vf load_v(const int dt, const mla__src *s, int64_t t, int64_t k, const scale_map *sm)
{
    const unsigned char *row = s->p + t * s->ld;
    if (dt == DT_F32)
        return loadu(row + 4 * k);
    if (dt == DT_F16 || dt == DT_BF16) {
        vh h;
        memcpy(&h, row + 2 * k, sizeof h);
        if (dt == DT_F16)
            return f16_to_f32(h);
        return (vf)(__builtin_convertvector(h, vu) << 16);
    }
    /* Four bytes as one word in every lane, each lane's byte shifted to the top and back
     * (sign-extending): vector shifts, where a conversion from int8 lanes was scalar. */
    int32_t w;
    memcpy(&w, row + k, sizeof w);
    vi q = (vi)((vu)splat_i(w) << (vu)byte_shift()) >> 24; /* unsigned left: no overflow */
    return __builtin_convertvector(q, vf) * scales(s, t, sm);
}

/* Elements (t, k .. k+n−1), n < 4, and zeros after them. */
INL vf load_part(const mla__src *s, int64_t t, int64_t k, int64_t n)
{
    vf v = splat(0.0f);
    for (int64_t l = 0; l < n; l++)
        v[l] = mla__src_get(s, t, k + l);
    return v;
}

INL void store_v(vf x, float beta, float *c)
{
    storeu(c, beta != 0.0f ? loadu(c) + x : x);
}

/* The first n (< 4) lanes of x added to (beta ≠ 0) or stored over c[0 .. n). */
INL void store_part(vf x, float beta, float *c, int64_t n)
{
    for (int64_t l = 0; l < n; l++)
        c[l] = beta != 0.0f ? c[l] + x[l] : x[l];
}

/*
 * C (mr × ncols) [+]= A · B with B read from a source: one mr × (4·nv) block, mr, nv and full
 * (ncols == 4·nv) compile-time constants. At 5 × 16: 20 accumulators, four B vectors and the
 * five A values of a step in AArch64's 32 registers (at 6 × 16 GCC kept three accumulators
 * on the stack).
 */
INL void bcs_block(const int dt, const int mr, const int nv, const int full, int64_t ncols,
                   int64_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b,
                   int64_t t0, int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    vf acc[5][4];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++)
            acc[r][v] = splat(0.0f);
    scale_map sm[4];
#pragma GCC unroll 16
    for (int v = 0; v < nv; v++)
        sm[v] = scale_map_at(dt, b, col0 + VL * v);
    for (int64_t kk = 0; kk < k; kk++) {
        vf bv[4];
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++)
            bv[v] = full || v + 1 < nv ? load_v(dt, b, t0 + kk, col0 + VL * v, &sm[v])
                                       : load_part(b, t0 + kk, col0 + VL * v, ncols - VL * v);
        const float *ak = a + kk * csa;
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++) {
            vf av = splat(ak[r * rsa]);
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++)
                acc[r][v] += av * bv[v];
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++) {
            if (full || v + 1 < nv)
                store_v(acc[r][v], beta, c + r * ldc + VL * v);
            else
                store_part(acc[r][v], beta, c + r * ldc + VL * v, ncols - VL * v);
        }
}

/* mr rows (a constant) of C: whole 16-, 8- and 4-column blocks, then the last partial one. */
INL void bcs_rows(const int dt, const int mr, int64_t n, int64_t k, const float *a,
                  ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0, int64_t col0,
                  float beta, float *c, ptrdiff_t ldc)
{
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        bcs_block(dt, mr, 4, 1, 16, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
    if (j + 8 <= n) {
        bcs_block(dt, mr, 2, 1, 8, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
        j += 8;
    }
    if (j + 4 <= n) {
        bcs_block(dt, mr, 1, 1, 4, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
        j += 4;
    }
    if (j < n)
        bcs_block(dt, mr, 1, 0, n - j, k, a, rsa, csa, b, t0, col0 + j, beta, c + j, ldc);
}

INL void gemm_bc_src_dt(const int dt, int64_t m, int64_t n, int64_t k, const float *a,
                        ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                        int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    /* Blocks of at most 5 rows, the rows split evenly (9 query rows: 5 and 4, not 5 and a
     * lone 1-row block that loads a B vector for every multiply-add). */
    int64_t nb = (m + 4) / 5;
    for (int64_t bi = 0, i = 0; bi < nb; bi++) {
        int64_t rows = m / nb + (bi < m % nb);
        const float *ai = a + i * rsa;
        float *ci = c + i * ldc;
        switch (rows) {
        case 1: bcs_rows(dt, 1, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        case 2: bcs_rows(dt, 2, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        case 3: bcs_rows(dt, 3, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        case 4: bcs_rows(dt, 4, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        default: bcs_rows(dt, 5, n, k, ai, rsa, csa, b, t0, col0, beta, ci, ldc); break;
        }
        i += rows;
    }
}

static void gemm_bc_src(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                        ptrdiff_t csa, const mla__src *b, int64_t t0, int64_t col0, float beta,
                        float *c, ptrdiff_t ldc)
{
    switch (dt_of(b->t)) {
    case DT_F16: gemm_bc_src_dt(DT_F16, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
    case DT_BF16: gemm_bc_src_dt(DT_BF16, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
    case DT_I8: gemm_bc_src_dt(DT_I8, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
    default: gemm_bc_src_dt(DT_F32, m, n, k, a, rsa, csa, b, t0, col0, beta, c, ldc); break;
    }
}

/* Float32 B as a source: row kk is B's row kk. */
static void gemm_bc(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                    ptrdiff_t csa, const float *b, ptrdiff_t ldb, float beta, float *c,
                    ptrdiff_t ldc)
{
    mla__src s = {(const unsigned char *)b, ldb * (ptrdiff_t)sizeof(float), MLA_DTYPE_F32,
                  NULL, 0, 1};
    gemm_bc_src_dt(DT_F32, m, n, k, a, rsa, csa, &s, 0, 0, beta, c, ldc);
}

/* Dot products of mr rows of A with nr rows of B (tokens) along k, B converted as loaded. */
INL void dots_block(const int dt, const int mr, const int nr, int64_t rows, int64_t toks,
                    int64_t k, const float *a, ptrdiff_t lda, const mla__src *b, int64_t t0,
                    int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    vf acc[4][4];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            acc[r][q] = splat(0.0f);
    int64_t kk = 0;
    for (; kk + VL <= k; kk += VL) {
        vf bv[4];
        scale_map sm = scale_map_at(dt, b, col0 + kk);
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            bv[q] = q < toks ? load_v(dt, b, t0 + q, col0 + kk, &sm) : splat(0.0f);
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
            if (r < rows) {
                vf av = loadu(a + r * lda + kk);
#pragma GCC unroll 16
                for (int q = 0; q < nr; q++)
                    if (q < toks)
                        acc[r][q] += av * bv[q];
            }
    }
    if (kk < k) {
        vf bv[4];
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            bv[q] = q < toks ? load_part(b, t0 + q, col0 + kk, k - kk) : splat(0.0f);
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
            if (r < rows) {
                vf av = splat(0.0f);
                for (int64_t l = 0; l < k - kk; l++)
                    av[l] = a[r * lda + kk + l];
#pragma GCC unroll 16
                for (int q = 0; q < nr; q++)
                    if (q < toks)
                        acc[r][q] += av * bv[q];
            }
    }
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int q = 0; q < nr; q++)
            if (r < rows && q < toks) {
                float *cp = c + r * ldc + q;
                float sv = hsum(acc[r][q]);
                *cp = beta != 0.0f ? *cp + sv : sv;
            }
}

INL void dots_rows(const int dt, const int mr, const int nr, int64_t rows, int64_t n,
                   int64_t k, const float *a, ptrdiff_t lda, const mla__src *b, int64_t t0,
                   int64_t col0, float beta, float *c, ptrdiff_t ldc)
{
    /* Whole blocks with their token count a constant (no test in the loop over k), then the
     * rest. */
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
    for (int64_t i = 0; i < m; i += 4) {
        int64_t rows = m - i < 4 ? m - i : 4;
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        switch (rows) {
        case 1: dots_rows(dt, 1, 4, 1, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        case 2: dots_rows(dt, 2, 4, 2, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        case 3: dots_rows(dt, 3, 4, 3, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        default: dots_rows(dt, 4, 4, 4, n, k, ai, lda, b, t0, col0, beta, ci, ldc); break;
        }
    }
}

static void gemm_dot_src(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
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
static void gemm_dot(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
                     const float *b, ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    mla__src s = {(const unsigned char *)b, ldb * (ptrdiff_t)sizeof(float), MLA_DTYPE_F32,
                  NULL, 0, 1};
    gemm_dot_src_dt(DT_F32, m, n, k, a, lda, &s, 0, 0, beta, c, ldc);
}

static void mha_scores(int64_t n_kv, int64_t d, int64_t n, const float *q, const mla__src *k,
                       int64_t t0, float *s, ptrdiff_t lds)
{
    for (int64_t j = 0; j < n_kv; j++)
        gemm_dot_src(1, n, d, q + j * d, d, k, t0, j * d, 0.0f, s + j * lds, lds);
}

static void mha_values(int64_t n_kv, int64_t d, int64_t n, const float *p, ptrdiff_t lds,
                       const mla__src *v, int64_t t0, float *o, ptrdiff_t ldo)
{
    for (int64_t j = 0; j < n_kv; j++)
        gemm_bc_src(1, d, n, p + j * lds, lds, 1, v, t0, j * d, 1.0f, o + j * ldo, ldo);
}

/* A panel of rows converted as load_v converts them (mla__panel_fn). */
INL void asrc_convert(const int dt, const mla__src *a, int64_t t0, int64_t rows, int64_t col0,
                      int64_t kc, float *buf)
{
    int64_t kk = 0;
    for (; kk + VL <= kc; kk += VL) {
        scale_map sm = scale_map_at(dt, a, col0 + kk);
        for (int64_t r = 0; r < rows; r++)
            storeu(buf + r * kc + kk, load_v(dt, a, t0 + r, col0 + kk, &sm));
    }
    for (; kk < kc; kk++)
        for (int64_t r = 0; r < rows; r++)
            buf[r * kc + kk] = mla__src_get(a, t0 + r, col0 + kk);
}

static void asrc_panel(const mla__src *a, int64_t t0, int64_t rows, int64_t col0, int64_t kc,
                       float *buf)
{
    switch (dt_of(a->t)) {
    case DT_F16: asrc_convert(DT_F16, a, t0, rows, col0, kc, buf); break;
    case DT_BF16: asrc_convert(DT_BF16, a, t0, rows, col0, kc, buf); break;
    case DT_I8: asrc_convert(DT_I8, a, t0, rows, col0, kc, buf); break;
    default: asrc_convert(DT_F32, a, t0, rows, col0, kc, buf); break;
    }
}

static void gemm_bc_asrc(int64_t m, int64_t n, int64_t k, const mla__src *a, int64_t t0,
                         int64_t col0, const float *b, ptrdiff_t ldb, float beta, float *c,
                         ptrdiff_t ldc)
{
    mla__gemm_bc_asrc_panels(m, n, k, a, t0, col0, b, ldb, beta, c, ldc, gemm_bc, asrc_panel);
}

/*
 * exp(x) for x ≤ 0, 4 lanes: the polynomial of kernels.h (MLA__EXP_*), 2^n built in the
 * exponent bits. n is rounded to nearest by adding and subtracting 1.5·2^23 (|x·log2 e| < 2^22
 * after the clamp). A NaN stays NaN: the clamp keeps it (it compares false), its n is taken as
 * 0 rather than converted to an integer, and the polynomial carries it.
 */
INL vf exp_neg(vf x)
{
    const vf lo = splat(MLA__EXP_MIN), shift = splat(12582912.0f);
    x = select(x < lo, lo, x);
    vf t = x * splat(MLA__EXP_LOG2E);
    vf n = (t + shift) - shift;
    n = select(n == n, n, splat(0.0f));
    vf f = t - n;
    vf p = splat(MLA__EXP_C6);
    p = p * f + splat(MLA__EXP_C5);
    p = p * f + splat(MLA__EXP_C4);
    p = p * f + splat(MLA__EXP_C3);
    p = p * f + splat(MLA__EXP_C2);
    p = p * f + splat(MLA__EXP_C1);
    p = p * f + splat(1.0f);
    /* n ≥ −126 here, so 2^n is a normal float: its exponent field is n + 127. */
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}

/* A row of the running output rescaled when its running max moved. */
INL void scale_row(float *oi, int64_t dv, float scale)
{
    int64_t j = 0;
    for (; j + VL <= dv; j += VL)
        storeu(oi + j, splat(scale) * loadu(oi + j));
    for (; j < dv; j++)
        oi[j] *= scale;
}

INL vi lanes_below(int64_t n)
{
    const vi iota = {0, 1, 2, 3};
    return iota < splat_i((int32_t)(n < VL ? n : VL));
}

/* x[0 .. n) of a row; lanes from n on hold `fill`. */
INL vf load_upto(const float *x, int64_t n, float fill)
{
    if (n >= VL)
        return loadu(x);
    vf v = splat(fill);
    for (int64_t l = 0; l < n; l++)
        v[l] = x[l];
    return v;
}

INL void store_upto(float *x, int64_t n, vf v)
{
    if (n >= VL) {
        storeu(x, v);
        return;
    }
    for (int64_t l = 0; l < n; l++)
        x[l] = v[l];
}

/* The column layout of the absorbed path (s_row = 1: 4 query rows side by side in a vector). */
static void softmax_cols(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_col,
                         const int64_t *nvis, int64_t rows_per_nvis, float *mx, float *l,
                         float *o, ptrdiff_t ldo, int64_t dv)
{
    for (int64_t i0 = 0; i0 < n_rows; i0 += VL) {
        int64_t w = n_rows - i0 < VL ? n_rows - i0 : VL;
        /* Visible counts of the rows; rows past the tile's visibility are masked per t. */
        vi nvv = splat_i(0);
        int64_t nv_max = 0;
        for (int64_t r = 0; r < w; r++) {
            int64_t v = nvis[(i0 + r) / rows_per_nvis];
            nvv[r] = (int32_t)v;
            nv_max = v > nv_max ? v : nv_max;
        }
        const vf ninf = splat(-INFINITY);
        vf m_old = load_upto(mx + i0, w, -INFINITY), m_new = m_old;
        for (int64_t t = 0; t < nv_max; t++) {
            vi vis = nvv > splat_i((int32_t)t);
            vf x = select(vis, load_upto(s + t * s_col + i0, w, -INFINITY), ninf);
            m_new = select(m_new > x, m_new, x); /* a NaN score passes, as maxps does */
        }
        vf sum = splat(0.0f);
        for (int64_t t = 0; t < t_len; t++) {
            float *st = s + t * s_col + i0;
            vi vis = nvv > splat_i((int32_t)t);
            /* Rows that see nothing have m_new = −inf: their lanes are masked off here. */
            vf p = (vf)((vi)exp_neg(load_upto(st, w, 0.0f) - m_new) & vis);
            sum += p;
            store_upto(st, w, p);
        }
        for (int64_t r = 0; r < w; r++) {
            if (nvv[r] == 0)
                continue; /* nothing visible: the row keeps its state */
            float scale = m_old[r] == -INFINITY ? 0.0f : expf(m_old[r] - m_new[r]);
            mx[i0 + r] = m_new[r];
            l[i0 + r] = l[i0 + r] * scale + sum[r];
            if (scale != 1.0f)
                scale_row(o + (i0 + r) * ldo, dv, scale);
        }
    }
}

/* The row layout (a row's scores contiguous), vectorized along the tokens; the column layout
 * with unit row stride by softmax_cols, any other by the portable loop. */
static void softmax_step(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_row,
                         ptrdiff_t s_col, const int64_t *nvis, int64_t rows_per_nvis, float *mx,
                         float *l, ptrdiff_t ms, float *o, ptrdiff_t ldo, int64_t dv)
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
        vf vmax = splat(m_old);
        for (int64_t t = 0; t < nv; t += VL) {
            vf x = load_upto(si + t, nv - t, -INFINITY);
            vmax = select(vmax > x, vmax, x); /* a NaN score passes, as maxps does */
        }
        float m_new = vmax[0];
        for (int r = 1; r < VL; r++)
            m_new = m_new > vmax[r] ? m_new : vmax[r];
        vf mv = splat(m_new), sum = splat(0.0f);
        for (int64_t t = 0; t < nv; t += VL) {
            /* Lanes past the visible ones are masked off (exp_neg does not flush to 0). */
            vf p = (vf)((vi)exp_neg(load_upto(si + t, nv - t, -INFINITY) - mv) &
                        lanes_below(nv - t));
            sum += p;
            store_upto(si + t, nv - t, p);
        }
        if (nv < t_len)
            memset(si + nv, 0, (size_t)(t_len - nv) * sizeof *si);
        if (nv == 0)
            continue;
        float scale = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
        mx[i * ms] = m_new;
        l[i * ms] = l[i * ms] * scale + hsum(sum);
        if (scale != 1.0f)
            scale_row(o + i * ldo, dv, scale);
    }
}

/* Rows converted a vector at a time, stored transposed an element at a time (a shuffle
 * network is not portable across the two compilers' vector extensions). */
INL void load_t_dt(const int dt, const mla__src *s, int64_t t0, int64_t n, int64_t col0,
                   int64_t kw, float *dst, ptrdiff_t ldd)
{
    int64_t k = 0;
    for (; k + VL <= kw; k += VL) {
        scale_map sm = scale_map_at(dt, s, col0 + k);
        for (int64_t t = 0; t < n; t++) {
            vf r = load_v(dt, s, t0 + t, col0 + k, &sm);
#pragma GCC unroll 4
            for (int c = 0; c < VL; c++)
                dst[(k + c) * ldd + t] = r[c];
        }
    }
    for (; k < kw; k++)
        for (int64_t t = 0; t < n; t++)
            dst[k * ldd + t] = mla__src_get(s, t0 + t, col0 + k);
}

static void load_t(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                   float *dst, ptrdiff_t ldd)
{
    switch (dt_of(s->t)) {
    case DT_F16: load_t_dt(DT_F16, s, t0, n, col0, kw, dst, ldd); break;
    case DT_BF16: load_t_dt(DT_BF16, s, t0, n, col0, kw, dst, ldd); break;
    case DT_I8: load_t_dt(DT_I8, s, t0, n, col0, kw, dst, ldd); break;
    default: load_t_dt(DT_F32, s, t0, n, col0, kw, dst, ldd); break;
    }
}

/* Moves only, a value at a time: the portable loops are what a compiler makes of them. */
static void load_t16(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                     uint16_t *dst, ptrdiff_t ldd)
{
    mla__attn_kernels_portable.load_t16(s, t0, n, col0, kw, dst, ldd);
}

/*
 * bf16 pairs × bf16 pairs into float32, vectorized along B's columns: each 32-bit pair word of
 * B gives its two float32 vectors with a shift and a mask, then two multiply-adds (odd element
 * first, as the portable kernel sums them). Blocks of 4 rows × 8 columns (at 16, GCC kept half
 * the accumulators on the stack).
 */
INL void bf16_block(const int mr, int64_t rows, int64_t kp, const uint16_t *a, ptrdiff_t rsa,
                    ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb, float beta, float *c,
                    ptrdiff_t ldc)
{
    vf acc[4][2];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 16
        for (int v = 0; v < 2; v++)
            acc[r][v] = splat(0.0f);
    for (int64_t p = 0; p < kp; p++) {
        vf be[2], bo[2];
#pragma GCC unroll 16
        for (int v = 0; v < 2; v++) {
            vu w;
            memcpy(&w, b + p * ldb + 2 * VL * v, sizeof w);
            be[v] = (vf)(w << 16);
            bo[v] = (vf)(w & 0xffff0000u);
        }
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
            if (r < rows) {
                const uint16_t *ap = a + r * rsa + p * csa;
                /* bf16 to float32: the 16 bits on top of a zero half (exact), here rather
                 * than by a call, which would spill the accumulators. */
                uint32_t e = (uint32_t)ap[0] << 16, o = (uint32_t)ap[1] << 16;
                vf ae = (vf)(vu){e, e, e, e}, ao = (vf)(vu){o, o, o, o};
#pragma GCC unroll 16
                for (int v = 0; v < 2; v++) {
                    acc[r][v] += ao * bo[v];
                    acc[r][v] += ae * be[v];
                }
            }
    }
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
        if (r < rows)
#pragma GCC unroll 16
            for (int v = 0; v < 2; v++)
                store_v(acc[r][v], beta, c + r * ldc + VL * v);
}

static void gemm_bf16(int64_t m, int64_t n, int64_t kp, const uint16_t *a, ptrdiff_t rsa,
                      ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb, float beta, float *c,
                      ptrdiff_t ldc)
{
    int64_t n8 = n / 8 * 8;
    for (int64_t i = 0; i < m; i += 4) {
        int64_t rows = m - i < 4 ? m - i : 4;
        for (int64_t j = 0; j < n8; j += 8)
            bf16_block(4, rows, kp, a + i * rsa, rsa, csa, b + 2 * j, ldb, beta, c + i * ldc + j,
                       ldc);
    }
    if (n8 < n)
        mla__attn_kernels_portable.gemm_bf16(m, n - n8, kp, a, rsa, csa, b + 2 * n8, ldb, beta,
                                             c + n8, ldc);
}

static void pack_pairs(const mla__src *s, int64_t n, int64_t col0, int64_t w, uint16_t *dst,
                       ptrdiff_t ldd, int64_t t)
{
    mla__attn_kernels_portable.pack_pairs(s, n, col0, w, dst, ldd, t);
}

/* Finite x rounded to bf16 (nearest, ties to even) in the float32 bits: add 0x7fff and the lowest
 * kept bit, then the top 16 bits are the result (exact for subnormals too). */
INL vu bf16_bits(vf x)
{
    vu u = (vu)x;
    return u + ((u >> 16) & 1u) + 0x7fffu;
}

/* Finite x (the queries and probabilities of the bf16 products), as avx2.c. */
static void to_bf16(const float *x, int64_t n, uint16_t *dst)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        vh h = __builtin_convertvector(bf16_bits(loadu(x + i)) >> 16, vh);
        memcpy(dst + i, &h, sizeof h);
    }
    if (i < n)
        mla__attn_kernels_portable.to_bf16(x + i, n - i, dst + i);
}

static void round_bf16(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL)
        storeu(x + i, (vf)(bf16_bits(loadu(x + i)) & 0xffff0000u));
    if (i < n)
        mla__attn_kernels_portable.round_bf16(x + i, n - i);
}

const mla__attn_kernels mla__attn_kernels_generic = {
    "generic", gemm_bc, gemm_dot, softmax_step, load_t, load_t16, gemm_bc_src, gemm_dot_src,
    gemm_bc_asrc, mha_scores, mha_values, gemm_bf16, pack_pairs, to_bf16, round_bf16,
    mla__seg_dots_portable, /* a few percent of a decode: left to the compiler */
    INT64_MAX, 0, /* rows over BF16 caches: the float32 loops (kernels.h) */
    "generic", 0, 0, /* weights products: BLIS, which has kernels of its own for each target */
    NULL, NULL,      /* I8 keys dequantized by load_t */
};

#endif

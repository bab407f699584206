/*
 * Each vectorized kernel against the portable one (the oracle), over shapes that hit every
 * block size and tail: products to float32 rounding of the sums, the online-softmax step in both
 * score layouts with rows seeing different numbers of tokens, including none; the kernels that
 * read cached rows in place (every storage type, odd widths and offsets for the vector tails)
 * against the portable conversion, which is itself checked against exactly representable values.
 * Also the one-row case of mla__sgemm (BLIS gemv, rows split across threads) and the weights
 * products of mla__sgemm_wt (few rows through gemm_dot_src, more through BLIS) against float64.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef MLA_TEST_AVX512_EMULATED
#  include "../avx512_emulated_names.h"
#endif
#include "attn/internal.h"
#include "attn/kernels/kernels.h"
#include "../tap.h"

/* The products' threads: up to n of one pool's 8 (a worker runs a part as the caller would),
 * and at most MLA_TEST_MAX_THREADS (.ci/aarch64 sets 1: its emulator cannot start threads). */
static mla__pool *pool;
static int max_threads = 8;

static mla__team team(int n)
{
    return (mla__team){pool, n < max_threads ? n : max_threads};
}

static float *randv(size_t n, unsigned long long *seed)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)tap_rand(seed);
    return p;
}

/* max |a − b| / (k · max|b|): the error a sum of k products may carry in float32. */
static double prod_err(const float *a, const float *b, size_t n, int64_t k)
{
    return tap_rel_diff(a, b, n) / (double)(k > 0 ? k : 1);
}

static void test_products(const mla__attn_kernels *v, const mla__attn_kernels *p)
{
    static const int64_t ms[] = {1, 3, 9, 12, 13, 32};
    static const int64_t ns[] = {1, 5, 16, 17, 31, 48, 70};
    static const int64_t ks[] = {0, 1, 7, 16, 33};
    unsigned long long seed = 5;
    double worst_bc = 0, worst_dot = 0;
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 7; b++)
            for (size_t c = 0; c < 5; c++) {
                int64_t m = ms[a], n = ns[b], k = ks[c];
                for (int variant = 0; variant < 2; variant++) {
                    float beta = variant ? 1.0f : 0.0f;
                    /* A with a column stride (transposed probabilities) or row-contiguous. */
                    ptrdiff_t rsa = variant ? 1 : k + 3, csa = variant ? m + 2 : 1;
                    ptrdiff_t ldb = n + 5, ldc = n + 2;
                    float *A = randv((size_t)((m + 2) * (k + 3) + 8), &seed);
                    float *B = randv((size_t)(k * ldb + 1), &seed);
                    float *C0 = randv((size_t)(m * ldc), &seed);
                    float *C1 = malloc((size_t)(m * ldc) * sizeof *C1);
                    memcpy(C1, C0, (size_t)(m * ldc) * sizeof *C1);
                    v->gemm_bc(m, n, k, A, rsa, csa, B, ldb, beta, C0, ldc);
                    p->gemm_bc(m, n, k, A, rsa, csa, B, ldb, beta, C1, ldc);
                    double e = prod_err(C0, C1, (size_t)(m * ldc), k + 1);
                    worst_bc = e > worst_bc || e != e ? e : worst_bc;
                    /* gemm_dot: A m × k (lda k + 3), B n × k (ldb k + 1). */
                    float *Bd = randv((size_t)(n * (k + 1) + 1), &seed);
                    memcpy(C1, C0, (size_t)(m * ldc) * sizeof *C1);
                    v->gemm_dot(m, n, k, A, k + 3, Bd, k + 1, beta, C0, ldc);
                    p->gemm_dot(m, n, k, A, k + 3, Bd, k + 1, beta, C1, ldc);
                    e = prod_err(C0, C1, (size_t)(m * ldc), k + 1);
                    worst_dot = e > worst_dot || e != e ? e : worst_dot;
                    free(A);
                    free(B);
                    free(Bd);
                    free(C0);
                    free(C1);
                }
            }
    CHECK(worst_bc < 1e-6, "%s gemm_bc equals portable (max rel err per term %.2e)", v->name,
          worst_bc);
    CHECK(worst_dot < 1e-6, "%s gemm_dot equals portable (max rel err per term %.2e)", v->name,
          worst_dot);
}

static void test_softmax(const mla__attn_kernels *v, const mla__attn_kernels *p, int columns)
{
    unsigned long long seed = 9;
    double worst = 0;
    for (int64_t rows = 1; rows <= 40; rows += 13)
        for (int64_t t_len = 1; t_len <= 70; t_len += 23) {
            int64_t dv = 19, per = 3;
            ptrdiff_t s_row = columns ? 1 : t_len + 1, s_col = columns ? rows : 1;
            size_t sn = (size_t)(rows * (t_len + 1));
            float *s0 = randv(sn, &seed), *s1 = malloc(sn * sizeof *s1);
            for (size_t i = 0; i < sn; i++)
                s0[i] *= 8.0f;
            memcpy(s1, s0, sn * sizeof *s1);
            int64_t nvis[64];
            for (int64_t i = 0; i < (rows + per - 1) / per; i++)
                nvis[i] = (i * 7) % (t_len + 1); /* includes 0 and t_len */
            float mx0[64], l0[64], mx1[64], l1[64];
            for (int64_t i = 0; i < rows; i++) {
                /* Half the rows start fresh, half carry a previous tile's state. */
                mx0[i] = mx1[i] = i % 2 ? -INFINITY : (float)tap_rand(&seed) * 4.0f;
                l0[i] = l1[i] = i % 2 ? 0.0f : 2.0f;
            }
            float *o0 = randv((size_t)(rows * dv), &seed), *o1 = malloc((size_t)(rows * dv) * sizeof *o1);
            for (int64_t i = 1; i < rows; i += 2)
                memset(o0 + i * dv, 0, (size_t)dv * sizeof *o0);
            memcpy(o1, o0, (size_t)(rows * dv) * sizeof *o1);
            v->softmax_step(rows, t_len, s0, s_row, s_col, nvis, per, mx0, l0, 1, o0, dv, dv);
            p->softmax_step(rows, t_len, s1, s_row, s_col, nvis, per, mx1, l1, 1, o1, dv, dv);
            double e = tap_rel_diff(s0, s1, sn);
            double e2 = tap_rel_diff(o0, o1, (size_t)(rows * dv));
            double e3 = tap_rel_diff(l0, l1, (size_t)rows);
            int same_mx = 1;
            for (int64_t i = 0; i < rows; i++)
                same_mx &= mx0[i] == mx1[i] || (isinf(mx0[i]) && isinf(mx1[i]));
            if (!same_mx)
                e = INFINITY;
            e = e > e2 ? e : e2;
            e = e > e3 ? e : e3;
            worst = e > worst || e != e ? e : worst;
            free(s0);
            free(s1);
            free(o0);
            free(o1);
        }
    CHECK(worst < 1e-6, "%s softmax step, %s layout, equals portable (max rel err %.2e)",
          v->name, columns ? "column" : "row", worst);
}

/* A score that overflowed (+inf, or NaN from inf − inf) must leave its row's sum NaN, so that
 * the forward's output check reports it; other rows stay finite. The vectorized exp once
 * clamped NaN to its lower bound and turned an overflowed row into finite, wrong output. */
static void test_softmax_overflow(const mla__attn_kernels *k, int columns)
{
    /* 9 rows: a column layout's first 8 take the AVX2 kernel's unmasked loop up to token 1. */
    enum { ROWS = 9, T = 21, DV = 5 };
    ptrdiff_t s_row = columns ? 1 : T, s_col = columns ? ROWS : 1;
    float s[ROWS * T], mx[ROWS], l[ROWS], o[ROWS * DV];
    unsigned long long seed = 17;
    for (int i = 0; i < ROWS * T; i++)
        s[i] = (float)tap_rand(&seed) * 4.0f;
    int64_t nvis[ROWS] = {T, T, T, 7, T, 1, T, T, T};
    /* Row 1 +inf, row 2 NaN, row 4 +inf in a later tile's max, row 5 +inf alone. */
    s[1 * s_row + 3 * s_col] = INFINITY;
    s[2 * s_row + 20 * s_col] = NAN;
    s[4 * s_row + 0 * s_col] = INFINITY;
    s[4 * s_row + 1 * s_col] = INFINITY;
    s[5 * s_row] = INFINITY;
    for (int i = 0; i < ROWS; i++) {
        mx[i] = i % 2 ? -INFINITY : 1.0f;
        l[i] = i % 2 ? 0.0f : 1.5f;
    }
    for (int i = 0; i < ROWS * DV; i++)
        o[i] = 0.25f;
    k->softmax_step(ROWS, T, s, s_row, s_col, nvis, 1, mx, l, 1, o, DV, DV);
    int ok = 1;
    for (int i = 0; i < ROWS; i++)
        ok &= i == 0 || i == 3 || i > 5 ? isfinite(l[i]) : isnan(l[i]);
    CHECK(ok, "%s softmax step, %s layout: +inf or NaN scores leave the row's sum NaN, other rows "
          "finite (sums %g %g %g %g %g %g %g %g %g)", k->name, columns ? "column" : "row", l[0],
          l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8]);
}

/* A source of `rows` rows of width w in storage type t (row stride padded by a few bytes), whose
 * values are exactly representable (multiples of 1/64 below 4 in magnitude; I8 values times
 * per-group scales), so the exact float32 value of each element is known: exact[t·w + k]. */
typedef struct test_src {
    mla__src s;
    unsigned char *mem;
    float *scales, *exact;
} test_src;

static void src_make(test_src *ts, mla_dtype t, int64_t rows, int64_t w, int32_t group,
                     unsigned long long *seed)
{
    size_t es = t == MLA_DTYPE_F32 ? 4 : t == MLA_DTYPE_I8 ? 1 : 2;
    ptrdiff_t ld = (ptrdiff_t)(w * (int64_t)es + 6);
    int64_t ng = t == MLA_DTYPE_I8 ? (w + group - 1) / group : 0;
    ts->mem = calloc((size_t)(rows * ld + 8), 1);
    ts->scales = malloc((size_t)(rows * ng + 1) * sizeof(float));
    ts->exact = malloc((size_t)(rows * w + 1) * sizeof(float));
    for (int64_t i = 0; i < rows * ng; i++)
        ts->scales[i] = (float)(0.01 + fabs(tap_rand(seed)));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < w; k++) {
            unsigned char *at = ts->mem + r * ld + k * (int64_t)es;
            float v = (float)floor(tap_rand(seed) * 256.0) / 64.0f;
            uint16_t h;
            if (t == MLA_DTYPE_F16) {
                h = mla_f32_to_f16(v);
                memcpy(at, &h, 2);
            } else if (t == MLA_DTYPE_BF16) {
                h = mla_f32_to_bf16(v);
                memcpy(at, &h, 2);
            } else if (t == MLA_DTYPE_I8) {
                int8_t q = (int8_t)floor(tap_rand(seed) * 127.0);
                *at = (unsigned char)q;
                v = (float)q * ts->scales[r * ng + k / group];
            } else {
                memcpy(at, &v, 4);
            }
            ts->exact[r * w + k] = v;
        }
    ts->s.p = ts->mem;
    ts->s.ld = ld;
    ts->s.t = t;
    ts->s.sc = ts->scales;
    ts->s.lds = ng;
    ts->s.group = group;
}

static void src_free(test_src *ts)
{
    free(ts->mem);
    free(ts->scales);
    free(ts->exact);
}

static const mla_dtype src_types[] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16, MLA_DTYPE_I8};
static const char *const src_names[] = {"f32", "f16", "bf16", "i8"};

/* The portable conversion against the exactly known values. */
static void test_src_get(void)
{
    unsigned long long seed = 21;
    for (int d = 0; d < 4; d++) {
        test_src ts;
        int64_t rows = 5, w = 53;
        src_make(&ts, src_types[d], rows, w, 4, &seed);
        int64_t bad = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < w; k++)
                bad += mla__src_get(&ts.s, r, k) != ts.exact[r * w + k];
        CHECK(bad == 0, "portable conversion of %s rows exact (%lld wrong)", src_names[d],
              (long long)bad);
        src_free(&ts);
    }
}

/* Every one of the 65536 F16 values through v's load_t (8192 rows of 8), against the portable
 * conversion: the same bits, or NaN for NaN (vcvtph2ps quiets signalling NaNs). Covers the
 * subnormals, zeros of both signs and infinities the random rows above never hold. */
static void test_f16_every_value(const mla__attn_kernels *v)
{
    int64_t rows = 8192, w = 8;
    uint16_t *h = malloc((size_t)(rows * w) * sizeof *h);
    float *dst = malloc((size_t)(rows * w) * sizeof *dst);
    for (int64_t i = 0; i < rows * w; i++)
        h[i] = (uint16_t)i;
    mla__src s = {(const unsigned char *)h, (ptrdiff_t)(w * sizeof *h), MLA_DTYPE_F16, NULL, 0, 1};
    v->load_t(&s, 0, rows, 0, w, dst, rows);
    int64_t bad = 0;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t k = 0; k < w; k++) {
            float got = dst[k * rows + t], want = mla_f16_to_f32(h[t * w + k]);
            bad += want != want ? got == got : memcmp(&got, &want, sizeof got) != 0;
        }
    CHECK(bad == 0, "%s converts every F16 value as the portable conversion does (%lld differ)",
          v->name, (long long)bad);
    free(h);
    free(dst);
}

static const int64_t src_ms[] = {1, 3, 9, 13, 21};
/* 96 and 144: 9 rows in whole 9 × 48 blocks (mla__gemm_bc_src_w48_avx512); 70 and 100 not. */
static const int64_t src_ns[] = {1, 5, 16, 20, 24, 33, 48, 53, 70, 96, 100, 144};
static const int64_t src_ks[] = {0, 1, 7, 33};

/* The largest error per term of v's gemm_bc_src against p's over the source, odd shapes,
 * strides, offsets and both beta values. */
static double bc_src_err(const mla__attn_kernels *v, const mla__attn_kernels *p,
                         const test_src *ts, unsigned long long *seed)
{
    double worst = 0;
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < sizeof src_ns / sizeof src_ns[0]; b++)
            for (size_t c = 0; c < 4; c++)
                for (int variant = 0; variant < 2; variant++) {
                    int64_t m = src_ms[a], n = src_ns[b], k = src_ks[c], col0 = variant ? 7 : 0;
                    float beta = variant ? 1.0f : 0.0f;
                    ptrdiff_t rsa = variant ? 1 : k + 3, csa = variant ? m + 2 : 1;
                    ptrdiff_t ldc = n + 2;
                    float *A = randv((size_t)((m + 2) * (k + 3) + 8), seed);
                    float *C0 = randv((size_t)(m * ldc), seed);
                    float *C1 = malloc((size_t)(m * ldc) * sizeof *C1);
                    memcpy(C1, C0, (size_t)(m * ldc) * sizeof *C1);
                    v->gemm_bc_src(m, n, k, A, rsa, csa, &ts->s, 3, col0, beta, C0, ldc);
                    p->gemm_bc_src(m, n, k, A, rsa, csa, &ts->s, 3, col0, beta, C1, ldc);
                    double e = prod_err(C0, C1, (size_t)(m * ldc), k + 1);
                    worst = e > worst || e != e ? e : worst;
                    free(A);
                    free(C0);
                    free(C1);
                }
    return worst;
}

/* The larger of worst and the largest |C − want| / mag over m × n (row stride ldc): a result
 * against its float64 value, relative to the sum of its terms' magnitudes. */
static double worst_vs_f64(const float *C, const double *want, const double *mag, int64_t m,
                           int64_t n, ptrdiff_t ldc, double worst)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double e = fabs(C[i * ldc + j] - want[i * ldc + j]) /
                       (mag[i * ldc + j] > 0 ? mag[i * ldc + j] : 1);
            worst = e > worst || e != e ? e : worst;
        }
    return worst;
}

/*
 * gemm_bc_src over I8 rows against a float64 sum of the exact dequantized values: groups of
 * whole 8-value vectors (8 to 64, which avx2.c's I8 path moves to A), more tokens than one of
 * its chunks (128) and more groups than one of its passes (4), blocks of 1 to 6 rows, both
 * strides of A and both beta values. Error bound per element: 4e-6 of the sum of the terms'
 * magnitudes (float32 sums of 300 terms reach 3e-7 here), far below what a wrong scale, group,
 * column or chunk leaves (a wrong group's scales: 8; a chunk not added: above 0.1).
 */
static void test_bc_src_i8_groups(const mla__attn_kernels *v)
{
    static const int32_t groups[] = {8, 16, 32, 64};
    /* 9 rows: a block of 6 and one of 3; 13: two of 6 and one of 1. */
    static const int64_t ms[] = {1, 3, 9, 13}, ns[] = {8, 24, 48, 96}, ks[] = {130, 300};
    static const int64_t col0s[] = {0, 40};
    unsigned long long seed = 71;
    const int64_t rows = 320, w = 200, t0 = 5;
    double worst = 0;
    for (int gi = 0; gi < 4; gi++) {
        test_src ts;
        src_make(&ts, MLA_DTYPE_I8, rows, w, groups[gi], &seed);
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++)
                for (int cc = 0; cc < 2; cc++)
                    for (int o = 0; o < 2; o++)
                        for (int variant = 0; variant < 2; variant++) {
                            int64_t m = ms[a], n = ns[b], k = ks[cc], col0 = col0s[o];
                            float beta = variant ? 1.0f : 0.0f;
                            ptrdiff_t rsa = variant ? 1 : k + 3, csa = variant ? m + 2 : 1;
                            ptrdiff_t ldc = n + 2;
                            float *A = randv((size_t)((m + 2) * (k + 3) + 8), &seed);
                            float *C = randv((size_t)(m * ldc), &seed);
                            double *want = malloc((size_t)(m * ldc) * sizeof *want);
                            double *mag = malloc((size_t)(m * ldc) * sizeof *mag);
                            for (int64_t i = 0; i < m; i++)
                                for (int64_t j = 0; j < n; j++) {
                                    double sum = beta * (double)C[i * ldc + j];
                                    double sm = fabs(sum);
                                    for (int64_t kk = 0; kk < k; kk++) {
                                        double t = (double)A[i * rsa + kk * csa] *
                                                   ts.exact[(t0 + kk) * w + col0 + j];
                                        sum += t;
                                        sm += fabs(t);
                                    }
                                    want[i * ldc + j] = sum;
                                    mag[i * ldc + j] = sm;
                                }
                            v->gemm_bc_src(m, n, k, A, rsa, csa, &ts.s, t0, col0, beta, C, ldc);
                            worst = worst_vs_f64(C, want, mag, m, n, ldc, worst);
                            free(A);
                            free(C);
                            free(want);
                            free(mag);
                        }
        src_free(&ts);
    }
    CHECK(worst < 4e-6, "%s gemm_bc_src over I8 groups of 8 to 64, up to 300 tokens, equals a "
          "float64 sum (max error %.2e of the terms' magnitude)", v->name, worst);
}

/*
 * The scores over I8 codes with the scales after the sums (tables that have them; kernels.h):
 * load_t8 against the codes read here, sign-extended, with the cells around each block left
 * alone; gemm_bc_i16s against float64 with int16 values up to ±32767 (exact in float32), odd
 * shapes, both strides of A and both beta values.
 */
static void test_i8_codes(const mla__attn_kernels *v)
{
    CHECK((v->load_t8 == NULL) == (v->gemm_bc_i16s == NULL),
          "%s has load_t8 and gemm_bc_i16s both or neither", v->name);
    if (!v->load_t8)
        return;
    unsigned long long seed = 91;
    test_src ts;
    src_make(&ts, MLA_DTYPE_I8, 60, 90, 8, &seed);
    int64_t bad = 0, cases = 0;
    for (int64_t n = 1; n <= 50; n += 7)
        for (int64_t kw = 1; kw <= 80; kw += 13)
            for (int64_t col0 = 0; col0 <= 9; col0 += 9) {
                ptrdiff_t ldd = n + 3;
                size_t sz = (size_t)(kw * ldd);
                int16_t *d = malloc(sz * sizeof *d);
                for (size_t i = 0; i < sz; i++)
                    d[i] = 0x7ead;
                v->load_t8(&ts.s, 2, n, col0, kw, d, ldd);
                int64_t wrong = 0;
                for (int64_t kk = 0; kk < kw; kk++)
                    for (ptrdiff_t t = 0; t < ldd; t++) {
                        int16_t want = 0x7ead;
                        if (t < n)
                            want = (int8_t)ts.s.p[(2 + t) * ts.s.ld + col0 + kk];
                        wrong += d[kk * ldd + t] != want;
                    }
                bad += wrong != 0;
                cases++;
                free(d);
            }
    src_free(&ts);
    CHECK(bad == 0, "%s load_t8 transposes I8 codes sign-extended (%lld of %lld cases differ)",
          v->name, (long long)bad, (long long)cases);
    static const int64_t ms[] = {1, 3, 9, 13}, ns[] = {1, 5, 16, 24, 37, 128, 130};
    static const int64_t ks[] = {0, 1, 8, 32, 33};
    double worst = 0;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 7; b++)
            for (int c = 0; c < 5; c++)
                for (int variant = 0; variant < 2; variant++) {
                    int64_t m = ms[a], n = ns[b], k = ks[c];
                    float beta = variant ? 1.0f : 0.0f;
                    ptrdiff_t rsa = variant ? 1 : k + 3, csa = variant ? m + 2 : 1;
                    ptrdiff_t ldb = n + 5, ldc = n + 2;
                    float *A = randv((size_t)((m + 2) * (k + 3) + 8), &seed);
                    float *C = randv((size_t)(m * ldc), &seed);
                    float *cs = randv((size_t)n, &seed);
                    int16_t *B = malloc((size_t)(k * ldb + 1) * sizeof *B);
                    for (int64_t i = 0; i < k * ldb; i++)
                        B[i] = (int16_t)floor(tap_rand(&seed) * (i % 5 ? 127.0 : 32767.0));
                    double *want = malloc((size_t)(m * ldc) * sizeof *want);
                    double *mag = malloc((size_t)(m * ldc) * sizeof *mag);
                    for (int64_t i = 0; i < m; i++)
                        for (int64_t j = 0; j < n; j++) {
                            double sum = 0, sm = 0;
                            for (int64_t kk = 0; kk < k; kk++) {
                                double t = (double)A[i * rsa + kk * csa] * B[kk * ldb + j];
                                sum += t;
                                sm += fabs(t);
                            }
                            double c0 = beta * (double)C[i * ldc + j];
                            want[i * ldc + j] = c0 + cs[j] * sum;
                            mag[i * ldc + j] = fabs(c0) + fabs(cs[j]) * sm;
                        }
                    v->gemm_bc_i16s(m, n, k, A, rsa, csa, B, ldb, cs, beta, C, ldc);
                    worst = worst_vs_f64(C, want, mag, m, n, ldc, worst);
                    free(A);
                    free(C);
                    free(cs);
                    free(B);
                    free(want);
                    free(mag);
                }
    CHECK(worst < 4e-6, "%s gemm_bc_i16s equals a float64 sum times the column scales (max "
          "error %.2e of the terms' magnitude)", v->name, worst);
}

/* load_t (a conversion: bit for bit) and gemm_bc_src (to rounding) against the portable ones;
 * v2, when given, another table whose gemm_bc_src is checked over the same sources. */
static void test_src_kernels(const mla__attn_kernels *v, const mla__attn_kernels *p,
                             const mla__attn_kernels *v2)
{
    /* I8 groups: within a vector (4), straddling vectors at every offset (12), wider (32) */
    static const int32_t groups[] = {4, 12, 32};
    unsigned long long seed = 33;
    for (int d = 0; d < 4; d++)
        for (int gi = 0; gi < 3; gi++) {
            int64_t rows = 45, w = 160;
            test_src ts;
            src_make(&ts, src_types[d], rows, w, groups[gi], &seed);
            /* load_t over odd token counts, widths and offsets */
            int64_t bad = 0;
            for (int64_t n = 1; n <= 40; n += 13)
                for (int64_t kw = 1; kw <= 70; kw += 23)
                    for (int64_t col0 = 0; col0 <= 9; col0 += 9) {
                        ptrdiff_t ldd = n + 3;
                        size_t sz = (size_t)(kw * ldd);
                        float *d0 = malloc(sz * sizeof *d0), *d1 = malloc(sz * sizeof *d1);
                        for (size_t i = 0; i < sz; i++)
                            d0[i] = d1[i] = -7.0f;
                        v->load_t(&ts.s, 2, n, col0, kw, d0, ldd);
                        p->load_t(&ts.s, 2, n, col0, kw, d1, ldd);
                        bad += memcmp(d0, d1, sz * sizeof *d0) != 0;
                        free(d0);
                        free(d1);
                    }
            CHECK(bad == 0, "%s load_t equals portable bit for bit (%s, group %d; %lld cases "
                  "differ)", v->name, src_names[d], (int)groups[gi], (long long)bad);
            /* load_t16 (16-bit sources): the stored bits, transposed, against the rows read
             * here; whole and partial 16 × 16 blocks, the cells around them left alone. */
            if (gi == 0 && (src_types[d] == MLA_DTYPE_F16 || src_types[d] == MLA_DTYPE_BF16)) {
                int64_t bad16 = 0, cases = 0;
                for (int64_t n = 1; n <= 43; n += 7)
                    for (int64_t kw = 1; kw <= 70; kw += 23)
                        for (int64_t col0 = 0; col0 <= 9; col0 += 9)
                            for (int impl = 0; impl < 2; impl++) {
                                ptrdiff_t ldd = n + 3;
                                size_t sz = (size_t)(kw * ldd);
                                uint16_t *dt = malloc(sz * sizeof *dt);
                                for (size_t i = 0; i < sz; i++)
                                    dt[i] = 0xdead;
                                (impl ? v : p)->load_t16(&ts.s, 2, n, col0, kw, dt, ldd);
                                int64_t wrong = 0;
                                for (int64_t kk = 0; kk < kw; kk++)
                                    for (ptrdiff_t t = 0; t < ldd; t++) {
                                        uint16_t want = 0xdead;
                                        if (t < n)
                                            memcpy(&want, ts.s.p + (2 + t) * ts.s.ld +
                                                              2 * (col0 + kk), 2);
                                        wrong += dt[kk * ldd + t] != want;
                                    }
                                bad16 += wrong != 0;
                                cases++;
                                free(dt);
                            }
                CHECK(bad16 == 0, "%s and portable load_t16 transpose %s rows bit for bit "
                      "(%lld of %lld cases differ)", v->name, src_names[d], (long long)bad16,
                      (long long)cases);
            }
            double worst = bc_src_err(v, p, &ts, &seed);
            CHECK(worst < 1e-6, "%s gemm_bc_src equals portable (%s, group %d; max rel err per "
                  "term %.2e)", v->name, src_names[d], (int)groups[gi], worst);
            if (v2) {
                double w2 = bc_src_err(v2, p, &ts, &seed);
                CHECK(w2 < 1e-6, "%s gemm_bc_src equals portable (%s, group %d; max rel err "
                      "per term %.2e)", v2->name, src_names[d], (int)groups[gi], w2);
            }
            /* gemm_dot_src: A m × k (lda k + 3), B rows t0 .. t0+n−1 of the source. */
            worst = 0;
            for (size_t a = 0; a < 4; a++)
                for (size_t b = 0; b < 8; b++)
                    for (size_t c = 0; c < 4; c++)
                        for (int variant = 0; variant < 2; variant++) {
                            int64_t m = src_ms[a], n = src_ns[b] < 40 ? src_ns[b] : 40;
                            int64_t k = src_ks[c] + 30, col0 = variant ? 11 : 0;
                            float beta = variant ? 1.0f : 0.0f;
                            ptrdiff_t ldc = n + 2;
                            float *A = randv((size_t)(m * (k + 3)), &seed);
                            float *C0 = randv((size_t)(m * ldc), &seed);
                            float *C1 = malloc((size_t)(m * ldc) * sizeof *C1);
                            memcpy(C1, C0, (size_t)(m * ldc) * sizeof *C1);
                            v->gemm_dot_src(m, n, k, A, k + 3, &ts.s, 4, col0, beta, C0, ldc);
                            p->gemm_dot_src(m, n, k, A, k + 3, &ts.s, 4, col0, beta, C1, ldc);
                            double e = prod_err(C0, C1, (size_t)(m * ldc), k + 1);
                            worst = e > worst || e != e ? e : worst;
                            free(A);
                            free(C0);
                            free(C1);
                        }
            CHECK(worst < 1e-6, "%s gemm_dot_src equals portable (%s, group %d; max rel err per "
                  "term %.2e)", v->name, src_names[d], (int)groups[gi], worst);
            /* mha_scores and mha_values: every KV head of a step (n_kv · d ≤ the source's
             * 160 columns); head dimensions that are multiples of 16 and others, odd step
             * lengths for the tails. */
            static const int64_t hd[][2] = {{1, 128}, {2, 64}, {1, 96}, {3, 48}, {4, 40},
                                            {2, 33}, {3, 16}, {5, 7}, {9, 17}};
            static const int64_t steps[] = {1, 3, 4, 5, 8, 13, 17};
            double worst_s = 0, worst_v = 0;
            for (size_t a = 0; a < sizeof hd / sizeof hd[0]; a++)
                for (size_t b = 0; b < sizeof steps / sizeof steps[0]; b++) {
                    int64_t nh = hd[a][0], dh = hd[a][1], n = steps[b];
                    ptrdiff_t lds = n + 3, ldo = dh + 5;
                    float *q = randv((size_t)(nh * dh), &seed);
                    float *s0 = randv((size_t)(nh * lds), &seed);
                    float *s1 = malloc((size_t)(nh * lds) * sizeof *s1);
                    memcpy(s1, s0, (size_t)(nh * lds) * sizeof *s1);
                    v->mha_scores(nh, dh, n, q, &ts.s, 2, s0, lds);
                    p->mha_scores(nh, dh, n, q, &ts.s, 2, s1, lds);
                    double e = prod_err(s0, s1, (size_t)(nh * lds), dh + 1);
                    worst_s = e > worst_s || e != e ? e : worst_s;
                    float *o0 = randv((size_t)(nh * ldo), &seed);
                    float *o1 = malloc((size_t)(nh * ldo) * sizeof *o1);
                    memcpy(o1, o0, (size_t)(nh * ldo) * sizeof *o1);
                    v->mha_values(nh, dh, n, s0, lds, &ts.s, 5, o0, ldo);
                    p->mha_values(nh, dh, n, s0, lds, &ts.s, 5, o1, ldo);
                    e = prod_err(o0, o1, (size_t)(nh * ldo), n + 1);
                    worst_v = e > worst_v || e != e ? e : worst_v;
                    free(q);
                    free(s0);
                    free(s1);
                    free(o0);
                    free(o1);
                }
            CHECK(worst_s < 1e-6 && worst_v < 1e-6,
                  "%s mha_scores and mha_values equal portable (%s, group %d; max rel err per "
                  "term %.2e, %.2e)", v->name, src_names[d], (int)groups[gi], worst_s, worst_v);
            /* gemm_bc_asrc: A rows t0 .. t0+m−1 of the source; k past one converted panel. */
            static const int64_t ks2[] = {0, 5, 33, 150};
            worst = 0;
            for (size_t a = 0; a < 4; a++)
                for (size_t b = 0; b < 8; b++)
                    for (size_t c = 0; c < 4; c++)
                        for (int variant = 0; variant < 2; variant++) {
                            int64_t m = src_ms[a] + (variant ? 17 : 0), n = src_ns[b];
                            int64_t k = ks2[c] < w - 9 ? ks2[c] : w - 9;
                            int64_t col0 = variant ? 9 : 0;
                            float beta = variant ? 1.0f : 0.0f;
                            ptrdiff_t ldb = n + 5, ldc = n + 2;
                            float *B = randv((size_t)(k * ldb + 1), &seed);
                            float *C0 = randv((size_t)(m * ldc), &seed);
                            float *C1 = malloc((size_t)(m * ldc) * sizeof *C1);
                            memcpy(C1, C0, (size_t)(m * ldc) * sizeof *C1);
                            v->gemm_bc_asrc(m, n, k, &ts.s, 1, col0, B, ldb, beta, C0, ldc);
                            p->gemm_bc_asrc(m, n, k, &ts.s, 1, col0, B, ldb, beta, C1, ldc);
                            double e = prod_err(C0, C1, (size_t)(m * ldc), k + 1);
                            worst = e > worst || e != e ? e : worst;
                            free(B);
                            free(C0);
                            free(C1);
                        }
            CHECK(worst < 1e-6, "%s gemm_bc_asrc equals portable (%s, group %d; max rel err per "
                  "term %.2e)", v->name, src_names[d], (int)groups[gi], worst);
            src_free(&ts);
        }
}

/* Random bf16 values in (−1, 1). */
static uint16_t *randbf(size_t n, unsigned long long *seed)
{
    uint16_t *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = mla_f32_to_bf16((float)tap_rand(seed));
    return p;
}

/*
 * gemm_bf16 against the float64 sum of the same bf16 products (exact in float32): each element
 * within the float32 rounding of its 2·kp + 1 additions, |err| ≤ (2kp + 1)·2⁻²⁴·(Σ|a·b| + |C|)
 * (twice that as margin). Pairs at odd offsets (strides odd), A's pairs along its rows or along
 * its columns, every block shape and tail.
 */
static void test_gemm_bf16(const mla__attn_kernels *v)
{
    /* Past 32 rows and columns and 256 pairs: several blocks of AMX tiles, A read in place
     * (48 rows, 16 or 160 pairs: prefetching ahead and into the next block) or packed (in two
     * passes of pairs at 300). */
    static const int64_t ms[] = {1, 3, 9, 12, 13, 32, 41, 48};
    static const int64_t ns[] = {1, 5, 16, 17, 31, 33, 48, 70};
    static const int64_t kps[] = {0, 1, 7, 16, 33, 160, 300};
    unsigned long long seed = 11;
    double worst = 0;
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof kps / sizeof kps[0]; c++)
                for (int beta1 = 0; beta1 < 2; beta1++) {
                    int64_t m = ms[a], n = ns[b], kp = kps[c];
                    ptrdiff_t ldb = 2 * n + 5, ldc = n + 2;
                    ptrdiff_t rs = beta1 ? 2 * kp + 3 : 2, cs = beta1 ? 2 : 2 * m + 3;
                    uint16_t *A = randbf((size_t)(m * rs + kp * cs + 2), &seed);
                    uint16_t *B = randbf((size_t)(kp * ldb + 1), &seed);
                    float *C = randv((size_t)(m * ldc), &seed);
                    float *C0 = malloc((size_t)(m * ldc) * sizeof *C0);
                    memcpy(C0, C, (size_t)(m * ldc) * sizeof *C0);
                    float beta = beta1 ? 1.0f : 0.0f;
                    v->gemm_bf16(m, n, kp, A, rs, cs, B, ldb, beta, C0, ldc);
                    for (int64_t i = 0; i < m; i++)
                        for (int64_t j = 0; j < n; j++) {
                            double ref = beta1 ? C[i * ldc + j] : 0.0, mag = fabs(ref);
                            for (int64_t q = 0; q < 2 * kp; q++) {
                                double x = (double)mla_bf16_to_f32(A[i * rs + (q / 2) * cs +
                                                                     q % 2]) *
                                           mla_bf16_to_f32(B[(q / 2) * ldb + 2 * j + q % 2]);
                                ref += x;
                                mag += fabs(x);
                            }
                            double bound = 2.0 * (double)(2 * kp + 1) * ldexp(mag, -24);
                            double e = fabs(C0[i * ldc + j] - ref) / (bound > 0 ? bound : 1e-30);
                            worst = e > worst || e != e ? e : worst;
                        }
                    free(A);
                    free(B);
                    free(C);
                    free(C0);
                }
    CHECK(worst <= 1.0, "%s gemm_bf16 equals the float64 sum of its bf16 products to float32 "
          "rounding (worst error / bound %.2f)", v->name, worst);
}

/* pack_pairs against its definition: segments starting at even and odd tokens, odd widths
 * and column offsets (vector tails), bit for bit. */
static void test_pack_pairs(const mla__attn_kernels *v)
{
    static const int64_t ts[] = {0, 1, 6, 7};
    static const int64_t ns[] = {1, 2, 5, 16, 33};
    static const int64_t ws[] = {1, 15, 16, 17, 40};
    unsigned long long seed = 13;
    int bad = 0;
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 5; b++)
            for (size_t c = 0; c < 5; c++) {
                int64_t t = ts[a], n = ns[b], w = ws[c], col0 = 3, ld = w + col0 + 2;
                int64_t np = (t + n + 1) / 2;
                ptrdiff_t ldd = 2 * w + 4;
                uint16_t *rows = randbf((size_t)(n * ld), &seed);
                uint16_t *d = malloc((size_t)(np * ldd) * sizeof *d);
                for (int64_t i = 0; i < np * ldd; i++)
                    d[i] = 0xdead;
                mla__src s = {(const unsigned char *)rows, ld * 2, MLA_DTYPE_BF16, NULL, 0, 1};
                v->pack_pairs(&s, n, col0, w, d, ldd, t);
                for (int64_t u = 0; u < np * 2; u++)
                    for (int64_t k = 0; k < ldd; k++) {
                        uint16_t got = d[(u / 2) * ldd + k];
                        int64_t i = u - t;
                        int ours = k < 2 * w && k % 2 == u % 2 && i >= 0 && i < n;
                        uint16_t want = ours ? rows[i * ld + col0 + k / 2] : 0xdead;
                        if (k % 2 != u % 2)
                            continue;
                        bad += got != want;
                    }
                free(rows);
                free(d);
            }
    CHECK(bad == 0, "%s pack_pairs interleaves token pairs bit for bit, writing nothing else "
          "(%d wrong)", v->name, bad);
}

/* The float32 bits of test value i for the bf16 roundings: magnitudes over 40 binades, exact
 * ties with the lowest kept bit clear and set, one subnormal. */
static uint32_t rounding_case(int64_t i, unsigned long long *seed)
{
    float f = (float)(tap_rand(seed) * ldexp(1.0, (int)(i % 40) - 20));
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    if (i % 3 == 0)
        b = (b & 0xffff0000u) | 0x8000u; /* a tie */
    if (i % 3 == 1)
        b = (b & 0xffff0000u) | 0x00018000u; /* a tie with the lowest kept bit set: rounds up */
    if (i == 5)
        b = 0x00000123u; /* subnormal */
    return b;
}

/* The reference rounding: float32 bits b to the nearest bf16, ties to even, as float32 bits
 * (low half zero). */
static uint32_t bf16_nearest(uint32_t b)
{
    return (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
}

/* to_bf16 against the definition (nearest, ties to even), on values with every low half
 * pattern including exact ties, odd lengths; subnormals may be flushed to zero (kernels.h). */
static void test_to_bf16(const mla__attn_kernels *v)
{
    unsigned long long seed = 17;
    int bad = 0;
    for (int64_t n = 0; n < 70; n += 7) {
        float *x = malloc((size_t)(n + 1) * sizeof *x);
        uint16_t *d = malloc((size_t)(n + 2) * sizeof *d);
        for (int64_t i = 0; i < n; i++) {
            uint32_t b = rounding_case(i, &seed);
            memcpy(&x[i], &b, sizeof b);
        }
        d[n] = 0xbeef;
        v->to_bf16(x, n, d);
        for (int64_t i = 0; i < n; i++) {
            uint32_t b;
            memcpy(&b, &x[i], sizeof b);
            uint16_t want = (uint16_t)(bf16_nearest(b) >> 16);
            int sub = (b & 0x7f800000u) == 0;
            bad += d[i] != want && !(sub && (d[i] & 0x7fffu) == 0);
        }
        bad += d[n] != 0xbeef;
        free(x);
        free(d);
    }
    CHECK(bad == 0, "%s to_bf16 rounds to nearest even, writes n values (%d wrong)", v->name,
          bad);
}

/* round_bf16 against the same definition, in place, on the same kinds of values (subnormals
 * included: the float32 rounding is exact for them). */
/* seg_dots against the dots taken in float64: widths the vectorized kernels take (2, 4, 8, 16)
 * and others (6), one query row a KV head and several, KV heads in whole 8s and with a tail,
 * setting and adding (beta). The rows of s past each token's n_kv·g must stay untouched. */
static void test_seg_dots(const mla__attn_kernels *v)
{
    static const int64_t rs[] = {2, 4, 6, 8, 16}, gs[] = {1, 3}, nkvs[] = {3, 8, 21, 32};
    unsigned long long seed = 41;
    double worst = 0;
    int untouched = 1;
    for (size_t ri = 0; ri < sizeof rs / sizeof rs[0]; ri++)
        for (size_t gi = 0; gi < sizeof gs / sizeof gs[0]; gi++)
            for (size_t ki = 0; ki < sizeof nkvs / sizeof nkvs[0]; ki++)
                for (int add = 0; add < 2; add++) {
                    int64_t r = rs[ri], g = gs[gi], n_kv = nkvs[ki], n = 13;
                    ptrdiff_t ldx = n_kv * r + 5, lds = n_kv * g + 3;
                    float *x = randv((size_t)(n * ldx), &seed);
                    float *q = randv((size_t)(n_kv * g * r), &seed);
                    float *s = randv((size_t)(n * lds), &seed);
                    float *s0 = malloc((size_t)(n * lds) * sizeof *s0);
                    float *want = malloc((size_t)(n * lds) * sizeof *want);
                    memcpy(s0, s, (size_t)(n * lds) * sizeof *s);
                    for (int64_t u = 0; u < n; u++)
                        for (int64_t row = 0; row < n_kv * g; row++) {
                            double acc = add ? s[u * lds + row] : 0.0;
                            for (int64_t kk = 0; kk < r; kk++)
                                acc += (double)x[u * ldx + row / g * r + kk] *
                                       (double)q[row * r + kk];
                            want[u * lds + row] = (float)acc;
                        }
                    v->seg_dots(n, n_kv, g, r, x, ldx, q, add ? 1.0f : 0.0f, s, lds);
                    for (int64_t u = 0; u < n; u++) {
                        double e = tap_rel_diff(s + u * lds, want + u * lds, (size_t)(n_kv * g));
                        worst = e > worst || e != e ? e : worst;
                        for (int64_t row = n_kv * g; row < lds; row++)
                            untouched &= s[u * lds + row] == s0[u * lds + row];
                    }
                    free(x);
                    free(q);
                    free(s);
                    free(s0);
                    free(want);
                }
    CHECK(worst < 1e-5 && untouched,
          "%s seg_dots equal the float64 segment dots (max rel err %.2e), nothing else written",
          v->name, worst);
}

static void test_round_bf16(const mla__attn_kernels *v)
{
    unsigned long long seed = 19;
    int bad = 0;
    for (int64_t n = 0; n < 70; n += 7) {
        float *x = malloc((size_t)(n + 1) * sizeof *x);
        uint32_t *want = malloc((size_t)(n + 1) * sizeof *want);
        for (int64_t i = 0; i <= n; i++) {
            uint32_t b = rounding_case(i, &seed);
            memcpy(&x[i], &b, sizeof b);
            want[i] = i < n ? bf16_nearest(b) : b;
        }
        v->round_bf16(x, n);
        for (int64_t i = 0; i <= n; i++) {
            uint32_t b;
            memcpy(&b, &x[i], sizeof b);
            bad += b != want[i];
        }
        free(x);
        free(want);
    }
    CHECK(bad == 0, "%s round_bf16 rounds to nearest even in place, n values only (%d wrong)",
          v->name, bad);
}

/* c = a·B + beta·c for one row a, against float64: both layouts of B, thread counts that split
 * the rows unevenly (and more threads than row ranges), beta 0 over NaN (overwritten) and 0.5. */
static void test_sgemm_one_row(void)
{
    static const int64_t ns[] = {1, 17, 600, 1000};
    static const int threads[] = {1, 2, 3, 8};
    unsigned long long seed = 21;
    double worst = 0;
    int nan_seen = 0;
    for (size_t a = 0; a < 4; a++)
        for (size_t t = 0; t < 4; t++)
            for (int layout = 0; layout < 2; layout++)
                for (int variant = 0; variant < 2; variant++) {
                    int64_t n = ns[a], k = 300;
                    /* B(kk, j): weights as rows of length k (layout 0, the projections'
                     * layout) or as k rows of n + 3 */
                    ptrdiff_t rsb = layout ? n + 3 : 1, csb = layout ? 1 : k;
                    float *A = randv((size_t)(2 * k), &seed);
                    float *B = randv((size_t)(k * (n + 3)), &seed);
                    float *C = randv((size_t)(3 * n), &seed);
                    float beta = variant ? 0.5f : 0.0f;
                    double *ref = malloc((size_t)n * sizeof *ref);
                    for (int64_t j = 0; j < n; j++) {
                        double acc = beta != 0 ? (double)beta * C[3 * j] : 0;
                        for (int64_t kk = 0; kk < k; kk++)
                            acc += (double)A[2 * kk] * B[kk * rsb + j * csb];
                        ref[j] = acc;
                        if (!variant)
                            C[3 * j] = NAN;
                    }
                    mla__sgemm(team(threads[t]), 1, n, k, A, 0, 2, B, rsb, csb, beta, C, 0, 3);
                    double m = 0, e = 0;
                    for (int64_t j = 0; j < n; j++) {
                        m = fmax(m, fabs(ref[j]));
                        e = fmax(e, fabs(C[3 * j] - ref[j]));
                        nan_seen |= C[3 * j] != C[3 * j];
                    }
                    e /= (m > 0 ? m : 1) * (double)k;
                    worst = e > worst ? e : worst;
                    free(A);
                    free(B);
                    free(C);
                    free(ref);
                }
    CHECK(!nan_seen && worst < 1e-6,
          "mla__sgemm one row (gemv): max error %.2e of k·max|ref| (float32 sums)", worst);
}

/* The largest error of C = A·Wᵀ (m × n, row stride ldc) against the float64 product, relative
 * to k·max|ref| (NaN if C holds one); *pad_changed set if a padding column of C is not -7. */
static double wt_err(int64_t m, int64_t n, int64_t k, const float *A, ptrdiff_t lda,
                     const float *W, ptrdiff_t ldw, const float *C, ptrdiff_t ldc,
                     int *pad_changed)
{
    double big = 0, e = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < ldc; j++) {
            if (j >= n) {
                *pad_changed |= C[i * ldc + j] != -7.0f;
                continue;
            }
            double ref = 0;
            for (int64_t kk = 0; kk < k; kk++)
                ref += (double)A[i * lda + kk] * W[j * ldw + kk];
            big = fmax(big, fabs(ref));
            double d = fabs(C[i * ldc + j] - ref);
            e = d > e || d != d ? d : e;
        }
    return e / ((big > 0 ? big : 1) * (double)k);
}

/*
 * C = A·Wᵀ for m rows against weights W (n × k, rows along k) through kernel table t, against
 * float64: m from 1 (gemv) through the rows that read W with gemm_dot_src (below
 * t->dot_weights_max_m) to BLIS beyond, n with and without whole blocks of 16 columns, thread
 * counts that split the columns or (too few of them) the rows; every operand with a stride wider
 * than its row, the padding of C left as it was.
 */
static void test_sgemm_wt(const mla__attn_kernels *t)
{
    int64_t edge = t->dot_weights_max_m > 1 ? t->dot_weights_max_m : 64;
    const int64_t ms[] = {1, 2, 3, 5, 17, edge - 1, edge, edge + 1};
    static const int64_t ns[] = {1, 15, 16, 17, 48, 130};
    static const int64_t ks[] = {1, 7, 33, 300};
    static const int threads[] = {1, 2, 3};
    unsigned long long seed = 31;
    double worst = 0;
    int pad_changed = 0, split_differs = 0;
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++) {
                int64_t m = ms[a], n = ns[b], k = ks[c];
                /* Around the edge: a few shapes, or the float64 sums take valgrind long. */
                if (m > 17 && ((n != 17 && n != 130) || k != 33))
                    continue;
                ptrdiff_t lda = k + 1, ldw = k + 2, ldc = n + 3;
                float *A = randv((size_t)(m * lda), &seed);
                float *W = randv((size_t)(n * ldw), &seed);
                float *C1 = malloc((size_t)(m * ldc) * sizeof *C1);
                for (size_t th = 0; th < sizeof threads / sizeof threads[0]; th++) {
                    float *C = malloc((size_t)(m * ldc) * sizeof *C);
                    for (int64_t i = 0; i < m * ldc; i++)
                        C[i] = i % ldc < n ? NAN : -7.0f; /* beta 0: NaN overwritten */
                    mla__sgemm_wt(t, team(threads[th]), m, n, k, A, lda, W, ldw, C, ldc);
                    /* Read in place, every element is the same sum however the threads split
                     * the work (gemv's rows, gemm_dot_src's columns or rows). */
                    if (th == 0)
                        memcpy(C1, C, (size_t)(m * ldc) * sizeof *C);
                    else if (m == 1 || m < t->dot_weights_max_m)
                        split_differs |= memcmp(C1, C, (size_t)(m * ldc) * sizeof *C) != 0;
                    double e = wt_err(m, n, k, A, lda, W, ldw, C, ldc, &pad_changed);
                    worst = e > worst || e != e ? e : worst;
                    free(C);
                }
                free(A);
                free(W);
                free(C1);
            }
    char rows[48] = "";
    if (t->dot_weights_max_m > 1)
        snprintf(rows, sizeof rows, " and below %lld rows", (long long)t->dot_weights_max_m);
    CHECK(worst < 1e-6 && !pad_changed && !split_differs,
          "%s mla__sgemm_wt (weights in place for one row%s): max error %.2e of k·max|ref|, "
          "padding of C %s, read in place the same bits on 1, 2 and 3 threads: %s", t->name,
          rows, worst, pad_changed ? "changed" : "kept", split_differs ? "no" : "yes");
}

/*
 * mla__wgemm over 16-bit weights (rows contiguous: ldw = k) through kernel table t, against the
 * float64 product with the widened weights: read in place (panel_rows 0) and widened a panel at
 * a time, in panels of 16 rows (n of 130: several panels and a short last one) and of more rows
 * than W has; m from one row through the table's dot_weights_max_m.
 */
static void test_wgemm(const mla__attn_kernels *t)
{
    int64_t edge = t->dot_weights_max_m > 1 ? t->dot_weights_max_m : 64;
    const int64_t ms[] = {1, 3, edge + 1};
    static const int64_t ns[] = {1, 130};
    static const int64_t ks[] = {7, 33};
    static const int64_t panels[] = {0, 16, 144};
    static const mla_dtype types[] = {MLA_DTYPE_F16, MLA_DTYPE_BF16};
    unsigned long long seed = 37;
    double worst = 0;
    int pad_changed = 0;
    for (size_t ty = 0; ty < 2; ty++)
        for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
            for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
                for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++)
                    for (size_t pr = 0; pr < sizeof panels / sizeof panels[0]; pr++) {
                        int64_t m = ms[a], n = ns[b], k = ks[c], rows = panels[pr];
                        /* The float64 sums take valgrind long: the widest shapes only with
                         * several panels and a short last one. */
                        if ((m > 3 || n > 1) && (k != 33 || (rows != 16 && n > 1 && m > 3)))
                            continue;
                        ptrdiff_t lda = k + 1, ldc = n + 3;
                        float *A = randv((size_t)(m * lda), &seed);
                        float *Wf = randv((size_t)(n * k), &seed);
                        uint16_t *W = malloc((size_t)(n * k) * sizeof *W);
                        for (int64_t i = 0; i < n * k; i++) {
                            W[i] = types[ty] == MLA_DTYPE_F16 ? mla_f32_to_f16(Wf[i])
                                                              : mla_f32_to_bf16(Wf[i]);
                            Wf[i] = types[ty] == MLA_DTYPE_F16 ? mla_f16_to_f32(W[i])
                                                               : mla_bf16_to_f32(W[i]);
                        }
                        float *panel = malloc((size_t)((rows ? rows : 1) * k) * sizeof *panel);
                        float *C = malloc((size_t)(m * ldc) * sizeof *C);
                        for (int64_t i = 0; i < m * ldc; i++)
                            C[i] = i % ldc < n ? NAN : -7.0f;
                        mla__wgemm(t, team(2), m, n, k, A, lda, W, types[ty], C, ldc, panel, rows);
                        double e = wt_err(m, n, k, A, lda, Wf, k, C, ldc, &pad_changed);
                        worst = e > worst || e != e ? e : worst;
                        free(A);
                        free(Wf);
                        free(W);
                        free(panel);
                        free(C);
                    }
    CHECK(worst < 1e-6 && !pad_changed,
          "%s mla__wgemm over f16 and bf16 weights, in place and in panels: max error %.2e of "
          "k·max|ref|, padding of C %s", t->name, worst, pad_changed ? "changed" : "kept");
    /* The panel rule: none for float32 weights or below dot_weights_max_m rows. */
    int64_t r16 = mla__wgemm_panel_rows(t, MLA_DTYPE_BF16, edge, 4096);
    CHECK(mla__wgemm_panel_rows(t, MLA_DTYPE_F32, 4096, 4096) == 0 &&
              (t->dot_weights_max_m == 0 ||
               mla__wgemm_panel_rows(t, MLA_DTYPE_BF16, t->dot_weights_max_m - 1, 4096) == 0) &&
              r16 >= 16 && r16 % 16 == 0 && r16 * 4096 * 4 <= ((int64_t)8 << 20),
          "%s panel rows: %lld for k 4096", t->name, (long long)r16);
}

/* One part of a split-K softmax over scores s[0..n) and values v (n × dv): its running max, sum
 * and unnormalized output, as the kernels leave them (max −inf and sum 0 over no token). */
static void part_state(const double *s, const double *v, int n, int dv, float *mx, float *l,
                       float *o)
{
    double m = -INFINITY, sum = 0;
    for (int t = 0; t < n; t++)
        m = fmax(m, s[t]);
    for (int j = 0; j < dv; j++)
        o[j] = 0;
    for (int t = 0; t < n; t++) {
        double e = exp(s[t] - m);
        sum += e;
        for (int j = 0; j < dv; j++)
            o[j] += (float)(e * v[t * dv + j]);
    }
    *mx = (float)m;
    *l = (float)sum;
}

/* mla__softmax_merge (split-K, forward.c) against the softmax over both parts' tokens in
 * float64: parts of several sizes, either or both empty (the forward always merges a later
 * range into an earlier one, so an empty first part with a non-empty second is reached here
 * only), and maxima far apart, where one part's weights underflow. */
static void test_softmax_merge(void)
{
    enum { DV = 5, NMAX = 12 };
    static const int na[] = {7, 0, 4, 0, 1, 9};
    static const int nb[] = {5, 6, 0, 0, 12, 3};
    static const double shift_b[] = {0, 0, 0, 0, 80, -80};
    const int rows = (int)(sizeof na / sizeof na[0]);
    unsigned long long seed = 0x5eed5eedULL;
    float mx_a[6], l_a[6], o_a[6 * DV], mx_b[6], l_b[6], o_b[6 * DV];
    double worst = 0;
    int max_ok = 1;
    for (int i = 0; i < rows; i++) {
        double s[2 * NMAX], v[2 * NMAX * DV];
        int n = na[i] + nb[i];
        for (int t = 0; t < n; t++) {
            s[t] = 3 * tap_rand(&seed) + (t >= na[i] ? shift_b[i] : 0);
            for (int j = 0; j < DV; j++)
                v[t * DV + j] = tap_rand(&seed);
        }
        part_state(s, v, na[i], DV, &mx_a[i], &l_a[i], o_a + i * DV);
        part_state(s + na[i], v + na[i] * DV, nb[i], DV, &mx_b[i], &l_b[i], o_b + i * DV);
        if (n == 0)
            continue;
        /* The reference: the softmax-weighted mean over all n tokens. */
        double m = -INFINITY, sum = 0, ref[DV] = {0};
        for (int t = 0; t < n; t++)
            m = fmax(m, s[t]);
        for (int t = 0; t < n; t++) {
            sum += exp(s[t] - m);
            for (int j = 0; j < DV; j++)
                ref[j] += exp(s[t] - m) * v[t * DV + j];
        }
        for (int j = 0; j < DV; j++)
            ref[j] /= sum;
        float ma = mx_a[i], la = l_a[i], oa[DV];
        memcpy(oa, o_a + i * DV, sizeof oa);
        mla__softmax_merge(1, DV, &ma, &la, oa, DV, &mx_b[i], &l_b[i], o_b + i * DV, DV);
        for (int j = 0; j < DV; j++)
            worst = fmax(worst, fabs(oa[j] / la - ref[j]));
        max_ok &= ma == (float)m;
    }
    /* Both parts empty: the row keeps max −inf, sum 0 and output 0. */
    float ma = mx_a[3], la = l_a[3], oa[DV];
    memcpy(oa, o_a + 3 * DV, sizeof oa);
    mla__softmax_merge(1, DV, &ma, &la, oa, DV, &mx_b[3], &l_b[3], o_b + 3 * DV, DV);
    int empty_ok = ma == -INFINITY && la == 0;
    for (int j = 0; j < DV; j++)
        empty_ok &= oa[j] == 0;
    CHECK(worst < 1e-5 && max_ok, "split-K merge equals the softmax over both parts (max error "
          "%.1e; empty parts, maxima 80 apart), and keeps the larger maximum", worst);
    CHECK(empty_ok, "two empty parts merge to an empty row");
}

#ifdef MLA_ATTN_HAVE_AVX512
/* An AVX-512 table t (the CPU's own, or tests/avx512_emulated.h's over SIMDe on any CPU), with
 * the variants kernels.c puts in by CPU: the AMD 9 × 48 blocks of gemm_bc_src, the bf16 products
 * on float32 FMAs and, with `dpbf16`, on vdpbf16ps with its bf16 rounding and pairing. */
static void test_avx512(const mla__attn_kernels *t, const mla__attn_kernels *p, int dpbf16)
{
    test_sgemm_wt(t);
    test_wgemm(t);
    test_products(t, p);
    test_softmax(t, p, 1);
    test_softmax(t, p, 0);
    test_softmax_overflow(t, 1);
    test_softmax_overflow(t, 0);
    test_f16_every_value(t);
    test_seg_dots(t);
    mla__attn_kernels w48 = *t;
    w48.name = "avx512 (9 x 48 blocks)";
    w48.gemm_bc_src = mla__gemm_bc_src_w48_avx512;
    test_src_kernels(t, p, &w48);
    test_bc_src_i8_groups(t);
    test_bc_src_i8_groups(&w48);
    test_i8_codes(t);
    mla__attn_kernels fma = *t;
    fma.name = "fma";
    fma.gemm_bf16 = mla__gemm_bf16_fma;
    test_gemm_bf16(&fma);
    if (dpbf16) {
        mla__attn_kernels dp = *t;
        dp.name = "vdpbf16ps";
        dp.gemm_bf16 = mla__gemm_bf16_avx512;
        dp.pack_pairs = mla__pack_pairs_avx512;
        dp.to_bf16 = mla__to_bf16_avx512;
        test_gemm_bf16(&dp);
        test_pack_pairs(&dp);
        test_to_bf16(&dp);
    } else {
        printf("ok %d # SKIP this CPU has no AVX512_BF16 (vdpbf16ps)\n", ++tap_count);
    }
}
#endif

#ifdef MLA_TEST_AVX512_EMULATED
/*
 * amx.c on tests/amx_emulated.h's tiles, and the table kernels.c fills for an Intel CPU with
 * AMX-BF16: the tiles' products (from 64 latent columns on few query rows), and the FMA ones
 * when MLA_ATTN_KERNELS=avx512 leaves the tiles out.
 */
static void test_amx_emulated(void)
{
    mla__attn_kernels amx = mla__attn_kernels_avx512;
    amx.name = "amx (emulated tiles)";
    amx.gemm_bf16 = mla__gemm_bf16_amx;
    long before = mla_test_amx_products();
    test_gemm_bf16(&amx);
    long ran = mla_test_amx_products() - before;
    CHECK(ran > 0, "the AMX kernel multiplied on tiles (%ld tdpbf16ps)", ran);

    mla_cpu_features f = *mla_cpu();
    f.avx512f = f.avx512bw = f.avx512vl = f.avx512_bf16 = f.amx_bf16 = 1;
    f.amd = 0;
    mla__attn_kernels filled;
    const mla__attn_kernels *t = mla__attn_kernels_choose(&f, NULL, &filled);
    CHECK(t == &filled && t->gemm_bf16 == mla__gemm_bf16_amx && t->bf16_few_rows_min_k == 64 &&
              strcmp(t->bf16_products, "amx") == 0 && strcmp(t->name, "avx512+bf16+amx") == 0,
          "an AMX-BF16 CPU gets the tiles (%s, bf16 products %s)", t->name, t->bf16_products);
    t = mla__attn_kernels_choose(&f, "avx512", &filled);
    CHECK(t->gemm_bf16 == mla__gemm_bf16_fma && strcmp(t->bf16_products, "fma") == 0,
          "MLA_ATTN_KERNELS=avx512 leaves them out (%s, bf16 products %s)", t->name,
          t->bf16_products);
}

/* test_attn_kernels_avx512_emulated: only the AVX-512 kernels, compiled over SIMDe
 * (tests/attn/avx512_emulated.c), so that CPUs without AVX-512 check them too. Their table takes
 * avx2.c's seg_dots, which needs AVX2. */
int main(void)
{
    CHECK(mla__pool_create(8, 0, &pool) == MLA_OK, "a pool of 8 threads");
    if (mla_cpu()->avx2 && mla_cpu()->fma && mla_cpu()->f16c) {
        test_avx512(&mla__attn_kernels_avx512, &mla__attn_kernels_portable, 1);
        test_amx_emulated();
    } else {
        printf("ok %d # SKIP this CPU has no AVX2, FMA and F16C\n", ++tap_count);
    }
    mla__pool_destroy(pool);
    return tap_done();
}
#else
int main(void)
{
    const char *cap = getenv("MLA_TEST_MAX_THREADS");
    if (cap && atoi(cap) >= 1 && atoi(cap) < max_threads)
        max_threads = atoi(cap);
    CHECK(mla__pool_create(8, 0, &pool) == MLA_OK, "a pool of 8 threads");
    const mla__attn_kernels *p = &mla__attn_kernels_portable;
    const mla__attn_kernels *best = mla__attn_kernels_best();
    CHECK(best != NULL && best->gemm_bc && best->gemm_dot && best->softmax_step &&
              best->load_t && best->gemm_bc_src && best->gemm_dot_src &&
              best->gemm_bc_asrc && best->mha_scores && best->mha_values && best->seg_dots,
          "kernel table chosen (%s)", best ? best->name : "none");
    test_src_get();
    test_sgemm_one_row();
    test_sgemm_wt(p);
    test_sgemm_wt(best);
    test_wgemm(p);
    test_wgemm(best);
#ifdef MLA_ATTN_HAVE_AVX512
    if (mla_cpu()->avx2 && mla_cpu()->fma && mla_cpu()->f16c)
        test_wgemm(&mla__attn_kernels_avx2);
#endif
    test_softmax_merge();
    test_softmax_overflow(p, 1);
    test_softmax_overflow(p, 0);
    test_gemm_bf16(p);
    test_pack_pairs(p);
    test_to_bf16(p);
    test_to_bf16(best);
    test_round_bf16(p);
    test_round_bf16(best);
    test_seg_dots(p);
    test_seg_dots(best);
    CHECK(best->gemm_bf16 && best->pack_pairs && best->to_bf16, "BF16 kernels chosen (%s)",
          best->name);
    test_gemm_bf16(best);
    test_pack_pairs(best);
    {
        /* The label mla_build_info prints names the gemm_bf16 the table holds. */
        const char *want = best->gemm_bf16 == p->gemm_bf16 ? "portable" : "?";
#ifdef MLA_ATTN_HAVE_GENERIC
        if (best->gemm_bf16 == mla__attn_kernels_generic.gemm_bf16)
            want = "generic";
#endif
#ifdef MLA_ATTN_HAVE_AVX512
        if (best->gemm_bf16 == mla__attn_kernels_avx2.gemm_bf16)
            want = "avx2";
        else if (best->gemm_bf16 == mla__gemm_bf16_fma)
            want = "fma";
        else if (best->gemm_bf16 == mla__gemm_bf16_avx512)
            want = "vdpbf16ps";
        else if (best->gemm_bf16 == mla__gemm_bf16_amx)
            want = "amx";
#endif
        CHECK(best->bf16_products && strcmp(best->bf16_products, want) == 0 &&
                  strstr(mla_build_info(), want) != NULL,
              "bf16 products labelled %s (the kernel is %s): %s",
              best->bf16_products ? best->bf16_products : "NULL", want, mla_build_info());
    }
    {
        /* ... and the tile for 9 query rows, exactly when the table sets one (AMD: with the
         * 9 × 48 blocks of gemm_bc_src it suits, kernels.c). */
        char want[48] = "";
        if (best->nine_rows_tile > 0)
            snprintf(want, sizeof want, "9-row tiles: %lld tokens",
                     (long long)best->nine_rows_tile);
        int named = strstr(mla_build_info(), "9-row tiles") != NULL;
        int blocks = 1;
#ifdef MLA_ATTN_HAVE_AVX512
        blocks = (best->nine_rows_tile > 0) == (best->gemm_bc_src == mla__gemm_bc_src_w48_avx512);
#endif
        CHECK(best->nine_rows_tile > 0 ? strstr(mla_build_info(), want) != NULL : !named,
              "9-row tile %lld labelled: %s", (long long)best->nine_rows_tile,
              mla_build_info());
        CHECK(blocks, "a 9-row tile is set with the 9 x 48 gemm_bc_src, and only with it");
    }
#ifdef MLA_ATTN_HAVE_AVX512
    /* The AMX kernel itself, whichever the table holds (MLA_ATTN_KERNELS may leave it out). */
    if (mla_cpu()->avx512_bf16 && mla_cpu()->amx_bf16 && mla__amx_request()) {
        mla__attn_kernels amx = *best;
        amx.name = "amx";
        amx.gemm_bf16 = mla__gemm_bf16_amx;
        test_gemm_bf16(&amx);
    } else {
        printf("ok %d # SKIP no AMX-BF16 tiles on this CPU (or not granted by the OS)\n",
               ++tap_count);
    }
#endif
    /* The oracle itself over I8 groups against float64 (the vectorized tables follow). */
    test_bc_src_i8_groups(p);
    test_i8_codes(p);
#ifdef MLA_ATTN_HAVE_GENERIC
    /* The vector-extension kernels, on every CPU (kernels.c chooses them where neither AVX2
     * nor AVX-512 is there, or with MLA_ATTN_KERNELS=generic). */
    {
        const mla__attn_kernels *g = &mla__attn_kernels_generic;
        test_products(g, p);
        test_softmax(g, p, 1);
        test_softmax(g, p, 0);
        test_softmax_overflow(g, 1);
        test_softmax_overflow(g, 0);
        test_src_kernels(g, p, NULL);
        test_bc_src_i8_groups(g);
        test_i8_codes(g);
        test_gemm_bf16(g);
        test_pack_pairs(g);
        test_to_bf16(g);
        test_round_bf16(g);
        test_seg_dots(g);
        test_sgemm_wt(g);
        test_wgemm(g);
        test_f16_every_value(g);
    }
#else
    printf("ok %d # SKIP no vector-extension kernels in this build\n", ++tap_count);
#endif
#ifdef MLA_ATTN_HAVE_AVX512
    const mla_cpu_features *f = mla_cpu();
    /* The AVX2 kernels wherever the CPU has AVX2, FMA and F16C (AVX-512 CPUs included: kernels.c
     * chooses them only without AVX-512, or with MLA_ATTN_KERNELS=avx2). */
    if (f->avx2 && f->fma && f->f16c) {
        test_products(&mla__attn_kernels_avx2, p);
        test_softmax(&mla__attn_kernels_avx2, p, 1);
        test_softmax(&mla__attn_kernels_avx2, p, 0);
        test_softmax_overflow(&mla__attn_kernels_avx2, 1);
        test_softmax_overflow(&mla__attn_kernels_avx2, 0);
        test_src_kernels(&mla__attn_kernels_avx2, p, NULL);
        test_bc_src_i8_groups(&mla__attn_kernels_avx2);
        test_i8_codes(&mla__attn_kernels_avx2);
        test_gemm_bf16(&mla__attn_kernels_avx2);
        test_to_bf16(&mla__attn_kernels_avx2);
        test_round_bf16(&mla__attn_kernels_avx2);
        test_seg_dots(&mla__attn_kernels_avx2);
        test_sgemm_wt(&mla__attn_kernels_avx2);
        test_f16_every_value(&mla__attn_kernels_avx2);
    } else {
        printf("ok %d # SKIP this CPU has no AVX2, FMA and F16C\n", ++tap_count);
    }
    /* The AVX-512 kernels on this CPU (test_attn_kernels_avx512_emulated runs them on any). */
    if (f->avx512f && f->avx512bw && f->avx512vl && f->fma)
        test_avx512(&mla__attn_kernels_avx512, p, f->avx512_bf16);
    else
        printf("ok %d # SKIP this CPU has no AVX-512\n", ++tap_count);
#else
    printf("ok %d # SKIP no AVX-512 kernels in this build\n", ++tap_count);
#endif
    mla__pool_destroy(pool);
    return tap_done();
}
#endif

/* BLIS for the large products, on the threads of the pool given per call (no global setting). */
#include <blis.h>
#if defined(__x86_64__) && defined(__GNUC__)
#  include <immintrin.h>
#endif

#include "attn/internal.h"

/* Output values per thread below which a one-row product stays on one thread. */
#define GEMV_MIN_ROWS_PER_THREAD 256

/*
 * One row of A (decode: one token): c = a·B is the matrix-vector product y = Bᵀ·a. BLIS's gemm
 * packs all of B for it on every call, reading the weights twice and writing them once; its gemv
 * reads them once, in place, but runs on one thread, so the rows of Bᵀ are split across the
 * threads here (measured on a 4096 × 4096 float32 matrix, 2 threads: 19–21 GB/s through gemm,
 * 31–40 GB/s this way; bench/bench_decode's fixed costs show it).
 */
/* Part t of `parts` of [0, len): boundaries in multiples of `align` (a part's output starts on a
 * cache line), the last part to the end; empty where len is short. */
static void part_range(int64_t len, int64_t t, int64_t parts, int64_t align, int64_t *i0,
                       int64_t *i1)
{
    *i0 = len * t / parts / align * align;
    *i1 = t + 1 == parts ? len : len * (t + 1) / parts / align * align;
}

typedef struct gemv_loop {
    int64_t n, k, parts;
    const float *a, *b;
    ptrdiff_t csa, rsb, csb, csc;
    float beta;
    float *c;
} gemv_loop;

static void gemv_part(void *arg, int64_t t, int thread)
{
    const gemv_loop *g = arg;
    float one = 1.0f, bt = g->beta;
    int64_t j0, j1;
    part_range(g->n, t, g->parts, 16, &j0, &j1);
    if (j1 > j0) {
        mla__blas_enter();
        bli_sgemv(BLIS_NO_TRANSPOSE, BLIS_NO_CONJUGATE, (dim_t)(j1 - j0), (dim_t)g->k, &one,
                  (float *)(g->b + j0 * g->csb), (inc_t)g->csb, (inc_t)g->rsb, (float *)g->a,
                  (inc_t)g->csa, &bt, g->c + j0 * g->csc, (inc_t)g->csc);
        mla__blas_leave();
    }
}

static void gemv_rows(mla__team tm, int64_t n, int64_t k, const float *a, ptrdiff_t csa,
                      const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c,
                      ptrdiff_t csc)
{
    int64_t parts = tm.n;
    if (parts > n / GEMV_MIN_ROWS_PER_THREAD)
        parts = n / GEMV_MIN_ROWS_PER_THREAD > 0 ? n / GEMV_MIN_ROWS_PER_THREAD : 1;
    gemv_loop g = {n, k, parts, a, b, csa, rsb, csb, csc, beta, c};
    mla__pool_run(tm.pool, tm.n, parts, gemv_part, &g);
}

/* One BLIS call on the calling thread. */
static void blis_gemm1(int sup, int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                       ptrdiff_t csa, const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta,
                       float *c, ptrdiff_t rsc, ptrdiff_t csc)
{
    float one = 1.0f;
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(1, &rntm);
    if (!sup)
        bli_rntm_disable_l3_sup(&rntm);
    /* BLIS only reads a and b; its typed API is not const-qualified. */
    mla__blas_enter();
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &one,
                 (float *)a, (inc_t)rsa, (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta,
                 c, (inc_t)rsc, (inc_t)csc, NULL, &rntm);
    mla__blas_leave();
}

typedef struct gemm_loop {
    int sup, split_n;
    int64_t m, n, k, parts;
    const float *a, *b;
    ptrdiff_t rsa, csa, rsb, csb, rsc, csc;
    float beta;
    float *c;
} gemm_loop;

static void gemm_part(void *arg, int64_t t, int thread)
{
    const gemm_loop *g = arg;
    int64_t i0, i1;
    part_range(g->split_n ? g->n : g->m, t, g->parts, 16, &i0, &i1);
    if (i1 <= i0)
        return;
    if (g->split_n)
        blis_gemm1(g->sup, g->m, i1 - i0, g->k, g->a, g->rsa, g->csa, g->b + i0 * g->csb, g->rsb,
                   g->csb, g->beta, g->c + i0 * g->csc, g->rsc, g->csc);
    else
        blis_gemm1(g->sup, i1 - i0, g->n, g->k, g->a + i0 * g->rsa, g->rsa, g->csa, g->b, g->rsb,
                   g->csb, g->beta, g->c + i0 * g->rsc, g->rsc, g->csc);
}

/*
 * BLIS on the team's threads, each part a single-threaded BLIS call: the pool hands the parts to
 * whichever thread is running (BLIS's own OpenMP threads would spin beside the pool's). The
 * larger of m and n is split, so the operand every part packs again is the smaller (a prompt's
 * activations against float32 weights; a 16-bit weight panel against a long prompt).
 */
static void blis_gemm(mla__team tm, int sup, int64_t m, int64_t n, int64_t k, const float *a,
                      ptrdiff_t rsa, ptrdiff_t csa, const float *b, ptrdiff_t rsb, ptrdiff_t csb,
                      float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc)
{
    int split_n = n >= m;
    int64_t len = split_n ? n : m, parts = tm.n;
    if (parts > len / 16)
        parts = len / 16 > 0 ? len / 16 : 1;
    gemm_loop g = {sup, split_n, m, n, k, parts, a, b, rsa, csa, rsb, csb, rsc, csc, beta, c};
    mla__pool_run(tm.pool, tm.n, parts, gemm_part, &g);
}

void mla__sgemm(mla__team tm, int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                ptrdiff_t csa, const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c,
                ptrdiff_t rsc, ptrdiff_t csc)
{
    if (m == 0 || n == 0)
        return;
    if (m == 1) {
        gemv_rows(tm, n, k, a, csa, b, rsb, csb, beta, c, csc);
        return;
    }
    blis_gemm(tm, 1, m, n, k, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
}

/*
 * From this inner dimension and SUP_MIN_M rows BLIS's code for small matrices ("sup", which BLIS
 * takes below 512 rows here) is skipped for its packed one: with the weights of Llama-2-7B
 * (k = 4096; n = 4096 and 512 columns) sup ran at 60–84 GFLOP/s from 64 to 511 rows, packed at
 * 102–161 (2 threads, AMD EPYC); below 64 rows packing all of W cost more. At SmolLM-135M's
 * k = 576 sup was the faster. Only the AVX2 and portable tables send such rows to BLIS
 * (dot_weights_max_m).
 */
#define SUP_MAX_K 2048
#define SUP_MIN_M 64

/*
 * Rows times the weights, W read in place: BLIS's gemm packs all of W on every call, and below
 * 512 rows its sup code ran the 4096 × 4096 product at 18–68 GFLOP/s (2 threads, AMD EPYC).
 * gemm_dot_src reads each W row in place, once per call, and takes its dot products with every
 * row of A while it is in L2 (16 W rows at a time): 27–166 GFLOP/s for the same rows
 * (doc/attention.md, "Batched decode"). The threads split the columns in multiples of 16, or the rows in multiples of 4
 * where the columns are too few (a narrow down-projection). Each C element is the same sum
 * whatever the split.
 */
typedef struct dot_loop {
    const mla__attn_kernels *kt;
    int64_t m, n, k, pn, pm;
    const float *a;
    ptrdiff_t lda, ldw, ldc;
    const void *w;
    mla_dtype wt;
    float *c;
} dot_loop;

static void dot_part(void *arg, int64_t t, int thread)
{
    const dot_loop *g = arg;
    int64_t j0 = 0, j1 = g->n, i0 = 0, i1 = g->m;
    if (g->pn > 1)
        part_range(g->n, t, g->pn, 16, &j0, &j1);
    else if (g->pm > 1)
        part_range(g->m, t, g->pm, 4, &i0, &i1);
    ptrdiff_t row_bytes = g->ldw * (ptrdiff_t)(g->wt == MLA_DTYPE_F32 ? 4 : 2);
    for (int64_t j = j0; j < j1 && i1 > i0; j += 16) {
        mla__src rows = {(const unsigned char *)g->w + j * row_bytes, row_bytes, g->wt, NULL, 0, 0};
        g->kt->gemm_dot_src(i1 - i0, j1 - j < 16 ? j1 - j : 16, g->k, g->a + i0 * g->lda, g->lda,
                            &rows, 0, 0, 0.0f, g->c + i0 * g->ldc + j, g->ldc);
    }
}

static void dot_weights(const mla__attn_kernels *kt, mla__team tm, int64_t m, int64_t n,
                        int64_t k, const float *a, ptrdiff_t lda, const void *w, mla_dtype wt,
                        ptrdiff_t ldw, float *c, ptrdiff_t ldc)
{
    int64_t pn = tm.n, pm = 1;
    if (n < 64 * (int64_t)tm.n) {
        pn = 1;
        pm = m / 4 < tm.n ? (m / 4 > 0 ? m / 4 : 1) : tm.n;
    }
    dot_loop g = {kt, m, n, k, pn, pm, a, lda, ldw, ldc, w, wt, c};
    mla__pool_run(tm.pool, tm.n, pn * pm, dot_part, &g);
}

void mla__sgemm_wt(const mla__attn_kernels *kt, mla__team tm, int64_t m, int64_t n, int64_t k,
                   const float *a, ptrdiff_t lda, const float *w, ptrdiff_t ldw, float *c,
                   ptrdiff_t ldc)
{
    if (m == 0 || n == 0)
        return;
    if (m == 1)
        gemv_rows(tm, n, k, a, 1, w, 1, ldw, 0.0f, c, 1);
    else if (m < kt->dot_weights_max_m)
        dot_weights(kt, tm, m, n, k, a, lda, w, MLA_DTYPE_F32, ldw, c, ldc);
    else
        blis_gemm(tm, k < SUP_MAX_K || m < SUP_MIN_M, m, n, k, a, lda, 1, w, 1, ldw, 0.0f,
                  c, ldc, 1);
}

/* Bytes of widened weights a panel of the 16-bit path below aims at: enough columns that BLIS's
 * packing of A (once a panel) stays a few percent of a prompt's product. */
#define PANEL_BYTES ((int64_t)8 << 20)

int64_t mla__wgemm_panel_rows(const mla__attn_kernels *kt, mla_dtype wt, int64_t m, int64_t k)
{
    if (wt == MLA_DTYPE_F32 || m < kt->dot_weights_max_m || k <= 0)
        return 0;
    int64_t rows = PANEL_BYTES / (4 * k) / 16 * 16;
    return rows < 16 ? 16 : rows;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* F16 widened 8 values a step by F16C's vcvtph2ps (the same values as mla_f16_to_f32). */
__attribute__((target("avx,f16c"))) static void widen_f16c(const uint16_t *s, int64_t k,
                                                           float *d)
{
    int64_t j = 0;
    for (; j + 8 <= k; j += 8)
        _mm256_storeu_ps(d + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + j))));
    for (; j < k; j++)
        d[j] = mla_f16_to_f32(s[j]);
}
#  define HAVE_F16C_WIDEN 1
#endif

/* Rows of 16-bit weights widened to float32, the threads taking runs of rows. A bf16 value is
 * the high half of its float32: a shift the compiler vectorizes; f16 by F16C where the CPU has it
 * (mla_to_f32's call a value took 5% of a 2048-token Llama-2-7B prompt). */
typedef struct widen_loop {
    const uint16_t *w;
    mla_dtype wt;
    int64_t rows, k, parts;
    float *dst;
} widen_loop;

static void widen_part(void *arg, int64_t t, int thread)
{
    const widen_loop *g = arg;
#ifdef HAVE_F16C_WIDEN
    int f16c = mla_cpu()->f16c && mla_cpu()->avx2;
#else
    int f16c = 0;
#endif
    int64_t r0, r1;
    part_range(g->rows, t, g->parts, 1, &r0, &r1);
    for (int64_t i = r0; i < r1; i++) {
        const uint16_t *s = g->w + i * g->k;
        float *df = g->dst + i * g->k;
        if (g->wt == MLA_DTYPE_BF16) {
            uint32_t *d = (uint32_t *)(void *)df;
            for (int64_t j = 0; j < g->k; j++)
                d[j] = (uint32_t)s[j] << 16;
        } else if (f16c) {
#ifdef HAVE_F16C_WIDEN
            widen_f16c(s, g->k, df);
#endif
        } else {
            mla_to_f32(df, s, g->wt, (size_t)g->k);
        }
    }
}

void mla__widen16(mla__team tm, const uint16_t *w, mla_dtype wt, int64_t rows, int64_t k,
                  float *dst)
{
    /* A few runs a thread, so that a thread the system holds back leaves little to the rest. */
    int64_t parts = 4 * (int64_t)tm.n < rows ? 4 * (int64_t)tm.n : rows;
    widen_loop g = {w, wt, rows, k, parts > 0 ? parts : 1, dst};
    mla__pool_run(tm.pool, tm.n, g.parts, widen_part, &g);
}

void mla__wgemm(const mla__attn_kernels *kt, mla__team tm, int64_t m, int64_t n, int64_t k,
                const float *a, ptrdiff_t lda, const void *w, mla_dtype wt, float *c,
                ptrdiff_t ldc, float *panel, int64_t panel_rows)
{
    if (m == 0 || n == 0)
        return;
    if (wt == MLA_DTYPE_F32) {
        mla__sgemm_wt(kt, tm, m, n, k, a, lda, w, k, c, ldc);
        return;
    }
    if (panel_rows == 0) {
        dot_weights(kt, tm, m, n, k, a, lda, w, wt, k, c, ldc);
        return;
    }
    const uint16_t *wh = w;
    for (int64_t j0 = 0; j0 < n; j0 += panel_rows) {
        int64_t rows = n - j0 < panel_rows ? n - j0 : panel_rows;
        mla__widen16(tm, wh + j0 * k, wt, rows, k, panel);
        /* As float32 weights of as many rows go (BLIS, small-matrix code by the same rule). */
        mla__sgemm_wt(kt, tm, m, rows, k, a, lda, panel, k, c + j0, ldc);
    }
}

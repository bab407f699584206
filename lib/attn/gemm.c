/* BLIS for the large products, with the thread count given per call (no global setting). */
#include <blis.h>
#include <omp.h>
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
static void gemv_rows(int n_threads, int64_t n, int64_t k, const float *a, ptrdiff_t csa,
                      const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c,
                      ptrdiff_t csc)
{
    float one = 1.0f;
    int64_t nt = n_threads;
    if (nt > n / GEMV_MIN_ROWS_PER_THREAD)
        nt = n / GEMV_MIN_ROWS_PER_THREAD > 0 ? n / GEMV_MIN_ROWS_PER_THREAD : 1;
#pragma omp parallel for num_threads((int)nt) schedule(static, 1) if (nt > 1)
    for (int64_t t = 0; t < nt; t++) {
        /* Row ranges in multiples of 16 so each thread's output starts on a cache line. */
        int64_t j0 = n * t / nt / 16 * 16, j1 = t + 1 == nt ? n : n * (t + 1) / nt / 16 * 16;
        float bt = beta;
        if (j1 > j0)
            bli_sgemv(BLIS_NO_TRANSPOSE, BLIS_NO_CONJUGATE, (dim_t)(j1 - j0), (dim_t)k, &one,
                      (float *)(b + j0 * csb), (inc_t)csb, (inc_t)rsb, (float *)a, (inc_t)csa,
                      &bt, c + j0 * csc, (inc_t)csc);
    }
}

static void blis_gemm(int n_threads, int sup, int64_t m, int64_t n, int64_t k, const float *a,
                      ptrdiff_t rsa, ptrdiff_t csa, const float *b, ptrdiff_t rsb, ptrdiff_t csb,
                      float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc)
{
    float one = 1.0f;
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(n_threads, &rntm);
    if (!sup)
        bli_rntm_disable_l3_sup(&rntm);
    /* BLIS only reads a and b; its typed API is not const-qualified. */
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &one,
                 (float *)a, (inc_t)rsa, (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta,
                 c, (inc_t)rsc, (inc_t)csc, NULL, &rntm);
}

void mla__sgemm(int n_threads, int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                ptrdiff_t csa, const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c,
                ptrdiff_t rsc, ptrdiff_t csc)
{
    if (m == 0 || n == 0)
        return;
    if (m == 1) {
        gemv_rows(n_threads, n, k, a, csa, b, rsb, csb, beta, c, csc);
        return;
    }
    blis_gemm(n_threads, 1, m, n, k, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
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
static void dot_weights(const mla__attn_kernels *kt, int n_threads, int64_t m, int64_t n,
                        int64_t k, const float *a, ptrdiff_t lda, const void *w, mla_dtype wt,
                        ptrdiff_t ldw, float *c, ptrdiff_t ldc)
{
    int64_t pn = n_threads, pm = 1;
    if (n < 64 * (int64_t)n_threads) {
        pn = 1;
        pm = m / 4 < n_threads ? (m / 4 > 0 ? m / 4 : 1) : n_threads;
    }
    int64_t parts = pn * pm;
#pragma omp parallel for num_threads((int)parts) schedule(static, 1) if (parts > 1)
    for (int64_t t = 0; t < parts; t++) {
        int64_t j0 = 0, j1 = n, i0 = 0, i1 = m;
        if (pn > 1) {
            j0 = n * t / pn / 16 * 16;
            j1 = t + 1 == pn ? n : n * (t + 1) / pn / 16 * 16;
        } else if (pm > 1) {
            i0 = m * t / pm / 4 * 4;
            i1 = t + 1 == pm ? m : m * (t + 1) / pm / 4 * 4;
        }
        for (int64_t j = j0; j < j1 && i1 > i0; j += 16) {
            ptrdiff_t row_bytes = ldw * (ptrdiff_t)(wt == MLA_DTYPE_F32 ? 4 : 2);
            mla__src rows = {(const unsigned char *)w + j * row_bytes, row_bytes, wt, NULL, 0, 0};
            kt->gemm_dot_src(i1 - i0, j1 - j < 16 ? j1 - j : 16, k, a + i0 * lda, lda, &rows, 0,
                             0, 0.0f, c + i0 * ldc + j, ldc);
        }
    }
}

void mla__sgemm_wt(const mla__attn_kernels *kt, int n_threads, int64_t m, int64_t n, int64_t k,
                   const float *a, ptrdiff_t lda, const float *w, ptrdiff_t ldw, float *c,
                   ptrdiff_t ldc)
{
    if (m == 0 || n == 0)
        return;
    if (m == 1)
        gemv_rows(n_threads, n, k, a, 1, w, 1, ldw, 0.0f, c, 1);
    else if (m < kt->dot_weights_max_m)
        dot_weights(kt, n_threads, m, n, k, a, lda, w, MLA_DTYPE_F32, ldw, c, ldc);
    else
        blis_gemm(n_threads, k < SUP_MAX_K || m < SUP_MIN_M, m, n, k, a, lda, 1, w, 1, ldw, 0.0f,
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

/* Rows of 16-bit weights widened to float32, the threads taking rows. A bf16 value is the high
 * half of its float32: a shift the compiler vectorizes; f16 by F16C where the CPU has it
 * (mla_to_f32's call a value took 5% of a 2048-token Llama-2-7B prompt). */
void mla__widen16(int n_threads, const uint16_t *w, mla_dtype wt, int64_t rows, int64_t k,
                  float *dst)
{
#ifdef HAVE_F16C_WIDEN
    int f16c = mla_cpu()->f16c && mla_cpu()->avx2;
#else
    int f16c = 0;
#endif
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t i = 0; i < rows; i++) {
        const uint16_t *s = w + i * k;
        float *df = dst + i * k;
        if (wt == MLA_DTYPE_BF16) {
            uint32_t *d = (uint32_t *)(void *)df;
            for (int64_t j = 0; j < k; j++)
                d[j] = (uint32_t)s[j] << 16;
        } else if (f16c) {
#ifdef HAVE_F16C_WIDEN
            widen_f16c(s, k, df);
#endif
        } else {
            mla_to_f32(df, s, wt, (size_t)k);
        }
    }
}

void mla__wgemm(const mla__attn_kernels *kt, int n_threads, int64_t m, int64_t n, int64_t k,
                const float *a, ptrdiff_t lda, const void *w, mla_dtype wt, float *c,
                ptrdiff_t ldc, float *panel, int64_t panel_rows)
{
    if (m == 0 || n == 0)
        return;
    if (wt == MLA_DTYPE_F32) {
        mla__sgemm_wt(kt, n_threads, m, n, k, a, lda, w, k, c, ldc);
        return;
    }
    if (panel_rows == 0) {
        dot_weights(kt, n_threads, m, n, k, a, lda, w, wt, k, c, ldc);
        return;
    }
    const uint16_t *wh = w;
    for (int64_t j0 = 0; j0 < n; j0 += panel_rows) {
        int64_t rows = n - j0 < panel_rows ? n - j0 : panel_rows;
        mla__widen16(n_threads, wh + j0 * k, wt, rows, k, panel);
        /* As float32 weights of as many rows go (BLIS, small-matrix code by the same rule). */
        mla__sgemm_wt(kt, n_threads, m, rows, k, a, lda, panel, k, c + j0, ldc);
    }
}

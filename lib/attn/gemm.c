/* BLIS for the large products, with the thread count given per call (no global setting). */
#include <blis.h>
#include <omp.h>

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
    float one = 1.0f;
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(n_threads, &rntm);
    /* BLIS only reads a and b; its typed API is not const-qualified. */
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &one,
                 (float *)a, (inc_t)rsa, (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta,
                 c, (inc_t)rsc, (inc_t)csc, NULL, &rntm);
}

/*
 * Low-rank factorizations (../shared/mha2mla.md, step 2): truncated SVD, optionally of M·L with
 * L the Cholesky factor of the damped input covariance (activation-aware).
 *
 * Storage: M is m × d row-major, which LAPACK (column-major) sees as Mᵀ (d × m). The SVD of
 * Mᵀ = V Σ Uᵀ then hands out V with contiguous columns (the rows of W_dkv) and Uᵀ, so no
 * transposition is needed anywhere.
 */
/* BLIS's CBLAS header: blis.h itself clashes with lapack.h over lsame_. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

mla_status mla__lowrank(const double *mat, size_t m, size_t d, size_t rank, const double *chol,
                        float *up, float *down, double *sigma)
{
    const size_t k = m < d ? m : d;
    double *a = mla_alloc(m * d * sizeof(double));
    double *u = mla_alloc(d * k * sizeof(double));   /* columns: right singular vectors of M */
    double *vt = mla_alloc(k * m * sizeof(double));  /* rows: left singular vectors of M */
    double *s = mla_alloc(k * sizeof(double));
    double *superb = mla_alloc((k > 1 ? k : 2) * sizeof(double));
    mla_status st = MLA_OK;
    if (!a || !u || !vt || !s || !superb) {
        st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "SVD of a %zu × %zu matrix", m, d);
        goto done;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        memcpy(a, mat, m * d * sizeof(double));
        if (chol) /* (M·L)ᵀ = Lᵀ·Mᵀ */
            cblas_dtrmm(CblasColMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit,
                        (f77_int)d, (f77_int)m, 1.0, chol, (f77_int)d, a, (f77_int)d);
        lapack_int info;
        if (attempt == 0)
            info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)d, (lapack_int)m, a,
                                  (lapack_int)d, s, u, (lapack_int)d, vt, (lapack_int)k);
        else /* divide and conquer did not converge: the slower, more robust QR iteration */
            info = LAPACKE_dgesvd(LAPACK_COL_MAJOR, 'S', 'S', (lapack_int)d, (lapack_int)m, a,
                                  (lapack_int)d, s, u, (lapack_int)d, vt, (lapack_int)k, superb);
        if (info == 0)
            break;
        if (info < 0 || info == LAPACK_WORK_MEMORY_ERROR) {
            st = info == LAPACK_WORK_MEMORY_ERROR
                     ? mla_fail(MLA_ERR_OUT_OF_MEMORY, "SVD workspace (%zu × %zu)", m, d)
                     : mla_fail(MLA_ERR_INTERNAL, "LAPACK SVD argument %d rejected",
                                (int)-info);
            goto done;
        }
        if (attempt == 1) {
            st = mla_fail(MLA_ERR_NUMERICAL,
                          "SVD of the %zu × %zu matrix did not converge (gesdd and gesvd)", m, d);
            goto done;
        }
    }
    if (chol) /* W_dkv = V_Rᵀ L⁻¹: solve Lᵀ Y = V_R, never forming L⁻¹ */
        cblas_dtrsm(CblasColMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, (f77_int)d,
                    (f77_int)rank, 1.0, chol, (f77_int)d, u, (f77_int)d);
    for (size_t r = 0; r < rank; r++)
        for (size_t c = 0; c < d; c++)
            down[r * d + c] = (float)u[r * d + c];
    /* All singular values go to the up side, as the reference does. */
    for (size_t i = 0; i < m; i++)
        for (size_t r = 0; r < rank; r++)
            up[i * rank + r] = (float)(vt[i * k + r] * s[r]);
    memcpy(sigma, s, k * sizeof(double));
done:
    mla_free(a);
    mla_free(u);
    mla_free(vt);
    mla_free(s);
    mla_free(superb);
    return st;
}

mla_status mla__damped_cholesky(const double *c, size_t d, double damping, double *chol,
                                double *lambda_used)
{
    double mean = 0;
    for (size_t i = 0; i < d; i++)
        mean += c[i * d + i];
    mean /= (double)d;
    double lambda = damping * mean;
    /* Where λ is zero (no damping asked, or X = 0), the first raise starts from a tiny multiple
     * of the scale, or 1e-12 for an all-zero covariance. */
    const double lo = mean > 0 ? 1e-12 * mean : 1e-12;
    for (int attempt = 0; attempt < 40; attempt++) {
        /* C's upper row-major triangle is exactly the lower column-major triangle LAPACK reads. */
        memcpy(chol, c, d * d * sizeof(double));
        for (size_t i = 0; i < d; i++)
            chol[i * d + i] += lambda;
        lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', (lapack_int)d, chol,
                                         (lapack_int)d);
        if (info == 0) {
            for (size_t j = 0; j < d; j++) /* clear the untouched strictly upper part */
                for (size_t i = 0; i < j; i++)
                    chol[i + j * d] = 0;
            *lambda_used = lambda;
            return MLA_OK;
        }
        if (info < 0)
            return mla_fail(MLA_ERR_INTERNAL, "LAPACKE_dpotrf argument %d rejected", (int)-info);
        lambda = lambda > lo ? lambda * 10 : lo;
    }
    return mla_fail(MLA_ERR_NUMERICAL,
                    "Cholesky factorization of XᵀX + λI failed up to λ = %g", lambda);
}

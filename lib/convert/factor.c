/*
 * Low-rank factorizations (../shared/mha2mla.md, step 2): truncated SVD, optionally of M·L with
 * L the Cholesky factor of the damped input covariance (activation-aware).
 *
 * Only the top R right singular vectors V_R of M' (M or M·L) are needed: W_down = V_Rᵀ (L⁻¹) and
 * W_up = U_R Σ_R = M' V_R. So instead of a full SVD (dgesdd computes all min(m, d) of both sides:
 * 82 s for a Llama-2-7B layer on one core) the factorization takes the top R eigenvectors of the
 * Gram matrix G = M'ᵀ M' (d × d; dsyrk, then dsyevr for the requested ones only). Squaring
 * costs accuracy only in directions whose σ² is near ε·σ₁², and W_up is formed from M' itself, so
 * the product's error stays of order ε·σ₁ (doc/convert.md); the kept energy is Σ top eigenvalues
 * over trace(G) = ‖M'‖_F².
 *
 * Storage: M is m × d row-major, which BLAS (column-major) sees as M'ᵀ (d × m): its columns are
 * the rows of M', so no transposition is needed anywhere.
 */
/* BLIS's CBLAS header: blis.h itself clashes with lapack.h over lsame_. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

/* The top `rank` eigenvectors of the symmetric g (d × d, lower triangle, column-major; destroyed)
 * into z (d × rank, column-major, by descending eigenvalue), their eigenvalues into w (d entries,
 * the first rank used): by MRRR (dsyevr, only the ones asked for), or with `robust` by QR
 * iteration over all (dsyev). Returns LAPACK's info, or LAPACK_WORK_MEMORY_ERROR. */
static lapack_int top_eigen(int robust, double *g, size_t d, size_t rank, double *w, double *z)
{
    lapack_int info;
    if (!robust) {
        lapack_int found = 0;
        lapack_int *isuppz = mla_alloc(2 * rank * sizeof(lapack_int));
        if (!isuppz)
            return LAPACK_WORK_MEMORY_ERROR;
        /* Eigenvalues come ascending: the top `rank` are indices d − rank + 1 .. d. */
        mla__blas_enter();
        info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', (lapack_int)d, g, (lapack_int)d,
                              0.0, 0.0, (lapack_int)(d - rank + 1), (lapack_int)d, 0.0, &found,
                              w, z, (lapack_int)d, isuppz);
        mla__blas_leave();
        mla_free(isuppz);
        if (info == 0 && (size_t)found != rank)
            info = 1;
    } else {
        double *wall = mla_alloc(d * sizeof(double));
        if (!wall)
            return LAPACK_WORK_MEMORY_ERROR;
        mla__blas_enter();
        info = LAPACKE_dsyev(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)d, g, (lapack_int)d, wall);
        mla__blas_leave();
        if (info == 0) {
            memcpy(w, wall + (d - rank), rank * sizeof(double));
            memcpy(z, g + (d - rank) * d, rank * d * sizeof(double));
        }
        mla_free(wall);
    }
    if (info != 0)
        return info;
    for (size_t i = 0, j = rank - 1; i < j; i++, j--) { /* ascending to descending */
        double t = w[i];
        w[i] = w[j];
        w[j] = t;
        for (size_t c = 0; c < d; c++) {
            t = z[i * d + c];
            z[i * d + c] = z[j * d + c];
            z[j * d + c] = t;
        }
    }
    return 0;
}

mla_status mla__lowrank(const double *mat, size_t m, size_t d, size_t rank, const double *chol,
                        float *up, float *down, double *kept, double *total)
{
    double *a = mla_alloc(m * d * sizeof(double));     /* M'ᵀ, d × m */
    double *g = mla_alloc(d * d * sizeof(double));     /* M'ᵀ M' */
    double *z = mla_alloc(d * rank * sizeof(double));  /* V_R */
    double *w = mla_alloc(d * sizeof(double));          /* dsyevr's W has d entries */
    double *ud = mla_alloc(m * rank * sizeof(double)); /* M' V_R, R × m column-major */
    mla_status st = MLA_OK;
    if (!a || !g || !z || !w || !ud) {
        st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "rank-%zu factorization of a %zu × %zu matrix",
                      rank, m, d);
        goto done;
    }
    memcpy(a, mat, m * d * sizeof(double));
    if (chol) { /* (M·L)ᵀ = Lᵀ·Mᵀ */
        mla__blas_enter();
        cblas_dtrmm(CblasColMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, (f77_int)d,
                    (f77_int)m, 1.0, chol, (f77_int)d, a, (f77_int)d);
        mla__blas_leave();
    }
    /* MLA_CONVERT_EIGEN=qr starts with the fallback (a test hook, and a way around an MRRR
     * implementation that misbehaves). */
    const char *env = getenv("MLA_CONVERT_EIGEN");
    for (int attempt = env && strcmp(env, "qr") == 0; attempt < 2; attempt++) {
        mla__blas_enter();
        cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, (f77_int)d, (f77_int)m, 1.0, a,
                    (f77_int)d, 0.0, g, (f77_int)d);
        mla__blas_leave();
        *total = 0;
        for (size_t i = 0; i < d; i++)
            *total += g[i * d + i];
        /* MRRR not converging: the slower, more robust QR iteration on a fresh G. */
        lapack_int info = top_eigen(attempt, g, d, rank, w, z);
        if (info == 0)
            break;
        if (info < 0) { /* LAPACK_WORK_MEMORY_ERROR is negative too */
            st = info == LAPACK_WORK_MEMORY_ERROR
                     ? mla_fail(MLA_ERR_OUT_OF_MEMORY, "eigensolver workspace (%zu × %zu)", d, d)
                     : mla_fail(MLA_ERR_INTERNAL, "LAPACK eigensolver argument %d rejected",
                                (int)-info);
            goto done;
        }
        if (attempt == 1) {
            st = mla_fail(MLA_ERR_NUMERICAL,
                          "eigendecomposition of the %zu × %zu Gram matrix did not converge "
                          "(dsyevr and dsyev)", d, d);
            goto done;
        }
    }
    *kept = 0;
    for (size_t r = 0; r < rank; r++)
        *kept += w[r];
    /* W_up = M' V_R: (V_Rᵀ · M'ᵀ) is R × m column-major, i.e. up row-major. */
    mla__blas_enter();
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, (f77_int)rank, (f77_int)m, (f77_int)d,
                1.0, z, (f77_int)d, a, (f77_int)d, 0.0, ud, (f77_int)rank);
    mla__blas_leave();
    if (chol) { /* W_dkv = V_Rᵀ L⁻¹: solve Lᵀ Y = V_R, never forming L⁻¹ */
        mla__blas_enter();
        cblas_dtrsm(CblasColMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, (f77_int)d,
                    (f77_int)rank, 1.0, chol, (f77_int)d, z, (f77_int)d);
        mla__blas_leave();
    }
    for (size_t i = 0; i < rank * d; i++)
        down[i] = (float)z[i];
    for (size_t i = 0; i < m * rank; i++)
        up[i] = (float)ud[i];
done:
    mla_free(a);
    mla_free(g);
    mla_free(z);
    mla_free(w);
    mla_free(ud);
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
        mla__blas_enter();
        lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', (lapack_int)d, chol,
                                         (lapack_int)d);
        mla__blas_leave();
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

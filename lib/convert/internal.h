/*
 * Functions shared by the files of lib/convert (not by other modules: they use layer.h).
 */
#ifndef MLA_CONVERT_INTERNAL_H
#define MLA_CONVERT_INTERNAL_H

#include <mla/mla.h>

#include "convert/layer.h"
#include "core/core.h"

/* ---- source.c: argument checks and float32 views of the source weights ---------------------- */

/* Read the caller's geometry into *out (full size, defaults for fields it lacks) and check it.
 * Errors: INVALID_ARGUMENT naming the field. */
MLA_INTERNAL mla_status mla__geometry_read(const mla_geometry *g, mla_geometry *out);

/* Float32 views of one layer's weights. F32 inputs are borrowed; F16/BF16 are converted into
 * owned buffers. Every present tensor has been checked for NaN/Inf. */
typedef struct mla__source {
    const float *wq, *wk, *wv, *wo; /* NULL when not requested */
    const float *bq, *bk, *bv;      /* NULL when absent */
    float *owned[7];
} mla__source;

enum {
    MLA__SRC_WQ = 1,
    MLA__SRC_WK = 2,
    MLA__SRC_WV = 4,
    MLA__SRC_WO = 8,
    MLA__SRC_ALL = 15,
};

/* Check *w against geometry g (already read) and make float32 views of the tensors in `which`
 * (biases follow their weights). Errors: INVALID_ARGUMENT, NUMERICAL (tensor and index),
 * OUT_OF_MEMORY. On failure nothing is left allocated. */
MLA_INTERNAL mla_status mla__source_load(const mla_geometry *g, const mla_layer_weights *w,
                                         unsigned which, mla__source *src);
MLA_INTERNAL void mla__source_free(mla__source *src);

/* NaN/Inf check of a rows × cols float32 matrix; the message names the tensor, row and column. */
MLA_INTERNAL mla_status mla__check_finite(const float *x, size_t rows, size_t cols,
                                          const char *name);

/* Sizes in elements of a geometry's projections (all fit in int32 by mla__geometry_read). */
static inline size_t mla__q_rows(const mla_geometry *g)
{
    return (size_t)g->n_heads * (size_t)g->head_dim;
}
static inline size_t mla__kv_rows(const mla_geometry *g)
{
    return (size_t)g->n_kv_heads * (size_t)g->head_dim;
}

/* ---- select.c: partial-RoPE frequency selection --------------------------------------------- */

/* Choose the kept frequencies: freqs is n_kv × r/2, ascending per head. calib may be NULL unless
 * the strategy is 2-norm. Errors: INVALID_ARGUMENT naming the field. */
MLA_INTERNAL mla_status mla__select_freqs(const mla_geometry *g, const mla_convert_params *p,
                                          const mla_calib *calib, int32_t *freqs);

/* Kept dims of every head from its frequencies: dims[j·r + k] (n_kv × r). */
MLA_INTERNAL void mla__freqs_to_dims(const mla_geometry *g, int32_t r, const int32_t *freqs,
                                     int32_t *dims);

/* ---- calib.c --------------------------------------------------------------------------------- */

/* Geometry of a calibration handle, for the conversion's consistency check. */
MLA_INTERNAL const mla_geometry *mla__calib_geometry(const mla_calib *calib);
/* Accumulated XᵀX (upper triangle valid, d × d, row-major), or NULL when not kept or empty. */
MLA_INTERNAL const double *mla__calib_xtx(const mla_calib *calib);
/* The ranking score n_kv × d_h/2 in double; INVALID_ARGUMENT when unavailable. */
MLA_INTERNAL mla_status mla__calib_score(const mla_calib *calib, double *score);

/* ---- factor.c: low-rank factorizations ------------------------------------------------------ */

/*
 * Best rank-R factorization of M (m × d, row-major, double): M ≈ up · down with up m × R and
 * down R × d (float32, row-major). With chol (d × d lower Cholesky factor of XᵀX + λI,
 * column-major), the error is measured as ‖(M − up·down)·L‖_F (activation-aware).
 * kept, total: Σ of the top R σ² and Σ of all σ² (of M, or of M·L). 1 ≤ rank ≤ min(m, d).
 * Errors: NUMERICAL (the eigensolver did not converge), OUT_OF_MEMORY.
 */
MLA_INTERNAL mla_status mla__lowrank(const double *m_rowmajor, size_t m, size_t d, size_t rank,
                                     const double *chol, float *up, float *down, double *kept,
                                     double *total);

/* Lower Cholesky factor (column-major, d × d) of C + λI, λ = damping·mean(diag C) raised tenfold
 * until the factorization succeeds. c: d × d with its upper (row-major) triangle valid.
 * Errors: NUMERICAL, OUT_OF_MEMORY. */
MLA_INTERNAL mla_status mla__damped_cholesky(const double *c, size_t d, double damping,
                                             double *chol, double *lambda_used);

#endif /* MLA_CONVERT_INTERNAL_H */

/* mla_layer_convert: checks, partial-RoPE layout, factorization, report. */
#include <blis.h>
#include <math.h>
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

/* Stages reported to the progress callback. */
enum { STAGE_LOAD = 1, STAGE_SELECT, STAGE_FACTOR, STAGE_REPORT, STAGE_COUNT = STAGE_REPORT };

static mla_status check_params(const mla_geometry *g, const mla_convert_params *p,
                               const mla_calib *calib)
{
    if ((unsigned)p->rope_strategy > MLA_ROPE_EXPLICIT)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "params.rope_strategy is %d, unknown",
                        (int)p->rope_strategy);
    if ((unsigned)p->factorization > MLA_FACTOR_ACTIVATION_JOINT)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "params.factorization is %d, unknown",
                        (int)p->factorization);
    if (p->rope_dim < 0 || p->rope_dim > g->head_dim || p->rope_dim % 2 != 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "params.rope_dim is %d, must be even and in [0, head_dim = %d]",
                        (int)p->rope_dim, (int)g->head_dim);
    if (p->d_kv < 1)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "params.d_kv is %d, must be ≥ 1",
                        (int)p->d_kv);
    if (!(p->damping >= 0) || !isfinite(p->damping))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "params.damping is %g, must be ≥ 0",
                        p->damping);

    /* The latent cannot be wider than the rank of the matrix it factorizes. */
    const int64_t n_kv = g->n_kv_heads, d = g->d_model, R = (int64_t)p->d_kv * n_kv;
    const int64_t k_rows = n_kv * (g->head_dim - p->rope_dim), v_rows = n_kv * g->head_dim;
    /* Each is ≤ n_h·d_h, which fits in int32, but stacked they may not: LAPACK and BLAS take
     * 32-bit dimensions. */
    if (p->factorization != MLA_FACTOR_SPLIT && k_rows + v_rows > INT32_MAX)
        return mla_fail(MLA_ERR_UNSUPPORTED,
                        "[W_k_nope; W_v] has %lld rows (n_kv_heads %d × (2·head_dim − rope_dim)), "
                        "more than LAPACK's 32-bit dimensions allow", (long long)(k_rows + v_rows),
                        (int)n_kv);
    if (p->factorization == MLA_FACTOR_SPLIT) {
        int64_t lim_k = k_rows < d ? k_rows : d, lim_v = v_rows < d ? v_rows : d;
        int64_t lim = lim_k < lim_v ? lim_k : lim_v;
        if (R > lim)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "params.d_kv is %d: R = d_kv·n_kv_heads = %lld exceeds %lld, the "
                            "full rank of W_k_nope (%lld × %lld) or W_v (%lld × %lld) with the "
                            "split factorization", (int)p->d_kv, (long long)R, (long long)lim,
                            (long long)k_rows, (long long)d, (long long)v_rows, (long long)d);
    } else {
        int64_t rows = k_rows + v_rows, lim = rows < d ? rows : d;
        if (R > lim)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "params.d_kv is %d: R = d_kv·n_kv_heads = %lld exceeds %lld, the "
                            "full rank of [W_k_nope; W_v] (%lld × %lld)", (int)p->d_kv,
                            (long long)R, (long long)lim, (long long)rows, (long long)d);
    }

    int need_norms = p->rope_strategy == MLA_ROPE_2NORM && p->rope_dim > 0;
    int need_cov = p->factorization == MLA_FACTOR_ACTIVATION_JOINT;
    if (!calib && need_norms)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "params.rope_strategy is MLA_ROPE_2NORM, which needs calib (NULL)");
    if (!calib && need_cov)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "params.factorization is MLA_FACTOR_ACTIVATION_JOINT, which needs calib "
                        "(NULL)");
    if (calib) {
        const mla_geometry *cg = mla__calib_geometry(calib);
        if (cg->d_model != g->d_model || cg->n_heads != g->n_heads ||
            cg->n_kv_heads != g->n_kv_heads || cg->head_dim != g->head_dim)
            return mla_fail(MLA_ERR_SHAPE_MISMATCH,
                            "calib was made for d_model %d, %d/%d heads of %d, the geometry is "
                            "d_model %d, %d/%d heads of %d", (int)cg->d_model, (int)cg->n_heads,
                            (int)cg->n_kv_heads, (int)cg->head_dim, (int)g->d_model,
                            (int)g->n_heads, (int)g->n_kv_heads, (int)g->head_dim);
        if (need_cov && !mla__calib_xtx(calib))
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "params.factorization is MLA_FACTOR_ACTIVATION_JOINT, which needs "
                            "calib with covariance enabled and tokens fed");
    }
    return MLA_OK;
}

static int progress(const mla_convert_params *p, int stage)
{
    return p->progress && p->progress(p->progress_user, stage, STAGE_COUNT) != 0;
}

/* Non-RoPE dims of a head: the complement of its kept dims, ascending. */
static void nope_dims(const int32_t *dims, int32_t r, int32_t d_h, int32_t *out)
{
    int32_t k = 0, m = 0;
    for (int32_t i = 0; i < d_h; i++) {
        if (k < r && dims[k] == i)
            k++;
        else
            out[m++] = i;
    }
}

static void copy_row(float *dst, const float *src, size_t d)
{
    memcpy(dst, src, d * sizeof(float));
}

/* The partial-RoPE layout: W_q/b_q reordered, W_kr/b_kr, and the rows of W_k_nope (into knope,
 * n_kv·n × d, double) and b_k's non-RoPE rows. */
static void rope_layout(struct mla_layer *l, const mla__source *s, int32_t *nope,
                        double *knope)
{
    const mla_geometry *g = &l->geom;
    const size_t d = (size_t)g->d_model, d_h = (size_t)g->head_dim, n_h = (size_t)g->n_heads;
    const size_t grp = n_h / (size_t)g->n_kv_heads, r = (size_t)l->rope_dim, n = d_h - r;
    for (size_t j = 0; j < (size_t)g->n_kv_heads; j++)
        nope_dims(l->rope_dims + j * r, (int32_t)r, (int32_t)d_h, nope + j * n);
    for (size_t h = 0; h < n_h; h++) {
        /* Query head h uses the dims of its KV head, so q and k dims match. */
        const int32_t *kd = l->rope_dims + (h / grp) * r, *nd = nope + (h / grp) * n;
        for (size_t k = 0; k < r; k++) {
            copy_row(l->wq + (h * r + k) * d, s->wq + (h * d_h + (size_t)kd[k]) * d, d);
            if (s->bq)
                l->bq[h * r + k] = s->bq[h * d_h + (size_t)kd[k]];
        }
        for (size_t k = 0; k < n; k++) {
            copy_row(l->wq + (n_h * r + h * n + k) * d, s->wq + (h * d_h + (size_t)nd[k]) * d,
                     d);
            if (s->bq)
                l->bq[n_h * r + h * n + k] = s->bq[h * d_h + (size_t)nd[k]];
        }
    }
    for (size_t j = 0; j < (size_t)g->n_kv_heads; j++) {
        const int32_t *kd = l->rope_dims + j * r, *nd = nope + j * n;
        for (size_t k = 0; k < r; k++) {
            copy_row(l->wkr + (j * r + k) * d, s->wk + (j * d_h + (size_t)kd[k]) * d, d);
            if (s->bk)
                l->bkr[j * r + k] = s->bk[j * d_h + (size_t)kd[k]];
        }
        for (size_t k = 0; k < n; k++) {
            const float *src = s->wk + (j * d_h + (size_t)nd[k]) * d;
            double *dst = knope + (j * n + k) * d;
            for (size_t c = 0; c < d; c++)
                dst[c] = src[c];
            if (s->bk)
                l->buk[j * n + k] = s->bk[j * d_h + (size_t)nd[k]];
        }
    }
}

/* Relative errors of up·down against orig (rows × d): in weight space, and with the covariance
 * c (d × d, upper row-major) in activation space, ‖X Eᵀ‖² = tr(E C Eᵀ). */
static mla_status rel_errors(const double *orig, const float *up, const float *down,
                             size_t rows, size_t rank, size_t ld_up, size_t d, const double *c,
                             double *w_err, double *a_err)
{
    if (rows == 0) {
        *w_err = 0;
        *a_err = c ? 0 : NAN;
        return MLA_OK;
    }
    double *e = mla_alloc(rows * d * sizeof(double));
    double *ud = mla_alloc((rows * rank + (c ? 2 : 1) * rank * d) * sizeof(double));
    double *ec = c ? mla_alloc(rows * d * sizeof(double)) : NULL;
    if (!e || !ud || (c && !ec)) {
        mla_free(e);
        mla_free(ud);
        mla_free(ec);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "error report (%zu × %zu)", rows, d);
    }
    double *u = ud, *dn = ud + rows * rank, *dc = dn + rank * d; /* dc: D·C, with c only */
    for (size_t i = 0; i < rows; i++)
        for (size_t k = 0; k < rank; k++)
            u[i * rank + k] = up[i * ld_up + k];
    for (size_t i = 0; i < rank * d; i++)
        dn[i] = down[i];
    memcpy(e, orig, rows * d * sizeof(double));
    mla__blas_enter();
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (f77_int)rows, (f77_int)d,
                (f77_int)rank, -1.0, u, (f77_int)rank, dn, (f77_int)d, 1.0, e, (f77_int)d);
    mla__blas_leave();
    double num = 0, den = 0;
    for (size_t i = 0; i < rows * d; i++) {
        num += e[i] * e[i];
        den += orig[i] * orig[i];
    }
    *w_err = den > 0 ? sqrt(num / den) : 0;
    *a_err = NAN;
    if (c) {
        /* One rows × d × d product instead of two: E·C = M·C − U·(D·C), D·C being only
         * rank × d. Its rounding, ε‖M‖‖C‖ an element, moves tr(E C Eᵀ) by ε‖E‖‖M‖‖C‖: the
         * relative error stays below ε·‖M‖/‖E‖, a few ε in a_err even at full rank. */
        double an = 0, ad = 0;
        mla__blas_enter();
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (f77_int)rows, (f77_int)d, 1.0, c,
                    (f77_int)d, orig, (f77_int)d, 0.0, ec, (f77_int)d);
        mla__blas_leave();
        for (size_t i = 0; i < rows * d; i++)
            ad += orig[i] * ec[i];
        mla__blas_enter();
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (f77_int)rank, (f77_int)d, 1.0, c,
                    (f77_int)d, dn, (f77_int)d, 0.0, dc, (f77_int)d);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (f77_int)rows, (f77_int)d,
                    (f77_int)rank, -1.0, u, (f77_int)rank, dc, (f77_int)d, 1.0, ec, (f77_int)d);
        mla__blas_leave();
        for (size_t i = 0; i < rows * d; i++)
            an += e[i] * ec[i];
        *a_err = ad > 0 ? sqrt(fmax(an, 0) / ad) : 0;
    }
    mla_free(e);
    mla_free(ud);
    mla_free(ec);
    return MLA_OK;
}

/* Factorize [W_k_nope; W_v] (joint, activation-aware) or each alone (split) into the layer. */
static mla_status factorize(struct mla_layer *l, const mla_convert_params *p, const double *knope,
                            const double *v, const double *xtx)
{
    const mla_geometry *g = &l->geom;
    const size_t d = (size_t)g->d_model, n_kv = (size_t)g->n_kv_heads;
    const size_t kr = n_kv * (size_t)(g->head_dim - l->rope_dim), vr = mla__kv_rows(g);
    const size_t R = (size_t)l->d_kv * n_kv;
    mla_status st = MLA_OK;
    double *chol = NULL, *m = NULL, lambda = 0;
    float *up = NULL;
    double kept = 0, total = 0;

    if (p->factorization == MLA_FACTOR_SPLIT) {
        double kept_v = 0, total_v = 0;
        st = mla__lowrank(knope, kr, d, R, NULL, l->wuk, l->wdkv, &kept, &total);
        if (st == MLA_OK)
            st = mla__lowrank(v, vr, d, R, NULL, l->wuv, l->wdkv + R * d, &kept_v, &total_v);
        kept += kept_v;
        total += total_v;
        if (st != MLA_OK)
            return mla_fail_context(st, "split factorization: ");
        l->report.kept_energy = total > 0 ? kept / total : 1.0;
        return MLA_OK;
    }

    const size_t rows = kr + vr;
    m = mla_alloc(rows * d * sizeof(double));
    up = mla_alloc(rows * R * sizeof(float));
    if (!m || !up) {
        st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "joint matrix (%zu × %zu)", rows, d);
        goto done;
    }
    memcpy(m, knope, kr * d * sizeof(double));
    memcpy(m + kr * d, v, vr * d * sizeof(double));
    if (p->factorization == MLA_FACTOR_ACTIVATION_JOINT) {
        chol = mla_alloc(d * d * sizeof(double));
        if (!chol) {
            st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "Cholesky factor (%zu × %zu)", d, d);
            goto done;
        }
        st = mla__damped_cholesky(xtx, d, p->damping, chol, &lambda);
        if (st != MLA_OK)
            goto done;
    }
    st = mla__lowrank(m, rows, d, R, chol, up, l->wdkv, &kept, &total);
    if (st != MLA_OK)
        goto done;
    l->report.kept_energy = total > 0 ? kept / total : 1.0;
    /* W_up splits by rows into W_uk (the K_nope rows) and W_uv. */
    memcpy(l->wuk, up, kr * R * sizeof(float));
    memcpy(l->wuv, up + kr * R, vr * R * sizeof(float));
done:
    mla_free(m);
    mla_free(up);
    mla_free(chol);
    if (st != MLA_OK)
        return mla_fail_context(st, "%s factorization: ",
                                p->factorization == MLA_FACTOR_JOINT ? "joint"
                                                                     : "activation-aware joint");
    return MLA_OK;
}

static mla_status cancelled(int stage)
{
    return mla_fail(MLA_ERR_CANCELLED, "conversion cancelled by the progress callback after "
                    "stage %d of %d", stage, STAGE_COUNT);
}

/* Everything after the checks; l is freed by the caller on failure. */
static mla_status build(struct mla_layer *l, const mla__source *s, const mla_calib *calib,
                        const mla_convert_params *p)
{
    const mla_geometry *g = &l->geom;
    const size_t d = (size_t)g->d_model, n_kv = (size_t)g->n_kv_heads;
    const size_t d_h = (size_t)g->head_dim, r = (size_t)p->rope_dim, n = d_h - r;
    const size_t qr = mla__q_rows(g), kvr = mla__kv_rows(g), R = (size_t)p->d_kv * n_kv;
    const int split = p->factorization == MLA_FACTOR_SPLIT;

    l->kind = MLA_LAYER_MLA;
    l->factorization = p->factorization;
    l->rope_strategy = p->rope_strategy;
    l->rope_dim = p->rope_dim;
    l->d_kv = p->d_kv;
    l->latent_dim = (int32_t)((split ? 2 : 1) * R);

    int32_t *freqs = mla_alloc((n_kv * r / 2 + 1) * sizeof(int32_t));
    int32_t *nope = mla_alloc((n_kv * n + 1) * sizeof(int32_t));
    double *knope = mla_alloc((n_kv * n * d + 1) * sizeof(double));
    double *v = mla_alloc(kvr * d * sizeof(double));
    l->rope_dims = mla_alloc((n_kv * r + 1) * sizeof(int32_t));
    l->wq = mla_alloc(qr * d * sizeof(float));
    l->wkr = mla_alloc((n_kv * r * d + 1) * sizeof(float));
    l->wdkv = mla_alloc((split ? 2 : 1) * R * d * sizeof(float));
    l->wuk = mla_alloc((n_kv * n * R + 1) * sizeof(float));
    l->wuv = mla_alloc(kvr * R * sizeof(float));
    l->wo = mla_alloc(d * qr * sizeof(float));
    int oom = !freqs || !nope || !knope || !v || !l->rope_dims || !l->wq || !l->wkr ||
              !l->wdkv || !l->wuk || !l->wuv || !l->wo;
    if (s->bq) {
        l->bq = mla_alloc(qr * sizeof(float));
        l->bkr = mla_alloc((n_kv * r + 1) * sizeof(float));
        l->buk = mla_alloc((n_kv * n + 1) * sizeof(float));
        l->buv = mla_alloc(kvr * sizeof(float));
        oom = oom || !l->bq || !l->bkr || !l->buk || !l->buv;
    }
    mla_status st = MLA_OK;
    if (oom) {
        st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "converted layer (%zu × %zu weights)", qr, d);
        goto done;
    }

    st = mla__select_freqs(g, p, calib, freqs);
    if (st != MLA_OK)
        goto done;
    mla__freqs_to_dims(g, (int32_t)r, freqs, l->rope_dims);
    if (progress(p, STAGE_SELECT)) {
        st = cancelled(STAGE_SELECT);
        goto done;
    }

    rope_layout(l, s, nope, knope);
    for (size_t i = 0; i < kvr * d; i++)
        v[i] = s->wv[i];
    if (s->bv)
        memcpy(l->buv, s->bv, kvr * sizeof(float));
    memcpy(l->wo, s->wo, d * qr * sizeof(float));
    const double *xtx = calib ? mla__calib_xtx(calib) : NULL;
    st = factorize(l, p, knope, v, xtx);
    if (st != MLA_OK)
        goto done;
    if (progress(p, STAGE_FACTOR)) {
        st = cancelled(STAGE_FACTOR);
        goto done;
    }

    st = rel_errors(knope, l->wuk, l->wdkv, n_kv * n, R, R, d, xtx, &l->report.k_nope_rel_error,
                    &l->report.k_nope_act_rel_error);
    if (st == MLA_OK)
        st = rel_errors(v, l->wuv, l->wdkv + (split ? R * d : 0), kvr, R, R, d, xtx,
                        &l->report.v_rel_error, &l->report.v_act_rel_error);
    if (st == MLA_OK)
        st = mla__layer_finish(l);
    if (st == MLA_OK && progress(p, STAGE_REPORT))
        st = cancelled(STAGE_REPORT);
done:
    mla_free(freqs);
    mla_free(nope);
    mla_free(knope);
    mla_free(v);
    return st;
}

MLA_API mla_status mla_layer_convert(const mla_geometry *g_in, const mla_layer_weights *w,
                                     const mla_calib *calib, const mla_convert_params *params,
                                     mla_layer **out)
{
    const double t0 = mla_now();
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "out is NULL");
    mla_geometry g;
    mla_status st = mla__geometry_read(g_in, &g);
    if (st != MLA_OK)
        return st;
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    if (params && (st = mla_params_read(&p, sizeof p, params, "params")) != MLA_OK)
        return st;
    st = check_params(&g, &p, calib);
    if (st != MLA_OK)
        return st;

    mla__source src;
    st = mla__source_load(&g, w, MLA__SRC_ALL, &src);
    if (st != MLA_OK)
        return st;
    if (progress(&p, STAGE_LOAD)) {
        mla__source_free(&src);
        return cancelled(STAGE_LOAD);
    }
    struct mla_layer *l = mla__layer_alloc(&g);
    if (!l) {
        mla__source_free(&src);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "layer");
    }
    st = build(l, &src, calib, &p);
    mla__source_free(&src);
    if (st != MLA_OK) {
        mla_layer_destroy(l);
        return st;
    }
    l->report.seconds = mla_now() - t0;
    *out = l;
    return MLA_OK;
}

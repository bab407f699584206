/*
 * Calibration statistics of one layer, accumulated over streamed inputs in fixed memory:
 * per-pair mean 2-norms of q and k (the 2-norm RoPE selection) and XᵀX (activation-aware
 * factorization and activation-space error reports).
 */
#include <blis.h>
#include <math.h>
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

/* Tokens projected per BLAS call: large enough for sgemm to run near peak, small enough that
 * the scratch stays a few MB for the largest models. */
#define CHUNK 64

struct mla_calib {
    mla_geometry g;
    mla_calib_params p;
    float *wq, *wk, *bq, *bk; /* copies, float32 (qk_norms only) */
    double *q_sum;            /* n_h × d_h/2: Σ over tokens of each pair's norm */
    double *k_sum;            /* n_kv × d_h/2 */
    double *xtx;              /* d × d, upper triangle (row-major) accumulated */
    int64_t n_tokens;
    float *qbuf, *kbuf;       /* CHUNK × n_h·d_h, CHUNK × n_kv·d_h */
    double *xbuf;             /* CHUNK × d */
};

MLA_API void mla_calib_destroy(mla_calib *c)
{
    if (!c)
        return;
    mla_free(c->wq);
    mla_free(c->wk);
    mla_free(c->bq);
    mla_free(c->bk);
    mla_free(c->q_sum);
    mla_free(c->k_sum);
    mla_free(c->xtx);
    mla_free(c->qbuf);
    mla_free(c->kbuf);
    mla_free(c->xbuf);
    mla_free(c);
}

MLA_API mla_status mla_calib_create(const mla_geometry *g_in, const mla_layer_weights *w,
                                    const mla_calib_params *params, mla_calib **out)
{
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "out is NULL");
    mla_geometry g;
    mla_status st = mla__geometry_read(g_in, &g);
    if (st != MLA_OK)
        return st;
    mla_calib_params p;
    mla_calib_default_params(&p, sizeof p);
    if (params && (st = mla_params_read(&p, sizeof p, params, "calib params")) != MLA_OK)
        return st;
    if (!p.qk_norms && !p.covariance)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "calib params: qk_norms and covariance are both 0, nothing to collect");

    mla__source src;
    memset(&src, 0, sizeof src);
    if (p.qk_norms) {
        st = mla__source_load(&g, w, MLA__SRC_WQ | MLA__SRC_WK, &src);
        if (st != MLA_OK)
            return st;
    }
    mla_calib *c = mla_calloc(1, sizeof *c);
    if (!c) {
        mla__source_free(&src);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "calibration handle");
    }
    c->g = g;
    c->p = p;
    const size_t d = (size_t)g.d_model, qr = mla__q_rows(&g), kr = mla__kv_rows(&g);
    const size_t half = (size_t)g.head_dim / 2;
    int oom = 0;
    if (p.qk_norms) {
        c->wq = mla_dup_f32(src.wq, qr * d);
        c->wk = mla_dup_f32(src.wk, kr * d);
        c->q_sum = mla_calloc((size_t)g.n_heads * half, sizeof(double));
        c->k_sum = mla_calloc((size_t)g.n_kv_heads * half, sizeof(double));
        c->qbuf = mla_alloc(CHUNK * qr * sizeof(float));
        c->kbuf = mla_alloc(CHUNK * kr * sizeof(float));
        oom = !c->wq || !c->wk || !c->q_sum || !c->k_sum || !c->qbuf || !c->kbuf;
        if (src.bq) {
            c->bq = mla_dup_f32(src.bq, qr);
            c->bk = mla_dup_f32(src.bk, kr);
            oom = oom || !c->bq || !c->bk;
        }
    }
    if (p.covariance) {
        c->xtx = mla_calloc(d * d, sizeof(double));
        c->xbuf = mla_alloc(CHUNK * d * sizeof(double));
        oom = oom || !c->xtx || !c->xbuf;
    }
    mla__source_free(&src);
    if (oom) {
        mla_calib_destroy(c);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "calibration buffers (d_model %zu)", d);
    }
    *out = c;
    return MLA_OK;
}

/* Add each token's per-pair norms of y (t × heads·d_h, bias already added) to sum. */
static void add_pair_norms(const float *y, size_t t, size_t heads, size_t d_h, double *sum)
{
    const size_t half = d_h / 2;
    for (size_t s = 0; s < t; s++) {
        const float *row = y + s * heads * d_h;
        for (size_t h = 0; h < heads; h++) {
            const float *v = row + h * d_h;
            double *acc = sum + h * half;
            for (size_t i = 0; i < half; i++) {
                double a = v[i], b = v[i + half];
                acc[i] += sqrt(a * a + b * b);
            }
        }
    }
}

static void project(const float *x, size_t t, size_t d, const float *w, const float *b,
                    size_t rows, float *y)
{
    /* y = x·wᵀ (+ b): t × rows */
    mla__blas_enter();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (f77_int)t, (f77_int)rows, (f77_int)d,
                1.0f, x, (f77_int)d, w, (f77_int)d, 0.0f, y, (f77_int)rows);
    mla__blas_leave();
    if (b)
        for (size_t s = 0; s < t; s++)
            for (size_t i = 0; i < rows; i++)
                y[s * rows + i] += b[i];
}

MLA_API mla_status mla_calib_feed(mla_calib *c, const float *x, int64_t n_tokens)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "calib is NULL");
    if (n_tokens < 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "n_tokens is %lld, must be ≥ 0",
                        (long long)n_tokens);
    if (n_tokens == 0)
        return MLA_OK;
    if (!x)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "x is NULL");
    const size_t d = (size_t)c->g.d_model, n = (size_t)n_tokens, d_h = (size_t)c->g.head_dim;
    size_t total;
    if (!mla_mul_size(n, d, &total))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "n_tokens %lld × d_model %zu overflows",
                        (long long)n_tokens, d);
    /* Check everything first so a failed call leaves the statistics as they were. */
    mla_status st = mla__check_finite(x, n, d, "x");
    if (st != MLA_OK)
        return st;
    const size_t qr = mla__q_rows(&c->g), kr = mla__kv_rows(&c->g);
    for (size_t s0 = 0; s0 < n; s0 += CHUNK) {
        const size_t t = n - s0 < CHUNK ? n - s0 : CHUNK;
        const float *xc = x + s0 * d;
        if (c->p.qk_norms) {
            project(xc, t, d, c->wq, c->bq, qr, c->qbuf);
            project(xc, t, d, c->wk, c->bk, kr, c->kbuf);
            add_pair_norms(c->qbuf, t, (size_t)c->g.n_heads, d_h, c->q_sum);
            add_pair_norms(c->kbuf, t, (size_t)c->g.n_kv_heads, d_h, c->k_sum);
        }
        if (c->p.covariance) {
            for (size_t i = 0; i < t * d; i++)
                c->xbuf[i] = xc[i];
            mla__blas_enter();
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (f77_int)d, (f77_int)t, 1.0,
                        c->xbuf, (f77_int)d, 1.0, c->xtx, (f77_int)d);
            mla__blas_leave();
        }
    }
    c->n_tokens += n_tokens;
    return MLA_OK;
}

MLA_API mla_status mla_calib_token_count(const mla_calib *c, int64_t *n_tokens)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "calib is NULL");
    if (!n_tokens)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "n_tokens is NULL");
    *n_tokens = c->n_tokens;
    return MLA_OK;
}

static mla_status stats_ready(const mla_calib *c)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "calib is NULL");
    if (!c->p.qk_norms)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "calib: q/k norm statistics were disabled (calib params qk_norms = 0)");
    if (c->n_tokens == 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "calib: no tokens fed yet");
    return MLA_OK;
}

/* S_{j,i} = Σ_{h in group j} a_{h,i} · b_{j,i}, with a and b means over tokens. */
static double score_at(const mla_calib *c, size_t j, size_t i)
{
    const size_t half = (size_t)c->g.head_dim / 2;
    const size_t group = (size_t)(c->g.n_heads / c->g.n_kv_heads);
    const double inv = 1.0 / (double)c->n_tokens;
    double a = 0;
    for (size_t h = j * group; h < (j + 1) * group; h++)
        a += c->q_sum[h * half + i] * inv;
    return a * (c->k_sum[j * half + i] * inv);
}

mla_status mla__calib_score(const mla_calib *c, double *score)
{
    mla_status st = stats_ready(c);
    if (st != MLA_OK)
        return st;
    const size_t half = (size_t)c->g.head_dim / 2, n_kv = (size_t)c->g.n_kv_heads;
    for (size_t j = 0; j < n_kv; j++)
        for (size_t i = 0; i < half; i++)
            score[j * half + i] = score_at(c, j, i);
    return MLA_OK;
}

MLA_API mla_status mla_calib_qk_stats(const mla_calib *c, float *q_norm, float *k_norm,
                                      float *score)
{
    mla_status st = stats_ready(c);
    if (st != MLA_OK)
        return st;
    const size_t half = (size_t)c->g.head_dim / 2, n_kv = (size_t)c->g.n_kv_heads;
    const double inv = 1.0 / (double)c->n_tokens;
    if (score)
        for (size_t j = 0; j < n_kv; j++)
            for (size_t i = 0; i < half; i++)
                score[j * half + i] = (float)score_at(c, j, i);
    if (q_norm)
        for (size_t i = 0; i < (size_t)c->g.n_heads * half; i++)
            q_norm[i] = (float)(c->q_sum[i] * inv);
    if (k_norm)
        for (size_t i = 0; i < n_kv * half; i++)
            k_norm[i] = (float)(c->k_sum[i] * inv);
    return MLA_OK;
}

MLA_API mla_status mla_calib_covariance(const mla_calib *c, double *xtx)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "calib is NULL");
    if (!c->p.covariance)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "calib: covariance was disabled (calib params covariance = 0)");
    if (!xtx)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "xtx is NULL");
    const size_t d = (size_t)c->g.d_model;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            xtx[i * d + j] = j >= i ? c->xtx[i * d + j] : c->xtx[j * d + i];
    return MLA_OK;
}

const mla_geometry *mla__calib_geometry(const mla_calib *c)
{
    return &c->g;
}

const double *mla__calib_xtx(const mla_calib *c)
{
    return c->p.covariance && c->n_tokens > 0 ? c->xtx : NULL;
}

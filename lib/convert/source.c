/* Checks of the source geometry and weights, and their float32 views. */
#include <math.h>
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

mla_status mla__geometry_read(const mla_geometry *g, mla_geometry *out)
{
    mla_geometry c;
    mla_geometry_default_params(&c, sizeof c);
    mla_status st = mla_params_read(&c, sizeof c, g, "geometry");
    if (st != MLA_OK)
        return st;
    if (c.d_model < 1)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "geometry.d_model is %d, must be ≥ 1",
                        (int)c.d_model);
    if (c.n_heads < 1)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "geometry.n_heads is %d, must be ≥ 1",
                        (int)c.n_heads);
    if (c.n_kv_heads < 1 || c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "geometry.n_kv_heads is %d, must be ≥ 1 and divide n_heads = %d",
                        (int)c.n_kv_heads, (int)c.n_heads);
    if (c.head_dim < 2 || c.head_dim % 2 != 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "geometry.head_dim is %d, must be even and ≥ 2",
                        (int)c.head_dim);
    if ((int64_t)c.n_heads * c.head_dim > INT32_MAX)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "geometry: n_heads·head_dim = %d·%d does not fit in int32",
                        (int)c.n_heads, (int)c.head_dim);
    /* Every buffer of the conversion is at most (2·n_h·d_h + d) × d doubles: make sure that,
     * and d² doubles for XᵀX, have a size. */
    size_t rows = 2 * (size_t)c.n_heads * (size_t)c.head_dim + (size_t)c.d_model, t;
    if (!mla_mul_size(rows, (size_t)c.d_model, &t) || !mla_mul_size(t, sizeof(double), &t))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "geometry: d_model = %d and n_heads·head_dim = %d give sizes that "
                        "overflow", (int)c.d_model, (int)(c.n_heads * c.head_dim));
    if (!(c.rope_theta > 0.0) || !isfinite(c.rope_theta))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "geometry.rope_theta is %g, must be > 0",
                        c.rope_theta);
    if (c.rope_scaling != MLA_ROPE_SCALING_NONE && c.rope_scaling != MLA_ROPE_SCALING_LINEAR)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "geometry.rope_scaling is %d, unknown",
                        (int)c.rope_scaling);
    if (c.rope_scaling == MLA_ROPE_SCALING_LINEAR &&
        (!(c.rope_scaling_factor > 0.0) || !isfinite(c.rope_scaling_factor)))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "geometry.rope_scaling_factor is %g, must be > 0 with linear scaling",
                        c.rope_scaling_factor);
    *out = c;
    return MLA_OK;
}

mla_status mla__check_finite(const float *x, size_t rows, size_t cols, const char *name)
{
    size_t n = rows * cols;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            if (cols == 1 || rows == 1)
                return mla_fail(MLA_ERR_NUMERICAL, "%s[%zu] is %g", name, i, (double)x[i]);
            return mla_fail(MLA_ERR_NUMERICAL, "%s[%zu][%zu] (row, column) is %g", name,
                            i / cols, i % cols, (double)x[i]);
        }
    }
    return MLA_OK;
}

void mla__source_free(mla__source *src)
{
    for (int i = 0; i < 7; i++) {
        mla_free(src->owned[i]);
        src->owned[i] = NULL;
    }
}

/* One tensor: borrow (F32) or convert, then check values. */
static mla_status load_one(const void *data, mla_dtype dtype, size_t rows, size_t cols,
                           const char *name, float **owned, const float **view)
{
    const float *v;
    if (dtype == MLA_DTYPE_F32) {
        v = data;
    } else {
        float *buf = mla_alloc(rows * cols * sizeof(float));
        if (!buf)
            return mla_fail(MLA_ERR_OUT_OF_MEMORY, "converting %s (%zu × %zu) to float32", name,
                            rows, cols);
        mla_to_f32(buf, data, dtype, rows * cols);
        *owned = buf;
        v = buf;
    }
    mla_status st = mla__check_finite(v, rows, cols, name);
    if (st != MLA_OK)
        return st;
    *view = v;
    return MLA_OK;
}

mla_status mla__source_load(const mla_geometry *g, const mla_layer_weights *w, unsigned which,
                            mla__source *src)
{
    memset(src, 0, sizeof *src);
    mla_layer_weights c;
    mla_layer_weights_default_params(&c, sizeof c);
    mla_status st = mla_params_read(&c, sizeof c, w, "weights");
    if (st != MLA_OK)
        return st;
    if (c.dtype != MLA_DTYPE_F32 && c.dtype != MLA_DTYPE_F16 && c.dtype != MLA_DTYPE_BF16)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "weights.dtype is %s (%d): f32, f16 or bf16",
                        mla_dtype_name(c.dtype), (int)c.dtype);

    const size_t d = (size_t)g->d_model, qr = mla__q_rows(g), kr = mla__kv_rows(g);
    struct {
        const void *p;
        const char *name;
        size_t rows, cols;
        unsigned group;
        int bias;
        const float **view;
    } t[7] = {
        {c.wq, "wq", qr, d, MLA__SRC_WQ, 0, &src->wq},
        {c.wk, "wk", kr, d, MLA__SRC_WK, 0, &src->wk},
        {c.wv, "wv", kr, d, MLA__SRC_WV, 0, &src->wv},
        {c.wo, "wo", d, qr, MLA__SRC_WO, 0, &src->wo},
        {c.bq, "bq", qr, 1, MLA__SRC_WQ, 1, &src->bq},
        {c.bk, "bk", kr, 1, MLA__SRC_WK, 1, &src->bk},
        {c.bv, "bv", kr, 1, MLA__SRC_WV, 1, &src->bv},
    };
    for (int i = 0; i < 7; i++) {
        if (!t[i].bias && !t[i].p && (which & t[i].group))
            return mla_fail(MLA_ERR_INVALID_ARGUMENT, "weights.%s is NULL", t[i].name);
        if (t[i].bias && g->qkv_bias && !t[i].p)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "weights.%s is NULL but geometry.qkv_bias is set", t[i].name);
        if (t[i].bias && !g->qkv_bias && t[i].p)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "weights.%s is given but geometry.qkv_bias is 0", t[i].name);
    }
    for (int i = 0; i < 7; i++) {
        if (!(which & t[i].group) || !t[i].p)
            continue;
        st = load_one(t[i].p, c.dtype, t[i].rows, t[i].cols, t[i].name, &src->owned[i],
                      t[i].view);
        if (st != MLA_OK) {
            mla__source_free(src);
            memset(src, 0, sizeof *src);
            return st;
        }
    }
    return MLA_OK;
}

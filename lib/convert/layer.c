/* The mla_layer handle: derived fields, the tensor table, getters and destruction. */
#include <math.h>
#include <string.h>

#include <mla/cache.h>
#include <mla/convert.h>

#include "convert/internal.h"

struct mla_layer *mla__layer_alloc(const mla_geometry *g)
{
    struct mla_layer *l = mla_calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->geom = *g;
    l->geom.struct_size = sizeof l->geom;
    l->report.struct_size = sizeof l->report;
    l->report.kept_energy = NAN;
    l->report.k_nope_rel_error = NAN;
    l->report.v_rel_error = NAN;
    l->report.k_nope_act_rel_error = NAN;
    l->report.v_act_rel_error = NAN;
    l->report.seconds = NAN;
    l->rope_position_scale = 1.0;
    l->weight_dtype = MLA_DTYPE_F32;
    return l;
}

static void add_tensor(struct mla_layer *l, const char *name, mla_dtype dtype, int ndim,
                       int64_t d0, int64_t d1, const void *data)
{
    mla_tensor *t = &l->tensors[l->n_tensors++];
    t->name = name;
    t->dtype = dtype;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 1;
    t->shape[2] = 1;
    t->shape[3] = 1;
    t->data = data;
}

/* A weight matrix as stored (layer.h): its float32 or its 16-bit copy. */
static const void *wdata(const struct mla_layer *l, const float *f32, const uint16_t *h)
{
    return l->weight_dtype == MLA_DTYPE_F32 ? (const void *)f32 : (const void *)h;
}

static void fill_table(struct mla_layer *l)
{
    const mla_geometry *g = &l->geom;
    const int64_t d = g->d_model, qr = (int64_t)g->n_heads * g->head_dim;
    const int64_t kv = (int64_t)g->n_kv_heads * g->head_dim;
    const int64_t r = l->rope_dim, n = g->head_dim - l->rope_dim;
    const int64_t R = (int64_t)l->d_kv * g->n_kv_heads;
    const mla_dtype wt = l->weight_dtype, f32 = MLA_DTYPE_F32;
    const void *wq = wdata(l, l->wq, l->wq16), *wkr = wdata(l, l->wkr, l->wkr16);
    const void *wo = wdata(l, l->wo, l->wo16), *wuk = wdata(l, l->wuk, l->wuk16);
    const void *wuv = wdata(l, l->wuv, l->wuv16);
    const unsigned char *wdkv = wdata(l, l->wdkv, l->wdkv16);
    l->n_tensors = 0;
    if (l->kind == MLA_LAYER_MHA) {
        add_tensor(l, "q_proj.weight", wt, 2, qr, d, wq);
        if (l->bq)
            add_tensor(l, "q_proj.bias", f32, 1, qr, 1, l->bq);
        add_tensor(l, "k_proj.weight", wt, 2, kv, d, wkr);
        if (l->bkr)
            add_tensor(l, "k_proj.bias", f32, 1, kv, 1, l->bkr);
        add_tensor(l, "v_proj.weight", wt, 2, kv, d, wdkv);
        if (l->buv)
            add_tensor(l, "v_proj.bias", f32, 1, kv, 1, l->buv);
        add_tensor(l, "o_proj.weight", wt, 2, d, qr, wo);
        return;
    }
    add_tensor(l, "q_proj.weight", wt, 2, qr, d, wq);
    if (l->bq)
        add_tensor(l, "q_proj.bias", f32, 1, qr, 1, l->bq);
    add_tensor(l, "k_r_proj.weight", wt, 2, g->n_kv_heads * r, d, wkr);
    if (l->bkr)
        add_tensor(l, "k_r_proj.bias", f32, 1, g->n_kv_heads * r, 1, l->bkr);
    if (l->factorization == MLA_FACTOR_SPLIT) {
        add_tensor(l, "kv_proj.down_k.weight", wt, 2, R, d, wdkv);
        add_tensor(l, "kv_proj.down_v.weight", wt, 2, R, d,
                   wdkv + (size_t)(R * d) * (size_t)(mla_dtype_bits(wt) / 8));
    } else {
        add_tensor(l, "kv_proj.down_kv.weight", wt, 2, R, d, wdkv);
    }
    add_tensor(l, "kv_proj.up_k.weight", wt, 2, g->n_kv_heads * n, R, wuk);
    if (l->buk)
        add_tensor(l, "kv_proj.up_k.bias", f32, 1, g->n_kv_heads * n, 1, l->buk);
    add_tensor(l, "kv_proj.up_v.weight", wt, 2, kv, R, wuv);
    if (l->buv)
        add_tensor(l, "kv_proj.up_v.bias", f32, 1, kv, 1, l->buv);
    add_tensor(l, "o_proj.weight", wt, 2, d, qr, wo);
    add_tensor(l, "rope_dims", MLA_DTYPE_I32, 2, g->n_kv_heads, r, l->rope_dims);
}

mla_status mla__layer_finish(struct mla_layer *l)
{
    const mla_geometry *g = &l->geom;
    const size_t n_kv = (size_t)g->n_kv_heads, d_h = (size_t)g->head_dim;
    const size_t r = (size_t)l->rope_dim;

    l->rope_position_scale =
        g->rope_scaling == MLA_ROPE_SCALING_LINEAR ? 1.0 / g->rope_scaling_factor : 1.0;

    mla_free(l->rope_freqs);
    l->rope_freqs = NULL;
    if (r > 0) {
        l->rope_freqs = mla_alloc(n_kv * (r / 2) * sizeof(float));
        if (!l->rope_freqs)
            return mla_fail(MLA_ERR_OUT_OF_MEMORY, "rope frequencies of %zu heads", n_kv);
        /* The original frequency of each kept pair: θ_i = theta^(−2i/d_h), never renumbered. */
        for (size_t j = 0; j < n_kv; j++)
            for (size_t k = 0; k < r / 2; k++) {
                double i = (double)l->rope_dims[j * r + k];
                l->rope_freqs[j * (r / 2) + k] =
                    (float)pow(g->rope_theta, -2.0 * i / (double)d_h);
            }
    }

    fill_table(l);
    return MLA_OK;
}

MLA_API void mla_layer_destroy(mla_layer *l)
{
    if (!l)
        return;
    mla_free(l->rope_dims);
    mla_free(l->rope_freqs);
    mla_free(l->wq);
    mla_free(l->bq);
    mla_free(l->wkr);
    mla_free(l->bkr);
    mla_free(l->wdkv);
    mla_free(l->wuk);
    mla_free(l->buk);
    mla_free(l->wuv);
    mla_free(l->buv);
    mla_free(l->wo);
    mla_free(l->wq16);
    mla_free(l->wkr16);
    mla_free(l->wdkv16);
    mla_free(l->wuk16);
    mla_free(l->wuv16);
    mla_free(l->wo16);
    mla_free(l);
}

MLA_API mla_status mla_layer_get_info(const mla_layer *l, mla_layer_info *info,
                                      size_t struct_size)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    mla_layer_info f;
    memset(&f, 0, sizeof f);
    f.struct_size = sizeof f;
    f.kind = l->kind;
    f.factorization = l->factorization;
    f.rope_strategy = l->rope_strategy;
    f.rope_dim = l->rope_dim;
    f.d_kv = l->d_kv;
    f.latent_dim = l->latent_dim;
    f.rope_width = l->geom.n_kv_heads * l->rope_dim;
    f.n_tensors = l->n_tensors;
    f.weight_dtype = l->weight_dtype;
    return mla_params_write(info, struct_size, &f, sizeof f, "info");
}

MLA_API mla_status mla_layer_get_geometry(const mla_layer *l, mla_geometry *g,
                                          size_t struct_size)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    return mla_params_write(g, struct_size, &l->geom, sizeof l->geom, "geometry");
}

MLA_API mla_status mla_layer_rope_dims(const mla_layer *l, int32_t kv_head, int32_t *dims)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    if (kv_head < 0 || kv_head >= l->geom.n_kv_heads)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "kv_head is %d, the layer has %d KV heads",
                        (int)kv_head, (int)l->geom.n_kv_heads);
    if (!dims)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "dims is NULL");
    if (l->rope_dim > 0)
        memcpy(dims, l->rope_dims + (size_t)kv_head * (size_t)l->rope_dim,
               (size_t)l->rope_dim * sizeof *dims);
    return MLA_OK;
}

MLA_API mla_status mla_layer_tensor(const mla_layer *l, int32_t index, mla_tensor *out)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "out is NULL");
    if (index < 0 || index >= l->n_tensors)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensor index %d out of range [0, %d)",
                        (int)index, (int)l->n_tensors);
    *out = l->tensors[index];
    return MLA_OK;
}

MLA_API mla_status mla_layer_tensor_by_name(const mla_layer *l, const char *name,
                                            mla_tensor *out)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    if (!name)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "name is NULL");
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "out is NULL");
    for (int32_t i = 0; i < l->n_tensors; i++) {
        if (strcmp(l->tensors[i].name, name) == 0) {
            *out = l->tensors[i];
            return MLA_OK;
        }
    }
    return mla_fail(MLA_ERR_INVALID_ARGUMENT, "the layer has no tensor named \"%s\"", name);
}

MLA_API mla_status mla_layer_get_report(const mla_layer *l, mla_convert_report *report,
                                        size_t struct_size)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    return mla_params_write(report, struct_size, &l->report, sizeof l->report, "report");
}

MLA_API mla_status mla_layer_cache_desc(const struct mla_layer *l, mla_cache_layer_desc *desc,
                                        size_t struct_size)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    mla_cache_layer_desc c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.latent_dim = l->latent_dim;
    c.rope_heads = l->rope_dim > 0 ? l->geom.n_kv_heads : 0;
    c.rope_dim = l->rope_dim;
    c.rope_freqs = l->rope_freqs;
    c.rope_position_scale = l->rope_position_scale;
    c.mha_kv_dim = l->geom.n_kv_heads * l->geom.head_dim;
    return mla_params_write(desc, struct_size, &c, sizeof c, "desc");
}

/* One weight matrix: where it is kept in each dtype, and what it is called. */
typedef struct stored {
    const char *name;
    size_t count, cols;
    float **f32;
    uint16_t **h;
} stored;

static float stored_get(const struct mla_layer *l, const stored *w, size_t i)
{
    switch (l->weight_dtype) {
    case MLA_DTYPE_F16: return mla_f16_to_f32((*w->h)[i]);
    case MLA_DTYPE_BF16: return mla_bf16_to_f32((*w->h)[i]);
    default: return (*w->f32)[i];
    }
}

MLA_API mla_status mla_layer_set_weight_dtype(mla_layer *l, mla_dtype dtype)
{
    if (!l)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "layer is NULL");
    if (dtype != MLA_DTYPE_F32 && dtype != MLA_DTYPE_F16 && dtype != MLA_DTYPE_BF16)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "weight dtype is %s (%d): the weights are stored as f32, f16 or bf16",
                        mla_dtype_name(dtype), (int)dtype);
    if (dtype == l->weight_dtype)
        return MLA_OK;
    const mla_geometry *g = &l->geom;
    const size_t d = (size_t)g->d_model, qr = (size_t)g->n_heads * (size_t)g->head_dim;
    const int mha = l->kind == MLA_LAYER_MHA;
    const size_t R = (size_t)l->d_kv * (size_t)g->n_kv_heads;
    const size_t n = (size_t)(g->head_dim - l->rope_dim);
    stored w[6] = {
        {"q_proj.weight", qr * d, d, &l->wq, &l->wq16},
        {mha ? "k_proj.weight" : "k_r_proj.weight",
         (size_t)g->n_kv_heads * (size_t)l->rope_dim * d, d, &l->wkr, &l->wkr16},
        {mha ? "v_proj.weight"
         : l->factorization == MLA_FACTOR_SPLIT ? "kv_proj.down_k.weight and down_v.weight"
                                                : "kv_proj.down_kv.weight",
         (size_t)l->latent_dim * d, d, &l->wdkv, &l->wdkv16},
        {"o_proj.weight", d * qr, qr, &l->wo, &l->wo16},
        /* MHA: none (counted 0, kept NULL) */
        {"kv_proj.up_k.weight", mha ? 0 : (size_t)g->n_kv_heads * n * R, R, &l->wuk, &l->wuk16},
        {"kv_proj.up_v.weight", mha ? 0 : (size_t)g->n_kv_heads * (size_t)g->head_dim * R, R,
         &l->wuv, &l->wuv16},
    };
    const int n_w = mha ? 4 : 6;
    /* All converted into new buffers first: on any failure the layer is as it was. */
    void *nw[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    mla_status st = MLA_OK;
    for (int k = 0; k < n_w && st == MLA_OK; k++) {
        size_t esize = dtype == MLA_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
        nw[k] = mla_alloc((w[k].count + 1) * esize); /* + 1: k_r_proj, up_k may have no rows */
        if (!nw[k]) {
            st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "%s: %zu values as %s", w[k].name, w[k].count,
                          mla_dtype_name(dtype));
            break;
        }
        for (size_t i = 0; i < w[k].count; i++) {
            float v = stored_get(l, &w[k], i);
            if (dtype == MLA_DTYPE_F32) {
                ((float *)nw[k])[i] = v;
                continue;
            }
            uint16_t h = dtype == MLA_DTYPE_F16 ? mla_f32_to_f16(v) : mla_f32_to_bf16(v);
            ((uint16_t *)nw[k])[i] = h;
            if (isfinite(dtype == MLA_DTYPE_F16 ? mla_f16_to_f32(h) : mla_bf16_to_f32(h)))
                continue;
            const char *name = w[k].name;
            size_t row = i / w[k].cols, half = w[k].count / 2 / w[k].cols;
            if (k == 2 && !mha && l->factorization == MLA_FACTOR_SPLIT) {
                name = row < half ? "kv_proj.down_k.weight" : "kv_proj.down_v.weight";
                row = row < half ? row : row - half;
            }
            st = mla_fail(MLA_ERR_NUMERICAL,
                          "%s: the value at row %zu, column %zu is %g, beyond the range of %s; "
                          "the layer keeps its %s weights",
                          name, row, i % w[k].cols, (double)v, mla_dtype_name(dtype),
                          mla_dtype_name(l->weight_dtype));
            break;
        }
    }
    if (st != MLA_OK) {
        for (int k = 0; k < n_w; k++)
            mla_free(nw[k]);
        return st;
    }
    for (int k = 0; k < n_w; k++) {
        mla_free(*w[k].f32);
        mla_free(*w[k].h);
        *w[k].f32 = dtype == MLA_DTYPE_F32 ? nw[k] : NULL;
        *w[k].h = dtype == MLA_DTYPE_F32 ? NULL : nw[k];
    }
    l->weight_dtype = dtype;
    fill_table(l);
    return MLA_OK;
}

/* mla_layer_from_tensors: rebuild a layer from the tensors of a checkpoint. */
#include <stdio.h>
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

enum { MAX_SPECS = 16 };

/* One tensor the layer kind may have. */
typedef struct spec {
    const char *name;
    int ndim;
    int64_t d0, d1;
    int required;
    int index_tensor;   /* I32 instead of float */
    void **dst;         /* the layer field it fills */
    int64_t offset;     /* elements into *dst (split's down_v) */
    const mla_tensor *given;
} spec;

typedef struct specs {
    spec s[MAX_SPECS];
    int n;
} specs;

static void add(specs *t, const char *name, int ndim, int64_t d0, int64_t d1, int required,
                void **dst, int64_t offset)
{
    spec *e = &t->s[t->n++];
    memset(e, 0, sizeof *e);
    e->name = name;
    e->ndim = ndim;
    e->d0 = d0;
    e->d1 = ndim > 1 ? d1 : 1;
    /* A tensor with no elements (k_r_proj with rope_dim 0, up_k with rope_dim = head_dim) may be
     * left out. */
    e->required = required && e->d0 * e->d1 > 0;
    e->dst = dst;
    e->offset = offset;
}

static mla_status check_dims(const mla_geometry *g, int32_t r, const int32_t *dims)
{
    const int32_t half = g->head_dim / 2;
    for (int32_t j = 0; j < g->n_kv_heads; j++) {
        const int32_t *h = dims + (size_t)j * (size_t)r;
        for (int32_t k = 0; k < r / 2; k++) {
            if (h[k] < 0 || h[k] >= half || (k > 0 && h[k] <= h[k - 1]) ||
                h[k + r / 2] != h[k] + half)
                return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                                "tensor rope_dims, KV head %d: entry %d is not a valid kept "
                                "dimension (each head: r/2 ascending frequencies in [0, %d), then "
                                "the same + %d)", (int)j, (int)k, (int)half, (int)half);
        }
    }
    return MLA_OK;
}

/* The tensors a layer of this kind has, with their shapes and the fields they fill. */
static void layout(struct mla_layer *l, specs *s)
{
    const mla_geometry *g = &l->geom;
    const int64_t d = g->d_model, qr = (int64_t)g->n_heads * g->head_dim;
    const int64_t kv = (int64_t)g->n_kv_heads * g->head_dim, nkv = g->n_kv_heads;
    const int64_t r = l->rope_dim, n = g->head_dim - r, R = (int64_t)l->d_kv * nkv;
    const int b = g->qkv_bias != 0;
    s->n = 0;
    add(s, "q_proj.weight", 2, qr, d, 1, (void **)&l->wq, 0);
    add(s, "q_proj.bias", 1, qr, 1, b, (void **)&l->bq, 0);
    add(s, "o_proj.weight", 2, d, qr, 1, (void **)&l->wo, 0);
    if (l->kind == MLA_LAYER_MHA) {
        add(s, "k_proj.weight", 2, kv, d, 1, (void **)&l->wkr, 0);
        add(s, "k_proj.bias", 1, kv, 1, b, (void **)&l->bkr, 0);
        add(s, "v_proj.weight", 2, kv, d, 1, (void **)&l->wdkv, 0);
        add(s, "v_proj.bias", 1, kv, 1, b, (void **)&l->buv, 0);
        return;
    }
    add(s, "k_r_proj.weight", 2, nkv * r, d, 1, (void **)&l->wkr, 0);
    add(s, "k_r_proj.bias", 1, nkv * r, 1, b, (void **)&l->bkr, 0);
    if (l->factorization == MLA_FACTOR_SPLIT) {
        add(s, "kv_proj.down_k.weight", 2, R, d, 1, (void **)&l->wdkv, 0);
        add(s, "kv_proj.down_v.weight", 2, R, d, 1, (void **)&l->wdkv, R * d);
    } else {
        add(s, "kv_proj.down_kv.weight", 2, R, d, 1, (void **)&l->wdkv, 0);
    }
    add(s, "kv_proj.up_k.weight", 2, nkv * n, R, 1, (void **)&l->wuk, 0);
    add(s, "kv_proj.up_k.bias", 1, nkv * n, 1, b, (void **)&l->buk, 0);
    add(s, "kv_proj.up_v.weight", 2, kv, R, 1, (void **)&l->wuv, 0);
    add(s, "kv_proj.up_v.bias", 1, kv, 1, b, (void **)&l->buv, 0);
    add(s, "rope_dims", 2, nkv, r, r > 0 && r < g->head_dim, (void **)&l->rope_dims, 0);
    s->s[s->n - 1].index_tensor = 1;
}

static int has(const mla_tensor *t, int32_t n, const char *name)
{
    for (int32_t i = 0; i < n; i++)
        if (t[i].name && strcmp(t[i].name, name) == 0)
            return 1;
    return 0;
}

/* Check one given tensor against its spec and copy it into the layer. */
static mla_status take(spec *e)
{
    const mla_tensor *t = e->given;
    int64_t got0 = t->ndim >= 1 ? t->shape[0] : 1, got1 = t->ndim >= 2 ? t->shape[1] : 1;
    int extra = 0;
    for (int i = e->ndim; i < t->ndim && i < MLA_TENSOR_MAX_DIMS; i++)
        extra |= t->shape[i] != 1;
    if (t->ndim < 1 || t->ndim > MLA_TENSOR_MAX_DIMS || extra || got0 != e->d0 ||
        (e->ndim > 1 && got1 != e->d1) || (e->ndim == 1 && t->ndim > 1 && got1 != 1)) {
        /* The given shape whole: a wrong third dimension is as much the error as a wrong first. */
        char got[24 * MLA_TENSOR_MAX_DIMS] = "";
        size_t used = 0;
        for (int i = 0; i < t->ndim && i < MLA_TENSOR_MAX_DIMS && used < sizeof got; i++)
            used += (size_t)snprintf(got + used, sizeof got - used, "%s%lld", i ? ", " : "",
                                     (long long)t->shape[i]);
        return mla_fail(MLA_ERR_SHAPE_MISMATCH, "tensor %s: expected shape [%lld, %lld], got "
                        "ndim %d [%s]", e->name, (long long)e->d0, (long long)e->d1,
                        (int)t->ndim, got);
    }
    size_t count = (size_t)e->d0 * (size_t)e->d1;
    if (e->index_tensor) {
        if (t->dtype != MLA_DTYPE_I32)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensor %s: dtype %s, expected i32",
                            e->name, mla_dtype_name(t->dtype));
    } else if (t->dtype != MLA_DTYPE_F32 && t->dtype != MLA_DTYPE_F16 &&
               t->dtype != MLA_DTYPE_BF16) {
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensor %s: dtype %s, expected f32, f16 or bf16",
                        e->name, mla_dtype_name(t->dtype));
    }
    if (!t->data && count > 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensor %s: data is NULL", e->name);
    if (count == 0)
        return MLA_OK;
    if (e->index_tensor) {
        memcpy((int32_t *)*e->dst + e->offset, t->data, count * sizeof(int32_t));
        return MLA_OK;
    }
    float *dst = (float *)*e->dst + e->offset;
    mla_to_f32(dst, t->data, t->dtype, count);
    return mla__check_finite(dst, (size_t)e->d0, (size_t)e->d1, e->name);
}

/* Allocate the float and index buffers the layout needs (biases only when given). */
static mla_status allocate(specs *t)
{
    spec *s = t->s;
    for (int i = 0; i < t->n; i++) {
        if (*s[i].dst || (!s[i].given && !s[i].required && s[i].ndim == 1))
            continue;
        /* split's down_k and down_v share one 2R × d buffer */
        int64_t total = s[i].d0 * s[i].d1;
        if (i + 1 < t->n && s[i + 1].dst == s[i].dst)
            total += s[i + 1].d0 * s[i + 1].d1;
        size_t elem = s[i].index_tensor ? sizeof(int32_t) : sizeof(float);
        *s[i].dst = mla_calloc((size_t)total, elem);
        if (!*s[i].dst)
            return mla_fail(MLA_ERR_OUT_OF_MEMORY, "tensor %s (%lld elements)", s[i].name,
                            (long long)total);
    }
    return MLA_OK;
}

MLA_API mla_status mla_layer_from_tensors(const mla_geometry *g_in, int32_t rope_dim,
                                          int32_t d_kv, const mla_tensor *tensors,
                                          int32_t n_tensors, mla_layer **out)
{
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "out is NULL");
    mla_geometry g;
    mla_status st = mla__geometry_read(g_in, &g);
    if (st != MLA_OK)
        return st;
    if (n_tensors < 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "n_tensors is %d, must be ≥ 0", (int)n_tensors);
    if (n_tensors > 0 && !tensors)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensors is NULL with n_tensors %d",
                        (int)n_tensors);
    for (int32_t i = 0; i < n_tensors; i++)
        if (!tensors[i].name)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensors[%d].name is NULL", (int)i);

    int mha = has(tensors, n_tensors, "k_proj.weight") || has(tensors, n_tensors, "v_proj.weight");
    int joint = has(tensors, n_tensors, "kv_proj.down_kv.weight");
    int split = has(tensors, n_tensors, "kv_proj.down_k.weight") ||
                has(tensors, n_tensors, "kv_proj.down_v.weight");
    if (mha + joint + split != 1)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "tensors: need exactly one of k_proj/v_proj.weight (MHA), "
                        "kv_proj.down_kv.weight (joint) or kv_proj.down_k/down_v.weight (split)");
    if (!mha) {
        if (rope_dim < 0 || rope_dim > g.head_dim || rope_dim % 2 != 0)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "rope_dim is %d, must be even and in [0, head_dim = %d]",
                            (int)rope_dim, (int)g.head_dim);
        if (d_kv < 1 || (int64_t)d_kv * g.n_kv_heads > INT32_MAX / 2)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "d_kv is %d, must be ≥ 1 with 2·d_kv·n_kv_heads ≤ INT32_MAX "
                            "(n_kv_heads = %d)",
                            (int)d_kv, (int)g.n_kv_heads);
    }

    struct mla_layer *l = mla__layer_alloc(&g);
    if (!l)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "layer");
    l->kind = mha ? MLA_LAYER_MHA : MLA_LAYER_MLA;
    l->factorization = split ? MLA_FACTOR_SPLIT : MLA_FACTOR_JOINT;
    l->rope_strategy = mha ? MLA_ROPE_HIGH : MLA_ROPE_EXPLICIT;
    l->rope_dim = mha ? g.head_dim : rope_dim;
    l->d_kv = mha ? g.head_dim : d_kv;
    l->latent_dim = mha ? g.n_kv_heads * g.head_dim : (split ? 2 : 1) * d_kv * g.n_kv_heads;

    specs sp;
    spec *s = sp.s;
    layout(l, &sp);
    const int n_specs = sp.n;
    for (int32_t i = 0; i < n_tensors && st == MLA_OK; i++) {
        int found = 0;
        for (int k = 0; k < n_specs; k++) {
            if (strcmp(s[k].name, tensors[i].name) != 0)
                continue;
            if (s[k].given)
                st = mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensor %s is given twice", s[k].name);
            s[k].given = &tensors[i];
            found = 1;
        }
        if (!found && st == MLA_OK)
            st = mla_fail(MLA_ERR_INVALID_ARGUMENT, "unknown tensor \"%s\" for a %s layer",
                          tensors[i].name, mha ? "MHA" : split ? "split MLA" : "joint MLA");
    }
    for (int k = 0; k < n_specs && st == MLA_OK; k++)
        if (s[k].required && !s[k].given)
            st = mla_fail(MLA_ERR_INVALID_ARGUMENT, "missing tensor %s", s[k].name);
    /* Biases come all together, as geometry.qkv_bias says. */
    for (int k = 0; k < n_specs && st == MLA_OK; k++)
        if (s[k].ndim == 1 && s[k].given && !g.qkv_bias)
            st = mla_fail(MLA_ERR_INVALID_ARGUMENT, "tensor %s is given but geometry.qkv_bias "
                          "is 0", s[k].name);
    if (st == MLA_OK)
        st = allocate(&sp);
    for (int k = 0; k < n_specs && st == MLA_OK; k++)
        if (s[k].given)
            st = take(&s[k]);
    if (st == MLA_OK && !mha) {
        int given = 0;
        for (int k = 0; k < n_specs; k++)
            given |= s[k].index_tensor && s[k].given;
        if (given) {
            st = check_dims(&g, rope_dim, l->rope_dims);
        } else {
            /* Left out: only when unambiguous (no RoPE, or all of it). */
            for (int32_t j = 0; j < g.n_kv_heads; j++)
                for (int32_t i = 0; i < rope_dim; i++)
                    l->rope_dims[(size_t)j * (size_t)rope_dim + (size_t)i] = i;
        }
    }
    if (st == MLA_OK && mha) {
        l->rope_dims = mla_alloc(mla__kv_rows(&g) * sizeof(int32_t));
        if (!l->rope_dims)
            st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "rope_dims");
        else
            for (int32_t j = 0; j < g.n_kv_heads; j++)
                for (int32_t i = 0; i < g.head_dim; i++)
                    l->rope_dims[(size_t)j * (size_t)g.head_dim + (size_t)i] = i;
    }
    if (st == MLA_OK)
        st = mla__layer_finish(l);
    if (st != MLA_OK) {
        mla_layer_destroy(l);
        return st;
    }
    *out = l;
    return MLA_OK;
}

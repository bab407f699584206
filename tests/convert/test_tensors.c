/*
 * The tensor table: mla_layer_from_tensors rebuilds an identical layer from what
 * mla_layer_tensor exports (joint, split, MHA, with and without biases, from f16 copies too);
 * bad checkpoints are refused by name. Also the internal absorbed form W_uk^{(j)ᵀ}, and f16/bf16
 * source weights converting like their float32 values.
 */
#include <math.h>

#include "convert/layer.h"
#include "core/core.h"
#include "util.h"

/* Every tensor of a equals b's tensor of the same name, bit for bit, and the counts agree. */
static int same_layer(const mla_layer *a, const mla_layer *b)
{
    mla_layer_info ia, ib;
    mla_layer_get_info(a, &ia, sizeof ia);
    mla_layer_get_info(b, &ib, sizeof ib);
    if (ia.n_tensors != ib.n_tensors || ia.kind != ib.kind || ia.latent_dim != ib.latent_dim ||
        ia.rope_dim != ib.rope_dim || ia.factorization != ib.factorization)
        return 0;
    for (int i = 0; i < ia.n_tensors; i++) {
        mla_tensor ta, tb;
        mla_layer_tensor(a, i, &ta);
        if (mla_layer_tensor_by_name(b, ta.name, &tb) != MLA_OK || ta.dtype != tb.dtype ||
            ta.ndim != tb.ndim || memcmp(ta.shape, tb.shape, sizeof ta.shape) != 0)
            return 0;
        size_t n = (size_t)(ta.shape[0] * ta.shape[1]) * 4;
        if (n && memcmp(ta.data, tb.data, n) != 0)
            return 0;
    }
    const struct mla_layer *la = a, *lb = b;
    size_t nf = (size_t)la->geom.n_kv_heads * (size_t)(la->rope_dim / 2);
    return nf == 0 || memcmp(la->rope_freqs, lb->rope_freqs, nf * sizeof(float)) == 0;
}

static mla_status rebuild(const mla_layer *l, const mla_geometry *g, mla_layer **out)
{
    mla_layer_info info;
    mla_layer_get_info(l, &info, sizeof info);
    mla_tensor t[16];
    for (int i = 0; i < info.n_tensors; i++)
        mla_layer_tensor(l, i, &t[i]);
    return mla_layer_from_tensors(g, info.rope_dim, info.d_kv, t, info.n_tensors, out);
}

static void round_trip(const char *what, int bias, mla_factorization f, int r, int mha)
{
    src_layer s;
    src_init(&s, 64, 6, 2, 16, bias, 555 + (unsigned)r);
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_dim = r;
    p.d_kv = 3;
    p.factorization = f;
    p.rope_strategy = MLA_ROPE_UNIFORM;
    p.uniform_start = r == 16 ? 0 : 1;
    mla_layer *l = NULL, *l2 = NULL;
    mla_status st = mha ? mla_layer_from_mha(&s.g, &s.w, &l)
                        : mla_layer_convert(&s.g, &s.w, NULL, &p, &l);
    CHECK(st == MLA_OK, "%s: make layer: %s", what, mla_last_error());
    if (st == MLA_OK) {
        st = rebuild(l, &s.g, &l2);
        CHECK(st == MLA_OK && same_layer(l, l2), "%s: exported tensors rebuild the same layer (%s)",
              what, mla_last_error());
    }
    mla_layer_destroy(l2);
    mla_layer_destroy(l);
    src_free(&s);
}

/* mla_layer_from_tensors(g, r, d_kv, t, n) refused: status want, a message holding part (and
 * part2 unless NULL), and no layer. */
static void refused(const mla_geometry *g, int r, int d_kv, const mla_tensor *t, int n,
                    mla_status want, const char *part, const char *part2, const char *what)
{
    mla_layer *out = NULL;
    mla_status st = mla_layer_from_tensors(g, r, d_kv, t, n, &out);
    CHECK(st == want && strstr(mla_last_error(), part) &&
              (!part2 || strstr(mla_last_error(), part2)) && !out,
          "%s: %s", what, mla_last_error());
    mla_layer_destroy(out);
}

static void bad_checkpoints(void)
{
    src_layer s;
    src_init(&s, 64, 6, 2, 16, 0, 9);
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_dim = 4;
    p.d_kv = 3;
    mla_layer *l = NULL;
    mla_layer_convert(&s.g, &s.w, NULL, &p, &l);
    mla_tensor t[16];
    mla_layer_info info;
    mla_layer_get_info(l, &info, sizeof info);
    int n = info.n_tensors;
    for (int i = 0; i < n; i++)
        mla_layer_tensor(l, i, &t[i]);
    int ir = -1, iu = -1;
    for (int i = 0; i < n; i++) {
        if (strcmp(t[i].name, "rope_dims") == 0)
            ir = i;
        if (strcmp(t[i].name, "kv_proj.up_k.weight") == 0)
            iu = i;
    }

    mla_tensor bad[16];
    memcpy(bad, t, sizeof bad);
    bad[iu].shape[1] = 5;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_SHAPE_MISMATCH, "kv_proj.up_k.weight", NULL,
            "wrong shape");
    refused(&s.g, 4, 3, t, n - 1, MLA_ERR_INVALID_ARGUMENT, "missing tensor rope_dims", NULL,
            "missing rope_dims");
    memcpy(bad, t, sizeof bad);
    bad[0].name = "q_proj.weights";
    refused(&s.g, 4, 3, bad, n, MLA_ERR_INVALID_ARGUMENT, "q_proj.weights", NULL, "unknown name");
    int32_t dims[2 * 4] = {0, 1, 8, 9, 0, 0, 8, 8};
    memcpy(bad, t, sizeof bad);
    bad[ir].data = dims;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_INVALID_ARGUMENT, "rope_dims, KV head 1", NULL,
            "invalid rope dims");
    refused(&s.g, 4, 4, t, n, MLA_ERR_SHAPE_MISMATCH, "", NULL,
            "d_kv disagreeing with the tensors");
    float *nan_copy = malloc(sizeof(float) * 64 * 96);
    memcpy(nan_copy, t[0].data, sizeof(float) * 64 * 96);
    nan_copy[100] = NAN;
    memcpy(bad, t, sizeof bad);
    bad[0].data = nan_copy;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_NUMERICAL, "q_proj.weight[1][36]", NULL, "NaN");
    free(nan_copy);

    /* Each remaining check of mla_layer_from_tensors: the status, a message naming what was
     * wrong, and no layer. */
    memcpy(bad, t, sizeof bad);
    bad[iu].dtype = MLA_DTYPE_I32;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_INVALID_ARGUMENT, "kv_proj.up_k.weight: dtype i32", NULL,
            "a weight of integers");
    memcpy(bad, t, sizeof bad);
    bad[ir].dtype = MLA_DTYPE_F32;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_INVALID_ARGUMENT, "rope_dims: dtype f32, expected i32",
            NULL, "rope_dims of floats");
    memcpy(bad, t, sizeof bad);
    bad[iu].data = NULL;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_INVALID_ARGUMENT, "kv_proj.up_k.weight: data is NULL",
            NULL, "no data");
    memcpy(bad, t, sizeof bad);
    bad[iu].ndim = 3;
    bad[iu].shape[2] = 2;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_SHAPE_MISMATCH, "kv_proj.up_k.weight",
            "ndim 3 [24, 6, 2]", "a third dimension that is not 1");
    memcpy(bad, t, sizeof bad);
    bad[2].name = NULL;
    refused(&s.g, 4, 3, bad, n, MLA_ERR_INVALID_ARGUMENT, "tensors[2].name is NULL", NULL,
            "a nameless tensor");
    refused(&s.g, 4, 3, t, -1, MLA_ERR_INVALID_ARGUMENT, "n_tensors is -1", NULL,
            "a negative count");
    refused(&s.g, 4, 3, NULL, n, MLA_ERR_INVALID_ARGUMENT, "tensors is NULL with n_tensors 7",
            NULL, "no array");
    memcpy(bad, t, sizeof bad);
    bad[n] = t[iu];
    refused(&s.g, 4, 3, bad, n + 1, MLA_ERR_INVALID_ARGUMENT,
            "tensor kv_proj.up_k.weight is given twice", NULL, "a tensor given twice");
    float zeros[2 * 12] = {0};
    memcpy(bad, t, sizeof bad);
    bad[n] = (mla_tensor){.name = "kv_proj.up_k.bias", .dtype = MLA_DTYPE_F32, .ndim = 1,
                          .shape = {2 * 12}, .data = zeros};
    refused(&s.g, 4, 3, bad, n + 1, MLA_ERR_INVALID_ARGUMENT,
            "kv_proj.up_k.bias is given but geometry.qkv_bias is 0", NULL,
            "a bias the geometry does not have");
    memcpy(bad, t, sizeof bad);
    bad[n] = (mla_tensor){.name = "k_proj.weight", .dtype = MLA_DTYPE_F32, .ndim = 2,
                          .shape = {32, 64}, .data = zeros};
    refused(&s.g, 4, 3, bad, n + 1, MLA_ERR_INVALID_ARGUMENT, "need exactly one of", NULL,
            "MHA and MLA tensors together");
    refused(&s.g, 3, 3, t, n, MLA_ERR_INVALID_ARGUMENT, "rope_dim is 3", NULL, "an odd rope_dim");
    refused(&s.g, 4, 0, t, n, MLA_ERR_INVALID_ARGUMENT, "d_kv is 0", NULL, "d_kv 0");
    mla_layer_destroy(l);
    src_free(&s);
}

/* f16 and bf16 sources convert exactly like float32 sources holding the same values. */
static void half_inputs(void)
{
    src_layer s;
    src_init(&s, 64, 6, 2, 16, 1, 4711);
    float *all[7] = {s.wq, s.wk, s.wv, s.wo, s.bq, s.bk, s.bv};
    size_t len[7] = {96 * 64, 32 * 64, 32 * 64, 64 * 96, 96, 32, 32};
    for (int dt = 0; dt < 2; dt++) {
        uint16_t *h[7];
        for (int i = 0; i < 7; i++) {
            h[i] = malloc(2 * len[i]);
            for (size_t k = 0; k < len[i]; k++) {
                h[i][k] = dt ? mla_f32_to_bf16(all[i][k]) : mla_f32_to_f16(all[i][k]);
                all[i][k] = dt ? mla_bf16_to_f32(h[i][k]) : mla_f16_to_f32(h[i][k]);
            }
        }
        mla_layer_weights w = s.w;
        w.dtype = dt ? MLA_DTYPE_BF16 : MLA_DTYPE_F16;
        w.wq = h[0], w.wk = h[1], w.wv = h[2], w.wo = h[3], w.bq = h[4], w.bk = h[5], w.bv = h[6];
        mla_convert_params p;
        mla_convert_default_params(&p, sizeof p);
        p.rope_dim = 4;
        p.d_kv = 3;
        mla_layer *a = NULL, *b = NULL;
        CHECK(mla_layer_convert(&s.g, &w, NULL, &p, &a) == MLA_OK &&
                  mla_layer_convert(&s.g, &s.w, NULL, &p, &b) == MLA_OK && same_layer(a, b),
              "%s weights give the layer of their float32 values", dt ? "bf16" : "f16");
        mla_layer_destroy(a);
        mla_layer_destroy(b);
        for (int i = 0; i < 7; i++)
            free(h[i]);
    }
    src_free(&s);
}

int main(void)
{
    round_trip("joint, biases", 1, MLA_FACTOR_JOINT, 4, 0);
    round_trip("joint, no biases, r = 0", 0, MLA_FACTOR_JOINT, 0, 0);
    round_trip("joint, r = d_h (no up_k rows)", 1, MLA_FACTOR_JOINT, 16, 0);
    round_trip("split, biases", 1, MLA_FACTOR_SPLIT, 8, 0);
    round_trip("MHA, biases", 1, MLA_FACTOR_JOINT, 16, 1);
    round_trip("MHA, no biases", 0, MLA_FACTOR_JOINT, 16, 1);
    bad_checkpoints();
    half_inputs();
    return tap_done();
}

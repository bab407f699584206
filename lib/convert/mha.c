/* The MHA/GQA baseline as an mla_layer: keys are the "RoPE part" (every dimension kept) and the
 * values are the "latent", so caches and attention treat both kinds alike. */
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

MLA_API mla_status mla_layer_from_mha(const mla_geometry *g_in, const mla_layer_weights *w,
                                      mla_layer **out)
{
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "out is NULL");
    mla_geometry g;
    mla_status st = mla__geometry_read(g_in, &g);
    if (st != MLA_OK)
        return st;
    mla__source src;
    st = mla__source_load(&g, w, MLA__SRC_ALL, &src);
    if (st != MLA_OK)
        return st;

    const size_t d = (size_t)g.d_model, qr = mla__q_rows(&g), kr = mla__kv_rows(&g);
    const size_t d_h = (size_t)g.head_dim, n_kv = (size_t)g.n_kv_heads;
    struct mla_layer *l = mla__layer_alloc(&g);
    if (!l) {
        mla__source_free(&src);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "MHA layer");
    }
    l->kind = MLA_LAYER_MHA;
    l->factorization = MLA_FACTOR_JOINT;
    l->rope_strategy = MLA_ROPE_HIGH;
    l->rope_dim = g.head_dim;
    l->d_kv = g.head_dim;
    l->latent_dim = g.n_kv_heads * g.head_dim;
    l->rope_dims = mla_alloc(n_kv * d_h * sizeof(int32_t));
    l->wq = mla_dup_f32(src.wq, qr * d);
    l->wkr = mla_dup_f32(src.wk, kr * d);
    l->wdkv = mla_dup_f32(src.wv, kr * d);
    l->wo = mla_dup_f32(src.wo, d * qr);
    int oom = !l->rope_dims || !l->wq || !l->wkr || !l->wdkv || !l->wo;
    if (src.bq) {
        l->bq = mla_dup_f32(src.bq, qr);
        l->bkr = mla_dup_f32(src.bk, kr);
        l->buv = mla_dup_f32(src.bv, kr);
        oom = oom || !l->bq || !l->bkr || !l->buv;
    }
    mla__source_free(&src);
    if (oom) {
        mla_layer_destroy(l);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "MHA layer (%zu × %zu weights)", qr, d);
    }
    for (size_t j = 0; j < n_kv; j++)
        for (size_t i = 0; i < d_h; i++)
            l->rope_dims[j * d_h + i] = (int32_t)i;
    st = mla__layer_finish(l);
    if (st != MLA_OK) {
        mla_layer_destroy(l);
        return st;
    }
    *out = l;
    return MLA_OK;
}

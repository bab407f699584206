/*
 * The MLA layer handle's representation, shared by lib/convert (which builds it) and lib/attn
 * (which runs it). Everything is float32 in PyTorch nn.Linear layout (out × in, row-major) and
 * owned by the layer (one mla_alloc each, freed by mla_layer_destroy), except the weight
 * matrices, which mla_layer_set_weight_dtype may store in 16 bits instead.
 *
 * Dimensions: d = geom.d_model, n_h, n_kv, d_h = geom.head_dim, g = n_h / n_kv,
 * r = rope_dim (kept RoPE dims per head), n = d_h − r (non-RoPE dims per head),
 * R = d_kv·n_kv (one latent), latent_dim = R (joint) or 2R (split: [c_k; c_v]).
 */
#ifndef MLA_CONVERT_LAYER_H
#define MLA_CONVERT_LAYER_H

#include <mla/mla.h>

#include "core/core.h"

struct mla_layer {
    mla_layer_kind kind;
    mla_geometry geom;              /* full copy, struct_size = sizeof(mla_geometry) */
    mla_factorization factorization;
    mla_rope_strategy rope_strategy;
    int32_t rope_dim;               /* r; MHA: d_h */
    int32_t d_kv;                   /* MHA: d_h */
    int32_t latent_dim;             /* R or 2R; MHA: n_kv·d_h (the values) */

    /* Kept RoPE dimensions, n_kv × r, ascending per head: the first r/2 are frequencies i < d_h/2,
     * the last r/2 their partners i + d_h/2. MHA: 0 .. d_h−1 for every head. */
    int32_t *rope_dims;
    /* n_kv × r/2 angular frequencies θ_i = theta^(−2i/d_h) of those pairs (pair j of a head is
     * (dims[j], dims[j + r/2])), for rotating q, k and for mla_cache_seq_shift. */
    float *rope_freqs;
    double rope_position_scale;     /* 1, or 1/factor with linear RoPE scaling */

    /* Query: n_h·d_h × d. Rows reordered as the reference does: first every head's r kept rows
     * (head by head, ascending original index), then every head's n non-RoPE rows (head by head).
     * So q_rope of head h is rows [h·r, (h+1)·r) and q_nope of head h is rows
     * [n_h·r + h·n, n_h·r + (h+1)·n). MHA: the original W_q (r = d_h, so the same order). */
    float *wq;
    float *bq;                      /* n_h·d_h, reordered like wq's rows, or NULL */

    float *wkr;                     /* n_kv·r × d: kept rows of W_k, head by head. MHA: W_k */
    float *bkr;                     /* n_kv·r or NULL */

    /* Down projection: latent = wdkv · x. Joint: R × d. Split: 2R × d = [W_dk; W_dv].
     * MHA: W_v (n_kv·d_h × d), so the "latent" is the values themselves (without b_v, which is
     * in buv as for MLA: the latent never carries a bias). MHA keeps b_k in bkr, b_q in bq. */
    float *wdkv;

    /* Up projections. Joint: wuk is n_kv·n × R and wuv is n_kv·d_h × R, both acting on the whole
     * latent. Split: wuk acts on c_k = latent[0, R), wuv on c_v = latent[R, 2R); same shapes.
     * Rows of KV head j: wuk rows [j·n, (j+1)·n), wuv rows [j·d_h, (j+1)·d_h).
     * MHA: both NULL (keys are the RoPE part, values the latent). */
    float *wuk;
    float *buk;                     /* n_kv·n, or NULL: the non-RoPE rows of b_k */
    float *wuv;
    float *buv;                     /* n_kv·d_h, or NULL: b_v */

    float *wo;                      /* d × n_h·d_h */

    /* The weight matrices as stored: F32 in the fields above, or, after
     * mla_layer_set_weight_dtype, F16/BF16 in these (the float32 fields then NULL), same shapes.
     * A decode reads them once a token: 16 bits halve that. Biases stay float32. MHA: wuk16 and
     * wuv16 NULL, as wuk and wuv. */
    mla_dtype weight_dtype;
    uint16_t *wq16, *wkr16, *wdkv16, *wuk16, *wuv16, *wo16;

    mla_convert_report report;      /* NaN fields where not computed */

    /* Tensor table for mla_layer_tensor: filled by mla__layer_finish. */
    int32_t n_tensors;
    mla_tensor tensors[16];
};

/* Allocate a zeroed layer with geometry g; NULL on out of memory (no error recorded). */
MLA_INTERNAL struct mla_layer *mla__layer_alloc(const mla_geometry *g);

/* Derive rope_freqs from rope_dims and the tensor table once the fields above are set (the
 * absorbed path reads W_uk's rows as they are: forward.c, prepare_queries). Called by every constructor (mla_layer_convert, mla_layer_from_tensors,
 * mla_layer_from_mha). */
MLA_INTERNAL mla_status mla__layer_finish(struct mla_layer *layer);

#endif /* MLA_CONVERT_LAYER_H */

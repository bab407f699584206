/*
 * libmla conversion: one attention layer of a RoPE transformer (MHA or GQA) into an MLA layer.
 *
 * Steps (../shared/mha2mla.md, doc/convert.md): optionally feed calibration inputs to an mla_calib;
 * choose the RoPE dimensions kept per KV head (partial RoPE); factorize the RoPE-free key part and
 * the value projection into a shared low-rank latent (joint SVD). The result is an mla_layer.
 *
 * Layouts: weights are PyTorch nn.Linear, out × in, row-major. Head h of W_q owns rows
 * [h·head_dim, (h+1)·head_dim); RoPE uses Hugging Face's rotate_half pairing (i, i + head_dim/2).
 */
#ifndef MLA_CONVERT_H
#define MLA_CONVERT_H

#include <mla/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- geometry ------------------------------------------------------------------------------- */

typedef enum mla_rope_scaling {
    MLA_ROPE_SCALING_NONE = 0,
    MLA_ROPE_SCALING_LINEAR = 1, /* positions divided by rope_scaling_factor */
} mla_rope_scaling;

/* Shape of one source attention layer. */
typedef struct mla_geometry {
    size_t struct_size;      /* sizeof(mla_geometry) as the caller compiled it */
    int32_t d_model;         /* hidden width d */
    int32_t n_heads;         /* query heads */
    int32_t n_kv_heads;      /* key/value heads; < n_heads is GQA, must divide n_heads */
    int32_t head_dim;        /* even */
    double rope_theta;       /* RoPE base, for example 10000 */
    mla_rope_scaling rope_scaling;
    double rope_scaling_factor; /* > 0; used by MLA_ROPE_SCALING_LINEAR */
    int32_t qkv_bias;        /* nonzero: q, k and v projections carry biases (Qwen2) */
} mla_geometry;

/* Fill *g with defaults (theta 10000, no scaling, no bias, sizes 0: the caller must set them).
 * struct_size: sizeof(*g) as the caller compiled it. Errors: INVALID_ARGUMENT. */
MLA_API mla_status mla_geometry_default_params(mla_geometry *g, size_t struct_size);

/* Borrowed view of one source layer's projections, valid for the duration of each call it is
 * passed to. All tensors share one dtype (F32, F16 or BF16). */
typedef struct mla_layer_weights {
    size_t struct_size;
    mla_dtype dtype;
    const void *wq;  /* n_heads·head_dim × d_model */
    const void *wk;  /* n_kv_heads·head_dim × d_model */
    const void *wv;  /* n_kv_heads·head_dim × d_model */
    const void *wo;  /* d_model × n_heads·head_dim */
    const void *bq;  /* n_heads·head_dim, or NULL; required when geometry.qkv_bias */
    const void *bk;  /* n_kv_heads·head_dim, or NULL; required when geometry.qkv_bias */
    const void *bv;  /* n_kv_heads·head_dim, or NULL; required when geometry.qkv_bias */
} mla_layer_weights;

MLA_API mla_status mla_layer_weights_default_params(mla_layer_weights *w, size_t struct_size);

/* ---- calibration ---------------------------------------------------------------------------- */

typedef struct mla_calib mla_calib;

typedef struct mla_calib_params {
    size_t struct_size;
    int32_t qk_norms;   /* nonzero (default): accumulate per-pair q/k norms for MLA_ROPE_2NORM */
    int32_t covariance; /* nonzero (default): accumulate XᵀX (d_model² doubles) for
                           MLA_FACTOR_ACTIVATION_JOINT and activation-space error reports */
} mla_calib_params;

MLA_API mla_status mla_calib_default_params(mla_calib_params *p, size_t struct_size);

/*
 * Create a calibration accumulator for one layer. The query and key projections (and biases) of
 * *w are copied as float32; nothing else is kept. params may be NULL for defaults; w is read only
 * for qk_norms and may be NULL when they are disabled.
 * Errors: INVALID_ARGUMENT, SHAPE_MISMATCH, NUMERICAL (NaN/Inf weights), OUT_OF_MEMORY.
 */
MLA_API mla_status mla_calib_create(const mla_geometry *g, const mla_layer_weights *w,
                                    const mla_calib_params *params, mla_calib **out);
MLA_API void mla_calib_destroy(mla_calib *calib);

/*
 * Feed calibration inputs: x is n_tokens × d_model, row-major float32, the layer's input after its
 * input norm. Any number of calls; memory does not grow with tokens. Errors: INVALID_ARGUMENT,
 * NUMERICAL (NaN/Inf in x, with its row and column). Not thread-safe on one handle.
 */
MLA_API mla_status mla_calib_feed(mla_calib *calib, const float *x, int64_t n_tokens);

/* Tokens fed so far. */
MLA_API mla_status mla_calib_token_count(const mla_calib *calib, int64_t *n_tokens);

/*
 * The 2-norm statistics: q_norm (n_heads × head_dim/2) and k_norm (n_kv_heads × head_dim/2), the
 * mean over tokens of each frequency pair's 2-norm, and score (n_kv_heads × head_dim/2), the
 * reference's ranking score Σ_{h in group j} q_norm[h][i] · k_norm[j][i]. Any pointer may be NULL.
 * Errors: INVALID_ARGUMENT (no tokens fed, or qk_norms disabled).
 */
MLA_API mla_status mla_calib_qk_stats(const mla_calib *calib, float *q_norm, float *k_norm,
                                      float *score);

/* XᵀX accumulated so far, d_model × d_model doubles (not divided by the token count).
 * Errors: INVALID_ARGUMENT (covariance disabled). */
MLA_API mla_status mla_calib_covariance(const mla_calib *calib, double *xtx);

/* ---- conversion ----------------------------------------------------------------------------- */

typedef enum mla_rope_strategy {
    MLA_ROPE_HIGH = 0,     /* the rope_dim/2 fastest-rotating frequency pairs */
    MLA_ROPE_LOW = 1,      /* the rope_dim/2 slowest pairs */
    MLA_ROPE_UNIFORM = 2,  /* every (head_dim/rope_dim)-th pair from uniform_start */
    MLA_ROPE_2NORM = 3,    /* highest q·k pair-norm score from calibration (the paper's best) */
    MLA_ROPE_EXPLICIT = 4, /* explicit_freqs */
} mla_rope_strategy;

typedef enum mla_factorization {
    MLA_FACTOR_JOINT = 0,            /* one SVD of [W_k_nope; W_v]: one latent (the paper) */
    MLA_FACTOR_SPLIT = 1,            /* separate SVDs: two latents, 2·R cached values */
    MLA_FACTOR_ACTIVATION_JOINT = 2, /* joint, minimizing error on calibration activations */
} mla_factorization;

typedef struct mla_convert_params {
    size_t struct_size;
    mla_rope_strategy rope_strategy; /* default MLA_ROPE_HIGH */
    int32_t rope_dim;        /* r: RoPE dimensions kept per head, even, 0..head_dim (default 8) */
    int32_t uniform_start;   /* first frequency for MLA_ROPE_UNIFORM (default 0) */
    const int32_t *explicit_freqs; /* n_kv_heads × rope_dim/2 frequency indices in [0, head_dim/2),
                                      distinct per head; borrowed for the call */
    mla_factorization factorization; /* default MLA_FACTOR_JOINT */
    int32_t d_kv;            /* latent rank per KV head: R = d_kv·n_kv_heads (default 16) */
    double damping;          /* activation-aware: λ = damping·mean(diag XᵀX), default 1e-3 */
    mla_progress_fn progress; /* optional; called between stages; may cancel */
    void *progress_user;
} mla_convert_params;

MLA_API mla_status mla_convert_default_params(mla_convert_params *p, size_t struct_size);

typedef struct mla_layer mla_layer;

/*
 * Convert one layer. calib is required for MLA_ROPE_2NORM (with rope_dim > 0) and
 * MLA_FACTOR_ACTIVATION_JOINT and otherwise optional (with it, the report includes
 * activation-space errors). Inputs are read during the call only. Errors: INVALID_ARGUMENT (naming
 * the field), SHAPE_MISMATCH, NUMERICAL (NaN/Inf weights, SVD or Cholesky failure),
 * UNSUPPORTED ([W_k_nope; W_v] with more than INT32_MAX rows), OUT_OF_MEMORY, CANCELLED.
 * Thread-safe for distinct outputs.
 */
MLA_API mla_status mla_layer_convert(const mla_geometry *g, const mla_layer_weights *w,
                                     const mla_calib *calib, const mla_convert_params *params,
                                     mla_layer **out);

/*
 * An MHA/GQA layer kept as it is (the baseline): same handle type, so caches and mla_attn_forward
 * take it like a converted layer. Its cache holds full keys (as the RoPE part) and values.
 */
MLA_API mla_status mla_layer_from_mha(const mla_geometry *g, const mla_layer_weights *w,
                                      mla_layer **out);

MLA_API void mla_layer_destroy(mla_layer *layer);

typedef enum mla_layer_kind {
    MLA_LAYER_MLA = 0,
    MLA_LAYER_MHA = 1,
} mla_layer_kind;

/* What a layer is. Its geometry is not a field (an embedded struct could not grow without
 * moving the fields after it): read it with mla_layer_get_geometry. */
typedef struct mla_layer_info {
    size_t struct_size;
    mla_layer_kind kind;
    mla_factorization factorization;
    mla_rope_strategy rope_strategy;
    int32_t rope_dim;        /* r per head */
    int32_t d_kv;            /* per KV head */
    int32_t latent_dim;      /* cached latent values per token: R (joint) or 2R (split); for MHA
                                n_kv_heads·head_dim (the values) */
    int32_t rope_width;      /* cached RoPE key values per token: n_kv_heads·r (MHA: ·head_dim) */
    int32_t n_tensors;       /* tensors exposed by mla_layer_tensor */
    mla_dtype weight_dtype;  /* how the weights a forward streams are stored (F32 unless
                                mla_layer_set_weight_dtype changed it) */
} mla_layer_info;

MLA_API mla_status mla_layer_get_info(const mla_layer *layer, mla_layer_info *info,
                                      size_t struct_size);

/* Write the geometry the layer was built from into *g. struct_size: sizeof(*g) as the caller
 * compiled it (the rule of params structs, doc/api.md). Errors: INVALID_ARGUMENT (NULL layer or g,
 * struct_size smaller than a size_t). */
MLA_API mla_status mla_layer_get_geometry(const mla_layer *layer, mla_geometry *g,
                                          size_t struct_size);

/* The kept RoPE dimensions of one KV head: rope_dim indices into [0, head_dim), ascending. */
MLA_API mla_status mla_layer_rope_dims(const mla_layer *layer, int32_t kv_head, int32_t *dims);

/*
 * Tensors of the layer, named as the reference checkpoint names them (without the
 * "model.layers.N.self_attn." prefix): q_proj.weight (rows reordered: all heads' RoPE rows, then
 * all heads' non-RoPE rows), q_proj.bias, k_r_proj.weight, k_r_proj.bias, kv_proj.down_kv.weight
 * (split: kv_proj.down_k.weight, kv_proj.down_v.weight), kv_proj.up_k.weight, kv_proj.up_k.bias,
 * kv_proj.up_v.weight, kv_proj.up_v.bias, o_proj.weight, and libmla's rope_dims (I32,
 * n_kv_heads × rope_dim). Biases appear only when the source had them. The view stays valid
 * while the layer lives. Errors: INVALID_ARGUMENT (index out of range, unknown name).
 */
MLA_API mla_status mla_layer_tensor(const mla_layer *layer, int32_t index, mla_tensor *out);
MLA_API mla_status mla_layer_tensor_by_name(const mla_layer *layer, const char *name,
                                            mla_tensor *out);

/*
 * Build a layer from tensors read back from a checkpoint (names as above, F32/F16/BF16; rope_dims
 * I32). The tensors are copied. The factorization is inferred from the names present.
 * Errors: INVALID_ARGUMENT (missing, unknown or duplicate tensor, or a wrong dtype, by name),
 * SHAPE_MISMATCH (which tensor, expected and got), NUMERICAL, OUT_OF_MEMORY.
 */
MLA_API mla_status mla_layer_from_tensors(const mla_geometry *g, int32_t rope_dim, int32_t d_kv,
                                          const mla_tensor *tensors, int32_t n_tensors,
                                          mla_layer **out);

/*
 * Store the layer's weight matrices (q_proj, k_r_proj or k_proj, the down projection or v_proj,
 * the up projections, o_proj) as dtype: F16 or BF16 (rounded to nearest, ties to even), or F32
 * again (the 16-bit values widened exactly). A decode reads them once a token, so 16 bits halve
 * its weight traffic and the layer's memory; mla_attn_forward multiplies the stored values
 * exactly, accumulating in float32 (doc/attention.md, "16-bit weights"). Biases and rope_dims
 * stay as they are. mla_layer_tensor then returns the matrices with the new dtype; earlier views
 * of them are invalid. Not while a forward runs on this layer.
 * Errors: INVALID_ARGUMENT (another dtype), NUMERICAL (a value beyond the dtype's range, by
 * tensor, row and column: the layer is then unchanged), OUT_OF_MEMORY (likewise).
 */
MLA_API mla_status mla_layer_set_weight_dtype(mla_layer *layer, mla_dtype dtype);

/* What the conversion lost. Errors are relative Frobenius norms; NaN where not computed. */
typedef struct mla_convert_report {
    size_t struct_size;
    double kept_energy;      /* Σ kept σ² / Σ σ² of the factorized matrix (split: of both;
                                activation-aware: of M·L, not comparable with the others) */
    double k_nope_rel_error; /* ‖W_k_nope − W_uk·W_dk‖ / ‖W_k_nope‖ */
    double v_rel_error;      /* ‖W_v − W_uv·W_dv‖ / ‖W_v‖ */
    double k_nope_act_rel_error; /* same on calibration activations (needs covariance) */
    double v_act_rel_error;
    double seconds;          /* wall time of the conversion */
} mla_convert_report;

MLA_API mla_status mla_layer_get_report(const mla_layer *layer, mla_convert_report *report,
                                        size_t struct_size);

#ifdef __cplusplus
}
#endif

#endif /* MLA_CONVERT_H */

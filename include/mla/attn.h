/*
 * libmla attention forward: one layer over a batch of tokens, reading and appending to the cache.
 *
 * An mla_attn holds what a forward needs besides the layer and the cache: worker threads and
 * scratch memory. Two paths compute an MLA layer (doc/attention.md): absorbed (W_uk folded into
 * the query, scores against cached latents; best for decode) and materialized (keys and values
 * up-projected from the latents; best for long prefill chunks). MHA layers (mla_layer_from_mha)
 * run an ordinary attention over the same cache type.
 */
#ifndef MLA_ATTN_H
#define MLA_ATTN_H

#include <mla/cache.h>
#include <mla/common.h>
#include <mla/convert.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mla_attn mla_attn;

typedef enum mla_attn_path {
    MLA_ATTN_PATH_AUTO = 0,         /* materialized for chunks of ≥ crossover_tokens queries */
    MLA_ATTN_PATH_ABSORBED = 1,
    MLA_ATTN_PATH_MATERIALIZED = 2,
} mla_attn_path;

typedef struct mla_attn_params {
    size_t struct_size;
    int32_t n_threads;        /* worker threads including the caller (default 1; 0: all cores) */
    mla_attn_path path;       /* default MLA_ATTN_PATH_AUTO */
    int32_t crossover_tokens; /* AUTO's switch point in query tokens per sequence chunk
                                 (default: the measured value documented in doc/attention.md) */
} mla_attn_params;

MLA_API mla_status mla_attn_default_params(mla_attn_params *p, size_t struct_size);

/* Errors: INVALID_ARGUMENT, OUT_OF_MEMORY. params may be NULL for defaults. */
MLA_API mla_status mla_attn_create(const mla_attn_params *params, mla_attn **out);
MLA_API void mla_attn_destroy(mla_attn *attn);

/*
 * Run layer `layer` (cache layer index cache_layer) for n_tokens tokens.
 * x: n_tokens × d_model float32, the layer input after its input norm (borrowed for the call).
 * seq, pos: n_tokens entries, each token's sequence id and position. Within one sequence the
 * batch's tokens are consecutive positions continuing that sequence in this layer (positions
 * already reserved in the cache, or directly after its last). Tokens of different sequences may
 * be mixed. Each token attends causally to its sequence's cached tokens and the batch's earlier
 * tokens of its sequence.
 * Positions already present in the sequence are (over)written in this layer: the cache does not
 * record which layers wrote a slot, so it cannot tell a slot reserved by an earlier layer of the
 * batch from one this layer already wrote. The sequence's earlier positions must have been
 * written in this layer (an unwritten reserved slot reads as zeros).
 * out: n_tokens × d_model float32 (the o_proj output), may not alias x.
 * Errors: INVALID_ARGUMENT (unknown sequence, position gap, position repeated within the batch,
 * layer/cache mismatch), NUMERICAL (NaN/Inf input, or overflow inside the layer), CAPACITY (cache
 * full), OUT_OF_MEMORY. On error no position is added to any sequence (a shared block may have
 * been copied, and reserved slots of this layer overwritten) and out is not written.
 * Not thread-safe on one mla_attn; distinct mla_attn handles may run on distinct sequences of
 * one cache concurrently.
 */
MLA_API mla_status mla_attn_forward(mla_attn *attn, const mla_layer *layer, mla_cache *cache,
                                    int32_t cache_layer, const float *x, int64_t n_tokens,
                                    const int32_t *seq, const int64_t *pos, float *out);

#ifdef __cplusplus
}
#endif

#endif /* MLA_ATTN_H */

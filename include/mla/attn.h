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
    MLA_ATTN_PATH_AUTO = 0,         /* per sequence chunk, by crossover_tokens */
    MLA_ATTN_PATH_ABSORBED = 1,
    MLA_ATTN_PATH_MATERIALIZED = 2,
} mla_attn_path;

/* Where a handle's n_threads run (doc/attention.md, "Threads"). */
typedef enum mla_attn_threads {
    MLA_ATTN_THREADS_POOL = 0,   /* up to n_threads − 1 workers of its own, started when first
                                    needed, which take a loop's items as they come and yield
                                    the core, then sleep, when idle: on cores shared with other
                                    busy threads a forward takes about its one-thread time */
    MLA_ATTN_THREADS_OPENMP = 1, /* the process's OpenMP runtime (libgomp): for hosts whose own
                                    parallel work runs on it, so that both share its threads */
} mla_attn_threads;

typedef struct mla_attn_params {
    size_t struct_size;
    int32_t n_threads;        /* threads a forward runs on, the caller's included (default 1;
                                 0: all cores); best the cores it has to itself
                                 (doc/attention.md, "Threads") */
    mla_attn_path path;       /* default MLA_ATTN_PATH_AUTO */
    int32_t crossover_tokens; /* AUTO: 0 (default) compares the two paths' multiply-adds for
                                 each chunk's length and context, weighted as measured
                                 (doc/attention.md, "Crossover"); N > 0 takes materialized for
                                 chunks of ≥ N query tokens. Either way only where the latent
                                 is wider than a head's key and value together. */
    int64_t max_scratch_bytes; /* the most scratch memory the handle keeps between calls;
                                  0 (default): no limit. A batch whose fastest plan needs more
                                  takes the fastest one within it (a prompt's up-projection not
                                  shared, fewer split-K parts), and fails with CAPACITY, naming
                                  the least need, if none fits (doc/attention.md, "Memory"). */
    mla_attn_threads threads; /* whose threads: default MLA_ATTN_THREADS_POOL */
} mla_attn_params;

MLA_API mla_status mla_attn_default_params(mla_attn_params *p, size_t struct_size);

/* Errors: INVALID_ARGUMENT, OUT_OF_MEMORY. params may be NULL for defaults. */
MLA_API mla_status mla_attn_create(const mla_attn_params *params, mla_attn **out);
MLA_API void mla_attn_destroy(mla_attn *attn);

/* The scratch memory the handle holds now, in bytes: forwards grow it to the largest batch's
 * need (within max_scratch_bytes) and keep it for the next call. Errors: INVALID_ARGUMENT. */
MLA_API mla_status mla_attn_scratch_bytes(const mla_attn *attn, int64_t *bytes);

/* Frees the handle's scratch memory (the next forward allocates what it needs again), for
 * example after a long prompt. Not concurrently with a forward on the same handle.
 * Errors: INVALID_ARGUMENT. */
MLA_API mla_status mla_attn_scratch_release(mla_attn *attn);

/*
 * Progress of the forwards that follow on this handle (NULL: none; the handle starts without).
 * A forward calls progress(user, done, total) from the thread that called it, while its worker
 * threads go on, in units of (query token, context token) pairs its attention visits: total
 * is m·len0 + m·(m+1)/2 for a chunk of m tokens after len0 cached ones, summed over the batch's
 * sequences. It is called once the projections are done with done = 0, then as the calling
 * thread finishes its share, done never decreasing, the last call with done = total (before
 * the output projection). A nonzero return cancels: the forward fails with
 * MLA_ERR_CANCELLED, nothing appended, out untouched. The callback may not call this handle, nor
 * write the batch's sequences. user is borrowed until the callback is replaced or cleared.
 * Errors: INVALID_ARGUMENT.
 */
MLA_API mla_status mla_attn_set_progress(mla_attn *attn, mla_progress_fn progress, void *user);

/*
 * Run layer `layer` (cache layer index cache_layer) for n_tokens tokens.
 * x: n_tokens × d_model float32, the layer input after its input norm (borrowed for the call).
 * seq, pos: n_tokens entries, each token's sequence id and position. Within one sequence the
 * batch's tokens are consecutive positions continuing exactly what this cache layer has written
 * of that sequence: first the slots after the last one it wrote (reserved with
 * mla_cache_reserve, or appended by an earlier layer of the same batch), then new positions
 * directly after the sequence's last. A position this layer already wrote is refused (a repeat:
 * remove it with mla_cache_seq_rm to compute it again), and so is a start that would leave
 * slots before it unwritten in this layer (a gap). Tokens of different sequences may be mixed.
 * Each token attends causally to its sequence's cached tokens and the batch's earlier tokens of
 * its sequence.
 * out: n_tokens × d_model float32 (the o_proj output), may not alias x.
 * Errors: INVALID_ARGUMENT (unknown sequence, position gap or repeat, in the batch or against
 * the cache, layer/cache mismatch), NUMERICAL (NaN/Inf input, or overflow inside the layer),
 * CAPACITY (cache full, or the batch needs more than max_scratch_bytes), OUT_OF_MEMORY,
 * CANCELLED (by the progress callback). On error no position is added to any sequence and the
 * layer's written slots are as before (a shared block may have been copied, and the unwritten
 * slots after them hold this call's values), and out is not written.
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

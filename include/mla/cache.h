/*
 * libmla latent KV cache: per token and layer, one latent vector (the values an MLA layer's
 * W_dkv produced) and the kept RoPE key dimensions, never full keys and values.
 *
 * Memory is a pool of blocks of block_tokens token slots, each slot holding every layer's data.
 * Sequences (ids 0 .. n_seq_max−1) are ordered lists of tokens with strictly increasing positions,
 * stored in blocks; sequences may share blocks (mla_cache_seq_cp), copied on write.
 * See doc/cache.md for the semantics of each operation and the snapshot format.
 *
 * Threading: calls on distinct handles are safe. On one handle, reads of distinct sequences may run
 * concurrently, and writes (mla_cache_write) to distinct sequences may run concurrently with each
 * other and with reads of other sequences; so may mla_cache_seq_rm of one sequence's own tail
 * (p1 < 0), which mla_attn_forward uses to undo its appends. Every other call needs exclusive
 * access.
 */
#ifndef MLA_CACHE_H
#define MLA_CACHE_H

#include <mla/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mla_cache mla_cache;
struct mla_layer;

/* What one layer caches per token. Fill one with mla_cache_layer_desc_default_params or
 * mla_layer_cache_desc. */
typedef struct mla_cache_layer_desc {
    size_t struct_size;   /* sizeof(mla_cache_layer_desc) as the caller compiled it */
    int32_t latent_dim;   /* latent values per token (R, or 2R for a split layer) */
    int32_t rope_heads;   /* KV heads carrying a RoPE part (n_kv_heads); 0 if rope_dim is 0 */
    int32_t rope_dim;     /* RoPE values per head (r), even; the first r/2 and last r/2 form the
                             rotation pairs (j, j + r/2) */
    const float *rope_freqs; /* rope_heads × rope_dim/2 angular frequencies θ (radians per position),
                                used by mla_cache_seq_shift; borrowed for the call, may be NULL when
                                rope_dim is 0 */
    double rope_position_scale; /* positions are multiplied by this before rotation: 1 (the
                                   default), or 1/factor for linear RoPE scaling; 0 means 1 */
    int32_t mha_kv_dim;   /* n_kv_heads·head_dim of the source model, for the MHA comparison */
} mla_cache_layer_desc;

/* Fill *d with defaults: every field 0 (NULL) except rope_position_scale 1. struct_size:
 * sizeof(*d) as the caller compiled it. Errors: INVALID_ARGUMENT. */
MLA_API mla_status mla_cache_layer_desc_default_params(mla_cache_layer_desc *d, size_t struct_size);

/* The description of what an mla_layer caches, written into *desc. struct_size: sizeof(*desc) as
 * the caller compiled it. rope_freqs points into the layer, valid while it lives.
 * Errors: INVALID_ARGUMENT (NULL layer or desc, struct_size smaller than a size_t). */
MLA_API mla_status mla_layer_cache_desc(const struct mla_layer *layer, mla_cache_layer_desc *desc,
                                        size_t struct_size);

typedef struct mla_cache_params {
    size_t struct_size;
    int32_t n_layers;
    /* n_layers entries, copied. An array of structs: its element stride is layers[0].struct_size
     * (so a caller built with a longer or shorter mla_cache_layer_desc steps through its own
     * array correctly), and every element must carry that same struct_size. Fields past it take
     * their defaults (mla_cache_layer_desc_default_params). */
    const mla_cache_layer_desc *layers;
    mla_dtype latent_dtype;  /* F32, F16, BF16, I8 or I4 (default F16) */
    mla_dtype rope_dtype;    /* F32, F16 or BF16 (default F16) */
    int32_t quant_group;     /* values per scale for I8/I4, divides every latent_dim; default 0:
                                the largest of 32, 16, .., 1 that does (even for I4) */
    int32_t block_tokens;    /* token slots per block (default 64) */
    int64_t capacity_tokens; /* pool size in tokens (rounded up to whole blocks); or 0 and: */
    int64_t capacity_bytes;  /* pool size in bytes (rounded down to whole blocks) */
    int32_t n_seq_max;       /* sequence ids 0 .. n_seq_max−1 (default 64) */
} mla_cache_params;

MLA_API mla_status mla_cache_default_params(mla_cache_params *p, size_t struct_size);

/* Create a cache; all pool memory is allocated here and never reallocated.
 * Errors: INVALID_ARGUMENT (naming the field and layer, for example layers[2].struct_size when it
 * differs from layers[0].struct_size), OUT_OF_MEMORY. */
MLA_API mla_status mla_cache_create(const mla_cache_params *p, mla_cache **out);
MLA_API void mla_cache_destroy(mla_cache *cache);

/* ---- writing -------------------------------------------------------------------------------- */

/*
 * Append n_tokens slots at positions pos .. pos+n_tokens−1 to sequence seq (pos greater than the
 * sequence's last position). The slots read as zeros until written. Errors: INVALID_ARGUMENT
 * (unknown seq, position not after the last), CAPACITY (not enough free blocks: nothing changed).
 */
MLA_API mla_status mla_cache_reserve(mla_cache *cache, int32_t seq, int64_t pos, int64_t n_tokens);

/*
 * Store one layer's data for the tokens at positions pos .. pos+n_tokens−1 of sequence seq.
 * Positions must be already-reserved slots of that sequence, or new positions directly after its
 * last, which are reserved first (so the first layer of a batch appends).
 * latent: n_tokens × latent_dim float32; rope: n_tokens × rope_heads·rope_dim float32, already
 * rotated at their positions (NULL if rope_dim is 0). Both copied (converted/quantized).
 * Written slots may be written again here; the cache counts per layer the sequence's leading
 * tokens written (doc/cache.md, "Written prefix"), from where mla_attn_forward continues.
 * Errors: INVALID_ARGUMENT, CAPACITY, NUMERICAL (NaN/Inf). Nothing changes on failure.
 */
MLA_API mla_status mla_cache_write(mla_cache *cache, int32_t layer, int32_t seq, int64_t pos,
                                   int64_t n_tokens, const float *latent, const float *rope);

/* ---- sequences ------------------------------------------------------------------------------ */
/* Position ranges are [p0, p1); p0 < 0 means from the start, p1 < 0 means to the end. */

/* Remove the tokens with positions in [p0, p1) from seq (seq < 0: from every sequence). */
MLA_API mla_status mla_cache_seq_rm(mla_cache *cache, int32_t seq, int64_t p0, int64_t p1);

/* Replace dst's contents with src's tokens in [p0, p1). Blocks are shared, not copied (never
 * CAPACITY); a shared block is copied when either sequence writes into it.
 * Errors: INVALID_ARGUMENT, OUT_OF_MEMORY (the sequence table could not grow; nothing changed). */
MLA_API mla_status mla_cache_seq_cp(mla_cache *cache, int32_t src, int32_t dst, int64_t p0,
                                    int64_t p1);

/* dst becomes a copy of all of src (mla_cache_seq_cp over the whole range). */
MLA_API mla_status mla_cache_seq_fork(mla_cache *cache, int32_t src, int32_t dst);

/* Remove every sequence but seq. */
MLA_API mla_status mla_cache_seq_keep(mla_cache *cache, int32_t seq);

/*
 * Add delta to the positions in [p0, p1) of seq, rotating the RoPE part of every layer by delta
 * positions. Errors (nothing changed): INVALID_ARGUMENT if the result would be negative or would
 * not stay strictly increasing against the tokens outside the range; CAPACITY if shared blocks
 * must be copied first and the pool is full; NUMERICAL if a rotated value would not fit the
 * RoPE storage type.
 */
MLA_API mla_status mla_cache_seq_shift(mla_cache *cache, int32_t seq, int64_t p0, int64_t p1,
                                       int64_t delta);

/* Smallest and largest position of seq; −1 for an empty sequence. */
MLA_API mla_status mla_cache_seq_pos_min(const mla_cache *cache, int32_t seq, int64_t *pos);
MLA_API mla_status mla_cache_seq_pos_max(const mla_cache *cache, int32_t seq, int64_t *pos);

/* Number of tokens in seq. */
MLA_API mla_status mla_cache_seq_length(const mla_cache *cache, int32_t seq, int64_t *n_tokens);

/* Tokens of seq, counted from its first in position order, whose data layer `layer` has written
 * (mla_cache_write, mla_attn_forward): that layer's next mla_attn_forward for seq starts at the
 * token after them. Reserved slots are unwritten; rm, cp and fork carry the count with the
 * tokens, snapshots save it (doc/cache.md, "Written prefix").
 * Errors: INVALID_ARGUMENT (unknown seq or layer, NULL n_tokens). */
MLA_API mla_status mla_cache_seq_written(const mla_cache *cache, int32_t layer, int32_t seq,
                                         int64_t *n_tokens);

/* Remove everything. */
MLA_API mla_status mla_cache_clear(mla_cache *cache);

/* ---- reading -------------------------------------------------------------------------------- */

/*
 * Copy tokens [first, first+n_tokens) (indices in position order, not positions) of seq at one
 * layer out as float32, dequantizing. latent: n_tokens × latent_dim, rope: n_tokens ×
 * rope_heads·rope_dim, pos: n_tokens; any may be NULL.
 */
MLA_API mla_status mla_cache_seq_read(const mla_cache *cache, int32_t layer, int32_t seq,
                                      int64_t first, int64_t n_tokens, float *latent, float *rope,
                                      int64_t *pos);

/* ---- accounting ----------------------------------------------------------------------------- */

typedef struct mla_cache_stats {
    size_t struct_size;
    int64_t bytes_per_token;     /* all layers: latent + scales + RoPE part, exactly as stored */
    int64_t mha_bytes_per_token; /* the source model's K and V for all layers, in rope_dtype */
    int64_t block_bytes;         /* one block, all layers, including its position table */
    int64_t blocks_total;
    int64_t blocks_free;
    int64_t tokens_used;         /* token slots in use (a shared block's slots count once) */
    int64_t bytes_used;          /* blocks in use × block_bytes */
    int64_t capacity_tokens;     /* blocks_total × block_tokens */
    int32_t quant_group;         /* values per scale of I8/I4 latents (0 for other types) */
} mla_cache_stats;

MLA_API mla_status mla_cache_get_stats(const mla_cache *cache, mla_cache_stats *stats,
                                       size_t struct_size);

/* ---- snapshots ------------------------------------------------------------------------------ */
/*
 * Save seq (or the whole cache with seq < 0) in libmla's versioned snapshot format (magic,
 * geometry and type header, a checksum per section; doc/cache.md). Loading checks everything before
 * changing anything: a snapshot of another geometry or dtype, a truncated or corrupted one gives
 * BAD_FORMAT (or INVALID_ARGUMENT/CAPACITY) and leaves the cache as it was. Loading a one-sequence
 * snapshot replaces sequence seq; a whole-cache snapshot replaces everything (seq ignored).
 */
MLA_API mla_status mla_cache_save_size(const mla_cache *cache, int32_t seq, size_t *size);
MLA_API mla_status mla_cache_save(const mla_cache *cache, int32_t seq, void *buf, size_t buf_size,
                                  size_t *written);
MLA_API mla_status mla_cache_load(mla_cache *cache, int32_t seq, const void *buf, size_t size);
/* The same through a file; writes go to a temporary file renamed over path when complete. */
MLA_API mla_status mla_cache_save_file(const mla_cache *cache, int32_t seq, const char *path);
MLA_API mla_status mla_cache_load_file(mla_cache *cache, int32_t seq, const char *path);

#ifdef __cplusplus
}
#endif

#endif /* MLA_CACHE_H */

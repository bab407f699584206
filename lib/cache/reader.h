/*
 * Zero-copy access to a sequence's cached tokens, for the attention kernels (lib/attn).
 * A sequence is read as spans: runs of tokens, consecutive in position order, that live in one
 * block. Spans are valid until the next call that modifies the cache's structure (reserve, rm, cp,
 * keep, shift, clear, load); mla_cache_write to other sequences does not invalidate them.
 */
#ifndef MLA_CACHE_READER_H
#define MLA_CACHE_READER_H

#include <mla/cache.h>

#include "core/core.h"

/* What one layer stores, as the cache was created. */
typedef struct mla_cache_layer_format {
    int32_t latent_dim;
    int32_t rope_width;       /* rope_heads · rope_dim */
    mla_dtype latent_dtype;   /* F32, F16, BF16, I8, I4 */
    mla_dtype rope_dtype;     /* F32, F16, BF16 */
    int32_t quant_group;      /* values per scale for I8/I4 */
} mla_cache_layer_format;

typedef struct mla_cache_span {
    int64_t n_tokens;          /* ≥ 1 */
    const int64_t *pos;        /* n_tokens positions, strictly increasing */
    /* Row t of the latent: latent_dim values in latent_dtype starting at
     * (const char *)latent + t·latent_row_bytes. I4 packs two values per byte, value 2k in the
     * low nibble, as two's complement in [−8, 7]; I8 is int8 in [−127, 127]. */
    const void *latent;
    size_t latent_row_bytes;
    /* I8/I4: n_tokens × (latent_dim / quant_group) float scales, value = q · scale. Else NULL. */
    const float *latent_scale;
    const void *rope;          /* row t at (const char *)rope + t·rope_row_bytes, rope_dtype */
    size_t rope_row_bytes;
} mla_cache_span;

/* Format of layer `layer`. Errors: INVALID_ARGUMENT. */
MLA_INTERNAL mla_status mla__cache_layer_format(const mla_cache *cache, int32_t layer,
                                                mla_cache_layer_format *fmt);

/* The RoPE description layer `layer` was created with, as mla_cache_seq_shift rotates its keys:
 * heads × dim rotated values per token, positions multiplied by position_scale (a 0 given at
 * creation is stored as 1), freqs: heads × dim/2 angular frequencies owned by the cache (NULL when
 * dim is 0). */
typedef struct mla_cache_layer_rope {
    int32_t heads;
    int32_t dim;
    double position_scale;
    const float *freqs;
} mla_cache_layer_rope;

/* The RoPE description of layer `layer`. Errors: INVALID_ARGUMENT. */
MLA_INTERNAL mla_status mla__cache_layer_rope(const mla_cache *cache, int32_t layer,
                                              mla_cache_layer_rope *rope);

/* Number of spans of seq (0 for an empty sequence). Errors: INVALID_ARGUMENT (unknown seq). */
MLA_INTERNAL mla_status mla__cache_seq_span_count(const mla_cache *cache, int32_t seq,
                                                  int64_t *n_spans);

/* Span `index` (0 .. n_spans−1, in position order) of seq at one layer. */
MLA_INTERNAL mla_status mla__cache_seq_span(const mla_cache *cache, int32_t layer, int32_t seq,
                                            int64_t index, mla_cache_span *span);

/* Lower the written count of mla_cache_seq_written back to n (a forward undoing its writes to
 * slots it did not append). The sequence's writer only; layer and seq valid. */
MLA_INTERNAL void mla__cache_seq_written_lower(mla_cache *cache, int32_t layer, int32_t seq,
                                               int64_t n);

/* Dequantize rows [first, first+n) of a span to float32: latent into n × latent_dim, rope into
 * n × rope_width; either output may be NULL. The portable version is the oracle; vectorized
 * versions are chosen at run time by CPU features. */
MLA_INTERNAL void mla__cache_span_to_f32(const mla_cache_layer_format *fmt,
                                         const mla_cache_span *span, int64_t first, int64_t n,
                                         float *latent, float *rope);

/* The codes of rows [first, first+n) of an I4 span as int8 (−8 … 7), row t at codes + t ·
 * latent_dim. Exact: read as an I8 source with the span's own scales they give the values
 * mla__cache_span_to_f32 gives, a quarter of its bytes (the attention reads I4 latents so). */
MLA_INTERNAL void mla__cache_span_i4_codes(const mla_cache_layer_format *fmt,
                                           const mla_cache_span *span, int64_t first, int64_t n,
                                           int8_t *codes);

#endif /* MLA_CACHE_READER_H */

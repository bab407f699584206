/* The zero-copy span reader of lib/cache/reader.h: one span per block entry of a sequence. */
#include "cache/internal.h"

mla_status mla__cache_seq_span_count(const mla_cache *c, int32_t seq, int64_t *n_spans)
{
    mla_status st = mla__cache_check_seq(c, seq, "cache span count");
    if (st != MLA_OK)
        return st;
    if (!n_spans)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache span count: n_spans is NULL");
    *n_spans = c->seqs[seq].n_e;
    return MLA_OK;
}

mla_status mla__cache_seq_span(const mla_cache *c, int32_t layer, int32_t seq, int64_t index,
                               mla_cache_span *span)
{
    mla_status st = mla__cache_check_seq(c, seq, "cache span");
    if (st != MLA_OK)
        return st;
    if (layer < 0 || layer >= c->n_layers || !span)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache span: layer %d of %d, span %p",
                        (int)layer, (int)c->n_layers, (void *)span);
    const mla_cache_seq *s = &c->seqs[seq];
    if (index < 0 || index >= s->n_e)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache span: index %lld of sequence %d, which has %lld spans",
                        (long long)index, (int)seq, (long long)s->n_e);
    const mla_cache_entry *e = &s->e[index];
    const mla_cache_layer *L = &c->layers[layer];
    const unsigned char *base = mla__cache_block(c, e->block);
    const size_t off = (size_t)e->off;
    span->n_tokens = e->n;
    span->pos = mla__cache_block_pos(c, e->block) + off;
    span->latent = base + L->latent_off + off * L->latent_row_bytes;
    span->latent_row_bytes = L->latent_row_bytes;
    span->latent_scale =
        L->n_groups ? (const float *)(const void *)(base + L->scale_off + off * L->scale_row_bytes)
                    : NULL;
    span->rope = L->fmt.rope_width ? base + L->rope_off + off * L->rope_row_bytes : NULL;
    span->rope_row_bytes = L->rope_row_bytes;
    return MLA_OK;
}

mla_status mla__cache_layer_rope(const mla_cache *c, int32_t layer, mla_cache_layer_rope *rope)
{
    if (!c || !rope || layer < 0 || layer >= c->n_layers)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache rope description: layer %d of %d",
                        (int)layer, c ? (int)c->n_layers : 0);
    const mla_cache_layer *L = &c->layers[layer];
    rope->heads = L->rope_heads;
    rope->dim = L->rope_dim;
    rope->position_scale = L->pos_scale;
    rope->freqs = L->rope_dim > 0 ? L->freqs : NULL;
    return MLA_OK;
}

void mla__cache_seq_written_lower(mla_cache *c, int32_t layer, int32_t seq, int64_t n)
{
    int64_t *w = &c->seqs[seq].written[layer];
    if (n >= 0 && n < *w)
        *w = n;
}

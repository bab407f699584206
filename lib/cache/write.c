/* Storing one layer's data for a run of tokens, and copying it back out as float32. */
#include <mla/cache.h>

#include "cache/internal.h"

/* Where the tokens [pos, pos+n) go: k already-present tokens from index a, then n−k new ones. */
static mla_status locate(const mla_cache *c, int32_t seq, int64_t pos, int64_t n, int64_t *a,
                         int64_t *k)
{
    const mla_cache_seq *s = &c->seqs[seq];
    int64_t last = s->n_tokens ? mla__cache_seq_pos(c, s, s->n_tokens - 1) : -1;
    *a = s->n_tokens;
    *k = 0;
    if (pos > last && s->n_tokens > 0 && pos != last + 1)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_write: sequence %d: position %lld is neither reserved nor "
                        "directly after the last position %lld (mla_cache_reserve leaves gaps)",
                        (int)seq, (long long)pos, (long long)last);
    if (pos > last)
        return MLA_OK;
    int64_t i = mla__cache_seq_lower(c, s, pos);
    /* last − pos + 1 overflows when last is INT64_MAX (a shift can put a token there) */
    int64_t kk = last - pos < n ? last - pos + 1 : n;
    /* strictly increasing positions: equal ends mean every position between is present */
    if (mla__cache_seq_pos(c, s, i) != pos || i + kk > s->n_tokens ||
        mla__cache_seq_pos(c, s, i + kk - 1) != pos + kk - 1)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_write: sequence %d: positions %lld .. %lld are not all "
                        "reserved (and %lld is not after the last position %lld)",
                        (int)seq, (long long)pos, (long long)(pos + kk - 1), (long long)pos,
                        (long long)last);
    *a = i;
    *k = kk;
    return MLA_OK;
}

static void store(mla_cache *c, int32_t layer, mla_cache_seq *s, int64_t a, int64_t n,
                  const float *latent, const float *rope)
{
    const mla_cache_layer *L = &c->layers[layer];
    const size_t d = (size_t)L->fmt.latent_dim, r = (size_t)L->fmt.rope_width;
    int32_t k;
    int64_t i = mla__cache_seq_find(s, a, &k);
    for (int64_t t = 0; t < n; t++) {
        if (k == s->e[i].n) {
            i++;
            k = 0;
        }
        const mla_cache_entry *e = &s->e[i];
        unsigned char *base = mla__cache_block(c, e->block);
        size_t slot = (size_t)(e->off + k);
        mla__cache_encode_latent(&L->fmt, latent + (size_t)t * d,
                                 base + L->latent_off + slot * L->latent_row_bytes,
                                 (float *)(void *)(base + L->scale_off + slot * L->scale_row_bytes));
        if (r)
            mla__cache_encode_rope(L->fmt.rope_dtype, rope + (size_t)t * r, (int32_t)r,
                                   base + L->rope_off + slot * L->rope_row_bytes);
        k++;
    }
}

MLA_API mla_status mla_cache_write(mla_cache *c, int32_t layer, int32_t seq, int64_t pos,
                                   int64_t n_tokens, const float *latent, const float *rope)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_write");
    if (st != MLA_OK)
        return st;
    if (layer < 0 || layer >= c->n_layers)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_write: layer %d out of range (%d)",
                        (int)layer, (int)c->n_layers);
    const mla_cache_layer *L = &c->layers[layer];
    if (pos < 0 || n_tokens < 0 || pos > INT64_MAX - n_tokens)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_write: layer %d, sequence %d: position %lld, %lld tokens",
                        (int)layer, (int)seq, (long long)pos, (long long)n_tokens);
    if (!latent || (!rope && L->fmt.rope_width > 0))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_write: layer %d: %s is NULL",
                        (int)layer, !latent ? "latent" : "rope");
    if (n_tokens == 0)
        return MLA_OK;
    /* the pool bounds how many tokens one call can write: check before multiplying sizes */
    if (n_tokens > (int64_t)c->n_blocks * c->block_tokens)
        return mla_fail(MLA_ERR_CAPACITY,
                        "mla_cache_write: %lld tokens exceed the cache's %lld slots",
                        (long long)n_tokens, (long long)c->n_blocks * c->block_tokens);
    int64_t nl = n_tokens * L->fmt.latent_dim, nr = n_tokens * L->fmt.rope_width;
    int64_t bad = mla__cache_check_values(latent, nl, c->latent_dtype);
    if (bad >= 0)
        return mla_fail(MLA_ERR_NUMERICAL,
                        "mla_cache_write: layer %d, sequence %d: latent[%lld][%lld] = %g cannot "
                        "be stored as %s", (int)layer, (int)seq,
                        (long long)(bad / L->fmt.latent_dim), (long long)(bad % L->fmt.latent_dim),
                        (double)latent[bad], mla_dtype_name(c->latent_dtype));
    bad = nr ? mla__cache_check_values(rope, nr, c->rope_dtype) : -1;
    if (bad >= 0)
        return mla_fail(MLA_ERR_NUMERICAL,
                        "mla_cache_write: layer %d, sequence %d: rope[%lld][%lld] = %g cannot "
                        "be stored as %s", (int)layer, (int)seq,
                        (long long)(bad / L->fmt.rope_width), (long long)(bad % L->fmt.rope_width),
                        (double)rope[bad], mla_dtype_name(c->rope_dtype));
    int64_t a, k;
    if ((st = locate(c, seq, pos, n_tokens, &a, &k)) != MLA_OK)
        return st;
    mla_cache_seq *s = &c->seqs[seq];
    int64_t i0 = 0, i1 = 0;
    if (k > 0) {
        int32_t unused;
        i0 = mla__cache_seq_find(s, a, &unused);
        i1 = mla__cache_seq_find(s, a + k - 1, &unused) + 1;
    }
    st = mla__cache_seq_prepare(c, seq, i0, i1, pos + k, n_tokens - k);
    if (st != MLA_OK)
        return mla_fail_context(st, "mla_cache_write: layer %d: ", (int)layer);
    store(c, layer, s, a, n_tokens, latent, rope);
    if (a <= s->written[layer] && a + n_tokens > s->written[layer])
        s->written[layer] = a + n_tokens;
    return MLA_OK;
}

MLA_API mla_status mla_cache_seq_read(const mla_cache *c, int32_t layer, int32_t seq,
                                      int64_t first, int64_t n_tokens, float *latent, float *rope,
                                      int64_t *pos)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_seq_read");
    if (st != MLA_OK)
        return st;
    if (layer < 0 || layer >= c->n_layers)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_seq_read: layer %d out of range (%d)",
                        (int)layer, (int)c->n_layers);
    const mla_cache_seq *s = &c->seqs[seq];
    if (first < 0 || n_tokens < 0 || first > s->n_tokens || n_tokens > s->n_tokens - first)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_seq_read: %lld tokens from index %lld of sequence %d, which "
                        "has %lld", (long long)n_tokens, (long long)first, (int)seq,
                        (long long)s->n_tokens);
    if (n_tokens == 0)
        return MLA_OK;
    const mla_cache_layer *L = &c->layers[layer];
    const size_t d = (size_t)L->fmt.latent_dim, r = (size_t)L->fmt.rope_width;
    int32_t k;
    int64_t i = mla__cache_seq_find(s, first, &k);
    for (int64_t t = 0; t < n_tokens; i++, k = 0) {
        mla_cache_span span;
        mla__cache_seq_span(c, layer, seq, i, &span);
        int64_t m = span.n_tokens - k < n_tokens - t ? span.n_tokens - k : n_tokens - t;
        mla__cache_span_to_f32(&L->fmt, &span, k, m, latent ? latent + (size_t)t * d : NULL,
                               rope ? rope + (size_t)t * r : NULL);
        for (int64_t j = 0; pos && j < m; j++)
            pos[t + j] = span.pos[k + j];
        t += m;
    }
    return MLA_OK;
}

/* A sequence's cached tokens as a table of spans, and tiles dequantized from them. */
#include "attn/internal.h"

mla_status mla__seq_view_load(const mla_cache *cache, int32_t layer, int32_t seq,
                              int64_t max_spans, mla__seq_view *v)
{
    int64_t n;
    mla_status st = mla__cache_seq_span_count(cache, seq, &n);
    if (st != MLA_OK)
        return mla_fail_context(MLA_ERR_INTERNAL, "attention: sequence %d: ", (int)seq);
    if (n > max_spans)
        return mla_fail(MLA_ERR_INTERNAL,
                        "attention: sequence %d has %lld spans, more than the %lld planned",
                        (int)seq, (long long)n, (long long)max_spans);
    v->n_spans = n;
    v->start[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        st = mla__cache_seq_span(cache, layer, seq, i, &v->spans[i]);
        if (st != MLA_OK)
            return mla_fail_context(MLA_ERR_INTERNAL, "attention: sequence %d span %lld: ",
                                    (int)seq, (long long)i);
        v->start[i + 1] = v->start[i] + v->spans[i].n_tokens;
    }
    return MLA_OK;
}

/* Positions pos[0 .. n) ascending: how many are at or before p (a binary search). */
static int64_t count_le(const int64_t *pos, int64_t n, int64_t p)
{
    int64_t a = 0, b = n;
    while (a < b) {
        int64_t mid = a + (b - a) / 2;
        if (pos[mid] <= p)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

int64_t mla__seq_view_count_le(const mla__seq_view *v, int64_t p)
{
    /* First span whose last position exceeds p, then a binary search inside it. */
    int64_t lo = 0, hi = v->n_spans;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const mla_cache_span *s = &v->spans[mid];
        if (s->pos[s->n_tokens - 1] <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == v->n_spans)
        return v->start[lo];
    return v->start[lo] + count_le(v->spans[lo].pos, v->spans[lo].n_tokens, p);
}

/* The span holding token `first`: the last span starting at or before it. */
int64_t mla__span_of(const mla__seq_view *v, int64_t first)
{
    int64_t lo = 0, hi = v->n_spans - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (v->start[mid] <= first)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

mla__src mla__f32_src(const float *p, int64_t width)
{
    mla__src s = {(const unsigned char *)p, (ptrdiff_t)(width * (int64_t)sizeof(float)),
                  MLA_DTYPE_F32, NULL, 0, 1};
    return s;
}

void mla__rtile_map(const mla_cache_layer_format *fmt, const mla__seq_view *v, int64_t first,
                    int64_t n, mla__tile *tile, mla__rtile *rt)
{
    /* I4 latents: the tile's codes as int8, read as an I8 source with the span's scales: the
     * kernels do not read nibbles. */
    const int i4 = fmt->latent_dtype == MLA_DTYPE_I4;
    int8_t *codes = tile->codes;
    int64_t ng = fmt->latent_dtype == MLA_DTYPE_I8 || i4 ? fmt->latent_dim / fmt->quant_group : 0;
    int64_t done = 0, ns = 0;
    for (int64_t si = mla__span_of(v, first); done < n; si++) {
        const mla_cache_span *s = &v->spans[si];
        int64_t off = first + done - v->start[si];
        int64_t take = s->n_tokens - off < n - done ? s->n_tokens - off : n - done;
        mla__seg *g = &rt->seg[ns++];
        g->t = done;
        g->n = take;
        if (i4) {
            mla__cache_span_i4_codes(fmt, s, off, take, codes + done * fmt->latent_dim);
            g->latent.p = (const unsigned char *)(codes + done * fmt->latent_dim);
            g->latent.ld = fmt->latent_dim;
            g->latent.t = MLA_DTYPE_I8;
        } else {
            g->latent.p = (const unsigned char *)s->latent + (size_t)off * s->latent_row_bytes;
            g->latent.ld = (ptrdiff_t)s->latent_row_bytes;
            g->latent.t = fmt->latent_dtype;
        }
        g->latent.sc = s->latent_scale ? s->latent_scale + off * ng : NULL;
        g->latent.lds = ng;
        g->latent.group = ng ? fmt->quant_group : 1;
        g->rope.p = s->rope ? (const unsigned char *)s->rope + (size_t)off * s->rope_row_bytes
                            : NULL;
        g->rope.ld = (ptrdiff_t)s->rope_row_bytes;
        g->rope.t = fmt->rope_dtype;
        g->rope.sc = NULL;
        g->rope.lds = 0;
        g->rope.group = 1;
        g->pos = s->pos + off;
        done += take;
    }
    rt->n = n;
    rt->n_seg = ns;
}

/* Tokens of the tile at or before position p. */
static int64_t rtile_count_le(const mla__rtile *rt, int64_t p)
{
    int64_t i = 0;
    while (i < rt->n_seg && rt->seg[i].pos[rt->seg[i].n - 1] <= p)
        i++;
    if (i == rt->n_seg)
        return rt->n;
    return rt->seg[i].t + count_le(rt->seg[i].pos, rt->seg[i].n, p);
}

void mla__rtile_visible(const mla__rtile *rt, int64_t p0, int64_t m, int64_t *nvis)
{
    for (int64_t t = 0; t < m; t++)
        nvis[t] = rtile_count_le(rt, p0 + t);
}

void mla__tile_visible(const mla__tile *tile, int64_t p0, int64_t m, int64_t *nvis)
{
    for (int64_t t = 0; t < m; t++)
        nvis[t] = count_le(tile->pos, tile->n, p0 + t);
}

void mla__tile_fill(const mla_cache_layer_format *fmt, const mla__seq_view *v, int64_t first,
                    int64_t n, mla__tile *tile)
{
    int64_t done = 0;
    for (int64_t si = mla__span_of(v, first); done < n; si++) {
        const mla_cache_span *s = &v->spans[si];
        int64_t off = first + done - v->start[si];
        int64_t take = s->n_tokens - off;
        if (take > n - done)
            take = n - done;
        mla__cache_span_to_f32(fmt, s, off, take,
                               tile->latent + done * (int64_t)fmt->latent_dim,
                               fmt->rope_width ? tile->rope + done * (int64_t)fmt->rope_width
                                               : NULL);
        for (int64_t t = 0; t < take; t++)
            tile->pos[done + t] = s->pos[off + t];
        done += take;
    }
    tile->n = n;
}

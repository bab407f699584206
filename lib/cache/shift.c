/*
 * Shifting positions: the cached RoPE keys were rotated at their old positions, so moving a token
 * by delta rotates each key pair (j, j + r/2) of each head by delta·scale·θ_j more (HF
 * rotate_half convention): y_j = x_j·c − x_{j+r/2}·s, y_{j+r/2} = x_{j+r/2}·c + x_j·s. RoPE
 * rotations compose additively, so this equals writing the key at the new position. The angle is
 * formed in double: positions and deltas can be large, and float would lose the phase.
 */
#include <math.h>

#include <mla/cache.h>

#include "cache/internal.h"

static void angles(mla_cache *c, const mla_cache_layer *L, int64_t delta)
{
    const int32_t half = L->rope_dim / 2;
    for (int32_t k = 0; k < L->rope_heads; k++)
        for (int32_t j = 0; j < half; j++) {
            double a = (double)delta * L->pos_scale * (double)L->freqs[k * half + j];
            c->rope_cos[k * half + j] = cos(a);
            c->rope_sin[k * half + j] = sin(a);
        }
}

/* Rotate one stored row into c->rope_buf (float32) by the angles of angles(). */
static void rotate_row(mla_cache *c, const mla_cache_layer *L, const void *row)
{
    const int32_t r = L->rope_dim, half = r / 2;
    float *x = c->rope_buf;
    mla_to_f32(x, row, L->fmt.rope_dtype, (size_t)L->fmt.rope_width);
    for (int32_t k = 0; k < L->rope_heads; k++) {
        float *h = x + (size_t)k * (size_t)r;
        for (int32_t j = 0; j < half; j++) {
            double co = c->rope_cos[k * half + j], si = c->rope_sin[k * half + j];
            double a = h[j], b = h[j + half];
            h[j] = (float)(a * co - b * si);
            h[j + half] = (float)(b * co + a * si);
        }
    }
}

/*
 * Rotate the RoPE rows of tokens [a, b) of s at one layer. With store 0 nothing is written: the
 * rotated rows are only checked to be storable (a rotation keeps each pair's norm, not each
 * value, so a value near the top of the storage range can leave it), and the result is the index
 * of the first token whose row is not, or −1.
 */
static int64_t rotate_range(mla_cache *c, const mla_cache_layer *L, const mla_cache_seq *s,
                            int64_t a, int64_t b, int store)
{
    int32_t k;
    int64_t i = mla__cache_seq_find(s, a, &k);
    for (int64_t t = a; t < b; t++, k++) {
        if (k == s->e[i].n) {
            i++;
            k = 0;
        }
        const mla_cache_entry *e = &s->e[i];
        unsigned char *row = mla__cache_block(c, e->block) + L->rope_off +
                             (size_t)(e->off + k) * L->rope_row_bytes;
        rotate_row(c, L, row);
        if (store)
            mla__cache_encode_rope(L->fmt.rope_dtype, c->rope_buf, L->fmt.rope_width, row);
        else if (mla__cache_check_values(c->rope_buf, L->fmt.rope_width, L->fmt.rope_dtype) >= 0)
            return t;
    }
    return -1;
}

MLA_API mla_status mla_cache_seq_shift(mla_cache *c, int32_t seq, int64_t p0, int64_t p1,
                                       int64_t delta)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_seq_shift");
    if (st != MLA_OK)
        return st;
    mla_cache_seq *s = &c->seqs[seq];
    int64_t a = p0 < 0 ? 0 : mla__cache_seq_lower(c, s, p0);
    int64_t b = p1 < 0 ? s->n_tokens : mla__cache_seq_lower(c, s, p1);
    if (a >= b || delta == 0)
        return MLA_OK;
    int64_t first = mla__cache_seq_pos(c, s, a), last = mla__cache_seq_pos(c, s, b - 1);
    if ((delta > 0 && last > INT64_MAX - delta) || (delta < 0 && first + delta < 0))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_seq_shift: sequence %d: positions %lld .. %lld shifted by "
                        "%lld leave the range 0 .. 2^63−1", (int)seq, (long long)first,
                        (long long)last, (long long)delta);
    if ((a > 0 && mla__cache_seq_pos(c, s, a - 1) >= first + delta) ||
        (b < s->n_tokens && mla__cache_seq_pos(c, s, b) <= last + delta))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_seq_shift: sequence %d: positions %lld .. %lld shifted by "
                        "%lld would pass tokens outside the range", (int)seq, (long long)first,
                        (long long)last, (long long)delta);
    /* every rotated row must be storable before anything changes */
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer *L = &c->layers[l];
        if (L->fmt.rope_width == 0)
            continue;
        angles(c, L, delta);
        int64_t bad = rotate_range(c, L, s, a, b, 0);
        if (bad >= 0)
            return mla_fail(MLA_ERR_NUMERICAL,
                            "mla_cache_seq_shift: sequence %d, layer %d: the RoPE part of "
                            "position %lld rotated by %lld positions leaves the range of %s",
                            (int)seq, (int)l, (long long)mla__cache_seq_pos(c, s, bad),
                            (long long)delta, mla_dtype_name(L->fmt.rope_dtype));
    }
    int32_t ka, kb;
    int64_t i0 = mla__cache_seq_find(s, a, &ka), i1 = mla__cache_seq_find(s, b - 1, &kb) + 1;
    if ((st = mla__cache_seq_prepare(c, seq, i0, i1, 0, 0)) != MLA_OK)
        return mla_fail_context(st, "mla_cache_seq_shift: ");
    for (int64_t i = i0; i < i1; i++) {
        const mla_cache_entry *e = &s->e[i];
        int32_t lo = i == i0 ? ka : 0, hi = i == i1 - 1 ? kb + 1 : e->n;
        int64_t *p = mla__cache_block_pos(c, e->block) + e->off;
        for (int32_t t = lo; t < hi; t++)
            p[t] += delta;
    }
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer *L = &c->layers[l];
        if (L->fmt.rope_width == 0)
            continue;
        angles(c, L, delta);
        rotate_range(c, L, s, a, b, 1);
    }
    return MLA_OK;
}

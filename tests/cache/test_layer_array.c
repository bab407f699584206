/*
 * mla_cache_params.layers is an array of the caller's mla_cache_layer_desc: its stride is
 * layers[0].struct_size. A caller built against a newer header (a longer desc) and one built
 * against an older header (a desc without mha_kv_dim) both get their layers read field for field,
 * the older one with mha_kv_dim at its default 0; an array whose elements disagree on struct_size
 * is refused, naming the element.
 */
#include <stddef.h>
#include <string.h>

#include <mla/mla.h>

#include "cache/internal.h"
#include "../tap.h"

#define NL 3

/* Per layer, distinct values, so that a wrong stride reads another layer's fields. */
static const int32_t LAT[NL] = {16, 8, 24};
static const int32_t HEADS[NL] = {1, 2, 0};
static const int32_t DIM[NL] = {4, 2, 0};
static const double SCALE[NL] = {1.0, 0.5, 0.25};
static const int32_t MHA[NL] = {64, 32, 48};
static const float FREQS[NL][2] = {{1.0f, 0.01f}, {0.5f, 0.25f}, {0, 0}};

/* What a caller built against a newer libmla would pass: more fields after ours. */
typedef struct newer_desc {
    mla_cache_layer_desc d;
    int64_t future_a;
    double future_b;
} newer_desc;

/* What a caller built against an older libmla, without mha_kv_dim, would pass. */
typedef struct older_desc {
    size_t struct_size;
    int32_t latent_dim;
    int32_t rope_heads;
    int32_t rope_dim;
    const float *rope_freqs;
    double rope_position_scale;
} older_desc;

_Static_assert(sizeof(older_desc) == offsetof(mla_cache_layer_desc, mha_kv_dim),
               "older_desc is the prefix of mla_cache_layer_desc up to mha_kv_dim");

static mla_cache_params params(const void *layers)
{
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = NL;
    p.layers = layers;
    p.latent_dtype = MLA_DTYPE_F32;
    p.rope_dtype = MLA_DTYPE_F32;
    p.block_tokens = 4;
    p.capacity_tokens = 16;
    p.n_seq_max = 2;
    return p;
}

static void fill(mla_cache_layer_desc *d, int l)
{
    d->latent_dim = LAT[l];
    d->rope_heads = HEADS[l];
    d->rope_dim = DIM[l];
    d->rope_freqs = DIM[l] ? FREQS[l] : NULL;
    d->rope_position_scale = SCALE[l];
}

/* The cache holds exactly the given layers: its internal per-layer copy, the accounting (bytes
 * per token by the formula of doc/cache.md, all F32) and a write/read round trip per layer with
 * that layer's widths. mha[l] is the mha_kv_dim expected. */
static int holds_layers(mla_cache *c, const int32_t *mha)
{
    int ok = c != NULL && c->n_layers == NL;
    int64_t bpt = 0, mha_bpt = 0;
    for (int l = 0; ok && l < NL; l++) {
        const mla_cache_layer *L = &c->layers[l];
        ok &= L->fmt.latent_dim == LAT[l] && L->rope_heads == HEADS[l] && L->rope_dim == DIM[l] &&
              L->pos_scale == SCALE[l] && L->mha_kv_dim == mha[l];
        for (int i = 0; ok && i < HEADS[l] * DIM[l] / 2; i++)
            ok &= L->freqs[i] == FREQS[l][i];
        bpt += 4 * (LAT[l] + HEADS[l] * DIM[l]);
        mha_bpt += 2 * 4 * mha[l];
    }
    mla_cache_stats st;
    ok = ok && mla_cache_get_stats(c, &st, sizeof st) == MLA_OK && st.bytes_per_token == bpt &&
         st.mha_bytes_per_token == mha_bpt;
    for (int l = 0; ok && l < NL; l++) {
        float lat[24], rope[4], lat_back[24], rope_back[4];
        for (int i = 0; i < 24; i++)
            lat[i] = (float)(100 * l + i);
        for (int i = 0; i < 4; i++)
            rope[i] = (float)(-100 * l - i);
        memset(rope_back, 0, sizeof rope_back);
        int w = HEADS[l] * DIM[l];
        ok &= mla_cache_write(c, l, 0, 0, 1, lat, w ? rope : NULL) == MLA_OK &&
              mla_cache_seq_read(c, l, 0, 0, 1, lat_back, rope_back, NULL) == MLA_OK &&
              memcmp(lat, lat_back, (size_t)LAT[l] * sizeof(float)) == 0 &&
              memcmp(rope, rope_back, (size_t)w * sizeof(float)) == 0;
    }
    return ok && mla__cache_check(c) == 0;
}

static void current(void)
{
    mla_cache_layer_desc L[NL];
    for (int l = 0; l < NL; l++) {
        mla_cache_layer_desc_default_params(&L[l], sizeof L[l]);
        fill(&L[l], l);
        L[l].mha_kv_dim = MHA[l];
    }
    mla_cache_params p = params(L);
    mla_cache *c = NULL;
    mla_clear_error();
    mla_status st = mla_cache_create(&p, &c);
    CHECK(st == MLA_OK && holds_layers(c, MHA), "descs of this header's size: every field of "
          "every layer read (%s)", mla_last_error());
    mla_cache_destroy(c);
}

static void newer(void)
{
    newer_desc L[NL];
    for (int l = 0; l < NL; l++) {
        /* A newer caller's default_params call passes its own, larger size. */
        mla_cache_layer_desc_default_params(&L[l].d, sizeof L[l]);
        fill(&L[l].d, l);
        L[l].d.mha_kv_dim = MHA[l];
        L[l].future_a = -1;
        L[l].future_b = 1e300;
    }
    CHECK(L[1].d.struct_size == sizeof(newer_desc) && L[1].d.rope_position_scale == SCALE[1],
          "default_params with a larger struct_size sets it");
    mla_cache_params p = params(&L[0].d);
    mla_cache *c = NULL;
    mla_clear_error();
    mla_status st = mla_cache_create(&p, &c);
    CHECK(st == MLA_OK && holds_layers(c, MHA),
          "larger element struct_size (%zu > %zu): stepped by it, extra fields ignored (%s)",
          sizeof(newer_desc), sizeof(mla_cache_layer_desc), mla_last_error());
    mla_cache_destroy(c);
}

static void older(void)
{
    older_desc L[NL];
    memset(L, 0, sizeof L);
    for (int l = 0; l < NL; l++) {
        L[l].struct_size = offsetof(mla_cache_layer_desc, mha_kv_dim);
        L[l].latent_dim = LAT[l];
        L[l].rope_heads = HEADS[l];
        L[l].rope_dim = DIM[l];
        L[l].rope_freqs = DIM[l] ? FREQS[l] : NULL;
        L[l].rope_position_scale = SCALE[l];
    }
    const int32_t zero[NL] = {0, 0, 0};
    mla_cache_params p = params(L);
    mla_cache *c = NULL;
    mla_clear_error();
    mla_status st = mla_cache_create(&p, &c);
    CHECK(st == MLA_OK && holds_layers(c, zero),
          "smaller element struct_size (%zu): stepped by it, mha_kv_dim takes its default 0 (%s)",
          sizeof(older_desc), mla_last_error());
    mla_cache_destroy(c);
}

static void mixed(void)
{
    mla_cache_layer_desc L[NL];
    for (int l = 0; l < NL; l++) {
        mla_cache_layer_desc_default_params(&L[l], sizeof L[l]);
        fill(&L[l], l);
    }
    mla_cache *sentinel = (mla_cache *)&L, *c = sentinel;
    L[1].struct_size = offsetof(mla_cache_layer_desc, mha_kv_dim);
    mla_cache_params p = params(L);
    mla_status st = mla_cache_create(&p, &c);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
          strstr(mla_last_error(), "layers[1].struct_size"),
          "an element whose struct_size differs from layers[0]'s refused: %s", mla_last_error());
    L[1].struct_size = sizeof L[1];
    L[2].struct_size = sizeof L[2] + 8;
    st = mla_cache_create(&p, &c);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
          strstr(mla_last_error(), "layers[2].struct_size"),
          "a larger one too, named by its index: %s", mla_last_error());
    L[2].struct_size = sizeof L[2];
    L[0].struct_size = 0;
    st = mla_cache_create(&p, &c);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
          strstr(mla_last_error(), "layers[0].struct_size"),
          "layers[0].struct_size 0 (never set) refused: %s", mla_last_error());
    L[0].struct_size = sizeof L[0];
    st = mla_cache_create(&p, &c);
    CHECK(st == MLA_OK && c != sentinel, "the same array with consistent sizes is accepted");
    if (st == MLA_OK)
        mla_cache_destroy(c);
}

static void defaults(void)
{
    mla_cache_layer_desc d;
    memset(&d, 0x5a, sizeof d);
    mla_status st = mla_cache_layer_desc_default_params(&d, sizeof d);
    CHECK(st == MLA_OK && d.struct_size == sizeof d && d.latent_dim == 0 && d.rope_heads == 0 &&
          d.rope_dim == 0 && d.rope_freqs == NULL && d.rope_position_scale == 1.0 &&
          d.mha_kv_dim == 0, "default_params: zeros, rope_position_scale 1");
    /* A shorter struct_size writes only its prefix. */
    mla_cache_layer_desc s;
    memset(&s, 0x5a, sizeof s);
    size_t n = offsetof(mla_cache_layer_desc, rope_freqs);
    st = mla_cache_layer_desc_default_params(&s, n);
    const unsigned char *bytes = (const unsigned char *)&s;
    int untouched = 1;
    for (size_t i = n; i < sizeof s; i++)
        untouched &= bytes[i] == 0x5a;
    CHECK(st == MLA_OK && untouched, "default_params writes no byte past struct_size %zu", n);
    CHECK(mla_cache_layer_desc_default_params(NULL, sizeof d) == MLA_ERR_INVALID_ARGUMENT &&
          mla_cache_layer_desc_default_params(&d, 2) == MLA_ERR_INVALID_ARGUMENT,
          "default_params: NULL and struct_size 2 refused");
}

int main(void)
{
    defaults();
    current();
    newer();
    older();
    mixed();
    return tap_done();
}

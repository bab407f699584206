/*
 * The cache's API contract: parameter checking with messages naming the field, out-pointers
 * untouched on failure, destroy(NULL), capacity in tokens and bytes, reserved slots reading as
 * zeros, write rules (fill reserved slots, append after the last), sharing without copying and
 * copy-on-write with its accounting, positions at INT64_MAX, and concurrent writers on distinct
 * sequences (that share blocks, with a reader of another sharing sequence) agreeing with a
 * sequential run.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include <mla/mla.h>

#include "cache/internal.h"
#include "../tap.h"

static const float freqs[2] = {1.0f, 0.01f};

static mla_cache_layer_desc layer(int latent, int heads, int dim)
{
    mla_cache_layer_desc d;
    mla_cache_layer_desc_default_params(&d, sizeof d);
    d.latent_dim = latent;
    d.rope_heads = heads;
    d.rope_dim = dim;
    d.rope_freqs = freqs;
    d.mha_kv_dim = 64;
    return d;
}

static mla_cache_params params(const mla_cache_layer_desc *l, int n)
{
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = n;
    p.layers = l;
    p.latent_dtype = MLA_DTYPE_F32;
    p.rope_dtype = MLA_DTYPE_F32;
    p.block_tokens = 4;
    p.capacity_tokens = 64;
    p.n_seq_max = 8;
    return p;
}

static void bad_params(void)
{
    mla_cache_layer_desc L[1] = {layer(16, 1, 4)};
    mla_cache *sentinel = (mla_cache *)&L, *c = sentinel;
    struct { const char *field; mla_cache_params p; } cases[16];
    int n = 0;
    mla_cache_params p = params(L, 1);
#define CASE(name, stmt) do { cases[n].field = name; cases[n].p = p; { mla_cache_params *q = \
        &cases[n].p; stmt; } n++; } while (0)
    CASE("n_layers", q->n_layers = 0);
    CASE("layers", q->layers = NULL);
    CASE("latent_dtype", q->latent_dtype = MLA_DTYPE_I32);
    CASE("rope_dtype", q->rope_dtype = MLA_DTYPE_I8);
    CASE("quant_group", (q->latent_dtype = MLA_DTYPE_I8, q->quant_group = -1));
    CASE("multiple of quant_group", (q->latent_dtype = MLA_DTYPE_I8, q->quant_group = 5));
    CASE("even for i4", (q->latent_dtype = MLA_DTYPE_I4, q->quant_group = 1));
    CASE("block_tokens", q->block_tokens = 0);
    CASE("n_seq_max", q->n_seq_max = 0);
    CASE("capacity_tokens", (q->capacity_tokens = 0, q->capacity_bytes = 0));
    CASE("capacity_bytes", (q->capacity_tokens = 0, q->capacity_bytes = 10));
    CASE("struct_size", q->struct_size = 3);
    for (int i = 0; i < n; i++) {
        mla_status st = mla_cache_create(&cases[i].p, &c);
        CHECK(st == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
              strstr(mla_last_error(), cases[i].field),
              "bad %s refused, out untouched: %s", cases[i].field, mla_last_error());
    }
    static const float nan_freqs[2] = {1.0f, NAN};
    mla_cache_layer_desc bad[9] = {layer(0, 1, 4), layer(16, 1, 3), layer(16, 0, 4),
                                   layer(16, 1, 4), layer(16, 1, 4), layer(16, 1, 4),
                                   layer(16, 1, 4), layer((1 << 24) + 1, 1, 4), layer(16, 4096, 8192)};
    bad[3].rope_freqs = NULL;
    bad[4].rope_position_scale = -1;
    bad[5].rope_freqs = nan_freqs;
    bad[6].mha_kv_dim = -1;
    /* Each message names the field, and where there is a range, the range. */
    const char *what[9] = {"latent_dim is 0, expected 1 .. 16777216", "rope_dim", "rope_heads",
                           "rope_freqs", "rope_position_scale", "rope_freqs[1] is not finite",
                           "mha_kv_dim is -1, expected 0 .. 16777216",
                           "latent_dim is 16777217, expected 1 .. 16777216",
                           "at most 16777216 values a token"};
    for (int i = 0; i < 9; i++) {
        mla_cache_layer_desc two[2] = {layer(16, 1, 4), bad[i]};
        mla_cache_params q = params(two, 2);
        mla_status st = mla_cache_create(&q, &c);
        CHECK(st == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
              strstr(mla_last_error(), "layer 1") && strstr(mla_last_error(), what[i]),
              "bad %s of layer 1 refused: %s", what[i], mla_last_error());
    }
    mla_cache_params huge = p;
    huge.n_layers = 1 << 30;
    CHECK(mla_cache_create(&huge, &c) == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
              strstr(mla_last_error(), "n_layers is 1073741824, expected 1 .. 16777216"),
          "too many layers refused, the limit named: %s", mla_last_error());
    huge = p;
    huge.capacity_tokens = INT64_MAX;
    CHECK(mla_cache_create(&huge, &c) == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
              strstr(mla_last_error(), "do not fit in memory"),
          "a capacity beyond memory refused: %s", mla_last_error());
    CHECK(mla_cache_create(NULL, &c) == MLA_ERR_INVALID_ARGUMENT, "NULL params refused");
    CHECK(mla_cache_create(&p, NULL) == MLA_ERR_INVALID_ARGUMENT, "NULL out refused");
    mla_cache_destroy(NULL);
    CHECK(1, "mla_cache_destroy(NULL) is a no-op");
}

/* The group quant_group 0 picks: stats report it, the stored bytes and the quantization use it. */
static int auto_group(mla_dtype t, const int *widths, int n, int32_t *group)
{
    mla_cache_layer_desc L[3];
    for (int i = 0; i < n; i++)
        L[i] = layer(widths[i], 1, 4);
    mla_cache_params p = params(L, n);
    p.latent_dtype = t;
    p.quant_group = 0;
    mla_cache *c = NULL;
    mla_cache_stats st;
    if (mla_cache_create(&p, &c) != MLA_OK)
        return 0;
    mla_cache_get_stats(c, &st, sizeof st);
    *group = st.quant_group;
    /* bytes a token as the cache's layout says (latent + f32 scales + f32 RoPE part of 4) */
    int64_t bits = t == MLA_DTYPE_I8 ? 8 : t == MLA_DTYPE_I4 ? 4 : 16;
    int64_t want = 0;
    for (int i = 0; i < n; i++)
        want += widths[i] * bits / 8 + (st.quant_group ? widths[i] / st.quant_group * 4 : 0) + 16;
    int ok = st.bytes_per_token == want;
    mla_cache_destroy(c);
    return ok;
}

static void quant_group_auto(void)
{
    static const struct { mla_dtype t; int w[3], n; int32_t group; } cases[] = {
        {MLA_DTYPE_I8, {64, 96}, 2, 32},        /* 32 where it divides them all, as before */
        {MLA_DTYPE_I8, {24}, 1, 8},             /* SmolLM-135M d_kv 8 */
        {MLA_DTYPE_I8, {48, 96, 40}, 3, 8},     /* the largest dividing every layer */
        {MLA_DTYPE_I8, {15}, 1, 1},
        {MLA_DTYPE_I4, {48}, 1, 16},
        {MLA_DTYPE_I4, {6, 64}, 2, 2},
        {MLA_DTYPE_F16, {24}, 1, 0},            /* not quantized: no group */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t g = -1;
        int ok = auto_group(cases[i].t, cases[i].w, cases[i].n, &g);
        CHECK(ok && g == cases[i].group, "quant_group 0, %s latents of %d%s%s: group %d (want %d), "
              "bytes per token to match", mla_dtype_name(cases[i].t), cases[i].w[0],
              cases[i].n > 1 ? ", .." : "", ok ? "" : " (bytes differ)", (int)g,
              (int)cases[i].group);
    }
    /* I4 needs an even group: an odd width is refused, naming its layer */
    mla_cache_layer_desc L[2] = {layer(16, 1, 4), layer(15, 1, 4)};
    mla_cache_params p = params(L, 2);
    p.latent_dtype = MLA_DTYPE_I4;
    p.quant_group = 0;
    mla_cache *sentinel = (mla_cache *)&L, *c = sentinel;
    CHECK(mla_cache_create(&p, &c) == MLA_ERR_INVALID_ARGUMENT && c == sentinel &&
          strstr(mla_last_error(), "layer 1") && strstr(mla_last_error(), "latent_dim 15"),
          "i4 with an odd latent_dim and quant_group 0 refused: %s", mla_last_error());
    /* The chosen group is the one quantized by: groups of 8 over a 24-wide latent keep a group
     * of small values that one scale for all 24 (or 12) would round to zero. */
    mla_cache_layer_desc one[1] = {layer(24, 1, 4)};
    p = params(one, 1);
    p.latent_dtype = MLA_DTYPE_I8;
    p.quant_group = 0;
    c = NULL;
    float lat[24], rope[4] = {0}, back[24];
    for (int i = 0; i < 24; i++)
        lat[i] = (i < 8 ? 1000.0f : i < 16 ? 1.0f : 0.001f) * (float)(i % 8 - 3);
    double worst = 0;
    if (mla_cache_create(&p, &c) == MLA_OK && mla_cache_write(c, 0, 0, 0, 1, lat, rope) == MLA_OK &&
        mla_cache_seq_read(c, 0, 0, 0, 1, back, NULL, NULL) == MLA_OK)
        for (int i = 0; i < 24; i++) {
            double amax = i < 8 ? 4000.0 : i < 16 ? 4.0 : 0.004; /* the group's max |x| */
            double e = fabs((double)back[i] - lat[i]) / amax;
            worst = e > worst || e != e ? e : worst;
        }
    else
        worst = 1;
    CHECK(worst <= 0.5 / 127 + 1e-6, "i8, quant_group 0 over 24 values: each group of 8 within "
          "half a step of its own scale (worst %.2e of its max)", worst);
    mla_cache_destroy(c);
}

static void capacity(void)
{
    mla_cache_layer_desc L[1] = {layer(16, 1, 4)};
    mla_cache_params p = params(L, 1);
    mla_cache *c = NULL;
    mla_cache_stats st;
    p.capacity_tokens = 10; /* rounded up to 3 blocks of 4 */
    mla_cache_create(&p, &c);
    mla_cache_get_stats(c, &st, sizeof st);
    CHECK(st.blocks_total == 3 && st.capacity_tokens == 12 && st.blocks_free == 3,
          "capacity_tokens 10 -> 3 blocks of 4 tokens");
    CHECK(st.bytes_per_token == 16 * 4 + 4 * 4 && st.block_bytes >= 4 * (80 + 8) &&
          st.block_bytes % 64 == 0, "bytes per token %lld, block %lld bytes",
          (long long)st.bytes_per_token, (long long)st.block_bytes);
    int64_t block_bytes = st.block_bytes;
    mla_cache_destroy(c);
    p.capacity_tokens = 0;
    p.capacity_bytes = 5 * block_bytes - 1; /* rounded down to 4 blocks */
    mla_cache_create(&p, &c);
    mla_cache_get_stats(c, &st, sizeof st);
    CHECK(st.blocks_total == 4, "capacity_bytes 5 blocks − 1 byte -> 4 blocks");

    float lat[16 * 20], rope[4 * 20];
    for (int i = 0; i < 16 * 20; i++)
        lat[i] = (float)i;
    for (int i = 0; i < 4 * 20; i++)
        rope[i] = (float)-i;
    CHECK(mla_cache_write(c, 0, 0, 0, 17, lat, rope) == MLA_ERR_CAPACITY,
          "17 tokens in 16 slots: CAPACITY (%s)", mla_last_error());
    int64_t len = -1;
    mla_cache_seq_length(c, 0, &len);
    mla_cache_get_stats(c, &st, sizeof st);
    CHECK(len == 0 && st.blocks_free == 4, "nothing reserved by the failed write");
    CHECK(mla_cache_write(c, 0, 0, 0, 16, lat, rope) == MLA_OK, "16 tokens fit");
    CHECK(mla_cache_reserve(c, 1, 0, 1) == MLA_ERR_CAPACITY, "then a reserve: CAPACITY");
    mla_cache_get_stats(c, &st, sizeof st);
    CHECK(st.blocks_free == 0 && st.tokens_used == 16 && st.bytes_used == 4 * block_bytes,
          "accounting when full: %lld tokens, %lld bytes", (long long)st.tokens_used,
          (long long)st.bytes_used);
    /* fork shares, writing into the shared part needs a copy, and there is no room for it */
    CHECK(mla_cache_seq_fork(c, 0, 1) == MLA_OK, "fork of a full cache needs no block");
    CHECK(mla_cache_write(c, 0, 1, 5, 1, lat, rope) == MLA_ERR_CAPACITY,
          "writing into a shared block of a full cache: CAPACITY (copy-on-write)");
    float back[16];
    mla_cache_seq_read(c, 0, 0, 5, 1, back, NULL, NULL);
    CHECK(back[0] == 80.0f, "source intact");
    mla_cache_seq_rm(c, 0, 8, -1); /* seq 1 still holds those blocks */
    mla_cache_get_stats(c, &st, sizeof st);
    CHECK(st.blocks_free == 0, "blocks still referenced by seq 1 stay in use");
    mla_cache_seq_rm(c, 1, 8, -1);
    mla_cache_get_stats(c, &st, sizeof st);
    CHECK(st.blocks_free == 2 && st.tokens_used == 8, "freed once both dropped them");
    CHECK(mla_cache_write(c, 0, 1, 5, 1, lat + 16 * 19, rope) == MLA_OK,
          "now the copy-on-write succeeds");
    mla_cache_get_stats(c, &st, sizeof st);
    mla_cache_seq_read(c, 0, 0, 5, 1, back, NULL, NULL);
    float back1[16];
    mla_cache_seq_read(c, 0, 1, 5, 1, back1, NULL, NULL);
    CHECK(st.blocks_free == 1 && back[0] == 80.0f && back1[0] == 16.0f * 19,
          "one block copied; seq 0 keeps its value, seq 1 has the new one");
    mla_cache_destroy(c);
}

static void write_rules(void)
{
    mla_cache_layer_desc L[2] = {layer(8, 1, 2), layer(4, 0, 0)};
    mla_cache_params p = params(L, 2);
    mla_cache *c = NULL;
    mla_cache_create(&p, &c);
    float lat[8 * 8], rope[2 * 8], back[8 * 8], rback[2 * 8];
    int64_t pos[8];
    for (int i = 0; i < 64; i++)
        lat[i] = 1.0f + (float)i;
    for (int i = 0; i < 16; i++)
        rope[i] = 0.5f + (float)i;
    CHECK(mla_cache_reserve(c, 0, 10, 3) == MLA_OK, "reserve 3 slots at 10");
    mla_cache_seq_read(c, 0, 0, 0, 3, back, rback, pos);
    int zeros = 1;
    for (int i = 0; i < 24; i++)
        zeros &= back[i] == 0.0f;
    for (int i = 0; i < 6; i++)
        zeros &= rback[i] == 0.0f;
    CHECK(zeros && pos[0] == 10 && pos[2] == 12, "reserved slots read as zeros at 10, 11, 12");
    CHECK(mla_cache_write(c, 0, 0, 11, 4, lat, rope) == MLA_OK,
          "write 11..14: fills 11, 12 and appends 13, 14");
    mla_cache_seq_read(c, 0, 0, 0, 5, back, rback, pos);
    CHECK(pos[4] == 14 && back[8] == 1.0f && back[4 * 8 + 7] == 32.0f && back[0] == 0.0f,
          "contents in place");
    CHECK(mla_cache_write(c, 1, 0, 10, 5, lat, NULL) == MLA_OK,
          "layer 1 (no RoPE part) takes rope NULL");
    CHECK(mla_cache_write(c, 0, 0, 16, 1, lat, rope) == MLA_ERR_INVALID_ARGUMENT,
          "new positions must follow the last directly: %s", mla_last_error());
    CHECK(mla_cache_reserve(c, 0, 16, 1) == MLA_OK &&
          mla_cache_write(c, 0, 0, 16, 1, lat, rope) == MLA_OK,
          "a gap goes through mla_cache_reserve, then the write fills the slot");
    CHECK(mla_cache_write(c, 0, 0, 15, 1, lat, rope) == MLA_ERR_INVALID_ARGUMENT,
          "a position inside the sequence that is not reserved: %s", mla_last_error());
    CHECK(mla_cache_write(c, 0, 0, 14, 2, lat, rope) == MLA_ERR_INVALID_ARGUMENT,
          "a run that crosses the gap is refused");
    CHECK(mla_cache_reserve(c, 0, 16, 1) == MLA_ERR_INVALID_ARGUMENT,
          "reserve not after the last position refused");
    mla_cache_stats gs;
    mla_status g1 = mla_cache_get_stats(NULL, &gs, sizeof gs);
    int n1 = strstr(mla_last_error(), "cache is NULL") != NULL;
    mla_status g2 = mla_cache_get_stats(c, NULL, sizeof gs);
    int n2 = strstr(mla_last_error(), "stats is NULL") != NULL;
    mla_status g3 = mla_cache_get_stats(c, &gs, 3);
    int n3 = strstr(mla_last_error(), "struct_size is 3") != NULL;
    CHECK(g1 == MLA_ERR_INVALID_ARGUMENT && g2 == MLA_ERR_INVALID_ARGUMENT &&
              g3 == MLA_ERR_INVALID_ARGUMENT && n1 && n2 && n3,
          "mla_cache_get_stats refuses a NULL cache, NULL stats and a struct_size too small "
          "for its own field, each by name");
    /* Written prefixes: layer 0 skipped slot 10 (reserved, never written), layer 1 wrote
     * 10..14; writing 10 in layer 0 extends its prefix by that write only. */
    int64_t w0 = -1, w1 = -1;
    mla_cache_seq_written(c, 0, 0, &w0);
    mla_cache_seq_written(c, 1, 0, &w1);
    CHECK(w0 == 0 && w1 == 5, "written prefixes: layer 0 %lld (slot 10 unwritten), layer 1 %lld",
          (long long)w0, (long long)w1);
    mla_status sw = mla_cache_write(c, 0, 0, 10, 1, lat, rope);
    if (sw == MLA_OK)
        sw = mla_cache_seq_written(c, 0, 0, &w0);
    CHECK(sw == MLA_OK && w0 == 1,
          "writing slot 10 in layer 0: prefix %lld (the write's end, not past it)",
          (long long)w0);
    int64_t wv = 77;
    CHECK(mla_cache_seq_written(c, 2, 0, &wv) == MLA_ERR_INVALID_ARGUMENT &&
              mla_cache_seq_written(c, 0, 8, &wv) == MLA_ERR_INVALID_ARGUMENT &&
              mla_cache_seq_written(c, 0, 0, NULL) == MLA_ERR_INVALID_ARGUMENT &&
              mla_cache_seq_written(NULL, 0, 0, &wv) == MLA_ERR_INVALID_ARGUMENT && wv == 77,
          "seq_written: unknown layer or sequence, NULL refused, output untouched");
    CHECK(mla_cache_write(c, 0, 0, 0, 1, NULL, rope) == MLA_ERR_INVALID_ARGUMENT &&
          mla_cache_write(c, 0, 0, 17, 1, lat, NULL) == MLA_ERR_INVALID_ARGUMENT &&
          mla_cache_write(c, 2, 0, 17, 1, lat, rope) == MLA_ERR_INVALID_ARGUMENT &&
          mla_cache_write(c, 0, 8, 17, 1, lat, rope) == MLA_ERR_INVALID_ARGUMENT &&
          mla_cache_write(c, 0, 0, -1, 1, lat, rope) == MLA_ERR_INVALID_ARGUMENT,
          "NULL data, unknown layer or sequence, negative position refused");
    int64_t v = 77;
    CHECK(mla_cache_seq_pos_max(c, 9, &v) == MLA_ERR_INVALID_ARGUMENT && v == 77,
          "pos_max of an unknown sequence: out untouched");
    mla_cache_seq_pos_min(c, 0, &v);
    CHECK(v == 10, "pos_min 10");
    mla_cache_seq_pos_max(c, 3, &v);
    CHECK(v == -1, "empty sequence: pos_max −1");
    CHECK(mla_cache_seq_read(c, 0, 0, 5, 2, back, NULL, NULL) == MLA_ERR_INVALID_ARGUMENT,
          "reading past the end refused");
    CHECK(mla_cache_clear(c) == MLA_OK && mla__cache_check(c) == 0, "clear");
    mla_cache_seq_length(c, 0, &v);
    CHECK(v == 0, "clear empties every sequence");
    mla_cache_destroy(c);
}

/* Positions at the top of the int64 range: a shift may move a token to INT64_MAX, and writes and
 * reads around it must not overflow (UBSan) or misread. */
static void extreme_positions(void)
{
    mla_cache_layer_desc L[1] = {layer(8, 1, 2)};
    mla_cache_params p = params(L, 1);
    mla_cache *c = NULL;
    mla_cache_create(&p, &c);
    float lat[8 * 2], rope[2 * 2], back[8 * 2];
    int64_t pos[2];
    for (int i = 0; i < 16; i++)
        lat[i] = (float)(i + 1);
    for (int i = 0; i < 4; i++)
        rope[i] = 0.0f; /* zeros: unchanged by any rotation */
    mla_cache_write(c, 0, 0, 0, 2, lat, rope);
    CHECK(mla_cache_seq_shift(c, 0, 1, -1, INT64_MAX - 1) == MLA_OK,
          "shift of the second token to position INT64_MAX: %s", mla_last_error());
    for (int i = 0; i < 8; i++)
        lat[i] = 100.0f + (float)i;
    mla_status st = mla_cache_write(c, 0, 0, 0, 1, lat, rope);
    int ok = st == MLA_OK &&
             mla_cache_seq_read(c, 0, 0, 0, 2, back, NULL, pos) == MLA_OK && pos[0] == 0 &&
             pos[1] == INT64_MAX && back[0] == 100.0f && back[8] == 9.0f;
    CHECK(ok, "rewriting position 0 of a sequence whose last position is INT64_MAX (%s)",
          st == MLA_OK ? "ok" : mla_last_error());
    CHECK(mla_cache_write(c, 0, 0, 1, 2, lat, rope) == MLA_ERR_INVALID_ARGUMENT,
          "positions 1, 2 are not reserved there: %s", mla_last_error());
    CHECK(mla_cache_seq_read(c, 0, 0, INT64_MAX, INT64_MAX, back, NULL, NULL) ==
              MLA_ERR_INVALID_ARGUMENT,
          "a read of INT64_MAX tokens from index INT64_MAX is refused: %s", mla_last_error());
    CHECK(mla__cache_check(c) == 0, "invariants hold after them");
    mla_cache_destroy(c);
}

/* ---- concurrent writers ------------------------------------------------------------------ */

#define NT 4
#define PREFIX 10
#define STEPS 40
static mla_cache *shared_cache;

static void token(int seq, int t, float *lat, float *rope)
{
    for (int i = 0; i < 8; i++)
        lat[i] = (float)(seq * 1000 + t * 10 + i);
    for (int i = 0; i < 2; i++)
        rope[i] = (float)(seq * 1000 + t * 10 + i) * 0.5f;
}

/* Each thread appends to its own sequence, and rewrites a token of the shared prefix (forcing
 * copy-on-write of blocks other threads are copying or reading at the same time). */
static void *writer(void *arg)
{
    int seq = (int)(intptr_t)arg;
    float lat[8], rope[2];
    for (int t = PREFIX; t < PREFIX + STEPS; t++) {
        token(seq, t, lat, rope);
        for (int l = 0; l < 2; l++)
            if (mla_cache_write(shared_cache, l, seq, t, 1, lat, rope) != MLA_OK)
                return (void *)1;
        if (t % 7 == 0) {
            int u = (t / 7) % PREFIX;
            token(seq, u, lat, rope);
            if (mla_cache_write(shared_cache, 0, seq, u, 1, lat, rope) != MLA_OK ||
                mla_cache_write(shared_cache, 1, seq, u, 1, lat, rope) != MLA_OK)
                return (void *)1;
        }
    }
    return NULL;
}

/* A reader of a sequence that shares the prefix with every writer, while they copy-on-write:
 * it must always read the prefix as written (a shared block is never written in place). */
static int writers_done;

static void *reader(void *arg)
{
    (void)arg;
    float lat[8], rope[2], back[8 * PREFIX], rb[2 * PREFIX];
    int64_t pos[PREFIX];
    long bad = 0;
    do {
        if (mla_cache_seq_read(shared_cache, 1, NT, 0, PREFIX, back, rb, pos) != MLA_OK)
            return (void *)1;
        for (int t = 0; t < PREFIX; t++) {
            token(99, t, lat, rope);
            bad += pos[t] != t || memcmp(&back[8 * t], lat, sizeof lat) != 0 ||
                   memcmp(&rb[2 * t], rope, sizeof rope) != 0;
        }
    } while (!__atomic_load_n(&writers_done, __ATOMIC_ACQUIRE));
    return bad ? (void *)1 : NULL;
}

static void concurrent(void)
{
    mla_cache_layer_desc L[2] = {layer(8, 1, 2), layer(8, 1, 2)};
    mla_cache_params p = params(L, 2);
    p.capacity_tokens = 4 * 100;
    int ok = 1, rounds = 20;
    for (int round = 0; round < rounds && ok; round++) {
        mla_cache_create(&p, &shared_cache);
        float lat[8], rope[2];
        for (int t = 0; t < PREFIX; t++) {
            token(99, t, lat, rope);
            mla_cache_write(shared_cache, 0, 0, t, 1, lat, rope);
            mla_cache_write(shared_cache, 1, 0, t, 1, lat, rope);
        }
        for (int s = 1; s <= NT; s++)
            mla_cache_seq_fork(shared_cache, 0, s);
        pthread_t th[NT], rd;
        __atomic_store_n(&writers_done, 0, __ATOMIC_RELEASE);
        pthread_create(&rd, NULL, reader, NULL);
        for (int s = 0; s < NT; s++)
            pthread_create(&th[s], NULL, writer, (void *)(intptr_t)s);
        for (int s = 0; s < NT; s++) {
            void *r;
            pthread_join(th[s], &r);
            ok &= r == NULL;
        }
        __atomic_store_n(&writers_done, 1, __ATOMIC_RELEASE);
        void *r;
        pthread_join(rd, &r);
        ok &= r == NULL;
        ok &= mla__cache_check(shared_cache) == 0;
        /* expected: prefix tokens rewritten by this sequence hold its values, the others 99's */
        for (int s = 0; s < NT && ok; s++) {
            int mine[PREFIX] = {0};
            for (int t = PREFIX; t < PREFIX + STEPS; t++)
                if (t % 7 == 0)
                    mine[(t / 7) % PREFIX] = 1;
            for (int l = 0; l < 2; l++) {
                float back[8 * (PREFIX + STEPS)], rb[2 * (PREFIX + STEPS)];
                mla_cache_seq_read(shared_cache, l, s, 0, PREFIX + STEPS, back, rb, NULL);
                for (int t = 0; t < PREFIX + STEPS; t++) {
                    token(t < PREFIX && !mine[t] ? 99 : s, t, lat, rope);
                    ok &= memcmp(&back[8 * t], lat, sizeof lat) == 0 &&
                          memcmp(&rb[2 * t], rope, sizeof rope) == 0;
                }
            }
        }
        mla_cache_destroy(shared_cache);
    }
    CHECK(ok, "%d writer threads on distinct sequences sharing a prefix, and a reader of another "
          "sequence sharing it, %d rounds: contents and invariants as if sequential", NT, rounds);
}

int main(void)
{
    mla_cache_params d;
    CHECK(mla_cache_default_params(&d, sizeof d) == MLA_OK && d.latent_dtype == MLA_DTYPE_F16 &&
          d.rope_dtype == MLA_DTYPE_F16 && d.block_tokens == 64 && d.quant_group == 0 &&
          d.n_seq_max == 64 && d.struct_size == sizeof d, "defaults");
    bad_params();
    quant_group_auto();
    capacity();
    write_rules();
    extreme_positions();
    concurrent();
    return tap_done();
}

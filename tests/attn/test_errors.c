/*
 * Bad input gives a status, a message, and leaves everything as it was: nothing appended to the
 * cache (length and last position unchanged) and out untouched. Cases: unknown sequence, position
 * gap, repeated position, negative position, NaN/Inf input, a full cache (also when only the
 * second sequence of the batch overflows it), a layer that does not match the cache layer
 * (widths, or the RoPE description mla_cache_seq_shift rotates with), finite input that
 * overflows inside the layer, NULL arguments, overlapping out and x, bad parameters.
 */
#include "run.h"

#define D 32

static mla_cache *cache;
static mla_attn *attn;
static mla_layer *layer;

static void lengths(int64_t *len, int64_t *pmax)
{
    for (int s = 0; s < 3; s++) {
        mla_cache_seq_length(cache, s, &len[s]);
        mla_cache_seq_pos_max(cache, s, &pmax[s]);
    }
}

/* Run a batch expected to fail with `want`; check nothing changed. */
static void expect_fail(const char *what, mla_status want, const float *x, int n,
                        const int32_t *seq, const int64_t *pos)
{
    int64_t len0[3], pmax0[3], len1[3], pmax1[3];
    lengths(len0, pmax0);
    float out[8 * D];
    for (int i = 0; i < 8 * D; i++)
        out[i] = 1234.5f;
    mla_clear_error();
    mla_status st = mla_attn_forward(attn, layer, cache, 0, x, n, seq, pos, out);
    CHECK(st == want, "%s: %s (want %s): %s", what, mla_status_string(st),
          mla_status_string(want), mla_last_error());
    CHECK(st == MLA_OK || mla_last_error()[0] != '\0', "%s: the failure has a message", what);
    lengths(len1, pmax1);
    int same = 1;
    for (int s = 0; s < 3; s++)
        same &= len0[s] == len1[s] && pmax0[s] == pmax1[s];
    CHECK(same, "%s: nothing appended (lengths %lld %lld %lld)", what, (long long)len1[0],
          (long long)len1[1], (long long)len1[2]);
    int untouched = 1;
    for (int i = 0; i < 8 * D; i++)
        untouched &= out[i] == 1234.5f;
    CHECK(untouched, "%s: out untouched", what);
}

int main(void)
{
    src_layer src;
    src_init(&src, D, 4, 2, 8, 0, 7);
    layer = convert(&src, 4, 4, MLA_FACTOR_JOINT);
    CHECK(layer != NULL, "conversion");
    if (!layer)
        return tap_done();
    /* 3 sequences, 64 token slots in blocks of 16. */
    cache = make_cache(&layer, 1, MLA_DTYPE_F16, MLA_DTYPE_F16, 64, 16);
    attn = make_attn(1, MLA_ATTN_PATH_AUTO);
    CHECK(cache && attn, "cache and attn");
    unsigned long long seed = 3;
    float *x = rand_floats(64 * D, &seed, 1.0);
    float out[64 * D];
    int32_t seq[64];
    int64_t pos[64];
    for (int i = 0; i < 64; i++) {
        seq[i] = 0;
        pos[i] = i;
    }
    CHECK(mla_attn_forward(attn, layer, cache, 0, x, 10, seq, pos, out) == MLA_OK,
          "prefill of 10 tokens in sequence 0");

    int32_t s1[2] = {0, 0};
    int64_t p1[2] = {11, 12};
    expect_fail("position gap after the last", MLA_ERR_INVALID_ARGUMENT, x, 2, s1, p1);
    int64_t p2[2] = {10, 12};
    expect_fail("position gap inside the batch", MLA_ERR_INVALID_ARGUMENT, x, 2, s1, p2);
    int64_t p3[2] = {10, 10};
    expect_fail("repeated position", MLA_ERR_INVALID_ARGUMENT, x, 2, s1, p3);
    int64_t p4[1] = {-1};
    expect_fail("negative position", MLA_ERR_INVALID_ARGUMENT, x, 1, s1, p4);
    int32_t s5[2] = {1, 99};
    int64_t p5[2] = {0, 0};
    expect_fail("unknown sequence", MLA_ERR_INVALID_ARGUMENT, x, 2, s5, p5);
    int32_t s6[1] = {-2};
    expect_fail("negative sequence id", MLA_ERR_INVALID_ARGUMENT, x, 1, s6, p5);

    float xn[2 * D];
    memcpy(xn, x, sizeof xn);
    xn[D + 5] = NAN;
    int32_t s7[2] = {0, 1};
    int64_t p7[2] = {10, 0};
    expect_fail("NaN input", MLA_ERR_NUMERICAL, xn, 2, s7, p7);
    CHECK(strstr(mla_last_error(), "token 1") && strstr(mla_last_error(), "column 5"),
          "NaN input: the message names token and column (%s)", mla_last_error());
    xn[D + 5] = INFINITY;
    expect_fail("Inf input", MLA_ERR_NUMERICAL, xn, 2, s7, p7);

    /* 64 slots: sequence 0 holds 10 (one block of 16 used), 48 remain; sequence 1 asks for 50. */
    int32_t s8[51];
    int64_t p8[51];
    for (int i = 0; i < 51; i++) {
        s8[i] = 1;
        p8[i] = i;
    }
    expect_fail("cache full", MLA_ERR_CAPACITY, x, 50, s8, p8);
    /* Sequence 2 fits (17 tokens), sequence 1 then does not: the first write is undone. */
    for (int i = 0; i < 51; i++) {
        s8[i] = i < 17 ? 2 : 1;
        p8[i] = i < 17 ? i : i - 17;
    }
    expect_fail("cache full at the second sequence", MLA_ERR_CAPACITY, x, 51, s8, p8);

    /* A layer of another shape than the cache layer. */
    src_layer src2;
    src_init(&src2, D, 4, 2, 8, 0, 8);
    mla_layer *other = convert(&src2, 2, 4, MLA_FACTOR_JOINT);
    mla_layer *save = layer;
    layer = other;
    int64_t p9[1] = {10};
    expect_fail("layer/cache mismatch", MLA_ERR_INVALID_ARGUMENT, x, 1, s1, p9);
    layer = save;
    mla_layer_destroy(other);
    src_free(&src2);

    /* Same widths, another RoPE description than mla_layer_cache_desc gives: rejected, naming
     * the cache layer and the field. A position scale of 0 in the description means 1. */
    {
        mla_cache *save_cache = cache;
        mla_cache_layer_desc good;
        mla_layer_cache_desc(layer, &good, sizeof good);
        float fr[16];
        int nf = good.rope_heads * good.rope_dim / 2;
        for (int i = 0; i < nf; i++)
            fr[i] = good.rope_freqs[i];
        for (int v = 0; v < 5; v++) {
            mla_cache_layer_desc d = good;
            const char *what = "", *field = "";
            if (v == 0) {
                d.rope_heads = 1;
                d.rope_dim = good.rope_heads * good.rope_dim;
                d.rope_freqs = fr;
                what = "rope split 1 head × 8 instead of 2 × 4";
                field = "rope_heads";
            } else if (v == 1) {
                fr[nf - 1] *= 1.5f;
                d.rope_freqs = fr;
                what = "one other rope frequency";
                field = "rope_freqs";
            } else if (v == 2) {
                d.rope_position_scale = 0.25;
                what = "rope_position_scale 0.25";
                field = "rope_position_scale";
            } else if (v == 3) {
                d.rope_position_scale = 0;
                what = "rope_position_scale 0 (means 1)";
            } else {
                what = "the layer's own description";
            }
            mla_cache_params cp;
            mla_cache_default_params(&cp, sizeof cp);
            cp.n_layers = 1;
            cp.layers = &d;
            cp.capacity_tokens = 64;
            cp.block_tokens = 16;
            cache = NULL;
            CHECK(mla_cache_create(&cp, &cache) == MLA_OK, "%s: cache created", what);
            int32_t sq[2] = {0, 0};
            int64_t ps[2] = {0, 1};
            if (v < 3) {
                expect_fail(what, MLA_ERR_INVALID_ARGUMENT, x, 2, sq, ps);
                CHECK(strstr(mla_last_error(), "cache layer 0") &&
                          strstr(mla_last_error(), field),
                      "%s: the message names the cache layer and %s (%s)", what, field,
                      mla_last_error());
            } else {
                CHECK(mla_attn_forward(attn, layer, cache, 0, x, 2, sq, ps, out) == MLA_OK,
                      "%s: accepted (%s)", what, mla_last_error());
            }
            mla_cache_destroy(cache);
        }
        cache = save_cache;
    }

    /* Finite input large enough that the scores overflow float32 (F32 cache, so the latents
     * still fit): NUMERICAL naming a token by the caller's index (the huge tokens are the
     * caller's 0..3 of sequence 2, sorted after sequence 0's two), a column and "overflow",
     * nothing appended, out untouched. */
    {
        mla_cache *save_cache = cache;
        cache = make_cache(&layer, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 64, 16);
        unsigned long long seed_h = 11;
        float *xh = rand_floats(6 * D, &seed_h, 1.0);
        for (int i = 0; i < 4 * D; i++)
            xh[i] *= 1e20f;
        int32_t sq[6] = {2, 2, 2, 2, 0, 0};
        int64_t ps[6] = {0, 1, 2, 3, 0, 1};
        expect_fail("finite input overflowing inside the layer", MLA_ERR_NUMERICAL, xh, 6, sq, ps);
        const char *msg = mla_last_error(), *tp = strstr(msg, "token ");
        long tok_i = tp ? strtol(tp + 6, NULL, 10) : -1;
        CHECK(tok_i >= 0 && tok_i <= 3 && strstr(msg, "column") &&
                  strstr(msg, "overflow inside the layer"),
              "overflow: the message names one of the caller's huge tokens 0..3, the column and "
              "the overflow (%s)", msg);
        /* The cache is as before: the same sequences at normal scale run. */
        for (int i = 0; i < 4 * D; i++)
            xh[i] *= 1e-20f;
        CHECK(mla_attn_forward(attn, layer, cache, 0, xh, 6, sq, ps, out) == MLA_OK,
              "overflow: afterwards the batch at normal scale runs (%s)", mla_last_error());
        free(xh);
        mla_cache_destroy(cache);
        cache = save_cache;
    }

    /* out and x in one array: overlapping by one float is rejected, adjacent is not. */
    {
        float *buf = malloc(3 * D * sizeof *buf);
        memcpy(buf, x, 2 * D * sizeof *buf);
        int32_t sq[1] = {2};
        int64_t ps[1] = {0};
        mla_status st = mla_attn_forward(attn, layer, cache, 0, buf + D, 1, sq, ps, buf + 1);
        CHECK(st == MLA_ERR_INVALID_ARGUMENT, "out starting inside x: %s", mla_last_error());
        st = mla_attn_forward(attn, layer, cache, 0, buf + D, 1, sq, ps, buf + 2 * D - 1);
        CHECK(st == MLA_ERR_INVALID_ARGUMENT, "out starting at x's last float: %s",
              mla_last_error());
        st = mla_attn_forward(attn, layer, cache, 0, buf + D, 1, sq, ps, buf + 2 * D);
        CHECK(st == MLA_OK, "out directly after x: %s", mla_last_error());
        mla_cache_seq_rm(cache, 2, 0, -1);
        st = mla_attn_forward(attn, layer, cache, 0, buf + D, 1, sq, ps, buf);
        CHECK(st == MLA_OK, "out directly before x: %s", mla_last_error());
        mla_cache_seq_rm(cache, 2, 0, -1);
        free(buf);
    }

    CHECK(mla_attn_forward(NULL, layer, cache, 0, x, 1, s1, p9, out) == MLA_ERR_INVALID_ARGUMENT,
          "NULL attn");
    CHECK(mla_attn_forward(attn, NULL, cache, 0, x, 1, s1, p9, out) == MLA_ERR_INVALID_ARGUMENT,
          "NULL layer");
    CHECK(mla_attn_forward(attn, layer, cache, 0, NULL, 1, s1, p9, out) ==
              MLA_ERR_INVALID_ARGUMENT, "NULL x");
    CHECK(mla_attn_forward(attn, layer, cache, 3, x, 1, s1, p9, out) == MLA_ERR_INVALID_ARGUMENT,
          "cache layer out of range: %s", mla_last_error());
    CHECK(mla_attn_forward(attn, layer, cache, 0, x, -1, s1, p9, out) ==
              MLA_ERR_INVALID_ARGUMENT, "negative n_tokens");
    CHECK(mla_attn_forward(attn, layer, cache, 0, x, 1, s1, p9, x) == MLA_ERR_INVALID_ARGUMENT,
          "out aliasing x");
    CHECK(mla_attn_forward(attn, layer, cache, 0, x, 0, s1, p9, out) == MLA_OK,
          "an empty batch is a no-op");

    /* After all that, the sequence continues normally. */
    CHECK(mla_attn_forward(attn, layer, cache, 0, x, 1, s1, p9, out) == MLA_OK,
          "sequence 0 continues at position 10 (%s)", mla_last_error());

    mla_attn_params p;
    mla_attn *a2 = (mla_attn *)&p;
    CHECK(mla_attn_default_params(&p, sizeof p) == MLA_OK && p.n_threads == 1 &&
              p.path == MLA_ATTN_PATH_AUTO && p.crossover_tokens > 0,
          "default params");
    p.n_threads = -1;
    CHECK(mla_attn_create(&p, &a2) == MLA_ERR_INVALID_ARGUMENT && a2 == (mla_attn *)&p,
          "negative n_threads rejected, out untouched");
    p.n_threads = 1;
    p.path = (mla_attn_path)7;
    CHECK(mla_attn_create(&p, &a2) == MLA_ERR_INVALID_ARGUMENT, "unknown path rejected");
    p.path = MLA_ATTN_PATH_AUTO;
    p.crossover_tokens = 0;
    CHECK(mla_attn_create(&p, &a2) == MLA_ERR_INVALID_ARGUMENT, "crossover 0 rejected");
    CHECK(mla_attn_create(NULL, NULL) == MLA_ERR_INVALID_ARGUMENT, "NULL out rejected");
    mla_attn_destroy(NULL);

    free(x);
    mla_attn_destroy(attn);
    mla_cache_destroy(cache);
    mla_layer_destroy(layer);
    src_free(&src);
    return tap_done();
}

/*
 * Bad input gives a status, a message, and leaves everything as it was: nothing appended to the
 * cache (length and last position unchanged) and out untouched. Cases: unknown sequence, position
 * gap, repeated position (in the batch, or one the cache layer already wrote; a layer starting
 * after slots it never wrote), negative position, NaN/Inf input, a full cache (also when only the
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
    /* A position the layer already wrote: refused, and the cached values stay as they were. */
    {
        float before[10 * 16], after[10 * 16];
        mla_cache_layer_desc dsc;
        mla_layer_cache_desc(layer, &dsc, sizeof dsc);
        CHECK(dsc.latent_dim <= 16, "latent fits the test buffer");
        mla_cache_seq_read(cache, 0, 0, 0, 10, before, NULL, NULL);
        int64_t pr[2] = {9, 10};
        expect_fail("repeat of a cached position", MLA_ERR_INVALID_ARGUMENT, x, 1, s1, pr);
        CHECK(strstr(mla_last_error(), "repeat") && strstr(mla_last_error(), "position 9"),
              "repeat: the message says so and names the position (%s)", mla_last_error());
        expect_fail("repeat straddling the last position", MLA_ERR_INVALID_ARGUMENT, x, 2, s1, pr);
        int64_t p0r[1] = {0};
        expect_fail("repeat of the first position", MLA_ERR_INVALID_ARGUMENT, x, 1, s1, p0r);
        mla_cache_seq_read(cache, 0, 0, 0, 10, after, NULL, NULL);
        CHECK(memcmp(before, after, sizeof(float) * 10 * (size_t)dsc.latent_dim) == 0,
              "repeats: the cached latents are unchanged");
    }
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
     * nothing appended, out untouched; on either path (test_overflow.c tries every size). */
    for (int path = MLA_ATTN_PATH_ABSORBED; path <= MLA_ATTN_PATH_MATERIALIZED; path++) {
        mla_attn *save_attn = attn;
        attn = make_attn(1, (mla_attn_path)path);
        mla_cache *save_cache = cache;
        cache = make_cache(&layer, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 64, 16);
        unsigned long long seed_h = 11;
        float *xh = rand_floats(6 * D, &seed_h, 1.0);
        for (int i = 0; i < 4 * D; i++)
            xh[i] *= 1e20f;
        int32_t sq[6] = {2, 2, 2, 2, 0, 0};
        int64_t ps[6] = {0, 1, 2, 3, 0, 1};
        const char *pn = path == MLA_ATTN_PATH_ABSORBED ? "absorbed" : "materialized";
        char what[96];
        snprintf(what, sizeof what, "%s: finite input overflowing inside the layer", pn);
        expect_fail(what, MLA_ERR_NUMERICAL, xh, 6, sq, ps);
        const char *msg = mla_last_error(), *tp = strstr(msg, "token ");
        long tok_i = tp ? strtol(tp + 6, NULL, 10) : -1;
        CHECK(tok_i >= 0 && tok_i <= 3 && strstr(msg, "column") &&
                  strstr(msg, "overflow inside the layer"),
              "%s overflow: the message names one of the caller's huge tokens 0..3, the column "
              "and the overflow (%s)", pn, msg);
        /* The cache is as before: the same sequences at normal scale run. */
        for (int i = 0; i < 4 * D; i++)
            xh[i] *= 1e-20f;
        CHECK(mla_attn_forward(attn, layer, cache, 0, xh, 6, sq, ps, out) == MLA_OK,
              "%s overflow: afterwards the batch at normal scale runs (%s)", pn,
              mla_last_error());
        free(xh);
        mla_cache_destroy(cache);
        cache = save_cache;
        mla_attn_destroy(attn);
        attn = save_attn;
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

    /* Two cache layers: each continues exactly where it stopped writing a sequence. */
    {
        mla_layer *two[2] = {layer, layer};
        mla_cache *c2 = make_cache(two, 2, MLA_DTYPE_F32, MLA_DTYPE_F32, 64, 16);
        CHECK(c2 != NULL, "two-layer cache");
        int32_t sq[16] = {0};
        int64_t ps[16];
        for (int i = 0; i < 16; i++)
            ps[i] = i;
        float o0[8 * D], o1[8 * D];
        mla_status st = mla_attn_forward(attn, layer, c2, 0, x, 8, sq, ps, o0);
        CHECK(st == MLA_OK, "layer 0 prefills positions 0..7 (%s)", mla_last_error());
        st = mla_attn_forward(attn, layer, c2, 1, x + 4 * D, 2, sq, ps + 4, out);
        CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "gap") &&
                  strstr(mla_last_error(), "cache layer 1"),
              "layer 1 starting at position 4 before writing 0..3: a gap (%s)", mla_last_error());
        st = mla_attn_forward(attn, layer, c2, 1, x, 8, sq, ps, o1);
        CHECK(st == MLA_OK, "layer 1 then writes 0..7 into the slots layer 0 appended (%s)",
              mla_last_error());
        st = mla_attn_forward(attn, layer, c2, 1, x + 7 * D, 1, sq, ps + 7, out);
        CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "repeat"),
              "layer 1 again at position 7: a repeat (%s)", mla_last_error());
        /* Reserved slots: written in order from the first. */
        CHECK(mla_cache_reserve(c2, 0, 8, 3) == MLA_OK, "reserve positions 8..10");
        st = mla_attn_forward(attn, layer, c2, 0, x + 9 * D, 1, sq, ps + 9, out);
        CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "gap"),
              "reserved position 9 before 8: a gap (%s)", mla_last_error());
        st = mla_attn_forward(attn, layer, c2, 0, x + 8 * D, 3, sq, ps + 8, out);
        CHECK(st == MLA_OK, "reserved positions 8..10 in order (%s)", mla_last_error());
        /* Removing positions makes them computable again, with the same result. */
        CHECK(mla_cache_seq_rm(c2, 0, 6, -1) == MLA_OK, "remove positions 6..");
        float r0[2 * D], r1[2 * D];
        st = mla_attn_forward(attn, layer, c2, 0, x + 6 * D, 2, sq, ps + 6, r0);
        if (st == MLA_OK)
            st = mla_attn_forward(attn, layer, c2, 1, x + 6 * D, 2, sq, ps + 6, r1);
        CHECK(st == MLA_OK, "both layers compute positions 6, 7 again (%s)", mla_last_error());
        double e0 = 0, e1 = 0, m = 0;
        for (int i = 0; i < 2 * D; i++) {
            /* Comparisons, not fmax: GCC 12 for AArch64 crashes vectorizing this loop with
             * fmax (doc/testing.md). */
            double d0 = fabs((double)r0[i] - o0[6 * D + i]);
            double d1 = fabs((double)r1[i] - o1[6 * D + i]);
            double a = fabs((double)o0[6 * D + i]);
            e0 = d0 > e0 ? d0 : e0;
            e1 = d1 > e1 ? d1 : e1;
            m = a > m ? a : m;
        }
        CHECK(e0 <= 1e-5 * m && e1 <= 1e-5 * m,
              "recomputed outputs equal the first ones (max diff %.2e, %.2e of %.2e)", e0, e1, m);
        /* A batch failing in layer 1 at its second sequence leaves its first sequence's slots
         * unwritten in layer 1 again: the retry alone is not a repeat. */
        st = mla_attn_forward(attn, layer, c2, 0, x + 8 * D, 1, sq, ps + 8, out);
        CHECK(st == MLA_OK, "layer 0 decodes position 8 (%s)", mla_last_error());
        int32_t sb[57];
        int64_t pb[57];
        sb[0] = 0;
        pb[0] = 8;
        for (int i = 1; i < 57; i++) {
            sb[i] = 2;
            pb[i] = i - 1;
        }
        float *ob = malloc(57 * D * sizeof *ob);
        float *xb = rand_floats(57 * D, &seed, 1.0);
        st = mla_attn_forward(attn, layer, c2, 1, xb, 57, sb, pb, ob);
        CHECK(st == MLA_ERR_CAPACITY, "layer 1: sequence 2's 56 tokens do not fit (%s)",
              mla_last_error());
        int64_t len2 = -1;
        mla_cache_seq_length(c2, 2, &len2);
        CHECK(len2 == 0, "nothing appended to sequence 2");
        st = mla_attn_forward(attn, layer, c2, 1, xb, 1, sb, pb, ob);
        CHECK(st == MLA_OK, "layer 1 then writes sequence 0's position 8 (%s)", mla_last_error());
        free(ob);
        free(xb);
        /* A fork carries what each layer wrote: it continues in both layers. */
        CHECK(mla_cache_seq_fork(c2, 0, 3) == MLA_OK, "fork sequence 0 into 3");
        int32_t s3[1] = {3};
        st = mla_attn_forward(attn, layer, c2, 0, x, 1, s3, ps + 9, out);
        if (st == MLA_OK)
            st = mla_attn_forward(attn, layer, c2, 1, x, 1, s3, ps + 9, out);
        CHECK(st == MLA_OK, "the fork continues at position 9 in both layers (%s)",
              mla_last_error());
        mla_cache_destroy(c2);
    }

    /* After all that, the sequence continues normally. */
    CHECK(mla_attn_forward(attn, layer, cache, 0, x, 1, s1, p9, out) == MLA_OK,
          "sequence 0 continues at position 10 (%s)", mla_last_error());

    mla_attn_params p;
    mla_attn *a2 = (mla_attn *)&p;
    CHECK(mla_attn_default_params(&p, sizeof p) == MLA_OK && p.n_threads == 1 &&
              p.path == MLA_ATTN_PATH_AUTO && p.crossover_tokens == 0 &&
              p.threads == MLA_ATTN_THREADS_POOL,
          "default params");
    p.n_threads = -1;
    CHECK(mla_attn_create(&p, &a2) == MLA_ERR_INVALID_ARGUMENT && a2 == (mla_attn *)&p,
          "negative n_threads rejected, out untouched");
    p.n_threads = 1;
    p.path = (mla_attn_path)7;
    CHECK(mla_attn_create(&p, &a2) == MLA_ERR_INVALID_ARGUMENT, "unknown path rejected");
    p.path = MLA_ATTN_PATH_AUTO;
    p.threads = (mla_attn_threads)2;
    CHECK(mla_attn_create(&p, &a2) == MLA_ERR_INVALID_ARGUMENT &&
              strstr(mla_last_error(), "threads is 2") && a2 == (mla_attn *)&p,
          "unknown threads rejected (%s)", mla_last_error());
    p.threads = MLA_ATTN_THREADS_POOL;
    p.crossover_tokens = -1;
    CHECK(mla_attn_create(&p, &a2) == MLA_ERR_INVALID_ARGUMENT &&
              strstr(mla_last_error(), "crossover_tokens is -1"),
          "negative crossover rejected (%s)", mla_last_error());
    CHECK(mla_attn_create(NULL, NULL) == MLA_ERR_INVALID_ARGUMENT, "NULL out rejected");
    mla_attn_destroy(NULL);

    free(x);
    mla_attn_destroy(attn);
    mla_cache_destroy(cache);
    mla_layer_destroy(layer);
    src_free(&src);
    return tap_done();
}

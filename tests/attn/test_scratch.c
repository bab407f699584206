/*
 * The handle's scratch memory through the public API: mla_attn_scratch_bytes reports what a
 * forward kept, max_scratch_bytes bounds it (a batch over the limit takes the plan of least
 * scratch, with the same result as the float64 formula; below that plan's need the call fails
 * with CAPACITY, names the need, and appends nothing), and mla_attn_scratch_release frees it
 * without changing what the next forward computes.
 */
#include "util.h"

#define D 64
#define N 300 /* a fresh materialized prompt of several blocks: it shares its up-projection */

static mla_attn *attn_limited(int64_t limit)
{
    return make_attn_limited(1, MLA_ATTN_PATH_MATERIALIZED, limit);
}

static int64_t scratch_of(const mla_attn *a)
{
    int64_t b = -1;
    return mla_attn_scratch_bytes(a, &b) == MLA_OK ? b : -1;
}

static double rel_to(const float *o, const double *ref, int row0, int rows)
{
    return rel_diff_d(o, ref + (size_t)row0 * D, (size_t)rows * D);
}

int main(void)
{
    src_layer src;
    src_init(&src, D, 4, 2, 16, 0, 11);
    mla_layer *layer = convert(&src, 4, 8, MLA_FACTOR_JOINT);
    mla_cache *c = layer ? make_cache(&layer, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 8 * 512, 16) : NULL;
    CHECK(layer && c, "layer and cache (%s)", mla_last_error());
    if (!layer || !c) {
        src_free(&src);
        return tap_done();
    }
    unsigned long long seed = 3;
    float *x = rand_floats((size_t)(N + 1) * D, &seed, 1.0);
    float *o_full = malloc((size_t)N * D * sizeof(float)), *o = malloc((size_t)N * D * sizeof(float));
    double *ref = malloc((size_t)(N + 1) * D * sizeof *ref);
    int64_t pos[N + 1];
    for (int i = 0; i <= N; i++)
        pos[i] = i;
    ref_mla rm;
    ref_mla_init(&rm, layer);
    ref_mla_forward(&rm, x, pos, N + 1, NULL, NULL, ref);
    mla_clear_error(); /* ref_mla_init's lookups of absent biases */

    /* No limit: the plan of most speed; the handle keeps its scratch. */
    mla_attn *full = attn_limited(0);
    CHECK(full && scratch_of(full) == 0, "a new handle holds no scratch");
    mla_status st = forward_seqs(full, layer, c, 1, 0, 0, x, N, o_full);
    int64_t s_full = scratch_of(full);
    CHECK(st == MLA_OK && s_full > 0, "unlimited prefill of %d tokens: %lld bytes of scratch (%s)",
          N, (long long)s_full, mla_last_error());
    CHECK(rel_to(o_full, ref, 0, N) < 1e-4, "unlimited prefill vs float64: rel %.3g",
          rel_to(o_full, ref, 0, N));

    /* A limit at the need changes nothing: the same plan, the same bits. */
    mla_attn *at = attn_limited(s_full);
    st = forward_seqs(at, layer, c, 1, 1, 0, x, N, o);
    CHECK(st == MLA_OK && scratch_of(at) == s_full &&
              memcmp(o, o_full, (size_t)N * D * sizeof(float)) == 0,
          "limit = need (%lld): the unlimited plan and output (%s)", (long long)s_full,
          mla_last_error());
    mla_attn_destroy(at);

    /* One byte less: the plan of least scratch, within the limit, still the formula. */
    mla_attn *low = attn_limited(s_full - 1);
    st = forward_seqs(low, layer, c, 1, 2, 0, x, N, o);
    int64_t s_low = low ? scratch_of(low) : -1;
    CHECK(st == MLA_OK && s_low > 0 && s_low < s_full,
          "limit %lld: prefill kept %lld bytes (%s)", (long long)(s_full - 1), (long long)s_low,
          mla_last_error());
    CHECK(rel_to(o, ref, 0, N) < 1e-4, "least-scratch prefill vs float64: rel %.3g",
          rel_to(o, ref, 0, N));
    /* A decode on the same handle stays within it too. */
    st = forward_seqs(low, layer, c, 1, 2, N, x + (size_t)N * D, 1, o);
    CHECK(st == MLA_OK && scratch_of(low) <= s_full - 1 && rel_to(o, ref, N, 1) < 1e-4,
          "decode under the limit: %lld bytes, rel %.3g (%s)", (long long)scratch_of(low),
          rel_to(o, ref, N, 1), mla_last_error());
    mla_attn_destroy(low);

    /* Below the least plan's need: CAPACITY, naming the need; nothing appended or written. */
    mla_attn *tiny = attn_limited(s_low - 1);
    for (int i = 0; i < N * D; i++)
        o[i] = 7.0f;
    st = forward_seqs(tiny, layer, c, 1, 3, 0, x, N, o);
    const char *need_at = strstr(mla_last_error(), "needs ");
    long long need = need_at ? atoll(need_at + 6) : -1;
    CHECK(st == MLA_ERR_CAPACITY && need > s_low - 1 && need <= s_low &&
              strstr(mla_last_error(), "max_scratch_bytes"),
          "limit %lld: CAPACITY naming the need (status %d: %s)", (long long)(s_low - 1), (int)st,
          mla_last_error());
    int64_t len = -1;
    mla_cache_seq_length(c, 3, &len);
    int untouched = 1;
    for (int i = 0; i < N * D; i++)
        untouched &= o[i] == 7.0f;
    CHECK(len == 0 && untouched && scratch_of(tiny) == 0,
          "refused batch: sequence length %lld, out untouched %d, scratch %lld", (long long)len,
          untouched, (long long)scratch_of(tiny));
    /* Exactly the need it named: accepted. */
    mla_attn_destroy(tiny);
    tiny = attn_limited(need);
    st = forward_seqs(tiny, layer, c, 1, 3, 0, x, N, o);
    CHECK(st == MLA_OK && scratch_of(tiny) == need && rel_to(o, ref, 0, N) < 1e-4,
          "limit = the need named (%lld): accepted, rel %.3g (%s)", need, rel_to(o, ref, 0, N),
          mla_last_error());
    mla_attn_destroy(tiny);

    /* Release: no scratch held, and the next forward computes what it would have. */
    st = full ? mla_attn_scratch_release(full) : MLA_ERR_INTERNAL;
    CHECK(st == MLA_OK && scratch_of(full) == 0, "released: %lld bytes",
          (long long)scratch_of(full));
    st = forward_seqs(full, layer, c, 1, 0, N, x + (size_t)N * D, 1, o);
    CHECK(st == MLA_OK && scratch_of(full) > 0 && rel_to(o, ref, N, 1) < 1e-4,
          "decode after release: %lld bytes, rel %.3g (%s)", (long long)scratch_of(full),
          rel_to(o, ref, N, 1), mla_last_error());
    mla_attn_destroy(full);

    /* A chunk after a longer context has no up-projection to share: on 4 threads its one block
     * is split in 4 parts, each after the first keeping a state as large as the block's output.
     * Under limits: 2 parts, then 1, each within the limit and still the formula. */
    {
        enum { PRE = 600, M = 200 };
        float *xl = rand_floats((size_t)(PRE + M) * D, &seed, 1.0);
        float *ol = malloc((size_t)PRE * D * sizeof(float)); /* the prefill's, then the chunk's */
        double *refl = malloc((size_t)(PRE + M) * D * sizeof *refl);
        int64_t posl[PRE + M];
        for (int i = 0; i < PRE + M; i++)
            posl[i] = i;
        ref_mla_forward(&rm, xl, posl, PRE + M, NULL, NULL, refl);
        mla_attn *pre = attn_limited(0);
        st = forward_seqs(pre, layer, c, 1, 4, 0, xl, PRE, ol);
        mla_attn_destroy(pre);
        CHECK(st == MLA_OK, "prefill of %d tokens (%s)", PRE, mla_last_error());
        int64_t kept[4] = {0, 0, 0, 0}, limit = 0;
        for (int k = 0; k < 4; k++) {
            mla_attn *a = make_attn_limited(4, MLA_ATTN_PATH_MATERIALIZED, limit);
            st = forward_seqs(a, layer, c, 1, 4, PRE, xl + (size_t)PRE * D, M, ol);
            kept[k] = scratch_of(a);
            mla_attn_destroy(a);
            if (k < 3) {
                double rel = rel_to(ol, refl, PRE, M);
                CHECK(st == MLA_OK && kept[k] > 0 && (k == 0 || kept[k] < kept[k - 1]) &&
                          rel < 1e-4,
                      "chunk of %d after %d, 4 threads, limit %lld: kept %lld bytes, rel %.3g (%s)",
                      M, PRE, (long long)limit, (long long)kept[k], rel, mla_last_error());
                mla_cache_seq_rm(c, 4, PRE, -1);
                limit = kept[k] - 1;
            } else {
                const char *at_need = strstr(mla_last_error(), "needs ");
                long long need_l = at_need ? atoll(at_need + 6) : -1;
                CHECK(st == MLA_ERR_CAPACITY && need_l == kept[2],
                      "limit %lld: CAPACITY naming the one-part plan's %lld bytes (%s)",
                      (long long)limit, (long long)kept[2], mla_last_error());
            }
        }
        free(xl);
        free(ol);
        free(refl);
    }

    /* Arguments. */
    mla_attn *bad = NULL;
    mla_attn_params p;
    mla_attn_default_params(&p, sizeof p);
    CHECK(p.max_scratch_bytes == 0, "default max_scratch_bytes %lld", (long long)p.max_scratch_bytes);
    p.max_scratch_bytes = -1;
    st = mla_attn_create(&p, &bad);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && !bad && strstr(mla_last_error(), "max_scratch_bytes"),
          "max_scratch_bytes -1: %d (%s)", (int)st, mla_last_error());
    int64_t b;
    st = mla_attn_scratch_bytes(NULL, &b);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "attn"),
          "scratch_bytes(NULL): %s", mla_last_error());
    mla_attn *a = attn_limited(0);
    st = mla_attn_scratch_bytes(a, NULL);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "bytes"),
          "scratch_bytes(attn, NULL): %s", mla_last_error());
    CHECK(mla_attn_scratch_release(NULL) == MLA_ERR_INVALID_ARGUMENT, "release_scratch(NULL)");
    CHECK(mla_attn_scratch_release(a) == MLA_OK, "releasing an empty handle");
    mla_attn_destroy(a);

    free(x);
    free(o_full);
    free(o);
    free(ref);
    mla_cache_destroy(c);
    mla_layer_destroy(layer);
    src_free(&src);
    return tap_done();
}

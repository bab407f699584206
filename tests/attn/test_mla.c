/*
 * Reduced-rank MLA layers against the float64 MLA formula with explicit up-projection
 * (../shared/mha2mla.md, "The converted layer's forward"), and the properties of the forward:
 * - absorbed and materialized paths give the reference (joint and split, MHA and GQA, biases),
 *   also for a chunk cut into blocks that do not divide it evenly;
 * - decoding token by token equals one prefill of the whole sequence (several tiles and spans,
 *   1 and 2 threads: split-K merging);
 * - a forked sequence continues exactly like an unforked copy;
 * - two layers sharing one cache (the second writes slots the first reserved);
 * - a layer wide enough for the materialized path's 256-token tiles, and for the absorbed
 *   path's query fold to split its heads across threads;
 * - materialized chunks of several blocks, their context up-projected once or per block.
 */
#include "run.h"

static const struct {
    int d, n_h, n_kv, d_h, r, d_kv;
    mla_factorization f;
    const char *name;
} cases[] = {
    {64, 4, 4, 16, 4, 4, MLA_FACTOR_JOINT, "MHA geometry, joint"},
    {64, 8, 2, 16, 4, 16, MLA_FACTOR_JOINT, "GQA geometry, joint"},
    {64, 8, 2, 16, 6, 5, MLA_FACTOR_SPLIT, "GQA geometry, split"},
    {48, 6, 3, 8, 0, 4, MLA_FACTOR_JOINT, "GQA geometry, no RoPE"},
};

static double run_ref(mla_layer *l, int n_threads, mla_attn_path path, int n0, int p0, int n1,
                      int p1, int block)
{
    ref_mla m;
    ref_mla_init(&m, l);
    seqdata s[2];
    seq_init(&s[0], 1, n0, p0, m.d, 0, 21);
    seq_init(&s[1], 2, n1, p1, m.d, 0, 22);
    for (int i = 0; i < 2; i++)
        ref_mla_forward(&m, s[i].x, s[i].pos, s[i].n, NULL, NULL, s[i].ref);
    mla_cache *c = make_cache(&l, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 1024, block);
    mla_attn *a = make_attn(n_threads, path);
    mla_status st = c && a ? run_seqs(a, l, c, 0, s, 2, m.d) : MLA_ERR_INTERNAL;
    if (st != MLA_OK)
        printf("# forward failed: %s\n", mla_last_error());
    double e = st == MLA_OK ? seqs_diff(s, 2, m.d) : INFINITY;
    mla_attn_destroy(a);
    mla_cache_destroy(c);
    for (int i = 0; i < 2; i++)
        seq_free(&s[i]);
    return e;
}

/* The same sequence as one prefill in sequence 0 and token by token in sequence 1. */
static void decode_equals_prefill(mla_layer *l, const char *name, int n_threads)
{
    ref_mla m;
    ref_mla_init(&m, l);
    int n = 300;
    seqdata s[2];
    seq_init(&s[0], 0, n, n, m.d, 5, 31);
    seq_init(&s[1], 1, n, 1, m.d, 5, 31); /* same seed: same tokens */
    mla_cache *c = make_cache(&l, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 1024, 16);
    mla_attn *a = make_attn(n_threads, MLA_ATTN_PATH_AUTO);
    mla_status st = c && a ? run_seqs(a, l, c, 0, s, 2, m.d) : MLA_ERR_INTERNAL;
    CHECK(st == MLA_OK, "%s, %d thread(s): prefill of %d tokens and %d decode steps (%s)", name,
          n_threads, n, n - 1, st == MLA_OK ? "" : mla_last_error());
    double e = tap_rel_diff(s[1].out, s[0].out, (size_t)n * m.d);
    CHECK(e < 1e-4, "%s, %d thread(s): decode token by token equals one prefill (rel %.2e)", name,
          n_threads, e);
    if (n_threads == 1) {
        /* The last few tokens against the formula (the whole O(n²) reference is slow). */
        ref_mla_forward(&m, s[0].x, s[0].pos, n, NULL, NULL, s[0].ref);
        double er = rel_diff_d(s[1].out + (size_t)(n - 8) * m.d, s[0].ref + (size_t)(n - 8) * m.d,
                               (size_t)8 * m.d);
        CHECK(er < 1e-4, "%s: decode at context %d equals the reference (rel %.2e)", name, n, er);
    }
    mla_attn_destroy(a);
    mla_cache_destroy(c);
    seq_free(&s[0]);
    seq_free(&s[1]);
}

/* Absorbed and materialized over the same cache and batch. */
static void absorbed_equals_materialized(mla_layer *l, const char *name)
{
    ref_mla m;
    ref_mla_init(&m, l);
    float *o[2];
    for (int k = 0; k < 2; k++) {
        seqdata s[2];
        seq_init(&s[0], 0, 70, 50, m.d, 0, 41);
        seq_init(&s[1], 4, 40, 33, m.d, 0, 42);
        mla_cache *c = make_cache(&l, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 1024, 16);
        mla_attn *a = make_attn(1, k ? MLA_ATTN_PATH_MATERIALIZED : MLA_ATTN_PATH_ABSORBED);
        mla_status st = c && a ? run_seqs(a, l, c, 0, s, 2, m.d) : MLA_ERR_INTERNAL;
        CHECK(st == MLA_OK, "%s: %s run", name, k ? "materialized" : "absorbed");
        o[k] = malloc((size_t)110 * m.d * sizeof(float));
        memcpy(o[k], s[0].out, (size_t)70 * m.d * sizeof(float));
        memcpy(o[k] + (size_t)70 * m.d, s[1].out, (size_t)40 * m.d * sizeof(float));
        mla_attn_destroy(a);
        mla_cache_destroy(c);
        seq_free(&s[0]);
        seq_free(&s[1]);
    }
    double e = tap_rel_diff(o[0], o[1], (size_t)110 * m.d);
    CHECK(e < 1e-4, "%s: absorbed equals materialized (rel %.2e)", name, e);
    free(o[0]);
    free(o[1]);
}

/* Sequence 0 prefilled and forked into 1; sequence 2 prefilled with the same tokens. Then every
 * sequence decodes: 1 and 2 the same token, 0 another one. */
static void fork_continues(mla_layer *l, const char *name)
{
    ref_mla m;
    ref_mla_init(&m, l);
    int n = 40, d = m.d;
    unsigned long long seed = 51;
    float *x = rand_floats((size_t)(n + 2) * d, &seed, 1.0);
    mla_cache *c = make_cache(&l, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 1024, 16);
    mla_attn *a = make_attn(1, MLA_ATTN_PATH_AUTO);
    int32_t *sq = malloc((size_t)n * sizeof *sq);
    int64_t *ps = malloc((size_t)n * sizeof *ps);
    float *out = malloc((size_t)n * d * sizeof *out);
    mla_status st = MLA_OK;
    for (int k = 0; k < 2 && st == MLA_OK; k++) {
        for (int i = 0; i < n; i++) {
            sq[i] = k ? 2 : 0;
            ps[i] = i;
        }
        st = mla_attn_forward(a, l, c, 0, x, n, sq, ps, out);
    }
    if (st == MLA_OK)
        st = mla_cache_seq_fork(c, 0, 1);
    /* One decode batch: seq 1 and 2 get token n, seq 0 token n + 1, all at position n. */
    float xb[3 * 64], ob[3 * 64];
    memcpy(xb, x + (size_t)n * d, (size_t)d * sizeof(float));
    memcpy(xb + d, x + (size_t)n * d, (size_t)d * sizeof(float));
    memcpy(xb + 2 * d, x + (size_t)(n + 1) * d, (size_t)d * sizeof(float));
    int32_t sb[3] = {1, 2, 0};
    int64_t pb[3] = {n, n, n};
    if (st == MLA_OK)
        st = mla_attn_forward(a, l, c, 0, xb, 3, sb, pb, ob);
    CHECK(st == MLA_OK, "%s: prefill, fork, decode (%s)", name, st ? mla_last_error() : "");
    double e = tap_rel_diff(ob, ob + d, (size_t)d);
    CHECK(e < 1e-6, "%s: a forked sequence continues like an unforked copy (rel %.2e)", name, e);
    /* Sequence 0's continuation saw its own token, not the fork's: compare with the formula. */
    float *x0 = malloc((size_t)(n + 1) * d * sizeof *x0);
    memcpy(x0, x, (size_t)n * d * sizeof *x0);
    memcpy(x0 + (size_t)n * d, x + (size_t)(n + 1) * d, (size_t)d * sizeof *x0);
    int64_t *p0 = malloc((size_t)(n + 1) * sizeof *p0);
    for (int i = 0; i <= n; i++)
        p0[i] = i;
    double *ref = malloc((size_t)(n + 1) * d * sizeof *ref);
    ref_mla_forward(&m, x0, p0, n + 1, NULL, NULL, ref);
    double e0 = rel_diff_d(ob + 2 * d, ref + (size_t)n * d, (size_t)d);
    CHECK(e0 < 1e-4, "%s: the fork's source continues independently (rel %.2e)", name, e0);
    int64_t len[3];
    for (int k = 0; k < 3; k++)
        mla_cache_seq_length(c, k, &len[k]);
    CHECK(len[0] == n + 1 && len[1] == n + 1 && len[2] == n + 1,
          "%s: every sequence holds %d tokens (%lld %lld %lld)", name, n + 1, (long long)len[0],
          (long long)len[1], (long long)len[2]);
    free(x0);
    free(p0);
    free(ref);
    free(x);
    free(sq);
    free(ps);
    free(out);
    mla_attn_destroy(a);
    mla_cache_destroy(c);
}

/* Rows of s's output and reference where want is set, packed, compared. */
static double rows_diff(const seqdata *s, const unsigned char *want, int d)
{
    float *o = malloc((size_t)s->n * d * sizeof *o);
    double *r = malloc((size_t)s->n * d * sizeof *r);
    size_t k = 0;
    for (int t = 0; t < s->n; t++)
        if (want[t]) {
            memcpy(o + k, s->out + (size_t)t * d, (size_t)d * sizeof *o);
            memcpy(r + k, s->ref + (size_t)t * d, (size_t)d * sizeof *r);
            k += (size_t)d;
        }
    double e = rel_diff_d(o, r, k);
    free(o);
    free(r);
    return e;
}

/*
 * Materialized chunks of more than one block, on 2 threads: sequence 0 a fresh 1040-token prompt
 * and sequence 1 a 20-token one in one call, then 1040 tokens of sequence 1 after its 20 (small
 * blocks that up-project their context once for all, forward.c, share_up), then 1040 more after
 * its 1060 (a context longer than the chunk: one block, its context split between the threads
 * by causal work, its queries taken 1024 and 16 at a time), then two decode steps. Rows against
 * the formula: every 7th, and those around each call's start and end and the third call's
 * 1024th query.
 */
static void long_chunks(mla_layer *l, const char *name)
{
    ref_mla m;
    ref_mla_init(&m, l);
    seqdata s[2];
    seq_init(&s[0], 0, 1042, 1040, m.d, 0, 81);
    seq_init(&s[1], 1, 2102, 20, m.d, 0, 82);
    mla_cache *c = make_cache(&l, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 4096, 16);
    mla_attn *a = make_attn(2, MLA_ATTN_PATH_MATERIALIZED);
    static const int calls[][2][2] = {
        {{0, 1040}, {0, 20}},
        {{1040, 1040}, {20, 1060}},
        {{1040, 1040}, {1060, 2100}},
        {{1040, 1041}, {2100, 2101}},
        {{1041, 1042}, {2101, 2102}},
    };
    mla_status st = c && a ? MLA_OK : MLA_ERR_INTERNAL;
    for (size_t i = 0; i < sizeof calls / sizeof calls[0] && st == MLA_OK; i++) {
        int from[2] = {calls[i][0][0], calls[i][1][0]}, to[2] = {calls[i][0][1], calls[i][1][1]};
        st = run_range(a, l, c, 0, s, 2, m.d, from, to);
    }
    CHECK(st == MLA_OK, "%s: chunks of 1040 tokens, materialized, 2 threads (%s)", name,
          st == MLA_OK ? "" : mla_last_error());
    static const int edges[] = {0, 20, 1040, 1060, 2084, 2100};
    for (int i = 0; i < 2; i++) {
        unsigned char *want = calloc((size_t)s[i].n, 1);
        for (int t = 0; t < s[i].n; t += 7)
            want[t] = 1;
        for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++)
            for (int t = edges[e] - 3; t <= edges[e] + 2; t++)
                if (t >= 0 && t < s[i].n)
                    want[t] = 1;
        want[s[i].n - 1] = want[s[i].n - 2] = 1;
        ref_mla_forward_rows(&m, s[i].x, s[i].pos, s[i].n, NULL, NULL, want, s[i].ref);
        double e = st == MLA_OK ? rows_diff(&s[i], want, m.d) : INFINITY;
        CHECK(e < 1e-4, "%s: sequence %d (%d tokens) over chunks of several materialized blocks "
              "equals the MLA formula (rel %.2e)", name, i, s[i].n, e);
        free(want);
        seq_free(&s[i]);
    }
    mla_attn_destroy(a);
    mla_cache_destroy(c);
}

/* Two different layers in one cache, run on the same batches: the second layer's writes go to
 * the slots the first one appended. */
static void two_layers(mla_layer *l0, mla_layer *l1)
{
    mla_layer *ls[2] = {l0, l1};
    mla_cache *c = make_cache(ls, 2, MLA_DTYPE_F32, MLA_DTYPE_F32, 1024, 16);
    mla_attn *a = make_attn(2, MLA_ATTN_PATH_AUTO);
    ref_mla m[2];
    seqdata s[2][2];
    for (int k = 0; k < 2; k++) {
        ref_mla_init(&m[k], ls[k]);
        seq_init(&s[k][0], 0, 30, 20, m[k].d, 0, 61 + k);
        seq_init(&s[k][1], 1, 12, 6, m[k].d, 0, 71 + k);
        for (int i = 0; i < 2; i++)
            ref_mla_forward(&m[k], s[k][i].x, s[k][i].pos, s[k][i].n, NULL, NULL, s[k][i].ref);
    }
    /* Layer by layer for every batch, as a model runs. */
    int from[2] = {0, 0}, to[2] = {20, 6};
    mla_status st = MLA_OK;
    for (int step = 0; step < 11 && st == MLA_OK; step++) {
        for (int k = 0; k < 2 && st == MLA_OK; k++)
            st = run_range(a, ls[k], c, k, s[k], 2, m[k].d, from, to);
        for (int i = 0; i < 2; i++) {
            from[i] = to[i];
            to[i] = from[i] + 1;
        }
    }
    CHECK(st == MLA_OK, "two layers: forward (%s)", st ? mla_last_error() : "");
    for (int k = 0; k < 2; k++) {
        double e = seqs_diff(s[k], 2, m[k].d);
        CHECK(e < 1e-4, "two layers in one cache: layer %d equals the reference (rel %.2e)", k,
              e);
        for (int i = 0; i < 2; i++)
            seq_free(&s[k][i]);
    }
    mla_attn_destroy(a);
    mla_cache_destroy(c);
}

int main(void)
{
    mla_layer *keep[2] = {NULL, NULL};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int bias = 0; bias <= 1; bias++) {
            src_layer src;
            src_init(&src, cases[ci].d, cases[ci].n_h, cases[ci].n_kv, cases[ci].d_h, bias,
                     200 + ci * 2 + bias);
            mla_layer *l = convert(&src, cases[ci].r, cases[ci].d_kv, cases[ci].f);
            char name[96];
            snprintf(name, sizeof name, "%s, r %d, d_kv %d, %s", cases[ci].name, cases[ci].r,
                     cases[ci].d_kv, bias ? "biases" : "no biases");
            CHECK(l != NULL, "%s: conversion (%s)", name, l ? "" : mla_last_error());
            if (!l) {
                src_free(&src);
                continue;
            }
            double ea = run_ref(l, 1, MLA_ATTN_PATH_ABSORBED, 25, 18, 11, 3, 8);
            CHECK(ea < 1e-4, "%s: absorbed equals the MLA formula (rel %.2e)", name, ea);
            double em = run_ref(l, 1, MLA_ATTN_PATH_MATERIALIZED, 25, 18, 11, 3, 8);
            CHECK(em < 1e-4, "%s: materialized equals the MLA formula (rel %.2e)", name, em);
            double e2 = run_ref(l, 2, MLA_ATTN_PATH_AUTO, 25, 18, 11, 3, 64);
            CHECK(e2 < 1e-4, "%s: automatic path on 2 threads (rel %.2e)", name, e2);
            if (ci == 1 && bias) {
                /* A 151-token chunk: three absorbed blocks of 51, 50 and 50 queries (at most
                 * 64 with 8 heads), two parts each on 2 threads. */
                double eb = run_ref(l, 2, MLA_ATTN_PATH_ABSORBED, 160, 151, 11, 3, 16);
                CHECK(eb < 1e-4, "%s: a chunk of three unequal blocks on 2 threads (rel %.2e)",
                      name, eb);
                decode_equals_prefill(l, name, 1);
                decode_equals_prefill(l, name, 2);
                absorbed_equals_materialized(l, name);
                fork_continues(l, name);
            }
            if (ci == 2 && !bias)
                absorbed_equals_materialized(l, name);
            if (ci < 2 && !bias && !keep[ci]) {
                keep[ci] = l;
                l = NULL;
            }
            mla_layer_destroy(l);
            src_free(&src);
        }
    if (keep[0] && keep[1])
        two_layers(keep[0], keep[1]);
    mla_layer_destroy(keep[0]);
    mla_layer_destroy(keep[1]);

    /* A layer so wide (4 KV heads of 128: 4.2 KB of tile a token) that the materialized path
     * takes 256-token tiles (forward.c, tile_tokens): a 272-token prefill spans two of them. */
    src_layer wsrc;
    src_init(&wsrc, 64, 4, 4, 128, 1, 250);
    mla_layer *wide = convert(&wsrc, 4, 8, MLA_FACTOR_JOINT);
    CHECK(wide != NULL, "wide heads: conversion (%s)", wide ? "" : mla_last_error());
    if (wide) {
        double em = run_ref(wide, 1, MLA_ATTN_PATH_MATERIALIZED, 272, 272, 11, 3, 16);
        CHECK(em < 1e-4, "wide heads, 256-token tiles: materialized equals the MLA formula over "
              "272 tokens (rel %.2e)", em);
        double e2 = run_ref(wide, 2, MLA_ATTN_PATH_MATERIALIZED, 40, 30, 11, 3, 64);
        CHECK(e2 < 1e-4, "wide heads, 256-token tiles: 30-token prefill and 10 decode steps on "
              "2 threads (rel %.2e)", e2);
        mla_layer_destroy(wide);
    }
    /* Wider latents (d_model 256, d_kv 32: 128 a token) and a first call of 56 tokens (40 +
     * 16): W_uk is folded into the queries by the kernels, the heads across 2 threads
     * (forward.c, QUERY_KERNEL_TOKENS; 7 MFLOP); then decode steps of two tokens. */
    src_layer fsrc;
    src_init(&fsrc, 256, 4, 4, 128, 0, 251);
    mla_layer *fold = convert(&fsrc, 4, 32, MLA_FACTOR_JOINT);
    CHECK(fold != NULL, "d_kv 32 of 4 heads of 128: conversion (%s)",
          fold ? "" : mla_last_error());
    if (fold) {
        double ea = run_ref(fold, 2, MLA_ATTN_PATH_ABSORBED, 48, 40, 24, 16, 16);
        CHECK(ea < 1e-4, "d_kv 32, absorbed: a 56-token call (the query fold's heads on 2 "
              "threads) and decode steps equal the MLA formula (rel %.2e)", ea);
        mla_layer_destroy(fold);
    }
    /* Two heads of 16 and d_kv 24 (48 a token): cheap attention (the test runs under
     * valgrind), yet a 1040-token context is 5.6 MFLOP to up-project, spread over 2 threads. */
    src_layer lsrc;
    src_init(&lsrc, 64, 2, 2, 16, 1, 252);
    mla_layer *lng = convert(&lsrc, 4, 24, MLA_FACTOR_JOINT);
    CHECK(lng != NULL, "2 heads of 16, d_kv 24: conversion (%s)", lng ? "" : mla_last_error());
    if (lng) {
        long_chunks(lng, "2 heads of 16, d_kv 24, biases");
        mla_layer_destroy(lng);
    }
    src_free(&lsrc);
    src_free(&fsrc);
    src_free(&wsrc);
    return tap_done();
}

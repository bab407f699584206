/*
 * Out of memory, everywhere: each scenario runs once to count its allocations, then once for
 * every one of them with that allocation failing (mla__alloc_fail_after, core/alloc.c), as
 * SQLite tests its malloc failures. Each failing run must return MLA_ERR_OUT_OF_MEMORY with a
 * message, leave what it was given as it was (a cache's sequences, positions and values), and
 * leak nothing (LeakSanitizer and valgrind in CI). A run in which the failure was absorbed (a
 * fallback that needs no memory) must give the result of the run without it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mla/mla.h>

#include "core/core.h"
#include "../files.h"
#include "../src_layer.h"
#include "../tap.h"

#define D 48
#define N_H 4
#define N_KV 2
#define D_H 12
#define N_TOK 40

static src_layer src;
static float x[N_TOK * D];

/* ---- the state a scenario starts from, and how it is compared ------------------------------ */

typedef struct state {
    mla_layer *layer;
    mla_cache *cache;
} state;

/* Everything a caller can read of the cache (one layer here): per sequence its length, written
 * count, positions and cached values. */
typedef struct print {
    double *v;
    size_t n;
} print;

static void print_add(print *p, double v)
{
    p->v = realloc(p->v, (p->n + 1) * sizeof *p->v);
    p->v[p->n++] = v;
}

static print fingerprint(const mla_cache *c, const mla_layer *l)
{
    print p = {NULL, 0};
    mla_cache_layer_desc d;
    mla_layer_cache_desc(l, &d, sizeof d);
    int64_t rw = (int64_t)d.rope_heads * d.rope_dim;
    for (int32_t q = 0; q < 3; q++) {
        int64_t n = 0, w = 0;
        mla_cache_seq_length(c, q, &n);
        mla_cache_seq_written(c, 0, q, &w);
        print_add(&p, (double)n);
        print_add(&p, (double)w);
        float *lat = malloc((size_t)(w ? w : 1) * (size_t)d.latent_dim * sizeof *lat);
        float *rope = malloc((size_t)(w ? w : 1) * (size_t)(rw ? rw : 1) * sizeof *rope);
        int64_t *pos = malloc((size_t)(n ? n : 1) * sizeof *pos);
        if (n)
            mla_cache_seq_read(c, 0, q, 0, n, NULL, NULL, pos);
        if (w)
            mla_cache_seq_read(c, 0, q, 0, w, lat, rw ? rope : NULL, NULL);
        for (int64_t i = 0; i < n; i++)
            print_add(&p, (double)pos[i]);
        for (int64_t i = 0; i < w * d.latent_dim; i++)
            print_add(&p, lat[i]);
        for (int64_t i = 0; i < w * rw; i++)
            print_add(&p, rope[i]);
        free(lat);
        free(rope);
        free(pos);
    }
    return p;
}

static int print_same(const print *a, const print *b)
{
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

/* ---- scenarios: each returns its status and, when OK, a result to compare ------------------- */

typedef mla_status (*scenario_fn)(state *s, float *result, size_t *n_result);

/* A layer's tensor as a scenario's result. */
static mla_status copy_tensor(const mla_layer *l, const char *name, float *result,
                              size_t *n_result)
{
    mla_tensor t;
    mla_status st = mla_layer_tensor_by_name(l, name, &t);
    if (st == MLA_OK) {
        *n_result = (size_t)(t.shape[0] * t.shape[1]);
        memcpy(result, t.data, *n_result * sizeof *result);
    }
    return st;
}

/* The conversion every scenario uses: r 4, d_kv 3, with the given strategy and factorization. */
static mla_convert_params convert_params(mla_rope_strategy strategy, mla_factorization f)
{
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_strategy = strategy;
    p.rope_dim = 4;
    p.d_kv = 3;
    p.factorization = f;
    return p;
}

static mla_status convert_2norm(state *s, float *result, size_t *n_result)
{
    (void)s;
    mla_calib *cal = NULL;
    mla_layer *l = NULL;
    mla_status st = mla_calib_create(&src.g, &src.w, NULL, &cal);
    if (st == MLA_OK)
        st = mla_calib_feed(cal, x, N_TOK);
    mla_convert_params p = convert_params(MLA_ROPE_2NORM, MLA_FACTOR_ACTIVATION_JOINT);
    if (st == MLA_OK)
        st = mla_layer_convert(&src.g, &src.w, cal, &p, &l);
    if (st == MLA_OK)
        st = copy_tensor(l, "kv_proj.up_v.weight", result, n_result);
    mla_layer_destroy(l);
    mla_calib_destroy(cal);
    return st;
}

static mla_status convert_split(state *s, float *result, size_t *n_result)
{
    (void)s;
    mla_layer *l = NULL;
    mla_convert_params p = convert_params(MLA_ROPE_UNIFORM, MLA_FACTOR_SPLIT);
    mla_status st = mla_layer_convert(&src.g, &src.w, NULL, &p, &l);
    if (st == MLA_OK)
        st = copy_tensor(l, "kv_proj.up_k.weight", result, n_result);
    mla_layer_destroy(l);
    return st;
}

static mla_status rebuild_from_tensors(state *s, float *result, size_t *n_result)
{
    mla_layer_info info;
    mla_layer_get_info(s->layer, &info, sizeof info);
    mla_tensor t[16];
    for (int i = 0; i < info.n_tensors; i++)
        mla_layer_tensor(s->layer, i, &t[i]);
    mla_layer *l = NULL;
    mla_status st = mla_layer_from_tensors(&src.g, info.rope_dim, info.d_kv, t, info.n_tensors,
                                           &l);
    if (st == MLA_OK)
        st = copy_tensor(l, "kv_proj.up_k.weight", result, n_result);
    mla_layer_destroy(l);
    return st;
}

static mla_status from_mha(state *s, float *result, size_t *n_result)
{
    (void)s;
    (void)result;
    *n_result = 0;
    mla_layer *l = NULL;
    mla_status st = mla_layer_from_mha(&src.g, &src.w, &l);
    mla_layer_destroy(l);
    return st;
}

/* A cache for layer l alone, in blocks of 8 tokens. */
static mla_status one_layer_cache(const mla_layer *l, mla_dtype latent, int64_t capacity,
                                  int32_t n_seq, mla_cache **out)
{
    mla_cache_layer_desc d;
    mla_status st = mla_layer_cache_desc(l, &d, sizeof d);
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 1;
    p.layers = &d;
    p.latent_dtype = latent;
    p.block_tokens = 8;
    p.capacity_tokens = capacity;
    p.n_seq_max = n_seq;
    return st == MLA_OK ? mla_cache_create(&p, out) : st;
}

static mla_status cache_create(state *s, float *result, size_t *n_result)
{
    (void)result;
    *n_result = 0;
    mla_cache *c = NULL;
    mla_status st = one_layer_cache(s->layer, MLA_DTYPE_I8, 256, 3, &c);
    mla_cache_stats cs;
    if (st == MLA_OK)
        st = mla_cache_get_stats(c, &cs, sizeof cs);
    mla_cache_destroy(c);
    return st;
}

static void state_free(state *s)
{
    mla_cache_destroy(s->cache);
    mla_layer_destroy(s->layer);
}

/* One forward of n tokens of sequence seq from position p0, into result. */
static mla_status forward(state *s, int threads, mla_attn_path path, int32_t seq, int64_t p0,
                          int64_t n, float *result, size_t *n_result)
{
    mla_attn_params ap;
    mla_attn_default_params(&ap, sizeof ap);
    ap.n_threads = threads;
    ap.path = path;
    mla_attn *a = NULL;
    mla_status st = mla_attn_create(&ap, &a);
    int32_t sq[N_TOK];
    int64_t ps[N_TOK];
    for (int64_t i = 0; i < n; i++) {
        sq[i] = seq;
        ps[i] = p0 + i;
    }
    if (st == MLA_OK)
        st = mla_attn_forward(a, s->layer, s->cache, 0, x, n, sq, ps, result);
    if (st == MLA_OK)
        *n_result = (size_t)(n * D);
    mla_attn_destroy(a);
    return st;
}

static mla_status prefill_absorbed(state *s, float *r, size_t *n)
{
    return forward(s, 1, MLA_ATTN_PATH_ABSORBED, 2, 0, 12, r, n);
}

static mla_status prefill_materialized_2t(state *s, float *r, size_t *n)
{
    return forward(s, 2, MLA_ATTN_PATH_MATERIALIZED, 2, 0, 12, r, n);
}

static mla_status decode_after_fork(state *s, float *r, size_t *n)
{
    /* Sequence 1 shares sequence 0's blocks: its first write copies the shared block. */
    return forward(s, 2, MLA_ATTN_PATH_AUTO, 1, 20, 1, r, n);
}

/* Sequence 2's first 8 tokens and a decode token of the fork in one call. */
static mla_status mixed_batch(state *s, float *result, size_t *n_result)
{
    mla_attn_params ap;
    mla_attn_default_params(&ap, sizeof ap);
    ap.n_threads = 2;
    mla_attn *a = NULL;
    mla_status st = mla_attn_create(&ap, &a);
    int32_t sq[9] = {2, 2, 2, 2, 1, 2, 2, 2, 2};
    int64_t ps[9] = {0, 1, 2, 3, 20, 4, 5, 6, 7};
    if (st == MLA_OK)
        st = mla_attn_forward(a, s->layer, s->cache, 0, x, 9, sq, ps, result);
    if (st == MLA_OK)
        *n_result = 9 * D;
    mla_attn_destroy(a);
    return st;
}

/* The MHA baseline end to end: its layer, a cache for it, a prefill. */
static mla_status mha_baseline(state *s, float *result, size_t *n_result)
{
    (void)s;
    state m = {NULL, NULL};
    mla_status st = mla_layer_from_mha(&src.g, &src.w, &m.layer);
    if (st == MLA_OK)
        st = one_layer_cache(m.layer, MLA_DTYPE_F16, 64, 1, &m.cache);
    if (st == MLA_OK)
        st = forward(&m, 1, MLA_ATTN_PATH_AUTO, 0, 0, 10, result, n_result);
    state_free(&m);
    return st;
}

/* The weight matrices stored in bf16, then a prefill with them. Storing converts them all
 * before freeing any: a failure must leave the float32 ones (INTERNAL flags it). */
static mla_status weights_bf16(state *s, float *result, size_t *n_result)
{
    mla_status st = mla_layer_set_weight_dtype(s->layer, MLA_DTYPE_BF16);
    if (st != MLA_OK) {
        mla_layer_info info;
        mla_tensor t;
        int kept = mla_layer_get_info(s->layer, &info, sizeof info) == MLA_OK &&
                   info.weight_dtype == MLA_DTYPE_F32 &&
                   mla_layer_tensor_by_name(s->layer, "o_proj.weight", &t) == MLA_OK &&
                   t.dtype == MLA_DTYPE_F32;
        return kept ? st : MLA_ERR_INTERNAL;
    }
    return forward(s, 2, MLA_ATTN_PATH_AUTO, 2, 0, 12, result, n_result);
}

static mla_status cache_cp(state *s, float *result, size_t *n_result)
{
    (void)result;
    *n_result = 0;
    return mla_cache_seq_cp(s->cache, 0, 2, 4, 12);
}

/* A context shift of the fork, after its oldest 3 tokens were removed (setup_shift): it
 * rewrites the RoPE keys of blocks it shares with sequence 0, so it copies them first. */
static void setup_shift(state *s)
{
    mla_cache_seq_rm(s->cache, 1, 0, 3);
}

static mla_status cache_shift(state *s, float *result, size_t *n_result)
{
    (void)result;
    *n_result = 0;
    return mla_cache_seq_shift(s->cache, 1, 3, 20, -3);
}

static mla_status snapshot_load(state *s, float *result, size_t *n_result)
{
    (void)result;
    *n_result = 0;
    size_t size = 0;
    mla_status st = mla_cache_save_size(s->cache, 0, &size);
    void *buf = malloc(size);
    if (st == MLA_OK)
        st = mla_cache_save(s->cache, 0, buf, size, &size);
    if (st == MLA_OK)
        st = mla_cache_load(s->cache, 2, buf, size);
    free(buf);
    return st;
}

/* Saving to a file over an earlier snapshot: a failed save leaves that file, byte for byte, and
 * no temporary beside it (checked here: a difference turns the status into INTERNAL). */
static char dir[64], target[96];

static void setup_save(state *s)
{
    mla_cache_save_file(s->cache, 1, target);
}

static mla_status save_file(state *s, float *result, size_t *n_result)
{
    (void)result;
    *n_result = 0;
    size_t n0, n1;
    unsigned char *before = read_all(target, &n0);
    mla_status st = mla_cache_save_file(s->cache, -1, target);
    unsigned char *after = read_all(target, &n1);
    if (st != MLA_OK && (!before || !after || n0 != n1 || memcmp(before, after, n0) != 0 ||
                         count_files(dir) != 1)) {
        char why[256]; /* mla_fail writes the buffer mla_last_error reads */
        snprintf(why, sizeof why, "%s", mla_last_error());
        st = mla_fail(MLA_ERR_INTERNAL, "the failed save changed %s or left a temporary (%s)",
                      target, why);
    }
    free(before);
    free(after);
    return st;
}

/* ---- the driver ----------------------------------------------------------------------------- */

/* A layer converted without injection, and a cache holding sequence 0 (20 tokens) and its fork,
 * sequence 1. */
static void state_make(state *s)
{
    mla_convert_params p = convert_params(MLA_ROPE_UNIFORM, MLA_FACTOR_JOINT);
    s->layer = NULL;
    s->cache = NULL;
    if (mla_layer_convert(&src.g, &src.w, NULL, &p, &s->layer) != MLA_OK)
        return;
    if (one_layer_cache(s->layer, MLA_DTYPE_F16, 256, 3, &s->cache) != MLA_OK)
        return;
    static float out[N_TOK * D];
    size_t n;
    forward(s, 1, MLA_ATTN_PATH_AUTO, 0, 0, 20, out, &n);
    mla_cache_seq_fork(s->cache, 0, 1);
}

static void run_after(const char *name, void (*setup)(state *), scenario_fn f)
{
    static float want[N_TOK * D * 4], got[N_TOK * D * 4];
    size_t n_want = 0, n_got = 0;
    state s;
    state_make(&s);
    if (setup)
        setup(&s);
    mla_status st = f(&s, want, &n_want);
    state_free(&s);
    CHECK(st == MLA_OK, "%s: runs without injection (%s)", name,
          st == MLA_OK ? "ok" : mla_last_error());
    if (st != MLA_OK)
        return;
    int allocs = 0, bad_status = 0, bad_state = 0, bad_result = 0, absorbed = 0;
    char first_bad[256] = "";
    for (long long k = 0; k < 100000; k++) {
        state_make(&s);
        if (setup)
            setup(&s);
        print before = s.cache ? fingerprint(s.cache, s.layer) : (print){NULL, 0};
        mla_clear_error();
        mla__alloc_fail_after(k);
        st = f(&s, got, &n_got);
        int fired = mla__alloc_fail_pending() < 0;
        mla__alloc_fail_after(-1);
        if (!fired) {
            allocs = (int)k;
            free(before.v);
            state_free(&s);
            break;
        }
        if (st == MLA_OK) {
            /* The failure was absorbed: the result must be the one without it. */
            absorbed++;
            if (n_got != n_want || (n_want && memcmp(got, want, n_want * sizeof *got) != 0))
                bad_result++;
        } else if (st != MLA_ERR_OUT_OF_MEMORY || !*mla_last_error()) {
            if (!bad_status++)
                snprintf(first_bad, sizeof first_bad, "allocation %lld: %s (%s)", k,
                         mla_status_string(st), mla_last_error());
        } else if (s.cache) {
            print after = fingerprint(s.cache, s.layer);
            if (!print_same(&before, &after) && !bad_state++)
                snprintf(first_bad, sizeof first_bad, "allocation %lld: the cache changed (%s)",
                         k, mla_last_error());
            free(after.v);
        }
        free(before.v);
        state_free(&s);
    }
    CHECK(allocs > 0 && bad_status == 0 && bad_state == 0 && bad_result == 0,
          "%s: each of its %d allocations failing gives OUT_OF_MEMORY with a message and "
          "leaves the cache as it was (%d absorbed with the same result) %s", name, allocs,
          absorbed, first_bad);
}

static void run(const char *name, scenario_fn f)
{
    run_after(name, NULL, f);
}

int main(void)
{
    src_layer_init(&src, D, N_H, N_KV, D_H, 1, 4242, 0.3);
    unsigned long long seed = 99;
    for (int i = 0; i < N_TOK * D; i++)
        x[i] = (float)tap_rand(&seed);
    run("calibration and 2-norm activation-aware conversion", convert_2norm);
    run("split conversion", convert_split);
    run("a layer from tensors", rebuild_from_tensors);
    run("a layer from MHA weights", from_mha);
    run("an I8 cache and its stats", cache_create);
    run("a prefill on the absorbed path, 1 thread", prefill_absorbed);
    run("a prefill on the materialized path, 2 threads", prefill_materialized_2t);
    run("a decode into a forked sequence, 2 threads", decode_after_fork);
    run("a mixed batch: a prefill chunk and a decode into a forked sequence", mixed_batch);
    run("the MHA baseline: layer, cache and prefill", mha_baseline);
    run("a copy of part of a sequence", cache_cp);
    run("the weight matrices stored in bf16, then a prefill", weights_bf16);
    run_after("a context shift of a forked sequence", setup_shift, cache_shift);
    run("a snapshot saved and loaded", snapshot_load);
    strcpy(dir, "/tmp/mla_oom.XXXXXX");
    CHECK(mkdtemp(dir) != NULL, "a scratch directory");
    snprintf(target, sizeof target, "%s/seq.mlac", dir);
    run_after("a snapshot saved over an earlier file", setup_save, save_file);
    unlink(target);
    rmdir(dir);
    src_free(&src);
    return tap_done();
}

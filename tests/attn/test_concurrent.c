/*
 * Distinct mla_attn handles on distinct sequences of one cache, concurrently (attn.h allows it):
 * four threads prefill and decode their own sequence of one shared cache, allocating its small
 * blocks as they go; sequence 3 starts as a fork of sequence 0's prompt, so two threads read
 * shared blocks and one of them copies the last before writing. The same calls made one after
 * another on a cache of its own are the reference: every output must agree with it (to float32
 * rounding: the blocks the threads interleave may group a sum differently), and each sequence's
 * cached positions and values must be the same bit for bit. MLA_TEST_FORWARD_THREADS=n gives each
 * forward n threads of its handle's pool, MLA_TEST_FORWARD_OPENMP=1 OpenMP's instead; with
 * MLA_ATTN_PARALLEL_MIN_FLOPS=0 every loop of this small layer goes to them. CI also runs it
 * under ThreadSanitizer (suite "threads": one thread a forward, and two of the pool's, four
 * handles on two cores), not with OpenMP, whose runtime is not built for it.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "../src_layer.h"
#include "../tap.h"

#define D 64
#define N_SEQ 4
#define PROMPT 24
#define N_IN 48 /* the prompt, then 24 tokens decoded one at a time */

static mla_layer *layer;
static float xin[N_SEQ][N_IN * D];
static float want[N_SEQ][N_IN * D], got[N_SEQ][N_IN * D];

typedef struct job {
    mla_cache *cache;
    int32_t seq;
    int prompt; /* run the prompt first (sequences 0 and 3 have theirs already) */
    float *out;
    mla_status st;
} job;

static int forward_threads = 1;
static mla_attn_threads forward_runtime = MLA_ATTN_THREADS_POOL;

static mla_attn *attn_new(void)
{
    mla_attn_params p;
    mla_attn_default_params(&p, sizeof p);
    p.n_threads = forward_threads;
    p.threads = forward_runtime;
    mla_attn *a = NULL;
    return mla_attn_create(&p, &a) == MLA_OK ? a : NULL;
}

static mla_status prompt(mla_attn *a, mla_cache *c, int32_t seq, float *out)
{
    int32_t sq[PROMPT];
    int64_t ps[PROMPT];
    for (int i = 0; i < PROMPT; i++) {
        sq[i] = seq;
        ps[i] = i;
    }
    return mla_attn_forward(a, layer, c, 0, xin[seq], PROMPT, sq, ps, out);
}

static void *run_seq(void *arg)
{
    job *jb = arg;
    mla_attn *a = attn_new();
    jb->st = a ? MLA_OK : MLA_ERR_OUT_OF_MEMORY;
    if (jb->st == MLA_OK && jb->prompt)
        jb->st = prompt(a, jb->cache, jb->seq, jb->out);
    for (int t = PROMPT; t < N_IN && jb->st == MLA_OK; t++) {
        int64_t pos = t;
        jb->st = mla_attn_forward(a, layer, jb->cache, 0, xin[jb->seq] + (size_t)t * D, 1,
                                  &jb->seq, &pos, jb->out + (size_t)t * D);
    }
    mla_attn_destroy(a);
    return NULL;
}

/* A cache of small blocks (the threads allocate often) holding sequence 0's prompt and its
 * fork, sequence 3. */
static mla_cache *start(float *out0)
{
    mla_cache_layer_desc d;
    mla_layer_cache_desc(layer, &d, sizeof d);
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 1;
    p.layers = &d;
    p.block_tokens = 4;
    p.capacity_tokens = N_SEQ * N_IN + 16;
    p.n_seq_max = N_SEQ;
    mla_cache *c = NULL;
    mla_attn *a = attn_new();
    mla_status st = a ? mla_cache_create(&p, &c) : MLA_ERR_OUT_OF_MEMORY;
    if (st == MLA_OK)
        st = prompt(a, c, 0, out0);
    if (st == MLA_OK)
        st = mla_cache_seq_fork(c, 0, 3);
    mla_attn_destroy(a);
    if (st != MLA_OK) {
        mla_cache_destroy(c);
        return NULL;
    }
    return c;
}

/* Each sequence's positions and cached values in a and b, bit for bit. */
static int same_contents(const mla_cache *a, const mla_cache *b)
{
    mla_cache_layer_desc d;
    mla_layer_cache_desc(layer, &d, sizeof d);
    size_t nl = (size_t)N_IN * (size_t)d.latent_dim;
    size_t nr = (size_t)N_IN * (size_t)d.rope_heads * (size_t)d.rope_dim;
    float *va = malloc((nl + nr) * sizeof *va), *vb = malloc((nl + nr) * sizeof *vb);
    int64_t pa[N_IN], pb[N_IN];
    int ok = va && vb;
    for (int32_t q = 0; q < N_SEQ && ok; q++) {
        int64_t na = 0, nb = 0;
        mla_cache_seq_length(a, q, &na);
        mla_cache_seq_length(b, q, &nb);
        ok = na == N_IN && nb == N_IN &&
             mla_cache_seq_read(a, 0, q, 0, N_IN, va, va + nl, pa) == MLA_OK &&
             mla_cache_seq_read(b, 0, q, 0, N_IN, vb, vb + nl, pb) == MLA_OK &&
             memcmp(va, vb, (nl + nr) * sizeof *va) == 0 && memcmp(pa, pb, sizeof pa) == 0;
    }
    free(va);
    free(vb);
    return ok;
}

int main(void)
{
    const char *ft = getenv("MLA_TEST_FORWARD_THREADS");
    forward_threads = ft && atoi(ft) > 0 ? atoi(ft) : 1;
    const char *fo = getenv("MLA_TEST_FORWARD_OPENMP");
    if (fo && *fo == '1')
        forward_runtime = MLA_ATTN_THREADS_OPENMP;
    src_layer src;
    src_layer_init(&src, D, 8, 2, 16, 1, 77, 0.3);
    mla_convert_params cp;
    mla_convert_default_params(&cp, sizeof cp);
    cp.rope_strategy = MLA_ROPE_UNIFORM;
    cp.rope_dim = 4;
    cp.d_kv = 4;
    mla_status st = mla_layer_convert(&src.g, &src.w, NULL, &cp, &layer);
    CHECK(st == MLA_OK, "convert (%s)", st ? mla_last_error() : "ok");
    unsigned long long seed = 5;
    for (int q = 0; q < N_SEQ; q++)
        for (int i = 0; i < N_IN * D; i++)
            xin[q][i] = (float)tap_rand(&seed);
    memcpy(xin[3], xin[0], PROMPT * D * sizeof(float)); /* the fork's prompt is 0's */

    /* The reference: one sequence after another. */
    mla_cache *alone = start(want[0]), *shared = alone ? start(got[0]) : NULL;
    CHECK(alone && shared, "two caches holding sequence 0's prompt and its fork (%s)",
          alone && shared ? "ok" : mla_last_error());
    if (!alone || !shared)
        return tap_done();
    job ref[N_SEQ], par[N_SEQ];
    int ref_ok = 1, par_ok = 1;
    for (int32_t q = 0; q < N_SEQ; q++) {
        ref[q] = (job){alone, q, q == 1 || q == 2, want[q], MLA_OK};
        run_seq(&ref[q]);
        ref_ok &= ref[q].st == MLA_OK;
    }
    CHECK(ref_ok, "the sequences one after another (%s)", ref_ok ? "ok" : mla_last_error());

    /* The same four at once, one thread each. */
    pthread_t th[N_SEQ];
    for (int32_t q = 0; q < N_SEQ; q++) {
        par[q] = (job){shared, q, q == 1 || q == 2, got[q], MLA_OK};
        pthread_create(&th[q], NULL, run_seq, &par[q]);
    }
    for (int q = 0; q < N_SEQ; q++) {
        pthread_join(th[q], NULL);
        par_ok &= par[q].st == MLA_OK;
    }
    CHECK(par_ok, "four threads, one sequence each, every call succeeds");

    double worst = 0;
    for (int q = 0; q < N_SEQ; q++) {
        int from = par[q].prompt ? 0 : PROMPT;
        double m = 0;
        for (int i = from * D; i < N_IN * D; i++)
            m = fmax(m, fabs(want[q][i]));
        for (int i = from * D; i < N_IN * D; i++)
            worst = fmax(worst, fabs(got[q][i] - want[q][i]) / (m + 1e-30));
    }
    CHECK(worst < 1e-5, "every output as in the sequential run (largest difference %.1e of the "
          "sequence's largest value)", worst);
    CHECK(same_contents(alone, shared),
          "each sequence's cached positions and values as in the sequential run, bit for bit");
    mla_cache_stats sa, sb;
    mla_cache_get_stats(alone, &sa, sizeof sa);
    mla_cache_get_stats(shared, &sb, sizeof sb);
    CHECK(sa.tokens_used == sb.tokens_used && sa.blocks_free == sb.blocks_free,
          "the same slots and free blocks (%lld, %lld)", (long long)sb.tokens_used,
          (long long)sb.blocks_free);
    mla_cache_destroy(alone);
    mla_cache_destroy(shared);
    mla_layer_destroy(layer);
    src_free(&src);
    return tap_done();
}

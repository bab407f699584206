/*
 * Several sequences through one converted layer, the way a serving engine batches them: four
 * prompts of different lengths are prefilled in one call (their tokens interleaved: each token
 * names its sequence and position), then every call decodes one token of each sequence. The
 * example checks the batch against each sequence run alone through a cache of its own, and fails
 * if they differ. bench/bench_decode --batch N measures such calls (doc/attention.md, "Batched
 * decode").
 *
 *   batch_decode [--openmp]
 *
 * The forwards run on every core: the handle's own worker threads, or with --openmp the
 * process's OpenMP runtime, the choice for an engine whose own parallel work runs on OpenMP
 * (doc/attention.md, "Threads").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#define D 256
#define N_H 8
#define N_KV 4
#define D_H 32
#define N_SEQ 4
#define STEPS 8
#define MAX_PROMPT 40

static const int prompt_len[N_SEQ] = {40, 25, 33, 12};

static unsigned long long state = 777;

static float frand(void)
{
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int fail(const char *what, mla_status st)
{
    fprintf(stderr, "%s: %s (%s)\n", what, mla_status_string(st), mla_last_error());
    return 1;
}

static mla_status make_cache(const mla_layer *layer, int n_seq, mla_cache **out)
{
    mla_cache_layer_desc desc;
    mla_status st = mla_layer_cache_desc(layer, &desc, sizeof desc);
    if (st != MLA_OK)
        return st;
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 1;
    p.layers = &desc;
    /* Every sequence fills blocks of its own: room for each one's longest length. */
    p.block_tokens = 16;
    p.capacity_tokens = (int64_t)n_seq * ((MAX_PROMPT + STEPS + 15) / 16 * 16);
    p.n_seq_max = n_seq;
    return mla_cache_create(&p, out);
}

/* The hidden state of token `pos` of sequence `seq` (after the input norm; made up here). */
static float *token(float *xs, int seq, int64_t pos)
{
    return xs + ((size_t)seq * (MAX_PROMPT + STEPS) + (size_t)pos) * D;
}

int main(int argc, char **argv)
{
    int openmp = argc == 2 && strcmp(argv[1], "--openmp") == 0;
    if (argc > 1 && !openmp) {
        fprintf(stderr, "usage: %s [--openmp]\n", argv[0]);
        return 2;
    }
    static float wq[N_H * D_H * D], wk[N_KV * D_H * D], wv[N_KV * D_H * D], wo[D * N_H * D_H];
    float s = 1.0f / sqrtf((float)D);
    for (size_t i = 0; i < sizeof wq / sizeof wq[0]; i++) {
        wq[i] = s * frand();
        wo[i] = s * frand();
    }
    for (size_t i = 0; i < sizeof wk / sizeof wk[0]; i++) {
        wk[i] = s * frand();
        wv[i] = s * frand();
    }
    mla_geometry g;
    mla_geometry_default_params(&g, sizeof g);
    g.d_model = D;
    g.n_heads = N_H;
    g.n_kv_heads = N_KV;
    g.head_dim = D_H;
    mla_layer_weights w;
    mla_layer_weights_default_params(&w, sizeof w);
    w.wq = wq;
    w.wk = wk;
    w.wv = wv;
    w.wo = wo;
    mla_convert_params cp;
    mla_convert_default_params(&cp, sizeof cp);
    cp.rope_dim = 8;
    cp.d_kv = 16;
    mla_layer *layer = NULL;
    mla_status st = mla_layer_convert(&g, &w, NULL, &cp, &layer);
    if (st != MLA_OK)
        return fail("mla_layer_convert", st);

    mla_cache *batch = NULL, *alone[N_SEQ] = {NULL};
    if ((st = make_cache(layer, N_SEQ, &batch)) != MLA_OK)
        return fail("mla_cache_create", st);
    for (int q = 0; q < N_SEQ; q++)
        if ((st = make_cache(layer, 1, &alone[q])) != MLA_OK)
            return fail("mla_cache_create", st);
    mla_attn_params ap;
    mla_attn_default_params(&ap, sizeof ap);
    ap.n_threads = 0; /* all cores */
    ap.threads = openmp ? MLA_ATTN_THREADS_OPENMP : MLA_ATTN_THREADS_POOL;
    mla_attn *attn = NULL;
    if ((st = mla_attn_create(&ap, &attn)) != MLA_OK)
        return fail("mla_attn_create", st);

    static float xs[N_SEQ * (MAX_PROMPT + STEPS) * D], yb[N_SEQ * (MAX_PROMPT + STEPS) * D];
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        xs[i] = frand();

    /* Prefill: one call with every prompt's tokens, interleaved round-robin across sequences
     * (any order works; each sequence's positions must continue what its cache holds). */
    static float x[N_SEQ * MAX_PROMPT * D], y[N_SEQ * MAX_PROMPT * D];
    int32_t seq[N_SEQ * MAX_PROMPT];
    int64_t pos[N_SEQ * MAX_PROMPT];
    int n = 0;
    for (int p = 0; p < MAX_PROMPT; p++)
        for (int q = 0; q < N_SEQ; q++)
            if (p < prompt_len[q]) {
                for (int i = 0; i < D; i++)
                    x[n * D + i] = token(xs, q, p)[i];
                seq[n] = q;
                pos[n] = p;
                n++;
            }
    if ((st = mla_attn_forward(attn, layer, batch, 0, x, n, seq, pos, y)) != MLA_OK)
        return fail("batched prefill", st);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < D; i++)
            token(yb, seq[t], pos[t])[i] = y[t * D + i];

    /* Decode: each call takes the next token of every sequence. */
    for (int step = 0; step < STEPS; step++) {
        for (int q = 0; q < N_SEQ; q++) {
            seq[q] = q;
            pos[q] = prompt_len[q] + step;
            for (int i = 0; i < D; i++)
                x[q * D + i] = token(xs, q, pos[q])[i];
        }
        if ((st = mla_attn_forward(attn, layer, batch, 0, x, N_SEQ, seq, pos, y)) != MLA_OK)
            return fail("batched decode", st);
        for (int q = 0; q < N_SEQ; q++)
            for (int i = 0; i < D; i++)
                token(yb, q, pos[q])[i] = y[q * D + i];
    }

    /* The same tokens, each sequence alone: its prompt in one call, then one token a call. */
    double diff = 0, big = 0;
    for (int q = 0; q < N_SEQ; q++) {
        int32_t zero[MAX_PROMPT] = {0};
        int64_t p0[MAX_PROMPT];
        for (int p = 0; p < prompt_len[q]; p++)
            p0[p] = p;
        if ((st = mla_attn_forward(attn, layer, alone[q], 0, token(xs, q, 0), prompt_len[q], zero,
                                   p0, y)) != MLA_OK)
            return fail("prefill alone", st);
        for (int step = 0; step < STEPS; step++) {
            int64_t p = prompt_len[q] + step;
            if ((st = mla_attn_forward(attn, layer, alone[q], 0, token(xs, q, p), 1, zero, &p,
                                       y + (size_t)(prompt_len[q] + step) * D)) != MLA_OK)
                return fail("decode alone", st);
        }
        for (int p = 0; p < prompt_len[q] + STEPS; p++)
            for (int i = 0; i < D; i++) {
                double a = token(yb, q, p)[i], b = y[(size_t)p * D + i];
                /* Comparisons, not fmax: GCC 12 for AArch64 crashes vectorizing this loop
                 * with fmax (doc/testing.md). */
                double d = fabs(a - b), m = fabs(b);
                diff = d > diff ? d : diff;
                big = m > big ? m : big;
            }
    }
    /* The same math summed in another order (a batch's products are taken over more rows at
     * once): equal to float32 rounding, relative to the largest output. */
    double worst = diff / big;

    mla_cache_stats cs;
    mla_cache_get_stats(batch, &cs, sizeof cs);
    printf("%d sequences (prompts of %d, %d, %d and %d tokens) prefilled in one call of %d "
           "tokens, then %d calls of %d tokens each, on %s threads\n", N_SEQ, prompt_len[0],
           prompt_len[1], prompt_len[2], prompt_len[3], n, STEPS, N_SEQ,
           openmp ? "OpenMP's" : "the handle's own");
    printf("the batch against each sequence run alone: max difference %.1e of the largest "
           "output\n", worst);
    printf("the shared cache holds %lld token slots, %lld bytes a token (the MHA layer's "
           "cache: %lld)\n", (long long)cs.tokens_used, (long long)cs.bytes_per_token,
           (long long)cs.mha_bytes_per_token);
    if (!(worst < 1e-5))
        return fail("the batch differs from the sequences run alone", MLA_ERR_INTERNAL);

    mla_attn_destroy(attn);
    for (int q = 0; q < N_SEQ; q++)
        mla_cache_destroy(alone[q]);
    mla_cache_destroy(batch);
    mla_layer_destroy(layer);
    return 0;
}

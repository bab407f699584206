/*
 * Fork-and-continue with the latent KV cache: two sequences share a prompt's blocks and each
 * continues with its own tokens. Only the block the prompt ends in is copied (copy-on-write);
 * the rest of the prompt is stored once.
 *
 * The cached values here are synthetic (a converted model's layers would produce them: see
 * mla_layer_cache_desc and lib/attn); the geometry is SmolLM-135M's with d_kv 16, r 8.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#define N_LAYERS 30
#define N_KV 3
#define D_KV 16
#define R 8
#define LATENT (N_KV * D_KV)
#define ROPE (N_KV * R)
#define PROMPT 100
#define CONTINUE 20

static int fail(const char *what, mla_status st)
{
    fprintf(stderr, "%s: %s (%s)\n", what, mla_status_string(st), mla_last_error());
    return 1;
}

/* Stand-in for one token's latent and RoPE key at one layer. */
static void token(int seq, int pos, int layer, float *latent, float *rope)
{
    for (int i = 0; i < LATENT; i++)
        latent[i] = (float)((seq * 7919 + pos * 31 + layer * 17 + i) % 200 - 100) / 64.0f;
    for (int i = 0; i < ROPE; i++)
        rope[i] = (float)((seq * 104729 + pos * 13 + layer * 5 + i) % 100 - 50) / 32.0f;
}

/* Write n tokens of one sequence, layer by layer as a forward pass would. */
static mla_status run(mla_cache *c, int seq, int pos, int n, int data_seq)
{
    float *lat = malloc(sizeof(float) * LATENT * (size_t)n);
    float *rope = malloc(sizeof(float) * ROPE * (size_t)n);
    mla_status st = lat && rope ? MLA_OK : MLA_ERR_OUT_OF_MEMORY;
    for (int l = 0; l < N_LAYERS && st == MLA_OK; l++) {
        for (int t = 0; t < n; t++)
            token(data_seq, pos + t, l, lat + LATENT * t, rope + ROPE * t);
        st = mla_cache_write(c, l, seq, pos, n, lat, rope);
    }
    free(lat);
    free(rope);
    return st;
}

static void report(const mla_cache *c, const char *when)
{
    mla_cache_stats st;
    int64_t n0 = 0, n1 = 0;
    mla_cache_get_stats(c, &st, sizeof st);
    mla_cache_seq_length(c, 0, &n0);
    mla_cache_seq_length(c, 1, &n1);
    int64_t blocks = st.blocks_total - st.blocks_free;
    printf("%-28s seq0 %3lld, seq1 %3lld tokens | %2lld blocks (%lld bytes), %3lld slots; "
           "shared %3lld slots = %lld bytes saved\n", when, (long long)n0, (long long)n1,
           (long long)blocks, (long long)st.bytes_used, (long long)st.tokens_used,
           (long long)(n0 + n1 - st.tokens_used),
           (long long)((n0 + n1 - st.tokens_used) * st.bytes_per_token));
}

int main(void)
{
    static float freqs[N_KV * R / 2];
    mla_cache_layer_desc layers[N_LAYERS];
    for (int l = 0; l < N_LAYERS; l++) {
        mla_cache_layer_desc_default_params(&layers[l], sizeof layers[l]);
        layers[l].latent_dim = LATENT;
        layers[l].rope_heads = N_KV;
        layers[l].rope_dim = R;
        layers[l].rope_freqs = freqs; /* used only by mla_cache_seq_shift */
        layers[l].mha_kv_dim = N_KV * 64;
    }
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = N_LAYERS;
    p.layers = layers;
    p.latent_dtype = MLA_DTYPE_F16;
    p.rope_dtype = MLA_DTYPE_F16;
    p.block_tokens = 16;
    p.capacity_tokens = 1024;
    p.n_seq_max = 2;
    mla_cache *c = NULL;
    mla_status st = mla_cache_create(&p, &c);
    if (st != MLA_OK)
        return fail("mla_cache_create", st);
    mla_cache_stats s;
    mla_cache_get_stats(c, &s, sizeof s);
    printf("%d layers, latent %d + RoPE %d values per layer: %lld bytes/token (MHA: %lld), "
           "blocks of %d tokens = %lld bytes\n\n", N_LAYERS, LATENT, ROPE,
           (long long)s.bytes_per_token, (long long)s.mha_bytes_per_token, p.block_tokens,
           (long long)s.block_bytes);

    if ((st = run(c, 0, 0, PROMPT, 0)) != MLA_OK)
        return fail("prompt", st);
    report(c, "prompt in seq 0:");
    if ((st = mla_cache_seq_fork(c, 0, 1)) != MLA_OK)
        return fail("mla_cache_seq_fork", st);
    report(c, "fork 0 -> 1:");
    /* each sequence continues with different tokens (data_seq 0 and 1) */
    for (int step = 0; step < CONTINUE; step++) {
        if ((st = run(c, 0, PROMPT + step, 1, 0)) != MLA_OK ||
            (st = run(c, 1, PROMPT + step, 1, 1)) != MLA_OK)
            return fail("continue", st);
        if (step == 0)
            report(c, "one token each:");
    }
    report(c, "20 tokens each:");

    /* the shared prompt is the same in both; the continuations differ */
    float a[LATENT], b[LATENT], ra[ROPE], rb[ROPE], want[LATENT], wr[ROPE];
    mla_cache_seq_read(c, 5, 0, 42, 1, a, ra, NULL);
    mla_cache_seq_read(c, 5, 1, 42, 1, b, rb, NULL);
    printf("\nprompt token 42, layer 5: seq 0 and seq 1 %s\n",
           memcmp(a, b, sizeof a) == 0 && memcmp(ra, rb, sizeof ra) == 0
               ? "identical (one copy in the cache)" : "DIFFER");
    mla_cache_seq_read(c, 5, 1, PROMPT + 3, 1, b, rb, NULL);
    token(1, PROMPT + 3, 5, want, wr);
    int same = memcmp(b, want, sizeof b) == 0; /* the synthetic values are exact in f16 */
    printf("seq 1 token %d, layer 5: reads back %s\n", PROMPT + 3,
           same ? "what was written" : "DIFFERENT values");

    /* drop the first continuation: its blocks return to the pool, the prompt stays */
    mla_cache_seq_rm(c, 0, -1, -1);
    report(c, "seq 0 removed:");
    mla_cache_destroy(c);
    return 0;
}

/*
 * A converted layer through prefill and decode: random MHA weights are converted to MLA
 * (partial RoPE + joint SVD), a latent cache is created for the layer, a prompt is prefilled in
 * one call, then tokens are decoded one at a time. The MHA layer runs beside it on its own cache,
 * and the example prints how far the converted layer's outputs are from the original's, how
 * much smaller its cache is, the prefill's progress reports, and the scratch memory the
 * attention handle kept after the prompt (released before the decodes). Then it rewinds: a
 * position the layer already holds is refused, so the last tokens (a rejected draft, say) are
 * removed and decoded again. Last, the layer's weight matrices are stored in bf16 (half the
 * bytes a token reads besides the cache) and those tokens decoded once more.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <mla/mla.h>

#define D 256
#define N_H 8
#define N_KV 4
#define D_H 32
#define PROMPT 48
#define DECODE 16

static unsigned long long state = 12345;

static float frand(void)
{
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Progress of a long forward: a host would update a bar here, or return nonzero to cancel. */
typedef struct prompt_progress {
    int reports;
    int64_t done, total;
} prompt_progress;

static int on_progress(void *user, int64_t done, int64_t total)
{
    prompt_progress *pp = user;
    pp->reports++;
    pp->done = done;
    pp->total = total;
    return 0;
}

static int fail(const char *what, mla_status st)
{
    fprintf(stderr, "%s: %s (%s)\n", what, mla_status_string(st), mla_last_error());
    return 1;
}

static mla_status make_cache(const mla_layer *layer, mla_cache **out)
{
    mla_cache_layer_desc desc;
    mla_status st = mla_layer_cache_desc(layer, &desc, sizeof desc);
    if (st != MLA_OK)
        return st;
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 1;
    p.layers = &desc;
    p.capacity_tokens = PROMPT + DECODE;
    p.n_seq_max = 1;
    return mla_cache_create(&p, out);
}

int main(void)
{
    /* A source layer: random weights of a small GQA model. */
    static float wq[N_H * D_H * D], wk[N_KV * D_H * D], wv[N_KV * D_H * D], wo[D * N_H * D_H];
    float s = 1.0f / sqrtf((float)D);
    for (size_t i = 0; i < sizeof wq / sizeof wq[0]; i++)
        wq[i] = s * frand();
    for (size_t i = 0; i < sizeof wk / sizeof wk[0]; i++) {
        wk[i] = s * frand();
        wv[i] = s * frand();
    }
    for (size_t i = 0; i < sizeof wo / sizeof wo[0]; i++)
        wo[i] = s * frand();
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

    /* Convert: keep 8 RoPE dimensions per head, a latent of 16 per KV head. */
    mla_convert_params cp;
    mla_convert_default_params(&cp, sizeof cp);
    cp.rope_dim = 8;
    cp.d_kv = 16;
    mla_layer *mla = NULL, *mha = NULL;
    mla_status st = mla_layer_convert(&g, &w, NULL, &cp, &mla);
    if (st != MLA_OK)
        return fail("mla_layer_convert", st);
    if ((st = mla_layer_from_mha(&g, &w, &mha)) != MLA_OK)
        return fail("mla_layer_from_mha", st);

    mla_cache *cache = NULL, *mha_cache = NULL;
    if ((st = make_cache(mla, &cache)) != MLA_OK || (st = make_cache(mha, &mha_cache)) != MLA_OK)
        return fail("mla_cache_create", st);
    mla_attn_params ap;
    mla_attn_default_params(&ap, sizeof ap);
    ap.n_threads = 0;                   /* all cores */
    ap.max_scratch_bytes = 64 << 20;    /* a guard: a batch that needs more fails (CAPACITY) */
    mla_attn *attn = NULL;
    if ((st = mla_attn_create(&ap, &attn)) != MLA_OK)
        return fail("mla_attn_create", st);

    /* Inputs: the hidden states after the input norm, made up here. */
    static float x[(PROMPT + DECODE) * D], y[(PROMPT + DECODE) * D], ym[(PROMPT + DECODE) * D];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        x[i] = frand();
    int32_t seq[PROMPT] = {0};
    int64_t pos[PROMPT];
    for (int i = 0; i < PROMPT; i++)
        pos[i] = i;

    /* Prefill the prompt in one call (reporting its progress), then decode one token per call. */
    prompt_progress pp = {0, 0, 0};
    if ((st = mla_attn_set_progress(attn, on_progress, &pp)) != MLA_OK ||
        (st = mla_attn_forward(attn, mla, cache, 0, x, PROMPT, seq, pos, y)) != MLA_OK ||
        (st = mla_attn_set_progress(attn, NULL, NULL)) != MLA_OK ||
        (st = mla_attn_forward(attn, mha, mha_cache, 0, x, PROMPT, seq, pos, ym)) != MLA_OK)
        return fail("prefill", st);
    printf("prefill progress: %d report(s), the last %lld of %lld (query, context token) pairs\n",
           pp.reports, (long long)pp.done, (long long)pp.total);
    /* The handle keeps the prompt's scratch for the next call; decodes need less, so release
     * it (a host holding many handles would). */
    int64_t held = 0, after = 0;
    mla_attn_scratch_bytes(attn, &held);
    if ((st = mla_attn_scratch_release(attn)) != MLA_OK)
        return fail("mla_attn_scratch_release", st);
    for (int t = PROMPT; t < PROMPT + DECODE; t++) {
        int64_t p = t;
        if ((st = mla_attn_forward(attn, mla, cache, 0, x + t * D, 1, seq, &p, y + t * D)) !=
                MLA_OK ||
            (st = mla_attn_forward(attn, mha, mha_cache, 0, x + t * D, 1, seq, &p, ym + t * D)) !=
                MLA_OK)
            return fail("decode", st);
    }
    mla_attn_scratch_bytes(attn, &after);
    printf("scratch memory: %lld bytes after the prefill, released, %lld after the decodes\n",
           (long long)held, (long long)after);

    /* Rewind: decoding a position again is refused (the cache layer already holds it); remove
     * the last REWIND positions, then decode them again, with the same result. */
    enum { REWIND = 4 };
    int64_t last = PROMPT + DECODE - 1;
    st = mla_attn_forward(attn, mla, cache, 0, x + last * D, 1, seq, &last, y + last * D);
    if (st == MLA_OK)
        return fail("decoding a position twice was accepted", MLA_ERR_INTERNAL);
    printf("decoding position %lld again is refused: %s\n", (long long)last, mla_last_error());
    if ((st = mla_cache_seq_rm(cache, 0, PROMPT + DECODE - REWIND, -1)) != MLA_OK)
        return fail("mla_cache_seq_rm", st);
    double redo = 0;
    for (int t = PROMPT + DECODE - REWIND; t < PROMPT + DECODE; t++) {
        int64_t p = t;
        float again[D];
        if ((st = mla_attn_forward(attn, mla, cache, 0, x + t * D, 1, seq, &p, again)) != MLA_OK)
            return fail("decode after rewind", st);
        for (int i = 0; i < D; i++)
            redo = fmax(redo, fabs((double)again[i] - y[t * D + i]));
    }
    printf("removed the last %d positions and decoded them again: max difference %.1e\n",
           REWIND, redo);
    if (redo > 1e-5)
        return fail("decoding again after the rewind changed the output", MLA_ERR_INTERNAL);

    /* The same positions again with the layer's weight matrices in bf16. */
    if ((st = mla_layer_set_weight_dtype(mla, MLA_DTYPE_BF16)) != MLA_OK)
        return fail("mla_layer_set_weight_dtype", st);
    if ((st = mla_cache_seq_rm(cache, 0, PROMPT + DECODE - REWIND, -1)) != MLA_OK)
        return fail("mla_cache_seq_rm", st);
    double num16 = 0, den16 = 0;
    for (int t = PROMPT + DECODE - REWIND; t < PROMPT + DECODE; t++) {
        int64_t p = t;
        float again[D];
        if ((st = mla_attn_forward(attn, mla, cache, 0, x + t * D, 1, seq, &p, again)) != MLA_OK)
            return fail("decode with bf16 weights", st);
        for (int i = 0; i < D; i++) {
            num16 += (again[i] - y[t * D + i]) * (double)(again[i] - y[t * D + i]);
            den16 += y[t * D + i] * (double)y[t * D + i];
        }
    }
    printf("the same %d positions with bf16 weights: relative difference %.1e from the f32 "
           "weights' output\n", REWIND, sqrt(num16 / den16));
    if (!(sqrt(num16 / den16) < 1e-2))
        return fail("bf16 weights changed the output by more than their rounding",
                    MLA_ERR_INTERNAL);

    double num = 0, den = 0;
    for (int i = 0; i < (PROMPT + DECODE) * D; i++) {
        num += (y[i] - ym[i]) * (double)(y[i] - ym[i]);
        den += ym[i] * (double)ym[i];
    }
    mla_cache_stats cs, ms;
    mla_cache_get_stats(cache, &cs, sizeof cs);
    mla_cache_get_stats(mha_cache, &ms, sizeof ms);
    int64_t len;
    mla_cache_seq_length(cache, 0, &len);
    printf("prefilled %d tokens, decoded %d: the sequence holds %lld tokens\n", PROMPT, DECODE,
           (long long)len);
    printf("cache bytes per token: MLA %lld, MHA %lld (%.1f%% smaller)\n",
           (long long)cs.bytes_per_token, (long long)ms.bytes_per_token,
           100.0 * (1.0 - (double)cs.bytes_per_token / (double)ms.bytes_per_token));
    printf("MLA output vs the original MHA layer (random weights, no fine-tuning): "
           "relative error %.3f\n", sqrt(num / den));

    mla_attn_destroy(attn);
    mla_cache_destroy(cache);
    mla_cache_destroy(mha_cache);
    mla_layer_destroy(mla);
    mla_layer_destroy(mha);
    return 0;
}

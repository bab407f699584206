/*
 * `mla demo`: the main job. One attention layer of SmolLM-135M's shape with random weights goes
 * through the whole pipeline: calibration, conversion (2-norm partial RoPE, joint SVD), a latent
 * cache, prefill and decode, the MHA baseline beside it, and a snapshot round trip. Every figure it
 * prints is computed here, on this run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mla/mla.h>

#include "tool.h"

typedef struct {
    int d, n_h, n_kv, d_h;
} shape;

static unsigned long long rng_state = 0x9e3779b97f4a7c15ULL;

static float rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    unsigned long long r = rng_state * 2685821657736338717ULL;
    return (float)((double)(r >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static float *random_matrix(size_t rows, size_t cols, float scale)
{
    float *m = malloc(rows * cols * sizeof *m);
    if (m)
        for (size_t i = 0; i < rows * cols; i++)
            m[i] = rnd() * scale;
    return m;
}

/* Inputs with a decaying spectrum, like real hidden states: x = z · A + noise, with A (32 × d)
 * shared by every call so that calibration and later tokens come from one distribution, and
 * z's columns falling off, so that activation-aware choices have something to find. */
static float *random_inputs(int n, int d, const float *a)
{
    float *x = calloc((size_t)n * d, sizeof *x);
    float *z = random_matrix((size_t)n, 32, 1.0f);
    if (!x || !z) {
        free(x);
        x = NULL;
    } else {
        for (int t = 0; t < n; t++)
            for (int k = 0; k < 32; k++) {
                float zk = z[t * 32 + k] / (1.0f + (float)k);
                for (int c = 0; c < d; c++)
                    x[(size_t)t * d + c] += zk * a[k * d + c];
            }
        for (size_t i = 0; i < (size_t)n * d; i++)
            x[i] += 0.05f * rnd();
    }
    free(z);
    return x;
}

static double rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

#define TRY(call)                                                                              \
    do {                                                                                       \
        mla_status s_ = (call);                                                                \
        if (s_ != MLA_OK) {                                                                    \
            fprintf(stderr, "mla demo: %s failed: %s\n", #call, mla_last_error());             \
            goto done;                                                                         \
        }                                                                                      \
    } while (0)

/* Run n tokens of one sequence through a layer and its cache: prefill `prefill` tokens in one
 * call, then decode the rest one at a time. out: n × d. */
static mla_status run_sequence(mla_attn *attn, const mla_layer *layer, mla_cache *cache,
                               const float *x, int n, int prefill, int d, float *out,
                               double *prefill_s, double *decode_s)
{
    int32_t *seq = calloc((size_t)n, sizeof *seq);
    int64_t *pos = malloc((size_t)n * sizeof *pos);
    mla_status s = MLA_ERR_OUT_OF_MEMORY;
    if (!seq || !pos)
        goto out;
    for (int t = 0; t < n; t++)
        pos[t] = t;
    double t0 = tool_now();
    s = mla_attn_forward(attn, layer, cache, 0, x, prefill, seq, pos, out);
    double t1 = tool_now();
    for (int t = prefill; t < n && s == MLA_OK; t++)
        s = mla_attn_forward(attn, layer, cache, 0, x + (size_t)t * d, 1, seq + t, pos + t,
                             out + (size_t)t * d);
    double t2 = tool_now();
    *prefill_s = t1 - t0;
    *decode_s = t2 - t1;
out:
    free(seq);
    free(pos);
    return s;
}

/* Bytes of all of a layer's tensors, as stored. */
static mla_status layer_bytes(const mla_layer *layer, double *bytes)
{
    mla_layer_info info;
    mla_status s = mla_layer_get_info(layer, &info, sizeof info);
    *bytes = 0;
    for (int32_t i = 0; i < info.n_tensors && s == MLA_OK; i++) {
        mla_tensor t;
        s = mla_layer_tensor(layer, i, &t);
        double n = s == MLA_OK ? mla_dtype_bits(t.dtype) / 8.0 : 0;
        for (int32_t k = 0; k < t.ndim && s == MLA_OK; k++)
            n *= (double)t.shape[k];
        *bytes += n;
    }
    return s;
}

static mla_status make_cache(const mla_layer *layer, mla_dtype latent_dtype, int64_t capacity,
                             mla_cache **out)
{
    mla_cache_layer_desc desc;
    mla_status s = mla_layer_cache_desc(layer, &desc, sizeof desc);
    if (s != MLA_OK)
        return s;
    mla_cache_params cp;
    mla_cache_default_params(&cp, sizeof cp);
    cp.n_layers = 1;
    cp.layers = &desc;
    cp.latent_dtype = latent_dtype;
    cp.capacity_tokens = capacity;
    /* int8/int4: quant_group left at 0, the largest power of two up to 32 dividing the latent
     * width (48 here: 16) */
    return mla_cache_create(&cp, out);
}

/* Run a sequence through `layer` in a cache of its own, made for the run and destroyed after. */
static mla_status run_in_new_cache(mla_attn *attn, const mla_layer *layer, mla_dtype latent_dtype,
                                   const float *x, int n, int prefill, int d, float *out)
{
    mla_cache *cache = NULL;
    double prefill_s, decode_s;
    mla_status s = make_cache(layer, latent_dtype, n, &cache);
    if (s == MLA_OK)
        s = run_sequence(attn, layer, cache, x, n, prefill, d, out, &prefill_s, &decode_s);
    mla_cache_destroy(cache);
    return s;
}

int tool_demo(int argc, char **argv)
{
    const shape sh = {576, 9, 3, 64}; /* SmolLM-135M attention */
    int n_tokens = 512, prefill = 448, n_calib = 2048, r = 8, d_kv = 16;
    static const char usage[] = "usage: mla demo [--tokens N] [--rope-dim R] [--d-kv K]\n";
    /* Values are read whole here; what they mean for the layer (an odd rope_dim, a latent wider
     * than the rank of [W_k_nope; W_v]) the library checks and explains. */
    const struct {
        const char *name;
        int *value;
        long lo;
    } opts[] = {{"--tokens", &n_tokens, 2}, {"--rope-dim", &r, 0}, {"--d-kv", &d_kv, 1}};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        size_t k = 0;
        while (k < sizeof opts / sizeof opts[0] && strcmp(o, opts[k].name) != 0)
            k++;
        if (k == sizeof opts / sizeof opts[0]) {
            fprintf(stderr, "mla demo: unknown option '%s'\n%s", o, usage);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "mla demo: %s needs a value\n%s", o, usage);
            return 2;
        }
        if (!tool_int_option("demo", o, argv[++i], opts[k].lo, 1 << 20, opts[k].value))
            return 2;
    }
    if (prefill >= n_tokens)
        prefill = n_tokens * 7 / 8;
    if (prefill < 1)
        prefill = 1;

    int rc = 1;
    float *wq = NULL, *wk = NULL, *wv = NULL, *wo = NULL, *mix = NULL, *xc = NULL, *x = NULL;
    float *out_mla = NULL, *out_mha = NULL, *out_back = NULL, *out_q = NULL;
    mla_calib *calib = NULL;
    mla_layer *layer = NULL, *mha = NULL;
    mla_cache *cache = NULL, *mha_cache = NULL, *restored = NULL;
    mla_attn *attn = NULL;
    char snap[] = "/tmp/mla-demo-XXXXXX";
    int snap_made = 0;

    printf("%s\n\n", mla_build_info());
    printf("layer: SmolLM-135M attention shape, d_model %d, %d query heads, %d KV heads, "
           "head_dim %d; random weights\n", sh.d, sh.n_h, sh.n_kv, sh.d_h);

    float ws = 1.0f / sqrtf((float)sh.d);
    wq = random_matrix((size_t)sh.n_h * sh.d_h, sh.d, ws);
    wk = random_matrix((size_t)sh.n_kv * sh.d_h, sh.d, ws);
    wv = random_matrix((size_t)sh.n_kv * sh.d_h, sh.d, ws);
    wo = random_matrix(sh.d, (size_t)sh.n_h * sh.d_h, ws);
    mix = random_matrix(32, sh.d, 1.0f);
    xc = mix ? random_inputs(n_calib, sh.d, mix) : NULL;
    x = mix ? random_inputs(n_tokens, sh.d, mix) : NULL;
    out_mla = calloc((size_t)n_tokens * sh.d, sizeof(float));
    out_q = calloc((size_t)n_tokens * sh.d, sizeof(float));
    out_mha = calloc((size_t)n_tokens * sh.d, sizeof(float));
    out_back = calloc((size_t)sh.d, sizeof(float));
    if (!wq || !wk || !wv || !wo || !xc || !x || !out_mla || !out_mha || !out_back || !out_q) {
        fprintf(stderr, "mla demo: out of memory\n");
        goto done;
    }

    mla_geometry g;
    mla_geometry_default_params(&g, sizeof g);
    g.d_model = sh.d;
    g.n_heads = sh.n_h;
    g.n_kv_heads = sh.n_kv;
    g.head_dim = sh.d_h;
    g.rope_theta = 10000.0;
    mla_layer_weights w;
    mla_layer_weights_default_params(&w, sizeof w);
    w.dtype = MLA_DTYPE_F32;
    w.wq = wq;
    w.wk = wk;
    w.wv = wv;
    w.wo = wo;

    /* 1. calibration */
    double t0 = tool_now();
    TRY(mla_calib_create(&g, &w, NULL, &calib));
    TRY(mla_calib_feed(calib, xc, n_calib));
    printf("calibration: %d tokens in %.3f s\n", n_calib, tool_now() - t0);

    /* 2. conversion */
    mla_convert_params cp;
    mla_convert_default_params(&cp, sizeof cp);
    cp.rope_strategy = MLA_ROPE_2NORM;
    cp.rope_dim = r;
    cp.d_kv = d_kv;
    cp.factorization = MLA_FACTOR_ACTIVATION_JOINT;
    TRY(mla_layer_convert(&g, &w, calib, &cp, &layer));
    mla_convert_report rep;
    TRY(mla_layer_get_report(layer, &rep, sizeof rep));
    printf("conversion: 2-norm partial RoPE r=%d, activation-aware joint SVD d_kv=%d "
           "(latent %d) in %.3f s\n", r, d_kv, d_kv * sh.n_kv, rep.seconds);
    printf("  kept energy %.4f; relative error K_nope %.4f, V %.4f (weights), "
           "K_nope %.4f, V %.4f (calibration activations)\n", rep.kept_energy,
           rep.k_nope_rel_error, rep.v_rel_error, rep.k_nope_act_rel_error, rep.v_act_rel_error);
    int32_t dims[64];
    TRY(mla_layer_rope_dims(layer, 0, dims));
    printf("  KV head 0 keeps RoPE dims:");
    for (int i = 0; i < r; i++)
        printf(" %d", dims[i]);
    printf("\n");

    /* 3. caches and forward: MLA and the unconverted MHA baseline on the same tokens */
    TRY(mla_layer_from_mha(&g, &w, &mha));
    TRY(make_cache(layer, MLA_DTYPE_F16, n_tokens + 1, &cache));
    TRY(make_cache(mha, MLA_DTYPE_F16, n_tokens, &mha_cache));
    mla_attn_params ap;
    mla_attn_default_params(&ap, sizeof ap);
    ap.n_threads = 0;
    TRY(mla_attn_create(&ap, &attn));
    double pf_mla, dec_mla, pf_mha, dec_mha;
    TRY(run_sequence(attn, layer, cache, x, n_tokens, prefill, sh.d, out_mla, &pf_mla, &dec_mla));
    TRY(run_sequence(attn, mha, mha_cache, x, n_tokens, prefill, sh.d, out_mha, &pf_mha,
                     &dec_mha));
    int n_dec = n_tokens - prefill;
    printf("\nforward: prefill %d tokens, then decode %d one by one\n", prefill, n_dec);
    printf("  MLA: prefill %.2f ms, decode %.3f ms/token\n", 1e3 * pf_mla,
           n_dec ? 1e3 * dec_mla / n_dec : 0.0);
    printf("  MHA: prefill %.2f ms, decode %.3f ms/token\n", 1e3 * pf_mha,
           n_dec ? 1e3 * dec_mha / n_dec : 0.0);
    int64_t scratch = 0;
    TRY(mla_attn_scratch_bytes(attn, &scratch));
    printf("  scratch memory the attention handle keeps (the larger prefill's): %.2f MB\n",
           (double)scratch * 1e-6);
    printf("  MLA output vs the original MHA layer, before any fine-tuning: relative error %.4f\n",
           rel_diff(out_mla, out_mha, (size_t)n_tokens * sh.d));

    /* The same conversion minimizing weight error only (the paper's SVD_joint), for comparison. */
    {
        mla_convert_params jp = cp;
        jp.factorization = MLA_FACTOR_JOINT;
        mla_layer *joint = NULL;
        float *out_joint = calloc((size_t)n_tokens * sh.d, sizeof(float));
        mla_status s = out_joint ? mla_layer_convert(&g, &w, calib, &jp, &joint)
                                 : MLA_ERR_OUT_OF_MEMORY;
        if (s == MLA_OK)
            s = run_in_new_cache(attn, joint, MLA_DTYPE_F16, x, n_tokens, prefill, sh.d,
                                 out_joint);
        if (s == MLA_OK)
            printf("  the same with weight-only joint SVD (the paper's): relative error %.4f\n",
                   rel_diff(out_joint, out_mha, (size_t)n_tokens * sh.d));
        mla_layer_destroy(joint);
        free(out_joint);
        TRY(s);
    }

    /* The identity the method rests on: at full rank with every RoPE pair kept, the converted
     * layer is the original one. */
    {
        mla_convert_params fp;
        mla_convert_default_params(&fp, sizeof fp);
        fp.rope_strategy = MLA_ROPE_HIGH;
        fp.rope_dim = sh.d_h;
        fp.d_kv = sh.d_h;
        mla_layer *full = NULL;
        float *out_full = calloc((size_t)n_tokens * sh.d, sizeof(float));
        /* the MHA run above used an f16 cache; both run on f32 here to see the identity */
        float *ref = calloc((size_t)n_tokens * sh.d, sizeof(float));
        mla_status s = out_full && ref ? mla_layer_convert(&g, &w, NULL, &fp, &full)
                                       : MLA_ERR_OUT_OF_MEMORY;
        if (s == MLA_OK)
            s = run_in_new_cache(attn, full, MLA_DTYPE_F32, x, n_tokens, prefill, sh.d, out_full);
        if (s == MLA_OK)
            s = run_in_new_cache(attn, mha, MLA_DTYPE_F32, x, n_tokens, prefill, sh.d, ref);
        double full_err = s == MLA_OK ? rel_diff(out_full, ref, (size_t)n_tokens * sh.d) : 0;
        if (s == MLA_OK)
            printf("  full-rank conversion (r = %d, d_kv = %d) vs MHA, f32 caches: relative "
                   "error %.2e\n", sh.d_h, sh.d_h, full_err);
        free(ref);
        mla_layer_destroy(full);
        free(out_full);
        TRY(s);
        /* The method's identity (../shared/mha2mla.md): float32 rounding, far below 1e-4. */
        if (!(full_err <= 1e-4)) {
            fprintf(stderr, "mla demo: the full-rank conversion does not reproduce the MHA "
                    "layer (relative error %.2e > 1e-4)\n", full_err);
            goto done;
        }
    }

    /* 4. the saving */
    mla_cache_stats st, mst;
    TRY(mla_cache_get_stats(cache, &st, sizeof st));
    TRY(mla_cache_get_stats(mha_cache, &mst, sizeof mst));
    printf("\ncache: %lld bytes/token (f16 latent + f16 RoPE keys) vs %lld for MHA's K and V: "
           "%.2f%% smaller\n", (long long)st.bytes_per_token, (long long)st.mha_bytes_per_token,
           100.0 * (1.0 - (double)st.bytes_per_token / (double)st.mha_bytes_per_token));
    /* The same tokens through a cache of each other latent type: what the storage saves, and
     * what it costs in accuracy (against the f16 cache's output) and in decode time. */
    static const mla_dtype kinds[] = {MLA_DTYPE_BF16, MLA_DTYPE_I8, MLA_DTYPE_I4};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        mla_cache *c = NULL;
        mla_cache_stats cs;
        double pf_q, dec_q;
        mla_status s = make_cache(layer, kinds[i], n_tokens, &c);
        if (s == MLA_OK)
            s = mla_cache_get_stats(c, &cs, sizeof cs);
        if (s == MLA_OK)
            s = run_sequence(attn, layer, c, x, n_tokens, prefill, sh.d, out_q, &pf_q, &dec_q);
        mla_cache_destroy(c);
        TRY(s);
        char groups[32] = "";
        if (cs.quant_group > 0)
            snprintf(groups, sizeof groups, " (groups of %d)", (int)cs.quant_group);
        printf("  %-4s latent%s: %lld bytes/token, %.2f%% smaller than MHA; output vs f16's: "
               "relative error %.1e; decode %.3f ms/token\n", mla_dtype_name(kinds[i]), groups,
               (long long)cs.bytes_per_token,
               100.0 * (1.0 - (double)cs.bytes_per_token / (double)cs.mha_bytes_per_token),
               rel_diff(out_q, out_mla, (size_t)n_tokens * sh.d),
               n_dec ? 1e3 * dec_q / n_dec : 0.0);
    }

    /* 5. snapshot: save, restore into a fresh cache, decode one more token in both */
    int fd = mkstemp(snap);
    if (fd < 0) {
        perror("mla demo: mkstemp");
        goto done;
    }
    close(fd);
    snap_made = 1;
    TRY(mla_cache_save_file(cache, 0, snap));
    TRY(make_cache(layer, MLA_DTYPE_F16, n_tokens + 1, &restored));
    TRY(mla_cache_load_file(restored, 0, snap));
    int64_t len = 0;
    TRY(mla_cache_seq_length(restored, 0, &len));
    /* The restored cache must continue exactly like the original. */
    {
        float *xn = random_matrix(1, (size_t)sh.d, 1.0f);
        float *o1 = calloc((size_t)sh.d, sizeof(float));
        int32_t sq = 0;
        int64_t p = n_tokens;
        mla_status s = xn && o1 ? MLA_OK : MLA_ERR_OUT_OF_MEMORY;
        if (s == MLA_OK)
            s = mla_attn_forward(attn, layer, cache, 0, xn, 1, &sq, &p, o1);
        if (s == MLA_OK)
            s = mla_attn_forward(attn, layer, restored, 0, xn, 1, &sq, &p, out_back);
        double snap_diff = s == MLA_OK ? rel_diff(out_back, o1, (size_t)sh.d) : 0;
        if (s == MLA_OK)
            printf("\nsnapshot: sequence 0 saved to a file and restored (%lld tokens); the next "
                   "token's output differs by %.1e between original and restored\n",
                   (long long)len, snap_diff);
        free(xn);
        free(o1);
        TRY(s);
        /* A snapshot holds the cache's bytes: the restored cache continues bit for bit. */
        if (snap_diff != 0) {
            fprintf(stderr, "mla demo: the restored cache does not continue like the original "
                    "(relative difference %.1e)\n", snap_diff);
            goto done;
        }
    }
    /* 6. the weights a decode streams, stored in bf16 (the float32 ones are freed) */
    {
        double before = 0, after = 0, pf_w, dec_w;
        mla_cache *c = NULL;
        TRY(layer_bytes(layer, &before));
        TRY(mla_layer_set_weight_dtype(layer, MLA_DTYPE_BF16));
        TRY(layer_bytes(layer, &after));
        mla_status s = make_cache(layer, MLA_DTYPE_F16, n_tokens, &c);
        if (s == MLA_OK)
            s = run_sequence(attn, layer, c, x, n_tokens, prefill, sh.d, out_q, &pf_w, &dec_w);
        mla_cache_destroy(c);
        TRY(s);
        printf("\nweights: the layer's weight matrices stored as bf16: %.2f MB -> "
               "%.2f MB; output vs f32 weights' (f16 caches): relative error %.1e; decode %.3f "
               "ms/token (%.3f with f32 weights)\n", before * 1e-6, after * 1e-6,
               rel_diff(out_q, out_mla, (size_t)n_tokens * sh.d), n_dec ? 1e3 * dec_w / n_dec : 0.0,
               n_dec ? 1e3 * dec_mla / n_dec : 0.0);
    }
    rc = 0;
done:
    if (snap_made)
        remove(snap);
    mla_attn_destroy(attn);
    mla_cache_destroy(restored);
    mla_cache_destroy(mha_cache);
    mla_cache_destroy(cache);
    mla_layer_destroy(mha);
    mla_layer_destroy(layer);
    mla_calib_destroy(calib);
    free(wq);
    free(wk);
    free(wv);
    free(wo);
    free(mix);
    free(xc);
    free(x);
    free(out_mla);
    free(out_q);
    free(out_mha);
    free(out_back);
    return rc;
}

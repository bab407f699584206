/* The cross-language end-to-end scenario on the C API (README.md here): convert a random layer,
 * create a cache, prefill and decode, print everything the bindings must reproduce. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <mla/mla.h>

#define D 64
#define NH 4
#define NKV 2
#define HD 16
#define N_CALIB 48
#define N_PREFILL 10
#define N_DECODE 3

static uint64_t rng_state = 0x6d6c61;

static uint64_t splitmix64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(float *v, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        v[i] = ((float)(splitmix64() >> 40) * 0x1p-23f - 1.0f) * scale;
}

static int check(mla_status s, const char *what)
{
    if (s == MLA_OK)
        return 0;
    fprintf(stderr, "%s: %s\n", what, mla_last_error());
    exit(1);
}

static void print_row(int t, const float *v)
{
    printf("out %d", t);
    for (int i = 0; i < D; i++)
        printf(" %.9g", v[i]);
    printf("\n");
}

int main(void)
{
    static float wq[NH * HD * D], wk[NKV * HD * D], wv[NKV * HD * D], wo[D * NH * HD];
    static float bq[NH * HD], bk[NKV * HD], bv[NKV * HD];
    static float xc[N_CALIB * D], xp[N_PREFILL * D], xd[N_DECODE * D], out[N_PREFILL * D];
    fill(wq, sizeof wq / sizeof *wq, 0.125f);
    fill(wk, sizeof wk / sizeof *wk, 0.125f);
    fill(wv, sizeof wv / sizeof *wv, 0.125f);
    fill(wo, sizeof wo / sizeof *wo, 0.125f);
    fill(bq, sizeof bq / sizeof *bq, 0.0625f);
    fill(bk, sizeof bk / sizeof *bk, 0.0625f);
    fill(bv, sizeof bv / sizeof *bv, 0.0625f);
    fill(xc, sizeof xc / sizeof *xc, 1.0f);
    fill(xp, sizeof xp / sizeof *xp, 1.0f);
    fill(xd, sizeof xd / sizeof *xd, 1.0f);

    mla_geometry g;
    check(mla_geometry_default_params(&g, sizeof g), "geometry");
    g.d_model = D;
    g.n_heads = NH;
    g.n_kv_heads = NKV;
    g.head_dim = HD;
    g.rope_theta = 10000.0;
    g.qkv_bias = 1;
    mla_layer_weights w;
    check(mla_layer_weights_default_params(&w, sizeof w), "weights");
    w.dtype = MLA_DTYPE_F32;
    w.wq = wq, w.wk = wk, w.wv = wv, w.wo = wo, w.bq = bq, w.bk = bk, w.bv = bv;

    mla_calib *calib = NULL;
    check(mla_calib_create(&g, &w, NULL, &calib), "calib_create");
    check(mla_calib_feed(calib, xc, N_CALIB), "calib_feed");
    mla_convert_params cp;
    check(mla_convert_default_params(&cp, sizeof cp), "convert params");
    cp.rope_strategy = MLA_ROPE_2NORM;
    cp.rope_dim = 4;
    cp.d_kv = 8;
    cp.factorization = MLA_FACTOR_JOINT;
    mla_layer *layer = NULL;
    check(mla_layer_convert(&g, &w, calib, &cp, &layer), "convert");
    mla_calib_destroy(calib);

    printf("rope_dims");
    for (int j = 0; j < NKV; j++) {
        int32_t dims[4];
        check(mla_layer_rope_dims(layer, j, dims), "rope_dims");
        for (int i = 0; i < 4; i++)
            printf(" %d", dims[i]);
    }
    printf("\n");

    mla_cache_layer_desc desc;
    check(mla_layer_cache_desc(layer, &desc, sizeof desc), "cache_desc");
    mla_cache_params p;
    check(mla_cache_default_params(&p, sizeof p), "cache params");
    p.n_layers = 1;
    p.layers = &desc;
    p.capacity_tokens = 256;
    p.block_tokens = 16;
    p.n_seq_max = 4;
    mla_cache *cache = NULL;
    check(mla_cache_create(&p, &cache), "cache_create");
    mla_attn_params ap;
    check(mla_attn_default_params(&ap, sizeof ap), "attn params");
    ap.n_threads = 1;
    ap.path = MLA_ATTN_PATH_AUTO;
    mla_attn *attn = NULL;
    check(mla_attn_create(&ap, &attn), "attn_create");

    int32_t seq[N_PREFILL] = {0};
    int64_t pos[N_PREFILL];
    for (int t = 0; t < N_PREFILL; t++)
        pos[t] = t;
    check(mla_attn_forward(attn, layer, cache, 0, xp, N_PREFILL, seq, pos, out), "prefill");
    float rows[N_PREFILL + N_DECODE][D];
    for (int t = 0; t < N_PREFILL; t++)
        for (int i = 0; i < D; i++)
            rows[t][i] = out[t * D + i];
    for (int t = 0; t < N_DECODE; t++) {
        int64_t p1 = N_PREFILL + t;
        check(mla_attn_forward(attn, layer, cache, 0, xd + t * D, 1, seq, &p1, out), "decode");
        for (int i = 0; i < D; i++)
            rows[N_PREFILL + t][i] = out[i];
    }

    mla_cache_stats st;
    check(mla_cache_get_stats(cache, &st, sizeof st), "stats");
    int64_t len = 0;
    check(mla_cache_seq_length(cache, 0, &len), "seq_length");
    printf("bytes_per_token %lld\n", (long long)st.bytes_per_token);
    printf("mha_bytes_per_token %lld\n", (long long)st.mha_bytes_per_token);
    printf("seq_length %lld\n", (long long)len);
    for (int t = 0; t < N_PREFILL + N_DECODE; t++)
        print_row(t, rows[t]);

    mla_attn_destroy(attn);
    mla_cache_destroy(cache);
    mla_layer_destroy(layer);
    return 0;
}

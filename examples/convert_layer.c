/*
 * Convert one random attention layer to MLA with each RoPE strategy and factorization and print
 * what each loses. Shape: SmolLM-135M's (d 576, 9 query heads, 3 KV heads of 64), or give
 * another: convert_layer [d_model n_heads n_kv_heads head_dim [rope_dim d_kv]].
 *
 * The weights are random with a decaying spectrum and the calibration inputs are correlated, so
 * the numbers behave like a trained layer's qualitatively (not quantitatively).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

static unsigned long long rng = 0x9e3779b97f4a7c15ULL;

static double uniform(void) /* in [-1, 1) */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ULL) >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

/* rows × d weights: row i = Σ_k g_ik · s_k · b_k with random directions b_k (k < d) and scales
 * s_k decaying like k^(-0.75), plus plain noise; big shapes get plain noise only. */
static float *random_weights(int rows, int d, const float *basis)
{
    float *w = malloc(sizeof(float) * (size_t)rows * (size_t)d);
    if (!w)
        return NULL;
    for (size_t i = 0; i < (size_t)rows * (size_t)d; i++)
        w[i] = (float)(0.02 * uniform());
    if (!basis)
        return w;
    double *acc = malloc(sizeof(double) * (size_t)d);
    for (int i = 0; i < rows; i++) {
        memset(acc, 0, sizeof(double) * (size_t)d);
        for (int k = 0; k < d; k++) {
            double c = uniform() * pow(1.0 + k, -0.75);
            for (int j = 0; j < d; j++)
                acc[j] += c * basis[(size_t)k * d + j];
        }
        for (int j = 0; j < d; j++)
            w[(size_t)i * d + j] += (float)(0.1 * acc[j]);
    }
    free(acc);
    return w;
}

static int fail(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, mla_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    int d = 576, n_h = 9, n_kv = 3, d_h = 64, r = 8, d_kv = 16;
    if (argc >= 5) {
        d = atoi(argv[1]), n_h = atoi(argv[2]), n_kv = atoi(argv[3]), d_h = atoi(argv[4]);
        if (argc >= 7)
            r = atoi(argv[5]), d_kv = atoi(argv[6]);
    }
    mla_geometry g;
    mla_geometry_default_params(&g, sizeof g);
    g.d_model = d, g.n_heads = n_h, g.n_kv_heads = n_kv, g.head_dim = d_h;

    int structured = d <= 1024;
    float *basis = NULL;
    if (structured) {
        basis = malloc(sizeof(float) * (size_t)d * (size_t)d);
        for (size_t i = 0; i < (size_t)d * (size_t)d; i++)
            basis[i] = (float)(uniform() / sqrt((double)d));
    }
    float *wq = random_weights(n_h * d_h, d, basis), *wk = random_weights(n_kv * d_h, d, basis);
    float *wv = random_weights(n_kv * d_h, d, basis), *wo = random_weights(d, n_h * d_h, NULL);
    mla_layer_weights w;
    mla_layer_weights_default_params(&w, sizeof w);
    w.wq = wq, w.wk = wk, w.wv = wv, w.wo = wo;

    /* Calibration: 1024 tokens x = A z, z with decaying coordinate scales. */
    const int T = 1024;
    float *x = malloc(sizeof(float) * (size_t)T * (size_t)d);
    double *z = malloc(sizeof(double) * (size_t)d);
    for (int t = 0; t < T; t++) {
        for (int k = 0; k < d; k++)
            z[k] = uniform() * pow(1.0 + k, -1.0);
        for (int j = 0; j < d; j++) {
            double v = 0;
            if (structured)
                for (int k = 0; k < d; k++)
                    v += z[k] * basis[(size_t)k * d + j];
            else
                v = z[j];
            x[(size_t)t * d + j] = (float)v;
        }
    }
    mla_calib *calib = NULL;
    if (mla_calib_create(&g, &w, NULL, &calib) != MLA_OK || mla_calib_feed(calib, x, T) != MLA_OK)
        return fail("calibration");

    printf("layer: d_model %d, %d query heads, %d KV heads of %d; %d calibration tokens\n", d,
           n_h, n_kv, d_h, T);
    printf("MHA cache per token: %d values\n\n", 2 * n_kv * d_h);
    printf("%-9s %-17s %4s %5s %7s %7s %8s %8s %8s %8s %8s\n", "rope", "factorization", "r",
           "d_kv", "cache", "energy", "K_nope", "V", "K_act", "V_act", "seconds");

    static const struct {
        mla_rope_strategy s;
        const char *name;
    } strategies[] = {{MLA_ROPE_HIGH, "high"},
                      {MLA_ROPE_LOW, "low"},
                      {MLA_ROPE_UNIFORM, "uniform"},
                      {MLA_ROPE_2NORM, "2-norm"}};
    static const struct {
        mla_factorization f;
        const char *name;
    } factorizations[] = {{MLA_FACTOR_JOINT, "joint"},
                          {MLA_FACTOR_SPLIT, "split"},
                          {MLA_FACTOR_ACTIVATION_JOINT, "activation-joint"}};
    for (int si = 0; si < 4; si++) {
        for (int fi = 0; fi < 3; fi++) {
            /* Every strategy with joint; the 2-norm one with every factorization. */
            if (fi > 0 && strategies[si].s != MLA_ROPE_2NORM)
                continue;
            mla_convert_params p;
            mla_convert_default_params(&p, sizeof p);
            p.rope_strategy = strategies[si].s;
            p.factorization = factorizations[fi].f;
            p.rope_dim = r;
            p.d_kv = d_kv;
            mla_layer *l = NULL;
            if (mla_layer_convert(&g, &w, calib, &p, &l) != MLA_OK)
                return fail("convert");
            mla_convert_report rep;
            mla_layer_info info;
            mla_layer_get_report(l, &rep, sizeof rep);
            mla_layer_get_info(l, &info, sizeof info);
            printf("%-9s %-17s %4d %5d %7d %7.4f %8.4f %8.4f %8.4f %8.4f %8.3f\n",
                   strategies[si].name, factorizations[fi].name, r, d_kv,
                   info.latent_dim + info.rope_width, rep.kept_energy, rep.k_nope_rel_error,
                   rep.v_rel_error, rep.k_nope_act_rel_error, rep.v_act_rel_error, rep.seconds);
            if (si == 3 && fi == 0) {
                int32_t dims[256];
                printf("          kept dims of KV head 0:");
                mla_layer_rope_dims(l, 0, dims);
                for (int k = 0; k < r && k < 256; k++)
                    printf(" %d", (int)dims[k]);
                printf("\n");
            }
            mla_layer_destroy(l);
        }
    }
    mla_calib_destroy(calib);
    free(x);
    free(z);
    free(basis);
    free(wq);
    free(wk);
    free(wv);
    free(wo);
    return 0;
}

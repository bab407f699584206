/*
 * Calibration statistics against a direct per-token recomputation in double: the mean pair
 * 2-norms of q = W_q x + b_q and k = W_k x + b_k, the 2-norm score Σ_{h in group} a_{h,i}·b_{j,i},
 * XᵀX; streaming in uneven pieces equals one pass; the 2-norm strategy keeps the top-r/2
 * frequencies of that score.
 */
#include <math.h>

#include "util.h"

enum { D = 40, NH = 6, NKV = 2, DH = 16, HALF = DH / 2, T = 150, R = 6 };

/* Mean over tokens of each pair's norm of y = W x + b, for `heads` heads. */
static void ref_norms(const float *x, const float *w, const float *b, int heads, double *out)
{
    memset(out, 0, sizeof(double) * (size_t)heads * HALF);
    double y[DH * NH];
    for (int t = 0; t < T; t++) {
        for (int o = 0; o < heads * DH; o++) {
            double acc = b ? b[o] : 0;
            for (int c = 0; c < D; c++)
                acc += (double)w[o * D + c] * x[t * D + c];
            y[o] = acc;
        }
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < HALF; i++)
                out[h * HALF + i] += hypot(y[h * DH + i], y[h * DH + i + HALF]) / T;
    }
}

static double max_rel(const float *got, const double *want, int n)
{
    double worst = 0, scale = 0;
    /* Comparisons, not fmax: GCC 12 for AArch64 crashes vectorizing these loops with fmax
     * (doc/testing.md). */
    for (int i = 0; i < n; i++)
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    for (int i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]) / scale;
        worst = e > worst ? e : worst;
    }
    return worst;
}

int main(void)
{
    src_layer s;
    src_init(&s, D, NH, NKV, DH, 1, 4242);
    unsigned long long seed = 99;
    float *x = rand_floats((size_t)T * D, &seed, 1.0);
    /* Give the inputs unequal column scales so pairs differ clearly. */
    for (int t = 0; t < T; t++)
        for (int c = 0; c < D; c++)
            x[t * D + c] *= (float)(0.2 + c % 7);

    mla_calib *c = NULL;
    CHECK(mla_calib_create(&s.g, &s.w, NULL, &c) == MLA_OK, "create: %s", mla_last_error());
    CHECK(mla_calib_feed(c, x, 1) == MLA_OK && mla_calib_feed(c, x + D, 100) == MLA_OK &&
              mla_calib_feed(c, x + 101 * D, 0) == MLA_OK &&
              mla_calib_feed(c, x + 101 * D, T - 101) == MLA_OK,
          "feed 1 + 100 + 0 + 49 tokens");
    int64_t count = 0;
    mla_calib_token_count(c, &count);
    CHECK(count == T, "token count %lld", (long long)count);

    double qa[NH * HALF], kb[NKV * HALF], sc[NKV * HALF];
    ref_norms(x, s.wq, s.bq, NH, qa);
    ref_norms(x, s.wk, s.bk, NKV, kb);
    for (int j = 0; j < NKV; j++)
        for (int i = 0; i < HALF; i++) {
            double a = 0;
            for (int h = j * (NH / NKV); h < (j + 1) * (NH / NKV); h++)
                a += qa[h * HALF + i];
            sc[j * HALF + i] = a * kb[j * HALF + i];
        }
    float q_norm[NH * HALF], k_norm[NKV * HALF], score[NKV * HALF];
    CHECK(mla_calib_qk_stats(c, q_norm, k_norm, score) == MLA_OK, "qk stats");
    double eq = max_rel(q_norm, qa, NH * HALF), ek = max_rel(k_norm, kb, NKV * HALF);
    double es = max_rel(score, sc, NKV * HALF);
    CHECK(eq < 1e-5 && ek < 1e-5 && es < 1e-5, "q norms (%.1e), k norms (%.1e), score (%.1e)",
          eq, ek, es);
    CHECK(mla_calib_qk_stats(c, NULL, NULL, score) == MLA_OK, "any output may be NULL");

    double *xtx = malloc(sizeof(double) * D * D);
    CHECK(mla_calib_covariance(c, xtx) == MLA_OK, "covariance");
    double worst = 0;
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double r = 0;
            for (int t = 0; t < T; t++)
                r += (double)x[t * D + i] * x[t * D + j];
            double e = fabs(xtx[i * D + j] - r) / (fabs(r) + 1);
            worst = e > worst ? e : worst; /* not fmax: GCC 12 for AArch64 (doc/testing.md) */
        }
    CHECK(worst < 1e-12, "XᵀX equals Σ_t x_t x_tᵀ in double (max rel %.1e)", worst);

    /* 2-norm: each KV head keeps the R/2 best-scoring frequencies (this test's scores). */
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_strategy = MLA_ROPE_2NORM;
    p.rope_dim = R;
    p.d_kv = 2;
    mla_layer *l = NULL;
    CHECK(mla_layer_convert(&s.g, &s.w, c, &p, &l) == MLA_OK, "2-norm convert: %s",
          mla_last_error());
    for (int j = 0; l && j < NKV; j++) {
        int32_t dims[R];
        mla_layer_rope_dims(l, j, dims);
        int ok = 1;
        for (int k = 0; k < R / 2; k++) {
            /* kept: at most R/2 − 1 frequencies score higher */
            int f = dims[k], better = 0;
            for (int i = 0; i < HALF; i++)
                better += sc[j * HALF + i] > sc[j * HALF + f];
            ok &= better < R / 2 && dims[k + R / 2] == f + HALF && (k == 0 || f > dims[k - 1]);
        }
        CHECK(ok, "KV head %d keeps the top-%d pairs by score: %d %d %d / %d %d %d", j, R / 2,
              dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]);
    }
    mla_layer_destroy(l);

    /* Stats disabled: each getter says which. */
    mla_calib_params cp;
    mla_calib_default_params(&cp, sizeof cp);
    cp.qk_norms = 0;
    mla_calib *c2 = NULL;
    CHECK(mla_calib_create(&s.g, &s.w, &cp, &c2) == MLA_OK, "create covariance-only");
    mla_calib_feed(c2, x, T);
    CHECK(mla_calib_qk_stats(c2, q_norm, NULL, NULL) == MLA_ERR_INVALID_ARGUMENT &&
              strstr(mla_last_error(), "qk_norms"), "qk stats disabled: %s", mla_last_error());
    double *xtx2 = malloc(sizeof(double) * D * D);
    mla_calib_covariance(c2, xtx2);
    worst = 0;
    for (int i = 0; i < D * D; i++) {
        double e = fabs(xtx[i] - xtx2[i]) / (fabs(xtx[i]) + 1);
        worst = e > worst ? e : worst; /* not fmax: GCC 12 for AArch64 (doc/testing.md) */
    }
    CHECK(worst < 1e-12, "one feed of %d tokens = the streamed pieces (max rel %.1e)", T, worst);
    mla_calib_destroy(c2);
    cp.qk_norms = 1;
    cp.covariance = 0;
    CHECK(mla_calib_create(&s.g, &s.w, &cp, &c2) == MLA_OK, "create norms-only");
    CHECK(mla_calib_covariance(c2, xtx2) == MLA_ERR_INVALID_ARGUMENT &&
              strstr(mla_last_error(), "covariance"), "covariance disabled: %s",
          mla_last_error());
    CHECK(mla_calib_qk_stats(c2, q_norm, NULL, NULL) == MLA_ERR_INVALID_ARGUMENT &&
              strstr(mla_last_error(), "no tokens"), "no tokens yet: %s", mla_last_error());
    mla_calib_destroy(c2);
    mla_calib_destroy(NULL);

    free(xtx);
    free(xtx2);
    free(x);
    mla_calib_destroy(c);
    src_free(&s);
    return tap_done();
}

/* Shared helpers of the conversion tests: random source layers and dense matrix arithmetic in
 * double, written plainly so they serve as the independent side of each comparison. */
#ifndef MLA_TESTS_CONVERT_UTIL_H
#define MLA_TESTS_CONVERT_UTIL_H

#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "../tap.h"

typedef struct src_layer {
    mla_geometry g;
    float *wq, *wk, *wv, *wo, *bq, *bk, *bv;
    mla_layer_weights w;
} src_layer;

static inline float *rand_floats(size_t n, unsigned long long *seed, double scale)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(scale * tap_rand(seed));
    return p;
}

static inline void src_init(src_layer *s, int d, int n_h, int n_kv, int d_h, int bias,
                            unsigned long long seed)
{
    memset(s, 0, sizeof *s);
    mla_geometry_default_params(&s->g, sizeof s->g);
    s->g.d_model = d;
    s->g.n_heads = n_h;
    s->g.n_kv_heads = n_kv;
    s->g.head_dim = d_h;
    s->g.qkv_bias = bias;
    size_t qr = (size_t)n_h * d_h, kr = (size_t)n_kv * d_h;
    s->wq = rand_floats(qr * d, &seed, 0.1);
    s->wk = rand_floats(kr * d, &seed, 0.1);
    s->wv = rand_floats(kr * d, &seed, 0.1);
    s->wo = rand_floats((size_t)d * qr, &seed, 0.1);
    if (bias) {
        s->bq = rand_floats(qr, &seed, 0.5);
        s->bk = rand_floats(kr, &seed, 0.5);
        s->bv = rand_floats(kr, &seed, 0.5);
    }
    mla_layer_weights_default_params(&s->w, sizeof s->w);
    s->w.wq = s->wq;
    s->w.wk = s->wk;
    s->w.wv = s->wv;
    s->w.wo = s->wo;
    s->w.bq = s->bq;
    s->w.bk = s->bk;
    s->w.bv = s->bv;
}

static inline void src_free(src_layer *s)
{
    free(s->wq);
    free(s->wk);
    free(s->wv);
    free(s->wo);
    free(s->bq);
    free(s->bk);
    free(s->bv);
}

/* The tensor called name of a layer, or a zeroed view (and a failed check) when missing. */
static inline mla_tensor get_tensor(const mla_layer *l, const char *name)
{
    mla_tensor t;
    memset(&t, 0, sizeof t);
    if (mla_layer_tensor_by_name(l, name, &t) != MLA_OK)
        CHECK(0, "layer has tensor %s: %s", name, mla_last_error());
    return t;
}

/* c = a·b with a m × k and b k × n (float inputs), result in double. */
static inline double *matmul_f(const float *a, const float *b, size_t m, size_t k, size_t n)
{
    double *c = calloc(m * n + 1, sizeof(double));
    for (size_t i = 0; i < m; i++)
        for (size_t p = 0; p < k; p++) {
            double av = a[i * k + p];
            for (size_t j = 0; j < n; j++)
                c[i * n + j] += av * (double)b[p * n + j];
        }
    return c;
}

/* ‖a − b‖_F² with a double and b float, and ‖b‖_F². */
static inline double frob2_diff(const double *a, const float *b, size_t n, double *norm_b2)
{
    double s = 0, t = 0;
    for (size_t i = 0; i < n; i++) {
        double e = a[i] - (double)b[i];
        s += e * e;
        t += (double)b[i] * (double)b[i];
    }
    if (norm_b2)
        *norm_b2 = t;
    return s;
}

/* The hand rule of mha2mla.md for the kept dims of a head from its frequencies. */
static inline void dims_from_freqs(const int *freqs, int r, int d_h, int *dims)
{
    for (int k = 0; k < r / 2; k++) {
        dims[k] = freqs[k];
        dims[k + r / 2] = freqs[k] + d_h / 2;
    }
}

#endif /* MLA_TESTS_CONVERT_UTIL_H */

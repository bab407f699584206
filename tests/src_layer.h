/* A random source attention layer (weights owned by the test), shared by the convert and attn
 * tests. Weights are uniform in [-scale, scale), biases in [-0.5, 0.5). */
#ifndef MLA_TESTS_SRC_LAYER_H
#define MLA_TESTS_SRC_LAYER_H

#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "tap.h"

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

static inline void src_layer_init(src_layer *s, int d, int n_h, int n_kv, int d_h, int bias,
                                  unsigned long long seed, double scale)
{
    memset(s, 0, sizeof *s);
    mla_geometry_default_params(&s->g, sizeof s->g);
    s->g.d_model = d;
    s->g.n_heads = n_h;
    s->g.n_kv_heads = n_kv;
    s->g.head_dim = d_h;
    s->g.qkv_bias = bias;
    size_t qr = (size_t)n_h * d_h, kr = (size_t)n_kv * d_h;
    s->wq = rand_floats(qr * d, &seed, scale);
    s->wk = rand_floats(kr * d, &seed, scale);
    s->wv = rand_floats(kr * d, &seed, scale);
    s->wo = rand_floats((size_t)d * qr, &seed, scale);
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

#endif /* MLA_TESTS_SRC_LAYER_H */

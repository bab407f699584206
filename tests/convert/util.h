/* Shared helpers of the conversion tests: random source layers and dense matrix arithmetic in
 * double, written plainly so they serve as the independent side of each comparison. */
#ifndef MLA_TESTS_CONVERT_UTIL_H
#define MLA_TESTS_CONVERT_UTIL_H

#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "../src_layer.h"
#include "../tap.h"

/* Weights of scale 0.1: singular values spread enough for the SVD tests. */
static inline void src_init(src_layer *s, int d, int n_h, int n_kv, int d_h, int bias,
                            unsigned long long seed)
{
    src_layer_init(s, d, n_h, n_kv, d_h, bias, seed, 0.1);
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

/* Machine roofs: what sgemm reaches and how fast memory streams, measured, not looked up. */
#include <blis.h>
#include <omp.h>
#include <stdlib.h>
#include <time.h>

#include "roofs.h"

double roofs_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double roofs_sgemm_gflops(int n_threads, int n)
{
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return 0;
    }
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)(i % 7) * 0.1f;
        b[i] = (float)(i % 5) * 0.1f;
        c[i] = 0;
    }
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(n_threads, &rntm);
    float one = 1, zero = 0;
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) {
        double t = roofs_now();
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, n, n, n, &one, a, n, 1, b, n, 1, &zero,
                     c, n, 1, NULL, &rntm);
        t = roofs_now() - t;
        if (rep > 0 && t < best) /* the first run warms up packing buffers and threads */
            best = t;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * (double)n * n / best * 1e-9;
}

double roofs_read_gbps(int n_threads, size_t bytes)
{
    size_t n = bytes / sizeof(float);
    float *x = malloc(n * sizeof *x);
    if (!x)
        return 0;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(i & 255); /* first touch by the thread that reads it later */
    double best = 1e30;
    volatile float sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t = roofs_now();
        float total = 0;
#pragma omp parallel num_threads(n_threads) reduction(+ : total)
        {
            /* Eight independent sums so the adds never wait on each other. */
            float s[8] = {0};
#pragma omp for schedule(static)
            for (size_t i = 0; i < n / 8; i++)
                for (int k = 0; k < 8; k++)
                    s[k] += x[i * 8 + k];
            for (int k = 0; k < 8; k++)
                total += s[k];
        }
        t = roofs_now() - t;
        sink = total;
        if (t < best)
            best = t;
    }
    (void)sink;
    free(x);
    return (double)(n / 8 * 8 * sizeof(float)) / best * 1e-9;
}

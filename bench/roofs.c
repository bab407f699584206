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

/* Four floats; malloc's alignment (16 bytes on x86-64) covers its loads. */
typedef float v4f __attribute__((vector_size(16)));

/* The sum of blocks [i0, i1) of 64 floats, `reps` times. 16 independent vector sums (GCC/Clang
 * vector extension, the baseline ISA's 128-bit adds): bound by the loads, not by the adds'
 * latency. Two chains, as the compiler made of eight float sums before, cap 2 cores near
 * 80 GB/s by their latency (estimated: 32 bytes a core every 3 cycles), below what L2/L3
 * deliver. */
static float sum_blocks(const float *x, size_t i0, size_t i1, size_t reps)
{
    v4f acc[16] = {{0}};
    const v4f *xv = (const v4f *)(const void *)x;
    for (size_t rep = 0; rep < reps; rep++)
        for (size_t i = i0; i < i1; i++) {
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++)
                acc[k] += xv[i * 16 + k];
        }
    float total = 0;
    for (int k = 0; k < 16; k++)
        total += acc[k][0] + acc[k][1] + acc[k][2] + acc[k][3];
    return total;
}

/* This thread's share of nb blocks: about the part it touched first. */
static void my_blocks(size_t nb, size_t *i0, size_t *i1)
{
    size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    *i0 = nb * id / nt;
    *i1 = nb * (id + 1) / nt;
}

/* A float array of n values, each written by the thread that reads it later. */
static float *touched(int n_threads, size_t n)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x)
        return NULL;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(i & 255);
    return x;
}

/* Seconds of one timed sum of x (n floats, `reps` times) on n_threads threads, each thread
 * reading its own part between two barriers; before it, untimed, the threads read their parts
 * of e (ne floats, none when ne is 0). */
static double timed_sum(int n_threads, const float *x, size_t n, size_t reps, const float *e,
                        size_t ne, volatile float *sink)
{
    double t = 0;
    float total = 0;
#pragma omp parallel num_threads(n_threads) reduction(+ : total)
    {
        size_t i0, i1;
        my_blocks(ne / 64, &i0, &i1);
        total += sum_blocks(e, i0, i1, 1);
        my_blocks(n / 64, &i0, &i1);
#pragma omp barrier
#pragma omp master
        t = roofs_now();
        total += sum_blocks(x, i0, i1, reps);
#pragma omp barrier
#pragma omp master
        t = roofs_now() - t;
    }
    *sink = total;
    return t;
}

double roofs_read_gbps(int n_threads, size_t bytes)
{
    size_t n = bytes / sizeof(float);
    float *x = touched(n_threads, n);
    if (!x)
        return 0;
    /* Small buffers (in L2/L3) are read more often, at least 64 MiB in all. Each thread reads
     * its own part `reps` times inside one parallel region: a fork and join a pass would cost
     * more than a pass over a few hundred KiB. */
    size_t reps = bytes < ((size_t)64 << 20) ? ((size_t)64 << 20) / (bytes ? bytes : 1) : 1;
    reps = reps > 4000 ? 4000 : reps;
    double best = 1e30;
    volatile float sink = 0;
    for (int trial = 0; trial < 5; trial++) { /* the best of 5 */
        double t = timed_sum(n_threads, x, n, reps, x, 0, &sink);
        best = t < best ? t : best;
    }
    free(x);
    return (double)(n / 64 * 64 * sizeof(float)) * (double)reps / best * 1e-9;
}

double roofs_read_after_gbps(int n_threads, size_t bytes, size_t other_bytes)
{
    size_t n = bytes / sizeof(float), ne = other_bytes / sizeof(float);
    float *x = touched(n_threads, n), *e = touched(n_threads, ne);
    if (!x || !e) {
        free(x);
        free(e);
        return 0;
    }
    double best = 1e30;
    volatile float sink = 0;
    for (int trial = 0; trial < 9; trial++) { /* the best of 9 single passes */
        double t = timed_sum(n_threads, x, n, 1, e, ne, &sink);
        best = t < best ? t : best;
    }
    free(x);
    free(e);
    return (double)(n / 64 * 64 * sizeof(float)) / best * 1e-9;
}

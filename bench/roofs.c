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

#define STREAMS 8 /* the interleaved reads of a thread's part, see sum_widest */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* The same sum with 512-bit loads where the CPU has AVX-512, as the library's kernels read;
 * `streams` 1: in order (4 chains, a block's 4 vectors), STREAMS: the blocks split into that
 * many runs read side by side (8 chains, two runs' blocks). */
__attribute__((target("avx512f"))) static float sum_blocks_512(const float *x, size_t i0,
                                                               size_t i1, size_t reps,
                                                               size_t streams)
{
    __m512 acc[8];
    for (int k = 0; k < 8; k++)
        acc[k] = _mm512_setzero_ps();
    size_t len = (i1 - i0) / streams;
    for (size_t rep = 0; rep < reps; rep++) {
        for (size_t i = 0; i < len; i++)
            for (size_t r = 0; r < streams; r++) {
                const float *b = x + (i0 + r * len + i) * 64;
                for (int k = 0; k < 4; k++)
                    acc[(r & 1) * 4 + k] = _mm512_add_ps(acc[(r & 1) * 4 + k],
                                                         _mm512_loadu_ps(b + 16 * k));
            }
        for (size_t i = i0 + streams * len; i < i1; i++)
            for (int k = 0; k < 4; k++)
                acc[k] = _mm512_add_ps(acc[k], _mm512_loadu_ps(x + i * 64 + 16 * k));
    }
    for (int k = 1; k < 8; k++)
        acc[0] = _mm512_add_ps(acc[0], acc[k]);
    return _mm512_reduce_add_ps(acc[0]);
}
#endif

/*
 * A read roof is what the machine can deliver, so it reads the way the decode does at its
 * fastest (the callers take the best of passes with streams 1 and STREAMS):
 * - with the widest loads the CPU has, as the library's kernels: out of DRAM the 128-bit sum
 *   streamed slower than the decode (Intel Xeon, 2 threads: Llama-2-7B's F32 MHA decode read
 *   30 GB/s against a roof of 23-25);
 * - in STREAMS runs side by side: the hardware prefetchers follow each, as they follow the rows
 *   of the MHA decode's steps (256 MiB, 2 threads: 30.1 GB/s against 25.4 in order; a
 *   throwaway harness).
 * Without AVX-512: the 128-bit sum in order.
 */
static float sum_widest(const float *x, size_t i0, size_t i1, size_t reps, size_t streams)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (__builtin_cpu_supports("avx512f"))
        return sum_blocks_512(x, i0, i1, reps, streams);
#endif
    (void)streams;
    return sum_blocks(x, i0, i1, reps);
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
 * reading its own part between two barriers (in `streams` runs, sum_widest); before it,
 * untimed, the threads read their parts of e (ne floats, none when ne is 0). */
static double timed_sum(int n_threads, const float *x, size_t n, size_t reps, size_t streams,
                        const float *e, size_t ne, volatile float *sink)
{
    double t = 0;
    float total = 0;
#pragma omp parallel num_threads(n_threads) reduction(+ : total)
    {
        size_t i0, i1;
        my_blocks(ne / 64, &i0, &i1);
        total += sum_widest(e, i0, i1, 1, 1);
        my_blocks(n / 64, &i0, &i1);
#pragma omp barrier
#pragma omp master
        t = roofs_now();
        total += sum_widest(x, i0, i1, reps, streams);
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
    for (int trial = 0; trial < 10; trial++) { /* the best of 5 in order, 5 in streams */
        double t = timed_sum(n_threads, x, n, reps, trial % 2 ? STREAMS : 1, x, 0, &sink);
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
    for (int trial = 0; trial < 18; trial++) { /* the best of 9 single passes of each kind */
        double t = timed_sum(n_threads, x, n, 1, trial % 2 ? STREAMS : 1, e, ne, &sink);
        best = t < best ? t : best;
    }
    free(x);
    free(e);
    return (double)(n / 64 * 64 * sizeof(float)) / best * 1e-9;
}

/* The machine's measured roofs, printed beside every benchmark result. */
#ifndef MLA_BENCH_ROOFS_H
#define MLA_BENCH_ROOFS_H

#include <stddef.h>

/* Wall clock in seconds (monotonic). */
double roofs_now(void);

/* BLIS sgemm rate on n_threads threads for n × n × n products, GFLOP/s (best of 3). */
double roofs_sgemm_gflops(int n_threads, int n);

/* Read bandwidth: the sum of a `bytes`-byte float array on n_threads threads, GB/s (the best of 5
 * timings of one pass, or of as many passes as read 64 MiB for smaller arrays, and of 5 more
 * reading each thread's part in 8 runs side by side; the widest loads the CPU has). */
double roofs_read_gbps(int n_threads, size_t bytes);

/* The same over `bytes` as a decode finds them: each timed pass follows an untimed read of
 * `other_bytes` of other memory (the weights a decode streams between two reads of a layer's
 * cache, which push part of it out of the caches). GB/s of the best of 9 single passes in order
 * and 9 in 8 runs a thread. */
double roofs_read_after_gbps(int n_threads, size_t bytes, size_t other_bytes);

#endif /* MLA_BENCH_ROOFS_H */

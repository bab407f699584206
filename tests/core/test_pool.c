/*
 * The worker pool (lib/core/pool.c), on its own threads and on OpenMP's: every item runs exactly
 * once and before mla__pool_run returns; thread numbers stay below the loop's n_threads and no
 * two threads run under one number at once; a sum over the items equals its closed form; loops
 * follow each other back to back (the hand-over between them) and after the workers went to
 * sleep; and a worker held up inside an item leaves the rest of the loop to the others, which a
 * split into one fixed part a thread would not. CI also runs it under ThreadSanitizer (its own
 * threads only).
 */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "../tap.h"

#define MAX_ITEMS 5000
#define MAX_THREADS 8

typedef struct loop {
    int n_threads;
    _Atomic int runs[MAX_ITEMS];      /* calls per item */
    _Atomic int busy[MAX_THREADS];    /* 1 while a thread runs under that number */
    _Atomic int by_thread[MAX_THREADS];
    _Atomic int bad_thread, shared_number;
    _Atomic int64_t sum;
    int stall;                        /* the first worker to take an item sleeps in it (0: none) */
    _Atomic int stalled;              /* that worker's number */
} loop;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void item(void *arg, int64_t i, int thread)
{
    loop *l = arg;
    if (thread < 0 || thread >= l->n_threads || thread >= MAX_THREADS) {
        atomic_store(&l->bad_thread, 1);
        return;
    }
    if (atomic_exchange(&l->busy[thread], 1))
        atomic_store(&l->shared_number, 1);
    atomic_fetch_add(&l->runs[i], 1);
    atomic_fetch_add(&l->by_thread[thread], 1);
    atomic_fetch_add(&l->sum, i * i);
    if (l->stall && thread > 0) {
        int none = 0;
        if (atomic_compare_exchange_strong(&l->stalled, &none, thread))
            sleep_ms(100);
    }
    /* The caller's first item waits (up to 2 s) for a worker to be held up. */
    if (l->stall && thread == 0 && atomic_load(&l->by_thread[0]) == 1)
        for (int w = 0; w < 2000 && !atomic_load(&l->stalled); w++)
            sleep_ms(1);
    atomic_store(&l->busy[thread], 0);
}

static loop lp;

/* One loop of n items on n_threads; returns 1 if every property held. */
static int run_loop(mla__pool *pool, int n_threads, int64_t n, int stall)
{
    memset(&lp, 0, sizeof lp);
    lp.n_threads = n_threads > mla__pool_threads(pool) ? mla__pool_threads(pool) : n_threads;
    if (lp.n_threads < 1)
        lp.n_threads = 1;
    lp.stall = stall;
    mla__pool_run(pool, n_threads, n, item, &lp);
    int ok = !atomic_load(&lp.bad_thread) && !atomic_load(&lp.shared_number);
    for (int64_t i = 0; i < n; i++)
        ok &= atomic_load(&lp.runs[i]) == 1;
    for (int t = 0; t < MAX_THREADS; t++)
        ok &= atomic_load(&lp.busy[t]) == 0;
    /* Σ i² for i < n = (n − 1)·n·(2n − 1)/6 */
    ok &= atomic_load(&lp.sum) == (n - 1) * n * (2 * n - 1) / 6;
    return ok;
}

static void test_mode(int openmp)
{
    const char *mode = openmp ? "OpenMP" : "own threads";
    mla__pool *pool = NULL;
    CHECK(mla__pool_create(4, openmp, &pool) == MLA_OK && pool, "%s: a pool of 4", mode);
    CHECK(mla__pool_threads(pool) == 4, "%s: 4 threads, the caller included", mode);

    static const int64_t ns[] = {0, 1, 2, 3, 7, 64, 1000, MAX_ITEMS};
    static const int ts[] = {0, 1, 2, 3, 4, 9};
    int ok = 1;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof ts / sizeof ts[0]; b++)
            ok &= run_loop(pool, ts[b], ns[a], 0);
    CHECK(ok, "%s: 0 to %d items on 0 to 9 threads: each once, numbers below n_threads, never "
              "two threads under one number, Σ i² exact",
          mode, MAX_ITEMS);

    ok = 1;
    for (int r = 0; r < 5000 && ok; r++)
        ok &= run_loop(pool, 2 + r % 3, 1 + r % 17, 0);
    CHECK(ok, "%s: 5000 loops back to back, 1 to 17 items each", mode);

    /* Past the idle time the workers sleep; the next loops wake them. */
    ok = 1;
    for (int r = 0; r < 3; r++) {
        sleep_ms(5);
        ok &= run_loop(pool, 4, 1000, 0);
    }
    CHECK(ok, "%s: loops after the workers went to sleep", mode);

    if (!openmp) {
        /* The first worker to take an item sleeps 100 ms in it: the other threads take the
         * rest (with one fixed part a thread it would have run a quarter of them). */
        ok = run_loop(pool, 4, 4000, 1);
        int w = atomic_load(&lp.stalled), held = w ? atomic_load(&lp.by_thread[w]) : -1;
        CHECK(ok && held == 1, "own threads: a worker held up in an item ran %d of 4000 items",
              held);
    }
    mla__pool_destroy(pool);

    /* A pool of one thread runs everything on the caller, as a NULL pool does. */
    CHECK(mla__pool_create(1, openmp, &pool) == MLA_OK && mla__pool_threads(pool) == 1,
          "%s: a pool of 1", mode);
    ok = run_loop(pool, 4, 100, 0) && atomic_load(&lp.by_thread[0]) == 100;
    CHECK(ok, "%s: a pool of 1 runs every item on the caller", mode);
    mla__pool_destroy(pool);
}

int main(void)
{
    CHECK(mla__pool_threads(NULL) == 1, "a NULL pool is the caller alone");
    int ok = run_loop(NULL, 4, 100, 0) && atomic_load(&lp.by_thread[0]) == 100;
    CHECK(ok, "a NULL pool runs every item on the caller");
    test_mode(0);
#if defined(__SANITIZE_THREAD__)
    /* libgomp is not built for ThreadSanitizer: its own synchronization would be reported. */
    printf("ok %d # SKIP OpenMP under ThreadSanitizer\n", ++tap_count);
#else
    test_mode(1);
#endif
    mla__pool_destroy(NULL);
    return tap_done();
}

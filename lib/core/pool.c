/*
 * The library's own worker threads (one pool per mla_attn handle), in place of OpenMP's.
 *
 * OpenMP's teams split a loop into one fixed part a thread and spin at every barrier. When other
 * busy threads share the cores (a second process, the host's own pool), a part whose thread is
 * descheduled holds everyone until it runs again, and the spinning takes the time slices the
 * others need: two processes decoding SmolLM-135M on 2 threads each on 2 cores ran 6–300 times
 * slower than alone (doc/attention.md, "Threads"). Here the items of a loop are handed out one
 * at a time to whichever thread asks, the caller included, so a thread that is not running takes
 * nothing and the others do its share; and idle workers yield the core while they wait, then
 * sleep.
 *
 * A host whose own parallel work runs on OpenMP keeps its OpenMP threads spinning for
 * milliseconds after each of its loops, beside these workers; such a host may ask for OpenMP
 * here too (MLA_ATTN_THREADS_OPENMP), so that both share one runtime's threads.
 */
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#  include <immintrin.h>
#  define cpu_relax() _mm_pause()
#elif defined(__aarch64__) && defined(__GNUC__)
#  define cpu_relax() __asm__ __volatile__("yield")
#else
#  define cpu_relax() ((void)0)
#endif

#include "core.h"

/*
 * An idle worker polls for the next loop with pause instructions for SPIN_NS (the forward's loops
 * follow each other a few microseconds apart), then with sched_yield until IDLE_NS after its last
 * loop (the next forward of a decode that calls layer after layer), then sleeps until woken: a
 * host that runs its own parallel work between two forwards gets the cores back after IDLE_NS
 * (with 2 ms, an OpenMP host's loop after each Llama-2-7B-shaped decode took 0.6–2.7 ms instead
 * of 0.05–0.13; with 0.2 ms, 0.36), while a forward after up to IDLE_NS of the host's serial
 * work finds the workers awake (SmolLM-135M's decode after 0.1 ms of it: 0.069 ms, against
 * 0.088 with workers that slept after 20 µs; doc/attention.md, "Threads"). The caller waiting
 * for items in progress polls the same way without sleeping.
 */
#define SPIN_NS 20000
#define IDLE_NS 200000

typedef struct worker {
    struct mla__pool *pool;
    int thread;             /* 1 .. n_workers; the caller is 0 */
    _Atomic int sleeping;   /* waiting on wake, under the pool's lock */
    pthread_cond_t wake;
    pthread_t id;
} worker;

struct mla__pool {
    int openmp;    /* loops run as OpenMP parallel regions of n_workers + 1 threads */
    int n_workers;
    int n_started; /* workers started so far: each when a loop first has work for it */
    int refused;   /* the system refused to start one */
    worker *workers;
    pthread_mutex_t lock; /* only for sleeping and waking */
    /* Even: the loop of that generation is open (or, at 0, none yet); odd: the caller is writing
     * the next one. Workers read the loop only between raising `active` and lowering it, and the
     * caller writes it only after making gen odd and seeing active at 0 (every access
     * sequentially consistent). */
    _Atomic unsigned gen;
    _Atomic int active;
    _Atomic int quit;
    /* The newest loop's thread count, readable without `active`: workers numbered beyond it
     * leave the loop alone (a stale value only makes a worker check the loop itself, or miss
     * one the caller finishes anyway). */
    _Atomic int hint;
    mla__pool_fn fn;
    void *arg;
    int64_t n_items;
    int n_threads;        /* of this loop: the hint may belong to a later one */
    _Atomic int64_t next; /* the next item to hand out */
    _Atomic int64_t done; /* items finished */
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Items until none is left, then counts them done. */
static void take_items(mla__pool *pool, mla__pool_fn fn, void *arg, int64_t n, int thread)
{
    int64_t ran = 0;
    for (int64_t i; (i = atomic_fetch_add(&pool->next, 1)) < n; ran++)
        fn(arg, i, thread);
    if (ran)
        atomic_fetch_add(&pool->done, ran);
}

/* A loop for worker `thread` that it has not seen, or the pool closing. */
static int loop_for(mla__pool *pool, unsigned seen, int thread)
{
    unsigned g = atomic_load(&pool->gen);
    return (g != seen && !(g & 1) && thread < atomic_load(&pool->hint)) ||
           atomic_load(&pool->quit);
}

static int loop_done(mla__pool *pool, unsigned n, int unused)
{
    return atomic_load(&pool->done) == pool->n_items;
}

static int no_reader(mla__pool *pool, unsigned n, int unused)
{
    return atomic_load(&pool->active) == 0;
}

/* Polls until ready(pool, a, b) holds (returns 1): pause, then yield; if may_sleep, returns 0
 * after IDLE_NS for the caller to sleep instead. */
static int poll_until(mla__pool *pool, int (*ready)(mla__pool *, unsigned, int), unsigned a,
                      int b, int may_sleep)
{
    int64_t t0 = now_ns();
    for (int i = 0;; i++) {
        if (ready(pool, a, b))
            return 1;
        if (i < 64) {
            cpu_relax();
            continue;
        }
        i = 0;
        int64_t dt = now_ns() - t0;
        if (may_sleep && dt > IDLE_NS)
            return 0;
        if (dt > SPIN_NS)
            sched_yield();
    }
}

static void *worker_main(void *p)
{
    worker *w = p;
    mla__pool *pool = w->pool;
    unsigned seen = 0;
    for (;;) {
        if (!poll_until(pool, loop_for, seen, w->thread, 1)) {
            pthread_mutex_lock(&pool->lock);
            atomic_store(&w->sleeping, 1);
            while (!loop_for(pool, seen, w->thread))
                pthread_cond_wait(&w->wake, &pool->lock);
            atomic_store(&w->sleeping, 0);
            pthread_mutex_unlock(&pool->lock);
        }
        if (atomic_load(&pool->quit))
            return NULL;
        unsigned g = atomic_load(&pool->gen);
        if (g & 1)
            continue;
        /* Announce the read, then check that the loop is still the one seen: gen may have moved
         * on since loop_for, to a loop for fewer threads. */
        atomic_fetch_add(&pool->active, 1);
        if (atomic_load(&pool->gen) == g) {
            seen = g;
            if (w->thread < pool->n_threads)
                take_items(pool, pool->fn, pool->arg, pool->n_items, w->thread);
        }
        atomic_fetch_sub(&pool->active, 1);
    }
}

static void wake_worker(mla__pool *pool, worker *w)
{
    if (!atomic_load(&w->sleeping))
        return;
    pthread_mutex_lock(&pool->lock);
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&pool->lock);
}

static void pool_free(mla__pool *pool)
{
    atomic_store(&pool->quit, 1);
    for (int i = 0; i < pool->n_started; i++)
        wake_worker(pool, &pool->workers[i]);
    for (int i = 0; i < pool->n_started; i++)
        pthread_join(pool->workers[i].id, NULL);
    if (!pool->openmp) {
        for (int i = 0; i < pool->n_workers; i++)
            pthread_cond_destroy(&pool->workers[i].wake);
        pthread_mutex_destroy(&pool->lock);
    }
    mla_free(pool->workers);
    mla_free(pool);
}

mla_status mla__pool_create(int n_threads, int openmp, mla__pool **out)
{
    int n = n_threads > 1 ? n_threads - 1 : 0;
    mla__pool *pool = mla_calloc(1, sizeof *pool);
    worker *ws = n && !openmp ? mla_calloc((size_t)n, sizeof *ws) : NULL;
    if (!pool || (n && !openmp && !ws)) {
        mla_free(pool);
        mla_free(ws);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "thread pool of %d threads", n_threads);
    }
    pool->openmp = openmp;
    pool->n_workers = n;
    if (openmp) {
        *out = pool;
        return MLA_OK;
    }
    pool->workers = ws;
    pthread_mutex_init(&pool->lock, NULL);
    for (int i = 0; i < n; i++) {
        ws[i].pool = pool;
        ws[i].thread = i + 1;
        pthread_cond_init(&ws[i].wake, NULL);
    }
    *out = pool;
    return MLA_OK;
}

/*
 * Workers 1 .. want − 1 running: those not yet started start now, with every signal blocked
 * (the host's handlers run on its own threads). A handle whose forwards never have work for
 * more threads starts none. If the system refuses a thread, the loops run on those started:
 * every item still runs, on the threads there are.
 */
static void start_workers(mla__pool *pool, int want)
{
    if (want - 1 <= pool->n_started || pool->refused)
        return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    while (pool->n_started < want - 1) {
        worker *w = &pool->workers[pool->n_started];
        if (pthread_create(&w->id, NULL, worker_main, w) != 0) {
            pool->refused = 1; /* not again on every loop */
            break;
        }
        pool->n_started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void mla__pool_destroy(mla__pool *pool)
{
    if (pool)
        pool_free(pool);
}

int mla__pool_threads(const mla__pool *pool)
{
    return pool ? pool->n_workers + 1 : 1;
}

void mla__pool_run(mla__pool *pool, int n_threads, int64_t n_items, mla__pool_fn fn, void *arg)
{
    if (n_items <= 0)
        return;
    if (n_threads > mla__pool_threads(pool))
        n_threads = mla__pool_threads(pool);
    if (n_threads > n_items)
        n_threads = (int)n_items;
    if (n_threads <= 1) {
        for (int64_t i = 0; i < n_items; i++)
            fn(arg, i, 0);
        return;
    }
    if (pool->openmp) {
        _Atomic int64_t next = 0;
#pragma omp parallel num_threads(n_threads)
        {
            /* Inside a host's parallel region the team is this thread alone, numbered 0. */
            int t = omp_get_thread_num();
            for (int64_t i; (i = atomic_fetch_add(&next, 1)) < n_items;)
                fn(arg, i, t);
        }
        return;
    }
    start_workers(pool, n_threads);
    /* Close the last loop: gen odd, then no worker still reading it. */
    unsigned g = atomic_fetch_add(&pool->gen, 1) + 1;
    poll_until(pool, no_reader, 0, 0, 0);
    pool->fn = fn;
    pool->arg = arg;
    pool->n_items = n_items;
    pool->n_threads = n_threads;
    atomic_store(&pool->hint, n_threads);
    atomic_store(&pool->next, 0);
    atomic_store(&pool->done, 0);
    atomic_store(&pool->gen, g + 1);
    for (int i = 0; i < n_threads - 1 && i < pool->n_started; i++)
        wake_worker(pool, &pool->workers[i]);
    take_items(pool, fn, arg, n_items, 0);
    poll_until(pool, loop_done, 0, 0, 0);
}

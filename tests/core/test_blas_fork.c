/*
 * fork() while another thread is inside a BLAS call (core/blas.c): the fork waits until the call
 * has returned, so the child never inherits BLIS's mutexes held, and the child's own products
 * and forks run. The thread in the call is simulated (mla__blas_enter, a sleep, a flag,
 * mla__blas_leave), which makes the check deterministic: without the fork handler, fork()
 * returns while the flag is still 0.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "attn/internal.h"
#include "core/core.h"
#include "../tap.h"

static _Atomic int entered, left;

static void *hold_blas(void *arg)
{
    (void)arg;
    mla__blas_enter();
    atomic_store(&entered, 1);
    struct timespec ts = {0, 150 * 1000000L};
    nanosleep(&ts, NULL);
    atomic_store(&left, 1);
    mla__blas_leave();
    return NULL;
}

/* A product through BLIS (m > 1 rows, several packed blocks) against a plain loop: 0 if equal
 * to 1e-5 relative. */
static int product_ok(void)
{
    enum { M = 600, N = 24, K = 40 };
    float *a = malloc(M * K * sizeof *a), *b = malloc(K * N * sizeof *b);
    float *c = malloc(M * N * sizeof *c), *want = malloc(M * N * sizeof *want);
    int ok = a && b && c && want;
    if (ok) {
        for (int i = 0; i < M * K; i++)
            a[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
        for (int i = 0; i < K * N; i++)
            b[i] = (float)((i * 13) % 7) / 7.0f - 0.5f;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double s = 0;
                for (int k = 0; k < K; k++)
                    s += (double)a[i * K + k] * b[k * N + j];
                want[i * N + j] = (float)s;
            }
        mla__sgemm(MLA__ONE_THREAD, M, N, K, a, K, 1, b, N, 1, 0.0f, c, N, 1);
        ok = tap_rel_diff(c, want, M * N) < 1e-5;
    }
    free(a);
    free(b);
    free(c);
    free(want);
    return ok;
}

/* In a child: a product, then a grandchild that makes one too (the child's lock, started
 * afresh, takes a fork's hold and release again). */
static int child_main(void)
{
    alarm(20);
    if (!product_ok())
        return 3;
    pid_t pid = fork();
    if (pid == 0)
        _exit(product_ok() ? 0 : 4);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return 5;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 6;
}

int main(void)
{
    CHECK(product_ok(), "a product through BLIS equals the float64 loop");

    pthread_t th;
    int made = pthread_create(&th, NULL, hold_blas, NULL) == 0;
    CHECK(made, "a thread to hold a BLAS call");
    if (!made)
        return tap_done();
    while (!atomic_load(&entered)) {
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        _exit(atomic_load(&left) ? child_main() : 2);
    /* No clock involved: the flag is set before the call's release, and fork() cannot take its
     * hold before that release. */
    int left_at_fork = atomic_load(&left), status = 0;
    CHECK(pid > 0 && left_at_fork, "fork() waited for the BLAS call in flight on another thread "
          "(left %d when fork returned)", left_at_fork);
    int reaped = pid > 0 && waitpid(pid, &status, 0) == pid;
    CHECK(reaped && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child saw the call ended, made a product, and its own child made one too "
          "(status %#x: exit 2 call in flight, 3/4 product, 5/6 grandchild)", status);
    pthread_join(th, NULL);

    /* With no call in flight fork() does not wait, and the parent's products go on. */
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        alarm(20);
        _exit(product_ok() ? 0 : 1);
    }
    reaped = pid > 0 && waitpid(pid, &status, 0) == pid;
    CHECK(reaped && WIFEXITED(status) && WEXITSTATUS(status) == 0 && product_ok(),
          "a fork with no call in flight: the child's and the parent's products (status %#x)",
          status);
    return tap_done();
}

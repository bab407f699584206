/*
 * fork() while forwards run on a handle's workers, from another thread: the child's copy of the
 * pool has a worker inside a loop that will never end there. The child's forwards on that handle
 * run on its calling thread (a pool loop would wait for the absent worker: with the process
 * check in mla_attn_forward removed, some of the children hang until their alarm). A child's
 * products also go through BLIS, whose pool mutexes another thread may hold at the fork: without
 * core/blas.c's fork handler about one run in fifteen had a child hang there (killed by its
 * alarm, wait status 0xe). Not run under valgrind: each child inherits memory that only the
 * parent's other threads hold, which valgrind reports as lost when the child exits.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "run.h"

#define D 32

typedef struct long_forward {
    mla_attn *a;
    mla_layer *layer;
    mla_cache *c;
    const float *x;
    float *out;
    mla_status st;
    _Atomic int stop;
} long_forward;

static void *run_long_forward(void *p)
{
    long_forward *lf = p;
    while (!atomic_load(&lf->stop) && lf->st == MLA_OK) {
        lf->st = forward_seqs(lf->a, lf->layer, lf->c, 1, 0, 0, lf->x, 1500, lf->out);
        mla_cache_seq_rm(lf->c, 0, 0, -1);
    }
    return NULL;
}

static void fork_during_forwards(mla_layer *layer)
{
    unsigned long long seed = 11;
    float *x1500 = rand_floats(1500 * D, &seed, 1.0), *x = x1500 + 500 * D;
    mla_attn *a = make_attn(2, MLA_ATTN_PATH_AUTO);
    mla_cache *c = make_cache(&layer, 1, MLA_DTYPE_F16, MLA_DTYPE_F16, 2048, 16);
    mla_cache *c2 = make_cache(&layer, 1, MLA_DTYPE_F16, MLA_DTYPE_F16, 2048, 16);
    /* The child's prompt: enough work for 2 threads (below the line it would not reach the
     * pool at all). */
    float *out = malloc(1500 * D * sizeof *out), *want = malloc(1000 * D * sizeof *want);
    float *got = malloc(1000 * D * sizeof *got);
    mla_attn *ref = make_attn(1, MLA_ATTN_PATH_AUTO);
    mla_status st = forward_seqs(ref, layer, c2, 1, 0, 0, x, 1000, want);
    mla_cache_seq_rm(c2, 0, 0, -1);
    long_forward lf = {a, layer, c, x1500, out, MLA_OK, 0};
    pthread_t th;
    int forks = 0, passed = 0, status = 0;
    if (a && c && c2 && st == MLA_OK && pthread_create(&th, NULL, run_long_forward, &lf) == 0) {
        /* Eight forks a few milliseconds apart: most land while a worker runs an item. */
        for (int k = 0; k < 8; k++) {
            struct timespec ts = {0, 3 * 1000000L};
            nanosleep(&ts, NULL);
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                alarm(10);
                mla_status cs = forward_seqs(a, layer, c2, 1, 0, 0, x, 1000, got);
                _exit(cs == MLA_OK && tap_rel_diff(got, want, 1000 * D) < 1e-5 ? 0 : 1);
            }
            if (pid > 0 && waitpid(pid, &status, 0) == pid) {
                forks++;
                int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
                passed += ok;
                if (!ok)
                    printf("# child %d: wait status %#x\n", k, status);
            }
        }
        atomic_store(&lf.stop, 1);
        pthread_join(th, NULL);
    }
    CHECK(forks == 8 && passed == 8 && lf.st == MLA_OK,
          "fork() during forwards on 2 threads: each of %d children's forward on the handle "
          "runs and gives the one-thread output (%d did)", forks, passed);
    free(x1500);
    free(out);
    free(want);
    free(got);
    mla_attn_destroy(a);
    mla_attn_destroy(ref);
    mla_cache_destroy(c);
    mla_cache_destroy(c2);
}

int main(void)
{
    src_layer src;
    src_init(&src, D, 4, 2, 8, 0, 7);
    mla_layer *layer = convert(&src, 4, 4, MLA_FACTOR_JOINT);
    CHECK(layer != NULL, "conversion");
    if (layer)
        fork_during_forwards(layer);
    mla_layer_destroy(layer);
    src_free(&src);
    return tap_done();
}

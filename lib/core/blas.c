/*
 * BLIS keeps its packing buffers in pools behind mutexes and registers no fork handler: a
 * fork() while another thread holds one of them leaves the child's copy locked for good, and
 * the child's first product waits on it forever (attn/fork caught it: a child's prompt hung in
 * bli_sgemm_ex). So every call into BLAS or LAPACK holds this lock for reading, and fork()
 * takes it for writing: it waits until no thread is inside one, and no call starts until the
 * fork is done.
 */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#include <pthread.h>

#include "core.h"

static pthread_rwlock_t blas_lock;
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static int blas_lock_ok;

static void blas_lock_init(void)
{
    pthread_rwlockattr_t at;
    pthread_rwlockattr_init(&at);
#ifdef PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP
    /* A waiting fork() holds back new readers, so a stream of products cannot starve it (no
     * thread takes the lock twice: each hold is one BLAS call). */
    pthread_rwlockattr_setkind_np(&at, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    blas_lock_ok = pthread_rwlock_init(&blas_lock, &at) == 0;
    pthread_rwlockattr_destroy(&at);
}

static void blas_prepare(void)
{
    pthread_rwlock_wrlock(&blas_lock);
}

static void blas_parent(void)
{
    pthread_rwlock_unlock(&blas_lock);
}

/* The child's only thread is not the one the lock records as its writer: start it afresh. */
static void blas_child(void)
{
    blas_lock_init();
}

static void blas_setup(void)
{
    blas_lock_init();
    if (blas_lock_ok && pthread_atfork(blas_prepare, blas_parent, blas_child) != 0) {
        pthread_rwlock_destroy(&blas_lock);
        blas_lock_ok = 0;
    }
}

void mla__blas_enter(void)
{
    pthread_once(&blas_once, blas_setup);
    if (blas_lock_ok)
        pthread_rwlock_rdlock(&blas_lock);
}

void mla__blas_leave(void)
{
    if (blas_lock_ok)
        pthread_rwlock_unlock(&blas_lock);
}

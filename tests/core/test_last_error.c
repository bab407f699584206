/* mla_last_error() is per thread: two threads failing differently each read their own message. */
#include <pthread.h>
#include <string.h>

#include <mla/mla.h>

#include "../tap.h"

typedef struct {
    int which;
    mla_status status;
    char message[1024];
    pthread_barrier_t *barrier;
} job;

static void *run(void *arg)
{
    job *j = arg;
    /* Two different failures: a NULL params pointer and a too-small struct_size. */
    if (j->which == 0) {
        j->status = mla_geometry_default_params(NULL, sizeof(mla_geometry));
    } else {
        mla_convert_params p;
        j->status = mla_convert_default_params(&p, 3);
    }
    /* Both threads have failed before either reads its message. */
    pthread_barrier_wait(j->barrier);
    strncpy(j->message, mla_last_error(), sizeof j->message - 1);
    return NULL;
}

int main(void)
{
    CHECK(strcmp(mla_last_error(), "") == 0, "a new thread has an empty last error");

    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    job jobs[2] = {{.which = 0, .barrier = &barrier}, {.which = 1, .barrier = &barrier}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, run, &jobs[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&barrier);

    CHECK(jobs[0].status == MLA_ERR_INVALID_ARGUMENT, "thread 0 failed with invalid argument");
    CHECK(jobs[1].status == MLA_ERR_INVALID_ARGUMENT, "thread 1 failed with invalid argument");
    CHECK(strstr(jobs[0].message, "is NULL") != NULL, "thread 0 sees its own error: %s",
          jobs[0].message);
    CHECK(strstr(jobs[1].message, "struct_size 3") != NULL, "thread 1 sees its own error: %s",
          jobs[1].message);
    CHECK(strcmp(mla_last_error(), "") == 0, "the main thread saw neither error");

    /* A failure on this thread is seen here, and a success does not erase it. */
    mla_convert_params p;
    CHECK(mla_convert_default_params(NULL, sizeof p) == MLA_ERR_INVALID_ARGUMENT, "NULL params fail");
    CHECK(strncmp(mla_last_error(), "invalid argument: ", 18) == 0,
          "message starts with the status: %s", mla_last_error());
    CHECK(mla_convert_default_params(&p, sizeof p) == MLA_OK, "valid call succeeds");
    CHECK(mla_last_error()[0] != '\0', "a success leaves the last error in place");
    mla_clear_error();
    CHECK(strcmp(mla_last_error(), "") == 0, "mla_clear_error empties it");
    return tap_done();
}

/* The attention handle: parameters, threads, scratch memory. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mla/attn.h>

#include "attn/internal.h"

/* Upper bound on worker threads, against typos such as −1 cast to a huge count. */
#define MAX_THREADS 4096

/* A test hook from the environment: a whole non-negative decimal integer up to max; anything
 * else (unset, sign, spaces, trailing characters, out of range) keeps the default. */
static int64_t env_count(const char *name, int64_t def, int64_t max)
{
    const char *sb = getenv(name);
    if (!sb || *sb < '0' || *sb > '9')
        return def;
    char *end;
    errno = 0;
    long long v = strtoll(sb, &end, 10);
    if (errno || *end != '\0' || v < 0 || v > max)
        return def;
    return (int64_t)v;
}

MLA_API mla_status mla_attn_default_params(mla_attn_params *p, size_t struct_size)
{
    mla_attn_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.n_threads = 1;
    d.path = MLA_ATTN_PATH_AUTO;
    d.crossover_tokens = 0;
    d.max_scratch_bytes = 0;
    d.threads = MLA_ATTN_THREADS_POOL;
    return mla_params_write(p, struct_size, &d, sizeof d, "attn params");
}

MLA_API mla_status mla_attn_create(const mla_attn_params *params, mla_attn **out)
{
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_create: out is NULL");
    mla_attn_params p;
    mla_attn_default_params(&p, sizeof p);
    if (params) {
        mla_status st = mla_params_read(&p, sizeof p, params, "attn params");
        if (st != MLA_OK)
            return st;
    }
    if (p.n_threads < 0 || p.n_threads > MAX_THREADS)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attn params: n_threads is %d, must be in [0, %d] (0: all cores)",
                        (int)p.n_threads, MAX_THREADS);
    if (p.path != MLA_ATTN_PATH_AUTO && p.path != MLA_ATTN_PATH_ABSORBED &&
        p.path != MLA_ATTN_PATH_MATERIALIZED)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "attn params: path is %d, unknown",
                        (int)p.path);
    if (p.threads != MLA_ATTN_THREADS_POOL && p.threads != MLA_ATTN_THREADS_OPENMP)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attn params: threads is %d, unknown (0: the handle's pool, 1: OpenMP)",
                        (int)p.threads);
    if (p.crossover_tokens < 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attn params: crossover_tokens is %d, must be ≥ 0 (0: by the cost model)",
                        (int)p.crossover_tokens);
    if (p.max_scratch_bytes < 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attn params: max_scratch_bytes is %lld, must be ≥ 0 (0: no limit)",
                        (long long)p.max_scratch_bytes);
    mla_attn *a = mla_calloc(1, sizeof *a);
    if (!a)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "mla_attn_create: %zu bytes", sizeof *a);
    a->p = p;
    a->p.struct_size = sizeof p;
    a->pid = (long)getpid();
    a->n_threads = p.n_threads == 0 ? mla_cpu_count() : p.n_threads;
    mla_status st =
        mla__pool_create(a->n_threads, p.threads == MLA_ATTN_THREADS_OPENMP, &a->pool);
    if (st != MLA_OK) {
        int n = a->n_threads;
        mla_free(a);
        return mla_fail_context(st, "mla_attn_create: n_threads %d: ", n);
    }
    a->k = mla__attn_kernels_best();
    a->stream_bytes = env_count("MLA_ATTN_STREAM_BYTES", MLA_ATTN_STREAM_BYTES, INT64_MAX);
    a->stream_prefetch = (int)env_count("MLA_ATTN_STREAM_PREFETCH", mla_cpu()->amd, 1);
    /* 0 sends every loop with work to the threads (tests of the threads' hand-off). */
    a->parallel_min_flops =
        (double)env_count("MLA_ATTN_PARALLEL_MIN_FLOPS", MLA_ATTN_PARALLEL_MIN_FLOPS, INT64_MAX);
    /* Absorbed products in bf16 on vdpbf16ps or AMX tiles run at twice the float32 rate or
     * more, which moves AUTO's switch (forward.c). */
    a->bf16_native = a->k->bf16_products && (strcmp(a->k->bf16_products, "vdpbf16ps") == 0 ||
                                             strcmp(a->k->bf16_products, "amx") == 0);
    *out = a;
    return MLA_OK;
}

MLA_API void mla_attn_destroy(mla_attn *attn)
{
    if (!attn)
        return;
    mla__pool_destroy(attn->pool);
    mla_free(attn->scratch);
    mla_free(attn);
}

MLA_API mla_status mla_attn_scratch_bytes(const mla_attn *attn, int64_t *bytes)
{
    if (!attn || !bytes)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_scratch_bytes: %s is NULL",
                        !attn ? "attn" : "bytes");
    *bytes = (int64_t)attn->scratch_size;
    return MLA_OK;
}

MLA_API mla_status mla_attn_scratch_release(mla_attn *attn)
{
    if (!attn)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_scratch_release: attn is NULL");
    mla_free(attn->scratch);
    attn->scratch = NULL;
    attn->scratch_size = 0;
    return MLA_OK;
}

MLA_API mla_status mla_attn_set_progress(mla_attn *attn, mla_progress_fn progress, void *user)
{
    if (!attn)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_set_progress: attn is NULL");
    attn->progress = progress;
    attn->progress_user = progress ? user : NULL;
    return MLA_OK;
}

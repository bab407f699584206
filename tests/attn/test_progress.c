/*
 * The forward's progress callback (mla_attn_set_progress) through the public API: its total is
 * the closed form m·len0 + m·(m+1)/2 summed over the batch's sequences, done never decreases and
 * ends at the total, the callback runs on the calling thread and changes no result; a nonzero
 * return cancels with CANCELLED, nothing appended, out untouched, and the same tokens then give
 * the same output as an uncancelled run.
 */
#include <pthread.h>

#include "util.h"

#define D 64
#define N 300

typedef struct record {
    int calls, decreasing;
    int cancel_at; /* return nonzero at that call (1-based); −1: at the last (done = total) */
    int64_t first, last, total, total_changed;
    pthread_t caller;
    int other_thread;
} record;

static int on_progress(void *user, int64_t done, int64_t total)
{
    record *r = user;
    r->calls++;
    if (r->calls == 1) {
        r->first = done;
        r->total = total;
    } else {
        r->decreasing |= done < r->last;
        r->total_changed |= total != r->total;
    }
    r->last = done;
    r->other_thread |= !pthread_equal(pthread_self(), r->caller);
    return r->cancel_at > 0 ? r->calls >= r->cancel_at : r->cancel_at < 0 && done == total;
}

static void rec_reset(record *r)
{
    int cancel_at = r->cancel_at;
    memset(r, 0, sizeof *r);
    r->caller = pthread_self();
    r->cancel_at = cancel_at;
}

static mla_attn *attn_of(int threads, mla_attn_path path, record *r)
{
    mla_attn *a = make_attn(threads, path);
    if (a && r && mla_attn_set_progress(a, on_progress, r) != MLA_OK) {
        mla_attn_destroy(a);
        return NULL;
    }
    if (r) {
        r->cancel_at = 0;
        rec_reset(r);
    }
    return a;
}

static void check_record(const record *r, int64_t want_total, const char *what)
{
    CHECK(r->calls >= 2 && r->total == want_total && !r->total_changed && r->last == want_total &&
              !r->decreasing && r->first == 0 && !r->other_thread,
          "%s: %d calls, first %lld, total %lld (closed form %lld), last %lld, decreasing %d, on "
          "another thread %d",
          what, r->calls, (long long)r->first, (long long)r->total, (long long)want_total,
          (long long)r->last, r->decreasing, r->other_thread);
}

int main(void)
{
    src_layer src;
    src_init(&src, D, 4, 2, 16, 0, 17);
    mla_layer *layer = convert(&src, 4, 8, MLA_FACTOR_JOINT);
    mla_cache *c = layer ? make_cache(&layer, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 8 * 640, 16) : NULL;
    CHECK(layer && c, "layer and cache (%s)", mla_last_error());
    if (!layer || !c) {
        src_free(&src);
        return tap_done();
    }
    unsigned long long seed = 9;
    float *x = rand_floats((size_t)2 * N * D, &seed, 1.0);
    float *plain = malloc((size_t)2 * N * D * sizeof(float));
    float *o = malloc((size_t)2 * N * D * sizeof(float));
    const int64_t prompt_pairs = (int64_t)N * (N + 1) / 2;

    /* Without a callback: the outputs every run below must reproduce bit for bit. */
    mla_attn *a0 = attn_of(1, MLA_ATTN_PATH_AUTO, NULL);
    mla_status st = forward_seqs(a0, layer, c, 1, 0, 0, x, N, plain);
    CHECK(st == MLA_OK, "prefill without a callback (%s)", mla_last_error());

    /* Prompts on each path and thread count: the closed form, the same output. */
    const mla_attn_path paths[] = {MLA_ATTN_PATH_AUTO, MLA_ATTN_PATH_ABSORBED,
                                   MLA_ATTN_PATH_MATERIALIZED};
    for (int pi = 0; pi < 3; pi++)
        for (int threads = 1; threads <= 2; threads++) {
            record r;
            mla_attn *a = attn_of(threads, paths[pi], &r);
            int32_t sq = 1 + pi * 2 + threads - 1;
            st = forward_seqs(a, layer, c, 1, sq, 0, x, N, o);
            char what[64];
            snprintf(what, sizeof what, "prompt of %d, path %d, %d threads", N, (int)paths[pi],
                     threads);
            CHECK(st == MLA_OK, "%s (%s)", what, mla_last_error());
            check_record(&r, prompt_pairs, what);
            /* Every path's result against the float64 formula is test_mla.c's; here the
             * callback must change nothing: the run without it, on the same path. */
            if (paths[pi] == MLA_ATTN_PATH_AUTO && threads == 1)
                CHECK(memcmp(o, plain, (size_t)N * D * sizeof(float)) == 0,
                      "%s: the output of the run without a callback", what);
            /* A decode after it: len0 + 1 pairs. */
            rec_reset(&r);
            st = forward_seqs(a, layer, c, 1, sq, N, x + (size_t)N * D, 1, o);
            snprintf(what, sizeof what, "decode after %d, path %d, %d threads", N,
                     (int)paths[pi], threads);
            CHECK(st == MLA_OK, "%s (%s)", what, mla_last_error());
            check_record(&r, N + 1, what);
            mla_attn_destroy(a);
        }

    /* A batch of two sequences' chunks of 40 tokens after N cached ones each. */
    {
        record r;
        mla_attn *a = attn_of(2, MLA_ATTN_PATH_AUTO, &r);
        st = forward_seqs(a, layer, c, 2, 1, N + 1, x, 40, o);
        CHECK(st == MLA_OK, "two chunks of 40 after %d (%s)", N + 1, mla_last_error());
        check_record(&r, 2 * (40 * (int64_t)(N + 1) + 40 * 41 / 2), "two chunks of 40");
        mla_attn_destroy(a);
    }

    /* Cancel at the first call (before any job), at the second (after the first job, on 1
     * thread) and at the last, when all the attention is done (2 threads: which calls come
     * between depends on how the threads share the jobs): CANCELLED, nothing appended, out
     * untouched; then the same prompt runs to the uncancelled output. */
    static const int cancel_cases[][2] = {{1, 1}, {2, 1}, {-1, 2}}; /* call, threads */
    for (int ci = 0; ci < 3; ci++) {
        int at = cancel_cases[ci][0];
        record r;
        mla_attn *a = attn_of(cancel_cases[ci][1], MLA_ATTN_PATH_AUTO, &r);
        r.cancel_at = at;
        for (int i = 0; i < N * D; i++)
            o[i] = 5.0f;
        st = forward_seqs(a, layer, c, 1, 7, 0, x, N, o);
        int64_t len = -1, written = -1;
        mla_cache_seq_length(c, 7, &len);
        mla_cache_seq_written(c, 0, 7, &written);
        int untouched = 1;
        for (int i = 0; i < N * D; i++)
            untouched &= o[i] == 5.0f;
        CHECK(st == MLA_ERR_CANCELLED && strstr(mla_last_error(), "cancelled") && len == 0 &&
                  written == 0 && untouched &&
                  (at > 0 ? r.calls == at && (at == 1) == (r.last == 0) : r.last == r.total),
              "cancel at call %d (%d calls): status %d, length %lld, written %lld, out untouched "
              "%d (%s)",
              at, r.calls, (int)st, (long long)len, (long long)written, untouched,
              mla_last_error());
        r.cancel_at = 0;
        rec_reset(&r);
        st = forward_seqs(a, layer, c, 1, 7, 0, x, N, o);
        double diff = 0;
        for (int i = 0; i < N * D; i++) {
            double e = fabs((double)o[i] - plain[i]);
            diff = e > diff ? e : diff;
        }
        CHECK(st == MLA_OK && diff < 1e-5, "after the cancel: the prompt again, max diff %.3g (%s)",
              diff, mla_last_error());
        mla_cache_seq_rm(c, 7, 0, -1);
        mla_attn_destroy(a);
    }

    /* Cleared: no more calls. NULL handle: INVALID_ARGUMENT. */
    {
        record r;
        mla_attn *a = attn_of(1, MLA_ATTN_PATH_AUTO, &r);
        CHECK(a && mla_attn_set_progress(a, NULL, &r) == MLA_OK, "clearing the callback");
        st = forward_seqs(a, layer, c, 1, 7, 0, x, 8, o);
        CHECK(st == MLA_OK && r.calls == 0, "cleared: %d calls (%s)", r.calls, mla_last_error());
        mla_attn_destroy(a);
        CHECK(mla_attn_set_progress(NULL, on_progress, &r) == MLA_ERR_INVALID_ARGUMENT &&
                  strstr(mla_last_error(), "attn"),
              "set_progress(NULL): %s", mla_last_error());
    }

    mla_attn_destroy(a0);
    free(x);
    free(plain);
    free(o);
    mla_cache_destroy(c);
    mla_layer_destroy(layer);
    src_free(&src);
    return tap_done();
}

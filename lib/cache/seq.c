/* Sequences: lists of block entries in position order; reserve, rm, cp, keep, clear, lookups. */
#include <string.h>

#include <mla/cache.h>

#include "cache/internal.h"

mla_status mla__cache_check_seq(const mla_cache *c, int32_t seq, const char *what)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "%s: cache is NULL", what);
    if (seq < 0 || seq >= c->n_seq_max)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "%s: sequence %d out of range (0 .. %d)", what,
                        (int)seq, (int)c->n_seq_max - 1);
    return MLA_OK;
}

int64_t mla__cache_seq_find(const mla_cache_seq *s, int64_t idx, int32_t *in_entry)
{
    int64_t i = 0;
    while (idx >= s->e[i].n) {
        idx -= s->e[i].n;
        i++;
    }
    *in_entry = (int32_t)idx;
    return i;
}

int64_t mla__cache_seq_pos(const mla_cache *c, const mla_cache_seq *s, int64_t idx)
{
    int32_t k;
    int64_t i = mla__cache_seq_find(s, idx, &k);
    return mla__cache_entry_pos(c, &s->e[i], k);
}

int64_t mla__cache_seq_lower(const mla_cache *c, const mla_cache_seq *s, int64_t pos)
{
    /* first entry whose last position is ≥ pos, then inside it */
    int64_t lo = 0, hi = s->n_e;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const mla_cache_entry *e = &s->e[mid];
        if (mla__cache_entry_pos(c, e, e->n - 1) < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    int64_t before = 0;
    for (int64_t i = 0; i < lo; i++)
        before += s->e[i].n;
    if (lo == s->n_e)
        return before;
    const mla_cache_entry *e = &s->e[lo];
    int32_t a = 0, b = e->n;
    while (a < b) {
        int32_t mid = a + (b - a) / 2;
        if (mla__cache_entry_pos(c, e, mid) < pos)
            a = mid + 1;
        else
            b = mid;
    }
    return before + a;
}

mla_status mla__cache_seq_grow(mla_cache_seq *s, int64_t n)
{
    if (n <= s->cap_e)
        return MLA_OK;
    int64_t cap = s->cap_e ? s->cap_e : 8;
    while (cap < n)
        cap *= 2;
    mla_cache_entry *e = mla_calloc((size_t)cap, sizeof *e);
    if (!e)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache: block table of %lld entries",
                        (long long)cap);
    if (s->n_e)
        memcpy(e, s->e, (size_t)s->n_e * sizeof *e);
    mla_free(s->e);
    s->e = e;
    s->cap_e = cap;
    return MLA_OK;
}

void mla__cache_seq_written_all(const mla_cache *c, mla_cache_seq *s, int64_t n)
{
    for (int32_t l = 0; l < c->n_layers; l++)
        s->written[l] = n;
}

void mla__cache_seq_drop(mla_cache *c, mla_cache_seq *s)
{
    for (int64_t i = 0; i < s->n_e; i++)
        mla__cache_block_unref(c, s->e[i].block);
    s->n_e = 0;
    s->n_tokens = 0;
}

void mla__cache_seq_own(mla_cache *c, mla_cache_seq *s, int64_t i, const int32_t *spare,
                        int64_t *next)
{
    mla_cache_entry *e = &s->e[i];
    /* A count of 1 can be trusted without holding the lock: only this sequence's writer could
     * add a reference, and the other holders of a shared block only ever drop theirs, after
     * they have finished copying it. */
    if (mla__cache_block_refs(c, e->block) == 1)
        return;
    int32_t b = spare[(*next)++];
    mla__cache_slots_copy(c, b, e->off, e->block, e->off, e->n);
    mla__cache_block_unref(c, e->block);
    e->block = b;
}

int64_t mla__cache_seq_shared(const mla_cache *c, const mla_cache_seq *s, int64_t i0, int64_t i1)
{
    int64_t n = 0;
    for (int64_t i = i0; i < i1; i++)
        n += mla__cache_block_refs(c, s->e[i].block) > 1;
    return n;
}

static void append(mla_cache *c, mla_cache_seq *s, int64_t pos, int64_t n, const int32_t *spare,
                   int64_t *next)
{
    const int32_t bt = c->block_tokens;
    int64_t done = 0;
    if (s->n_e > 0) {
        mla_cache_entry *t = &s->e[s->n_e - 1];
        int64_t k = bt - (t->off + t->n);
        if (k > n)
            k = n;
        if (k > 0) {
            mla__cache_seq_own(c, s, s->n_e - 1, spare, next);
            int32_t slot = t->off + t->n;
            mla__cache_slots_zero(c, t->block, slot, (int32_t)k);
            int64_t *p = mla__cache_block_pos(c, t->block);
            for (int64_t j = 0; j < k; j++)
                p[slot + j] = pos + j;
            t->n += (int32_t)k;
            done = k;
        }
    }
    while (done < n) {
        int32_t b = spare[(*next)++];
        int32_t k = n - done < bt ? (int32_t)(n - done) : bt;
        mla__cache_slots_zero(c, b, 0, k);
        int64_t *p = mla__cache_block_pos(c, b);
        for (int32_t j = 0; j < k; j++)
            p[j] = pos + done + j;
        s->e[s->n_e++] = (mla_cache_entry){b, 0, k};
        done += k;
    }
    s->n_tokens += n;
}

mla_status mla__cache_seq_prepare(mla_cache *c, int32_t seq, int64_t i0, int64_t i1,
                                  int64_t pos_new, int64_t n_new)
{
    mla_cache_seq *s = &c->seqs[seq];
    const int64_t bt = c->block_tokens;
    int64_t need = mla__cache_seq_shared(c, s, i0, i1);
    int64_t new_entries = 0;
    if (n_new > 0) {
        int64_t room = 0;
        if (s->n_e > 0) {
            const mla_cache_entry *t = &s->e[s->n_e - 1];
            room = bt - (t->off + t->n);
            if (room > n_new)
                room = n_new;
            /* the tail is copied first if it is shared and not already counted */
            if (room > 0 && !(s->n_e - 1 >= i0 && s->n_e - 1 < i1) &&
                mla__cache_block_refs(c, t->block) > 1)
                need++;
        }
        new_entries = (n_new - room) / bt + ((n_new - room) % bt != 0);
        need += new_entries;
    }
    if (need == 0 && n_new == 0)
        return MLA_OK;
    int32_t free_now = mla__cache_blocks_free(c);
    if (need > c->n_blocks)
        return mla_fail(MLA_ERR_CAPACITY, "cache: sequence %d needs %lld more blocks, %d free",
                        (int)seq, (long long)need, (int)free_now);
    mla_status st = mla__cache_seq_grow(s, s->n_e + new_entries);
    if (st != MLA_OK)
        return st;
    int32_t *spare = mla_alloc((size_t)(need + 1) * sizeof *spare);
    if (!spare)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache: %lld block ids", (long long)need);
    if (mla__cache_blocks_take(c, need, spare) != 0) {
        mla_free(spare);
        return mla_fail(MLA_ERR_CAPACITY,
                        "cache: sequence %d needs %lld more blocks of %d tokens, %d free",
                        (int)seq, (long long)need, (int)bt, (int)mla__cache_blocks_free(c));
    }
    int64_t next = 0;
    for (int64_t i = i0; i < i1; i++)
        mla__cache_seq_own(c, s, i, spare, &next);
    if (n_new > 0)
        append(c, s, pos_new, n_new, spare, &next);
    /* blocks another writer's copy made unnecessary meanwhile */
    mla__cache_blocks_give(c, need - next, spare + next);
    mla_free(spare);
    return MLA_OK;
}

static int64_t last_pos(const mla_cache *c, const mla_cache_seq *s)
{
    if (s->n_e == 0)
        return -1;
    const mla_cache_entry *t = &s->e[s->n_e - 1];
    return mla__cache_entry_pos(c, t, t->n - 1);
}

MLA_API mla_status mla_cache_reserve(mla_cache *c, int32_t seq, int64_t pos, int64_t n_tokens)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_reserve");
    if (st != MLA_OK)
        return st;
    if (pos < 0 || n_tokens < 0 || pos > INT64_MAX - n_tokens)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_reserve: sequence %d: position %lld, %lld tokens", (int)seq,
                        (long long)pos, (long long)n_tokens);
    int64_t last = last_pos(c, &c->seqs[seq]);
    if (pos <= last)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_reserve: position %lld is not after the last position %lld "
                        "of sequence %d", (long long)pos, (long long)last, (int)seq);
    return mla__cache_seq_prepare(c, seq, 0, 0, pos, n_tokens);
}

/* Token range [*a, *b) of the positions [p0, p1) (negative: open). */
static void token_range(const mla_cache *c, const mla_cache_seq *s, int64_t p0, int64_t p1,
                        int64_t *a, int64_t *b)
{
    *a = p0 < 0 ? 0 : mla__cache_seq_lower(c, s, p0);
    *b = p1 < 0 ? s->n_tokens : mla__cache_seq_lower(c, s, p1);
    if (*b < *a)
        *b = *a;
}

/* Would removing tokens [a, b) split a shared entry in two? */
static int rm_splits(const mla_cache *c, const mla_cache_seq *s, int64_t a, int64_t b)
{
    if (a >= b)
        return 0;
    int32_t ka, kb;
    int64_t ia = mla__cache_seq_find(s, a, &ka);
    int64_t ib = mla__cache_seq_find(s, b - 1, &kb);
    return ia == ib && ka > 0 && kb < s->e[ia].n - 1 &&
           mla__cache_block_refs(c, s->e[ia].block) > 1;
}

static void rm_tokens(mla_cache *c, mla_cache_seq *s, int64_t a, int64_t b)
{
    int64_t w = 0, t0 = 0;
    int64_t n_e = s->n_e;
    for (int64_t i = 0; i < n_e; i++) {
        mla_cache_entry e = s->e[i];
        int64_t t1 = t0 + e.n;
        if (t1 <= a || t0 >= b) {
            s->e[w++] = e;
        } else if (a <= t0 && t1 <= b) {
            mla__cache_block_unref(c, e.block);
        } else if (a <= t0) {
            int32_t cut = (int32_t)(b - t0);
            s->e[w++] = (mla_cache_entry){e.block, e.off + cut, e.n - cut};
        } else if (t1 <= b) {
            s->e[w++] = (mla_cache_entry){e.block, e.off, (int32_t)(a - t0)};
        } else if (mla__cache_block_refs(c, e.block) == 1) {
            /* a hole inside an unshared block: close it so the block's tail stays usable */
            int32_t ka = (int32_t)(a - t0), kb = (int32_t)(b - t0);
            mla__cache_slots_copy(c, e.block, e.off + ka, e.block, e.off + kb, e.n - kb);
            s->e[w++] = (mla_cache_entry){e.block, e.off, e.n - (kb - ka)};
        } else {
            /* a hole inside a shared block: two entries (room was made by the caller) */
            int32_t ka = (int32_t)(a - t0), kb = (int32_t)(b - t0);
            memmove(&s->e[i + 2], &s->e[i + 1], (size_t)(n_e - i - 1) * sizeof *s->e);
            s->e[w++] = (mla_cache_entry){e.block, e.off, ka};
            s->e[w++] = (mla_cache_entry){e.block, e.off + kb, e.n - kb};
            mla__cache_block_ref(c, e.block);
            i++;
            n_e++;
        }
        t0 = t1;
    }
    s->n_e = w;
    s->n_tokens -= b - a;
    /* the written prefix of each layer loses the removed tokens it covered */
    for (int32_t l = 0; l < c->n_layers; l++)
        if (s->written[l] > a)
            s->written[l] = s->written[l] >= b ? s->written[l] - (b - a) : a;
}

MLA_API mla_status mla_cache_seq_rm(mla_cache *c, int32_t seq, int64_t p0, int64_t p1)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_seq_rm: cache is NULL");
    if (seq >= c->n_seq_max)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_seq_rm: sequence %d out of range (0 .. %d, or < 0 for all)",
                        (int)seq, (int)c->n_seq_max - 1);
    int32_t s0 = seq < 0 ? 0 : seq, s1 = seq < 0 ? c->n_seq_max : seq + 1;
    /* room for every split first, so that nothing changes if memory runs out */
    for (int32_t q = s0; q < s1; q++) {
        mla_cache_seq *s = &c->seqs[q];
        int64_t a, b;
        token_range(c, s, p0, p1, &a, &b);
        if (rm_splits(c, s, a, b)) {
            mla_status st = mla__cache_seq_grow(s, s->n_e + 1);
            if (st != MLA_OK)
                return mla_fail_context(st, "mla_cache_seq_rm: sequence %d: ", (int)q);
        }
    }
    for (int32_t q = s0; q < s1; q++) {
        mla_cache_seq *s = &c->seqs[q];
        int64_t a, b;
        token_range(c, s, p0, p1, &a, &b);
        if (a < b)
            rm_tokens(c, s, a, b);
    }
    return MLA_OK;
}

MLA_API mla_status mla_cache_seq_cp(mla_cache *c, int32_t src, int32_t dst, int64_t p0,
                                    int64_t p1)
{
    mla_status st = mla__cache_check_seq(c, src, "mla_cache_seq_cp (src)");
    if (st == MLA_OK)
        st = mla__cache_check_seq(c, dst, "mla_cache_seq_cp (dst)");
    if (st != MLA_OK)
        return st;
    mla_cache_seq *s = &c->seqs[src], *d = &c->seqs[dst];
    int64_t a, b;
    token_range(c, s, p0, p1, &a, &b);
    mla_cache_seq n = {0};
    int64_t first = 0, last = -1;
    int32_t ka = 0, kb = 0;
    if (a < b) {
        first = mla__cache_seq_find(s, a, &ka);
        last = mla__cache_seq_find(s, b - 1, &kb);
    }
    if ((st = mla__cache_seq_grow(&n, last - first + 1)) != MLA_OK)
        return mla_fail_context(st, "mla_cache_seq_cp: sequence %d to %d: ", (int)src, (int)dst);
    for (int64_t i = first; i <= last; i++) {
        mla_cache_entry e = s->e[i];
        int32_t lo = i == first ? ka : 0, hi = i == last ? kb + 1 : e.n;
        n.e[n.n_e++] = (mla_cache_entry){e.block, e.off + lo, hi - lo};
        mla__cache_block_ref(c, e.block);
    }
    n.n_tokens = b - a;
    /* dst has written what src had of [a, b) (drop leaves the counts alone: src may be dst) */
    mla__cache_seq_drop(c, d);
    for (int32_t l = 0; l < c->n_layers; l++) {
        int64_t w = s->written[l] < b ? s->written[l] : b;
        d->written[l] = w > a ? w - a : 0;
    }
    mla_free(d->e);
    n.written = d->written;
    *d = n;
    return MLA_OK;
}

MLA_API mla_status mla_cache_seq_fork(mla_cache *c, int32_t src, int32_t dst)
{
    return mla_cache_seq_cp(c, src, dst, -1, -1);
}

MLA_API mla_status mla_cache_seq_keep(mla_cache *c, int32_t seq)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_seq_keep");
    if (st != MLA_OK)
        return st;
    for (int32_t q = 0; q < c->n_seq_max; q++)
        if (q != seq) {
            mla__cache_seq_drop(c, &c->seqs[q]);
            mla__cache_seq_written_all(c, &c->seqs[q], 0);
        }
    return MLA_OK;
}

MLA_API mla_status mla_cache_clear(mla_cache *c)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_clear: cache is NULL");
    for (int32_t q = 0; q < c->n_seq_max; q++) {
        c->seqs[q].n_e = 0;
        c->seqs[q].n_tokens = 0;
        mla__cache_seq_written_all(c, &c->seqs[q], 0);
    }
    mla__cache_blocks_reset(c);
    return MLA_OK;
}

MLA_API mla_status mla_cache_seq_pos_min(const mla_cache *c, int32_t seq, int64_t *pos)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_seq_pos_min");
    if (st != MLA_OK)
        return st;
    if (!pos)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_seq_pos_min: pos is NULL");
    const mla_cache_seq *s = &c->seqs[seq];
    *pos = s->n_e ? mla__cache_entry_pos(c, &s->e[0], 0) : -1;
    return MLA_OK;
}

MLA_API mla_status mla_cache_seq_pos_max(const mla_cache *c, int32_t seq, int64_t *pos)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_seq_pos_max");
    if (st != MLA_OK)
        return st;
    if (!pos)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_seq_pos_max: pos is NULL");
    *pos = last_pos(c, &c->seqs[seq]);
    return MLA_OK;
}

MLA_API mla_status mla_cache_seq_written(const mla_cache *c, int32_t layer, int32_t seq,
                                         int64_t *n_tokens)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_seq_written");
    if (st != MLA_OK)
        return st;
    if (layer < 0 || layer >= c->n_layers)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "mla_cache_seq_written: layer %d out of range (%d)", (int)layer,
                        (int)c->n_layers);
    if (!n_tokens)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_seq_written: n_tokens is NULL");
    *n_tokens = c->seqs[seq].written[layer];
    return MLA_OK;
}

MLA_API mla_status mla_cache_seq_length(const mla_cache *c, int32_t seq, int64_t *n_tokens)
{
    mla_status st = mla__cache_check_seq(c, seq, "mla_cache_seq_length");
    if (st != MLA_OK)
        return st;
    if (!n_tokens)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_seq_length: n_tokens is NULL");
    *n_tokens = c->seqs[seq].n_tokens;
    return MLA_OK;
}

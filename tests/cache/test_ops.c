/*
 * Property: thousands of random cache operations (write, reserve, rm, cp, keep, shift, clear,
 * save/load) agree with a plain reference model kept here (arrays of tokens per sequence), in
 * contents (mla_cache_seq_read and the span reader), positions, accounting and each layer's
 * written prefix (tokens flagged when a write starts at or inside it), after every
 * operation, including the ones that fail (CAPACITY, INVALID_ARGUMENT, NUMERICAL must change
 * nothing). Small blocks (4 tokens) and a small pool make block boundaries, copy-on-write and
 * capacity exhaustion frequent.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "cache/internal.h"
#include "../tap.h"

#define NL 2
#define NSEQ 4
#define BT 4
#define CAP 40
#define MAXTOK 64
#define MAXW 8
#define N_OPS 20000

static const int LD[NL] = {8, 6};   /* latent_dim */
static const int RH[NL] = {2, 1};   /* rope_heads */
static const int RD[NL] = {4, 2};   /* rope_dim */
static const float FREQ0[4] = {1.0f, 0.1f, 0.5f, 0.05f};
static const float FREQ1[1] = {0.3f};
static const double PSCALE[NL] = {1.0, 0.5};

typedef struct tok {
    int64_t pos;
    float lat[NL][MAXW];
    float rope[NL][MAXW];
    unsigned char wr[NL]; /* in the layer's written prefix */
} tok;

typedef struct mseq {
    int n;
    tok t[MAXTOK];
} mseq;

typedef struct model {
    mseq s[NSEQ];
} model;

static unsigned long long rng = 0x2545f4914f6cdd1dULL;

static int rnd(int n)
{
    return (int)((tap_rand(&rng) + 1.0) * 0.5 * n) % n;
}

static int rw(int l)
{
    return RH[l] * RD[l];
}

static int64_t last_pos(const mseq *s)
{
    return s->n ? s->t[s->n - 1].pos : -1;
}

static int lower(const mseq *s, int64_t pos)
{
    int i = 0;
    while (i < s->n && s->t[i].pos < pos)
        i++;
    return i;
}

static void range(const mseq *s, int64_t p0, int64_t p1, int *a, int *b)
{
    *a = p0 < 0 ? 0 : lower(s, p0);
    *b = p1 < 0 ? s->n : lower(s, p1);
    if (*b < *a)
        *b = *a;
}

/* Leading tokens of s flagged as written in layer l. */
static int run(const mseq *s, int l)
{
    int i = 0;
    while (i < s->n && s->t[i].wr[l])
        i++;
    return i;
}

static void fill(float *x, int n)
{
    for (int i = 0; i < n; i++)
        x[i] = (float)tap_rand(&rng);
}

/* Append n zero tokens at pos, pos+1, …; 0 if the model sequence is full (test limit). */
static void append(mseq *s, int64_t pos, int n)
{
    for (int j = 0; j < n; j++) {
        memset(&s->t[s->n], 0, sizeof s->t[s->n]);
        s->t[s->n++].pos = pos + j;
    }
}

static void rotate(float *x, int l, int64_t delta)
{
    const float *f = l == 0 ? FREQ0 : FREQ1;
    int half = RD[l] / 2;
    for (int k = 0; k < RH[l]; k++)
        for (int j = 0; j < half; j++) {
            double a = (double)delta * PSCALE[l] * (double)f[k * half + j];
            double c = cos(a), s = sin(a);
            double u = x[k * RD[l] + j], v = x[k * RD[l] + j + half];
            x[k * RD[l] + j] = (float)(u * c - v * s);
            x[k * RD[l] + j + half] = (float)(v * c + u * s);
        }
}

/* ---- comparison -------------------------------------------------------------------------- */

static char why[512];

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

/* The cache holds exactly the model: contents, positions, lengths, and the accounting. */
static int agrees(const mla_cache *c, const model *m)
{
    static float lat[MAXTOK * MAXW], rope[MAXTOK * MAXW];
    static int64_t pos[MAXTOK];
    static const void *slots[NSEQ * MAXTOK];
    int n_slots = 0;
    int32_t blocks_seen[CAP];
    memset(blocks_seen, 0, sizeof blocks_seen);
    if (mla__cache_check(c) != 0) {
        snprintf(why, sizeof why, "invariants: %s", mla_last_error());
        return 0;
    }
    for (int q = 0; q < NSEQ; q++) {
        const mseq *s = &m->s[q];
        int64_t len, pmin, pmax;
        mla_cache_seq_length(c, q, &len);
        mla_cache_seq_pos_min(c, q, &pmin);
        mla_cache_seq_pos_max(c, q, &pmax);
        if (len != s->n || pmin != (s->n ? s->t[0].pos : -1) || pmax != last_pos(s)) {
            snprintf(why, sizeof why, "seq %d: length %lld pos %lld..%lld, model %d tokens", q,
                     (long long)len, (long long)pmin, (long long)pmax, s->n);
            return 0;
        }
        for (int l = 0; l < NL; l++) {
            int64_t w = -1;
            if (mla_cache_seq_written(c, l, q, &w) != MLA_OK || w != run(s, l)) {
                snprintf(why, sizeof why, "seq %d layer %d: %lld tokens written, model %d", q, l,
                         (long long)w, run(s, l));
                return 0;
            }
            if (mla_cache_seq_read(c, l, q, 0, s->n, lat, rope, pos) != MLA_OK) {
                snprintf(why, sizeof why, "seq_read: %s", mla_last_error());
                return 0;
            }
            for (int t = 0; t < s->n; t++) {
                if (pos[t] != s->t[t].pos ||
                    memcmp(&lat[t * LD[l]], s->t[t].lat[l], sizeof(float) * LD[l]) != 0) {
                    snprintf(why, sizeof why, "seq %d layer %d token %d: pos %lld (model %lld) "
                             "or latent differs", q, l, t, (long long)pos[t],
                             (long long)s->t[t].pos);
                    return 0;
                }
                for (int i = 0; i < rw(l); i++)
                    if (fabsf(rope[t * rw(l) + i] - s->t[t].rope[l][i]) > 1e-5f) {
                        snprintf(why, sizeof why, "seq %d layer %d token %d rope[%d] %g, model "
                                 "%g", q, l, t, i, rope[t * rw(l) + i], s->t[t].rope[l][i]);
                        return 0;
                    }
            }
            /* the span reader sees the same tokens in the same order */
            mla_cache_layer_format fmt;
            int64_t n_spans, t = 0;
            mla__cache_layer_format(c, l, &fmt);
            mla__cache_seq_span_count(c, q, &n_spans);
            for (int64_t i = 0; i < n_spans; i++) {
                mla_cache_span sp;
                float sl[BT * MAXW], sr[BT * MAXW];
                mla__cache_seq_span(c, l, q, i, &sp);
                if (sp.n_tokens < 1 || t + sp.n_tokens > s->n) {
                    snprintf(why, sizeof why, "seq %d span %lld has %lld tokens", q,
                             (long long)i, (long long)sp.n_tokens);
                    return 0;
                }
                mla__cache_span_to_f32(&fmt, &sp, 0, sp.n_tokens, sl, sr);
                for (int64_t k = 0; k < sp.n_tokens; k++, t++) {
                    if (sp.pos[k] != s->t[t].pos ||
                        memcmp(&sl[k * LD[l]], s->t[t].lat[l], sizeof(float) * LD[l]) != 0 ||
                        memcmp(&sr[k * rw(l)], &rope[t * rw(l)], sizeof(float) * rw(l)) != 0) {
                        snprintf(why, sizeof why, "seq %d layer %d: span token %lld differs", q,
                                 l, (long long)t);
                        return 0;
                    }
                    if (l == 0)
                        slots[n_slots++] = &sp.pos[k];
                }
            }
            if (t != s->n) {
                snprintf(why, sizeof why, "seq %d: spans hold %lld tokens", q, (long long)t);
                return 0;
            }
        }
        for (int64_t i = 0; i < c->seqs[q].n_e; i++)
            blocks_seen[c->seqs[q].e[i].block] = 1;
    }
    /* accounting: distinct slots and distinct blocks referenced */
    qsort(slots, (size_t)n_slots, sizeof *slots, cmp_ptr);
    int distinct = n_slots > 0;
    for (int i = 1; i < n_slots; i++)
        distinct += slots[i] != slots[i - 1];
    int blocks_used = 0;
    for (int b = 0; b < CAP / BT; b++)
        blocks_used += blocks_seen[b];
    mla_cache_stats st;
    mla_cache_get_stats(c, &st, sizeof st);
    if (st.tokens_used != distinct || st.blocks_free != st.blocks_total - blocks_used ||
        st.bytes_used != blocks_used * st.block_bytes || st.blocks_total != CAP / BT) {
        snprintf(why, sizeof why, "stats: tokens_used %lld (distinct slots %d), blocks_free %lld "
                 "(expected %lld)", (long long)st.tokens_used, distinct,
                 (long long)st.blocks_free, (long long)(st.blocks_total - blocks_used));
        return 0;
    }
    return 1;
}

/* ---- the operations ---------------------------------------------------------------------- */

enum { OP_WRITE, OP_RESERVE, OP_RM, OP_CP, OP_KEEP, OP_SHIFT, OP_SAVE, OP_LOAD, OP_CLEAR,
       OP_NAN, OP_COUNT };
static const char *op_names[OP_COUNT] = {"write", "reserve", "rm", "cp", "keep", "shift", "save",
                                         "load", "clear", "nan-write"};
static int n_ok[OP_COUNT], n_capacity[OP_COUNT], n_invalid[OP_COUNT];

static int pick_op(void)
{
    int r = rnd(100);
    if (r < 36) return OP_WRITE;
    if (r < 44) return OP_RESERVE;
    if (r < 56) return OP_RM;
    if (r < 66) return OP_CP;
    if (r < 68) return OP_KEEP;
    if (r < 79) return OP_SHIFT;
    if (r < 86) return OP_SAVE;
    if (r < 96) return OP_LOAD;
    if (r < 97) return OP_CLEAR;
    return OP_NAN;
}

/* Snapshot kept for OP_LOAD. */
static unsigned char *snap;
static size_t snap_size;
static int snap_seq = -2; /* −1 whole cache, ≥ 0 one sequence, −2 none */
static model snap_model;

static int total_tokens(const model *m)
{
    int n = 0;
    for (int q = 0; q < NSEQ; q++)
        n += m->s[q].n;
    return n;
}

/* Returns the status; *expect: 0 invalid, 1 must succeed, 2 may succeed or hit CAPACITY. */
static mla_status do_op(mla_cache *c, model *m, int op, int *expect)
{
    static float lat[MAXTOK * MAXW], rope[MAXTOK * MAXW];
    int q = rnd(NSEQ);
    mseq *s = &m->s[q];
    int64_t last = last_pos(s);
    mla_cache_stats st;
    mla_cache_get_stats(c, &st, sizeof st);
    switch (op) {
    case OP_WRITE:
    case OP_NAN: {
        int l = rnd(NL), n = 1 + rnd(6);
        int64_t pos;
        int mode = s->n ? rnd(3) : 0;
        if (mode == 0)
            pos = last + 1 + (rnd(3) == 0 ? rnd(3) : 0);
        else if (mode == 1)
            pos = s->t[rnd(s->n)].pos;
        else
            pos = s->t[0].pos + rnd((int)(last - s->t[0].pos + 3)); /* may hit a gap */
        if (s->n + n > MAXTOK - 8)
            n = 1;
        fill(lat, n * LD[l]);
        fill(rope, n * rw(l));
        if (op == OP_NAN)
            lat[rnd(n * LD[l])] = rnd(2) ? NAN : INFINITY;
        /* the model's verdict */
        int i = lower(s, pos), k = 0, valid = s->n == 0 || pos <= last + 1;
        if (pos <= last) {
            k = (int)(last - pos + 1 < n ? last - pos + 1 : n);
            valid = i < s->n && s->t[i].pos == pos && i + k - 1 < s->n &&
                    s->t[i + k - 1].pos == pos + k - 1;
        }
        *expect = op == OP_NAN ? 3 : !valid ? 0 : 2;
        mla_status r = mla_cache_write(c, l, q, pos, n, lat, rope);
        /* capacity can fail only if the free blocks could not cover new tokens and copies */
        if (r == MLA_ERR_CAPACITY && st.blocks_free >= (n + BT - 1) / BT + 2 + k)
            *expect = 1;
        if (r == MLA_OK && op == OP_WRITE && valid) {
            int extends = i <= run(s, l);
            append(s, pos + k, n - k);
            for (int t = 0; t < n; t++) {
                memcpy(s->t[i + t].lat[l], &lat[t * LD[l]], sizeof(float) * LD[l]);
                memcpy(s->t[i + t].rope[l], &rope[t * rw(l)], sizeof(float) * rw(l));
                if (extends)
                    s->t[i + t].wr[l] = 1;
            }
        }
        return r;
    }
    case OP_RESERVE: {
        int n = 1 + rnd(5);
        int64_t pos = last + 1 + rnd(3) - (s->n && rnd(5) == 0 ? 2 : 0);
        if (s->n + n > MAXTOK - 8)
            n = 1;
        *expect = pos > last && pos >= 0 ? 2 : 0;
        mla_status r = mla_cache_reserve(c, q, pos, n);
        if (r == MLA_ERR_CAPACITY && st.blocks_free >= (n + BT - 1) / BT + 1)
            *expect = 1;
        if (r == MLA_OK)
            append(s, pos, n);
        return r;
    }
    case OP_RM: {
        int all = rnd(10) == 0;
        int64_t p0 = rnd(8) == 0 ? -1 : rnd((int)last + 3);
        int64_t p1 = rnd(8) == 0 ? -1 : p0 + rnd(8);
        *expect = 1;
        mla_status r = mla_cache_seq_rm(c, all ? -1 : q, p0, p1);
        for (int qq = all ? 0 : q; r == MLA_OK && qq < (all ? NSEQ : q + 1); qq++) {
            mseq *x = &m->s[qq];
            int a, b;
            range(x, p0, p1, &a, &b);
            memmove(&x->t[a], &x->t[b], sizeof(tok) * (size_t)(x->n - b));
            x->n -= b - a;
        }
        return r;
    }
    case OP_CP: {
        int src = rnd(NSEQ);
        mseq *x = &m->s[src];
        int64_t xl = last_pos(x);
        int64_t p0 = rnd(3) == 0 ? -1 : rnd((int)xl + 3);
        int64_t p1 = rnd(3) == 0 ? -1 : p0 + rnd(12);
        *expect = 1;
        mla_status r = mla_cache_seq_cp(c, src, q, p0, p1);
        if (r == MLA_OK) {
            int a, b;
            range(x, p0, p1, &a, &b);
            memmove(&s->t[0], &x->t[a], sizeof(tok) * (size_t)(b - a));
            s->n = b - a;
        }
        return r;
    }
    case OP_KEEP: {
        *expect = 1;
        mla_status r = mla_cache_seq_keep(c, q);
        for (int qq = 0; r == MLA_OK && qq < NSEQ; qq++)
            if (qq != q)
                m->s[qq].n = 0;
        return r;
    }
    case OP_SHIFT: {
        int64_t p0 = rnd(4) == 0 ? -1 : rnd((int)last + 3);
        int64_t p1 = rnd(4) == 0 ? -1 : p0 + rnd(10);
        int64_t delta = rnd(13) - 6;
        int a, b;
        range(s, p0, p1, &a, &b);
        int valid = 1;
        if (a < b && delta != 0)
            valid = s->t[a].pos + delta >= 0 && (a == 0 || s->t[a - 1].pos < s->t[a].pos + delta) &&
                    (b == s->n || s->t[b - 1].pos + delta < s->t[b].pos);
        *expect = valid ? 2 : 0;
        mla_status r = mla_cache_seq_shift(c, q, p0, p1, delta);
        if (r == MLA_ERR_CAPACITY && st.blocks_free >= b - a)
            *expect = 1;
        if (r == MLA_OK && delta != 0)
            for (int t = a; t < b; t++) {
                s->t[t].pos += delta;
                for (int l = 0; l < NL; l++)
                    rotate(s->t[t].rope[l], l, delta);
            }
        return r;
    }
    case OP_SAVE: {
        int which = rnd(3) == 0 ? -1 : q;
        size_t size = 0, wrote = 0;
        *expect = 1;
        mla_status r = mla_cache_save_size(c, which, &size);
        if (r != MLA_OK)
            return r;
        free(snap);
        snap = malloc(size);
        r = mla_cache_save(c, which, snap, size, &wrote);
        if (r == MLA_OK && wrote != size)
            return MLA_ERR_INTERNAL;
        snap_size = size;
        snap_seq = which;
        snap_model = *m;
        return r;
    }
    case OP_LOAD: {
        if (snap_seq == -2) {
            *expect = 1;
            return MLA_OK;
        }
        /* a whole-cache snapshot of this cache always fits; one sequence may not */
        *expect = snap_seq < 0 ? 1 : 2;
        mla_status r = mla_cache_load(c, q, snap, snap_size);
        if (r == MLA_OK && snap_seq < 0)
            *m = snap_model;
        else if (r == MLA_OK)
            *s = snap_model.s[snap_seq];
        return r; /* the snapshot carried each layer's written prefix (format version 2) */
    }
    case OP_CLEAR:
        *expect = 1;
        for (int qq = 0; qq < NSEQ; qq++)
            m->s[qq].n = 0;
        return mla_cache_clear(c);
    }
    return MLA_ERR_INTERNAL;
}

/* mla__cache_check is the oracle of the test above (agrees() calls it after every operation):
 * each kind of corruption it looks for, made by hand, must be reported, and undone, not. */
static int caught(const mla_cache *c, const char *needle)
{
    return mla__cache_check(c) != 0 && strstr(mla_last_error(), needle) != NULL;
}

static void checker_catches(const mla_cache_params *p)
{
    mla_cache *c = NULL;
    CHECK(mla_cache_create(p, &c) == MLA_OK, "create: %s", mla_last_error());
    /* Sequence 0: 6 tokens over 2 blocks; 1 shares them; 2 owns a block of its own. */
    CHECK(mla_cache_reserve(c, 0, 0, 6) == MLA_OK && mla_cache_seq_fork(c, 0, 1) == MLA_OK &&
          mla_cache_reserve(c, 2, 10, 3) == MLA_OK && mla__cache_check(c) == 0,
          "a consistent cache passes the check");
    mla_cache_seq *s = &c->seqs[0];
    int32_t b = s->e[0].block;

    c->rc[b]++;
    CHECK(caught(c, "references"), "a block's reference count off by one (%s)",
          mla_last_error());
    c->rc[b]--;
    s->n_tokens++;
    CHECK(caught(c, "tokens in its entries"), "a sequence's token count off by one (%s)",
          mla_last_error());
    s->n_tokens--;
    int64_t w1 = s->written[1];
    s->written[1] = s->n_tokens + 1;
    CHECK(caught(c, "written of"), "a layer written past the sequence's end (%s)",
          mla_last_error());
    s->written[1] = w1;
    int32_t n0 = s->e[0].n;
    s->e[0].n = c->block_tokens + 1;
    CHECK(caught(c, "slots"), "an entry longer than its block (%s)", mla_last_error());
    s->e[0].n = n0;
    int64_t *pos = mla__cache_block_pos(c, b) + s->e[0].off;
    int64_t p1 = pos[1];
    pos[1] = pos[0];
    CHECK(caught(c, "position"), "a repeated position (%s)", mla_last_error());
    pos[1] = p1;
    CHECK(c->n_free > 0, "the cache has free blocks");
    int32_t f0 = c->free_stack[0];
    c->free_stack[0] = b;
    CHECK(caught(c, "free list holds block"), "a used block on the free list (%s)",
          mla_last_error());
    c->free_stack[0] = f0;
    c->n_free--;
    CHECK(caught(c, "unreferenced blocks"), "a free block missing from the free list (%s)",
          mla_last_error());
    c->n_free++;
    CHECK(mla__cache_check(c) == 0, "every corruption undone, the check passes again");
    mla_cache_destroy(c);
}

int main(void)
{
    mla_cache_layer_desc layers[NL];
    for (int l = 0; l < NL; l++) {
        mla_cache_layer_desc_default_params(&layers[l], sizeof layers[l]);
        layers[l].latent_dim = LD[l];
        layers[l].rope_heads = RH[l];
        layers[l].rope_dim = RD[l];
        layers[l].rope_freqs = l == 0 ? FREQ0 : FREQ1;
        layers[l].rope_position_scale = PSCALE[l];
        layers[l].mha_kv_dim = 16;
    }
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = NL;
    p.layers = layers;
    p.latent_dtype = MLA_DTYPE_F32;
    p.rope_dtype = MLA_DTYPE_F32;
    p.block_tokens = BT;
    p.capacity_tokens = CAP;
    p.n_seq_max = NSEQ;
    checker_catches(&p);
    mla_cache *c = NULL;
    mla_status cs = mla_cache_create(&p, &c);
    CHECK(cs == MLA_OK, "create: %s", cs ? mla_last_error() : "ok");
    static model m;
    int failed_at = -1, max_tokens = 0, shared_seen = 0;
    for (int i = 0; i < N_OPS && failed_at < 0; i++) {
        int op = pick_op(), expect = 1;
        mla_status r = do_op(c, &m, op, &expect);
        int ok = expect == 0 ? r == MLA_ERR_INVALID_ARGUMENT
               : expect == 1 ? r == MLA_OK
               : expect == 2 ? r == MLA_OK || r == MLA_ERR_CAPACITY
                             : r == MLA_ERR_NUMERICAL;
        if (r == MLA_OK)
            n_ok[op]++;
        else if (r == MLA_ERR_CAPACITY)
            n_capacity[op]++;
        else if (r == MLA_ERR_INVALID_ARGUMENT)
            n_invalid[op]++;
        if (!ok) {
            snprintf(why, sizeof why, "status %s (expected class %d): %s", mla_status_string(r),
                     expect, mla_last_error());
            failed_at = i;
        } else if (!agrees(c, &m)) {
            failed_at = i;
        }
        if (failed_at >= 0)
            printf("# op %d (%s) went wrong: %s\n", i, op_names[op], why);
        if (total_tokens(&m) > max_tokens)
            max_tokens = total_tokens(&m);
        mla_cache_stats st;
        mla_cache_get_stats(c, &st, sizeof st);
        if (st.tokens_used < total_tokens(&m))
            shared_seen++;
    }
    CHECK(failed_at < 0, "%d random operations agree with the reference model after each one",
          N_OPS);
    for (int op = 0; op < OP_COUNT; op++)
        printf("# %-9s ok %4d  capacity %3d  invalid %3d\n", op_names[op], n_ok[op],
               n_capacity[op], n_invalid[op]);
    CHECK(n_capacity[OP_WRITE] + n_capacity[OP_RESERVE] > 0 && n_ok[OP_WRITE] > 500,
          "capacity exhaustion and successful writes both exercised");
    CHECK(n_invalid[OP_WRITE] > 0 && n_invalid[OP_SHIFT] > 0 && n_ok[OP_SHIFT] > 50,
          "invalid writes and shifts exercised");
    CHECK(n_ok[OP_LOAD] > 50 && n_ok[OP_CP] > 50, "loads and copies exercised");
    CHECK(shared_seen > 100, "sequences shared slots after %d operations (max %d tokens held)",
          shared_seen, max_tokens);
    mla_cache_destroy(c);
    free(snap);
    return tap_done();
}

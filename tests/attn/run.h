/* Driving mla_attn_forward over several sequences: one mixed prefill batch, then decode steps. */
#ifndef MLA_TESTS_ATTN_RUN_H
#define MLA_TESTS_ATTN_RUN_H

#include "util.h"

typedef struct seqdata {
    int id;          /* cache sequence id */
    int n;           /* tokens */
    int prefill;     /* tokens of the first (mixed) batch; the rest are decoded one by one */
    float *x;        /* n × d */
    int64_t *pos;    /* n */
    float *out;      /* n × d */
    double *ref;     /* n × d */
} seqdata;

static inline void seq_init(seqdata *s, int id, int n, int prefill, int d, int64_t pos0,
                            unsigned long long seed)
{
    s->id = id;
    s->n = n;
    s->prefill = prefill;
    s->x = rand_floats((size_t)n * d, &seed, 1.0);
    s->pos = malloc((size_t)n * sizeof *s->pos);
    for (int i = 0; i < n; i++)
        s->pos[i] = pos0 + i;
    s->out = calloc((size_t)n * d, sizeof *s->out);
    s->ref = calloc((size_t)n * d, sizeof *s->ref);
}

static inline void seq_free(seqdata *s)
{
    free(s->x);
    free(s->pos);
    free(s->out);
    free(s->ref);
}

/* Tokens [from, to) of each sequence (clamped to its length) in one forward call: interleaved
 * round-robin, or (grouped) each sequence's after the previous one's. Returns the status. */
static inline mla_status run_range_in(mla_attn *a, const mla_layer *l, mla_cache *c, int cl,
                                      seqdata *s, int ns, int d, const int *from, const int *to,
                                      int grouped)
{
    int total = 0;
    for (int i = 0; i < ns; i++) {
        int e = to[i] < s[i].n ? to[i] : s[i].n;
        total += e > from[i] ? e - from[i] : 0;
    }
    if (total <= 0)
        return MLA_OK;
    float *x = malloc((size_t)total * d * sizeof *x), *o = malloc((size_t)total * d * sizeof *o);
    int32_t *sq = malloc((size_t)total * sizeof *sq);
    int64_t *ps = malloc((size_t)total * sizeof *ps);
    int *who = malloc((size_t)total * sizeof *who), *tix = malloc((size_t)total * sizeof *tix);
    int k = 0;
    for (int step = 0; k < total; step++)
        for (int i = 0; i < ns; i++) {
            int e = to[i] < s[i].n ? to[i] : s[i].n;
            for (int t = from[i] + step; t < e; t++) {
                memcpy(x + (size_t)k * d, s[i].x + (size_t)t * d, (size_t)d * sizeof *x);
                sq[k] = s[i].id;
                ps[k] = s[i].pos[t];
                who[k] = i;
                tix[k] = t;
                k++;
                if (!grouped)
                    break; /* one token of each sequence a round */
            }
        }
    mla_status st = mla_attn_forward(a, l, c, cl, x, total, sq, ps, o);
    if (st == MLA_OK)
        for (k = 0; k < total; k++)
            memcpy(s[who[k]].out + (size_t)tix[k] * d, o + (size_t)k * d, (size_t)d * sizeof *o);
    free(x);
    free(o);
    free(sq);
    free(ps);
    free(who);
    free(tix);
    return st;
}

static inline mla_status run_range(mla_attn *a, const mla_layer *l, mla_cache *c, int cl,
                                   seqdata *s, int ns, int d, const int *from, const int *to)
{
    return run_range_in(a, l, c, cl, s, ns, d, from, to, 0);
}

/* The mixed prefill batch, then one decode batch per remaining token. */
static inline mla_status run_seqs(mla_attn *a, const mla_layer *l, mla_cache *c, int cl,
                                  seqdata *s, int ns, int d)
{
    int from[16], to[16], maxn = 0;
    for (int i = 0; i < ns; i++) {
        from[i] = 0;
        to[i] = s[i].prefill;
        if (s[i].n > maxn)
            maxn = s[i].n;
    }
    mla_status st = run_range(a, l, c, cl, s, ns, d, from, to);
    for (int step = 0; st == MLA_OK && step < maxn; step++) {
        int any = 0;
        for (int i = 0; i < ns; i++) {
            from[i] = s[i].prefill + step;
            to[i] = from[i] + 1;
            any |= from[i] < s[i].n;
        }
        if (!any)
            break;
        st = run_range(a, l, c, cl, s, ns, d, from, to);
    }
    return st;
}

static inline double seqs_diff(const seqdata *s, int ns, int d)
{
    double worst = 0;
    for (int i = 0; i < ns; i++) {
        double e = rel_diff_d(s[i].out, s[i].ref, (size_t)s[i].n * d);
        if (e > worst || e != e)
            worst = e;
    }
    return worst;
}

#endif /* MLA_TESTS_ATTN_RUN_H */

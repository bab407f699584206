/* A full check of the cache's invariants, for tests and debugging (O(blocks + entries)). */
#include "cache/internal.h"

int mla__cache_check(const mla_cache *c)
{
    int32_t *refs = mla_calloc((size_t)c->n_blocks, sizeof *refs);
    if (!refs) {
        mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache check");
        return -1;
    }
    int bad = 0;
    for (int32_t q = 0; q < c->n_seq_max && !bad; q++) {
        const mla_cache_seq *s = &c->seqs[q];
        int64_t tokens = 0, prev = -1;
        for (int64_t i = 0; i < s->n_e && !bad; i++) {
            const mla_cache_entry *e = &s->e[i];
            if (e->block < 0 || e->block >= c->n_blocks || e->n < 1 || e->off < 0 ||
                e->off + e->n > c->block_tokens) {
                mla_fail(MLA_ERR_INTERNAL, "cache check: sequence %d entry %lld: block %d, "
                         "slots %d + %d", (int)q, (long long)i, (int)e->block, (int)e->off,
                         (int)e->n);
                bad = 1;
                break;
            }
            refs[e->block]++;
            for (int32_t t = 0; t < e->n; t++) {
                int64_t p = mla__cache_entry_pos(c, e, t);
                if (p <= prev) {
                    mla_fail(MLA_ERR_INTERNAL, "cache check: sequence %d: position %lld after "
                             "%lld", (int)q, (long long)p, (long long)prev);
                    bad = 1;
                    break;
                }
                prev = p;
            }
            tokens += e->n;
        }
        if (!bad && tokens != s->n_tokens) {
            mla_fail(MLA_ERR_INTERNAL, "cache check: sequence %d has %lld tokens in its entries, "
                     "counts %lld", (int)q, (long long)tokens, (long long)s->n_tokens);
            bad = 1;
        }
        for (int32_t l = 0; l < c->n_layers && !bad; l++)
            if (s->written[l] < 0 || s->written[l] > s->n_tokens) {
                mla_fail(MLA_ERR_INTERNAL, "cache check: sequence %d, layer %d: %lld tokens "
                         "written of %lld", (int)q, (int)l, (long long)s->written[l],
                         (long long)s->n_tokens);
                bad = 1;
            }
    }
    int32_t n_zero = 0;
    for (int32_t b = 0; b < c->n_blocks && !bad; b++) {
        if (refs[b] != c->rc[b]) {
            mla_fail(MLA_ERR_INTERNAL, "cache check: block %d has %d references, counts %d",
                     (int)b, (int)refs[b], (int)c->rc[b]);
            bad = 1;
        }
        n_zero += refs[b] == 0;
    }
    if (!bad && n_zero != c->n_free) {
        mla_fail(MLA_ERR_INTERNAL, "cache check: %d unreferenced blocks, %d on the free list",
                 (int)n_zero, (int)c->n_free);
        bad = 1;
    }
    for (int32_t i = 0; i < c->n_free && !bad; i++) {
        int32_t b = c->free_stack[i];
        if (b < 0 || b >= c->n_blocks || refs[b] != 0) {
            mla_fail(MLA_ERR_INTERNAL, "cache check: free list holds block %d", (int)b);
            bad = 1;
        } else {
            refs[b] = -1; /* a second appearance is caught by refs[b] != 0 */
        }
    }
    mla_free(refs);
    return bad ? -1 : 0;
}

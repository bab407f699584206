/* The block pool: allocation and reference counts (under the cache's mutex, since writers of
 * distinct sequences allocate concurrently), and whole-slot copies. */
#include <string.h>

#include "cache/internal.h"

void mla__cache_blocks_reset(mla_cache *c)
{
    /* Highest id at the bottom of the stack so blocks are handed out from 0 upwards. */
    for (int32_t i = 0; i < c->n_blocks; i++) {
        c->free_stack[i] = c->n_blocks - 1 - i;
        c->rc[i] = 0;
    }
    c->n_free = c->n_blocks;
}

int mla__cache_blocks_take(mla_cache *c, int64_t n, int32_t *out)
{
    int ok = 0;
    pthread_mutex_lock(&c->lock);
    if (n <= c->n_free) {
        for (int64_t i = 0; i < n; i++) {
            int32_t b = c->free_stack[--c->n_free];
            c->rc[b] = 1;
            out[i] = b;
        }
        ok = 1;
    }
    pthread_mutex_unlock(&c->lock);
    return ok ? 0 : -1;
}

void mla__cache_blocks_give(mla_cache *c, int64_t n, const int32_t *blocks)
{
    for (int64_t i = 0; i < n; i++)
        if (blocks[i] >= 0)
            mla__cache_block_unref(c, blocks[i]);
}

void mla__cache_block_ref(mla_cache *c, int32_t b)
{
    pthread_mutex_lock(&c->lock);
    c->rc[b]++;
    pthread_mutex_unlock(&c->lock);
}

void mla__cache_block_unref(mla_cache *c, int32_t b)
{
    pthread_mutex_lock(&c->lock);
    if (--c->rc[b] == 0)
        c->free_stack[c->n_free++] = b;
    pthread_mutex_unlock(&c->lock);
}

int32_t mla__cache_block_refs(const mla_cache *c, int32_t b)
{
    mla_cache *m = (mla_cache *)c; /* the mutex is not part of the cache's logical state */
    pthread_mutex_lock(&m->lock);
    int32_t r = c->rc[b];
    pthread_mutex_unlock(&m->lock);
    return r;
}

int32_t mla__cache_blocks_free(const mla_cache *c)
{
    mla_cache *m = (mla_cache *)c;
    pthread_mutex_lock(&m->lock);
    int32_t r = c->n_free;
    pthread_mutex_unlock(&m->lock);
    return r;
}

void mla__cache_slots_zero(mla_cache *c, int32_t b, int32_t slot, int32_t n)
{
    unsigned char *base = mla__cache_block(c, b);
    memset(base + (size_t)slot * sizeof(int64_t), 0, (size_t)n * sizeof(int64_t));
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer *L = &c->layers[l];
        memset(base + L->latent_off + (size_t)slot * L->latent_row_bytes, 0,
               (size_t)n * L->latent_row_bytes);
        memset(base + L->scale_off + (size_t)slot * L->scale_row_bytes, 0,
               (size_t)n * L->scale_row_bytes);
        memset(base + L->rope_off + (size_t)slot * L->rope_row_bytes, 0,
               (size_t)n * L->rope_row_bytes);
    }
}

void mla__cache_slots_copy(mla_cache *c, int32_t dst, int32_t dst_slot, int32_t src,
                           int32_t src_slot, int32_t n)
{
    unsigned char *d = mla__cache_block(c, dst), *s = mla__cache_block(c, src);
    /* memmove: compaction inside one block overlaps */
    memmove(d + (size_t)dst_slot * sizeof(int64_t), s + (size_t)src_slot * sizeof(int64_t),
            (size_t)n * sizeof(int64_t));
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer *L = &c->layers[l];
        size_t offs[3] = {L->latent_off, L->scale_off, L->rope_off};
        size_t rows[3] = {L->latent_row_bytes, L->scale_row_bytes, L->rope_row_bytes};
        for (int k = 0; k < 3; k++)
            memmove(d + offs[k] + (size_t)dst_slot * rows[k],
                    s + offs[k] + (size_t)src_slot * rows[k], (size_t)n * rows[k]);
    }
}

/*
 * The absorbed path: W_uk folded into the queries, scores taken against the cached latents
 * directly, the probability-weighted latent sum accumulated (its up-projection by W_uv and W_o
 * happens once per query, in forward.c). All heads of the block read the same latent row, so the
 * block's m·n_h query rows are the wide dimension of both products.
 */
#include <string.h>

#include "attn/internal.h"

/* nvis[t]: tokens of the tile (positions ascending) at or before query position p0 + t. */
static void visible_counts(const mla__tile *tile, int64_t p0, int64_t t_from, int64_t m,
                           int64_t *nvis)
{
    int64_t v = 0;
    for (int64_t t = t_from; t < m; t++) {
        while (v < tile->n && tile->pos[v] <= p0 + t)
            v++;
        nvis[t] = v;
    }
}

void mla__absorbed_job(const mla__ctx *c, const mla__job *job, mla__work *w)
{
    const mla__qblock *b = &c->blocks[job->block];
    const mla__attn_kernels *k = c->k;
    int64_t rows = b->m * c->n_h;
    int64_t col0 = b->t0 * c->n_h;
    int64_t L = c->fmt->latent_dim, W = c->fmt->rope_width;
    float *st = w->s; /* tile × rows: scores of every query row side by side */
    for (int64_t first = job->c0; first < job->c1; first += c->tile_tokens) {
        int64_t n = job->c1 - first < c->tile_tokens ? job->c1 - first : c->tile_tokens;
        mla__tile_fill(c->fmt, b->view, first, n, &w->tile);
        visible_counts(&w->tile, b->p0, 0, b->m, w->nvis);
        if (c->nope > 0)
            k->gemm_bc(n, rows, c->lat_k, w->tile.latent, L, 1, c->qt + col0, c->ldq, 0.0f, st,
                       rows);
        if (c->r > 0)
            for (int64_t t = 0; t < b->m; t++)
                for (int32_t j = 0; j < c->n_kv; j++) {
                    int64_t col = t * c->n_h + (int64_t)j * c->g;
                    k->gemm_bc(n, c->g, c->r, w->tile.rope + (int64_t)j * c->r, W, 1,
                               c->qrt + col0 + col, c->ldq, c->nope > 0 ? 1.0f : 0.0f,
                               st + col, rows);
                }
        k->softmax_step(rows, n, st, 1, rows, w->nvis, c->n_h, job->mx, job->l, 1, job->o,
                        job->ldo, c->lat_v);
        k->gemm_bc(rows, c->lat_v, n, st, 1, rows, w->tile.latent + c->off_v, L, 1.0f, job->o,
                   job->ldo);
    }
}

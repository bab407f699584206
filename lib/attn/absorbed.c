/*
 * The absorbed path: W_uk folded into the queries, scores taken against the cached latents
 * directly, the probability-weighted latent sum accumulated (its up-projection by W_uv and W_o
 * happens once per query, in forward.c).
 *
 * Few query rows (SmolLM-135M decode: 9 heads would fill 9 of 16 vector lanes): the cache is
 * read in place; each tile's latents and RoPE keys are converted once into a transposed float32
 * buffer (tokens along the rows), so the score product is vectorized along the tokens and every
 * lane is busy, and the weighted sum Σ p·c, vectorized along the latent, converts the stored rows
 * in registers. Many query rows (Llama-2-7B: 32 heads): the rows are the vector dimension of
 * both products, over a float32 tile (job_rows_wide).
 */
#include <string.h>

#include "attn/internal.h"

/* nvis[t]: tokens of the tile (positions ascending) at or before query position p0 + t. */
static void visible_counts(const int64_t *pos, int64_t n, int64_t p0, int64_t m, int64_t *nvis)
{
    int64_t v = 0;
    for (int64_t t = 0; t < m; t++) {
        while (v < n && pos[v] <= p0 + t)
            v++;
        nvis[t] = v;
    }
}

int mla__absorbed_rows_wide(int64_t rows)
{
    /* Rows as the vector dimension when they fill at least 3/4 of the 16-lane vectors. */
    return 4 * rows >= 3 * 16 * ((rows + 15) / 16);
}

/*
 * Many query rows (Llama-2-7B: 32 heads): the rows are the vector dimension of both products
 * (S: tile × rows), so no transposed copy is needed. Each cached value feeds 2·rows
 * multiply-adds here, so its conversion costs nothing measurable; what counts is how the
 * products read it: the tile is dequantized once, in memory order, into a float32 tile that
 * stays in L2 (reading the cache in place, converting row panels in L1 with gemm_bc_asrc and
 * B rows in registers with gemm_bc_src, measured 5-10% slower on Llama-2-7B shapes, 1 thread).
 */
static void job_rows_wide(const mla__ctx *c, const mla__job *job, mla__work *w)
{
    const mla__qblock *b = &c->blocks[job->block];
    const mla__attn_kernels *k = c->k;
    int64_t rows = b->m * c->n_h, col0 = b->t0 * c->n_h, T = c->tile_tokens;
    int64_t W = c->fmt->rope_width;
    float *st = w->s;
    mla__rtile *rt = &w->rt;
    for (int64_t first = job->c0; first < job->c1; first += T) {
        int64_t n = job->c1 - first < T ? job->c1 - first : T;
        /* Dequantized once into an L2-resident float32 tile (forward.c reserves it), see
         * above; the kernels below read float32 rows in place. */
        mla__tile_fill(c->fmt, b->view, first, n, &w->tile);
        rt->n_seg = 1;
        rt->seg[0].t = 0;
        rt->seg[0].n = n;
        rt->seg[0].latent = mla__f32_src(w->tile.latent, c->fmt->latent_dim);
        rt->seg[0].rope = mla__f32_src(w->tile.rope, W);
        memcpy(rt->pos, w->tile.pos, (size_t)n * sizeof *rt->pos);
        visible_counts(rt->pos, n, b->p0, b->m, w->nvis);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            float *sg = st + g->t * rows;
            if (c->nope > 0)
                k->gemm_bc_asrc(g->n, rows, c->lat_k, &g->latent, 0, 0, c->qt + col0, c->ldq,
                                0.0f, sg, rows);
            if (c->r > 0)
                for (int64_t t = 0; t < b->m; t++)
                    for (int32_t j = 0; j < c->n_kv; j++) {
                        int64_t col = t * c->n_h + (int64_t)j * c->g;
                        k->gemm_bc_asrc(g->n, c->g, c->r, &g->rope, 0, (int64_t)j * c->r,
                                        c->qrt + col0 + col, c->ldq, c->nope > 0 ? 1.0f : 0.0f,
                                        sg + col, rows);
                    }
        }
        k->softmax_step(rows, n, st, 1, rows, w->nvis, c->n_h, job->mx, job->l, 1, job->o,
                        job->ldo, c->lat_v);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            k->gemm_bc_src(rows, c->lat_v, g->n, st + g->t * rows, 1, rows, &g->latent, 0,
                           c->off_v, 1.0f, job->o, job->ldo);
        }
    }
}

void mla__absorbed_job(const mla__ctx *c, const mla__job *job, mla__work *w)
{
    const mla__qblock *b = &c->blocks[job->block];
    const mla__attn_kernels *k = c->k;
    int64_t rows = b->m * c->n_h;
    if (mla__absorbed_rows_wide(rows)) {
        job_rows_wide(c, job, w);
        return;
    }
    int64_t col0 = b->t0 * c->n_h;
    int64_t W = c->fmt->rope_width, T = c->tile_tokens;
    float *ct = w->ct;           /* (lat_k + W) × T: latents, then RoPE keys, transposed */
    float *ctr = ct + (int64_t)c->lat_k * T;
    float *s = w->s;             /* rows × T: the scores of a query row contiguous */
    mla__rtile *rt = &w->rt;
    for (int64_t first = job->c0; first < job->c1; first += T) {
        int64_t n = job->c1 - first < T ? job->c1 - first : T;
        mla__rtile_map(c->fmt, b->view, first, n, &w->tile, rt);
        visible_counts(rt->pos, n, b->p0, b->m, w->nvis);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            if (c->nope > 0)
                k->load_t(&g->latent, 0, g->n, 0, c->lat_k, ct + g->t, T);
            if (c->r > 0)
                k->load_t(&g->rope, 0, g->n, 0, W, ctr + g->t, T);
        }
        if (c->nope > 0)
            k->gemm_bc(rows, n, c->lat_k, c->qt + col0, 1, c->ldq, ct, T, 0.0f, s, T);
        if (c->r > 0)
            for (int64_t t = 0; t < b->m; t++)
                for (int32_t j = 0; j < c->n_kv; j++) {
                    int64_t row = t * c->n_h + (int64_t)j * c->g;
                    k->gemm_bc(c->g, n, c->r, c->qrt + col0 + row, 1, c->ldq,
                               ctr + (int64_t)j * c->r * T, T, c->nope > 0 ? 1.0f : 0.0f,
                               s + row * T, T);
                }
        k->softmax_step(rows, n, s, T, 1, w->nvis, c->n_h, job->mx, job->l, 1, job->o,
                        job->ldo, c->lat_v);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            k->gemm_bc_src(rows, c->lat_v, g->n, s + g->t, T, 1, &g->latent, 0, c->off_v, 1.0f,
                           job->o, job->ldo);
        }
    }
}

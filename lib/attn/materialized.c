/*
 * The materialized path: keys' non-RoPE part and values up-projected from the latents of each
 * tile (K_nope = c·W_ukᵀ + b_k, V = c·W_uvᵀ + b_v), then ordinary attention per head. The MHA
 * baseline is the same loop with the cached RoPE part as keys and the latent as values.
 */
#include <string.h>

#include "attn/internal.h"

#define SMALL_M MLA_ATTN_SMALL_M

/* Panel rows for a tile's product of m rows with 16-bit weights of k columns: the worker's panel
 * where the kernel table widens (mla__wgemm), else 0 (read in place). */
static int64_t panel_rows(const mla__ctx *c, const mla__tile *tile, int64_t m, int64_t k)
{
    return tile->wpanel && mla__wgemm_panel_rows(c->k, c->layer->weight_dtype, m, k) > 0
               ? MLA_ATTN_UP_PANEL_ROWS
               : 0;
}

static void up_project(const mla__ctx *c, const mla__tile *tile, float *kb, float *vb)
{
    const struct mla_layer *ly = c->layer;
    int64_t n = tile->n, L = c->fmt->latent_dim, W = c->fmt->rope_width;
    int64_t kw = (int64_t)c->n_kv * c->d_h;
    for (int32_t j = 0; j < c->n_kv; j++) {
        for (int64_t t = 0; t < n; t++)
            memcpy(kb + t * kw + (int64_t)j * c->d_h, tile->rope + t * W + (int64_t)j * c->r,
                   (size_t)c->r * sizeof(float));
        if (c->nope == 0)
            continue;
        mla__wgemm(c->k, MLA__ONE_THREAD, n, c->nope, c->lat_k, tile->latent, L,
                   mla__weights_at(ly, ly->wuk, ly->wuk16, (int64_t)j * c->nope * c->lat_k),
                   ly->weight_dtype, kb + (int64_t)j * c->d_h + c->r, kw, tile->wpanel,
                   panel_rows(c, tile, n, c->lat_k));
        if (ly->buk)
            for (int64_t t = 0; t < n; t++) {
                float *kt = kb + t * kw + (int64_t)j * c->d_h + c->r;
                for (int32_t i = 0; i < c->nope; i++)
                    kt[i] += ly->buk[(int64_t)j * c->nope + i];
            }
    }
    mla__wgemm(c->k, MLA__ONE_THREAD, n, kw, c->lat_v, tile->latent + c->off_v, L,
               mla__weights_at(ly, ly->wuv, ly->wuv16, 0), ly->weight_dtype, vb, kw, tile->wpanel,
               panel_rows(c, tile, n, c->lat_v));
    if (ly->buv)
        for (int64_t t = 0; t < n; t++)
            for (int64_t i = 0; i < kw; i++)
                vb[t * kw + i] += ly->buv[i];
}

void mla__materialized_up(const mla__ctx *c, const mla__seq_view *v, int64_t first, int64_t n,
                          mla__tile *tile, float *kb, float *vb, int64_t *pos)
{
    mla__tile_fill(c->fmt, v, first, n, tile);
    up_project(c, tile, kb, vb);
    memcpy(pos, tile->pos, (size_t)n * sizeof(int64_t));
}

/*
 * Attention of n_rows query rows of KV head j over an in-place tile (several query tokens, one
 * head): query row i at q + i·rsq, its softmax state at index row0 + i·rs of the job's,
 * visibility nvis[i / rpn].
 */
static void mha_rows(const mla__ctx *c, const mla__job *job, mla__work *w, int64_t n,
                     int32_t j, int64_t n_rows, const float *q, ptrdiff_t rsq,
                     const int64_t *nvis, int64_t rpn, int64_t row0, int64_t rs)
{
    const mla__attn_kernels *k = c->k;
    int64_t T = c->tile_tokens;
    float *o = job->o + row0 * job->ldo;
    ptrdiff_t ldo = (ptrdiff_t)rs * job->ldo;
    for (int64_t i = 0; i < w->rt.n_seg; i++) {
        const mla__seg *g = &w->rt.seg[i];
        k->gemm_dot_src(n_rows, g->n, c->d_h, q, rsq, &g->rope, 0, (int64_t)j * c->d_h, 0.0f,
                        w->s + g->t, T);
    }
    k->softmax_step(n_rows, n, w->s, T, 1, nvis, rpn, job->mx + row0, job->l + row0, rs, o, ldo,
                    c->d_h);
    for (int64_t i = 0; i < w->rt.n_seg; i++) {
        const mla__seg *g = &w->rt.seg[i];
        k->gemm_bc_src(n_rows, c->d_h, g->n, w->s + g->t, T, 1, &g->latent, 0,
                       (int64_t)j * c->d_h, 1.0f, o, ldo);
    }
}

/*
 * How the one-query MHA loop walks a tile: in steps of rows, every KV head's part of a step used
 * while the rows are in L1, so each cached row streams from memory once, in order. With one
 * query row a KV head (MHA proper) the kernels take every head of a step in one call
 * (mha_scores, mha_values: Llama-2-7B has 32 heads of 256 bytes a row); with several (GQA) the
 * products of a head's rows are worth a call each (gemm_dot_src, gemm_bc_src).
 *
 * Out of DRAM the loop is latency-bound: the kernels' loads wait behind their FMAs in the
 * out-of-order window, and the hardware prefetchers stop at 4 KiB pages. What helps depends on
 * the row size, where the call reads more than MLA_ATTN_STREAM_BYTES of rows a thread (more
 * than stays in this machine's caches between two decodes; a batch of sequences counts all of
 * theirs, mla__attn_thread_bytes):
 * - rows of a page or more (Llama-2-7B: 8 KiB): steps of 8 rows, no software prefetch. Each
 *   row of the step is its own page, so the hardware prefetchers follow 8 streams at once;
 *   prefetch instructions only queued behind them (Llama-2-7B 32K, 6 alternating runs: median
 *   28.9 ms, against 34.2 with 4-row steps and prefetching, 30.5 with 16-row steps);
 * - smaller rows (SmolLM-135M: 384 bytes, one stream), on AMD CPUs (c->stream_prefetch):
 *   steps of 8 rows, each KV head's call preceded by its share of the rows MHA_PF_STEPS step
 *   ahead, prefetched so that the requests are spread out rather than issued in one burst (AMD
 *   EPYC, SmolLM-135M 32K, 8 alternating runs: median 1.99 ms, 2.30 with every head in one call
 *   after one burst; 1.6 times slower without prefetching). Steps of 8 one ahead took 0.84–0.89
 *   of the time of steps of 4 two ahead once the AVX2 dots ran 3 × 4 blocks (Zen 3, one process
 *   alternating both; doc/attention.md, "The two paths"). On an Intel Xeon the same loop was
 *   2.1–2.4 times slower than the 16-row one at 32K and 15–30% slower from DRAM (192 and
 *   768 MiB), so elsewhere small rows keep the 16-row loop.
 * Cache-resident jobs keep 16-row steps without prefetching, which measured 7–20% faster
 * there (doc/attention.md).
 */
#define MHA_STEP 16
#define MHA_STREAM_STEP 8
#define MHA_PAGE_ROW_STEP 8
#define MHA_PAGE_ROW_BYTES 4096
#define MHA_PF_STEPS 1

/* Always inlined: as a function of its own, whose only effects are prefetches, GCC's IPA
 * pure-const pass finds it "const" and deletes every call (the objects built before this had
 * no prefetch instruction at all). Share `part` of `parts` of the step MHA_PF_STEPS ahead. */
static inline __attribute__((always_inline)) void prefetch_rows(const mla__src *s, int64_t u,
                                                                int64_t nu, int64_t part,
                                                                int64_t parts)
{
    /* Addresses past the segment (or the pool) are only hints: integer arithmetic, never a
     * pointer formed outside its object. */
    int64_t bytes = nu * (int64_t)s->ld;
    uintptr_t p = (uintptr_t)s->p + (uintptr_t)((u + MHA_PF_STEPS * nu) * (int64_t)s->ld);
    for (int64_t o = bytes * part / parts; o < bytes * (part + 1) / parts; o += 64)
        __builtin_prefetch((const void *)(p + (uintptr_t)o), 0, 0);
}

/* One query token: all heads' scores over the tile, one softmax step, all heads' sums. */
static void mha_one(const mla__ctx *c, const mla__job *job, mla__work *w, int64_t n, int64_t t,
                    int stream)
{
    const mla__qblock *b = &c->blocks[job->block];
    const mla__attn_kernels *k = c->k;
    int64_t T = c->tile_tokens, row0 = t * c->n_h, G = c->g, d = c->d_h;
    /* The keys' row stride (the values' is the same). */
    int page_rows = w->rt.seg[0].rope.ld >= MHA_PAGE_ROW_BYTES;
    int pf = stream && !page_rows && c->stream_prefetch;
    int64_t step = stream && page_rows ? MHA_PAGE_ROW_STEP : pf ? MHA_STREAM_STEP : MHA_STEP;
    int fused = G == 1 && !pf;
    const float *q = c->qg + (b->t0 + t) * c->n_h * d;
    float *o = job->o + row0 * job->ldo;
    for (int64_t i = 0; i < w->rt.n_seg; i++) {
        const mla__seg *g = &w->rt.seg[i];
        for (int64_t u = 0; u < g->n; u += step) {
            int64_t nu = g->n - u < step ? g->n - u : step;
            if (fused) {
                k->mha_scores(c->n_kv, d, nu, q, &g->rope, u, w->s + g->t + u, T);
                continue;
            }
            for (int64_t j = 0; j < c->n_kv; j++) {
                if (pf)
                    prefetch_rows(&g->rope, u, nu, j, c->n_kv);
                k->gemm_dot_src(G, nu, d, q + j * G * d, d, &g->rope, u, j * d, 0.0f,
                                w->s + j * G * T + g->t + u, T);
            }
        }
    }
    k->softmax_step(c->n_h, n, w->s, T, 1, w->nvis + t, c->n_h, job->mx + row0, job->l + row0,
                    1, o, job->ldo, d);
    for (int64_t i = 0; i < w->rt.n_seg; i++) {
        const mla__seg *g = &w->rt.seg[i];
        for (int64_t u = 0; u < g->n; u += step) {
            int64_t nu = g->n - u < step ? g->n - u : step;
            if (fused) {
                k->mha_values(c->n_kv, d, nu, w->s + g->t + u, T, &g->latent, u, o, job->ldo);
                continue;
            }
            for (int64_t j = 0; j < c->n_kv; j++) {
                if (pf)
                    prefetch_rows(&g->latent, u, nu, j, c->n_kv);
                k->gemm_bc_src(G, d, nu, w->s + j * G * T + g->t + u, T, 1, &g->latent, u,
                               j * d, 1.0f, o + j * G * job->ldo, job->ldo);
            }
        }
    }
}

/* The MHA baseline for few query tokens (decode): cached keys and values read in place and
 * converted in registers (memory-bound: no float32 copy of the tile). */
static void mha_in_place(const mla__ctx *c, const mla__job *job, mla__work *w)
{
    const mla__qblock *b = &c->blocks[job->block];
    int64_t T = c->tile_tokens, ldq = (int64_t)c->n_h * c->d_h;
    mla__rtile *rt = &w->rt;
    for (int64_t first = job->c0; first < job->c1; first += T) {
        int64_t n = job->c1 - first < T ? job->c1 - first : T;
        mla__rtile_map(c->fmt, b->view, first, n, &w->tile, rt);
        int64_t t_from = rt->seg[0].pos[0] - b->p0;
        if (t_from < 0)
            t_from = 0;
        if (t_from >= b->m)
            continue;
        mla__rtile_visible(rt, b->p0 + t_from, b->m - t_from, w->nvis + t_from);
        int64_t rows = b->m - t_from;
        if (rows == 1) {
            mha_one(c, job, w, n, t_from, c->thread_bytes > c->stream_bytes);
            continue;
        }
        for (int64_t h = 0; h < c->n_h; h++) {
            const float *q = c->qg + ((b->t0 + t_from) * c->n_h + h) * (int64_t)c->d_h;
            mha_rows(c, job, w, n, (int32_t)(h / c->g), rows, q, ldq, w->nvis + t_from, 1,
                     t_from * c->n_h + h, c->n_h);
        }
    }
}

void mla__materialized_job(const mla__ctx *c, const mla__job *job, mla__work *w)
{
    const mla__qblock *b = &c->blocks[job->block];
    if (c->layer->kind == MLA_LAYER_MHA && b->m < SMALL_M) {
        mha_in_place(c, job, w);
        return;
    }
    const mla__attn_kernels *k = c->k;
    int mha = c->layer->kind == MLA_LAYER_MHA;
    int64_t kw = (int64_t)c->n_kv * c->d_h;
    int64_t ldq = (int64_t)c->n_h * c->d_h;
    for (int64_t first = job->c0; first < job->c1; first += c->tile_tokens) {
        int64_t n = job->c1 - first < c->tile_tokens ? job->c1 - first : c->tile_tokens;
        /* A chunk's context up-projected once for all its blocks (b->up_k), or this tile's. */
        mla__tile shared = {.n = n, .pos = b->up_pos ? b->up_pos + first : NULL};
        mla__tile *tile = b->up_k ? &shared : &w->tile;
        if (!b->up_k)
            mla__tile_fill(c->fmt, b->view, first, n, tile);
        /* Queries before the tile's first position see none of it (causal prefill). */
        int64_t t_from = tile->pos[0] - b->p0;
        if (t_from < 0)
            t_from = 0;
        if (t_from >= b->m)
            continue;
        mla__tile_visible(tile, b->p0 + t_from, b->m - t_from, w->nvis + t_from);
        const float *keys = tile->rope, *vals = tile->latent;
        if (b->up_k) {
            keys = b->up_k + first * kw;
            vals = b->up_v + first * kw;
        } else if (!mha) {
            up_project(c, tile, w->kbuf, w->vbuf);
            keys = w->kbuf;
            vals = w->vbuf;
        }
        int64_t lds = c->tile_tokens;
        /* At most MLA_ATTN_MAT_ROWS queries at a time, so that a head's scores stay in L2 in
         * blocks of more queries (chunks after a longer context), which up-project the tile
         * once for all of them. */
        for (int64_t r0 = t_from; r0 < b->m; r0 += MLA_ATTN_MAT_ROWS) {
            int64_t rows = b->m - r0 < MLA_ATTN_MAT_ROWS ? b->m - r0 : MLA_ATTN_MAT_ROWS;
            for (int32_t h = 0; h < c->n_h; h++) {
                int64_t j = h / c->g;
                const float *q = c->qg + ((b->t0 + r0) * c->n_h + h) * (int64_t)c->d_h;
                const float *kj = keys + j * c->d_h, *vj = vals + j * c->d_h;
                int64_t row0 = r0 * c->n_h + h;
                float *o = job->o + row0 * job->ldo;
                ptrdiff_t ldo = (ptrdiff_t)c->n_h * job->ldo;
                if (rows >= SMALL_M)
                    mla__sgemm_wt(k, MLA__ONE_THREAD, rows, n, c->d_h, q, ldq, kj, kw, w->s, lds);
                else
                    k->gemm_dot(rows, n, c->d_h, q, ldq, kj, kw, 0.0f, w->s, lds);
                k->softmax_step(rows, n, w->s, lds, 1, w->nvis + r0, 1, job->mx + row0,
                                job->l + row0, c->n_h, o, ldo, c->d_h);
                /* The values by gemm_bc at any row count: BLIS's small-matrix code, which does
                 * not pack them, ran Llama-2-7B's (128 wide, rows 16 KB apart) at 26–48
                 * GFLOP/s on one thread, gemm_bc at 91–111; SmolLM-135M's 64-wide at 43–111
                 * against 101–116. */
                k->gemm_bc(rows, c->d_h, n, w->s, lds, 1, vj, kw, 1.0f, o, ldo);
            }
        }
    }
}

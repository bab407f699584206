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
 * both products, over a float32 tile (job_rows_wide). Over a BF16 cache both products are
 * taken in bf16 instead (job_bf16).
 */
#include <string.h>

#include "attn/internal.h"

int mla__absorbed_rows_wide(int64_t rows)
{
    /* Rows as the vector dimension when they fill at least 3/4 of the 16-lane vectors. */
    return 4 * rows >= 3 * 16 * ((rows + 15) / 16);
}

/*
 * The RoPE part of many-rows scores over a float32 tile: S(u, row) += Σ_kk rope(u, j·r + kk) ·
 * qr(kk, row), j the row's KV head. A KV head's part is g rows by r columns, too narrow for the
 * products' blocks: Llama-2-7B took 32 calls a tile of one row and 4 columns each, whose
 * partial vectors were read element by element, and they cost more than the 256-column latent
 * product beside them. Here the block's queries are packed head by head once a job (qp, rows
 * × r: pack_rope_queries) and seg_dots takes each token's RoPE row in one pass. beta 0: S is
 * set, not added to.
 */
static void pack_rope_queries(const mla__ctx *c, const mla__qblock *b, float *qp)
{
    int64_t r = c->r, rows = b->m * c->n_h, col0 = b->t0 * c->n_h;
    for (int64_t row = 0; row < rows; row++)
        for (int64_t kk = 0; kk < r; kk++)
            qp[row * r + kk] = c->qrt[kk * c->ldq + col0 + row];
}

static void rope_scores_wide(const mla__ctx *c, const mla__qblock *b, const float *rope,
                             int64_t n, float beta, float *s, const float *qp)
{
    int64_t rows = b->m * c->n_h;
    for (int64_t t = 0; t < b->m; t++)
        c->k->seg_dots(n, c->n_kv, c->g, c->r, rope, c->fmt->rope_width,
                       qp + t * c->n_h * c->r, beta, s + t * c->n_h, rows);
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
    if (c->r > 0)
        pack_rope_queries(c, b, w->qp);
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
        rt->seg[0].pos = w->tile.pos;
        rt->n = n;
        mla__rtile_visible(rt, b->p0, b->m, w->nvis);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            float *sg = st + g->t * rows;
            if (c->nope > 0)
                k->gemm_bc_asrc(g->n, rows, c->lat_k, &g->latent, 0, 0, c->qt + col0, c->ldq,
                                0.0f, sg, rows);
            if (c->r > 0)
                rope_scores_wide(c, b, w->tile.rope + g->t * W, g->n, c->nope > 0 ? 1.0f : 0.0f,
                                 sg, w->qp);
        }
        k->softmax_step(rows, n, st, 1, rows, w->nvis, c->n_h, job->mx, job->l, 1, job->o,
                        job->ldo, c->lat_v);
        /* Over a BF16 cache, the probabilities job_bf16 would multiply (the queries were
         * rounded in forward.c). */
        if (c->bf16)
            k->round_bf16(st, n * rows);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            k->gemm_bc_src(rows, c->lat_v, g->n, st + g->t * rows, 1, rows, &g->latent, 0,
                           c->off_v, 1.0f, job->o, job->ldo);
        }
    }
}

/* ---- BF16 caches ----------------------------------------------------------------------------- */

int mla__absorbed_bf16(const mla_cache_layer_format *fmt, int32_t lat_k, int32_t lat_v, int32_t r)
{
    return fmt->latent_dtype == MLA_DTYPE_BF16 &&
           (fmt->rope_width == 0 || fmt->rope_dtype == MLA_DTYPE_BF16) && lat_k % 2 == 0 &&
           lat_v % 2 == 0 && r % 2 == 0;
}

/* The words (pairs of bf16 values) of a BF16 source, as float32-sized elements: load_t then
 * transposes pairs without looking at them (moves only, bit for bit). */
static mla__src pair_words(const mla__src *s)
{
    mla__src w = *s;
    w.t = MLA_DTYPE_F32;
    return w;
}

/* The stored rows of a BF16 source as bf16 values (rows 2-byte aligned, ld a multiple of 2). */
static const uint16_t *bf16_rows(const mla__src *s, int64_t col0)
{
    return (const uint16_t *)(const void *)(s->p + 2 * col0);
}

/*
 * Query rows rounded to bf16. rows_major: q[i·width + k] (row i's values contiguous, the A
 * operand of the few-rows products); otherwise in pairs along k with the rows contiguous:
 * q[(k / 2)·2·rows + 2i + k % 2] (the B operand of the many-rows products).
 */
static void pack_queries(const float *src, int64_t ldq, int64_t rows, int64_t width,
                         int rows_major, uint16_t *q)
{
    for (int64_t kk = 0; kk < width; kk++)
        for (int64_t i = 0; i < rows; i++) {
            uint16_t v = mla_f32_to_bf16(src[kk * ldq + i]);
            if (rows_major)
                q[i * width + kk] = v;
            else
                q[(kk / 2) * 2 * rows + 2 * i + kk % 2] = v;
        }
}

/*
 * The RoPE queries of many rows (pairs along k, rows contiguous: qra as pack_queries lays it
 * out) as the B operand of one product with every KV head's RoPE keys: pair row j·r/2 + p holds
 * query row i's pair p where row i belongs to KV head j, zeros elsewhere. n_kv times the
 * multiplies of a product per head, in one call instead of one per head and query token with a
 * single column (Llama-2-7B: 32 heads of 2 pairs; doc/attention.md, "BF16 caches").
 */
static void rope_block_diagonal(const mla__ctx *c, int64_t rows, const uint16_t *qra,
                                uint16_t *qrd)
{
    int64_t rp = c->r / 2;
    for (int32_t j = 0; j < c->n_kv; j++)
        for (int64_t p = 0; p < rp; p++) {
            uint16_t *d = qrd + (j * rp + p) * 2 * rows;
            const uint16_t *q = qra + p * 2 * rows;
            for (int64_t i = 0; i < rows; i++) {
                int own = (i % c->n_h) / c->g == j;
                d[2 * i] = own ? q[2 * i] : 0;
                d[2 * i + 1] = own ? q[2 * i + 1] : 0;
            }
        }
}

/*
 * The absorbed path over a BF16 cache: the same loop as the float32 ones, with both products
 * in bf16 (gemm_bf16: AMX tiles or vdpbf16ps, kernels.c). The cached values are used as
 * stored; the queries are rounded to bf16 once per job and the probabilities once per tile
 * (P·C_v pairs consecutive tokens: the tile's value latents are interleaved in token pairs by
 * pack_pairs, P is rounded into rows × tile). Accumulation stays float32, as does the softmax.
 * Few rows: scores vectorized along the tokens against the tile's pairs transposed (load_t on
 * 32-bit words); many rows: along the query rows, the cache rows read in place.
 */
static void job_bf16(const mla__ctx *c, const mla__job *job, mla__work *w)
{
    const mla__qblock *b = &c->blocks[job->block];
    const mla__attn_kernels *k = c->k;
    int64_t rows = b->m * c->n_h, col0 = b->t0 * c->n_h, T = c->tile_tokens;
    int64_t W = c->fmt->rope_width, kp = c->lat_k / 2, rp = c->r / 2;
    int wide = mla__absorbed_rows_wide(rows);
    uint16_t *qa = w->qb, *qra = w->qb + rows * c->lat_k, *qrd = qra + rows * c->r;
    if (c->nope > 0)
        pack_queries(c->qt + col0, c->ldq, rows, c->lat_k, !wide, qa);
    if (c->r > 0)
        pack_queries(c->qrt + col0, c->ldq, rows, c->r, !wide, qra);
    if (c->r > 0 && wide)
        rope_block_diagonal(c, rows, qra, qrd);
    /* Few rows: (kp + W/2) × T pairs, the latents' then the RoPE keys', transposed. */
    uint16_t *ct = (uint16_t *)(void *)w->ct, *ctr = ct + kp * 2 * T;
    float *s = w->s;
    mla__rtile *rt = &w->rt;
    for (int64_t first = job->c0; first < job->c1; first += T) {
        int64_t n = job->c1 - first < T ? job->c1 - first : T;
        mla__rtile_map(c->fmt, b->view, first, n, &w->tile, rt);
        mla__rtile_visible(rt, b->p0, b->m, w->nvis);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            if (wide) {
                /* S (tile × rows): A = the cache rows in place, B = the query pairs. */
                float *sg = s + g->t * rows;
                if (c->nope > 0)
                    k->gemm_bf16(g->n, rows, kp, bf16_rows(&g->latent, 0), g->latent.ld / 2, 2,
                                 qa, 2 * rows, 0.0f, sg, rows);
                /* S += the tile's RoPE keys (all KV heads) · the block-diagonal queries. */
                if (c->r > 0)
                    k->gemm_bf16(g->n, rows, W / 2, bf16_rows(&g->rope, 0), g->rope.ld / 2, 2,
                                 qrd, 2 * rows, c->nope > 0 ? 1.0f : 0.0f, sg, rows);
            } else {
                mla__src lw = pair_words(&g->latent), rw = pair_words(&g->rope);
                if (c->nope > 0)
                    k->load_t(&lw, 0, g->n, 0, kp, (float *)(void *)(ct + 2 * g->t), T);
                if (c->r > 0)
                    k->load_t(&rw, 0, g->n, 0, W / 2, (float *)(void *)(ctr + 2 * g->t), T);
            }
        }
        if (!wide) {
            if (c->nope > 0)
                k->gemm_bf16(rows, n, kp, qa, c->lat_k, 2, ct, 2 * T, 0.0f, s, T);
            if (c->r > 0)
                for (int64_t t = 0; t < b->m; t++)
                    for (int32_t j = 0; j < c->n_kv; j++) {
                        int64_t row = t * c->n_h + (int64_t)j * c->g;
                        k->gemm_bf16(c->g, n, rp, qra + row * c->r, c->r, 2,
                                     ctr + (int64_t)j * rp * 2 * T, 2 * T,
                                     c->nope > 0 ? 1.0f : 0.0f, s + row * T, T);
                    }
        }
        ptrdiff_t s_row = wide ? 1 : T, s_col = wide ? rows : 1;
        k->softmax_step(rows, n, s, s_row, s_col, w->nvis, c->n_h, job->mx, job->l, 1, job->o,
                        job->ldo, c->lat_v);
        /* Ō += P · C_v over token pairs; an odd tile's last pair is padded with zeros. */
        int64_t np = (n + 1) / 2;
        /* A of the product: pair (row i, token pair q) at pa + i·rsa + q·csa. */
        const uint16_t *pa = w->pb;
        ptrdiff_t rsa = T, csa = 2;
        if (!wide) {
            for (int64_t i = 0; i < rows; i++) {
                k->to_bf16(s + i * T, n, w->pb + i * T);
                if (n % 2)
                    w->pb[i * T + n] = 0;
            }
        } else {
            /* S is tile × rows: rounded in place order, then consecutive tokens interleaved
             * (pairs (q, i) at 2·rows·q + 2i), as the cached values are. */
            uint16_t *pr = w->pb, *pp = w->pb + rows * T;
            k->to_bf16(s, n * rows, pr);
            mla__src ps = {(const unsigned char *)pr, rows * 2, MLA_DTYPE_BF16, NULL, 0, 1};
            k->pack_pairs(&ps, n, 0, rows, pp, 2 * rows, 0);
            if (n % 2)
                for (int64_t i = 0; i < rows; i++)
                    pp[(n / 2) * 2 * rows + 2 * i + 1] = 0;
            pa = pp;
            rsa = 2;
            csa = 2 * rows;
        }
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            k->pack_pairs(&g->latent, g->n, c->off_v, c->lat_v, w->cv, 2 * c->lat_v, g->t);
        }
        if (n % 2)
            for (int64_t j = 0; j < c->lat_v; j++)
                w->cv[(n / 2) * 2 * c->lat_v + 2 * j + 1] = 0;
        k->gemm_bf16(rows, c->lat_v, np, pa, rsa, csa, w->cv, 2 * c->lat_v, 1.0f, job->o,
                     job->ldo);
    }
}

/*
 * Few rows over a cache out of the CPU's caches: each tile is loaded (load_t, load_t16) and
 * then multiplied, and while it is multiplied nothing is read. On AMD CPUs (c->stream_prefetch)
 * a job hints the next tile's rows into L2, 16 of them for every 16 rows it loads, so that they
 * arrive while this tile is multiplied, where the call reads more than PF_MIN_BYTES of rows a
 * thread (mla__attn_thread_bytes: a batch of sequences counts all of theirs).
 * SmolLM-135M d_kv 32 F16 on an AMD EPYC, 2 threads, one process alternating both ways,
 * median of 40 decodes: 32K 1.145 → 1.019 ms, 48K 2.316 → 1.613 ms. Jobs that stay in cache
 * pay 3–5% for the hints (d_kv 8 at 64K, 3 MiB a job; d_kv 16 at 32K), hence the threshold
 * (doc/attention.md, "The two paths").
 */
#define PF_MIN_BYTES ((int64_t)3 << 20)
#define PF_CHUNK 16

typedef struct pf_cursor {
    const mla__seq_view *v;
    int64_t si, next, end;       /* span of `next`, the next token to hint, the job's end */
} pf_cursor;

/* Always inlined: a function of its own whose only effects are prefetches is found "const"
 * by GCC and its calls deleted (materialized.c). prefetcht2: into L2, not L1, which holds the
 * tile being multiplied. */
static inline __attribute__((always_inline)) void pf_bytes(const void *p, int64_t bytes)
{
    for (int64_t o = 0; o < bytes; o += 64)
        __builtin_prefetch((const unsigned char *)p + o, 0, 1);
}

static inline __attribute__((always_inline)) void pf_tokens(pf_cursor *pc, int64_t n)
{
    int64_t stop = pc->end - pc->next < n ? pc->end : pc->next + n;
    while (pc->next < stop) {
        const mla_cache_span *s = &pc->v->spans[pc->si];
        int64_t off = pc->next - pc->v->start[pc->si];
        int64_t take = s->n_tokens - off < stop - pc->next ? s->n_tokens - off : stop - pc->next;
        pf_bytes((const unsigned char *)s->latent + off * (int64_t)s->latent_row_bytes,
                 take * (int64_t)s->latent_row_bytes);
        if (s->rope)
            pf_bytes((const unsigned char *)s->rope + off * (int64_t)s->rope_row_bytes,
                     take * (int64_t)s->rope_row_bytes);
        pc->next += take;
        if (off + take == s->n_tokens)
            pc->si++;
    }
}

void mla__absorbed_job(const mla__ctx *c, const mla__job *job, mla__work *w)
{
    const mla__qblock *b = &c->blocks[job->block];
    const mla__attn_kernels *k = c->k;
    int64_t rows = b->m * c->n_h;
    int wide = mla__absorbed_rows_wide(rows);
    if (c->bf16 && (wide ? k->bf16_many_rows : c->bf16_few_rows)) {
        job_bf16(c, job, w);
        return;
    }
    if (wide) {
        job_rows_wide(c, job, w);
        return;
    }
    int64_t col0 = b->t0 * c->n_h;
    int64_t W = c->fmt->rope_width, T = c->tile_tokens;
    float *ct = w->ct;           /* (lat_k + W) × T: latents, then RoPE keys, transposed */
    float *ctr = ct + (int64_t)c->lat_k * T;
    /* F16 and BF16 caches: the same columns as stored 16-bit values, converted by the products. */
    uint16_t *ch = (uint16_t *)(void *)w->ct, *chr = ch + (int64_t)c->lat_k * T;
    mla__src chs = {(const unsigned char *)ch, 2 * T, c->fmt->latent_dtype, NULL, 0, 1};
    mla__src chrs = chs;
    chrs.p = (const unsigned char *)chr;
    /* I8 latent keys (c->keys8): their codes as int16, lat_k × T, then each group's scales along
     * the tokens, ng × T (forward.c checks that both fit the float32 keys' room). */
    int16_t *c8 = (int16_t *)(void *)w->ct;
    float *sv = w->ct + ((int64_t)c->lat_k * T + 1) / 2;
    int64_t gs = c->fmt->quant_group, ng = gs > 0 ? (c->lat_k + gs - 1) / gs : 0;
    float *s = w->s;             /* rows × T: the scores of a query row contiguous */
    mla__rtile *rt = &w->rt;
    pf_cursor pc = {b->view, 0, job->c0 + T, job->c1};
    int pf = 0;
    if (c->stream_prefetch && job->c1 - job->c0 > T && c->thread_bytes > PF_MIN_BYTES) {
        pf = 1;
        pc.si = mla__span_of(b->view, pc.next);
    }
    for (int64_t first = job->c0; first < job->c1; first += T) {
        int64_t n = job->c1 - first < T ? job->c1 - first : T;
        mla__rtile_map(c->fmt, b->view, first, n, &w->tile, rt);
        mla__rtile_visible(rt, b->p0, b->m, w->nvis);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            for (int64_t u = 0; u < g->n; u += pf ? PF_CHUNK : g->n) {
                int64_t nu = pf && g->n - u > PF_CHUNK ? PF_CHUNK : g->n - u;
                if (pf)
                    pf_tokens(&pc, nu);
                if (c->nope > 0 && c->keys16) {
                    k->load_t16(&g->latent, u, nu, 0, c->lat_k, ch + g->t + u, T);
                } else if (c->nope > 0 && c->keys8) {
                    k->load_t8(&g->latent, u, nu, 0, c->lat_k, c8 + g->t + u, T);
                    for (int64_t e = 0; e < nu; e++)
                        for (int64_t q = 0; q < ng; q++)
                            sv[q * T + g->t + u + e] =
                                g->latent.sc[(u + e) * g->latent.lds + q];
                } else if (c->nope > 0)
                    k->load_t(&g->latent, u, nu, 0, c->lat_k, ct + g->t + u, T);
                if (c->r > 0 && c->keys16)
                    k->load_t16(&g->rope, u, nu, 0, W, chr + g->t + u, T);
                else if (c->r > 0)
                    k->load_t(&g->rope, u, nu, 0, W, ctr + g->t + u, T);
            }
        }
        if (c->nope > 0 && c->keys16)
            k->gemm_bc_src(rows, n, c->lat_k, c->qt + col0, 1, c->ldq, &chs, 0, 0, 0.0f, s, T);
        else if (c->nope > 0 && c->keys8)
            for (int64_t q = 0; q < ng; q++) {
                int64_t d = c->lat_k - q * gs < gs ? c->lat_k - q * gs : gs;
                k->gemm_bc_i16s(rows, n, d, c->qt + col0 + q * gs * c->ldq, 1, c->ldq,
                                c8 + q * gs * T, T, sv + q * T, q > 0 ? 1.0f : 0.0f, s, T);
            }
        else if (c->nope > 0)
            k->gemm_bc(rows, n, c->lat_k, c->qt + col0, 1, c->ldq, ct, T, 0.0f, s, T);
        if (c->r > 0)
            for (int64_t t = 0; t < b->m; t++)
                for (int32_t j = 0; j < c->n_kv; j++) {
                    int64_t row = t * c->n_h + (int64_t)j * c->g;
                    float beta = c->nope > 0 ? 1.0f : 0.0f;
                    if (c->keys16)
                        k->gemm_bc_src(c->g, n, c->r, c->qrt + col0 + row, 1, c->ldq, &chrs,
                                       (int64_t)j * c->r, 0, beta, s + row * T, T);
                    else
                        k->gemm_bc(c->g, n, c->r, c->qrt + col0 + row, 1, c->ldq,
                                   ctr + (int64_t)j * c->r * T, T, beta, s + row * T, T);
                }
        k->softmax_step(rows, n, s, T, 1, w->nvis, c->n_h, job->mx, job->l, 1, job->o,
                        job->ldo, c->lat_v);
        /* Over a BF16 cache, the probabilities job_bf16 would multiply (the queries were
         * rounded in forward.c): the same products, in another order. */
        if (c->bf16)
            for (int64_t i = 0; i < rows; i++)
                k->round_bf16(s + i * T, n);
        for (int64_t i = 0; i < rt->n_seg; i++) {
            const mla__seg *g = &rt->seg[i];
            k->gemm_bc_src(rows, c->lat_v, g->n, s + g->t, T, 1, &g->latent, 0, c->off_v, 1.0f,
                           job->o, job->ldo);
        }
    }
}

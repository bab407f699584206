/*
 * mla_attn_forward: validate everything, project, rotate, append to the cache, attend over each
 * sequence's cached tokens (absorbed or materialized per sequence chunk), project the output.
 *
 * Tokens are processed sorted by (sequence, position), so each sequence's tokens form one chunk of
 * consecutive rows; the output is scattered back to the caller's order at the end.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mla/attn.h>

#include "attn/internal.h"

/* Query rows (tokens × heads) per absorbed block: large enough to keep the products efficient,
 * small enough that a tile's scores stay in L2. Query tokens per materialized block
 * (block_tokens): CAUSAL_BLOCK_MIN to CAUSAL_BLOCK_MAX for a chunk at least as long as the
 * context before it, else up to MATERIALIZED_TOKENS (its jobs take MLA_ATTN_MAT_ROWS at a
 * time). */
#define ABSORBED_ROWS 512
#define MATERIALIZED_TOKENS 4096
#define CAUSAL_BLOCK_MIN 64
#define CAUSAL_BLOCK_MAX 256
/* Float32 bytes of one tile's data; the tile length follows from the per-token width. */
#define TILE_BYTES (256 * 1024)
/* Bytes of float32 transposed keys above which a few-rows absorbed tile halves (tile_tokens). */
#define TILE_T32_BYTES (80 * 1024)
/* Bytes of 16-bit transposed keys a few-rows absorbed tile holds (tile_tokens). */
#define TILE_L1_BYTES (32 * 1024)
/* Up to this many tokens the absorbed path's W_uv product of each head (absorbed_output) stays on
 * the calling thread in gemm_dot (decode: BLIS packs the weights on every call). */
#define SMALL_PRODUCT_TOKENS 4
/* Below this many tokens W_uk is folded into the queries (prepare_queries) by the kernels'
 * gemm_bc, the heads across the threads, instead of one BLIS product a head: BLIS's per-call
 * packing of W_uk and small-matrix code cost more (16 tokens: Llama-2-7B's fixed cost 6–14%
 * lower, SmolLM-135M's 27–32%; 48 tokens within 1%). */
#define QUERY_KERNEL_TOKENS 64

typedef struct tok {
    int32_t seq;
    int64_t pos;
    int64_t idx;
} tok;

static int tok_cmp(const void *pa, const void *pb)
{
    const tok *a = pa, *b = pb;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    if (a->pos != b->pos)
        return a->pos < b->pos ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* One sequence's tokens in the batch. */
typedef struct chunk {
    int32_t seq;
    int64_t t0, m, p0;
    int64_t app0;        /* first appended position (positions ≥ app0 are new), or p0 + m */
    int64_t max_spans;
    int64_t len0;        /* tokens of the sequence before this call */
    int64_t written0;    /* of them, those the cache layer had written (place_chunk) */
    mla__seq_view view;
    int absorbed;
    int64_t qb;          /* query tokens per block (block_tokens) */
    int64_t share_tokens; /* context tokens the chunk can up-project once for all its blocks
                           * (share_up), or 0 */
    int64_t up_tokens;   /* of them, those it does (plan_sharing), or 0 */
    float *up_k, *up_v;
    int64_t *up_pos;
} chunk;

/* ---- a bump allocator over the handle's scratch: sized by a dry run, then carved ------------- */

typedef struct arena {
    char *base;
    size_t off;
    int overflow;
} arena;

static void *take(arena *a, size_t count, size_t size)
{
    size_t bytes;
    size_t o = (a->off + 63) & ~(size_t)63;
    if (o < a->off || !mla_mul_size(count, size, &bytes) || bytes > SIZE_MAX - o) {
        a->overflow = 1;
        return NULL;
    }
    a->off = o + bytes;
    return a->base ? a->base + o : NULL;
}

/* Size arithmetic for take: an overflow marks the arena (the plan cannot be addressed). */
static size_t mul(arena *a, size_t x, size_t y)
{
    size_t r;
    if (!mla_mul_size(x, y, &r)) {
        a->overflow = 1;
        return 0;
    }
    return r;
}

static size_t add(arena *a, size_t x, size_t y)
{
    if (x > SIZE_MAX - y) {
        a->overflow = 1;
        return 0;
    }
    return x + y;
}

/* Dimensions of the layer as the forward needs them. */
typedef struct dims {
    int64_t d, n_h, n_kv, g, d_h, r, nope, L, W, lat_k, lat_v, off_v;
    int mha;
} dims;

/* Everything one forward allocates, carved from the arena. */
typedef struct plan {
    int64_t n, n_chunks, n_blocks, n_jobs, tile, rows_abs, rows_mat, total_spans;
    int64_t pairs;       /* (query, context token) pairs of all jobs: the progress total */
    int64_t tokens_mat;  /* query tokens of the longest materialized block (rows_mat: of them,
                          * those a job multiplies at once) */
    int64_t n_works;     /* per-thread work areas: the most threads the jobs may use (job_threads) */
    int64_t max_parts;   /* split-K parts a block at most (0: as mla__block_parts says) */
    int any_abs, any_mat;
    int up_tiles;        /* some materialized MLA chunk up-projects tile by tile (not share_up) */
    int need_f32;        /* some job reads a float32 tile (whole-tile products, many query rows) */
    int i4;              /* I4 latents, read in place as int8 codes (mla__rtile_map) */
    int bf16;            /* absorbed products in bf16 (BF16 cache, mla__absorbed_bf16) */
    int job_bf16;        /* ... and some of them through gemm_bf16 (job_bf16's buffers) */
    int sorted;          /* the batch's tokens are in (sequence, position) order already */
    double min_flops;    /* the handle's parallel_min_flops */
    const float *xin;    /* the input rows in that order: x itself, or xp */
    float *xp, *q, *kr, *lat, *qg, *qt, *qrt, *obar, *ao, *mx, *l, *outp;
    double *rope_work;
    mla__qblock *blocks;
    mla__job *jobs;
    mla__work *works;
    float *extra;        /* state of split parts ≥ 1 */
    size_t extra_floats;
    /* 16-bit weights of a prompt widened a panel at a time (mla__wgemm): panel rows for the
     * input projections (k = d) and for o_proj (k = n_h·d_h), 0 where none is needed. */
    int64_t panel_in, panel_out;
    float *wpanel;
    /* 16-bit up projections: one KV head's W_uk (a prompt's absorbed queries) or W_uv (its
     * absorbed output) widened (wup, wup_floats); the workers' tile panels (up_panel). */
    float *wup;
    size_t wup_floats;
    int up_panel;
} plan;

/* Threads for work of `flops`: the calling thread alone below the call's line (internal.h,
 * MLA_ATTN_PARALLEL_MIN_FLOPS). */
static int threads_for(const plan *p, int nt, double flops)
{
    return flops < p->min_flops ? 1 : nt;
}

static mla__team team_for(const plan *p, mla__team tm, double flops)
{
    tm.n = threads_for(p, tm.n, flops);
    return tm;
}

static void carve(arena *a, plan *p, const dims *dm, chunk *ch)
{
    size_t n = (size_t)p->n, nh = (size_t)dm->n_h, hd = mul(a, (size_t)dm->n_h, (size_t)dm->d_h);
    size_t nnh = mul(a, n, nh);
    /* Rows that live in turn share memory: the input in sorted order (read in place when the
     * batch is sorted) is read only by project, and the output rows reuse it; the queries are
     * read only until prepare_queries, and the attention output (ao, from plan_jobs on) reuses
     * them. Llama-2-7B: 32 KB a token less. */
    p->xp = p->sorted ? NULL : take(a, mul(a, n, (size_t)dm->d), sizeof(float));
    p->q = take(a, mul(a, n, hd), sizeof(float));
    p->ao = p->q;
    p->outp = p->sorted ? take(a, mul(a, n, (size_t)dm->d), sizeof(float)) : p->xp;
    p->kr = take(a, add(a, mul(a, n, (size_t)dm->W), 1), sizeof(float));
    p->lat = take(a, mul(a, n, (size_t)dm->L), sizeof(float));
    p->qg = p->any_mat ? take(a, mul(a, n, hd), sizeof(float)) : NULL;
    p->qt = p->any_abs ? take(a, add(a, mul(a, nnh, (size_t)dm->lat_k), 1), sizeof(float)) : NULL;
    p->qrt = p->any_abs ? take(a, add(a, mul(a, nnh, (size_t)dm->r), 1), sizeof(float)) : NULL;
    p->obar = p->any_abs ? take(a, mul(a, nnh, (size_t)dm->lat_v), sizeof(float)) : NULL;
    p->mx = take(a, nnh, sizeof(float));
    p->l = take(a, nnh, sizeof(float));
    p->rope_work = take(a, add(a, mul(a, 2, (size_t)(dm->n_kv * dm->r)), 2), sizeof(double));
    p->blocks = take(a, (size_t)p->n_blocks, sizeof(mla__qblock));
    p->jobs = take(a, (size_t)p->n_jobs, sizeof(mla__job));
    p->extra = take(a, add(a, p->extra_floats, 1), sizeof(float));
    size_t pin = mul(a, (size_t)p->panel_in, (size_t)dm->d);
    size_t pout = mul(a, (size_t)p->panel_out, hd);
    p->wpanel = pin + pout > 0 ? take(a, pin > pout ? pin : pout, sizeof(float)) : NULL;
    p->wup = p->wup_floats ? take(a, p->wup_floats, sizeof(float)) : NULL;
    size_t lat_max = (size_t)(dm->lat_k > dm->lat_v ? dm->lat_k : dm->lat_v);
    p->works = take(a, (size_t)p->n_works, sizeof(mla__work));
    size_t T = (size_t)p->tile;
    size_t max_m = (size_t)(p->rows_abs > p->rows_mat ? p->rows_abs : p->rows_mat);
    size_t s_floats = mul(a, T, max_m);
    size_t kvw = mul(a, T, (size_t)(dm->n_kv * dm->d_h));
    for (int64_t i = 0; i < p->n_works; i++) {
        mla__work w;
        memset(&w, 0, sizeof w);
        if (p->need_f32) {
            w.tile.latent = take(a, mul(a, T, (size_t)dm->L), sizeof(float));
            w.tile.rope = take(a, add(a, mul(a, T, (size_t)dm->W), 1), sizeof(float));
            w.tile.pos = take(a, T, sizeof(int64_t));
        }
        if (p->i4)
            w.tile.codes = take(a, mul(a, T, (size_t)dm->L), 1);
        /* Many-rows absorbed blocks pack their RoPE queries (absorbed.c, rope_scores_wide). */
        if (p->need_f32 && p->rows_abs > 0)
            w.qp = take(a, add(a, mul(a, (size_t)p->rows_abs, (size_t)dm->r), 1),
                        sizeof(float));
        if (p->up_panel)
            w.tile.wpanel = take(a, mul(a, MLA_ATTN_UP_PANEL_ROWS, lat_max), sizeof(float));
        w.rt.seg = take(a, T, sizeof(mla__seg));
        size_t ctw = (size_t)(dm->lat_k + dm->W > dm->d_h ? dm->lat_k + dm->W : dm->d_h);
        w.ct = take(a, mul(a, ctw, T), sizeof(float));
        w.s = take(a, s_floats, sizeof(float));
        int up = p->up_tiles;
        w.kbuf = up ? take(a, kvw, sizeof(float)) : NULL;
        w.vbuf = up ? take(a, kvw, sizeof(float)) : NULL;
        w.nvis = take(a, max_m > (size_t)p->tokens_mat ? max_m : (size_t)p->tokens_mat,
                      sizeof(int64_t));
        if (p->job_bf16) {
            size_t ra = (size_t)p->rows_abs;
            /* q̃, the RoPE queries, and for many rows those block-diagonal (absorbed.c) */
            w.qb = take(a, add(a, mul(a, ra, (size_t)(dm->lat_k + dm->r + dm->W)), 2),
                        sizeof(uint16_t));
            /* P rounded (rows × tile), then for many rows its token pairs (absorbed.c) */
            w.pb = take(a, add(a, mul(a, ra, add(a, mul(a, 2, T), 2)), 2), sizeof(uint16_t));
            w.cv = take(a, add(a, mul(a, T + 2, (size_t)dm->lat_v), 2), sizeof(uint16_t));
        }
        if (p->works)
            p->works[i] = w;
    }
    for (int64_t c = 0; c < p->n_chunks; c++) {
        ch[c].view.spans = take(a, (size_t)ch[c].max_spans, sizeof(mla_cache_span));
        ch[c].view.start = take(a, add(a, (size_t)ch[c].max_spans, 1), sizeof(int64_t));
        if (ch[c].up_tokens > 0) {
            size_t up = mul(a, (size_t)ch[c].up_tokens, (size_t)(dm->n_kv * dm->d_h));
            ch[c].up_k = take(a, up, sizeof(float));
            ch[c].up_v = take(a, up, sizeof(float));
            ch[c].up_pos = take(a, (size_t)ch[c].up_tokens, sizeof(int64_t));
        }
    }
}

static mla_status scratch_reserve(mla_attn *attn, size_t bytes)
{
    if (bytes <= attn->scratch_size)
        return MLA_OK;
    /* The old contents are not needed: free first, so the peak is the new size. */
    mla_free(attn->scratch);
    attn->scratch = NULL;
    attn->scratch_size = 0;
    void *p = mla_alloc(bytes);
    if (!p)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "attention: %zu bytes of scratch memory", bytes);
    attn->scratch = p;
    attn->scratch_size = bytes;
    return MLA_OK;
}

/* ---- the path AUTO takes ---------------------------------------------------------------------- */

/*
 * Per cached token and query head the absorbed path multiplies lat_k + lat_v + r times, the
 * materialized one 2·d_h, after up-projecting every token of the sequence for each KV head
 * ((d_h − r)·lat_k + d_h·lat_v); absorbed folds W_uk and W_uv into each query head instead.
 * Where the latent is narrower than a head's key and value, absorbed wins at every length.
 * Otherwise the default compares the two counts for the chunk's own context, the materialized
 * one weighted by how much slower its products ran, more where the absorbed ones are bf16
 * products the CPU does natively (doc/attention.md, "Crossover").
 */
int mla__attn_auto_materialized(int32_t crossover_tokens, int bf16_native, int64_t n_h,
                                int64_t n_kv, int64_t d_h, int64_t r, int64_t lat_k,
                                int64_t lat_v, int64_t len0, int64_t m)
{
    if (lat_k + lat_v + r <= 2 * d_h)
        return 0;
    if (crossover_tokens > 0)
        return m >= crossover_tokens;
    double pairs = (double)m * (double)len0 + 0.5 * (double)m * (double)(m + 1);
    double up = (double)(d_h - r) * (double)lat_k + (double)d_h * (double)lat_v;
    double absorbed = (double)n_h * ((double)(lat_k + lat_v + r) * pairs + (double)m * up);
    double materialized = (double)n_kv * (double)(len0 + m) * up +
                          2.0 * (double)n_h * (double)d_h * pairs;
    return (bf16_native ? MLA_ATTN_MAT_WEIGHT_BF16 : MLA_ATTN_MAT_WEIGHT) * materialized <
           absorbed;
}

/* ---- validation ------------------------------------------------------------------------------ */

static mla_status layer_dims(const struct mla_layer *ly, const mla_cache_layer_format *fmt,
                             int32_t cache_layer, dims *dm)
{
    dm->d = ly->geom.d_model;
    dm->n_h = ly->geom.n_heads;
    dm->n_kv = ly->geom.n_kv_heads;
    dm->g = dm->n_h / dm->n_kv;
    dm->d_h = ly->geom.head_dim;
    dm->r = ly->rope_dim;
    dm->nope = dm->d_h - dm->r;
    dm->L = ly->latent_dim;
    dm->W = dm->n_kv * dm->r;
    dm->mha = ly->kind == MLA_LAYER_MHA;
    if (dm->mha) {
        dm->lat_k = dm->lat_v = dm->L;
        dm->off_v = 0;
    } else if (ly->factorization == MLA_FACTOR_SPLIT) {
        dm->lat_k = dm->lat_v = dm->L / 2;
        dm->off_v = dm->L / 2;
    } else {
        dm->lat_k = dm->lat_v = dm->L;
        dm->off_v = 0;
    }
    if (fmt->latent_dim != dm->L || fmt->rope_width != dm->W)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attention: cache layer %d stores latent_dim %d and rope width %d per "
                        "token, the layer produces %lld and %lld (n_kv_heads %lld × rope_dim "
                        "%lld)",
                        (int)cache_layer, (int)fmt->latent_dim, (int)fmt->rope_width,
                        (long long)dm->L, (long long)dm->W, (long long)dm->n_kv,
                        (long long)dm->r);
    return MLA_OK;
}

/* The cache layer's RoPE description must be the layer's (as mla_layer_cache_desc gives it):
 * mla_cache_seq_shift re-rotates the cached keys with the cache's, so another split of the same
 * width, other frequencies or another position scale would corrupt the keys later, silently. */
static mla_status check_rope(const mla_cache *cache, int32_t cache_layer,
                             const struct mla_layer *ly, const dims *dm)
{
    mla_cache_layer_rope cr;
    mla_status st = mla__cache_layer_rope(cache, cache_layer, &cr);
    if (st != MLA_OK)
        return st;
    int32_t heads = dm->r > 0 ? (int32_t)dm->n_kv : 0;
    double ps = ly->rope_position_scale == 0 ? 1.0 : ly->rope_position_scale;
    if (cr.heads != heads || cr.dim != dm->r)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attention: cache layer %d has rope_heads %d and rope_dim %d, the layer "
                        "%d and %lld (describe the cache layer with mla_layer_cache_desc)",
                        (int)cache_layer, (int)cr.heads, (int)cr.dim, (int)heads,
                        (long long)dm->r);
    if (cr.position_scale != ps)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attention: cache layer %d has rope_position_scale %g, the layer %g "
                        "(describe the cache layer with mla_layer_cache_desc)",
                        (int)cache_layer, cr.position_scale, ps);
    int64_t nf = (int64_t)heads * dm->r / 2;
    for (int64_t i = 0; i < nf && cr.freqs && ly->rope_freqs; i++)
        if (cr.freqs[i] != ly->rope_freqs[i])
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "attention: cache layer %d has rope_freqs[%lld] = %g, the layer %g "
                            "(describe the cache layer with mla_layer_cache_desc)",
                            (int)cache_layer, (long long)i, (double)cr.freqs[i],
                            (double)ly->rope_freqs[i]);
    return MLA_OK;
}

/* Where a sequence's batch positions land: already present slots (reserved, or appended by an
 * earlier layer of the batch) followed by new ones appended directly after its last position.
 * The chunk must continue exactly where this layer stopped writing the sequence: starting
 * earlier would overwrite positions (a repeat), later would leave slots unwritten (a gap). */
static mla_status place_chunk(const mla_cache *cache, int32_t layer, chunk *c)
{
    int64_t pmax, i0;
    mla_status st = mla_cache_seq_pos_max(cache, c->seq, &pmax);
    if (st == MLA_OK)
        st = mla_cache_seq_written(cache, layer, c->seq, &c->written0);
    if (st != MLA_OK)
        return mla_fail_context(MLA_ERR_INVALID_ARGUMENT, "attention: sequence %d: ",
                                (int)c->seq);
    int64_t p_last = c->p0 + c->m - 1;
    if (c->p0 > pmax) {
        if (pmax >= 0 && c->p0 != pmax + 1)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "attention: sequence %d ends at position %lld, the batch continues "
                            "it at %lld (a gap)",
                            (int)c->seq, (long long)pmax, (long long)c->p0);
        c->app0 = c->p0;
        i0 = c->len0;
    } else {
        /* Positions p0 .. min(p_last, pmax) must all be slots of the sequence. */
        int64_t e = p_last < pmax ? p_last : pmax;
        mla__seq_view v = c->view;
        st = mla__seq_view_load(cache, layer, c->seq, c->max_spans, &v);
        if (st != MLA_OK)
            return st;
        i0 = mla__seq_view_count_le(&v, c->p0 - 1);
        int64_t have = mla__seq_view_count_le(&v, e) - i0;
        if (have != e - c->p0 + 1)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "attention: sequence %d: positions %lld..%lld of the batch are not "
                            "all reserved slots (%lld of %lld present) and do not continue its "
                            "last position %lld",
                            (int)c->seq, (long long)c->p0, (long long)e, (long long)have,
                            (long long)(e - c->p0 + 1), (long long)pmax);
        c->app0 = pmax + 1 > p_last ? c->p0 + c->m : pmax + 1;
    }
    if (i0 < c->written0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attention: sequence %d: cache layer %d already holds position %lld "
                        "(it has written the sequence's first %lld tokens): a repeated "
                        "position; remove positions with mla_cache_seq_rm to compute them again",
                        (int)c->seq, (int)layer, (long long)c->p0, (long long)c->written0);
    if (i0 > c->written0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "attention: sequence %d: cache layer %d has written only the sequence's "
                        "first %lld tokens, the batch starts at its token %lld (position %lld): "
                        "the slots between were never written in this layer (a gap)",
                        (int)c->seq, (int)layer, (long long)c->written0, (long long)i0,
                        (long long)c->p0);
    return MLA_OK;
}

/* Sort the batch, form chunks and check positions within each. */
static mla_status make_chunks(const int32_t *seq, const int64_t *pos, int64_t n, tok *tk,
                              chunk *ch, int64_t *n_chunks)
{
    for (int64_t i = 0; i < n; i++) {
        if (pos[i] < 0)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT, "attention: token %lld has position %lld",
                            (long long)i, (long long)pos[i]);
        if (seq[i] < 0)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "attention: token %lld has sequence id %d", (long long)i,
                            (int)seq[i]);
        tk[i].seq = seq[i];
        tk[i].pos = pos[i];
        tk[i].idx = i;
    }
    qsort(tk, (size_t)n, sizeof *tk, tok_cmp);
    int64_t nc = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i > 0 && tk[i].seq == tk[i - 1].seq) {
            if (tk[i].pos == tk[i - 1].pos)
                return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                                "attention: sequence %d: position %lld appears twice in the "
                                "batch (tokens %lld and %lld)",
                                (int)tk[i].seq, (long long)tk[i].pos,
                                (long long)tk[i - 1].idx, (long long)tk[i].idx);
            if (tk[i].pos != tk[i - 1].pos + 1)
                return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                                "attention: sequence %d: the batch has positions %lld and %lld "
                                "but not those between (a gap)",
                                (int)tk[i].seq, (long long)tk[i - 1].pos, (long long)tk[i].pos);
            ch[nc - 1].m++;
            continue;
        }
        memset(&ch[nc], 0, sizeof ch[nc]);
        ch[nc].seq = tk[i].seq;
        ch[nc].t0 = i;
        ch[nc].m = 1;
        ch[nc].p0 = tk[i].pos;
        nc++;
    }
    *n_chunks = nc;
    return MLA_OK;
}

static mla_status check_finite(const float *x, int64_t n, int64_t d)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++)
            if (!isfinite(x[i * d + j]))
                return mla_fail(MLA_ERR_NUMERICAL,
                                "attention: x of token %lld, column %lld is %g", (long long)i,
                                (long long)j, (double)x[i * d + j]);
    return MLA_OK;
}

/* ---- the steps after validation ----------------------------------------------------------- */

static void add_bias(float *y, int64_t n, int64_t w, const float *b)
{
    if (!b)
        return;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < w; j++)
            y[i * w + j] += b[j];
}


/* A layer's 16-bit weight rows as a source of the kernels (row0 .. on, width columns). */
static mla__src stored_src(const struct mla_layer *ly, const uint16_t *h, int64_t width)
{
    mla__src s = {(const unsigned char *)h, 2 * (ptrdiff_t)width, ly->weight_dtype, NULL, 0, 0};
    return s;
}

static void project(const struct mla_layer *ly, const dims *dm, const plan *p, mla__team tm,
                    const int64_t *spos, const mla__attn_kernels *kt)
{
    int64_t n = p->n, qw = dm->n_h * dm->d_h, d = dm->d;
    mla_dtype wt = ly->weight_dtype;
    tm = team_for(p, tm, 2.0 * (double)n * (double)d * (double)(qw + dm->W + dm->L));
    const void *wq = mla__weights_at(ly, ly->wq, ly->wq16, 0);
    const void *wkr = mla__weights_at(ly, ly->wkr, ly->wkr16, 0);
    const void *wdkv = mla__weights_at(ly, ly->wdkv, ly->wdkv16, 0);
    mla__wgemm(kt, tm, n, qw, d, p->xin, d, wq, wt, p->q, qw, p->wpanel, p->panel_in);
    add_bias(p->q, n, qw, ly->bq);
    if (dm->W > 0) {
        mla__wgemm(kt, tm, n, dm->W, d, p->xin, d, wkr, wt, p->kr, dm->W, p->wpanel, p->panel_in);
        add_bias(p->kr, n, dm->W, ly->bkr);
    }
    mla__wgemm(kt, tm, n, dm->L, d, p->xin, d, wdkv, wt, p->lat, dm->L, p->wpanel, p->panel_in);
    double ps = ly->rope_position_scale > 0 ? ly->rope_position_scale : 1.0;
    mla__rope_rotate(p->q, qw, n, spos, (int32_t)dm->n_h, (int32_t)dm->g, (int32_t)dm->r,
                     ly->rope_freqs, (int32_t)dm->n_kv, ps, p->rope_work);
    mla__rope_rotate(p->kr, dm->W, n, spos, (int32_t)dm->n_kv, 1, (int32_t)dm->r, ly->rope_freqs,
                     (int32_t)dm->n_kv, ps, p->rope_work);
}

/* Undo the writes to the first n chunks: remove the positions they appended, and count the
 * slots they overwrote (reserved, or appended by an earlier layer) as unwritten again. */
static void rollback(mla_cache *cache, int32_t layer, int64_t n, const chunk *ch)
{
    for (int64_t u = 0; u < n; u++) {
        if (ch[u].app0 < ch[u].p0 + ch[u].m)
            mla_cache_seq_rm(cache, ch[u].seq, ch[u].app0, -1);
        mla__cache_seq_written_lower(cache, layer, ch[u].seq, ch[u].written0);
    }
}

/* Append each chunk's latents and RoPE keys; on failure undo what this call appended. */
static mla_status write_cache(mla_cache *cache, int32_t layer, const dims *dm, const plan *p,
                              const chunk *ch)
{
    mla_status st = MLA_OK;
    int64_t c = 0;
    for (; c < p->n_chunks; c++) {
        const chunk *k = &ch[c];
        int64_t n_old = k->app0 - k->p0;
        const float *lat = p->lat + k->t0 * dm->L, *kr = p->kr + k->t0 * dm->W;
        if (n_old > 0)
            st = mla_cache_write(cache, layer, k->seq, k->p0, n_old, lat,
                                 dm->W ? kr : NULL);
        if (st == MLA_OK && n_old < k->m)
            st = mla_cache_write(cache, layer, k->seq, k->app0, k->m - n_old,
                                 lat + n_old * dm->L, dm->W ? kr + n_old * dm->W : NULL);
        if (st != MLA_OK)
            break;
    }
    if (st == MLA_OK)
        return MLA_OK;
    mla_fail_context(st, "attention: writing sequence %d, positions %lld..%lld: ",
                     (int)ch[c].seq, (long long)ch[c].p0, (long long)(ch[c].p0 + ch[c].m - 1));
    rollback(cache, layer, c + 1, ch);
    return st;
}

/* Decode and small batches: W_uk folded into one head's queries (prepare_queries), per head a
 * product of a few rows. Head h's rows go to its n × lat_k slice of obar (scratch until
 * plan_jobs zeroes it, see the caller; lat_v = lat_k), then scattered transposed. */
typedef struct query_heads {
    const struct mla_layer *ly;
    const dims *dm;
    const plan *p;
    const mla__attn_kernels *k;
    float scale;
} query_heads;

static void query_head(void *arg, int64_t h, int thread)
{
    const query_heads *g = arg;
    const dims *dm = g->dm;
    const plan *p = g->p;
    const struct mla_layer *ly = g->ly;
    int64_t n = p->n, qw = dm->n_h * dm->d_h, ldq = n * dm->n_h, j = h / dm->g;
    float *row = p->obar + h * n * dm->lat_k;
    const float *qn = p->q + dm->n_h * dm->r + h * dm->nope;
    if (ly->weight_dtype == MLA_DTYPE_F32) {
        g->k->gemm_bc(n, dm->lat_k, dm->nope, qn, qw, 1, ly->wuk + j * dm->nope * dm->lat_k,
                      dm->lat_k, 0.0f, row, dm->lat_k);
    } else {
        mla__src up = stored_src(ly, ly->wuk16, dm->lat_k);
        g->k->gemm_bc_src(n, dm->lat_k, dm->nope, qn, qw, 1, &up, j * dm->nope, 0, 0.0f, row,
                          dm->lat_k);
    }
    for (int64_t t = 0; t < n; t++)
        for (int64_t i = 0; i < dm->lat_k; i++)
            p->qt[i * ldq + t * dm->n_h + h] = row[t * dm->lat_k + i] * g->scale;
}

/* The queries in the layouts the paths read (see internal.h), scaled by 1/√d_h. */
static void prepare_queries(const struct mla_layer *ly, const dims *dm, const plan *p,
                            mla__team tm, const mla__attn_kernels *k)
{
    int64_t n = p->n, qw = dm->n_h * dm->d_h;
    float scale = (float)(1.0 / sqrt((double)dm->d_h));
    if (p->any_mat)
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < dm->n_h; h++) {
                float *dst = p->qg + (t * dm->n_h + h) * dm->d_h;
                const float *qr = p->q + t * qw + h * dm->r;
                const float *qn = p->q + t * qw + dm->n_h * dm->r + h * dm->nope;
                for (int64_t i = 0; i < dm->r; i++)
                    dst[i] = qr[i] * scale;
                for (int64_t i = 0; i < dm->nope; i++)
                    dst[dm->r + i] = qn[i] * scale;
            }
    if (!p->any_abs)
        return;
    int64_t ldq = n * dm->n_h;
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < dm->n_h; h++)
            for (int64_t i = 0; i < dm->r; i++)
                p->qrt[i * ldq + t * dm->n_h + h] = p->q[t * qw + h * dm->r + i] * scale;
    /* bf16 products (p->bf16): every path multiplies the queries rounded to bf16 (absorbed.c) */
    if (p->bf16)
        k->round_bf16(p->qrt, dm->r * ldq);
    if (dm->nope == 0)
        return;
    /* q̃_h = W_uk^{(j)ᵀ} q_nope_h for every token at once, written transposed. */
    if (n < QUERY_KERNEL_TOKENS) {
        mla__team tq = team_for(p, tm, 2.0 * (double)n * (double)dm->nope * (double)dm->lat_k *
                                        (double)dm->n_h);
        query_heads g = {ly, dm, p, k, scale};
        mla__pool_run(tq.pool, tq.n, dm->n_h, query_head, &g);
    } else {
        tm = team_for(p, tm, 2.0 * (double)n * (double)dm->nope * (double)dm->lat_k);
        for (int64_t h = 0; h < dm->n_h; h++) {
            int64_t j = h / dm->g;
            const float *wuk = p->wup;
            if (ly->weight_dtype == MLA_DTYPE_F32)
                wuk = ly->wuk + j * dm->nope * dm->lat_k;
            else if (h % dm->g == 0) /* 16-bit W_uk: widened once for the group's heads */
                mla__widen16(tm, ly->wuk16 + j * dm->nope * dm->lat_k, ly->weight_dtype,
                             dm->nope, dm->lat_k, p->wup);
            mla__sgemm(tm, dm->lat_k, n, dm->nope, wuk, 1, dm->lat_k,
                       p->q + dm->n_h * dm->r + h * dm->nope, 1, qw, 0.0f, p->qt + h, ldq,
                       dm->n_h);
        }
        for (int64_t i = 0; i < dm->lat_k * ldq; i++)
            p->qt[i] *= scale;
    }
    if (p->bf16)
        k->round_bf16(p->qt, dm->lat_k * ldq);
}

/* Threads for the plan's jobs: none beyond the first for little work, at most one a work area
 * (plan_bounds carved n_works) and one a job. */
static int job_threads(const dims *dm, const plan *p, int nt)
{
    double flops = 0;
    for (int64_t i = 0; i < p->n_jobs; i++) {
        const mla__qblock *b = &p->blocks[p->jobs[i].block];
        double width = b->absorbed ? 2.0 * dm->lat_k + dm->r : 2.0 * dm->d_h;
        flops += 2.0 * (double)(b->m * dm->n_h) * (double)(p->jobs[i].c1 - p->jobs[i].c0) *
                 width;
    }
    nt = threads_for(p, nt, flops);
    if (nt > p->n_works)
        nt = (int)p->n_works;
    if (nt > p->n_jobs)
        nt = (int)p->n_jobs;
    return nt > 1 ? nt : 1;
}

int64_t mla__attn_thread_bytes(const mla_cache_layer_format *f, const mla__job *jobs,
                               int64_t n_jobs, int nt)
{
    int64_t groups = f->quant_group > 0 ? f->latent_dim / f->quant_group : 0;
    int64_t row = (int64_t)f->latent_dim * mla_dtype_bits(f->latent_dtype) / 8 + 4 * groups +
                  (int64_t)f->rope_width * mla_dtype_bits(f->rope_dtype) / 8;
    int64_t tokens = 0;
    for (int64_t i = 0; i < n_jobs; i++)
        tokens += jobs[i].c1 - jobs[i].c0;
    return tokens * row / (nt > 1 ? nt : 1);
}

/* The progress callback's state during the jobs: only the calling thread calls it. */
typedef struct progress {
    mla_progress_fn fn;
    void *user;
    _Atomic int64_t done;
    int64_t total, reported;
    _Atomic int cancel;
} progress;

/* After a job of `pairs`: the calling thread reports what all threads have done. */
static void job_done(progress *pr, int64_t pairs, int caller)
{
    if (!pr->fn)
        return;
    int64_t d = atomic_fetch_add(&pr->done, pairs) + pairs;
    if (!caller)
        return;
    /* What the others finished meanwhile counts too. */
    d = atomic_load(&pr->done);
    pr->reported = d;
    if (pr->fn(pr->user, d, pr->total) != 0)
        atomic_store(&pr->cancel, 1);
}

static void run_job(const mla__ctx *ctx, const plan *p, const mla__job *job, mla__work *w)
{
    if (p->blocks[job->block].absorbed)
        mla__absorbed_job(ctx, job, w);
    else
        mla__materialized_job(ctx, job, w);
}

typedef struct job_loop {
    const mla__ctx *ctx;
    const plan *p;
    progress *pr;
} job_loop;

/* Last jobs first: in a chunk's causal prefill the later blocks see the longer contexts, and
 * handing out the largest jobs first leaves the smallest to even out the threads' ends. A
 * thread's work area is its own (thread < n_works, job_threads). */
static void job_item(void *arg, int64_t i, int thread)
{
    const job_loop *g = arg;
    if (atomic_load(&g->pr->cancel))
        return;
    const mla__job *job = &g->p->jobs[g->p->n_jobs - 1 - i];
    run_job(g->ctx, g->p, job, &g->p->works[thread]);
    job_done(g->pr, job->pairs, thread == 0);
}

/* Every job, or until the progress callback cancels (the jobs not started then are skipped). */
static void run_jobs(const mla__ctx *ctx, const plan *p, mla__team tm, progress *pr)
{
    /* A first report before any job: the projections are done, and a host may stop here. */
    if (pr->fn) {
        pr->reported = 0;
        atomic_store(&pr->cancel, pr->fn(pr->user, 0, pr->total) != 0);
    }
    if (atomic_load(&pr->cancel))
        return;
    job_loop g = {ctx, p, pr};
    mla__pool_run(tm.pool, tm.n, p->n_jobs, job_item, &g);
    /* The last report is the whole: the caller may have finished before the others. */
    if (pr->fn && !atomic_load(&pr->cancel) && pr->reported != pr->total) {
        pr->reported = pr->total;
        atomic_store(&pr->cancel, pr->fn(pr->user, pr->total, pr->total) != 0);
    }
}

/* Split-K parts merged into part 0, then every row divided by its softmax sum. */
static void finish_rows(const struct mla_layer *ly, const dims *dm, const plan *p)
{
    for (int64_t i = 0; i < p->n_jobs; i++) {
        const mla__job *jb = &p->jobs[i];
        const mla__job *j0 = &p->jobs[i];
        while (j0 > p->jobs && (j0 - 1)->block == jb->block)
            j0--;
        if (j0 == jb)
            continue;
        const mla__qblock *b = &p->blocks[jb->block];
        int64_t dv = b->absorbed ? dm->lat_v : dm->d_h;
        mla__softmax_merge(b->m * dm->n_h, dv, j0->mx, j0->l, j0->o, j0->ldo, jb->mx, jb->l,
                           jb->o, jb->ldo);
    }
    for (int64_t bi = 0; bi < p->n_blocks; bi++) {
        const mla__qblock *b = &p->blocks[bi];
        int64_t dv = b->absorbed ? dm->lat_v : dm->d_h;
        float *o = b->absorbed ? p->obar : p->ao;
        for (int64_t row = b->t0 * dm->n_h; row < (b->t0 + b->m) * dm->n_h; row++) {
            float inv = 1.0f / p->l[row];
            float *orow = o + row * dv;
            for (int64_t j = 0; j < dv; j++)
                orow[j] *= inv;
            /* MHA values are W_v x without b_v; the weights sum to 1, so b_v adds once. */
            if (dm->mha && ly->buv) {
                const float *bv = ly->buv + (row % dm->n_h) / dm->g * dm->d_h;
                for (int64_t j = 0; j < dv; j++)
                    orow[j] += bv[j];
            }
        }
    }
}

/* o_h = W_uv^{(j)} ō_h + b_v^{(j)} for the runs of consecutive absorbed tokens. */
static void absorbed_output(const struct mla_layer *ly, const dims *dm, const plan *p,
                            mla__team tm, const mla__attn_kernels *k)
{
    int64_t hd = dm->n_h * dm->d_h;
    for (int64_t bi = 0; bi < p->n_blocks;) {
        if (!p->blocks[bi].absorbed) {
            bi++;
            continue;
        }
        int64_t t0 = p->blocks[bi].t0, t1 = t0;
        while (bi < p->n_blocks && p->blocks[bi].absorbed && p->blocks[bi].t0 == t1) {
            t1 += p->blocks[bi].m;
            bi++;
        }
        mla__team tu = team_for(p, tm, 2.0 * (double)(t1 - t0) * (double)(dm->n_h * dm->d_h) *
                                        (double)dm->lat_v);
        for (int64_t h = 0; h < dm->n_h; h++) {
            int64_t j = h / dm->g;
            float *o = p->ao + t0 * hd + h * dm->d_h;
            const float *ob = p->obar + (t0 * dm->n_h + h) * dm->lat_v;
            int64_t row0 = j * dm->d_h * dm->lat_v;
            if (t1 - t0 <= SMALL_PRODUCT_TOKENS && ly->weight_dtype == MLA_DTYPE_F32) {
                k->gemm_dot(t1 - t0, dm->d_h, dm->lat_v, ob, dm->n_h * dm->lat_v,
                            ly->wuv + row0, dm->lat_v, 0.0f, o, hd);
            } else if (t1 - t0 <= SMALL_PRODUCT_TOKENS) {
                mla__src up = stored_src(ly, ly->wuv16, dm->lat_v);
                k->gemm_dot_src(t1 - t0, dm->d_h, dm->lat_v, ob, dm->n_h * dm->lat_v, &up,
                                j * dm->d_h, 0, 0.0f, o, hd);
            } else {
                /* a 16-bit W_uv^{(j)} widened whole into wup where the table widens */
                int64_t rows = mla__wgemm_panel_rows(k, ly->weight_dtype, t1 - t0, dm->lat_v)
                                   ? dm->d_h
                                   : 0;
                const void *wuv = mla__weights_at(ly, ly->wuv, ly->wuv16, row0);
                mla__wgemm(k, tu, t1 - t0, dm->d_h, dm->lat_v, ob, dm->n_h * dm->lat_v, wuv,
                           ly->weight_dtype, o, hd, p->wup, rows);
            }
            if (ly->buv)
                for (int64_t t = 0; t < t1 - t0; t++)
                    for (int64_t i = 0; i < dm->d_h; i++)
                        o[t * hd + i] += ly->buv[j * dm->d_h + i];
        }
    }
}

/* ---- planning -------------------------------------------------------------------------------- */

static int64_t tile_tokens(const dims *dm, int up, int need_f32, int keys16, int64_t few_rows)
{
    /* A float32 tile holds whole rows; an in-place tile only the transposed keys the score
     * product reads (absorbed: latent and RoPE part; MHA: one KV head's keys). */
    int64_t per = need_f32 ? (dm->L + dm->W) * 4 + (up ? 8 * dm->n_kv * dm->d_h : 0)
                           : (dm->mha ? dm->d_h : dm->lat_k + dm->W) * 4;
    int64_t t = TILE_BYTES / (per > 0 ? per : 1);
    /* Few query rows over keys transposed to float32 (I8, I4 and F32 caches, absorbed.c): 256
     * tokens, or 128 where their keys would pass 80 KiB. SmolLM-135M over I8, 16K, 2 threads,
     * one process alternating, fastest decodes: d_kv 32 (480 bytes a token) 128 tokens 0.484 ms
     * against 0.511 for 256 and 0.524 for 160 (I4 0.614 against 0.701, F32 0.607 against 0.691);
     * d_kv 16 (288 bytes) 256 tokens 0.290 against 0.303 for 224 and 0.298 for 128. */
    if (!need_f32 && !keys16 && !dm->mha) {
        int64_t t2 = 256 * per > TILE_T32_BYTES ? 128 : 256;
        t = t2 < t ? t2 : t;
    }
    /* Few query rows over 16-bit keys (absorbed.c, load_t16): the transposed keys stay in L1
     * for the products' passes (SmolLM-135M d_kv 32, 240 bytes a token, 16K: 128 tokens
     * 0.54-0.55 ms, 256 tokens 0.58, 64 tokens 0.56). */
    if (keys16 && !need_f32 && !dm->mha) {
        int64_t t1 = TILE_L1_BYTES / ((dm->lat_k + dm->W) * 2 > 0 ? (dm->lat_k + dm->W) * 2 : 1);
        /* Or the kernel table's size for 9 rows (AMD: 192 tokens for its 9 × 48 blocks). */
        if (few_rows > 0)
            t1 = few_rows;
        t = t1 < t ? t1 : t;
    }
    t = t / 16 * 16;
    /* Materialized tiles feed products of tile × (n_kv·d_h) × R and, per head, value products
     * whose depth is the tile: where a tile of TILE_BYTES would hold under 64 tokens
     * (Llama-2-7B: 35 KB a token), the per-call overhead dominated (measured when these were
     * BLIS products), and 256-token tiles that spill L2 ran 7–15% faster than 64 after 4096
     * cached tokens (doc/attention.md). */
    if (up && t < 64)
        t = 256;
    return t < 16 ? 16 : t > 256 ? 256 : t;
}

/*
 * Query tokens per block of a chunk of m tokens, for nt threads: ABSORBED_ROWS rows on the
 * absorbed path. Materialized (and MHA) blocks of a causal chunk, one at least as long as the
 * context before it, are small: in a causal prompt the blocks see contexts of rising
 * length, and with few large blocks the threads' shares came out unequal (a fresh 2048-token
 * prompt in blocks of 1024: one job a quarter of the attention, the other three quarters), while
 * their tiles are up-projected once for all blocks (share_up), so small blocks cost no flops.
 * At least 4 blocks a thread, that bound kept between CAUSAL_BLOCK_MIN and CAUSAL_BLOCK_MAX
 * tokens: from 1024 tokens on 64, 128 and 256 ran within 2% of each other, below it the smaller
 * were 5–12% faster. After a longer context every block sees nearly the same tokens, and an MLA
 * block up-projects each tile it sees itself, so blocks are large, split across the threads by
 * their work (mla__block_part_end): Llama-2-7B d_kv 16, 4096 tokens after 8192, 7.0 s against
 * 8.1 in blocks of 1024 (which up-projected the context four times), 2048 after 4096 2.31
 * against 2.67 s.
 * Every split-K part after a block's first keeps a state as large as the block's output, so the
 * blocks are the chunk cut for nt/2 threads, between MLA_ATTN_MAT_ROWS and MATERIALIZED_TOKENS
 * tokens: where neither bound binds and the thread count is even, two parts a block, whose extra
 * states total one chunk's output however many threads run (on 8 threads one block of 4096
 * tokens would keep 7). Past the upper bound, the count of blocks is one that takes one or two
 * parts a block.
 */
int64_t mla__mat_block_tokens(int causal, int64_t m, int nt)
{
    if (causal) {
        int64_t q = (m + 4 * (int64_t)nt - 1) / (4 * (int64_t)nt);
        return q < CAUSAL_BLOCK_MIN ? CAUSAL_BLOCK_MIN : q > CAUSAL_BLOCK_MAX ? CAUSAL_BLOCK_MAX : q;
    }
    int64_t pairs = nt > 1 ? nt / 2 : 1, q = (m + pairs - 1) / pairs;
    if (q < MLA_ATTN_MAT_ROWS)
        return MLA_ATTN_MAT_ROWS;
    if (q <= MATERIALIZED_TOKENS)
        return q;
    /* More than nt/2 blocks of the largest size: as many as take one or two parts each. A
     * count in between took many (7 blocks on 8 threads: 8 parts, 7 extra states of the chunk's
     * output); the blocks added, at most nt − 1, each up-project the context once more. */
    int64_t nb = (m + MATERIALIZED_TOKENS - 1) / MATERIALIZED_TOKENS;
    while (mla__block_parts(nb, nt) > 2)
        nb++;
    return (m + nb - 1) / nb;
}

static int64_t block_tokens(const dims *dm, int absorbed, int causal, int64_t m, int nt)
{
    if (absorbed)
        return ABSORBED_ROWS / dm->n_h > 0 ? ABSORBED_ROWS / dm->n_h : 1;
    return mla__mat_block_tokens(causal, m, nt);
}

/* Equal blocks, not full ones and a remainder: 64 tokens of SmolLM-135M's 9 heads were blocks
 * of 56 and 8 tokens, and at 2 threads one thread did 7/8 of the work (the chunk took 3 times
 * as long as one of 32 tokens; doc/attention.md, "Threads"). */
int64_t mla__chunk_blocks(int64_t m, int64_t qb)
{
    return (m + qb - 1) / qb;
}

int64_t mla__block_start(int64_t m, int64_t nb, int64_t i)
{
    if (nb < 1)
        return 0;
    return i * (m / nb) + (i < m % nb ? i : m % nb);
}

/* Jobs of equal blocks take rounds of nt threads; a last round with idle threads costs as much
 * as a full one, so parts are added until the idle share is at most an eighth (3 blocks on 2
 * threads: 2 parts each, 6 jobs in 3 full rounds, not 3 jobs in 2 rounds with one idle). At most
 * nt parts: n_blocks·nt jobs fill n_blocks rounds. */
int64_t mla__block_parts(int64_t n_blocks, int nt)
{
    if (nt <= 1 || n_blocks < 1)
        return 1;
    for (int64_t parts = 1;; parts++) {
        int64_t jobs = n_blocks * parts, rounds = (jobs + nt - 1) / nt;
        if (8 * rounds * nt <= 9 * jobs)
            return parts;
    }
}

/* Parts of a block with n_ctx context tokens: at most one per tile. */
static int64_t parts_for(const plan *p, int64_t parts, int64_t n_ctx)
{
    int64_t tiles = (n_ctx + p->tile - 1) / p->tile;
    return tiles < parts ? (tiles > 0 ? tiles : 1) : parts;
}

/* Parts a block for the call (mla__block_parts), at most p->max_parts where the handle's
 * scratch limit asked for fewer. */
static int64_t call_parts(const plan *p, int nt)
{
    int64_t parts = mla__block_parts(p->n_blocks, nt);
    return p->max_parts > 0 && parts > p->max_parts ? p->max_parts : parts;
}

/*
 * Bounds for the carve, before the cache writes: the blocks, the longest block's query rows, and
 * per block a bound of its context (the sequence's tokens before the call plus the block's end
 * within the chunk), hence its parts, the split-K state and the flops that decide whether
 * the jobs use more than one thread (threads_for is monotonic, and job_threads never gives more
 * than n_works).
 */
static void plan_bounds(const dims *dm, plan *p, const chunk *ch, int nt, arena *a)
{
    int64_t nb = 0, m_abs = 0, m_mat = 0;
    for (int64_t c = 0; c < p->n_chunks; c++) {
        int64_t cb = mla__chunk_blocks(ch[c].m, ch[c].qb);
        int64_t m = mla__block_start(ch[c].m, cb, 1); /* the longest block: the first */
        nb += cb;
        if (ch[c].absorbed)
            m_abs = m > m_abs ? m : m_abs;
        else
            m_mat = m > m_mat ? m : m_mat;
    }
    p->n_blocks = nb;
    p->rows_abs = m_abs * dm->n_h;
    p->tokens_mat = m_mat;
    if (m_mat > MLA_ATTN_MAT_ROWS)
        m_mat = MLA_ATTN_MAT_ROWS;
    /* The one-query MHA loop keeps all heads' scores (materialized.c). */
    p->rows_mat = m_mat > 0 ? (m_mat > dm->n_h ? m_mat : dm->n_h) : 0;
    int64_t parts = call_parts(p, nt), nj = 0;
    size_t extra = 0;
    double flops = 0;
    for (int64_t c = 0; c < p->n_chunks; c++) {
        int64_t cb = mla__chunk_blocks(ch[c].m, ch[c].qb);
        int64_t dv = ch[c].absorbed ? dm->lat_v : dm->d_h;
        double width = ch[c].absorbed ? 2.0 * dm->lat_k + dm->r : 2.0 * dm->d_h;
        for (int64_t i = 0; i < cb; i++) {
            int64_t s = mla__block_start(ch[c].m, cb, i);
            int64_t bm = mla__block_start(ch[c].m, cb, i + 1) - s;
            int64_t ctx = ch[c].len0 + s + bm, rows = bm * dm->n_h;
            int64_t np = parts_for(p, parts, ctx);
            nj += np;
            extra = add(a, extra, mul(a, (size_t)(np - 1), mul(a, (size_t)rows, (size_t)(2 + dv))));
            flops += 2.0 * (double)rows * (double)ctx * width;
        }
    }
    p->n_jobs = nj;
    p->extra_floats = extra;
    p->n_works = threads_for(p, nt, flops) <= 1 ? 1 : nj < nt ? nj : nt;
}

/* Flops of up-projecting one token's latent to every KV head's keys and values. */
static double up_flops(const dims *dm)
{
    return 2.0 * (double)(dm->n_kv * dm->nope * dm->lat_k + dm->n_kv * dm->d_h * dm->lat_v);
}

static mla_status plan_blocks(const dims *dm, plan *p, chunk *ch)
{
    int64_t nb = 0;
    for (int64_t c = 0; c < p->n_chunks; c++) {
        int64_t cb = mla__chunk_blocks(ch[c].m, ch[c].qb);
        /* A shared up-projection holds the context the chunk's last block sees: the tokens the
         * layer had written before it (place_chunk checked that they precede it), then it. */
        int64_t p_last = ch[c].p0 + ch[c].m - 1, n_ctx;
        if (ch[c].up_tokens > 0 &&
            (n_ctx = mla__seq_view_count_le(&ch[c].view, p_last)) != ch[c].up_tokens)
            return mla_fail(MLA_ERR_INTERNAL,
                            "attention: sequence %d: %lld tokens up to position %lld, where "
                            "%lld were planned",
                            (int)ch[c].seq, (long long)n_ctx, (long long)p_last,
                            (long long)ch[c].up_tokens);
        for (int64_t i = 0; i < cb; i++) {
            int64_t s = mla__block_start(ch[c].m, cb, i);
            mla__qblock *b = &p->blocks[nb];
            b->t0 = ch[c].t0 + s;
            b->m = mla__block_start(ch[c].m, cb, i + 1) - s;
            b->p0 = ch[c].p0 + s;
            b->view = &ch[c].view;
            b->absorbed = ch[c].absorbed;
            b->up_k = ch[c].up_k;
            b->up_v = ch[c].up_v;
            b->up_pos = ch[c].up_pos;
            /* Split-K work of a token's up-projection, in query rows (mla__block_part_end). */
            b->up_rows = dm->mha || ch[c].absorbed || ch[c].up_k
                             ? 0.0
                             : up_flops(dm) / (4.0 * (double)(dm->n_h * dm->d_h));
            b->n_ctx = mla__seq_view_count_le(&ch[c].view, b->p0 + b->m - 1);
            nb++;
        }
    }
    p->n_blocks = nb;
    return MLA_OK;
}

/*
 * A materialized chunk of several blocks up-projects its context once, into the call's scratch,
 * before the jobs: each block's jobs would otherwise up-project every tile they see (a
 * 4096-token prompt in four blocks of 1024 up-projected 2.5 times its tokens; Llama-2-7B d_kv 16:
 * 13–14% of the prefill's time). The keys and values take 2·n_kv·d_h floats a context token, so
 * only chunks at least as long as the context before them share (the scratch then grows by at
 * most twice the chunk's own keys and values); longer contexts keep the per-tile up-projection.
 */
typedef struct up_loop {
    const mla__ctx *ctx;
    const plan *p;
    const chunk *k;
} up_loop;

static void up_tile(void *arg, int64_t i, int thread)
{
    const up_loop *g = arg;
    const chunk *k = g->k;
    int64_t T = g->p->tile, kw = g->ctx->n_kv * (int64_t)g->ctx->d_h;
    int64_t first = i * T, n = k->up_tokens - first < T ? k->up_tokens - first : T;
    mla__materialized_up(g->ctx, &k->view, first, n, &g->p->works[thread].tile,
                         k->up_k + first * kw, k->up_v + first * kw, k->up_pos + first);
}

static void share_up(const mla__ctx *ctx, const dims *dm, const plan *p, const chunk *ch,
                     mla__team tm)
{
    for (int64_t c = 0; c < p->n_chunks; c++) {
        const chunk *k = &ch[c];
        if (k->up_tokens == 0)
            continue;
        int64_t T = p->tile, tiles = (k->up_tokens + T - 1) / T;
        mla__team tu = team_for(p, tm, up_flops(dm) * (double)k->up_tokens);
        tu.n = tu.n < p->n_works ? tu.n : (int)p->n_works; /* a work area a thread */
        up_loop g = {ctx, p, k};
        mla__pool_run(tu.pool, tu.n, tiles, up_tile, &g);
    }
}

/* The (query, context token) pairs of a block's first c context tokens: the block's m queries
 * all see the n_ctx − m tokens before them, its own token j only the m − j from it on. Its
 * work (materialized blocks) adds up_rows a token for the up-projection. */
static int64_t block_pairs(const mla__qblock *b, int64_t c)
{
    int64_t m = b->m < b->n_ctx ? b->m : b->n_ctx, pre = b->n_ctx - m;
    if (c <= pre)
        return m * c;
    int64_t j = c - pre;
    return m * pre + m * j - j * (j - 1) / 2;
}

static double block_work(const mla__qblock *b, int64_t c)
{
    return b->up_rows * (double)c + (double)block_pairs(b, c);
}

/* Equal parts in whole vectors of tokens, not whole tiles (4096 tokens in tiles of 336 split
 * 2352 + 1744: SmolLM-135M d_kv 8, 2 threads). Materialized blocks of many queries take equal
 * shares of their work instead: equal token counts gave the first part up to three times the
 * second's attention (a fresh 1024-token prompt in one block: 3/8 against 1/8 of m², each
 * token of the first range seen by more queries). The work counts each token's up-projection too: for Llama-2-7B
 * d_kv 16 it costs as much as 506 query rows, and shares of the attention alone ran a 1024-token
 * chunk after 1100 cached ones slower than equal token counts (873 against 834 ms). */
int64_t mla__block_part_end(const mla__qblock *b, int64_t k, int64_t np)
{
    int64_t n_ctx = b->n_ctx;
    if (k + 1 >= np)
        return n_ctx;
    int64_t end;
    if (b->absorbed || b->m < MLA_ATTN_SMALL_M) {
        int64_t per = (n_ctx + np - 1) / np;
        end = (k + 1) * ((per + 15) / 16 * 16);
    } else {
        /* The first c with work ≥ the share (the work rises with c), to 16 tokens. */
        double share = block_work(b, n_ctx) * (double)(k + 1) / (double)np;
        int64_t lo = 0, hi = n_ctx;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo) / 2;
            if (block_work(b, mid) < share)
                lo = mid + 1;
            else
                hi = mid;
        }
        end = (lo + 8) / 16 * 16;
    }
    return end < n_ctx ? end : n_ctx;
}

/* Parts per block (split-K) and the state each part accumulates into. */
static void plan_jobs(const dims *dm, plan *p, int nt)
{
    int64_t parts = call_parts(p, nt);
    int64_t nj = 0;
    size_t extra = 0;
    p->pairs = 0;
    for (int64_t bi = 0; bi < p->n_blocks; bi++) {
        const mla__qblock *b = &p->blocks[bi];
        int64_t rows = b->m * dm->n_h;
        int64_t dv = b->absorbed ? dm->lat_v : dm->d_h;
        int64_t n_ctx = b->n_ctx;
        int64_t np = parts_for(p, parts, n_ctx);
        int64_t c0 = 0;
        for (int64_t k = 0; k < np; k++) {
            mla__job *j = &p->jobs[nj];
            int64_t c1 = mla__block_part_end(b, k, np);
            j->block = bi;
            j->c0 = c0;
            j->c1 = c1 > c0 ? c1 : c0;
            j->pairs = block_pairs(b, j->c1) - block_pairs(b, j->c0);
            p->pairs += j->pairs;
            c0 = j->c1;
            if (k == 0) {
                j->mx = p->mx + b->t0 * dm->n_h;
                j->l = p->l + b->t0 * dm->n_h;
                j->o = (b->absorbed ? p->obar : p->ao) + b->t0 * dm->n_h * dv;
                j->ldo = dv;
            } else {
                j->mx = p->extra + extra;
                j->l = j->mx + rows;
                j->o = j->l + rows;
                j->ldo = dv;
                extra += (size_t)rows * (size_t)(2 + dv);
            }
            for (int64_t r = 0; r < rows; r++) {
                j->mx[r] = -INFINITY;
                j->l[r] = 0.0f;
            }
            memset(j->o, 0, (size_t)rows * (size_t)dv * sizeof(float));
            nj++;
        }
    }
    p->n_jobs = nj;
}

/* The scratch bytes of the plan the chunks now have (plan_bounds and a dry run of carve). */
static size_t plan_bytes(const dims *dm, plan *p, chunk *ch, int nt, arena *a)
{
    *a = (arena){NULL, 0, 0};
    plan_bounds(dm, p, ch, nt, a);
    carve(a, p, dm, ch);
    return add(a, a->off, 64); /* 64 for the base's alignment */
}

/* How the chunks that can share their up-projection (share_up) are planned, fastest first:
 * SHARED; or each block up-projecting the tiles it sees, in the large blocks of a chunk after a
 * longer context (UNSHARED_LARGE: one block up-projects each tile once; its scores and split-K
 * states take more scratch) or in the chunk's small blocks (UNSHARED_SMALL: each block
 * up-projects its whole context again). The scratch of each depends on the shape. */
enum { SHARED, UNSHARED_LARGE, UNSHARED_SMALL, SHARING_MODES };

/* The plans a scratch limit may take, fastest first: each sharing mode with the split-K parts
 * mla__block_parts gives; then the one of least scratch among them with at most 2 parts a
 * block, then 1 (each extra part keeps a state as large as its block's output: a chunk after a
 * longer context on many threads). */
static const struct {
    int sharing;             /* a sharing mode, or −1: the least-scratch one found so far */
    int max_parts;
} limit_plans[] = {
    {SHARED, 0}, {UNSHARED_LARGE, 0}, {UNSHARED_SMALL, 0}, {-1, 2}, {-1, 1},
};

static void plan_sharing(const dims *dm, plan *p, chunk *ch, int nt, int mode)
{
    p->up_tiles = 0;
    for (int64_t c = 0; c < p->n_chunks; c++) {
        if (ch[c].share_tokens > 0) {
            ch[c].up_tokens = mode == SHARED ? ch[c].share_tokens : 0;
            ch[c].qb = block_tokens(dm, 0, mode != UNSHARED_LARGE, ch[c].m, nt);
        }
        p->up_tiles |= !dm->mha && !ch[c].absorbed && ch[c].up_tokens == 0;
    }
}

MLA_API mla_status mla_attn_forward(mla_attn *attn, const mla_layer *layer, mla_cache *cache,
                                    int32_t cache_layer, const float *x, int64_t n_tokens,
                                    const int32_t *seq, const int64_t *pos, float *out)
{
    if (!attn || !layer || !cache)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_forward: %s is NULL",
                        !attn ? "attn" : !layer ? "layer" : "cache");
    if (n_tokens < 0)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_forward: n_tokens is %lld",
                        (long long)n_tokens);
    if (n_tokens > 0 && (!x || !seq || !pos || !out))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_forward: %s is NULL",
                        !x ? "x" : !seq ? "seq" : !pos ? "pos" : "out");
    mla_cache_layer_format fmt;
    mla_status st = mla__cache_layer_format(cache, cache_layer, &fmt);
    if (st != MLA_OK)
        return mla_fail_context(st, "mla_attn_forward: cache_layer %d: ", (int)cache_layer);
    dims dm;
    st = layer_dims(layer, &fmt, cache_layer, &dm);
    if (st == MLA_OK)
        st = check_rope(cache, cache_layer, layer, &dm);
    if (st != MLA_OK || n_tokens == 0)
        return st;
    size_t xbytes, obytes;
    if (!mla_mul_size((size_t)n_tokens, (size_t)dm.d * sizeof(float), &xbytes))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_forward: n_tokens %lld is too large",
                        (long long)n_tokens);
    obytes = xbytes;
    /* As integers: comparing pointers into distinct objects is undefined. */
    uintptr_t xa = (uintptr_t)x, oa = (uintptr_t)out;
    if (oa - xa < xbytes || xa - oa < obytes)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_attn_forward: out overlaps x");
    st = check_finite(x, n_tokens, dm.d);
    if (st != MLA_OK)
        return st;

    /* A child of fork() has the handle but not its workers (nor, safely, OpenMP's). */
    int nt = attn->pid == getpid() ? attn->n_threads : 1;

    /* Batch structure: sorted tokens, one chunk per sequence. */
    tok *tk = mla_calloc((size_t)n_tokens, sizeof *tk);
    chunk *ch = mla_calloc((size_t)n_tokens, sizeof *ch);
    int64_t *spos = mla_calloc((size_t)n_tokens, sizeof *spos);
    if (!tk || !ch || !spos) {
        st = mla_fail(MLA_ERR_OUT_OF_MEMORY, "mla_attn_forward: batch of %lld tokens",
                      (long long)n_tokens);
        goto done;
    }
    plan p;
    memset(&p, 0, sizeof p);
    p.n = n_tokens;
    p.min_flops = attn->parallel_min_flops;
    st = make_chunks(seq, pos, n_tokens, tk, ch, &p.n_chunks);
    if (st != MLA_OK)
        goto done;
    p.sorted = 1;
    for (int64_t i = 0; i < n_tokens; i++)
        p.sorted &= tk[i].idx == i;
    int mat_path = attn->p.path == MLA_ATTN_PATH_MATERIALIZED, any_share = 0;
    /* Whether absorbed jobs multiply in bf16 (a BF16 cache), and on native bf16 products. */
    int abs_bf16 = !dm.mha && mla__absorbed_bf16(&fmt, (int32_t)dm.lat_k, (int32_t)dm.lat_v,
                                                 (int32_t)dm.r);
    for (int64_t c = 0; c < p.n_chunks; c++) {
        int64_t n_spans;
        st = mla__cache_seq_span_count(cache, ch[c].seq, &n_spans);
        if (st != MLA_OK) {
            st = mla_fail_context(MLA_ERR_INVALID_ARGUMENT, "attention: sequence %d: ",
                                  (int)ch[c].seq);
            goto done;
        }
        st = mla_cache_seq_length(cache, ch[c].seq, &ch[c].len0);
        /* The tokens before the chunk, for AUTO (place_chunk checks that they are these). */
        int64_t before = 0;
        if (st == MLA_OK)
            st = mla_cache_seq_written(cache, cache_layer, ch[c].seq, &before);
        if (st != MLA_OK)
            goto done;
        /* Appending m tokens adds at most m spans (at least one token each); a copy-on-write
         * of a shared block does not add spans. */
        ch[c].max_spans = n_spans + ch[c].m + 1;
        ch[c].absorbed = !dm.mha && (attn->p.path == MLA_ATTN_PATH_ABSORBED ||
                                     (!mat_path && !mla__attn_auto_materialized(
                                                       attn->p.crossover_tokens,
                                                       abs_bf16 && attn->bf16_native,
                                                       dm.n_h, dm.n_kv, dm.d_h, dm.r, dm.lat_k,
                                                       dm.lat_v, before, ch[c].m)));
        p.any_abs |= ch[c].absorbed;
        p.any_mat |= !ch[c].absorbed;
        /* A causal chunk takes small blocks, which its shared up-projection makes cheap:
         * block_tokens and share_up decide on the same test. */
        int causal = before <= ch[c].m;
        ch[c].qb = block_tokens(&dm, ch[c].absorbed, causal, ch[c].m, nt);
        if (causal && !dm.mha && !ch[c].absorbed && mla__chunk_blocks(ch[c].m, ch[c].qb) > 1)
            ch[c].share_tokens = before + ch[c].m;
        any_share |= ch[c].share_tokens > 0;
    }
    plan_sharing(&dm, &p, ch, nt, SHARED);
    /* Float32 tiles: the materialized path's up-projections and the MHA baseline's whole-tile
     * products; absorbed blocks of many query rows (absorbed.c). */
    p.need_f32 = p.any_mat && !dm.mha;
    p.i4 = fmt.latent_dtype == MLA_DTYPE_I4;
    for (int64_t c = 0; c < p.n_chunks; c++)
        p.need_f32 |= (dm.mha && ch[c].m >= MLA_ATTN_SMALL_M) ||
                      (ch[c].absorbed && mla__absorbed_rows_wide(ch[c].m * dm.n_h));
    p.bf16 = p.any_abs && abs_bf16;
    int keys16 = (fmt.latent_dtype == MLA_DTYPE_F16 || fmt.latent_dtype == MLA_DTYPE_BF16) &&
                 (dm.W == 0 || fmt.rope_dtype == fmt.latent_dtype);
    /* I8 latents (I4 ones are read as I8 codes) in groups of 8 or more, where the table scales
     * the scores after each group's sums (absorbed.c). The codes (2 bytes each) and the
     * groups' scales, transposed, must fit the float32 keys' room in the tile: 2·groups + 1 ≤
     * lat_k keeps lat_k/2 + groups within lat_k floats a token. */
    int64_t k_groups = fmt.quant_group > 0 ? (dm.lat_k + fmt.quant_group - 1) / fmt.quant_group : 0;
    int keys8 = (fmt.latent_dtype == MLA_DTYPE_I8 || fmt.latent_dtype == MLA_DTYPE_I4) &&
                fmt.quant_group >= 8 && 2 * k_groups + 1 <= dm.lat_k && attn->k->load_t8 &&
                attn->k->gemm_bc_i16s;
    /* The kernel table's tile for 9 query rows suits the blocks of its gemm_bc_src, which the
     * bf16 products (job_bf16, absorbed.c) do not use; other rows keep the L1 rule (4 heads on
     * AMD: 192-token tiles within the noise of it). A decode's few rows are its heads. */
    int bf16_few_rows = p.bf16 && dm.lat_k >= attn->k->bf16_few_rows_min_k;
    /* Where neither row count takes gemm_bf16 (AVX2, generic), job_bf16 never runs. */
    p.job_bf16 = bf16_few_rows || (p.bf16 && attn->k->bf16_many_rows);
    p.tile = tile_tokens(&dm, p.any_mat && !dm.mha, p.need_f32, keys16,
                         dm.n_h == 9 && !bf16_few_rows ? attn->k->nine_rows_tile : 0);
    /* Panels of 16-bit weights, no taller than the weights they take: the tallest input
     * projection, and o_proj's d rows. */
    int64_t hd_all = dm.n_h * dm.d_h, rows_in = hd_all;
    rows_in = dm.L > rows_in ? dm.L : rows_in;
    rows_in = dm.W > rows_in ? dm.W : rows_in;
    p.panel_in = mla__wgemm_panel_rows(attn->k, layer->weight_dtype, n_tokens, dm.d);
    p.panel_in = p.panel_in < rows_in ? p.panel_in : rows_in;
    p.panel_out = mla__wgemm_panel_rows(attn->k, layer->weight_dtype, n_tokens, hd_all);
    p.panel_out = p.panel_out < dm.d ? p.panel_out : dm.d;
    /* 16-bit up projections: a prompt's W_uk for its absorbed queries, W_uv for its absorbed
     * output where the table widens, and the workers' tile panels (materialized.c). */
    if (layer->weight_dtype != MLA_DTYPE_F32 && !dm.mha) {
        size_t uk = p.any_abs && dm.nope > 0 && n_tokens >= QUERY_KERNEL_TOKENS
                        ? (size_t)(dm.nope * dm.lat_k) : 0;
        size_t uv = p.any_abs && mla__wgemm_panel_rows(attn->k, layer->weight_dtype, n_tokens,
                                                       dm.lat_v)
                        ? (size_t)(dm.d_h * dm.lat_v) : 0;
        p.wup_floats = uk > uv ? uk : uv;
        p.up_panel = p.any_mat && mla__wgemm_panel_rows(attn->k, layer->weight_dtype, p.tile, 1);
    }
    arena a;
    size_t need = plan_bytes(&dm, &p, ch, nt, &a);
    /* Over the handle's limit: the fastest plan within it, else the one of least scratch (the
     * error names its need). */
    size_t limit = (size_t)attn->p.max_scratch_bytes;
    if (!a.overflow && limit > 0 && need > limit) {
        size_t least = need;
        int least_plan = 0, least_sharing = SHARED, n_plans = (int)(sizeof limit_plans /
                                                                  sizeof limit_plans[0]);
        for (int i = 1; i < n_plans && need > limit; i++) {
            int sharing = limit_plans[i].sharing < 0 ? least_sharing : limit_plans[i].sharing;
            if (sharing != SHARED && !any_share)
                continue; /* the same plan as SHARED */
            plan_sharing(&dm, &p, ch, nt, sharing);
            p.max_parts = limit_plans[i].max_parts;
            need = plan_bytes(&dm, &p, ch, nt, &a);
            if (!a.overflow && need < least) {
                least = need;
                least_plan = i;
                if (limit_plans[i].sharing >= 0)
                    least_sharing = sharing;
            }
        }
        if (need > limit) {
            int sharing = limit_plans[least_plan].sharing < 0 ? least_sharing
                                                              : limit_plans[least_plan].sharing;
            plan_sharing(&dm, &p, ch, nt, sharing);
            p.max_parts = limit_plans[least_plan].max_parts;
            need = plan_bytes(&dm, &p, ch, nt, &a);
        }
    }
    if (a.overflow) {
        st = mla_fail(MLA_ERR_INVALID_ARGUMENT,
                      "mla_attn_forward: %lld tokens need more memory than can be addressed",
                      (long long)n_tokens);
        goto done;
    }
    if (limit > 0 && need > limit) {
        st = mla_fail(MLA_ERR_CAPACITY,
                      "mla_attn_forward: cache layer %d: a batch of %lld tokens needs %zu bytes "
                      "of scratch memory, over max_scratch_bytes %zu: send fewer tokens a call",
                      (int)cache_layer, (long long)n_tokens, need, limit);
        goto done;
    }
    st = scratch_reserve(attn, need);
    if (st != MLA_OK)
        goto done;
    a.base = (char *)(((uintptr_t)attn->scratch + 63) & ~(uintptr_t)63);
    a.off = 0;
    carve(&a, &p, &dm, ch);
    for (int64_t c = 0; c < p.n_chunks; c++) {
        st = place_chunk(cache, cache_layer, &ch[c]);
        if (st != MLA_OK)
            goto done;
    }

    /* Nothing below fails except the cache writes (rolled back) and internal errors. */
    for (int64_t i = 0; i < n_tokens; i++) {
        if (p.xp)
            memcpy(p.xp + i * dm.d, x + tk[i].idx * dm.d, (size_t)dm.d * sizeof(float));
        spos[i] = tk[i].pos;
    }
    p.xin = p.xp ? p.xp : x;
    mla__team team = {attn->pool, nt};
    project(layer, &dm, &p, team, spos, attn->k);
    st = write_cache(cache, cache_layer, &dm, &p, ch);
    if (st != MLA_OK)
        goto done;
    for (int64_t c = 0; c < p.n_chunks; c++) {
        st = mla__seq_view_load(cache, cache_layer, ch[c].seq, ch[c].max_spans, &ch[c].view);
        if (st != MLA_OK) {
            rollback(cache, cache_layer, p.n_chunks, ch);
            goto done;
        }
    }
    /* Before plan_jobs, which zeroes the jobs' output states: decode uses obar as scratch. */
    prepare_queries(layer, &dm, &p, team, attn->k);
    st = plan_blocks(&dm, &p, ch);
    if (st != MLA_OK) {
        rollback(cache, cache_layer, p.n_chunks, ch);
        goto done;
    }
    plan_jobs(&dm, &p, nt);
    int nt_jobs = job_threads(&dm, &p, nt);
    mla__ctx ctx = {
        .layer = layer, .fmt = &fmt, .k = attn->k,
        .n_h = (int32_t)dm.n_h, .n_kv = (int32_t)dm.n_kv, .g = (int32_t)dm.g,
        .d_h = (int32_t)dm.d_h, .r = (int32_t)dm.r, .nope = (int32_t)dm.nope,
        .lat_k = (int32_t)dm.lat_k, .lat_v = (int32_t)dm.lat_v, .off_v = (int32_t)dm.off_v,
        .tile_tokens = p.tile, .stream_bytes = attn->stream_bytes,
        .stream_prefetch = attn->stream_prefetch, .qg = p.qg, .qt = p.qt,
        .qrt = p.qrt, .ldq = n_tokens * dm.n_h, .blocks = p.blocks, .bf16 = p.bf16,
        .keys16 = keys16, .keys8 = keys8, .bf16_few_rows = bf16_few_rows,
        .thread_bytes = mla__attn_thread_bytes(&fmt, p.jobs, p.n_jobs, nt_jobs),
    };
    share_up(&ctx, &dm, &p, ch, team);
    progress pr = {attn->progress, attn->progress_user, 0, p.pairs, -1, 0};
    run_jobs(&ctx, &p, (mla__team){attn->pool, nt_jobs}, &pr);
    if (atomic_load(&pr.cancel)) {
        rollback(cache, cache_layer, p.n_chunks, ch);
        st = mla_fail(MLA_ERR_CANCELLED,
                      "attention: cache layer %d: cancelled by the progress callback after %lld "
                      "of %lld (query, context token) pairs; nothing appended",
                      (int)cache_layer, (long long)pr.reported, (long long)p.pairs);
        goto done;
    }
    finish_rows(layer, &dm, &p);
    if (p.any_abs)
        absorbed_output(layer, &dm, &p, team, attn->k);
    int64_t hd = dm.n_h * dm.d_h;
    mla__wgemm(attn->k, team_for(&p, team, 2.0 * (double)n_tokens * (double)dm.d * (double)hd),
               n_tokens, dm.d, hd, p.ao, hd, mla__weights_at(layer, layer->wo, layer->wo16, 0),
               layer->weight_dtype, p.outp, dm.d, p.wpanel, p.panel_out);
    /* Finite input can still overflow float32 inside the layer (scores of |x| ~ 1e20 give
     * exp(inf − inf) = NaN): fail rather than return non-finite output. out is written only
     * on success. */
    int64_t bad = -1, bad_col = 0;
    for (int64_t i = 0; i < n_tokens; i++)
        for (int64_t j = 0; j < dm.d; j++)
            if (!isfinite(p.outp[i * dm.d + j])) {
                if (bad < 0 || tk[i].idx < bad) {
                    bad = tk[i].idx;
                    bad_col = j;
                }
                break;
            }
    if (bad >= 0) {
        rollback(cache, cache_layer, p.n_chunks, ch);
        int64_t i = 0;
        while (tk[i].idx != bad)
            i++;
        st = mla_fail(MLA_ERR_NUMERICAL,
                      "attention: cache layer %d: the output of token %lld, column %lld is %g "
                      "(overflow inside the layer: the input is finite but too large)",
                      (int)cache_layer, (long long)bad, (long long)bad_col,
                      (double)p.outp[i * dm.d + bad_col]);
        goto done;
    }
    for (int64_t i = 0; i < n_tokens; i++)
        memcpy(out + tk[i].idx * dm.d, p.outp + i * dm.d, (size_t)dm.d * sizeof(float));
done:
    mla_free(tk);
    mla_free(ch);
    mla_free(spos);
    return st;
}

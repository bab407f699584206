/*
 * Functions shared by the files of lib/attn.
 *
 * Row layouts used throughout one forward call (n = tokens of the batch, sorted by sequence then
 * position; "row (t, h)" is index t·n_h + h):
 *   q:      n × n_h·d_h as the layer's W_q produces it (all heads' RoPE dims, then non-RoPE dims)
 *   qg:     n × n_h × d_h, per head [RoPE | non-RoPE], scaled by 1/√d_h  (materialized, MHA)
 *   qt:     R × n·n_h, the absorbed queries q̃ transposed, scaled            (absorbed)
 *   qrt:    r × n·n_h, the RoPE queries transposed, scaled                  (absorbed)
 *   obar:   n·n_h × R, the absorbed weighted latent sums                     (absorbed)
 *   ao:     n × n_h·d_h, attention outputs of all heads, the input of W_o
 */
#ifndef MLA_ATTN_INTERNAL_H
#define MLA_ATTN_INTERNAL_H

#include <mla/attn.h>

#include "attn/kernels/kernels.h"
#include "cache/reader.h"
#include "convert/layer.h"
#include "core/core.h"

/* Below this many query tokens the MHA baseline reads the cache in place (decode kernels);
 * from it on it multiplies whole float32 tiles (materialized.c). */
#define MLA_ATTN_SMALL_M 16

/* Query tokens a materialized job multiplies against a tile at once (materialized.c): a head's
 * scores, this many rows of a tile, stay in L2. */
#define MLA_ATTN_MAT_ROWS 1024

/* One-token MHA decode jobs take the loop for rows out of DRAM (materialized.c: 8-row steps for
 * rows of a page or more; for smaller ones, on AMD CPUs, prefetching 4-row steps) where the
 * call's jobs read more than this many bytes of cached rows a thread (mla__attn_thread_bytes:
 * a batch of sequences counts all of theirs); MLA_ATTN_STREAM_BYTES in the environment
 * overrides it (tests run that loop on small caches with 0), MLA_ATTN_STREAM_PREFETCH=0 or 1
 * whether small rows are prefetched (tests run both), and whether few-rows absorbed jobs hint
 * their next tile (absorbed.c; on AMD CPUs by default). */
#define MLA_ATTN_STREAM_BYTES ((int64_t)8 << 20)

/* AUTO's default (crossover_tokens 0) weighs the materialized path's multiply-adds by this:
 * since its products read the weights and keys in place (mla__sgemm_wt) they run faster than
 * the absorbed path's; 0.9 took the faster path at 131 and 133 of 140 measured chunks in two
 * rounds (Llama-2-7B d_kv 8, 16, 32 and SmolLM-135M d_kv 32, after 4096 cached tokens and fresh;
 * doc/attention.md, "Crossover"). */
#define MLA_ATTN_MAT_WEIGHT 0.9
/* The same where the absorbed path multiplies in bf16 on vdpbf16ps or AMX tiles (a BF16 cache):
 * twice the float32 weight, as vdpbf16ps takes two products a lane. Over the AMD EPYC's
 * vdpbf16ps it took the faster path at 31 and 34 of 40 measured chunks, the float32 weight at
 * 27 and 22. */
#define MLA_ATTN_MAT_WEIGHT_BF16 1.8

/* Work below this many flops runs on the calling thread: handing it to the pool costs more than
 * it saves (a few microseconds). SmolLM-135M's decode projections (0.7-0.8 MFLOP each) are above
 * it: on 2 threads its decode after 1024 tokens took 35 us against 59 with 4e6
 * (doc/attention.md, "Threads"). MLA_ATTN_PARALLEL_MIN_FLOPS in the environment replaces it
 * (tests: 0 sends every loop to the threads). */
#define MLA_ATTN_PARALLEL_MIN_FLOPS 500000

struct mla_attn {
    mla_attn_params p;
    int n_threads;               /* resolved from p.n_threads */
    mla__pool *pool;             /* up to n_threads − 1 workers, or OpenMP (core.h) */
    long pid;                    /* the process that created it (and its workers) */
    double parallel_min_flops;   /* MLA_ATTN_PARALLEL_MIN_FLOPS or its environment override */
    const mla__attn_kernels *k;
    int64_t stream_bytes;        /* MLA_ATTN_STREAM_BYTES or its environment override */
    int stream_prefetch;         /* see MLA_ATTN_STREAM_BYTES */
    int bf16_native;             /* k's bf16 products run on vdpbf16ps or AMX tiles (AUTO) */
    void *scratch;               /* grow-only arena (within p.max_scratch_bytes), reused by
                                  * every forward until mla_attn_scratch_release */
    size_t scratch_size;
    mla_progress_fn progress;    /* mla_attn_set_progress, or NULL */
    void *progress_user;
};

/* ---- gemm.c ----------------------------------------------------------------------------------- */

/* The threads a product or loop may use: up to n of the pool's (mla__pool_run). */
typedef struct mla__team {
    mla__pool *pool;
    int n;
} mla__team;
/* The calling thread alone (inside a job, which already runs on one of the pool's threads). */
#define MLA__ONE_THREAD ((mla__team){NULL, 1})

/* C = A·B + beta·C through BLIS on the team's threads, every operand given by element strides:
 * A(i, k) = a[i·rsa + k·csa], B(k, j) = b[k·rsb + j·csb], C(i, j) = c[i·rsc + j·csc]. */
MLA_INTERNAL void mla__sgemm(mla__team tm, int64_t m, int64_t n, int64_t k, const float *a,
                             ptrdiff_t rsa, ptrdiff_t csa, const float *b, ptrdiff_t rsb,
                             ptrdiff_t csb, float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc);

/* C = A·Wᵀ for a layer's weights W (n × k, rows contiguous along k, ldw floats apart) and m
 * rows of A (lda), C rows ldc apart, on the team's threads. Few rows read W in place (one row:
 * BLIS's gemv; fewer than kt->dot_weights_max_m through the table's gemm_dot_src), more go
 * through BLIS. */
MLA_INTERNAL void mla__sgemm_wt(const mla__attn_kernels *kt, mla__team tm, int64_t m, int64_t n,
                                int64_t k, const float *a, ptrdiff_t lda, const float *w,
                                ptrdiff_t ldw, float *c, ptrdiff_t ldc);

/*
 * C = A·Wᵀ for one of a layer's weight matrices (layer.h) as stored: wt F32 (W float *,
 * mla__sgemm_wt) or F16/BF16 (W uint16_t *), n × k with rows contiguous (ldw = k). 16-bit
 * weights with fewer rows of A than kt->dot_weights_max_m are read in place by gemm_dot_src,
 * which converts them in registers; with more (prompts; every product in the portable table)
 * each panel of panel_rows rows of W is widened into panel (panel_rows × k floats) and BLIS
 * multiplies it. panel_rows: mla__wgemm_panel_rows for the same m, k (0: no panel needed).
 */
MLA_INTERNAL void mla__wgemm(const mla__attn_kernels *kt, mla__team tm, int64_t m, int64_t n,
                             int64_t k, const float *a, ptrdiff_t lda, const void *w,
                             mla_dtype wt, float *c, ptrdiff_t ldc, float *panel,
                             int64_t panel_rows);
MLA_INTERNAL int64_t mla__wgemm_panel_rows(const mla__attn_kernels *kt, mla_dtype wt, int64_t m,
                                           int64_t k);
/* One of a layer's weight matrices as stored (layer.h: float32, or 16-bit after
 * mla_layer_set_weight_dtype), from element off on: what mla__wgemm takes. */
static inline const void *mla__weights_at(const struct mla_layer *ly, const float *f32,
                                          const uint16_t *h, int64_t off)
{
    return ly->weight_dtype == MLA_DTYPE_F32 ? (const void *)(f32 + off) : (const void *)(h + off);
}

/* rows × k 16-bit weights (wt F16 or BF16, rows contiguous) widened into dst, exactly, on the
 * team's threads. */
MLA_INTERNAL void mla__widen16(mla__team tm, const uint16_t *w, mla_dtype wt, int64_t rows,
                               int64_t k, float *dst);
/* Rows of W per panel when a worker up-projects a tile over 16-bit weights (materialized.c). */
#define MLA_ATTN_UP_PANEL_ROWS 64

/* ---- rope.c ----------------------------------------------------------------------------------- */

/*
 * Rotate n vectors in place: vector t has heads × r values at x + t·ldx + h·r, head h using the
 * r/2 frequencies freqs + (h / group)·r/2, pair p = (p, p + r/2), angle pos[t]·scale·θ computed in
 * double (positions reach millions, where float angles lose whole radians).
 */
MLA_INTERNAL void mla__rope_rotate(float *x, ptrdiff_t ldx, int64_t n, const int64_t *pos,
                                   int32_t heads, int32_t group, int32_t r, const float *freqs,
                                   int32_t n_freq_heads, double scale, double *work);

/* ---- context.c: one sequence's cache as a table of spans ------------------------------------- */

typedef struct mla__seq_view {
    int64_t n_spans;
    mla_cache_span *spans;
    int64_t *start;              /* n_spans + 1 entries: token index of each span's first token */
} mla__seq_view;

/* Fill v (spans and start preallocated for max_spans entries). Errors: INTERNAL. */
MLA_INTERNAL mla_status mla__seq_view_load(const mla_cache *cache, int32_t layer, int32_t seq,
                                           int64_t max_spans, mla__seq_view *v);

/* Number of the sequence's tokens with position ≤ p (a prefix, as positions ascend). */
MLA_INTERNAL int64_t mla__seq_view_count_le(const mla__seq_view *v, int64_t p);

/* A tile: tokens [first, first+n) of a sequence, dequantized to float32. */
typedef struct mla__tile {
    int64_t n;
    float *latent;               /* n × latent_dim */
    float *rope;                 /* n × rope_width (NULL when rope_width is 0) */
    int64_t *pos;                /* n */
    int8_t *codes;               /* I4 latents: a tile's codes, unpacked by mla__rtile_map */
    /* 16-bit up projections of a tile with the kernel table's panel path: this worker's
     * MLA_ATTN_UP_PANEL_ROWS × max(lat_k, lat_v) floats (NULL where not needed). */
    float *wpanel;
} mla__tile;

MLA_INTERNAL void mla__tile_fill(const mla_cache_layer_format *fmt, const mla__seq_view *v,
                                 int64_t first, int64_t n, mla__tile *tile);

/* A tile read in place: tokens [first, first+n) as runs of rows of one span each (segments). */
typedef struct mla__seg {
    int64_t t;                   /* first token of the segment within the tile */
    int64_t n;
    mla__src latent, rope;       /* row 0 = the segment's first token */
    const int64_t *pos;          /* its n positions, in place (ascending through the tile) */
} mla__seg;

typedef struct mla__rtile {
    int64_t n, n_seg;
    mla__seg *seg;               /* up to tile_tokens entries */
} mla__rtile;

/* Rows of `width` float32 values as a source. */
MLA_INTERNAL mla__src mla__f32_src(const float *p, int64_t width);

/* The span of v holding token `first` (first < the view's token count). */
MLA_INTERNAL int64_t mla__span_of(const mla__seq_view *v, int64_t first);

/* Map tokens [first, first+n) of v to segments read in place. I4 latents, which the kernels do
 * not read, are unpacked to int8 codes in tile->codes and read as I8 with the spans' scales
 * (exactly the values mla__tile_fill gives). */
MLA_INTERNAL void mla__rtile_map(const mla_cache_layer_format *fmt, const mla__seq_view *v,
                                 int64_t first, int64_t n, mla__tile *tile, mla__rtile *rt);

/* nvis[t] = the tile's tokens at or before position p0 + t, for t < m. A binary search per
 * query over the positions in place: copying them and scanning every token cost 6-9% of a
 * SmolLM-135M d_kv 8 decode, whose F16 rows (96 bytes) are only 12 times a position. */
MLA_INTERNAL void mla__rtile_visible(const mla__rtile *rt, int64_t p0, int64_t m, int64_t *nvis);
/* The same over a float32 tile's positions (mla__tile_fill). */
MLA_INTERNAL void mla__tile_visible(const mla__tile *tile, int64_t p0, int64_t m, int64_t *nvis);

/* ---- the paths --------------------------------------------------------------------------------- */

/* A query block: m consecutive queries of one sequence, rows t0 .. t0+m−1 of the sorted batch. */
typedef struct mla__qblock {
    int64_t t0, m;
    int64_t p0;                  /* position of the first query */
    int64_t n_ctx;               /* cached tokens with position ≤ the last query's position */
    const mla__seq_view *view;
    int absorbed;                /* 1: absorbed path; 0: materialized (or MHA) */
    /* Materialized blocks of a chunk whose context is up-projected once for all its blocks
     * (forward.c, share_up): that context's keys and values, n_kv·d_h floats a token as the
     * per-tile up-projection lays them out, and its positions; else NULL. */
    const float *up_k, *up_v;
    int64_t *up_pos;
    double up_rows;              /* what up-projecting one of its tokens costs (materialized, not
                                  * shared), in query rows of attention over it */
} mla__qblock;

/* Partial softmax state of one query block over tokens [c0, c1) of its context. */
typedef struct mla__job {
    int64_t block;
    int64_t c0, c1;
    int64_t pairs;               /* (query, context token) pairs it attends: progress units */
    float *mx, *l;               /* m·n_h each, indexed by row (t, h) */
    float *o;                    /* m·n_h × dv rows, row stride ldo */
    ptrdiff_t ldo;
} mla__job;

/* Per-thread scratch for the job loops. */
typedef struct mla__work {
    mla__tile tile;              /* float32 tile (materialized path, many rows, I4) */
    mla__rtile rt;               /* the tile read in place */
    float *ct;                   /* transposed keys / latents of an in-place tile */
    float *s;                    /* scores / probabilities */
    float *kbuf, *vbuf;          /* materialized keys and values of a tile (MLA only) */
    float *qp;                   /* many-rows absorbed: the block's RoPE queries, rows × r */
    uint16_t *qb;                /* BF16 path: the block's queries rounded to bf16, in pairs */
    uint16_t *pb;                /* BF16 path: probabilities rounded to bf16, rows × tile */
    uint16_t *cv;                /* BF16 path: the tile's value latents, token pairs interleaved */
    int64_t *nvis;               /* per query token of the block */
} mla__work;

/* Everything a job reads: the layer, cache format, queries, tile size. */
typedef struct mla__ctx {
    const struct mla_layer *layer;
    const mla_cache_layer_format *fmt;
    const mla__attn_kernels *k;
    int32_t n_h, n_kv, g, d_h, r, nope, lat_k, lat_v, off_v; /* lat_k: R of the key part */
    int64_t tile_tokens;
    int64_t stream_bytes;        /* see MLA_ATTN_STREAM_BYTES */
    int stream_prefetch;         /* mla_attn's */
    int64_t thread_bytes;        /* cached bytes the call's jobs read, per thread running them:
                                  * whether the rows stay in the CPU's caches between calls */
    const float *qg;             /* materialized / MHA queries */
    const float *qt, *qrt;       /* absorbed queries, transposed, ld = ldq */
    int64_t ldq;
    const mla__qblock *blocks;
    int bf16;                    /* absorbed products in bf16 (mla__absorbed_bf16) */
    int keys16;                  /* latent and RoPE keys stored as one 16-bit type (F16 or
                                  * BF16): few-rows tiles transposed by load_t16 */
    int keys8;                   /* I8 latent keys: few-rows tiles transposed by load_t8, each
                                  * group's scores scaled after its sums (gemm_bc_i16s) */
    int bf16_few_rows;           /* few query rows take the bf16 products too (job_bf16; the
                                  * kernel table's bf16_few_rows_min_k), not the float32 loop */
} mla__ctx;

/* 1 when an absorbed block of `rows` query rows (tokens × heads) uses the rows as the vector
 * dimension (and a float32 tile), 0 when it reads the cache in place along the tokens. */
MLA_INTERNAL int mla__absorbed_rows_wide(int64_t rows);
/* 1 when the absorbed path multiplies in bf16 (vdpbf16ps where the CPU has it): the cache's
 * latent and RoPE keys are both stored as BF16 (the user chose bf16 precision) and the widths
 * split into whole pairs. Queries and probabilities are then rounded to bf16 (doc/attention.md,
 * "BF16 caches"); F32/F16/I8/I4 caches keep the float32 products. */
MLA_INTERNAL int mla__absorbed_bf16(const mla_cache_layer_format *fmt, int32_t lat_k,
                                    int32_t lat_v, int32_t r);
/* Bytes of cached rows (latents or values with their I8/I4 scales, RoPE parts or keys) that
 * n_jobs jobs read, per thread of the nt running them: whether the rows stay in the CPU's
 * caches from one call to the next, which decides the loops for rows out of DRAM (the MHA
 * baseline's streaming decode, the absorbed path's hints; MLA_ATTN_STREAM_BYTES). A batch of
 * sequences reads all of theirs in one call, though each job reads only its own. */
MLA_INTERNAL int64_t mla__attn_thread_bytes(const mla_cache_layer_format *f, const mla__job *jobs,
                                            int64_t n_jobs, int nt);
/* 1 when MLA_ATTN_PATH_AUTO takes the materialized path for a chunk of m query tokens after
 * len0 cached ones (crossover_tokens: the handle's parameter, 0 for the cost model;
 * bf16_native: the absorbed products are bf16 ones on vdpbf16ps or AMX tiles). */
MLA_INTERNAL int mla__attn_auto_materialized(int32_t crossover_tokens, int bf16_native,
                                             int64_t n_h, int64_t n_kv, int64_t d_h, int64_t r,
                                             int64_t lat_k, int64_t lat_v, int64_t len0,
                                             int64_t m);
MLA_INTERNAL void mla__absorbed_job(const mla__ctx *c, const mla__job *job, mla__work *w);
MLA_INTERNAL void mla__materialized_job(const mla__ctx *c, const mla__job *job, mla__work *w);
/* Tokens [first, first+n) of v up-projected (the materialized path's keys and values, rows of
 * n_kv·d_h floats at kb and vb) through tile, their positions copied to pos. */
MLA_INTERNAL void mla__materialized_up(const mla__ctx *c, const mla__seq_view *v, int64_t first,
                                       int64_t n, mla__tile *tile, float *kb, float *vb,
                                       int64_t *pos);

/*
 * How a forward's work is cut into jobs (forward.c). A chunk of m query tokens becomes
 * mla__chunk_blocks(m, qb) blocks of at most qb tokens, of equal size within one token; block i
 * starts at token mla__block_start(m, nb, i) of the chunk (i = nb gives m). Each block's context
 * is then split into mla__block_parts(n_blocks, nt) parts (split-K): the fewest that make the
 * jobs fill whole rounds of nt threads to within an eighth.
 */
MLA_INTERNAL int64_t mla__chunk_blocks(int64_t m, int64_t qb);
MLA_INTERNAL int64_t mla__block_start(int64_t m, int64_t nb, int64_t i);
MLA_INTERNAL int64_t mla__block_parts(int64_t n_blocks, int nt);
/* qb of a materialized (or MHA) chunk of m tokens on nt threads (forward.c, block_tokens):
 * causal, for a chunk at least as long as the context before it. */
MLA_INTERNAL int64_t mla__mat_block_tokens(int causal, int64_t m, int nt);
/* Where part k of np of block b's context ends (parts cover [0, n_ctx) in order; each ends on a
 * multiple of 16 tokens, the last at n_ctx): equal token counts, except that materialized blocks
 * of MLA_ATTN_SMALL_M queries or more cut equal shares of their work, the b->m queries seeing
 * all n_ctx − m tokens before them, the block's own token j seen by m − j of them, and every
 * token costing b->up_rows more. */
MLA_INTERNAL int64_t mla__block_part_end(const mla__qblock *b, int64_t k, int64_t np);

/* Merge job b's state into job a's (same block): log-sum-exp of the two partial softmaxes. */
MLA_INTERNAL void mla__softmax_merge(int64_t rows, int64_t dv, float *mx_a, float *l_a,
                                     float *o_a, ptrdiff_t ldo_a, const float *mx_b,
                                     const float *l_b, const float *o_b, ptrdiff_t ldo_b);

#endif /* MLA_ATTN_INTERNAL_H */

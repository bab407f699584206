/*
 * Per-layer decode time of MLA (absorbed path) against this library's MHA baseline, at several
 * context lengths, for SmolLM-135M and Llama-2-7B attention shapes, of one sequence or of
 * --batch N sequences decoding together (one call with a token for each; contexts where the
 * batch would cache more than 65536 tokens are left out); the absorbed/materialized
 * crossover for prefill chunks (--crossover: a chunk of m tokens after --ctx cached ones, default
 * 4096, 0 for a fresh prompt; d_kv --dkv, default 16; beside each m the path AUTO takes); and
 * the prefill of fresh prompts of 512, 2048 and 4096 tokens (--prefill: the whole forward on
 * path AUTO, MLA against the MHA baseline, GFLOP/s against the sgemm rate); and the scratch
 * memory a fresh 4096-token prompt keeps in the attention handle (--scratch: in one call, under
 * max_scratch_bytes limits, and in chunks, each with its time); and each layer with float32
 * weights against its weight matrices in 16 bits (--weights bf16|f16: a decode after --ctx
 * tokens, default 4096, and fresh prompts of 64 and 2048, in alternation); and decodes beside
 * other busy threads (--sharing: alone, on one thread, two decoders at once in this process and
 * in two, beside a spinning thread, and between an OpenMP host's loops, each on the handle's
 * pool and on OpenMP's threads, as the mean over a time window; doc/attention.md, "Threads").
 * Prints the machine's measured roofs beside every figure.
 *
 *   bench_decode [--quick] [--threads N] [--crossover] [--prefill] [--scratch] [--sharing]
 *                [--shape NAME] [--ctx N] [--mha] [--mla] [--dkv 8|16|32]
 *                [--dtype f16|bf16|f32|i8|i4]
 *                [--group N] [--batch N] [--weights bf16|f16] [--reps N] [--rounds N]
 *
 * --quick: a short run (d_kv 16 and contexts 1K and 4K, unless --dkv or --ctx names others;
 * fewer decodes per figure, smaller roof readings). --shape keeps the shapes whose name starts
 * with NAME (e.g. "smol", "llama"), --ctx one context length (for profiling one case; with
 * --prefill and --scratch one prompt length, of any size), --mha only the MHA baseline, --mla
 * only the MLA layers, --dkv one MLA d_kv (8, 16 or 32); --dtype the cache's storage type for
 * latent and RoPE part, MHA and MLA alike
 * (default f16; with bf16 the absorbed path multiplies in bf16, doc/attention.md); i8 and i4
 * quantize the MLA latents only (groups of --group values, default the cache's choice for
 * quant_group 0: the largest power of two up to 32 that divides the latent width; f32 scales),
 * their RoPE part and the MHA baseline's
 * cache staying f16: MLA over a quantized cache against the original model's f16 one; --reps the
 * decodes per figure (default 9, or as many as fit in 50 ms up to 400 for short decodes; many,
 * for `perf record` of one case); --rounds the passes over
 * the whole table, each figure from the pass in which it was fastest, with the fixed cost
 * measured next to it in that pass (the machine is shared: its speed drifts by tens of percent
 * between passes, and other processes only ever add time), against the highest reading of each
 * roof over the passes (for the same reason: a roof measured while another guest held a core
 * read 58 GFLOP/s against 198, and made a figure look twice as fast as it was).
 *
 * Weights and cached values are random: time does not depend on them. The cache is filled with
 * mla_cache_write directly (a real prefill of 32K tokens through an MHA layer would take hours of
 * the benchmark's time), then one token at a time is decoded at position ctx and removed again.
 * "attn" columns subtract the fixed cost (projections, measured at context 16 in alternation
 * with the decodes at the context, the fastest of each) so that the context-dependent work is
 * compared to the roofs: its flops 2·n_h·(2R + r) per cached token for MLA and 4·n_h·d_h for
 * MHA, its bytes those of the cached tokens (as stored). The read roof of a figure is a sum over
 * a buffer as large as those cached bytes (at most 256 MiB; roofs.c: the widest loads, each
 * thread's part in order and in 8 runs side by side, the best of both), each timed pass after
 * a read of as many other bytes as the layer has weights: a decode streams its weights (the
 * projections) between two reads of the cache, so a cache that stays in L2/L3 beside them is
 * compared with what L2/L3 deliver, and one the weights push out with DRAM. "atRoofs" is what
 * "vsMHA" would be if both layers' attention ran at the MLA figure's roofs (each at the slower
 * of its flops and its bytes, the bytes at the read roof of its own cache's size;
 * every product at the measured sgemm rate, the only multiply roof measured: bf16 ones run
 * slower than it on some CPUs, far faster on AMX), each with its own measured fixed cost: how
 * far the machine lets MLA beat the baseline. "bound" says which of the two binds the layer
 * itself at its roofs (flops or bytes, reckoned the same way), "%roof" how much of that roof its
 * attention reached (the time at the roofs over the measured attention time).
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mla/mla.h>

#include "roofs.h"

typedef struct shape {
    const char *name;
    int d, n_h, n_kv, d_h, r;
} shape;

static const shape shapes[] = {
    {"SmolLM-135M", 576, 9, 3, 64, 8},
    {"Llama-2-7B", 4096, 32, 32, 128, 4},
};

static const char *only_shape; /* --shape */
static int64_t only_ctx;        /* --ctx */
static int ctx_given;           /* --ctx was given (--crossover: 0 is a fresh prompt) */
static int only_mha;            /* --mha */
static int only_mla;            /* --mla */
static int only_dkv;            /* --dkv */
static int reps_opt;            /* --reps */
static mla_dtype cache_dtype = MLA_DTYPE_F16; /* --dtype: every cached value, or the f16 rest */
static mla_dtype latent_quant;                 /* --dtype i8|i4: the MLA latents' type, else 0 */
static int group_opt;                          /* --group */
static int batch = 1;                          /* --batch: sequences decoding together */

/* Values per scale of a quantized latent of width L, for the byte count: --group, else the
 * cache's own choice for quant_group 0 (filled_cache checks that they agree). */
static int quant_group(int64_t L)
{
    if (group_opt > 0)
        return group_opt;
    int g = 32;
    while (L % g)
        g /= 2;
    return g;
}

static unsigned long long rng = 88172645463325252ULL;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static float *rand_buf(size_t n, float scale)
{
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "out of memory (%zu floats)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = scale * frand();
    return p;
}

static void die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, mla_last_error());
    exit(1);
}

static mla_geometry geometry(const shape *s)
{
    mla_geometry g;
    mla_geometry_default_params(&g, sizeof g);
    g.d_model = s->d;
    g.n_heads = s->n_h;
    g.n_kv_heads = s->n_kv;
    g.head_dim = s->d_h;
    return g;
}

static mla_layer *mha_layer(const shape *s)
{
    mla_geometry g = geometry(s);
    size_t qr = (size_t)s->n_h * s->d_h, kr = (size_t)s->n_kv * s->d_h;
    float sc = 1.0f / (float)s->d;
    float *wq = rand_buf(qr * s->d, sc), *wk = rand_buf(kr * s->d, sc);
    float *wv = rand_buf(kr * s->d, sc), *wo = rand_buf(qr * s->d, sc);
    mla_layer_weights w;
    mla_layer_weights_default_params(&w, sizeof w);
    w.wq = wq;
    w.wk = wk;
    w.wv = wv;
    w.wo = wo;
    mla_layer *l = NULL;
    if (mla_layer_from_mha(&g, &w, &l) != MLA_OK)
        die("mla_layer_from_mha");
    free(wq);
    free(wk);
    free(wv);
    free(wo);
    return l;
}

/* An MLA layer of the shape with random factors (an SVD of a 7B layer would take minutes). */
static mla_layer *mla_layer_random(const shape *s, int d_kv)
{
    mla_geometry g = geometry(s);
    int64_t R = (int64_t)d_kv * s->n_kv, n = s->d_h - s->r, qr = (int64_t)s->n_h * s->d_h;
    float sc = 1.0f / (float)s->d;
    mla_tensor t[7];
    memset(t, 0, sizeof t);
    const char *names[6] = {"q_proj.weight", "k_r_proj.weight", "kv_proj.down_kv.weight",
                            "kv_proj.up_k.weight", "kv_proj.up_v.weight", "o_proj.weight"};
    int64_t rows[6] = {qr, (int64_t)s->n_kv * s->r, R, s->n_kv * n, (int64_t)s->n_kv * s->d_h,
                       s->d};
    int64_t cols[6] = {s->d, s->d, s->d, R, R, qr};
    for (int i = 0; i < 6; i++) {
        t[i].name = names[i];
        t[i].dtype = MLA_DTYPE_F32;
        t[i].ndim = 2;
        t[i].shape[0] = rows[i];
        t[i].shape[1] = cols[i];
        t[i].shape[2] = t[i].shape[3] = 1;
        t[i].data = rand_buf((size_t)(rows[i] * cols[i]), sc);
    }
    /* The HIGH strategy's dims: frequencies 0 .. r/2−1 and their partners. */
    int32_t *dims = malloc((size_t)s->n_kv * s->r * sizeof *dims);
    for (int j = 0; j < s->n_kv; j++)
        for (int k = 0; k < s->r; k++)
            dims[j * s->r + k] = k < s->r / 2 ? k : s->d_h / 2 + k - s->r / 2;
    t[6].name = "rope_dims";
    t[6].dtype = MLA_DTYPE_I32;
    t[6].ndim = 2;
    t[6].shape[0] = s->n_kv;
    t[6].shape[1] = s->r;
    t[6].shape[2] = t[6].shape[3] = 1;
    t[6].data = dims;
    mla_layer *l = NULL;
    if (mla_layer_from_tensors(&g, s->r, d_kv, t, 7, &l) != MLA_OK)
        die("mla_layer_from_tensors");
    for (int i = 0; i < 7; i++)
        free((void *)t[i].data);
    return l;
}

/* A cache of n_seq sequences (0 .. n_seq−1) of ctx tokens each (room for extra more each) for
 * layer l; mla: an MLA layer, whose latents take --dtype i8|i4 (the MHA baseline's cache never
 * does). */
static mla_cache *filled_cache(mla_layer *l, int mla, int n_seq, int64_t ctx, int64_t extra)
{
    mla_cache_layer_desc desc;
    if (mla_layer_cache_desc(l, &desc, sizeof desc) != MLA_OK)
        die("mla_layer_cache_desc");
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 1;
    p.layers = &desc;
    p.latent_dtype = mla && latent_quant ? latent_quant : cache_dtype;
    p.rope_dtype = cache_dtype;
    p.quant_group = group_opt;
    p.capacity_tokens = n_seq * (ctx + extra + 64);
    p.n_seq_max = n_seq > 2 ? n_seq : 2;
    mla_cache *c = NULL;
    mla_cache_stats st;
    if (mla_cache_create(&p, &c) != MLA_OK || mla_cache_get_stats(c, &st, sizeof st) != MLA_OK)
        die("mla_cache_create");
    if (mla && latent_quant && st.quant_group != quant_group(desc.latent_dim))
        die("the cache's quant_group differs from the byte count's");
    int64_t L = desc.latent_dim, W = (int64_t)desc.rope_heads * desc.rope_dim, chunk = 1024;
    float *lat = rand_buf((size_t)(chunk * L), 1.0f), *rope = rand_buf((size_t)(chunk * W + 1), 1.0f);
    for (int32_t sq = 0; sq < n_seq; sq++)
        for (int64_t p0 = 0; p0 < ctx; p0 += chunk) {
            int64_t n = ctx - p0 < chunk ? ctx - p0 : chunk;
            if (mla_cache_write(c, 0, sq, p0, n, lat, W ? rope : NULL) != MLA_OK)
                die("mla_cache_write");
        }
    free(lat);
    free(rope);
    return c;
}

/* Seconds of one forward of m tokens at positions pos (from ctx on) of sequences 0 .. n_seq−1
 * of ctx tokens each, removed again afterwards. */
static double forward_once(mla_attn *a, mla_layer *l, mla_cache *c, const float *x, int64_t m,
                           const int32_t *seq, const int64_t *pos, float *out, int n_seq,
                           int64_t ctx)
{
    double t0 = roofs_now();
    if (mla_attn_forward(a, l, c, 0, x, m, seq, pos, out) != MLA_OK)
        die("mla_attn_forward");
    double dt = roofs_now() - t0;
    for (int32_t sq = 0; sq < n_seq; sq++)
        if (mla_cache_seq_rm(c, sq, ctx, -1) != MLA_OK)
            die("mla_cache_seq_rm");
    return dt;
}

/* The median of t[0 .. n−1] (sorted in place). */
static double median(double *t, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double s = t[j];
            t[j] = t[j - 1];
            t[j - 1] = s;
        }
    return t[n / 2];
}

/* Seconds of forwarding m tokens at positions ctx .. ctx+m−1 of a ctx-token sequence, in calls
 * of at most q tokens, removed again after each run: the median over reps runs after a warm-up
 * (the crossover table compares two paths run one after the other); negative if a call failed
 * (its error left in mla_last_error). */
static double time_chunks(mla_attn *a, mla_layer *l, mla_cache *c, int d, int64_t ctx, int64_t m,
                          int64_t q, int reps)
{
    float *x = rand_buf((size_t)(m * d), 1.0f), *out = malloc((size_t)(m * d) * sizeof *out);
    int32_t *seq = calloc((size_t)m, sizeof *seq);
    int64_t *pos = malloc((size_t)m * sizeof *pos);
    for (int64_t i = 0; i < m; i++)
        pos[i] = ctx + i;
    double t[64];
    int kept = reps < 64 ? reps : 64, failed = 0; /* more runs only for profiling: 64 count */
    for (int r = 0; r <= reps && !failed; r++) {
        double t0 = roofs_now();
        for (int64_t p0 = 0; p0 < m && !failed; p0 += q) {
            int64_t n = m - p0 < q ? m - p0 : q;
            failed = mla_attn_forward(a, l, c, 0, x + p0 * d, n, seq, pos + p0, out) != MLA_OK;
        }
        if (r > 0 && r <= kept)
            t[r - 1] = roofs_now() - t0; /* the first run warms up scratch memory and threads */
        if (mla_cache_seq_rm(c, 0, ctx, -1) != MLA_OK)
            die("mla_cache_seq_rm");
    }
    free(x);
    free(out);
    free(seq);
    free(pos);
    return failed ? -1.0 : median(t, kept);
}

static double time_forward(mla_attn *a, mla_layer *l, mla_cache *c, int d, int64_t ctx, int64_t m,
                           int reps)
{
    double t = time_chunks(a, l, c, d, ctx, m, m, reps);
    if (t < 0)
        die("mla_attn_forward");
    return t;
}

/* max_scratch_bytes limit: 0 for none; runtime: whose threads (--sharing) */
static mla_attn *attn_make(int threads, mla_attn_path path, int64_t limit,
                           mla_attn_threads runtime)
{
    mla_attn_params p;
    mla_attn_default_params(&p, sizeof p);
    p.n_threads = threads;
    p.path = path;
    p.max_scratch_bytes = limit;
    p.threads = runtime;
    mla_attn *a = NULL;
    if (mla_attn_create(&p, &a) != MLA_OK)
        die("mla_attn_create");
    return a;
}

static mla_attn *attn_limited(int threads, mla_attn_path path, int64_t limit)
{
    return attn_make(threads, path, limit, MLA_ATTN_THREADS_POOL);
}

static mla_attn *attn_new(int threads, mla_attn_path path)
{
    return attn_limited(threads, path, 0);
}

/*
 * The fastest of reps decodes at context 16 (the fixed cost: projections) and at ctx, taken in
 * alternation, so that the two figures subtracted from each other come from the same seconds of
 * a machine whose speed drifts (measured one after the other, a 2× drift between them made
 * "attn" negative or several times the roof). A decode is one call with a token for each of
 * the --batch sequences.
 */
#define PAIR_BUDGET_S 0.05
#define PAIR_MAX 400

static void decode_pair(mla_layer *l, int mla, int d, int64_t ctx, int threads, int reps,
                        double *fixed, double *t)
{
    mla_cache *c16 = filled_cache(l, mla, batch, 16, 1), *c = filled_cache(l, mla, batch, ctx, 1);
    mla_attn *a = attn_new(threads, MLA_ATTN_PATH_AUTO);
    float *x = rand_buf((size_t)d * batch, 1.0f), *out = malloc((size_t)d * batch * sizeof *out);
    int32_t *seq = malloc((size_t)batch * sizeof *seq);
    int64_t *p16 = malloc((size_t)batch * sizeof *p16), *pctx = malloc((size_t)batch * sizeof *pctx);
    if (!out || !seq || !p16 || !pctx)
        die("out of memory");
    for (int i = 0; i < batch; i++) {
        seq[i] = i;
        p16[i] = 16;
        pctx[i] = ctx;
    }
    *fixed = *t = INFINITY;
    for (int r = 0; r <= reps; r++) {
        double f = forward_once(a, l, c16, x, batch, seq, p16, out, batch, 16);
        double v = forward_once(a, l, c, x, batch, seq, pctx, out, batch, ctx);
        if (r == 0) {
            /* The first pair warms up scratch memory and threads. Without --reps, short
             * decodes get as many pairs as fit in PAIR_BUDGET_S: the fastest of 9 decodes of
             * 0.15 ms moved by tens of percent between runs on a shared machine. */
            if (reps_opt <= 0 && f + v > 0 && reps < PAIR_BUDGET_S / (f + v))
                reps = PAIR_BUDGET_S / (f + v) < PAIR_MAX ? (int)(PAIR_BUDGET_S / (f + v))
                                                           : PAIR_MAX;
            continue;
        }
        *fixed = fmin(*fixed, f);
        *t = fmin(*t, v);
    }
    free(x);
    free(out);
    free(seq);
    free(p16);
    free(pctx);
    mla_attn_destroy(a);
    mla_cache_destroy(c);
    mla_cache_destroy(c16);
}

/* Layers of the decode table per shape: the MHA baseline, then MLA at each d_kv. */
#define N_SHAPES (sizeof shapes / sizeof shapes[0])
#define N_CTX 4
static const int64_t ctxs[N_CTX] = {1024, 4096, 16384, 32768};
static const int dkvs[] = {8, 16, 32};
/* --batch leaves out the contexts where the batch would cache more tokens than this (Llama-2-7B's
 * MHA baseline: 1 GiB over F16). */
#define MAX_BATCH_TOKENS 65536
#define N_LAYERS (1 + sizeof dkvs / sizeof dkvs[0])

/* One decode figure: the time and fixed cost from the round whose decode was fastest (a time is
 * compared with the fixed cost measured next to it, never with another round's), and the
 * highest reading of each roof over the rounds (a roof is what the machine can do; a low
 * reading is interference, which would flatter the figure). */
typedef struct cell {
    double t;     /* seconds per decode at the context; 0: not measured */
    double fixed; /* the same layer at context 16, measured in alternation with t */
    double gf;    /* sgemm GFLOP/s, measured before the layer */
    double gb;    /* read GB/s over this layer's cached bytes, measured just before the decode */
    double gb_mha; /* the same over the MHA baseline's cached bytes (for atRoofs) */
} cell;
static cell dec[N_SHAPES][N_LAYERS][N_CTX];

/* Bytes per cached value of the run's cache type. */
static double elem_bytes(void)
{
    return cache_dtype == MLA_DTYPE_F32 ? 4.0 : 2.0;
}

/* The context-dependent work of layer li (0: MHA) at context ctx: flops and cached bytes of a
 * decode (of all --batch sequences). */
static void layer_cost(const shape *s, size_t li, double ctx, double *flops, double *bytes)
{
    double eb = elem_bytes();
    ctx *= batch;
    if (li == 0) {
        *flops = 4.0 * s->n_h * s->d_h * ctx;
        *bytes = 2.0 * s->n_kv * s->d_h * eb * ctx;
        return;
    }
    int64_t R = (int64_t)dkvs[li - 1] * s->n_kv;
    *flops = 2.0 * s->n_h * (2.0 * R + s->r) * ctx;
    double lat = latent_quant ? R * (latent_quant == MLA_DTYPE_I8 ? 1.0 : 0.5) +
                                    4.0 * (double)(R / quant_group(R))
                              : (double)R * eb;
    *bytes = (lat + (double)s->n_kv * s->r * eb) * ctx;
}

/* The time layer li's attention takes at the roofs gf (GFLOP/s) and gb (GB/s over its own cached
 * bytes): the slower of its flops and its bytes. *flops_bound says which of the two it is. */
static double roof_time(const shape *s, size_t li, double ctx, double gf, double gb,
                        int *flops_bound)
{
    double fl, by;
    layer_cost(s, li, ctx, &fl, &by);
    double tf = fl / (gf * 1e9), tb = by / (gb * 1e9);
    if (flops_bound)
        *flops_bound = tf >= tb;
    return fmax(tf, tb);
}

/* The read roof over a buffer of `bytes` (cached bytes of one layer), at most `cap`, read after
 * `weights` bytes of other memory. */
static double read_roof(int threads, double bytes, size_t cap, size_t weights)
{
    size_t b = bytes < (double)cap ? (size_t)bytes : cap;
    return roofs_read_after_gbps(threads, b < 4096 ? 4096 : b, weights);
}

/* Bytes of a layer's tensors: what one decode reads besides the cache. */
static size_t weight_bytes(const mla_layer *l)
{
    mla_layer_info info;
    if (mla_layer_get_info(l, &info, sizeof info) != MLA_OK)
        die("mla_layer_get_info");
    size_t total = 0;
    for (int32_t i = 0; i < info.n_tensors; i++) {
        mla_tensor t;
        if (mla_layer_tensor(l, i, &t) != MLA_OK)
            die("mla_layer_tensor");
        size_t n = 1;
        for (int32_t k = 0; k < t.ndim; k++)
            n *= (size_t)t.shape[k];
        /* The layer's tensors are F32 weights and I32 rope_dims. */
        total += n * (t.dtype == MLA_DTYPE_F64 ? 8 : t.dtype == MLA_DTYPE_F16 ||
                                                     t.dtype == MLA_DTYPE_BF16 ? 2 : 4);
    }
    return total;
}

/* The MHA baseline's weights (mha_layer: W_q, W_k, W_v, W_o in float32). */
static size_t mha_weight_bytes(const shape *s)
{
    return 4 * (size_t)s->d * (2 * (size_t)s->n_h + 2 * (size_t)s->n_kv) * (size_t)s->d_h;
}

/* --shape: the shapes whose name starts with it (all without it). */
static int want_shape(const shape *s)
{
    return !only_shape || strncasecmp(s->name, only_shape, strlen(only_shape)) == 0;
}

static int want_layer(int quick, size_t li)
{
    if (li == 0)
        return !only_mla;
    int dkv = dkvs[li - 1];
    /* --quick: d_kv 16 only, unless --dkv names another. */
    return !((quick && !only_dkv && dkv != 16) || only_mha || (only_dkv && dkv != only_dkv));
}

static void note_range(double v, double *lo, double *hi)
{
    *lo = *lo == 0 || v < *lo ? v : *lo;
    *hi = v > *hi ? v : *hi;
}

/* One round of every decode figure (each the minimum of `reps` decodes), folded into dec. */
static void decode_round(int quick, int threads)
{
    int n_ctx = quick && !ctx_given ? 2 : N_CTX, reps = reps_opt > 0 ? reps_opt : quick ? 3 : 9;
    size_t bw_cap = (size_t)(quick ? 64 : 256) << 20; /* far beyond the 32 MiB L3 */
    for (size_t si = 0; si < N_SHAPES; si++) {
        const shape *s = &shapes[si];
        if (!want_shape(s))
            continue;
        for (size_t li = 0; li < N_LAYERS; li++) {
            if (!want_layer(quick, li))
                continue;
            mla_layer *l = li == 0 ? mha_layer(s) : mla_layer_random(s, dkvs[li - 1]);
            size_t wb = weight_bytes(l);
            double gf = roofs_sgemm_gflops(threads, quick ? 1024 : 2048);
            for (int ci = 0; ci < n_ctx; ci++) {
                if ((only_ctx && ctxs[ci] != only_ctx) || batch * ctxs[ci] > MAX_BATCH_TOKENS)
                    continue;
                double fl, by, mfl, mby;
                layer_cost(s, li, (double)ctxs[ci], &fl, &by);
                layer_cost(s, 0, (double)ctxs[ci], &mfl, &mby);
                double gb = read_roof(threads, by, bw_cap, wb);
                double gb_mha = li == 0 ? gb : read_roof(threads, mby, bw_cap, mha_weight_bytes(s));
                if (!(gf > 0 && gb > 0 && gb_mha > 0))
                    die("roofs: out of memory for the measurement buffers");
                double fixed, t;
                decode_pair(l, li > 0, s->d, ctxs[ci], threads, reps, &fixed, &t);
                cell *c = &dec[si][li][ci];
                if (c->t == 0 || t < c->t) {
                    c->t = t;
                    c->fixed = fixed;
                }
                c->gf = fmax(c->gf, gf);
                c->gb = fmax(c->gb, gb);
                c->gb_mha = fmax(c->gb_mha, gb_mha);
            }
            mla_layer_destroy(l);
        }
    }
}

static void decode_table(int threads, int rounds)
{
    double gf_lo = 0, gf_hi = 0, gb_lo = 0, gb_hi = 0; /* the roofs of the table's figures */
    for (size_t si = 0; si < N_SHAPES; si++)
        for (size_t li = 0; li < N_LAYERS; li++)
            for (int ci = 0; ci < N_CTX; ci++)
                if (dec[si][li][ci].t > 0) {
                    note_range(dec[si][li][ci].gf, &gf_lo, &gf_hi);
                    note_range(dec[si][li][ci].gb, &gb_lo, &gb_hi);
                }
    char what[200];
    if (latent_quant && group_opt)
        snprintf(what, sizeof what, "%s MLA latents (one f32 scale per %d values), f16 RoPE part "
                 "and MHA baseline", mla_dtype_name(latent_quant), group_opt);
    else if (latent_quant)
        snprintf(what, sizeof what, "%s MLA latents (one f32 scale per group: the largest power "
                 "of two up to 32 dividing the latent width), f16 RoPE part and MHA baseline",
                 mla_dtype_name(latent_quant));
    else
        snprintf(what, sizeof what, "%s", mla_dtype_name(cache_dtype));
    char seqs[96] = "one token";
    if (batch > 1)
        snprintf(seqs, sizeof seqs, "one call with a token for each of %d sequences of ctx tokens "
                 "(tok/s all of them)", batch);
    printf("\n## decode, %s, %d thread(s), %s cache, fastest of %d round(s); attn = time "
           "minus the fixed cost at context 16 measured in alternation with it; %% of the "
           "highest roofs measured next to it over the rounds (sgemm %.1f-%.1f GFLOP/s; read, "
           "over as many bytes as the layer caches, at most 256 MiB, after as many as it has "
           "weights: %.1f-%.1f GB/s)\n", seqs, threads,
           what, rounds, gf_lo, gf_hi, gb_lo, gb_hi);
    printf("%-12s %-9s %6s %9s %9s %8s %8s %7s %7s %5s %6s %6s %7s %7s %6s\n", "shape", "layer",
           "ctx", "ms", "tok/s", "attnGF/s", "attnGB/s", "%sgemm", "%bw", "bound", "%roof",
           "vsMHA", "atRoofs", "sgemmGF", "readGB");
    for (size_t si = 0; si < N_SHAPES; si++) {
        const shape *s = &shapes[si];
        for (size_t li = 0; li < N_LAYERS; li++)
            for (int ci = 0; ci < N_CTX; ci++) {
                const cell *c = &dec[si][li][ci];
                if (c->t == 0)
                    continue;
                double ctx = (double)ctxs[ci], at = c->t - c->fixed;
                double fl, by;
                layer_cost(s, li, ctx, &fl, &by);
                char lname[16];
                if (li == 0)
                    snprintf(lname, sizeof lname, "MHA");
                else
                    snprintf(lname, sizeof lname, "MLA d%d", dkvs[li - 1]);
                char vs[16] = "", at_roofs[16] = "";
                const cell *mc = &dec[si][0][ci];
                if (li > 0 && mc->t > 0) {
                    snprintf(vs, sizeof vs, "%5.2fx", mc->t / c->t);
                    /* vsMHA if both layers' attention ran at this cell's roofs, each with its
                     * own measured fixed cost: what the machine allows. */
                    double t_mha = mc->fixed + roof_time(s, 0, ctx, c->gf, c->gb_mha, NULL);
                    double t_mla = c->fixed + roof_time(s, li, ctx, c->gf, c->gb, NULL);
                    snprintf(at_roofs, sizeof at_roofs, "%5.2fx", t_mha / t_mla);
                }
                /* Which roof binds this layer, and the fraction of it reached: the goals
                 * are 50% where the flops bind, 80% where the bytes do. */
                int fb;
                double roof_pct = 100 * roof_time(s, li, ctx, c->gf, c->gb, &fb) / at;
                printf("%-12s %-9s %6lld %9.3f %9.1f %8.1f %8.1f %6.0f%% %6.0f%% %5s %5.0f%% %6s "
                       "%7s %7.1f %6.1f\n",
                       s->name, lname, (long long)ctxs[ci], c->t * 1e3, batch / c->t,
                       fl / at * 1e-9, by / at * 1e-9, 100 * fl / at * 1e-9 / c->gf,
                       100 * by / at * 1e-9 / c->gb, fb ? "flops" : "bytes", roof_pct, vs, at_roofs,
                       c->gf, c->gb);
            }
    }
}

/* The path MLA_ATTN_PATH_AUTO takes by default for a chunk of m tokens after len0 cached ones
 * of MLA layer li (≥ 1): doc/attention.md's cost model, restated here (tests/attn/test_handle.c
 * checks that the library computes the same), with its weight of 0.9, or 1.8 where a BF16
 * cache's absorbed products run on vdpbf16ps or AMX tiles (mla_build_info names them). */
static int auto_materialized(const shape *s, size_t li, double len0, double m)
{
    const char *info = mla_build_info();
    int bf16_native = cache_dtype == MLA_DTYPE_BF16 && !latent_quant &&
                      (strstr(info, "bf16 products: vdpbf16ps") ||
                       strstr(info, "bf16 products: amx"));
    double w = bf16_native ? 1.8 : 0.9;
    double lat = (double)dkvs[li - 1] * s->n_kv, d_h = s->d_h, r = s->r;
    if (2 * lat + r <= 2 * d_h)
        return 0;
    double pairs = m * len0 + m * (m + 1) / 2, up = (d_h - r) * lat + d_h * lat;
    double absorbed = s->n_h * ((2 * lat + r) * pairs + m * up);
    double materialized = s->n_kv * (len0 + m) * up + 2 * s->n_h * d_h * pairs;
    return w * materialized < absorbed;
}

/* Flops of a fresh prefill of m tokens through layer li (0: MHA), the whole forward: the
 * projections and the causal attention's m(m+1)/2 query-key pairs, on the path AUTO takes. */
static double prefill_flops(const shape *s, size_t li, double m, const char **path_name)
{
    double d = s->d, n_h = s->n_h, n_kv = s->n_kv, d_h = s->d_h, r = s->r;
    double pairs = m * (m + 1) / 2;
    if (li == 0) {
        *path_name = "-";
        return 2 * m * d * (2 * n_h * d_h + 2 * n_kv * d_h) + 4 * n_h * d_h * pairs;
    }
    double lat = (double)dkvs[li - 1] * n_kv, up = (d_h - r) * lat + d_h * lat;
    double proj = 2 * m * d * (n_h * d_h + n_kv * r + lat) + 2 * m * n_h * d_h * d;
    if (auto_materialized(s, li, 0, m)) {
        *path_name = "material.";
        return proj + 2 * m * n_kv * up + 4 * n_h * d_h * pairs;
    }
    *path_name = "absorbed";
    return proj + 2 * m * n_h * up + 2 * n_h * (2 * lat + r) * pairs;
}

/* A fresh prompt of m tokens through one layer: the MHA baseline and MLA at each d_kv, path
 * AUTO; the median of --reps prefills (default 3, 1 with --quick) after a warm-up, against the
 * sgemm rate measured before each figure. */
static void bench_prefill(int quick, int threads)
{
    int64_t ms[] = {512, 2048, 4096};
    enum { N_M = sizeof ms / sizeof ms[0] };
    if (ctx_given) /* --ctx: that one prompt length */
        ms[0] = ms[1] = ms[2] = only_ctx;
    int reps = reps_opt > 0 ? reps_opt : quick ? 1 : 3;
    /* Printed at the end, against the highest sgemm reading of the run (a reading taken while
     * another guest held a core would flatter the figures next to it: 108 GFLOP/s against
     * 206 once put a prefill at 144% of sgemm). */
    struct {
        const char *shape, *path;
        char layer[16], vs[16];
        int64_t m;
        double t, fl, gf;
    } row[N_SHAPES * N_LAYERS * N_M];
    int n_rows = 0;
    double gf_max = 0;
    for (size_t si = 0; si < N_SHAPES; si++) {
        const shape *s = &shapes[si];
        if (!want_shape(s))
            continue;
        double t_mha[N_M] = {0};
        for (size_t li = 0; li < N_LAYERS; li++) {
            if (!want_layer(quick, li))
                continue;
            mla_layer *l = li == 0 ? mha_layer(s) : mla_layer_random(s, dkvs[li - 1]);
            mla_attn *a = attn_new(threads, MLA_ATTN_PATH_AUTO);
            for (size_t mi = 0; mi < N_M; mi++) {
                if ((quick && ms[mi] > 512 && !ctx_given) || (ctx_given && mi > 0))
                    continue;
                double gf = roofs_sgemm_gflops(threads, quick ? 1024 : 2048);
                gf_max = fmax(gf_max, gf);
                mla_cache *c = filled_cache(l, li > 0, 1, 0, ms[mi]);
                double t = time_forward(a, l, c, s->d, 0, ms[mi], reps);
                mla_cache_destroy(c);
                const char *path;
                double fl = prefill_flops(s, li, (double)ms[mi], &path);
                row[n_rows].vs[0] = '\0';
                if (li == 0) {
                    snprintf(row[n_rows].layer, sizeof row[n_rows].layer, "MHA");
                    t_mha[mi] = t;
                } else {
                    snprintf(row[n_rows].layer, sizeof row[n_rows].layer, "MLA d%d",
                             dkvs[li - 1]);
                    if (t_mha[mi] > 0)
                        snprintf(row[n_rows].vs, sizeof row[n_rows].vs, "%5.2fx", t_mha[mi] / t);
                }
                row[n_rows].shape = s->name;
                row[n_rows].path = path;
                row[n_rows].m = ms[mi];
                row[n_rows].t = t;
                row[n_rows].fl = fl;
                row[n_rows].gf = gf;
                n_rows++;
                fprintf(stderr, "%s %s %lld tokens: %.2f ms\n", s->name,
                        row[n_rows - 1].layer, (long long)ms[mi], t * 1e3);
            }
            mla_attn_destroy(a);
            mla_layer_destroy(l);
        }
    }
    printf("\n## prefill of a fresh prompt, one layer, %d thread(s), %s cache, path AUTO; median "
           "of %d after a warm-up; GFLOP/s of the whole forward (projections and causal "
           "attention) against the highest sgemm reading of the run, %.1f GFLOP/s (sgemmGF: "
           "the reading taken before the figure)\n", threads,
           mla_dtype_name(latent_quant ? latent_quant : cache_dtype), reps, gf_max);
    printf("%-12s %-9s %6s %-9s %10s %9s %8s %7s %6s %7s\n", "shape", "layer", "tokens", "path",
           "ms", "tok/s", "GFLOP/s", "%sgemm", "vsMHA", "sgemmGF");
    for (int i = 0; i < n_rows; i++)
        printf("%-12s %-9s %6lld %-9s %10.2f %9.0f %8.1f %6.0f%% %6s %7.1f\n", row[i].shape,
               row[i].layer, (long long)row[i].m, row[i].path, row[i].t * 1e3,
               (double)row[i].m / row[i].t, row[i].fl / row[i].t * 1e-9,
               100 * row[i].fl / row[i].t * 1e-9 / gf_max, row[i].vs, row[i].gf);
}


/*
 * The memory a fresh prompt's prefill keeps in the handle's scratch, and what less costs: the
 * prompt in one call without a limit; then under max_scratch_bytes one byte below the scratch
 * the previous row kept, down to the need the CAPACITY error names; then sent in chunks.
 */
static void bench_scratch(int quick, int threads)
{
    int64_t m = ctx_given ? only_ctx : quick ? 1024 : 4096;
    int reps = reps_opt > 0 ? reps_opt : quick ? 1 : 3;
    printf("roofs (%d thread(s)): sgemm %.1f GFLOP/s, read bandwidth %.1f GB/s\n", threads,
           roofs_sgemm_gflops(threads, quick ? 1024 : 2048),
           roofs_read_gbps(threads, quick ? ((size_t)256 << 20) : ((size_t)1 << 30)));
    printf("\n## scratch memory of a fresh %lld-token prompt, one MLA layer, %d thread(s), %s "
           "cache, path AUTO; ms the median of %d after a warm-up, against the one call without "
           "a limit\n", (long long)m, threads,
           mla_dtype_name(latent_quant ? latent_quant : cache_dtype), reps);
    printf("%-12s %-9s %-32s %10s %7s %12s\n", "shape", "layer", "sent as", "ms", "vsOne",
           "scratch MB");
    for (size_t si = 0; si < N_SHAPES; si++) {
        const shape *s = &shapes[si];
        if (!want_shape(s))
            continue;
        for (size_t li = 1; li < N_LAYERS; li++) {
            if (!want_layer(quick, li))
                continue;
            mla_layer *l = mla_layer_random(s, dkvs[li - 1]);
            mla_cache *c = filled_cache(l, 1, 1, 0, m);
            char name[16], how[64];
            snprintf(name, sizeof name, "MLA d%d", dkvs[li - 1]);
            double t_one = 0;
            int64_t limit = 0, kept = 0;
            for (int row = 0; row < 4; row++) {
                mla_attn *a = attn_limited(threads, MLA_ATTN_PATH_AUTO, limit);
                double t = time_chunks(a, l, c, s->d, 0, m, m, reps) * 1e3;
                if (mla_attn_scratch_bytes(a, &kept) != MLA_OK)
                    die("mla_attn_scratch_bytes");
                mla_attn_destroy(a);
                if (limit)
                    snprintf(how, sizeof how, "one call, limit %lld B", (long long)limit);
                else
                    snprintf(how, sizeof how, "one call");
                if (t < 0) {
                    const char *need = strstr(mla_last_error(), "needs ");
                    printf("%-12s %-9s %-32s %10s %7s %12.3f (CAPACITY: the need named)\n",
                           s->name, name, how, "-", "-",
                           need ? (double)atoll(need + 6) * 1e-6 : -1.0);
                    break;
                }
                t_one = limit ? t_one : t;
                printf("%-12s %-9s %-32s %10.2f %6.2fx %12.3f\n", s->name, name, how, t,
                       t_one / t, (double)kept * 1e-6);
                fflush(stdout);
                limit = kept - 1;
            }
            for (int64_t q = m / 2; q >= 512 && q >= m / 8; q /= 2) {
                mla_attn *a = attn_new(threads, MLA_ATTN_PATH_AUTO);
                double t = time_chunks(a, l, c, s->d, 0, m, q, reps) * 1e3;
                if (mla_attn_scratch_bytes(a, &kept) != MLA_OK)
                    die("mla_attn_scratch_bytes");
                mla_attn_destroy(a);
                if (t < 0)
                    die("chunked prefill");
                snprintf(how, sizeof how, "chunks of %lld", (long long)q);
                printf("%-12s %-9s %-32s %10.2f %6.2fx %12.3f\n", s->name, name, how, t,
                       t_one / t, (double)kept * 1e-6);
                fflush(stdout);
            }
            mla_cache_destroy(c);
            mla_layer_destroy(l);
        }
    }
}

/*
 * --weights: each layer with float32 weights against the same shape with its weight matrices
 * (mla_layer_set_weight_dtype) in --weights' type, alternating in this process: a decode after
 * --ctx cached tokens (default 4096) and fresh prompts of 64 and 2048 tokens (below and above
 * the kernel table's dot_weights_max_m rows on AVX-512, so both 16-bit product paths).
 * Each decode comes after a read of 64 MiB of other memory, as in a model of many layers, whose
 * other layers push this one's weights out of the caches. The fastest of --rounds rounds of
 * medians; "GB/s" is what a decode reads (the layer's weights and its cache) over its time, for
 * the read bandwidth printed first.
 */
static mla_dtype weights_dtype; /* --weights: 0 unless given */

/* The median of reps decodes at position ctx, each after a read of 64 MiB of other memory (as
 * a model's other layers would read between two decodes of this one), the read not timed. */
static double time_cold_decode(mla_attn *a, mla_layer *l, mla_cache *c, int d, int64_t ctx,
                               int reps)
{
    static float *other;
    size_t n_other = ((size_t)64 << 20) / sizeof(float);
    if (!other)
        other = rand_buf(n_other, 1.0f);
    float *x = rand_buf((size_t)d, 1.0f), *out = malloc((size_t)d * sizeof *out);
    int32_t seq = 0;
    double t[64], sink = 0;
    int n = reps < 64 ? reps : 64;
    for (int r = 0; r < n; r++) {
        for (size_t i = 0; i < n_other; i += 16)
            sink += other[i];
        t[r] = forward_once(a, l, c, x, 1, &seq, &ctx, out, 1, ctx);
    }
    free(x);
    free(out);
    return median(t, n) + (sink == 1.2345 ? 1e-12 : 0); /* sink: keeps the read */
}

static void bench_weights(int quick, int threads, int rounds)
{
    int64_t ctx = ctx_given ? only_ctx : quick ? 1024 : 4096;
    int reps = reps_opt > 0 ? reps_opt : quick ? 5 : 15;
    static const int64_t prompts[] = {64, 2048};
    weights_dtype = weights_dtype ? weights_dtype : MLA_DTYPE_BF16;
    printf("roofs (%d thread(s)): sgemm %.1f GFLOP/s, read bandwidth %.1f GB/s\n", threads,
           roofs_sgemm_gflops(threads, quick ? 1024 : 2048),
           roofs_read_gbps(threads, quick ? ((size_t)256 << 20) : ((size_t)1 << 30)));
    printf("\n## f32 against %s weights, %d thread(s), %s cache: ms the fastest of %d rounds of "
           "medians of %d, in alternation\n", mla_dtype_name(weights_dtype), threads,
           mla_dtype_name(cache_dtype), rounds, reps);
    printf("%-12s %-9s %-18s %10s %10s %7s %10s %10s %10s %10s\n", "shape", "layer", "work",
           "f32 ms", "16-bit ms", "speedup", "f32 MB", "16-bit MB", "f32 GB/s", "16-bit GB/s");
    for (size_t si = 0; si < N_SHAPES; si++) {
        const shape *s = &shapes[si];
        if (!want_shape(s))
            continue;
        for (size_t li = 0; li < N_LAYERS; li++) {
            if (!want_layer(quick, li))
                continue;
            mla_layer *l[2];
            for (int v = 0; v < 2; v++)
                l[v] = li == 0 ? mha_layer(s) : mla_layer_random(s, dkvs[li - 1]);
            if (mla_layer_set_weight_dtype(l[1], weights_dtype) != MLA_OK)
                die("mla_layer_set_weight_dtype");
            size_t wb[2] = {weight_bytes(l[0]), weight_bytes(l[1])};
            char name[16];
            snprintf(name, sizeof name, li == 0 ? "MHA" : "MLA d%d", li == 0 ? 0 : dkvs[li - 1]);
            double flops, cache_bytes;
            layer_cost(s, li, (double)ctx, &flops, &cache_bytes);
            for (int w = 0; w < 3; w++) {
                int64_t m = w == 0 ? 1 : prompts[w - 1], at = w == 0 ? ctx : 0;
                mla_cache *c[2];
                mla_attn *a[2];
                double best[2] = {1e30, 1e30};
                for (int v = 0; v < 2; v++) {
                    c[v] = filled_cache(l[v], li > 0, 1, at, m);
                    a[v] = attn_new(threads, MLA_ATTN_PATH_AUTO);
                }
                for (int r = 0; r < rounds; r++)
                    for (int v = 0; v < 2; v++) {
                        double t = w == 0 ? time_cold_decode(a[v], l[v], c[v], s->d, ctx, reps)
                                          : time_forward(a[v], l[v], c[v], s->d, at, m,
                                                         reps / 4 + 1);
                        best[v] = t < best[v] ? t : best[v];
                    }
                char work[32];
                if (w == 0)
                    snprintf(work, sizeof work, "decode at %lld", (long long)ctx);
                else
                    snprintf(work, sizeof work, "prompt of %lld", (long long)m);
                printf("%-12s %-9s %-18s %10.3f %10.3f %6.2fx %10.1f %10.1f", s->name, name,
                       work, best[0] * 1e3, best[1] * 1e3, best[0] / best[1],
                       (double)wb[0] * 1e-6, (double)wb[1] * 1e-6);
                if (w == 0) /* what a decode reads: weights and cache */
                    printf(" %10.1f %10.1f", ((double)wb[0] + cache_bytes) / best[0] * 1e-9,
                           ((double)wb[1] + cache_bytes) / best[1] * 1e-9);
                printf("\n");
                fflush(stdout);
                for (int v = 0; v < 2; v++) {
                    mla_attn_destroy(a[v]);
                    mla_cache_destroy(c[v]);
                }
            }
            mla_layer_destroy(l[0]);
            mla_layer_destroy(l[1]);
        }
    }
}

/* ---- --sharing: decodes beside other busy threads --------------------------------------------- */

/* One decoder: a handle on `threads` threads of `runtime` decoding one token at position ctx
 * of its own cache over and over for `secs` seconds; the mean time a decode. */
typedef struct decoder {
    mla_layer *l;
    mla_cache *c;
    mla_attn *a;
    const float *x;
    float *out;
    int64_t ctx;
    double secs, mean;
    /* An OpenMP host: before each decode its own parallel loop over host_n floats on
     * host_threads threads (libgomp, its default wait policy); host_mean its time. */
    float *host_buf;
    int64_t host_n;
    int host_threads;
    double host_mean;
} decoder;

static void *decode_window(void *arg)
{
    decoder *dc = arg;
    int32_t seq = 0;
    int64_t pos = dc->ctx;
    double sum = 0, hsum = 0, t0 = roofs_now();
    long n = 0;
    while (roofs_now() - t0 < dc->secs) {
        if (dc->host_buf) {
            double h0 = roofs_now();
            float *hb = dc->host_buf;
#pragma omp parallel for num_threads(dc->host_threads) schedule(static)
            for (int64_t i = 0; i < dc->host_n; i++)
                hb[i] = hb[i] * 0.999f + 0.001f;
            hsum += roofs_now() - h0;
        }
        sum += forward_once(dc->a, dc->l, dc->c, dc->x, 1, &seq, &pos, dc->out, 1, dc->ctx);
        n++;
    }
    dc->mean = sum / (double)n;
    dc->host_mean = hsum / (double)n;
    return NULL;
}

static mla_attn *attn_on(int threads, mla_attn_threads runtime)
{
    return attn_make(threads, MLA_ATTN_PATH_AUTO, 0, runtime);
}

static _Atomic int spin_stop;

/* A thread that keeps a core busy, as another process or a host's spinning pool would. */
static void *spin_busy(void *arg)
{
    volatile unsigned long long sink = 0;
    while (!atomic_load_explicit(&spin_stop, memory_order_relaxed))
        sink++;
    (void)arg;
    return NULL;
}

enum { ALONE, ONE_THREAD, TWO_DECODERS, TWO_PROCESSES, BUSY_THREAD, OPENMP_HOST, N_SCENARIOS };

/* The other process of TWO_PROCESSES: this program again (--sharing-peer), the same layer shape
 * and context on its own handle, decoding from when it writes a byte to fd until secs later. */
static int sharing_peer(char **arg)
{
    const shape *s = &shapes[atoi(arg[0])];
    size_t li = (size_t)atoi(arg[1]);
    int64_t ctx = atoll(arg[2]);
    int threads = atoi(arg[3]), fd = atoi(arg[6]);
    mla_attn_threads rt = (mla_attn_threads)atoi(arg[4]);
    mla_layer *l = li == 0 ? mha_layer(s) : mla_layer_random(s, dkvs[li - 1]);
    decoder dc = {.l = l, .c = filled_cache(l, li > 0, 1, ctx, 8), .a = attn_on(threads, rt),
                  .x = rand_buf((size_t)s->d, 1.0f),
                  .out = malloc((size_t)s->d * sizeof(float)), .ctx = ctx, .secs = 0.02};
    decode_window(&dc);
    dc.secs = atof(arg[5]);
    if (write(fd, "g", 1) != 1)
        return 1;
    decode_window(&dc);
    return 0;
}

/* Starts the peer process and returns once it decodes; its pid in *pid. */
static void start_peer(size_t si, size_t li, int64_t ctx, int threads, mla_attn_threads rt,
                       double secs, pid_t *pid)
{
    int fds[2];
    if (pipe(fds) != 0)
        die("pipe");
    char a[7][32];
    snprintf(a[0], 32, "%zu", si);
    snprintf(a[1], 32, "%zu", li);
    snprintf(a[2], 32, "%lld", (long long)ctx);
    snprintf(a[3], 32, "%d", threads);
    snprintf(a[4], 32, "%d", (int)rt);
    snprintf(a[5], 32, "%.3f", secs);
    snprintf(a[6], 32, "%d", fds[1]);
    char *argv[] = {"bench_decode", "--sharing-peer", a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                    NULL};
    *pid = fork();
    if (*pid < 0)
        die("fork");
    if (*pid == 0) {
        close(fds[0]);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fds[1]);
    char b;
    if (read(fds[0], &b, 1) != 1)
        die("the peer process did not start");
    close(fds[0]);
}

/* The mean ms a decode of dc[0] in one scenario; *host: an OpenMP host's own loop, ms. */
static double sharing_window(decoder dc[2], size_t si, size_t li, int scenario, int threads,
                             mla_attn_threads rt, float *host_buf, int64_t host_n, double *host)
{
    dc[0].a = attn_on(scenario == ONE_THREAD ? 1 : threads, rt);
    dc[1].a = scenario == TWO_DECODERS ? attn_on(threads, rt) : NULL;
    decoder warm = dc[0];
    warm.secs = 0.02;
    decode_window(&warm);
    pthread_t th;
    if (scenario == TWO_DECODERS) {
        if (pthread_create(&th, NULL, decode_window, &dc[1]) != 0)
            die("pthread_create");
        decode_window(&dc[0]);
        pthread_join(th, NULL);
    } else if (scenario == TWO_PROCESSES) {
        pid_t pid;
        start_peer(si, li, dc[0].ctx, threads, rt, dc[0].secs + 0.2, &pid);
        decode_window(&dc[0]);
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("the peer process failed");
    } else if (scenario == BUSY_THREAD) {
        atomic_store(&spin_stop, 0);
        if (pthread_create(&th, NULL, spin_busy, NULL) != 0)
            die("pthread_create");
        decode_window(&dc[0]);
        atomic_store(&spin_stop, 1);
        pthread_join(th, NULL);
    } else if (scenario == OPENMP_HOST) {
        decoder hd = dc[0];
        hd.host_buf = host_buf;
        hd.host_n = host_n;
        hd.host_threads = threads;
        decode_window(&hd);
        dc[0].mean = hd.mean;
        *host = hd.host_mean * 1e3;
    } else {
        decode_window(&dc[0]);
    }
    mla_attn_destroy(dc[0].a);
    mla_attn_destroy(dc[1].a);
    return dc[0].mean * 1e3;
}

static void bench_sharing(int quick, int threads, int rounds)
{
    static const char *const names[N_SCENARIOS] = {"alone",         "1 thread",
                                                   "two decoders",  "two processes",
                                                   "busy thread",   "OpenMP host"};
    static const char *const rt_names[2] = {"pool", "OpenMP"};
    double secs = quick ? 0.2 : 0.5;
    int64_t host_n = 256 * 1024; /* the host's loop: 1 MiB of floats, some tens of µs */
    float *host_buf = rand_buf((size_t)host_n, 1.0f);
    printf("roofs (%d thread(s)): sgemm %.1f GFLOP/s, read bandwidth %.1f GB/s\n", threads,
           roofs_sgemm_gflops(threads, quick ? 1024 : 2048),
           roofs_read_gbps(threads, quick ? ((size_t)256 << 20) : ((size_t)1 << 30)));
    printf("\n## decodes beside other busy threads, %s cache: ms a decode (the lowest over %d "
           "round(s) of the mean over %.1f s), and × its time alone\n"
           "alone: %d thread(s); 1 thread: the same on one; two decoders: two handles of %d "
           "threads each decoding their own cache at once; two processes: the same in another "
           "process; busy thread: one more thread spinning; OpenMP host: an OpenMP loop of %d "
           "threads over 1 MiB between decodes (its ms in brackets)\n",
           mla_dtype_name(cache_dtype), rounds, secs, threads, threads, threads);
    printf("%-12s %-8s %6s %-7s", "shape", "layer", "ctx", "threads");
    for (int sc = 0; sc < N_SCENARIOS; sc++)
        printf(" %*s", sc == OPENMP_HOST ? 24 : 16, names[sc]);
    printf("\n");
    static const struct {
        size_t shape, li;
        int64_t ctx;
    } cases[] = {{0, 0, 4096}, {0, 1, 1024}, {0, 1, 4096}, {1, 0, 4096}, {1, 2, 4096}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const shape *s = &shapes[cases[ci].shape];
        size_t li = cases[ci].li;
        int64_t ctx = ctx_given ? only_ctx : cases[ci].ctx;
        if (!want_shape(s) || (li == 0 ? only_mla : only_mha) ||
            (li > 0 && only_dkv && only_dkv != dkvs[li - 1]) || (quick && ci % 2))
            continue;
        if (ctx_given && ci > 0 && cases[ci - 1].shape == cases[ci].shape &&
            cases[ci - 1].li == li)
            continue; /* --ctx: each layer once */
        mla_layer *l = li == 0 ? mha_layer(s) : mla_layer_random(s, dkvs[li - 1]);
        decoder dc[2];
        float *x = rand_buf((size_t)s->d, 1.0f);
        for (int v = 0; v < 2; v++)
            dc[v] = (decoder){.l = l, .c = filled_cache(l, li > 0, 1, ctx, 8), .x = x,
                              .out = malloc((size_t)s->d * sizeof(float)), .ctx = ctx,
                              .secs = secs};
        double ms[2][N_SCENARIOS], host[2] = {0, 0};
        for (int rt = 0; rt < 2; rt++)
            for (int sc = 0; sc < N_SCENARIOS; sc++)
                ms[rt][sc] = 1e30;
        for (int r = 0; r < rounds; r++)
            for (int sc = 0; sc < N_SCENARIOS; sc++)
                for (int rt = 0; rt < 2; rt++) {
                    double h = 0;
                    double t = sharing_window(dc, cases[ci].shape, li, sc, threads,
                                              rt ? MLA_ATTN_THREADS_OPENMP
                                                 : MLA_ATTN_THREADS_POOL,
                                              host_buf, host_n, &h);
                    if (t < ms[rt][sc]) {
                        ms[rt][sc] = t;
                        if (sc == OPENMP_HOST)
                            host[rt] = h;
                    }
                }
        char name[16];
        snprintf(name, sizeof name, li == 0 ? "MHA" : "MLA d%d", li == 0 ? 0 : dkvs[li - 1]);
        for (int rt = 0; rt < 2; rt++) {
            printf("%-12s %-8s %6lld %-7s", s->name, name, (long long)ctx, rt_names[rt]);
            for (int sc = 0; sc < N_SCENARIOS; sc++) {
                char txt[40];
                if (sc == ALONE)
                    snprintf(txt, sizeof txt, "%.3f", ms[rt][sc]);
                else if (sc == OPENMP_HOST)
                    snprintf(txt, sizeof txt, "%.3f %.1fx [%.3f]", ms[rt][sc],
                             ms[rt][sc] / ms[rt][ALONE], host[rt]);
                else
                    snprintf(txt, sizeof txt, "%.3f %.1fx", ms[rt][sc],
                             ms[rt][sc] / ms[rt][ALONE]);
                printf(" %*s", sc == OPENMP_HOST ? 24 : 16, txt);
            }
            printf("\n");
            fflush(stdout);
        }
        for (int v = 0; v < 2; v++) {
            mla_cache_destroy(dc[v].c);
            free(dc[v].out);
        }
        free(x);
        mla_layer_destroy(l);
    }
    free(host_buf);
}

/* Absorbed vs materialized for a chunk of m new tokens after `ctx` cached ones. */
static void bench_crossover(int quick, int threads)
{
    static const int64_t ms[] = {16, 32, 64, 96, 128, 160, 192, 256, 384, 512};
    int64_t ctx = ctx_given && only_ctx >= 0 ? only_ctx : quick ? 1024 : 4096;
    int reps = quick ? 1 : 3;
    printf("\n## prefill chunk after %lld cached tokens, %d thread(s): absorbed vs materialized\n",
           (long long)ctx, threads);
    printf("%-12s %5s %5s %12s %12s %9s %9s\n", "shape", "d_kv", "m", "absorbed ms",
           "materal. ms", "faster", "AUTO");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *s = &shapes[si];
        if (!want_shape(s))
            continue;
        int d_kv = only_dkv ? only_dkv : 16;
        mla_layer *l = mla_layer_random(s, d_kv);
        mla_cache *c = filled_cache(l, 1, 1, ctx, 512);
        mla_attn *aa = attn_new(threads, MLA_ATTN_PATH_ABSORBED);
        mla_attn *am = attn_new(threads, MLA_ATTN_PATH_MATERIALIZED);
        /* The crossover: the smallest m from which materialized is faster at every m measured
         * (a single faster m below it is noise on a shared machine, not a switch point). */
        int64_t cross = -1;
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            if (quick && ms[mi] > 128)
                break;
            double ta = time_forward(aa, l, c, s->d, ctx, ms[mi], reps);
            double tm = time_forward(am, l, c, s->d, ctx, ms[mi], reps);
            if (tm >= ta)
                cross = -1;
            else if (cross < 0)
                cross = ms[mi];
            size_t li = 0;
            while (li + 1 < N_LAYERS && dkvs[li] != d_kv)
                li++;
            const char *au = dkvs[li] != d_kv ? "?"
                             : auto_materialized(s, li + 1, (double)ctx, (double)ms[mi])
                                 ? "material."
                                 : "absorbed";
            printf("%-12s %5d %5lld %12.3f %12.3f %9s %9s\n", s->name, d_kv, (long long)ms[mi],
                   ta * 1e3, tm * 1e3, ta <= tm ? "absorbed" : "material.", au);
            fflush(stdout);
        }
        if (cross < 0)
            printf("%-12s crossover: absorbed at the largest m measured\n", s->name);
        else
            printf("%-12s crossover: materialized faster from m = %lld on\n", s->name,
                   (long long)cross);
        mla_attn_destroy(aa);
        mla_attn_destroy(am);
        mla_cache_destroy(c);
        mla_layer_destroy(l);
    }
}

/* --dtype: 1 when s names a cache storage type (then set). */
static int dtype_arg(const char *s)
{
    if (strcmp(s, "f16") == 0)
        cache_dtype = MLA_DTYPE_F16;
    else if (strcmp(s, "bf16") == 0)
        cache_dtype = MLA_DTYPE_BF16;
    else if (strcmp(s, "f32") == 0)
        cache_dtype = MLA_DTYPE_F32;
    else if (strcmp(s, "i8") == 0 || strcmp(s, "i4") == 0)
        cache_dtype = MLA_DTYPE_F16;
    else
        return 0;
    latent_quant = strcmp(s, "i8") == 0 ? MLA_DTYPE_I8 : strcmp(s, "i4") == 0 ? MLA_DTYPE_I4 : 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc == 9 && strcmp(argv[1], "--sharing-peer") == 0)
        return sharing_peer(argv + 2);
    int quick = 0, threads = 2, crossover = 0, prefill = 0, scratch = 0, sharing = 0, rounds = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--crossover") == 0)
            crossover = 1;
        else if (strcmp(argv[i], "--prefill") == 0)
            prefill = 1;
        else if (strcmp(argv[i], "--sharing") == 0)
            sharing = 1;
        else if (strcmp(argv[i], "--scratch") == 0)
            scratch = prefill = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0 &&
                 atoi(argv[i + 1]) <= 1024)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc)
            only_shape = argv[++i];
        else if (strcmp(argv[i], "--ctx") == 0 && i + 1 < argc)
            only_ctx = atoll(argv[++i]), ctx_given = 1;
        else if (strcmp(argv[i], "--mha") == 0)
            only_mha = 1;
        else if (strcmp(argv[i], "--mla") == 0)
            only_mla = 1;
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0)
            reps_opt = atoi(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dkv") == 0 && i + 1 < argc &&
                 (atoi(argv[i + 1]) == 8 || atoi(argv[i + 1]) == 16 || atoi(argv[i + 1]) == 32))
            only_dkv = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc && dtype_arg(argv[i + 1]))
            i++;
        else if (strcmp(argv[i], "--weights") == 0 && i + 1 < argc &&
                 (strcmp(argv[i + 1], "bf16") == 0 || strcmp(argv[i + 1], "f16") == 0))
            weights_dtype = strcmp(argv[++i], "bf16") == 0 ? MLA_DTYPE_BF16 : MLA_DTYPE_F16;
        else if (strcmp(argv[i], "--group") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0)
            group_opt = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0 &&
                 atoi(argv[i + 1]) <= 1024)
            batch = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--quick] [--threads N] [--crossover] [--prefill] [--scratch] "
                    "[--shape NAME] [--ctx N] [--mha] [--mla] [--dkv 8|16|32] "
                    "[--dtype f16|bf16|f32|i8|i4] [--group N] [--batch N] [--weights bf16|f16] "
                    "[--sharing] [--reps N] [--rounds N]\n",
                    argv[0]);
            return 2;
        }
    }
    /* Selections that would leave every table empty. */
    int shape_ok = 0;
    for (size_t si = 0; si < N_SHAPES; si++)
        shape_ok |= want_shape(&shapes[si]);
    if (!shape_ok) {
        fprintf(stderr, "--shape %s: no shape's name starts with that (SmolLM-135M, Llama-2-7B)\n",
                only_shape);
        return 2;
    }
    if (only_mha && (only_mla || only_dkv)) {
        fprintf(stderr, "--mha selects only the MHA baseline: not with --mla or --dkv\n");
        return 2;
    }
    /* --ctx: a decode context of the table, a prompt of ≥ 1 token, or ≥ 0 cached tokens. */
    int ctx_ok = !ctx_given || (sharing                      ? only_ctx >= 0
                                : crossover || weights_dtype ? only_ctx >= 0
                                           : prefill       ? only_ctx >= 1
                                                           : 0);
    for (int i = 0; i < N_CTX && !ctx_ok; i++)
        ctx_ok = ctxs[i] == only_ctx;
    if (batch > 1 && (crossover || prefill)) {
        fprintf(stderr, "--batch is for the decode table, not --%s\n",
                crossover ? "crossover" : "prefill");
        return 2;
    }
    if (ctx_ok && only_ctx > 0 && !crossover && !prefill && batch * only_ctx > MAX_BATCH_TOKENS) {
        fprintf(stderr, "--batch %d --ctx %lld: more than %d cached tokens\n", batch,
                (long long)only_ctx, MAX_BATCH_TOKENS);
        return 2;
    }
    if (!ctx_ok) {
        fprintf(stderr, "--ctx %lld: %s\n", (long long)only_ctx,
                crossover ? "cached tokens must be >= 0"
                : prefill ? "a prompt needs >= 1 token"
                          : "the decode table has contexts 1024, 4096, 16384 and 32768");
        return 2;
    }
    printf("libmla %s\n%s\n", mla_version_string(), mla_build_info());
    if (crossover) {
        printf("roofs (%d thread(s)): sgemm %.1f GFLOP/s, read bandwidth %.1f GB/s\n", threads,
               roofs_sgemm_gflops(threads, quick ? 1024 : 2048),
               roofs_read_gbps(threads, quick ? ((size_t)256 << 20) : ((size_t)1 << 30)));
        bench_crossover(quick, threads);
        return 0;
    }
    if (weights_dtype) {
        bench_weights(quick, threads, rounds);
        return 0;
    }
    if (sharing) {
        bench_sharing(quick, threads, rounds);
        return 0;
    }
    if (scratch) {
        bench_scratch(quick, threads);
        return 0;
    }
    if (prefill) {
        bench_prefill(quick, threads);
        return 0;
    }
    for (int r = 0; r < rounds; r++) {
        if (rounds > 1)
            fprintf(stderr, "round %d of %d\n", r + 1, rounds);
        decode_round(quick, threads);
    }
    decode_table(threads, rounds);
    return 0;
}

/*
 * A seeded series of random cases of mla_attn_forward, each against the float64 formula of
 * ../shared/mha2mla.md (util.h) evaluated on the values its cache holds. A case draws:
 * - one layer, or (a third of the cases) two in one cache, each run by its own forward calls on
 *   the same tokens as a model's layers are: the MHA baseline, or a conversion (RoPE on none, some
 *   or all of a head's dimensions, joint or split latent) of an MHA or GQA source, with or
 *   without biases;
 * - a cache: every latent and RoPE storage type, the quantization group the cache picks
 *   (quant_group 0), blocks of 1 to 64 tokens;
 * - a path, an AUTO crossover, 1 to 4 threads (the handle's pool; OpenMP's in odd cases);
 * - a schedule: up to three sequences from random positions, fed in chunks of random length, the
 *   chunks of different sequences (prefill chunks and single decode tokens) mixed in one call,
 *   interleaved or one sequence after the other;
 * - then one cache operation on a sequence (a fork, the oldest tokens dropped and the rest shifted
 *   back to the start, or the newest tokens dropped) and a few more tokens on what it left,
 *   whose outputs are checked the same way.
 * Every fifth case has SmolLM-135M's attention shape (9 heads, 3 KV heads, head dim 64) and a
 * sequence of up to 260 tokens, so that the 9-row kernels, whole tiles and split-K parts run.
 * Each case prints what it drew; MLA_TEST_RANDOM_CASE=i runs case i alone, and
 * MLA_TEST_RANDOM_CASES=n runs cases 0 .. n−1 (default 40) for a longer soak.
 */
#include <stdarg.h>

#include "run.h"

typedef struct rcase {
    int mha, d, n_h, n_kv, d_h, bias, n_layers;
    int r[2], d_kv[2]; /* per layer */
    mla_factorization f[2];
    mla_dtype lat, rope;
    int block, threads, openmp, crossover, grouped;
    mla_attn_path path;
    int ns, n[3], pos0[3];
} rcase;

/* A BF16 latent with BF16 RoPE keys, or with none: layer k's absorbed path multiplies in bf16
 * (doc/attention.md, "BF16 caches"). */
static int bf16_products(const rcase *c, int k)
{
    return !c->mha && c->lat == MLA_DTYPE_BF16 && (c->rope == MLA_DTYPE_BF16 || c->r[k] == 0);
}

/* printf onto the end of buf (size bytes), truncating. */
static void append(char *buf, size_t size, const char *fmt, ...)
{
    size_t at = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + at, size - at, fmt, ap);
    va_end(ap);
}

/* Uniform in [lo, hi]. */
static int pick(unsigned long long *s, int lo, int hi)
{
    int v = lo + (int)((tap_rand(s) + 1.0) / 2.0 * (hi - lo + 1));
    return v > hi ? hi : v;
}

static rcase draw(int idx, unsigned long long *s)
{
    static const int d_hs[] = {8, 16, 32, 64}, blocks[] = {1, 3, 16, 64}, cross[] = {0, 1, 8, 32};
    static const mla_dtype lats[] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16, MLA_DTYPE_I8,
                                     MLA_DTYPE_I4};
    static const mla_dtype ropes[] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16};
    static const mla_attn_path paths[] = {MLA_ATTN_PATH_AUTO, MLA_ATTN_PATH_ABSORBED,
                                          MLA_ATTN_PATH_MATERIALIZED};
    rcase c;
    memset(&c, 0, sizeof c);
    int smol = idx % 5 == 4;
    if (smol) {
        c.n_kv = 3;
        c.n_h = 9;
        c.d_h = 64;
        c.d = 192;
    } else {
        c.n_kv = pick(s, 1, 4);
        c.n_h = c.n_kv * pick(s, 1, 3);
        c.d_h = d_hs[pick(s, 0, c.n_h > 6 ? 2 : 3)];
        c.d = 16 * pick(s, 2, 8);
    }
    c.n_layers = pick(s, 0, 2) == 2 ? 2 : 1;
    for (int k = 0; k < 2; k++) {
        if (smol) {
            c.r[k] = 8;
            c.d_kv[k] = pick(s, 0, 1) ? 8 : 16;
            c.f[k] = MLA_FACTOR_JOINT;
            continue;
        }
        c.r[k] = 2 * pick(s, 0, c.d_h / 2);
        c.f[k] = pick(s, 0, 1) && c.r[k] < c.d_h ? MLA_FACTOR_SPLIT : MLA_FACTOR_JOINT;
        /* The latent cannot be wider than the rank of what it factorizes (convert.c). */
        int lim = c.f[k] == MLA_FACTOR_SPLIT ? c.d_h - c.r[k] : 2 * c.d_h - c.r[k];
        if (lim > c.d / c.n_kv)
            lim = c.d / c.n_kv;
        c.d_kv[k] = pick(s, 1, lim);
    }
    c.mha = !smol && pick(s, 0, 3) == 0;
    c.bias = pick(s, 0, 1);
    c.lat = lats[pick(s, 0, 4)];
    c.rope = ropes[pick(s, 0, 2)];
    for (int k = 0; k < c.n_layers; k++) {
        /* util.h models the bf16 products for the joint latent only */
        if (bf16_products(&c, k))
            c.f[k] = MLA_FACTOR_JOINT;
        int width = c.mha ? c.n_kv * c.d_h
                          : c.d_kv[k] * c.n_kv * (c.f[k] == MLA_FACTOR_SPLIT ? 2 : 1);
        if (c.lat == MLA_DTYPE_I4 && width % 2)
            c.lat = MLA_DTYPE_I8; /* no even group: the cache refuses it (test_api.c) */
    }
    c.block = blocks[pick(s, 0, 3)];
    c.threads = pick(s, 1, 4);
    c.openmp = idx % 2; /* not drawn: the cases before it kept their draws */
    c.path = paths[pick(s, 0, 2)];
    c.crossover = cross[pick(s, 0, 3)];
    c.grouped = pick(s, 0, 1);
    c.ns = pick(s, 1, 3);
    for (int i = 0; i < c.ns; i++) {
        c.n[i] = smol && i == 0 ? pick(s, 150, 260) : pick(s, 1, 90);
        c.pos0[i] = pick(s, 0, 200);
    }
    return c;
}

/* Feed every sequence's tokens in random chunks; each call mixes the chunks of the sequences
 * it takes, interleaved or one after the other, and each layer runs the same chunks in turn
 * (sq[k]: layer k's inputs and outputs). */
static mla_status run_schedule(const rcase *c, mla_attn *a, mla_layer *const *l, mla_cache *cache,
                               seqdata (*sq)[3], unsigned long long *s)
{
    int from[3] = {0, 0, 0}, to[3] = {0, 0, 0}, left = 0;
    for (int i = 0; i < c->ns; i++)
        left += sq[0][i].n;
    mla_status st = MLA_OK;
    while (st == MLA_OK && left > 0) {
        int any = 0;
        for (int i = 0; i < c->ns; i++) {
            int rest = sq[0][i].n - from[i], take = 0;
            if (rest > 0 && pick(s, 0, 4) > 0) {
                take = pick(s, 0, 1) ? 1 : pick(s, 1, 48);
                take = take < rest ? take : rest;
            }
            to[i] = from[i] + take;
            any |= take > 0;
        }
        for (int i = 0; !any && i < c->ns; i++)
            if (sq[0][i].n > from[i]) {
                to[i] = from[i] + 1;
                any = 1;
            }
        for (int k = 0; st == MLA_OK && k < c->n_layers; k++)
            st = run_range_in(a, l[k], cache, k, sq[k], c->ns, c->d, from, to, c->grouped);
        for (int i = 0; i < c->ns; i++) {
            left -= to[i] - from[i];
            from[i] = to[i];
        }
    }
    return st;
}

/* What the references need of the layer under test, read once a case. */
typedef struct lref {
    const rcase *c;
    int layer;            /* its cache layer */
    const src_layer *src; /* the MHA baseline's weights */
    ref_mla m;            /* a converted layer's tensors */
    int L, W;             /* widths of the cached latent and RoPE part */
    int bf;               /* bf16_products */
} lref;

static lref lref_make(const rcase *c, int layer, const mla_layer *l, const src_layer *src)
{
    lref r;
    memset(&r, 0, sizeof r);
    r.c = c;
    r.layer = layer;
    r.src = src;
    r.bf = bf16_products(c, layer);
    if (!c->mha)
        ref_mla_init(&r.m, l);
    r.L = c->mha ? c->n_kv * c->d_h : r.m.split ? 2 * r.m.R : r.m.R;
    r.W = c->mha ? c->n_kv * c->d_h : r.m.n_kv * r.m.r;
    return r;
}

/* The formula for n tokens (inputs x, positions pos) over cached latents and RoPE parts. */
static void ref_forward(const lref *r, const float *x, const int64_t *pos, int n,
                        const float *lat, const float *rope, double *out)
{
    if (r->c->mha)
        ref_mha(r->src, x, pos, n, rope, lat, out);
    else
        ref_mla_forward(&r->m, x, pos, n, lat, rope, out);
}

/*
 * Worst error of the outputs over the tolerance: 1e-4 of max|ref| against the formula on the
 * cached values, or, for a BF16 latent with BF16 RoPE keys or none (whose absorbed path
 * multiplies in bf16), the bound of util.h's bf16 model plus that slack. ≤ 1 passes.
 */
static double worst_error(const lref *r, mla_cache *cache, seqdata *sq)
{
    const rcase *c = r->c;
    int L = r->L, W = r->W, d = c->d, bf = r->bf;
    double worst = 0;
    for (int i = 0; i < c->ns; i++) {
        size_t n = (size_t)sq[i].n, nd = n * (size_t)d;
        float *lat = malloc(n * L * sizeof *lat), *rope = malloc((n * W + 1) * sizeof *rope);
        double *refq = bf ? malloc(nd * sizeof *refq) : NULL;
        double *bound = bf ? malloc(nd * sizeof *bound) : NULL;
        if (mla_cache_seq_read(cache, r->layer, sq[i].id, 0, sq[i].n, lat, W ? rope : NULL, NULL) !=
            MLA_OK) {
            worst = INFINITY;
        } else {
            ref_forward(r, sq[i].x, sq[i].pos, sq[i].n, lat, rope, sq[i].ref);
            if (bf)
                ref_mla_forward_bf16(&r->m, sq[i].x, sq[i].pos, sq[i].n, lat, rope, refq, bound);
        }
        double rmax = 0;
        for (size_t q = 0; q < nd; q++)
            rmax = fmax(rmax, fabs(sq[i].ref[q]));
        for (size_t q = 0; q < nd && worst < INFINITY; q++) {
            double e = fabs(sq[i].out[q] - sq[i].ref[q]) / (1e-4 * rmax);
            if (bf)
                e = fmin(e, fabs(sq[i].out[q] - refq[q]) / (bound[q] + 1e-4 * rmax));
            worst = e > worst || e != e ? e : worst;
        }
        free(lat);
        free(rope);
        free(refq);
        free(bound);
    }
    return worst;
}

/* The attention formula for the last m of a sequence's n cached tokens, whose inputs are xm
 * (m × d): what a forward of those m tokens must give over what the cache holds. */
static void ref_tail(const lref *r, mla_cache *cache, int32_t id, int n, int m, const float *xm,
                     double *out)
{
    int L = r->L, W = r->W, d = r->c->d;
    float *lat = malloc((size_t)n * L * sizeof *lat);
    float *rope = malloc(((size_t)n * W + 1) * sizeof *rope);
    float *x = calloc((size_t)n * d, sizeof *x); /* only the queries come from x */
    int64_t *pos = malloc((size_t)n * sizeof *pos);
    double *ref = malloc((size_t)n * d * sizeof *ref);
    memcpy(x + (size_t)(n - m) * d, xm, (size_t)m * d * sizeof *x);
    mla_cache_seq_read(cache, r->layer, id, 0, n, lat, W ? rope : NULL, pos);
    ref_forward(r, x, pos, n, lat, rope, ref);
    memcpy(out, ref + (size_t)(n - m) * d, (size_t)m * d * sizeof *out);
    free(lat);
    free(rope);
    free(x);
    free(pos);
    free(ref);
}

/*
 * The cached RoPE keys of sequence id (n tokens, inputs x: n × d) against each token's key from
 * its input, rotated at the position the cache holds for it (float64), over the rounding of the
 * RoPE storage type (a shift rotates stored values and rounds once more): the worst ratio, ≤ 1
 * passes. This is what mla_cache_seq_shift must leave behind, which the attention check alone,
 * computed on the cached values, cannot see.
 */
static double rope_error(const lref *rf, mla_cache *cache, int32_t id, const float *x, int n)
{
    const rcase *c = rf->c;
    const src_layer *src = rf->src;
    int n_kv = c->n_kv, d_h = c->d_h, d = c->d, r = c->mha ? d_h : rf->m.r, half = r / 2;
    if (r == 0)
        return 0;
    int W = rf->W;
    const float *wk = c->mha ? src->wk : rf->m.wkr, *bk = c->mha ? src->bk : rf->m.bkr;
    double *theta = malloc((size_t)n_kv * half * sizeof *theta), *k = malloc(W * sizeof *k);
    /* The frequencies as the layer holds them, float32 (lib/convert/layer.c, as Hugging Face's
     * inv_freq): angles from the double ones would differ by up to pos·θ·2⁻²⁴, which an F32
     * RoPE part shows at long positions. */
    for (int j = 0; j < n_kv; j++)
        for (int i = 0; i < half; i++)
            theta[j * half + i] = (float)(c->mha ? pow(src->g.rope_theta, -2.0 * i / d_h)
                                                 : pow(rf->m.rope_theta,
                                                       -2.0 * rf->m.dims[j * r + i] / d_h));
    float *rope = malloc((size_t)n * W * sizeof *rope);
    int64_t *pos = malloc((size_t)n * sizeof *pos);
    double u = c->rope == MLA_DTYPE_F16 ? ldexp(1.0, -11) : c->rope == MLA_DTYPE_BF16
                                                                ? ldexp(1.0, -8) : 0.0;
    double worst =
        mla_cache_seq_read(cache, rf->layer, id, 0, n, NULL, rope, pos) == MLA_OK ? 0 : INFINITY;
    for (int t = 0; t < n && worst < INFINITY; t++) {
        const float *xt = x + (size_t)t * d;
        matvec(wk, bk, xt, W, d, k);
        for (int j = 0; j < n_kv; j++) {
            /* Besides the storage's rounding, the float32 projection's: at most d·2⁻²⁴ times
             * Σ|w·x| + |b| of a row (Higham's γ_d), which matters where the sum cancels to far
             * less than its terms (a 10 000-case soak found keys of 0.002 from terms near 1). */
            double *kj = k + (size_t)j * r, mx = 0, terms = 0;
            for (int i = 0; i < r; i++) {
                const float *wr = wk + (size_t)(j * r + i) * d;
                double sum = bk ? fabs(bk[j * r + i]) : 0;
                for (int q = 0; q < d; q++)
                    sum += fabs((double)wr[q] * xt[q]);
                terms = fmax(terms, sum);
            }
            rotate(kj, half, theta + (size_t)j * half, (double)pos[t]);
            for (int i = 0; i < r; i++)
                mx = fmax(mx, fabs(kj[i]));
            double tol = (6 * u + 1e-5) * mx + d * ldexp(1.0, -24) * terms + 1e-30;
            for (int i = 0; i < r; i++) {
                double e = fabs(rope[(size_t)t * W + j * r + i] - kj[i]) / tol;
                worst = e > worst || e != e ? e : worst;
            }
        }
    }
    free(theta);
    free(k);
    free(rope);
    free(pos);
    return worst;
}

/*
 * One cache operation on the first sequence (its id; it applies to every layer), then m new
 * tokens on each sequence it left (the fork's copy too) in one call a layer; the worst error over
 * the tolerance, as worst_error (no bf16 bound: these are compared with the unrounded formula,
 * which decode tokens over BF16 caches with bf16 products do not meet, so such cases skip this
 * phase), and in rope_worst the worst of rope_error. s0[k]: layer k's data of that sequence.
 * what: the operation.
 */
static double after_operation(const lref *r, mla_attn *a, mla_layer *const *l, mla_cache *cache,
                              const seqdata *const *s0, unsigned long long *s, char *what,
                              size_t what_size, double *rope_worst)
{
    const rcase *c = r[0].c;
    const int64_t *pos = s0[0]->pos;
    int32_t ids[2] = {s0[0]->id, 7};
    int n_seq = 1, n = s0[0]->n, op = pick(s, 0, 2), k = n > 1 ? pick(s, 1, n - 1) : 0;
    int first = 0; /* the first of the sequence's tokens still cached */
    mla_status st = MLA_OK;
    if (op == 0) {
        st = mla_cache_seq_fork(cache, ids[0], ids[1]);
        n_seq = 2;
        snprintf(what, what_size, "forked");
    } else if (op == 1 && k > 0) {
        /* the oldest k dropped, the rest moved back by k positions (a context shift) */
        st = mla_cache_seq_rm(cache, ids[0], -1, pos[k]);
        if (st == MLA_OK)
            st = mla_cache_seq_shift(cache, ids[0], -1, -1, -(pos[k] - pos[0]));
        first = k;
        snprintf(what, what_size, "oldest %d dropped, the rest shifted back", k);
    } else if (k > 0) {
        st = mla_cache_seq_rm(cache, ids[0], pos[n - k], -1);
        snprintf(what, what_size, "newest %d dropped", k);
    } else {
        snprintf(what, what_size, "left as it was");
    }
    int m = pick(s, 1, 8), d = c->d;
    float *x = malloc((size_t)2 * m * d * sizeof *x), *o = malloc((size_t)2 * m * d * sizeof *o);
    int32_t *sq = malloc((size_t)2 * m * sizeof *sq);
    int64_t *ps = malloc((size_t)2 * m * sizeof *ps), next[2] = {0, 0}, len[2] = {0, 0};
    for (int q = 0; st == MLA_OK && q < n_seq; q++) {
        st = mla_cache_seq_pos_max(cache, ids[q], &next[q]);
        next[q]++;
    }
    /* the sequences' new tokens side by side: q0 t0, q1 t0, q0 t1, ... */
    for (int t = 0; t < m; t++)
        for (int q = 0; q < n_seq; q++) {
            sq[t * n_seq + q] = ids[q];
            ps[t * n_seq + q] = next[q] + t;
        }
    double worst = st == MLA_OK ? 0 : INFINITY;
    float *xm = malloc((size_t)m * d * sizeof *xm), *om = malloc((size_t)m * d * sizeof *om);
    double *ref = malloc((size_t)m * d * sizeof *ref);
    unsigned long long seed = *s;
    for (int layer = 0; st == MLA_OK && layer < c->n_layers; layer++) {
        for (int i = 0; i < 2 * m * d; i++)
            x[i] = (float)tap_rand(&seed);
        st = mla_attn_forward(a, l[layer], cache, layer, x, (int64_t)m * n_seq, sq, ps, o);
        for (int q = 0; st == MLA_OK && q < n_seq; q++) {
            for (int t = 0; t < m; t++) {
                memcpy(xm + (size_t)t * d, x + (size_t)(t * n_seq + q) * d,
                       (size_t)d * sizeof *xm);
                memcpy(om + (size_t)t * d, o + (size_t)(t * n_seq + q) * d,
                       (size_t)d * sizeof *om);
            }
            if (mla_cache_seq_length(cache, ids[q], &len[q]) != MLA_OK) {
                worst = INFINITY;
                break;
            }
            ref_tail(&r[layer], cache, ids[q], (int)len[q], m, xm, ref);
            double e = rel_diff_d(om, ref, (size_t)m * d) / 1e-4;
            worst = e > worst || e != e ? e : worst;
            /* the inputs of every cached token: the sequence's that are left, then the new */
            int old_n = (int)len[q] - m;
            float *xa = malloc((size_t)len[q] * d * sizeof *xa);
            memcpy(xa, s0[layer]->x + (size_t)first * d, (size_t)old_n * d * sizeof *xa);
            memcpy(xa + (size_t)old_n * d, xm, (size_t)m * d * sizeof *xa);
            double er = rope_error(&r[layer], cache, ids[q], xa, (int)len[q]);
            *rope_worst = er > *rope_worst || er != er ? er : *rope_worst;
            free(xa);
        }
    }
    if (st != MLA_OK) {
        worst = INFINITY;
        append(what, what_size, " (%s)", mla_last_error());
    } else {
        append(what, what_size, ", then %d token%s on %s", m, m > 1 ? "s" : "",
               n_seq > 1 ? "both" : "it");
    }
    free(x);
    free(o);
    free(sq);
    free(ps);
    free(xm);
    free(om);
    free(ref);
    return worst;
}

static void run_case(int idx)
{
    unsigned long long s = 0x9E3779B97F4A7C15ULL ^ (0xD1B54A32D192ED03ULL * (unsigned)(idx + 1));
    tap_rand(&s);
    rcase c = draw(idx, &s);
    char what[400] = "";
    append(what, sizeof what, "case %d: %s d %d, %d heads / %d KV, head dim %d", idx,
           c.mha ? "MHA baseline," : "MLA", c.d, c.n_h, c.n_kv, c.d_h);
    for (int k = 0; !c.mha && k < c.n_layers; k++)
        append(what, sizeof what, "%s r %d, d_kv %d %s", k ? "; layer 1:" : ",", c.r[k],
               c.d_kv[k], c.f[k] == MLA_FACTOR_SPLIT ? "split" : "joint");
    if (c.mha && c.n_layers > 1)
        append(what, sizeof what, ", two layers");
    append(what, sizeof what, "%s; %s latent, %s RoPE, blocks of %d; %s, crossover %d, %d "
           "thread%s%s; %s chunks of", c.bias ? ", biases" : "", mla_dtype_name(c.lat),
           mla_dtype_name(c.rope), c.block,
           c.path == MLA_ATTN_PATH_AUTO       ? "auto"
           : c.path == MLA_ATTN_PATH_ABSORBED ? "absorbed"
                                              : "materialized",
           c.crossover, c.threads, c.threads > 1 ? "s" : "", c.openmp ? " (OpenMP)" : "",
           c.grouped ? "grouped" : "interleaved");
    for (int i = 0; i < c.ns; i++)
        append(what, sizeof what, " %d@%d", c.n[i], c.pos0[i]);

    src_layer src[2];
    mla_layer *l[2] = {NULL, NULL};
    int made = 1, any_bf = 0;
    for (int k = 0; k < c.n_layers; k++) {
        src_init(&src[k], c.d, c.n_h, c.n_kv, c.d_h, c.bias, 7000 + 1000 * k + (unsigned)idx);
        if (c.mha)
            mla_layer_from_mha(&src[k].g, &src[k].w, &l[k]);
        else
            l[k] = convert(&src[k], c.r[k], c.d_kv[k], c.f[k]);
        made &= l[k] != NULL;
        any_bf |= bf16_products(&c, k);
    }
    /* room for the fork's copied blocks and the tokens after the operation */
    int64_t cap = c.n[0] + c.n[1] + c.n[2] + 16 + 6 * c.block;
    mla_cache *cache = made ? make_cache(l, c.n_layers, c.lat, c.rope, cap, c.block) : NULL;
    mla_attn_params ap;
    mla_attn_default_params(&ap, sizeof ap);
    ap.n_threads = c.threads;
    ap.threads = c.openmp ? MLA_ATTN_THREADS_OPENMP : MLA_ATTN_THREADS_POOL;
    ap.path = c.path;
    if (c.crossover)
        ap.crossover_tokens = c.crossover;
    mla_attn *a = NULL;
    mla_status st = cache ? mla_attn_create(&ap, &a) : MLA_ERR_INTERNAL;
    if (st == MLA_OK)
        use_test_kernels(a);
    seqdata sq[2][3];
    lref r[2];
    for (int k = 0; k < c.n_layers; k++)
        for (int i = 0; i < c.ns; i++)
            seq_init(&sq[k][i], 2 * i + 1, c.n[i], c.n[i], c.d, c.pos0[i], s + 16 * k + i);
    if (st == MLA_OK)
        st = run_schedule(&c, a, l, cache, sq, &s);
    double e = st == MLA_OK ? 0 : INFINITY;
    for (int k = 0; st == MLA_OK && k < c.n_layers; k++) {
        r[k] = lref_make(&c, k, l[k], &src[k]);
        double ek = worst_error(&r[k], cache, sq[k]);
        e = ek > e || ek != ek ? ek : e;
    }
    CHECK(st == MLA_OK && e <= 1.0, "%s: error / tolerance %.3f%s%s", what, e,
          st == MLA_OK ? "" : ": ", st == MLA_OK ? "" : mla_last_error());
    if (st == MLA_OK && !any_bf) {
        char op[200];
        double er = 0;
        const seqdata *s0[2] = {&sq[0][0], &sq[1][0]};
        double e2 = after_operation(r, a, l, cache, s0, &s, op, sizeof op, &er);
        CHECK(e2 <= 1.0 && er <= 1.0, "case %d, sequence %d@%d %s: error / tolerance %.3f, "
              "cached RoPE keys against their inputs' at their positions %.3f", idx, c.n[0],
              c.pos0[0], op, e2, er);
    }
    for (int k = 0; k < c.n_layers; k++) {
        for (int i = 0; i < c.ns; i++)
            seq_free(&sq[k][i]);
        mla_layer_destroy(l[k]);
        src_free(&src[k]);
    }
    mla_attn_destroy(a);
    mla_cache_destroy(cache);
}

int main(void)
{
    /* The cache picks the group (quant_group 0), as it does by default. */
    make_cache_group = 0;
    const char *one = getenv("MLA_TEST_RANDOM_CASE"), *many = getenv("MLA_TEST_RANDOM_CASES");
    if (one) {
        run_case(atoi(one));
        return tap_done();
    }
    int n = many && atoi(many) > 0 ? atoi(many) : 40;
    for (int i = 0; i < n; i++)
        run_case(i);
    return tap_done();
}

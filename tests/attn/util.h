/*
 * Shared helpers of the attention tests: random source layers, caches, and the independent side
 * of every comparison: the attention of ../shared/mha2mla.md written as plain float64 loops
 * straight from its formulas (no tiles, no online softmax, no absorption).
 */
#ifndef MLA_TESTS_ATTN_UTIL_H
#define MLA_TESTS_ATTN_UTIL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "../src_layer.h"
#include "../tap.h"

#ifdef MLA_TEST_AVX512_EMULATED
/*
 * The test built again as test_attn_<name>_avx512_emulated (tests/attn/meson.build): every handle
 * runs the AVX-512 table as kernels.c fills it for the CPU kind MLA_TEST_EMULATED_CPU names
 * ("intel": no AVX512_BF16; "intel-bf16": bf16 products on FMAs; "intel-amx": on AMX tiles
 * from 64 latent columns; "amd": vdpbf16ps, and 9 query rows in 9 × 48 blocks over 192-token
 * tiles), its kernels compiled over SIMDe and the tiles emulated (tests/avx512_emulated.h,
 * tests/amx_emulated.h), so that any x86-64 CPU runs them through whole forwards. The table
 * takes avx2.c's seg_dots, so the CPU needs AVX2.
 */
#  include <stdio.h>
#  include "../avx512_emulated_names.h"
#  include "attn/internal.h"

static inline void use_test_kernels(mla_attn *a)
{
    static mla__attn_kernels filled;
    static const mla__attn_kernels *t;
    if (!t) {
        mla_cpu_features f = *mla_cpu();
        if (!(f.avx2 && f.fma && f.f16c)) {
            printf("1..0 # SKIP this CPU has no AVX2, FMA and F16C\n");
            exit(0);
        }
        const char *cpu = getenv("MLA_TEST_EMULATED_CPU");
        cpu = cpu ? cpu : "intel";
        f.avx512f = f.avx512bw = f.avx512vl = 1;
        f.avx512_bf16 = strcmp(cpu, "intel") != 0;
        f.amd = strcmp(cpu, "amd") == 0;
        f.amx_bf16 = strcmp(cpu, "intel-amx") == 0;
        t = mla__attn_kernels_choose(&f, NULL, &filled);
    }
    if (a)
        a->k = t;
}

/* On the AMX CPU kind, that the forwards went through the tiles at all. */
static inline void check_test_kernels_ran(void)
{
    const char *cpu = getenv("MLA_TEST_EMULATED_CPU");
    if (cpu && strcmp(cpu, "intel-amx") == 0)
        CHECK(mla_test_amx_products() > 0, "the forwards multiplied on the emulated AMX tiles "
              "(%ld tdpbf16ps)", mla_test_amx_products());
}
#else
static inline void use_test_kernels(mla_attn *a) { (void)a; }
static inline void check_test_kernels_ran(void) {}
#endif

/* Scaled so scores spread over a few units: softmax neither uniform nor one-hot. */
static inline void src_init(src_layer *s, int d, int n_h, int n_kv, int d_h, int bias,
                            unsigned long long seed)
{
    src_layer_init(s, d, n_h, n_kv, d_h, bias, seed, 1.5 / sqrt((double)d));
}

/* Values per scale of the I8/I4 caches make_cache creates (a test may change it). */
static int make_cache_group = 8;

/* A cache for the given layers (one cache layer each). */
static inline mla_cache *make_cache(mla_layer *const *layers, int n_layers, mla_dtype lat,
                                    mla_dtype rope, int64_t capacity_tokens, int block_tokens)
{
    mla_cache_layer_desc desc[8];
    for (int i = 0; i < n_layers; i++)
        if (mla_layer_cache_desc(layers[i], &desc[i], sizeof desc[i]) != MLA_OK)
            return NULL;
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = n_layers;
    p.layers = desc;
    p.latent_dtype = lat;
    p.rope_dtype = rope;
    p.quant_group = make_cache_group;
    p.block_tokens = block_tokens;
    p.capacity_tokens = capacity_tokens;
    p.n_seq_max = 8;
    mla_cache *c = NULL;
    if (mla_cache_create(&p, &c) != MLA_OK)
        return NULL;
    return c;
}

/* max_scratch_bytes limit: 0 for none. */
static inline mla_attn *make_attn_limited(int n_threads, mla_attn_path path, int64_t limit)
{
    mla_attn_params p;
    mla_attn_default_params(&p, sizeof p);
    p.n_threads = n_threads;
    p.path = path;
    p.max_scratch_bytes = limit;
    mla_attn *a = NULL;
    if (mla_attn_create(&p, &a) != MLA_OK)
        return NULL;
    use_test_kernels(a);
    return a;
}

static inline mla_attn *make_attn(int n_threads, mla_attn_path path)
{
    return make_attn_limited(n_threads, path, 0);
}

/* Relative max-norm difference of float output against a double reference. */
static inline double rel_diff_d(const float *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (d > num || d != d)
            num = d;
        if (fabs(ref[i]) > den)
            den = fabs(ref[i]);
    }
    return num / (den > 1e-30 ? den : 1e-30);
}

/* y = W x + b in double; W rows × cols float. */
static inline void matvec(const float *w, const float *b, const float *x, int rows, int cols,
                          double *y)
{
    for (int i = 0; i < rows; i++) {
        double s = b ? b[i] : 0.0;
        for (int k = 0; k < cols; k++)
            s += (double)w[(size_t)i * cols + k] * x[k];
        y[i] = s;
    }
}

/* Rotate pairs (dims i, i + half) of v at position p with frequencies theta[i]. */
static inline void rotate(double *v, int half, const double *theta, double p)
{
    for (int i = 0; i < half; i++) {
        double c = cos(p * theta[i]), s = sin(p * theta[i]);
        double a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

/* Causal softmax attention of one query over keys/values of n tokens with positions pos, only
 * those at or before qpos; scores = q·k / √d_h. k rows: kdim; v rows: vdim. */
static inline void attend(const double *q, const double *k, const double *v, const int64_t *pos,
                          int n, int64_t qpos, int kdim, int vdim, int d_h, double *o)
{
    double mx = -INFINITY;
    double *s = malloc((size_t)(n ? n : 1) * sizeof *s);
    for (int t = 0; t < n; t++) {
        s[t] = -INFINITY;
        if (pos[t] > qpos)
            continue;
        double acc = 0;
        for (int i = 0; i < kdim; i++)
            acc += q[i] * k[(size_t)t * kdim + i];
        s[t] = acc / sqrt((double)d_h);
        if (s[t] > mx)
            mx = s[t];
    }
    double sum = 0;
    for (int i = 0; i < vdim; i++)
        o[i] = 0;
    for (int t = 0; t < n; t++) {
        if (pos[t] > qpos)
            continue;
        double p = exp(s[t] - mx);
        sum += p;
        for (int i = 0; i < vdim; i++)
            o[i] += p * v[(size_t)t * vdim + i];
    }
    for (int i = 0; i < vdim; i++)
        o[i] /= sum;
    free(s);
}

/*
 * The original MHA/GQA layer with full RoPE: out (n × d) for the n tokens of one sequence (x rows,
 * positions pos), each attending to the tokens at or before its position. When keys and vals are
 * given (n × n_kv·d_h each, as an MHA layer's cache holds them: keys rotated, values W_v x
 * without b_v), they replace the keys and values computed from x; the queries always come from x.
 */
static inline void ref_mha(const src_layer *s, const float *x, const int64_t *pos, int n,
                           const float *keys, const float *vals, double *out)
{
    int d = s->g.d_model, n_h = s->g.n_heads, n_kv = s->g.n_kv_heads, d_h = s->g.head_dim;
    int g = n_h / n_kv, half = d_h / 2;
    double *theta = malloc((size_t)half * sizeof *theta);
    for (int i = 0; i < half; i++)
        theta[i] = pow(s->g.rope_theta, -2.0 * i / d_h);
    double *q = malloc((size_t)n * n_h * d_h * sizeof *q);
    double *k = malloc((size_t)n * n_kv * d_h * sizeof *k);
    double *v = malloc((size_t)n * n_kv * d_h * sizeof *v);
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * d;
        matvec(s->wq, s->bq, xt, n_h * d_h, d, q + (size_t)t * n_h * d_h);
        for (int h = 0; h < n_h; h++)
            rotate(q + ((size_t)t * n_h + h) * d_h, half, theta, (double)pos[t]);
        double *kt = k + (size_t)t * n_kv * d_h, *vt = v + (size_t)t * n_kv * d_h;
        if (keys) {
            for (int i = 0; i < n_kv * d_h; i++) {
                kt[i] = keys[(size_t)t * n_kv * d_h + i];
                vt[i] = vals[(size_t)t * n_kv * d_h + i] + (s->bv ? s->bv[i] : 0.0);
            }
            continue;
        }
        matvec(s->wk, s->bk, xt, n_kv * d_h, d, kt);
        matvec(s->wv, s->bv, xt, n_kv * d_h, d, vt);
        for (int j = 0; j < n_kv; j++)
            rotate(kt + (size_t)j * d_h, half, theta, (double)pos[t]);
    }
    double *kj = malloc((size_t)n * d_h * sizeof *kj), *vj = malloc((size_t)n * d_h * sizeof *vj);
    double *o = malloc((size_t)n_h * d_h * sizeof *o);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < n_h; h++) {
            int j = h / g;
            for (int u = 0; u < n; u++)
                for (int i = 0; i < d_h; i++) {
                    kj[(size_t)u * d_h + i] = k[((size_t)u * n_kv + j) * d_h + i];
                    vj[(size_t)u * d_h + i] = v[((size_t)u * n_kv + j) * d_h + i];
                }
            attend(q + ((size_t)t * n_h + h) * d_h, kj, vj, pos, n, pos[t], d_h, d_h, d_h,
                   o + (size_t)h * d_h);
        }
        for (int i = 0; i < d; i++) {
            double acc = 0;
            for (int c = 0; c < n_h * d_h; c++)
                acc += (double)s->wo[(size_t)i * n_h * d_h + c] * o[c];
            out[(size_t)t * d + i] = acc;
        }
    }
    free(theta);
    free(q);
    free(k);
    free(v);
    free(kj);
    free(vj);
    free(o);
}

/* A converted layer's tensors, read through the public API. */
typedef struct ref_mla {
    int d, n_h, n_kv, d_h, r, nope, R, split;
    double rope_theta;
    const float *wq, *bq, *wkr, *bkr, *wdk, *wdv, *wuk, *buk, *wuv, *buv, *wo;
    const int32_t *dims;
} ref_mla;

static inline const void *tensor_or_null(const mla_layer *l, const char *name)
{
    mla_tensor t;
    return mla_layer_tensor_by_name(l, name, &t) == MLA_OK ? t.data : NULL;
}

static inline void ref_mla_init(ref_mla *m, const mla_layer *l)
{
    mla_layer_info info;
    mla_layer_get_info(l, &info, sizeof info);
    mla_geometry g;
    mla_layer_get_geometry(l, &g, sizeof g);
    m->d = g.d_model;
    m->n_h = g.n_heads;
    m->n_kv = g.n_kv_heads;
    m->d_h = g.head_dim;
    m->rope_theta = g.rope_theta;
    m->r = info.rope_dim;
    m->nope = m->d_h - m->r;
    m->R = info.d_kv * m->n_kv;
    m->split = info.factorization == MLA_FACTOR_SPLIT;
    m->wq = tensor_or_null(l, "q_proj.weight");
    m->bq = tensor_or_null(l, "q_proj.bias");
    m->wkr = tensor_or_null(l, "k_r_proj.weight");
    m->bkr = tensor_or_null(l, "k_r_proj.bias");
    if (m->split) {
        m->wdk = tensor_or_null(l, "kv_proj.down_k.weight");
        m->wdv = tensor_or_null(l, "kv_proj.down_v.weight");
    } else {
        m->wdk = m->wdv = tensor_or_null(l, "kv_proj.down_kv.weight");
    }
    m->wuk = tensor_or_null(l, "kv_proj.up_k.weight");
    m->buk = tensor_or_null(l, "kv_proj.up_k.bias");
    m->wuv = tensor_or_null(l, "kv_proj.up_v.weight");
    m->buv = tensor_or_null(l, "kv_proj.up_v.bias");
    m->wo = tensor_or_null(l, "o_proj.weight");
    m->dims = tensor_or_null(l, "rope_dims");
}

/*
 * The converted layer's forward of ../shared/mha2mla.md, steps 1–5, with explicit up-projection:
 * out (n × d) for the n tokens of one sequence. When lat and rope are given (n × latent and
 * n × n_kv·r, the RoPE part already rotated, as read back from a cache), they replace the keys'
 * and values' inputs computed from x; the queries always come from x. Only the rows t with
 * want[t] set are computed (every row where want is NULL); the others of out are left as they are.
 */
static inline void ref_mla_forward_rows(const ref_mla *m, const float *x, const int64_t *pos,
                                        int n, const float *lat, const float *rope,
                                        const unsigned char *want, double *out)
{
    int d = m->d, n_h = m->n_h, n_kv = m->n_kv, d_h = m->d_h, r = m->r, nope = m->nope;
    int R = m->R, g = n_h / n_kv, half = r / 2, L = m->split ? 2 * R : R;
    double *theta = malloc((size_t)(n_kv * half + 1) * sizeof *theta);
    for (int j = 0; j < n_kv; j++)
        for (int i = 0; i < half; i++)
            theta[j * half + i] = pow(m->rope_theta, -2.0 * m->dims[j * r + i] / d_h);
    double *q = malloc((size_t)n * n_h * d_h * sizeof *q);
    double *kr = malloc((size_t)(n * n_kv * r + 1) * sizeof *kr);
    double *c = malloc((size_t)n * L * sizeof *c);
    double *kn = malloc((size_t)(n * n_kv * nope + 1) * sizeof *kn);
    double *v = malloc((size_t)n * n_kv * d_h * sizeof *v);
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * d;
        double *qt = q + (size_t)t * n_h * d_h;
        matvec(m->wq, m->bq, xt, n_h * d_h, d, qt);
        for (int h = 0; h < n_h; h++)
            rotate(qt + (size_t)h * r, half, theta + (h / g) * half, (double)pos[t]);
        double *krt = kr + (size_t)t * n_kv * r, *ct = c + (size_t)t * L;
        if (rope) {
            for (int i = 0; i < n_kv * r; i++)
                krt[i] = rope[(size_t)t * n_kv * r + i];
        } else if (r > 0) {
            matvec(m->wkr, m->bkr, xt, n_kv * r, d, krt);
            for (int j = 0; j < n_kv; j++)
                rotate(krt + (size_t)j * r, half, theta + j * half, (double)pos[t]);
        }
        if (lat) {
            for (int i = 0; i < L; i++)
                ct[i] = lat[(size_t)t * L + i];
        } else {
            matvec(m->wdk, NULL, xt, R, d, ct);
            if (m->split)
                matvec(m->wdv, NULL, xt, R, d, ct + R);
        }
        /* Explicit up-projection: k_nope = W_uk c_k + b_k, v = W_uv c_v + b_v. */
        const double *ck = ct, *cv = m->split ? ct + R : ct;
        for (int i = 0; i < n_kv * nope; i++) {
            double acc = m->buk ? m->buk[i] : 0.0;
            for (int k = 0; k < R; k++)
                acc += (double)m->wuk[(size_t)i * R + k] * ck[k];
            kn[(size_t)t * n_kv * nope + i] = acc;
        }
        for (int i = 0; i < n_kv * d_h; i++) {
            double acc = m->buv ? m->buv[i] : 0.0;
            for (int k = 0; k < R; k++)
                acc += (double)m->wuv[(size_t)i * R + k] * cv[k];
            v[(size_t)t * n_kv * d_h + i] = acc;
        }
    }
    /* Keys per KV head as [k_rope | k_nope] against queries [q_rope | q_nope]. */
    double *kj = malloc((size_t)n * d_h * sizeof *kj), *vj = malloc((size_t)n * d_h * sizeof *vj);
    double *qh = malloc((size_t)d_h * sizeof *qh), *o = malloc((size_t)n_h * d_h * sizeof *o);
    for (int t = 0; t < n; t++) {
        if (want && !want[t])
            continue;
        for (int h = 0; h < n_h; h++) {
            int j = h / g;
            const double *qt = q + (size_t)t * n_h * d_h;
            for (int i = 0; i < r; i++)
                qh[i] = qt[h * r + i];
            for (int i = 0; i < nope; i++)
                qh[r + i] = qt[n_h * r + h * nope + i];
            for (int u = 0; u < n; u++) {
                for (int i = 0; i < r; i++)
                    kj[(size_t)u * d_h + i] = kr[((size_t)u * n_kv + j) * r + i];
                for (int i = 0; i < nope; i++)
                    kj[(size_t)u * d_h + r + i] = kn[((size_t)u * n_kv + j) * nope + i];
                for (int i = 0; i < d_h; i++)
                    vj[(size_t)u * d_h + i] = v[((size_t)u * n_kv + j) * d_h + i];
            }
            attend(qh, kj, vj, pos, n, pos[t], d_h, d_h, d_h, o + (size_t)h * d_h);
        }
        for (int i = 0; i < d; i++) {
            double acc = 0;
            for (int cc = 0; cc < n_h * d_h; cc++)
                acc += (double)m->wo[(size_t)i * n_h * d_h + cc] * o[cc];
            out[(size_t)t * d + i] = acc;
        }
    }
    free(theta);
    free(q);
    free(kr);
    free(c);
    free(kn);
    free(v);
    free(kj);
    free(vj);
    free(qh);
    free(o);
}

/* Every row. */
static inline void ref_mla_forward(const ref_mla *m, const float *x, const int64_t *pos, int n,
                                   const float *lat, const float *rope, double *out)
{
    ref_mla_forward_rows(m, x, pos, n, lat, rope, NULL, out);
}

/* x rounded to float32, then to bf16 (8 significant bits, nearest, ties to even): finite x. */
static inline double bf16_round(double x)
{
    float f = (float)x;
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &b, sizeof f);
    return f;
}

/*
 * The absorbed path over a BF16 cache, modelled in float64 (joint factorization): the formula
 * in its absorbed form, scores Σ_k q̃_k c_sk + Σ_i q_rope,i k_rope,si with the scaled queries
 * q̃ = W_ukᵀ q_nope / √d_h and q_rope / √d_h rounded to bf16 as the library rounds them (its
 * constant term q_nope·b_k cancels in the softmax), ō = Σ_s p_s c_s, out = W_o (W_uv ō + b_v).
 * What the library does beyond this model is to round each probability to bf16 (unit roundoff
 * u = 2⁻⁸, normalized by the unrounded sum) and to sum in float32: the first moves ō_k by at
 * most u·Σ_s p_s |c_sk|, so |out_ti − ref_ti| ≤ bound_ti = u·Σ_{h,e} |W_o[i, h·d_h + e]|
 * Σ_k |W_uv[j·d_h + e, k]| Σ_s p_s |c_sk| (j the head's KV group) plus float32 rounding, which
 * the caller allows as slack. out, bound: n × d.
 */
static inline void ref_mla_forward_bf16(const ref_mla *m, const float *x, const int64_t *pos,
                                        int n, const float *lat, const float *rope, double *out,
                                        double *bound)
{
    int d = m->d, n_h = m->n_h, n_kv = m->n_kv, d_h = m->d_h, r = m->r, nope = m->nope;
    int R = m->R, g = n_h / n_kv, half = r / 2, kd = r + R;
    const double u = ldexp(1.0, -8), sc = 1.0 / sqrt((double)d_h);
    double *theta = malloc((size_t)(n_kv * half + 1) * sizeof *theta);
    for (int j = 0; j < n_kv; j++)
        for (int i = 0; i < half; i++)
            theta[j * half + i] = pow(m->rope_theta, -2.0 * m->dims[j * r + i] / d_h);
    double *q = malloc((size_t)n_h * d_h * sizeof *q), *qa = malloc((size_t)kd * sizeof *qa);
    double *k = malloc((size_t)n * kd * sizeof *k), *v = malloc((size_t)n * R * sizeof *v);
    double *va = malloc((size_t)n * R * sizeof *va);
    double *ob = malloc((size_t)R * sizeof *ob), *oa = malloc((size_t)R * sizeof *oa);
    double *o = malloc((size_t)n_h * d_h * sizeof *o), *oe = malloc((size_t)n_h * d_h * sizeof *oe);
    for (int s = 0; s < n * R; s++) {
        v[s] = lat[s];
        va[s] = fabs(lat[s]);
    }
    for (int t = 0; t < n; t++) {
        matvec(m->wq, m->bq, x + (size_t)t * d, n_h * d_h, d, q);
        for (int h = 0; h < n_h; h++) {
            int j = h / g;
            rotate(q + (size_t)h * r, half, theta + j * half, (double)pos[t]);
            for (int i = 0; i < r; i++)
                qa[i] = bf16_round(q[h * r + i] * sc);
            for (int kk = 0; kk < R; kk++) {
                double acc = 0;
                for (int i = 0; i < nope; i++)
                    acc += (double)m->wuk[(size_t)(j * nope + i) * R + kk] *
                           q[n_h * r + h * nope + i];
                qa[r + kk] = bf16_round(acc * sc);
            }
            for (int s = 0; s < n; s++) {
                for (int i = 0; i < r; i++)
                    k[(size_t)s * kd + i] = rope[((size_t)s * n_kv + j) * r + i];
                for (int kk = 0; kk < R; kk++)
                    k[(size_t)s * kd + r + kk] = lat[(size_t)s * R + kk];
            }
            attend(qa, k, v, pos, n, pos[t], kd, R, 1, ob);
            attend(qa, k, va, pos, n, pos[t], kd, R, 1, oa);
            for (int e = 0; e < d_h; e++) {
                const float *w = m->wuv + (size_t)(j * d_h + e) * R;
                double acc = m->buv ? m->buv[j * d_h + e] : 0.0, ae = 0;
                for (int kk = 0; kk < R; kk++) {
                    acc += (double)w[kk] * ob[kk];
                    ae += fabs((double)w[kk]) * oa[kk];
                }
                o[h * d_h + e] = acc;
                oe[h * d_h + e] = u * ae;
            }
        }
        for (int i = 0; i < d; i++) {
            double acc = 0, be = 0;
            for (int cc = 0; cc < n_h * d_h; cc++) {
                acc += (double)m->wo[(size_t)i * n_h * d_h + cc] * o[cc];
                be += fabs((double)m->wo[(size_t)i * n_h * d_h + cc]) * oe[cc];
            }
            out[(size_t)t * d + i] = acc;
            bound[(size_t)t * d + i] = be;
        }
    }
    free(theta);
    free(q);
    free(qa);
    free(k);
    free(v);
    free(va);
    free(ob);
    free(oa);
    free(o);
    free(oe);
}

/* Convert a source layer (HIGH RoPE strategy). NULL on failure. */
/* One forward of n tokens for each of n_seq sequences seq0, seq0 + 1, ..., every one from
 * position pos0, grouped by sequence (x and out: n_seq·n rows). */
static inline mla_status forward_seqs(mla_attn *a, const mla_layer *layer, mla_cache *c,
                                      int n_seq, int32_t seq0, int64_t pos0, const float *x,
                                      int64_t n, float *out)
{
    int64_t total = n_seq * n;
    int32_t *sq = malloc((size_t)(total > 0 ? total : 1) * sizeof *sq);
    int64_t *ps = malloc((size_t)(total > 0 ? total : 1) * sizeof *ps);
    if (!sq || !ps) {
        free(sq);
        free(ps);
        return MLA_ERR_OUT_OF_MEMORY;
    }
    for (int s = 0; s < n_seq; s++)
        for (int64_t i = 0; i < n; i++) {
            sq[s * n + i] = seq0 + s;
            ps[s * n + i] = pos0 + i;
        }
    mla_status st = mla_attn_forward(a, layer, c, 0, x, total, sq, ps, out);
    free(sq);
    free(ps);
    return st;
}

static inline mla_layer *convert(const src_layer *s, int r, int d_kv, mla_factorization f)
{
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_strategy = MLA_ROPE_HIGH;
    p.rope_dim = r;
    p.d_kv = d_kv;
    p.factorization = f;
    mla_layer *l = NULL;
    if (mla_layer_convert(&s->g, &s->w, NULL, &p, &l) != MLA_OK)
        return NULL;
    return l;
}

#endif /* MLA_TESTS_ATTN_UTIL_H */

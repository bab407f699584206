/*
 * Quantized caches. The attention must equal the MLA formula applied to exactly what the cache
 * holds: the reference takes the latents and RoPE keys read back (dequantized) with
 * mla_cache_seq_read, so the tolerance stays 1e-4 whatever the format — except for a BF16
 * latent and RoPE cache, where the absorbed path multiplies in bf16 (queries and probabilities
 * rounded to bf16): there the reference is ref_mla_forward_bf16 (util.h: the absorbed formula
 * with the queries rounded as the library rounds them) and each output element must stay within
 * its bound for the probabilities' rounding plus the float32 slack of 1e-4·max|ref|; the plain
 * formula's difference is reported. Against a float32 cache
 * the difference must stay within what the format's precision allows. Prefill, decode and both
 * paths read the same stored values.
 */
#include "run.h"

static const struct {
    mla_dtype lat, rope;
    int group;      /* I8/I4: values per scale; groups of 4 put 2 (AVX2) or 4 (AVX-512) in a
                     * vector, 8 one or 2 */
    double tol_f32; /* versus the float32 cache: the format's rounding, amplified by the layer */
} fmts[] = {
    {MLA_DTYPE_F16, MLA_DTYPE_F16, 8, 2e-3}  /* unit roundoff 4.9e-4 */,
    {MLA_DTYPE_BF16, MLA_DTYPE_BF16, 8, 1e-2} /* 3.9e-3 */,
    {MLA_DTYPE_I8, MLA_DTYPE_F16, 8, 2e-2}    /* half a step of 1/127 */,
    {MLA_DTYPE_I8, MLA_DTYPE_F16, 4, 2e-2},
    {MLA_DTYPE_I4, MLA_DTYPE_BF16, 8, 2.5e-1} /* half a step of 1/7 */,
    {MLA_DTYPE_I4, MLA_DTYPE_F16, 4, 2.5e-1},
};

static mla_status run_one(mla_layer *l, mla_dtype lat, mla_dtype rope, mla_attn_path path,
                          seqdata *s, mla_cache **keep)
{
    mla_cache *c = make_cache(&l, 1, lat, rope, 1024, 16);
    mla_attn *a = make_attn(path == MLA_ATTN_PATH_AUTO ? 2 : 1, path);
    mla_status st = c && a ? run_seqs(a, l, c, 0, s, 2, 64) : MLA_ERR_INTERNAL;
    mla_attn_destroy(a);
    if (keep)
        *keep = c;
    else
        mla_cache_destroy(c);
    return st;
}

/* Worst |o.out − refq| / (bound + 1e-4·max|ref|) over both sequences, with max|ref| from s;
 * *bmax (if given): the largest bound relative to max|ref|, to show it is not vacuous. */
static double bf16_error(const seqdata *s, const seqdata *o, double *const *refq,
                         double *const *bound, int d, double *bmax)
{
    double worst = 0, bm = 0;
    for (int i = 0; i < 2 && bound[i]; i++) {
        double rmax = 0;
        for (size_t q = 0; q < (size_t)s[i].n * d; q++)
            rmax = fmax(rmax, fabs(s[i].ref[q]));
        for (size_t q = 0; q < (size_t)s[i].n * d; q++) {
            double x = fabs(o[i].out[q] - refq[i][q]) / (bound[i][q] + 1e-4 * rmax);
            worst = x > worst || x != x ? x : worst;
            bm = fmax(bm, bound[i][q] / rmax);
        }
    }
    if (bmax)
        *bmax = bm;
    return worst;
}

/* Every format over one converted layer: 8 heads of d_h, 2 KV heads, d_kv latent values per KV
 * head. */
static void run_layer(int d_h, int d_kv)
{
    printf("# d_h %d, d_kv %d\n", d_h, d_kv);
    src_layer src;
    src_init(&src, 64, 8, 2, d_h, 1, 301);
    mla_layer *l = convert(&src, 4, d_kv, MLA_FACTOR_JOINT);
    CHECK(l != NULL, "conversion (d_kv %d)", d_kv);
    if (!l) {
        src_free(&src);
        return;
    }
    ref_mla m;
    ref_mla_init(&m, l);
    int d = 64, L = m.R, W = m.n_kv * m.r;
    seqdata f32[2];
    seq_init(&f32[0], 0, 150, 120, d, 0, 1);
    seq_init(&f32[1], 1, 40, 10, d, 0, 2);
    CHECK(run_one(l, MLA_DTYPE_F32, MLA_DTYPE_F32, MLA_ATTN_PATH_AUTO, f32, NULL) == MLA_OK,
          "float32 cache run");
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
        const int quant = fmts[fi].lat == MLA_DTYPE_I8 || fmts[fi].lat == MLA_DTYPE_I4;
        char name[40];
        snprintf(name, sizeof name, quant ? "%s (groups of %d)" : "%s",
                 mla_dtype_name(fmts[fi].lat), fmts[fi].group);
        const char *rn = mla_dtype_name(fmts[fi].rope);
        make_cache_group = fmts[fi].group;
        seqdata s[2], t[2];
        seq_init(&s[0], 0, 150, 120, d, 0, 1);
        seq_init(&s[1], 1, 40, 10, d, 0, 2);
        seq_init(&t[0], 0, 150, 150, d, 0, 1);
        seq_init(&t[1], 1, 40, 40, d, 0, 2);
        mla_cache *c = NULL;
        mla_status st = run_one(l, fmts[fi].lat, fmts[fi].rope, MLA_ATTN_PATH_AUTO, s, &c);
        CHECK(st == MLA_OK, "%s latent, %s rope: prefill and decode (%s)", name, rn,
              st ? mla_last_error() : "");
        for (int i = 0; i < 2 && c; i++) {
            float *lat = malloc((size_t)s[i].n * L * sizeof *lat);
            float *rope = malloc((size_t)s[i].n * W * sizeof *rope);
            mla_cache_seq_read(c, 0, s[i].id, 0, s[i].n, lat, rope, NULL);
            ref_mla_forward(&m, s[i].x, s[i].pos, s[i].n, lat, rope, s[i].ref);
            free(lat);
            free(rope);
        }
        int bf = fmts[fi].lat == MLA_DTYPE_BF16 && fmts[fi].rope == MLA_DTYPE_BF16;
        double *bound[2] = {NULL, NULL}, *refq[2] = {NULL, NULL};
        for (int i = 0; i < 2 && bf && c; i++) {
            float *lat = malloc((size_t)s[i].n * L * sizeof *lat);
            float *rope = malloc((size_t)s[i].n * W * sizeof *rope);
            mla_cache_seq_read(c, 0, s[i].id, 0, s[i].n, lat, rope, NULL);
            bound[i] = malloc((size_t)s[i].n * d * sizeof *bound[i]);
            refq[i] = malloc((size_t)s[i].n * d * sizeof *refq[i]);
            ref_mla_forward_bf16(&m, s[i].x, s[i].pos, s[i].n, lat, rope, refq[i], bound[i]);
            free(lat);
            free(rope);
        }
        double e = seqs_diff(s, 2, d);
        if (!bf) {
            CHECK(e < 1e-4, "%s latent, %s rope: equals the formula on the cached values "
                  "(rel %.2e)", name, rn, e);
        } else {
            /* Worst |out − refq| / (bound + slack); also the bound's size relative to max|ref|,
             * to show it is not vacuous. */
            double worst = 0, bmax = 0, eq = 0;
            for (int i = 0; i < 2 && bound[i]; i++) {
                double x = rel_diff_d(s[i].out, refq[i], (size_t)s[i].n * d);
                eq = x > eq || x != x ? x : eq;
            }
            worst = bf16_error(s, s, refq, bound, d, &bmax);
            CHECK(bound[0] && bound[1] && worst <= 1.0,
                  "%s latent, %s rope (bf16 products): the formula with bf16 queries on the "
                  "cached values, within the bound for bf16 probabilities (error/bound %.2f, "
                  "bound up to %.1e of max|ref|; rel %.2e from it, %.2e from the unrounded "
                  "formula)", name, rn, worst, bmax, eq, e);
            /* The prompts absorbed too: many query rows, which the AVX-512 tables multiply
             * with gemm_bf16 (bf16_many_rows; AMX tiles from 32 latent columns). Same cached
             * values, so the same bound. */
            seqdata u[2];
            seq_init(&u[0], 0, 150, 120, d, 0, 1);
            seq_init(&u[1], 1, 40, 10, d, 0, 2);
            st = run_one(l, fmts[fi].lat, fmts[fi].rope, MLA_ATTN_PATH_ABSORBED, u, NULL);
            double wa = bound[0] && bound[1] ? bf16_error(s, u, refq, bound, d, NULL) : INFINITY;
            CHECK(st == MLA_OK && wa <= 1.0,
                  "%s latent, %s rope: absorbed prompts (many query rows) within the same bound "
                  "(error/bound %.2f)", name, rn, wa);
            for (int i = 0; i < 2; i++)
                seq_free(&u[i]);

        }
        double ef = 0;
        for (int i = 0; i < 2; i++) {
            double x = tap_rel_diff(s[i].out, f32[i].out, (size_t)s[i].n * d);
            ef = x > ef ? x : ef;
        }
        CHECK(ef < fmts[fi].tol_f32, "%s latent, %s rope: within %.0e of the float32 cache "
              "(rel %.2e)", name, rn, fmts[fi].tol_f32, ef);
        /* Materialized prefill of everything over the same format: same stored values. */
        st = run_one(l, fmts[fi].lat, fmts[fi].rope, MLA_ATTN_PATH_MATERIALIZED, t, NULL);
        double em = 0, wm = 0;
        for (int i = 0; i < 2; i++) {
            double x = tap_rel_diff(t[i].out, s[i].out, (size_t)s[i].n * d);
            em = x > em ? x : em;
            if (!bound[i])
                continue;
            double rmax = 0;
            for (size_t q = 0; q < (size_t)s[i].n * d; q++)
                rmax = fmax(rmax, fabs(s[i].ref[q]));
            /* Materialized (float32 products) is the unrounded formula (1e-4 above). */
            for (size_t q = 0; q < (size_t)s[i].n * d; q++) {
                double y = fabs(t[i].out[q] - s[i].ref[q]) / (1e-4 * rmax);
                wm = y > wm || y != y ? y : wm;
            }
        }
        if (!bf)
            CHECK(st == MLA_OK && em < 1e-4,
                  "%s latent, %s rope: materialized prefill equals absorbed decode (rel %.2e)",
                  name, rn, em);
        else
            CHECK(st == MLA_OK && wm <= 1.0,
                  "%s latent, %s rope: materialized prefill keeps float32 products: the "
                  "unrounded formula (error / 1e-4·max|ref| %.2f; absorbed differs by rel %.2e)",
                  name, rn, wm, em);
        for (int i = 0; i < 2; i++) {
            free(bound[i]);
            free(refq[i]);
        }
        mla_cache_destroy(c);
        for (int i = 0; i < 2; i++) {
            seq_free(&s[i]);
            seq_free(&t[i]);
        }
    }
    for (int i = 0; i < 2; i++)
        seq_free(&f32[i]);
    mla_layer_destroy(l);
    src_free(&src);
}

int main(void)
{
    run_layer(16, 8);
    run_layer(16, 16);
    /* R = 64: from 64 latent columns the AMX table takes a decode's few query rows to the tiles
     * too (bf16_few_rows_min_k, kernels.c); the absorbed prompts reach them from R = 32. */
    run_layer(32, 32);
    check_test_kernels_ran();
    return tap_done();
}

/*
 * Quantized caches. The attention must equal the MLA formula applied to exactly what the cache
 * holds: the reference takes the latents and RoPE keys read back (dequantized) with
 * mla_cache_seq_read, so the tolerance stays 1e-4 whatever the format. Against a float32 cache
 * the difference must stay within what the format's precision allows. Prefill, decode and both
 * paths read the same stored values.
 */
#include "run.h"

static const struct {
    mla_dtype lat, rope;
    double tol_f32; /* versus the float32 cache: the format's rounding, amplified by the layer */
} fmts[] = {
    {MLA_DTYPE_F16, MLA_DTYPE_F16, 2e-3}  /* unit roundoff 4.9e-4 */,
    {MLA_DTYPE_BF16, MLA_DTYPE_BF16, 1e-2} /* 3.9e-3 */,
    {MLA_DTYPE_I8, MLA_DTYPE_F16, 2e-2}    /* half a step of 1/127 */,
    {MLA_DTYPE_I4, MLA_DTYPE_BF16, 2.5e-1} /* half a step of 1/7 */,
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

int main(void)
{
    src_layer src;
    src_init(&src, 64, 8, 2, 16, 1, 301);
    mla_layer *l = convert(&src, 4, 8, MLA_FACTOR_JOINT);
    CHECK(l != NULL, "conversion");
    if (!l)
        return tap_done();
    ref_mla m;
    ref_mla_init(&m, l);
    int d = 64, L = m.R, W = m.n_kv * m.r;
    seqdata f32[2];
    seq_init(&f32[0], 0, 150, 120, d, 0, 1);
    seq_init(&f32[1], 1, 40, 10, d, 0, 2);
    CHECK(run_one(l, MLA_DTYPE_F32, MLA_DTYPE_F32, MLA_ATTN_PATH_AUTO, f32, NULL) == MLA_OK,
          "float32 cache run");
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
        const char *name = mla_dtype_name(fmts[fi].lat), *rn = mla_dtype_name(fmts[fi].rope);
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
        double e = seqs_diff(s, 2, d);
        CHECK(e < 1e-4, "%s latent, %s rope: equals the formula on the cached values (rel %.2e)",
              name, rn, e);
        double ef = 0;
        for (int i = 0; i < 2; i++) {
            double x = tap_rel_diff(s[i].out, f32[i].out, (size_t)s[i].n * d);
            ef = x > ef ? x : ef;
        }
        CHECK(ef < fmts[fi].tol_f32, "%s latent, %s rope: within %.0e of the float32 cache "
              "(rel %.2e)", name, rn, fmts[fi].tol_f32, ef);
        /* Materialized prefill of everything over the same format: same stored values. */
        st = run_one(l, fmts[fi].lat, fmts[fi].rope, MLA_ATTN_PATH_MATERIALIZED, t, NULL);
        double em = 0;
        for (int i = 0; i < 2; i++) {
            double x = tap_rel_diff(t[i].out, s[i].out, (size_t)s[i].n * d);
            em = x > em ? x : em;
        }
        CHECK(st == MLA_OK && em < 1e-4,
              "%s latent, %s rope: materialized prefill equals absorbed decode (rel %.2e)", name,
              rn, em);
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
    return tap_done();
}

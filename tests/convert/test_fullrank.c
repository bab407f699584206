/*
 * Full-rank conversions are exact (mha2mla.md, "What a full-rank conversion must satisfy"):
 * with R at the full rank of the factorized matrix, W_uk·W_dkv = W_k_nope and W_uv·W_dkv = W_v,
 * and the reordered W_q / kept W_kr rows are the original rows permuted as the reference does.
 * Also: the MHA baseline handle and the cache description of both.
 */
#include <math.h>

#include "util.h"

#define TOL 1e-5

/* Rows of src (rows × d) picked by idx, compared with got. */
static double rows_diff(const float *got, const float *src, const int *idx, int n, int d)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double e = tap_rel_diff(got + (size_t)i * d, src + (size_t)idx[i] * d, (size_t)d);
        if (e > worst || e != e)
            worst = e;
    }
    return worst;
}

/* ‖up·down − ref‖_F / ‖ref‖_F with up rows × R (row stride R) and down R × d. */
static double product_error(const float *up, const float *down, const float *ref, int rows,
                            int R, int d)
{
    double *p = matmul_f(up, down, (size_t)rows, (size_t)R, (size_t)d);
    double nb, e = frob2_diff(p, ref, (size_t)rows * d, &nb);
    free(p);
    return nb > 0 ? sqrt(e / nb) : sqrt(e);
}

/* Check every tensor of a converted joint/split layer against the source, for kept dims given by
 * freqs (n_kv × r/2, as the test computed them). */
static void check_layer(const char *what, const src_layer *s, const mla_layer *l, int r,
                        int d_kv, int split, const int *freqs)
{
    const mla_geometry *g = &s->g;
    const int d = g->d_model, n_h = g->n_heads, n_kv = g->n_kv_heads, d_h = g->head_dim;
    const int n = d_h - r, grp = n_h / n_kv, R = d_kv * n_kv;
    int *dims = malloc(sizeof(int) * (size_t)(n_kv * d_h));
    int *q_idx = malloc(sizeof(int) * (size_t)(n_h * d_h));
    int *kr_idx = malloc(sizeof(int) * (size_t)(n_kv * r + 1));
    int *kn_idx = malloc(sizeof(int) * (size_t)(n_kv * n + 1));
    /* The reference layout, built from the rule: kept dims of each KV head, then the rest. */
    for (int j = 0; j < n_kv; j++) {
        int *dj = dims + j * d_h, m = r;
        dims_from_freqs(freqs + j * (r / 2), r, d_h, dj);
        for (int i = 0; i < d_h; i++) {
            int kept = 0;
            for (int k = 0; k < r; k++)
                kept |= dj[k] == i;
            if (!kept)
                dj[m++] = i;
        }
        for (int k = 0; k < r; k++)
            kr_idx[j * r + k] = j * d_h + dj[k];
        for (int k = 0; k < n; k++)
            kn_idx[j * n + k] = j * d_h + dj[r + k];
    }
    for (int h = 0; h < n_h; h++) {
        const int *dj = dims + (h / grp) * d_h;
        for (int k = 0; k < r; k++)
            q_idx[h * r + k] = h * d_h + dj[k];
        for (int k = 0; k < n; k++)
            q_idx[n_h * r + h * n + k] = h * d_h + dj[r + k];
    }

    int32_t got[256];
    int dims_ok = 1;
    for (int j = 0; j < n_kv; j++) {
        mla_layer_rope_dims(l, j, got);
        for (int k = 0; k < r; k++)
            dims_ok &= got[k] == dims[j * d_h + k];
    }
    CHECK(dims_ok, "%s: rope dims of every KV head", what);

    mla_tensor t = get_tensor(l, "q_proj.weight");
    CHECK(t.shape[0] == n_h * d_h && t.shape[1] == d, "%s: q_proj.weight shape", what);
    CHECK(rows_diff(t.data, s->wq, q_idx, n_h * d_h, d) == 0,
          "%s: q_proj rows are W_q's rows in the reference order", what);
    t = get_tensor(l, "k_r_proj.weight");
    CHECK(t.shape[0] == n_kv * r && rows_diff(t.data, s->wk, kr_idx, n_kv * r, d) == 0,
          "%s: k_r_proj rows are W_k's kept rows", what);
    if (s->bq) {
        int ok = 1;
        const float *bq = get_tensor(l, "q_proj.bias").data;
        const float *bkr = get_tensor(l, "k_r_proj.bias").data;
        const float *bv = get_tensor(l, "kv_proj.up_v.bias").data;
        for (int i = 0; i < n_h * d_h; i++)
            ok &= bq[i] == s->bq[q_idx[i]];
        for (int i = 0; i < n_kv * r; i++)
            ok &= bkr[i] == s->bk[kr_idx[i]];
        for (int i = 0; i < n_kv * d_h; i++)
            ok &= bv[i] == s->bv[i];
        if (n > 0) {
            const float *buk = get_tensor(l, "kv_proj.up_k.bias").data;
            for (int i = 0; i < n_kv * n; i++)
                ok &= buk[i] == s->bk[kn_idx[i]];
        }
        CHECK(ok, "%s: biases are the source's, permuted like their rows", what);
    }
    t = get_tensor(l, "o_proj.weight");
    CHECK(tap_rel_diff(t.data, s->wo, (size_t)d * n_h * d_h) == 0, "%s: o_proj is W_o", what);

    /* Exact reconstruction at full rank. */
    float *knope = malloc(sizeof(float) * ((size_t)n_kv * n * d + 1));
    for (int i = 0; i < n_kv * n; i++)
        memcpy(knope + (size_t)i * d, s->wk + (size_t)kn_idx[i] * d, sizeof(float) * (size_t)d);
    const float *dk = get_tensor(l, split ? "kv_proj.down_k.weight" : "kv_proj.down_kv.weight").data;
    const float *dv = split ? get_tensor(l, "kv_proj.down_v.weight").data : dk;
    mla_tensor uk = get_tensor(l, "kv_proj.up_k.weight"), uv = get_tensor(l, "kv_proj.up_v.weight");
    CHECK(uk.shape[0] == n_kv * n && uk.shape[1] == R && uv.shape[0] == n_kv * d_h &&
          uv.shape[1] == R, "%s: up_k %lld × %lld, up_v %lld × %lld", what,
          (long long)uk.shape[0], (long long)uk.shape[1], (long long)uv.shape[0],
          (long long)uv.shape[1]);
    if (n > 0) {
        double e = product_error(uk.data, dk, knope, n_kv * n, R, d);
        CHECK(e < TOL, "%s: W_uk·W_dkv reproduces W_k_nope (rel %.2e)", what, e);
    }
    double e = product_error(uv.data, dv, s->wv, n_kv * d_h, R, d);
    CHECK(e < TOL, "%s: W_uv·W_dkv reproduces W_v (rel %.2e)", what, e);

    mla_convert_report rep;
    mla_layer_get_report(l, &rep, sizeof rep);
    CHECK(fabs(rep.kept_energy - 1) < 1e-9 && rep.v_rel_error < TOL &&
          (n == 0 || rep.k_nope_rel_error < TOL),
          "%s: report: kept energy %.12f, errors %.2e %.2e", what, rep.kept_energy,
          rep.k_nope_rel_error, rep.v_rel_error);

    /* What the cache and attention read: latent width, RoPE heads, original frequencies. */
    mla_cache_layer_desc cd;
    CHECK(mla_layer_cache_desc(l, &cd, sizeof cd) == MLA_OK, "%s: cache desc", what);
    int freq_ok = 1;
    for (int j = 0; j < n_kv; j++)
        for (int k = 0; k < r / 2; k++) {
            double th = pow(g->rope_theta, -2.0 * freqs[j * (r / 2) + k] / d_h);
            freq_ok &= fabs(cd.rope_freqs[j * (r / 2) + k] - th) <= 1e-6 * th;
        }
    CHECK(cd.latent_dim == (split ? 2 : 1) * R && cd.rope_dim == r &&
          cd.rope_heads == (r ? n_kv : 0) && cd.mha_kv_dim == n_kv * d_h && freq_ok &&
          cd.rope_position_scale == 1.0,
          "%s: cache desc latent %d, rope %d × %d, θ_i = theta^(-2i/d_h)", what, cd.latent_dim,
          cd.rope_heads, cd.rope_dim);
    mla_layer_info info;
    mla_layer_get_info(l, &info, sizeof info);
    CHECK(info.kind == MLA_LAYER_MLA && info.latent_dim == cd.latent_dim &&
          info.rope_width == n_kv * r && info.d_kv == d_kv && info.rope_dim == r,
          "%s: info", what);
    free(knope);
    free(dims);
    free(q_idx);
    free(kr_idx);
    free(kn_idx);
}

static void run(const char *what, int d, int n_h, int n_kv, int d_h, int bias, int r, int d_kv,
                mla_factorization f, mla_rope_strategy strat, int start)
{
    src_layer s;
    src_init(&s, d, n_h, n_kv, d_h, bias, 0x1234567ULL + (unsigned)d * 7 + (unsigned)r);
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_dim = r;
    p.d_kv = d_kv;
    p.factorization = f;
    p.rope_strategy = strat;
    p.uniform_start = start;
    mla_layer *l = NULL;
    mla_status st = mla_layer_convert(&s.g, &s.w, NULL, &p, &l);
    CHECK(st == MLA_OK, "%s: convert: %s", what, mla_last_error());
    if (st == MLA_OK) {
        /* The frequencies by the rules of mha2mla.md, written out. */
        int freqs[64 * 64];
        for (int j = 0; j < n_kv; j++)
            for (int k = 0; k < r / 2; k++)
                freqs[j * (r / 2) + k] = strat == MLA_ROPE_HIGH  ? k
                                         : strat == MLA_ROPE_LOW ? d_h / 2 - r / 2 + k
                                                                 : start + k * (d_h / r);
        check_layer(what, &s, l, r, d_kv, f == MLA_FACTOR_SPLIT, freqs);
    }
    mla_layer_destroy(l);
    src_free(&s);
}

static void check_mha(void)
{
    src_layer s;
    src_init(&s, 48, 6, 2, 8, 1, 99);
    s.g.rope_scaling = MLA_ROPE_SCALING_LINEAR;
    s.g.rope_scaling_factor = 4.0;
    mla_layer *l = NULL;
    CHECK(mla_layer_from_mha(&s.g, &s.w, &l) == MLA_OK, "from_mha: %s", mla_last_error());
    if (!l)
        return;
    size_t qn = 6 * 8 * 48, kn = 2 * 8 * 48;
    CHECK(tap_rel_diff(get_tensor(l, "q_proj.weight").data, s.wq, qn) == 0 &&
              tap_rel_diff(get_tensor(l, "k_proj.weight").data, s.wk, kn) == 0 &&
              tap_rel_diff(get_tensor(l, "v_proj.weight").data, s.wv, kn) == 0 &&
              tap_rel_diff(get_tensor(l, "o_proj.weight").data, s.wo, qn) == 0 &&
              tap_rel_diff(get_tensor(l, "v_proj.bias").data, s.bv, 16) == 0,
          "MHA handle holds the source tensors unchanged");
    mla_cache_layer_desc cd;
    mla_layer_cache_desc(l, &cd, sizeof cd);
    int ok = 1;
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 4; i++)
            ok &= fabs(cd.rope_freqs[j * 4 + i] - pow(10000.0, -2.0 * i / 8)) < 1e-6;
    CHECK(ok && cd.latent_dim == 16 && cd.rope_heads == 2 && cd.rope_dim == 8 &&
          cd.mha_kv_dim == 16 && cd.rope_position_scale == 0.25,
          "MHA cache desc: values as latent, full keys as RoPE part, linear scale 1/4");
    int32_t dims[8];
    mla_layer_rope_dims(l, 1, dims);
    ok = 1;
    for (int i = 0; i < 8; i++)
        ok &= dims[i] == i;
    mla_layer_info info;
    mla_layer_get_info(l, &info, sizeof info);
    CHECK(ok && info.kind == MLA_LAYER_MHA && info.rope_width == 16 && info.n_tensors == 7,
          "MHA info and dims 0..d_h-1");
    mla_layer_destroy(l);
    src_free(&s);
}

int main(void)
{
    /* r = d_h, R at full rank: the conversion is the identity on the attention weights. */
    run("MHA all-RoPE joint", 64, 4, 4, 16, 1, 16, 16, MLA_FACTOR_JOINT, MLA_ROPE_HIGH, 0);
    run("GQA 2:1 all-RoPE joint", 64, 4, 2, 16, 0, 16, 16, MLA_FACTOR_JOINT, MLA_ROPE_HIGH, 0);
    /* Partial RoPE, full-rank latent (rows 2·12 + 32 = 56 ≤ d = 96). */
    run("GQA 2:1 r=4 high joint", 96, 4, 2, 16, 1, 4, 28, MLA_FACTOR_JOINT, MLA_ROPE_HIGH, 0);
    run("GQA 3:1 r=4 low joint", 96, 6, 2, 16, 1, 4, 28, MLA_FACTOR_JOINT, MLA_ROPE_LOW, 0);
    run("MHA r=4 uniform(1) joint", 128, 3, 3, 16, 0, 4, 28, MLA_FACTOR_JOINT, MLA_ROPE_UNIFORM,
        1);
    /* Split at full rank needs R ≥ both row counts: r = 0, no RoPE at all. */
    run("GQA 2:1 r=0 split", 48, 4, 2, 16, 1, 0, 16, MLA_FACTOR_SPLIT, MLA_ROPE_HIGH, 0);
    check_mha();
    return tap_done();
}

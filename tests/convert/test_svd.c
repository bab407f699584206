/*
 * Truncation is optimal (Eckart–Young): the factorized matrix's error ‖M − W_up·W_dkv‖_F² equals
 * the sum of its discarded squared singular values, computed here by an independent SVD
 * (LAPACKE_dgesvd on the matrix this test assembles from the source rows). The report's kept
 * energy and relative errors are checked against the same numbers.
 */
#include <lapacke.h>
#include <math.h>

#include "util.h"

/* Singular values of a rows × cols row-major float matrix, descending; returns their count. */
static int singular_values(const float *a, int rows, int cols, double *s)
{
    double *m = malloc(sizeof(double) * (size_t)rows * cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        m[i] = a[i];
    int k = rows < cols ? rows : cols;
    double *superb = malloc(sizeof(double) * (size_t)(k + 1));
    lapack_int info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', rows, cols, m, cols, s, NULL, 1,
                                     NULL, 1, superb);
    free(m);
    free(superb);
    return info == 0 ? k : -1;
}

static double tail(const double *s, int k, int R, double *all)
{
    double t = 0, a = 0;
    for (int i = 0; i < k; i++) {
        a += s[i] * s[i];
        if (i >= R)
            t += s[i] * s[i];
    }
    *all = a;
    return t;
}

/* decades > 0: every source row's column c scaled by 10^(−decades·c/(d−1)), so the singular
 * values spread over about that many decades (the factorization squares them in its Gram
 * matrix: this checks that truncation stays optimal where σ² spans 2·decades). */
static void run_cond(const char *what, int d, int n_h, int n_kv, int d_h, int r, int d_kv,
                     mla_factorization f, double decades)
{
    src_layer s;
    src_init(&s, d, n_h, n_kv, d_h, 1, 777 + (unsigned)r * 13 + (unsigned)d_kv);
    for (int c = 0; c < d && decades > 0; c++) {
        float sc = (float)pow(10.0, -decades * c / (d - 1));
        for (int i = 0; i < n_kv * d_h; i++) {
            s.wk[(size_t)i * d + c] *= sc;
            s.wv[(size_t)i * d + c] *= sc;
        }
    }
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_dim = r;
    p.d_kv = d_kv;
    p.factorization = f;
    p.rope_strategy = MLA_ROPE_HIGH;
    mla_layer *l = NULL;
    if (mla_layer_convert(&s.g, &s.w, NULL, &p, &l) != MLA_OK) {
        CHECK(0, "%s: convert: %s", what, mla_last_error());
        src_free(&s);
        return;
    }
    const int n = d_h - r, R = d_kv * n_kv, kr = n_kv * n, vr = n_kv * d_h;
    /* W_k_nope by the high rule: head j drops frequencies r/2 .. d_h/2−1 and their partners. */
    float *m = malloc(sizeof(float) * (size_t)(kr + vr) * d);
    int row = 0;
    for (int j = 0; j < n_kv; j++)
        for (int i = 0; i < d_h; i++)
            if (!(i % (d_h / 2) < r / 2))
                memcpy(m + (size_t)row++ * d, s.wk + ((size_t)j * d_h + i) * d,
                       sizeof(float) * (size_t)d);
    memcpy(m + (size_t)kr * d, s.wv, sizeof(float) * (size_t)vr * d);

    const float *uk = get_tensor(l, "kv_proj.up_k.weight").data;
    const float *uv = get_tensor(l, "kv_proj.up_v.weight").data;
    mla_convert_report rep;
    mla_layer_get_report(l, &rep, sizeof rep);
    double sv[512], all;
    if (f != MLA_FACTOR_SPLIT) {
        const float *down = get_tensor(l, "kv_proj.down_kv.weight").data;
        float *up = malloc(sizeof(float) * (size_t)(kr + vr) * R);
        memcpy(up, uk, sizeof(float) * (size_t)kr * R);
        memcpy(up + (size_t)kr * R, uv, sizeof(float) * (size_t)vr * R);
        double *prod = matmul_f(up, down, (size_t)(kr + vr), (size_t)R, (size_t)d);
        double err = frob2_diff(prod, m, (size_t)(kr + vr) * d, NULL);
        int k = singular_values(m, kr + vr, d, sv);
        double bound = tail(sv, k, R, &all);
        CHECK(k > R && fabs(err - bound) <= 1e-4 * bound,
              "%s: ‖M − M̂‖² = %.8g, Σ discarded σ² = %.8g (rel %.1e)", what, err, bound,
              fabs(err - bound) / bound);
        CHECK(fabs(rep.kept_energy - (all - bound) / all) < 1e-9,
              "%s: kept energy %.10f = 1 − tail/total", what, rep.kept_energy);
        /* The report's split into K_nope and V errors, against this test's product. */
        double nk, nv;
        double ek = kr ? frob2_diff(prod, m, (size_t)kr * d, &nk) : 0;
        double ev = frob2_diff(prod + (size_t)kr * d, m + (size_t)kr * d, (size_t)vr * d, &nv);
        CHECK((kr == 0 ? rep.k_nope_rel_error == 0
                       : fabs(rep.k_nope_rel_error - sqrt(ek / nk)) < 1e-6) &&
                  fabs(rep.v_rel_error - sqrt(ev / nv)) < 1e-6 && isnan(rep.v_act_rel_error),
              "%s: report errors K_nope %.6f, V %.6f", what, rep.k_nope_rel_error,
              rep.v_rel_error);
        free(prod);
        free(up);
    } else {
        /* Each matrix truncated on its own. */
        const float *dk = get_tensor(l, "kv_proj.down_k.weight").data;
        const float *dv = get_tensor(l, "kv_proj.down_v.weight").data;
        double *pk = matmul_f(uk, dk, (size_t)kr, (size_t)R, (size_t)d);
        double *pv = matmul_f(uv, dv, (size_t)vr, (size_t)R, (size_t)d);
        double nk, nv, allk, allv;
        double ek = frob2_diff(pk, m, (size_t)kr * d, &nk);
        double ev = frob2_diff(pv, m + (size_t)kr * d, (size_t)vr * d, &nv);
        int k1 = singular_values(m, kr, d, sv);
        double bk = tail(sv, k1, R, &allk);
        int k2 = singular_values(m + (size_t)kr * d, vr, d, sv);
        double bv = tail(sv, k2, R, &allv);
        CHECK(fabs(ek - bk) <= 1e-4 * bk && fabs(ev - bv) <= 1e-4 * bv,
              "%s: K_nope error² %.8g vs bound %.8g, V %.8g vs %.8g", what, ek, bk, ev, bv);
        CHECK(fabs(rep.kept_energy - (allk + allv - bk - bv) / (allk + allv)) < 1e-9,
              "%s: kept energy of both %.10f", what, rep.kept_energy);
        CHECK(fabs(rep.k_nope_rel_error - sqrt(ek / nk)) < 1e-6 &&
                  fabs(rep.v_rel_error - sqrt(ev / nv)) < 1e-6,
              "%s: report errors %.6f %.6f", what, rep.k_nope_rel_error, rep.v_rel_error);
        free(pk);
        free(pv);
    }
    free(m);
    mla_layer_destroy(l);
    src_free(&s);
}

static void run(const char *what, int d, int n_h, int n_kv, int d_h, int r, int d_kv,
                mla_factorization f)
{
    run_cond(what, d, n_h, n_kv, d_h, r, d_kv, f, 0);
}

int main(void)
{
    run("joint GQA 3:1 r=8 d_kv=10", 80, 6, 2, 32, 8, 10, MLA_FACTOR_JOINT);
    run("joint MHA r=4 d_kv=3", 64, 4, 4, 16, 4, 3, MLA_FACTOR_JOINT);
    run("joint r=d_h (K_nope empty) d_kv=5", 64, 4, 2, 16, 16, 5, MLA_FACTOR_JOINT);
    run("joint r=0 d_kv=7", 96, 4, 2, 32, 0, 7, MLA_FACTOR_JOINT);
    run("split GQA 2:1 r=8 d_kv=6", 72, 4, 2, 32, 8, 6, MLA_FACTOR_SPLIT);
    run_cond("joint, σ over 6 decades, d_kv=20", 96, 4, 2, 32, 8, 20, MLA_FACTOR_JOINT, 6);
    run_cond("split, σ over 3 decades, d_kv=12", 96, 4, 2, 32, 8, 12, MLA_FACTOR_SPLIT, 3);
    return tap_done();
}

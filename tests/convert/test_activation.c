/*
 * Activation-aware joint factorization: on correlated inputs its error on the projected
 * activations, Σ_t ‖(M − M̂) x_t‖² (computed here token by token), is below the weight-only joint
 * SVD's, while the weight-space error is above (each is optimal for its own norm). With XᵀX = I
 * it gives the joint factorization's product.
 */
#include <lapacke.h>
#include <math.h>

#include "util.h"

enum { D = 48, NH = 4, NKV = 2, DH = 16, RD = 4, T = 400, DKV = 6 };
enum { KR = NKV * (DH - RD), VR = NKV * DH, ROWS = KR + VR, RK = DKV * NKV };

/* M̂ = [W_uk; W_uv]·W_dkv of a joint layer, ROWS × D. */
static double *product(const mla_layer *l)
{
    const float *uk = get_tensor(l, "kv_proj.up_k.weight").data;
    const float *uv = get_tensor(l, "kv_proj.up_v.weight").data;
    const float *dn = get_tensor(l, "kv_proj.down_kv.weight").data;
    float up[ROWS * RK];
    memcpy(up, uk, sizeof(float) * KR * RK);
    memcpy(up + KR * RK, uv, sizeof(float) * VR * RK);
    return matmul_f(up, dn, ROWS, RK, D);
}

/* Σ_t ‖E x_t‖² over rows [r0, r1) of E = M − M̂, and Σ_t ‖M x_t‖² over the same rows. */
static double act_err(const float *m, const double *mh, const float *x, int n, int r0, int r1,
                      double *ref)
{
    double e = 0, f = 0;
    for (int t = 0; t < n; t++)
        for (int i = r0; i < r1; i++) {
            double a = 0, b = 0;
            for (int c = 0; c < D; c++) {
                a += ((double)m[i * D + c] - mh[i * D + c]) * x[t * D + c];
                b += (double)m[i * D + c] * x[t * D + c];
            }
            e += a * a;
            f += b * b;
        }
    *ref = f;
    return e;
}

static mla_layer *convert(src_layer *s, mla_calib *c, mla_factorization f)
{
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_dim = RD;
    p.d_kv = DKV;
    p.factorization = f;
    mla_layer *l = NULL;
    if (mla_layer_convert(&s->g, &s->w, c, &p, &l) != MLA_OK)
        CHECK(0, "convert (factorization %d): %s", (int)f, mla_last_error());
    return l;
}

/* Eckart–Young in activation space. Without damping, ‖X (M − M̂)ᵀ‖_F² is minimized over rank R
 * by the activation-aware factorization, and its minimum is the sum of the discarded eigenvalues
 * of M C Mᵀ (C = XᵀX): the squared singular values of M·L. Computed here from X directly
 * (LAPACKE_dsyev), with the error summed token by token. */
static void eckart_young(src_layer *s, mla_calib *c, const float *m, const float *x)
{
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_dim = RD;
    p.d_kv = DKV;
    p.factorization = MLA_FACTOR_ACTIVATION_JOINT;
    p.damping = 0;
    mla_layer *l = NULL;
    if (mla_layer_convert(&s->g, &s->w, c, &p, &l) != MLA_OK) {
        CHECK(0, "activation-aware, damping 0: %s", mla_last_error());
        return;
    }
    static double xm[T * ROWS], gram[ROWS * ROWS];
    double ev[ROWS];
    /* X Mᵀ (T × ROWS), then its Gram matrix (X Mᵀ)ᵀ (X Mᵀ) = M C Mᵀ. */
    for (int t = 0; t < T; t++)
        for (int i = 0; i < ROWS; i++) {
            double a = 0;
            for (int k = 0; k < D; k++)
                a += (double)m[i * D + k] * x[t * D + k];
            xm[t * ROWS + i] = a;
        }
    memset(gram, 0, sizeof gram);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < ROWS; i++)
            for (int j = 0; j < ROWS; j++)
                gram[i * ROWS + j] += xm[t * ROWS + i] * xm[t * ROWS + j];
    lapack_int info = LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'N', 'U', ROWS, gram, ROWS, ev);
    double tail = 0, all = 0; /* ev ascending: the top RK are kept */
    for (int i = 0; i < ROWS; i++) {
        all += ev[i];
        if (i < ROWS - RK)
            tail += ev[i];
    }
    double *pa = product(l), refk, refv;
    double err = act_err(m, pa, x, T, 0, KR, &refk) + act_err(m, pa, x, T, KR, ROWS, &refv);
    CHECK(info == 0 && fabs(err - tail) <= 1e-4 * tail,
          "damping 0: activation error² %.8g = Σ discarded eigenvalues of M C Mᵀ %.8g (rel %.1e)",
          err, tail, fabs(err - tail) / tail);
    mla_convert_report rep;
    mla_layer_get_report(l, &rep, sizeof rep);
    CHECK(fabs(rep.kept_energy - (all - tail) / all) < 1e-8,
          "damping 0: kept energy %.10f = kept share of σ²(M·L) %.10f", rep.kept_energy,
          (all - tail) / all);
    free(pa);
    mla_layer_destroy(l);
}

int main(void)
{
    src_layer s;
    src_init(&s, D, NH, NKV, DH, 1, 31337);
    /* M = [W_k_nope; W_v], high rule: head j drops frequencies 2..7 and their partners. */
    float m[ROWS * D];
    int row = 0;
    for (int j = 0; j < NKV; j++)
        for (int i = 0; i < DH; i++)
            if (i % (DH / 2) >= RD / 2)
                memcpy(m + row++ * D, s.wk + (j * DH + i) * D, sizeof(float) * D);
    memcpy(m + KR * D, s.wv, sizeof(float) * VR * D);

    /* Correlated inputs: x = A z with z's coordinates on a decaying scale. */
    unsigned long long seed = 5;
    float *a = rand_floats(D * D, &seed, 1.0), *x = malloc(sizeof(float) * T * D);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < D; i++) {
            double v = 0;
            for (int k = 0; k < D; k++)
                v += a[i * D + k] * tap_rand(&seed) * pow(1.0 + k, -1.5);
            x[t * D + i] = (float)v;
        }
    mla_calib *c = NULL;
    CHECK(mla_calib_create(&s.g, &s.w, NULL, &c) == MLA_OK && mla_calib_feed(c, x, T) == MLA_OK,
          "calibrate on %d correlated tokens", T);
    mla_layer *lj = convert(&s, c, MLA_FACTOR_JOINT);
    mla_layer *la = convert(&s, c, MLA_FACTOR_ACTIVATION_JOINT);
    if (lj && la) {
        double *pj = product(lj), *pa = product(la), refk, refv;
        double ejk = act_err(m, pj, x, T, 0, KR, &refk), ejv = act_err(m, pj, x, T, KR, ROWS, &refv);
        double eak = act_err(m, pa, x, T, 0, KR, &refk), eav = act_err(m, pa, x, T, KR, ROWS, &refv);
        double joint = sqrt((ejk + ejv) / (refk + refv)), aware = sqrt((eak + eav) / (refk + refv));
        CHECK(aware < 0.9 * joint, "activation error: aware %.4f < joint %.4f", aware, joint);
        double wj = frob2_diff(pj, m, ROWS * D, NULL), wa = frob2_diff(pa, m, ROWS * D, NULL);
        CHECK(wj <= wa, "weight error: joint %.4f ≤ aware %.4f (Eckart–Young)", wj, wa);
        mla_convert_report rj, ra;
        mla_layer_get_report(lj, &rj, sizeof rj);
        mla_layer_get_report(la, &ra, sizeof ra);
        CHECK(fabs(rj.k_nope_act_rel_error - sqrt(ejk / refk)) < 1e-6 &&
                  fabs(rj.v_act_rel_error - sqrt(ejv / refv)) < 1e-6 &&
                  fabs(ra.k_nope_act_rel_error - sqrt(eak / refk)) < 1e-6 &&
                  fabs(ra.v_act_rel_error - sqrt(eav / refv)) < 1e-6,
              "reported activation errors match: joint K %.4f V %.4f, aware K %.4f V %.4f",
              rj.k_nope_act_rel_error, rj.v_act_rel_error, ra.k_nope_act_rel_error,
              ra.v_act_rel_error);
        free(pj);
        free(pa);
    }
    mla_layer_destroy(lj);
    mla_layer_destroy(la);

    eckart_young(&s, c, m, x);
    mla_calib_destroy(c);

    /* X = I_d: XᵀX = I, so the whitening is a scalar and the product is the joint one. */
    float *eye = calloc(D * D, sizeof(float));
    for (int i = 0; i < D; i++)
        eye[i * D + i] = 1;
    mla_calib_create(&s.g, &s.w, NULL, &c);
    mla_calib_feed(c, eye, D);
    double xtx[D * D];
    mla_calib_covariance(c, xtx);
    int id = 1;
    for (int i = 0; i < D * D; i++)
        id &= xtx[i] == (i % (D + 1) == 0);
    CHECK(id, "feeding the rows of I gives XᵀX = I");
    lj = convert(&s, c, MLA_FACTOR_JOINT);
    la = convert(&s, c, MLA_FACTOR_ACTIVATION_JOINT);
    if (lj && la) {
        double *pj = product(lj), *pa = product(la), num = 0, den = 0;
        for (int i = 0; i < ROWS * D; i++) {
            num += (pj[i] - pa[i]) * (pj[i] - pa[i]);
            den += pj[i] * pj[i];
        }
        CHECK(sqrt(num / den) < 1e-5, "XᵀX = I: aware product equals joint (rel %.1e)",
              sqrt(num / den));
        free(pj);
        free(pa);
    }
    mla_layer_destroy(lj);
    mla_layer_destroy(la);
    mla_calib_destroy(c);
    free(eye);
    free(a);
    free(x);
    src_free(&s);
    return tap_done();
}

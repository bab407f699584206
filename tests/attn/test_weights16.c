/*
 * mla_layer_set_weight_dtype: a layer whose weight matrices (q_proj, k_r_proj / k_proj, the down
 * projection / v_proj, the up projections, o_proj) are stored in 16 bits. The getters return this test's own
 * rounding of the float32 values (bf16 by bit arithmetic, f16 by its definition in double), and
 * forwards of prompts, chunks and decode tokens equal the float64 reference of util.h run over
 * those rounded weights. The 16-bit tensors read back and stored again are the same bits. Back
 * to F32, a forward equals, bit for bit, one of a layer built from the rounded values. Bad
 * dtypes and out-of-range values fail and leave the layer as it was.
 */
#include <stdio.h>

#include "util.h"

static uint16_t round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* nearest, ties to even (finite f) */
    return (uint16_t)(u >> 16);
}

static float widen_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* binary16 by its definition: 11 significant bits (fewer below 2^-14, the subnormals, in steps
 * of 2^-24), nearest with ties to even (nearbyint's default mode), done in double. */
static float round_f16_value(float f)
{
    double a = fabs((double)f), quantum = ldexp(1.0, -24);
    if (a >= ldexp(1.0, -14)) {
        int e;
        frexp(a, &e); /* a in [2^(e-1), 2^e) */
        quantum = ldexp(1.0, e - 1 - 10);
    }
    return (float)(nearbyint((double)f / quantum) * quantum);
}

/* A binary16 bit pattern's value, from its fields (finite patterns). */
static float widen_f16(uint16_t u)
{
    int e = (u >> 10) & 31, man = u & 1023;
    double v = e == 0 ? ldexp(man, -24) : ldexp(1024 + man, e - 25);
    return (float)((u & 0x8000) ? -v : v);
}

/* The float32 values of w rounded to dtype and widened again (test-owned). */
static float *rounded(const float *w, size_t n, mla_dtype dt)
{
    float *r = malloc((n ? n : 1) * sizeof *r);
    for (size_t i = 0; i < n; i++)
        r[i] = dt == MLA_DTYPE_BF16 ? widen_bf16(round_bf16(w[i])) : round_f16_value(w[i]);
    return r;
}

static size_t count(const mla_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static int weight_matrix(const char *name)
{
    static const char *const names[] = {"q_proj.weight", "k_r_proj.weight", "k_proj.weight",
                                        "v_proj.weight", "kv_proj.down_kv.weight",
                                        "kv_proj.down_k.weight", "kv_proj.down_v.weight",
                                        "kv_proj.up_k.weight", "kv_proj.up_v.weight",
                                        "o_proj.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return 0;
}

/* Every tensor of l16 (after set_weight_dtype) against l32's (before): the weight matrices in dt
 * with exactly the test's rounding, the others float32 and unchanged. */
static void check_tensors(const mla_layer *l32, const mla_layer *l16, mla_dtype dt,
                          const char *what)
{
    mla_layer_info info;
    mla_layer_get_info(l16, &info, sizeof info);
    CHECK(info.weight_dtype == dt, "%s: info.weight_dtype %d", what, (int)info.weight_dtype);
    int n_matrices = 0;
    int want = info.kind == MLA_LAYER_MHA                   ? 4
               : info.factorization == MLA_FACTOR_SPLIT ? 7
                                                          : 6;
    for (int32_t i = 0; i < info.n_tensors; i++) {
        mla_tensor a, b;
        mla_layer_tensor(l32, i, &a);
        mla_layer_tensor(l16, i, &b);
        size_t n = count(&a), bad = 0;
        if (!weight_matrix(a.name)) {
            bad = b.dtype != a.dtype || (n > 0 && memcmp(a.data, b.data, n * 4) != 0);
            CHECK(!bad, "%s: %s unchanged", what, a.name);
            continue;
        }
        n_matrices++;
        for (size_t k = 0; k < n; k++) {
            float v = ((const float *)a.data)[k];
            uint16_t h = ((const uint16_t *)b.data)[k];
            bad += dt == MLA_DTYPE_BF16 ? h != round_bf16(v) : widen_f16(h) != round_f16_value(v);
        }
        CHECK(b.dtype == dt && !bad, "%s: %s stored as %s (%zu of %zu values differ)", what,
              a.name, mla_dtype_name(b.dtype), bad, n);
    }
    CHECK(n_matrices == want, "%s: %d weight matrices (%d expected)", what, n_matrices, want);
}

/* A layer built from l's tensors as they are stored (mla_layer_from_tensors); NULL on failure. */
static mla_layer *rebuilt(const mla_layer *l)
{
    mla_layer_info info;
    mla_geometry g;
    mla_tensor t[16];
    mla_layer *out = NULL;
    if (mla_layer_get_info(l, &info, sizeof info) != MLA_OK ||
        mla_layer_get_geometry(l, &g, sizeof g) != MLA_OK || info.n_tensors > 16)
        return NULL;
    for (int32_t i = 0; i < info.n_tensors; i++)
        if (mla_layer_tensor(l, i, &t[i]) != MLA_OK)
            return NULL;
    mla_layer_from_tensors(&g, info.rope_dim, info.d_kv, t, info.n_tensors, &out);
    return out;
}

/* Every tensor of a and b: the same name, dtype, shape and bytes. */
static int same_tensors(const mla_layer *a, const mla_layer *b)
{
    mla_layer_info ia, ib;
    mla_layer_get_info(a, &ia, sizeof ia);
    mla_layer_get_info(b, &ib, sizeof ib);
    int same = ia.n_tensors == ib.n_tensors && ia.weight_dtype == ib.weight_dtype;
    for (int32_t i = 0; i < ia.n_tensors && same; i++) {
        mla_tensor ta, tb;
        mla_layer_tensor(a, i, &ta);
        mla_layer_tensor(b, i, &tb);
        size_t n = count(&ta) * (size_t)(mla_dtype_bits(ta.dtype) / 8);
        same = strcmp(ta.name, tb.name) == 0 && ta.dtype == tb.dtype && count(&ta) == count(&tb) &&
               (n == 0 || memcmp(ta.data, tb.data, n) == 0);
    }
    return same;
}

/* A prompt past the kernel table's dot_weights_max_m (the panel path of mla__wgemm: 512 rows
 * with AVX-512, 64 with AVX2, as valgrind runs it; main sets it), a chunk (gemm_dot_src over
 * 16-bit rows), then single decode tokens (one row). */
static int calls[] = {600, 40, 1, 1, 1};
#define N_CALLS 5
#define MAX_TOK 643
static int N_TOK = MAX_TOK;

/* N_TOK random input rows of width d (from seed) and their positions 0 .. N_TOK − 1. */
static float *inputs(int d, unsigned long long seed, int64_t *pos)
{
    for (int i = 0; i < N_TOK; i++)
        pos[i] = i;
    return rand_floats((size_t)N_TOK * d, &seed, 1.0);
}

/* Sequence 0 through layer l on a fresh float32 cache with nt threads and path, in the calls
 * above from position 0; out: N_TOK × d. 1 if every call succeeded. */
static int run_path(const mla_layer *l, int nt, mla_attn_path path, const float *x, int d,
                    float *out)
{
    mla_layer *layers[1] = {(mla_layer *)l};
    mla_cache *c = make_cache(layers, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 1024, 64);
    mla_attn *a = make_attn(nt, path);
    int64_t p = 0;
    int ok = c && a;
    for (int i = 0; i < N_CALLS && ok; i++) {
        ok = forward_seqs(a, l, c, 1, 0, p, x + p * d, calls[i], out + p * d) == MLA_OK;
        p += calls[i];
    }
    mla_attn_destroy(a);
    mla_cache_destroy(c);
    return ok;
}

static int run_calls(const mla_layer *l, int nt, const float *x, int d, float *out)
{
    return run_path(l, nt, MLA_ATTN_PATH_AUTO, x, d, out);
}

static void check_mla(int d, int n_h, int n_kv, int d_h, int bias, int r, int d_kv,
                      mla_factorization f, mla_dtype dt, unsigned long long seed)
{
    char what[128];
    snprintf(what, sizeof what, "MLA d %d, %d/%d heads of %d, bias %d, r %d, d_kv %d, %s, %s",
             d, n_h, n_kv, d_h, bias, r, d_kv, f == MLA_FACTOR_SPLIT ? "split" : "joint",
             mla_dtype_name(dt));
    src_layer s;
    src_init(&s, d, n_h, n_kv, d_h, bias, seed);
    mla_layer *l32 = convert(&s, r, d_kv, f), *l16 = convert(&s, r, d_kv, f);
    CHECK(l32 && l16, "%s: converted", what);
    if (!l32 || !l16)
        return;
    CHECK(mla_layer_set_weight_dtype(l16, dt) == MLA_OK, "%s: set: %s", what, mla_last_error());
    check_tensors(l32, l16, dt, what);

    /* The float64 reference over the rounded weights. */
    ref_mla m;
    ref_mla_init(&m, l32);
    size_t qr = (size_t)n_h * d_h, R = (size_t)m.R;
    float *wq = rounded(m.wq, qr * d, dt), *wkr = rounded(m.wkr, (size_t)n_kv * r * d, dt);
    float *wdk = rounded(m.wdk, R * d, dt), *wdv = m.split ? rounded(m.wdv, R * d, dt) : wdk;
    float *wo = rounded(m.wo, (size_t)d * qr, dt);
    float *wuk = rounded(m.wuk, (size_t)n_kv * (d_h - r) * R, dt);
    float *wuv = rounded(m.wuv, (size_t)n_kv * d_h * R, dt);
    m.wuk = wuk;
    m.wuv = wuv;
    m.wq = wq;
    m.wkr = wkr;
    m.wdk = wdk;
    m.wdv = wdv;
    m.wo = wo;
    int64_t pos[MAX_TOK];
    float *x = inputs(d, seed + 7, pos);
    double *ref = malloc((size_t)N_TOK * d * sizeof *ref);
    ref_mla_forward(&m, x, pos, N_TOK, NULL, NULL, ref);

    /* AUTO on 1 and 2 threads, then each path forced (the absorbed queries' and output's
     * products over 16-bit W_uk and W_uv; the materialized tiles' up-projections). */
    static const mla_attn_path paths[] = {MLA_ATTN_PATH_AUTO, MLA_ATTN_PATH_AUTO,
                                          MLA_ATTN_PATH_ABSORBED, MLA_ATTN_PATH_MATERIALIZED};
    static const char *const path_names[] = {"auto", "auto", "absorbed", "materialized"};
    for (int pi = 0; pi < 4; pi++) {
        int nt = pi == 0 ? 1 : 2;
        float *out = calloc((size_t)N_TOK * d, sizeof *out);
        int ok = run_path(l16, nt, paths[pi], x, d, out);
        CHECK(ok, "%s, %s, %d threads: forwards: %s", what, path_names[pi], nt,
              mla_last_error());
        int64_t p0 = 0;
        for (int i = 0; i < N_CALLS && ok; i++) {
            double e = rel_diff_d(out + p0 * d, ref + p0 * d, (size_t)calls[i] * d);
            CHECK(e < 1e-4, "%s, %s, %d threads: a call of %d tokens vs float64 reference: %.2e",
                  what, path_names[pi], nt, calls[i], e);
            p0 += calls[i];
        }
        free(out);
    }

    /* A checkpoint's round trip: the 16-bit tensors read back (mla_layer_from_tensors widens
     * them exactly) and stored in 16 bits again are the same bits. */
    mla_layer *rt = rebuilt(l16), *rt16 = rebuilt(l16);
    CHECK(rt && rt16 && mla_layer_set_weight_dtype(rt16, dt) == MLA_OK,
          "%s: rebuilt from its 16-bit tensors", what);
    if (rt16)
        CHECK(same_tensors(l16, rt16), "%s: rebuilt and stored in %s again: the same bits", what,
              mla_dtype_name(dt));

    /* Back to F32: the widened values, and the same forward, bit for bit, as the layer built
     * from the 16-bit tensors (float32 weights of the same values). */
    CHECK(mla_layer_set_weight_dtype(l16, MLA_DTYPE_F32) == MLA_OK, "%s: back to f32", what);
    if (rt) {
        float *o1 = calloc((size_t)N_TOK * d, sizeof *o1);
        float *o2 = calloc((size_t)N_TOK * d, sizeof *o2);
        int ok = run_calls(l16, 1, x, d, o1) && run_calls(rt, 1, x, d, o2);
        CHECK(ok && memcmp(o1, o2, (size_t)N_TOK * d * sizeof *o1) == 0,
              "%s: back to f32, the forward of a layer built from the rounded values", what);
        free(o1);
        free(o2);
    }
    mla_layer_destroy(rt);
    mla_layer_destroy(rt16);
    mla_layer_info info;
    mla_layer_get_info(l16, &info, sizeof info);
    size_t bad = info.weight_dtype != MLA_DTYPE_F32;
    mla_tensor t;
    mla_layer_tensor_by_name(l16, "q_proj.weight", &t);
    bad += t.dtype != MLA_DTYPE_F32 || memcmp(t.data, wq, qr * d * sizeof(float)) != 0;
    mla_layer_tensor_by_name(l16, "o_proj.weight", &t);
    bad += t.dtype != MLA_DTYPE_F32 || memcmp(t.data, wo, qr * d * sizeof(float)) != 0;
    CHECK(!bad, "%s: back to f32: the rounded values widened exactly", what);

    free(x);
    free(ref);
    free(wq);
    free(wkr);
    free(wdk);
    if (m.split)
        free(wdv);
    free(wo);
    free(wuk);
    free(wuv);
    mla_layer_destroy(l32);
    mla_layer_destroy(l16);
    src_free(&s);
}

/* The MHA baseline: its four weight matrices; reference ref_mha over rounded ones. */
static void check_mha(int d, int n_h, int n_kv, int d_h, int bias, mla_dtype dt,
                      unsigned long long seed)
{
    char what[96];
    snprintf(what, sizeof what, "MHA d %d, %d/%d heads of %d, bias %d, %s", d, n_h, n_kv, d_h,
             bias, mla_dtype_name(dt));
    src_layer s;
    src_init(&s, d, n_h, n_kv, d_h, bias, seed);
    mla_layer *l32 = NULL, *l16 = NULL;
    mla_layer_from_mha(&s.g, &s.w, &l32);
    mla_layer_from_mha(&s.g, &s.w, &l16);
    CHECK(l32 && l16 && mla_layer_set_weight_dtype(l16, dt) == MLA_OK, "%s: built and set", what);
    if (!l32 || !l16)
        return;
    check_tensors(l32, l16, dt, what);
    size_t qr = (size_t)n_h * d_h, kr = (size_t)n_kv * d_h;
    src_layer sr = s;
    sr.wq = rounded(s.wq, qr * d, dt);
    sr.wk = rounded(s.wk, kr * d, dt);
    sr.wv = rounded(s.wv, kr * d, dt);
    sr.wo = rounded(s.wo, (size_t)d * qr, dt);
    int64_t pos[MAX_TOK];
    float *x = inputs(d, seed + 7, pos);
    double *ref = malloc((size_t)N_TOK * d * sizeof *ref);
    ref_mha(&sr, x, pos, N_TOK, NULL, NULL, ref);
    float *out = calloc((size_t)N_TOK * d, sizeof *out);
    int ok = run_calls(l16, 2, x, d, out);
    CHECK(ok, "%s: forwards: %s", what, mla_last_error());
    double e = ok ? rel_diff_d(out, ref, (size_t)N_TOK * d) : 1.0;
    CHECK(e < 1e-4, "%s: prompt, chunk and decode vs float64 reference: %.2e", what, e);
    free(out);
    free(x);
    free(ref);
    free(sr.wq);
    free(sr.wk);
    free(sr.wv);
    free(sr.wo);
    mla_layer_destroy(l32);
    mla_layer_destroy(l16);
    src_free(&s);
}

static void check_errors(void)
{
    src_layer s;
    src_init(&s, 32, 4, 2, 8, 0, 99);
    s.wo[5 * 32 + 3] = 1e5f; /* o_proj row 5, column 3: beyond f16's 65504, fine for bf16 */
    mla_layer *l = convert(&s, 4, 4, MLA_FACTOR_JOINT);
    CHECK(l != NULL, "errors: converted");
    if (!l)
        return;
    CHECK(mla_layer_set_weight_dtype(NULL, MLA_DTYPE_BF16) == MLA_ERR_INVALID_ARGUMENT,
          "errors: NULL layer");
    mla_dtype bad_types[] = {MLA_DTYPE_I8, MLA_DTYPE_I4, MLA_DTYPE_I32, MLA_DTYPE_F64,
                             (mla_dtype)77};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++)
        CHECK(mla_layer_set_weight_dtype(l, bad_types[i]) == MLA_ERR_INVALID_ARGUMENT &&
                  strstr(mla_last_error(), "weight dtype") != NULL,
              "errors: dtype %d refused: %s", (int)bad_types[i], mla_last_error());
    mla_tensor before;
    mla_layer_tensor_by_name(l, "o_proj.weight", &before);
    float kept = ((const float *)before.data)[5 * 32 + 3];
    mla_status st = mla_layer_set_weight_dtype(l, MLA_DTYPE_F16);
    const char *msg = mla_last_error();
    CHECK(st == MLA_ERR_NUMERICAL && strstr(msg, "o_proj.weight") && strstr(msg, "row 5") &&
              strstr(msg, "column 3"),
          "errors: out of f16's range: %d, %s", (int)st, msg);
    mla_layer_info info;
    mla_layer_get_info(l, &info, sizeof info);
    mla_tensor after;
    mla_layer_tensor_by_name(l, "o_proj.weight", &after);
    CHECK(info.weight_dtype == MLA_DTYPE_F32 && after.dtype == MLA_DTYPE_F32 &&
              ((const float *)after.data)[5 * 32 + 3] == kept,
          "errors: the layer kept its f32 weights");
    CHECK(mla_layer_set_weight_dtype(l, MLA_DTYPE_BF16) == MLA_OK, "errors: bf16 holds 1e5");
    mla_layer_destroy(l);

    /* A split layer's down projections are stored as one: the message names the half and its
     * own row (a layer rebuilt from tensors with 1e5 in kv_proj.down_v.weight, row 1, col 2). */
    mla_layer *sp = convert(&s, 4, 4, MLA_FACTOR_SPLIT), *big = NULL;
    mla_layer_info si;
    mla_tensor t[16];
    float *dv = NULL;
    mla_geometry g;
    int ok = sp && mla_layer_get_info(sp, &si, sizeof si) == MLA_OK &&
             mla_layer_get_geometry(sp, &g, sizeof g) == MLA_OK && si.n_tensors <= 16;
    for (int32_t i = 0; ok && i < si.n_tensors; i++) {
        ok = mla_layer_tensor(sp, i, &t[i]) == MLA_OK;
        if (ok && strcmp(t[i].name, "kv_proj.down_v.weight") == 0) {
            size_t n = count(&t[i]);
            dv = malloc(n * sizeof *dv);
            memcpy(dv, t[i].data, n * sizeof *dv);
            dv[1 * t[i].shape[1] + 2] = 1e5f;
            t[i].data = dv;
        }
    }
    ok = ok && dv && mla_layer_from_tensors(&g, si.rope_dim, si.d_kv, t, si.n_tensors, &big) ==
                         MLA_OK;
    st = ok ? mla_layer_set_weight_dtype(big, MLA_DTYPE_F16) : MLA_ERR_INTERNAL;
    msg = mla_last_error();
    CHECK(st == MLA_ERR_NUMERICAL && strstr(msg, "kv_proj.down_v.weight: ") &&
              strstr(msg, "row 1, column 2"),
          "errors: split down projection out of f16's range: %d, %s", (int)st, msg);
    free(dv);
    mla_layer_destroy(big);
    mla_layer_destroy(sp);
    src_free(&s);
}

int main(void)
{
#ifdef MLA_TEST_AVX512_EMULATED
    int avx512 = 1; /* every handle on the emulated AVX-512 table (util.h) */
#else
    int avx512 = strstr(mla_build_info(), "attention kernels: avx512") != NULL;
#endif
    if (!avx512) {
        calls[0] = 100;
        N_TOK = 143;
    }
    mla_dtype types[] = {MLA_DTYPE_BF16, MLA_DTYPE_F16};
    for (int i = 0; i < 2; i++) {
        mla_dtype dt = types[i];
        check_mla(96, 6, 2, 16, 0, 4, 4, MLA_FACTOR_JOINT, dt, 11 + i);
        check_mla(64, 4, 4, 16, 1, 8, 6, MLA_FACTOR_JOINT, dt, 21 + i);
        check_mla(64, 4, 2, 16, 1, 4, 4, MLA_FACTOR_SPLIT, dt, 31 + i);
        check_mla(48, 3, 3, 16, 0, 0, 8, MLA_FACTOR_JOINT, dt, 41 + i); /* no RoPE part */
        check_mha(64, 4, 2, 16, 1, dt, 51 + i);
        check_mha(64, 4, 4, 16, 0, dt, 61 + i);
    }
    check_errors();
    return tap_done();
}

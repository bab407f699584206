/*
 * Bad input: every case returns its status, names the offending argument in mla_last_error(),
 * leaves the out-pointer untouched and leaks nothing (run under ASan). Cancellation from the
 * progress callback at every stage.
 */
#include <math.h>

#include "util.h"

static mla_layer *const SENTINEL = (mla_layer *)(uintptr_t)0x5eed;

static int expect(mla_status got, mla_status want, const char *needle)
{
    return got == want && strstr(mla_last_error(), needle) != NULL;
}

static void bad_convert(const char *what, const mla_geometry *g, const mla_layer_weights *w,
                        const mla_calib *c, const mla_convert_params *p, mla_status want,
                        const char *needle)
{
    mla_layer *l = SENTINEL;
    mla_clear_error();
    mla_status st = mla_layer_convert(g, w, c, p, &l);
    CHECK(expect(st, want, needle) && l == SENTINEL, "%s: %s (%s) — \"%s\"", what,
          mla_status_string(st), needle, mla_last_error());
    if (l != SENTINEL)
        mla_layer_destroy(l);
}

static int stop_at;
static int calls;
static int progress(void *user, int64_t done, int64_t total)
{
    int *seen_total = user;
    *seen_total = (int)total;
    calls++;
    return done >= stop_at;
}

int main(void)
{
    src_layer s;
    src_init(&s, 64, 6, 2, 16, 1, 77);
    mla_convert_params p0, p;
    mla_convert_default_params(&p0, sizeof p0);
    p0.rope_dim = 4;
    p0.d_kv = 4;
    mla_geometry g;
    mla_layer_weights w;

    /* Geometry. */
    bad_convert("NULL geometry", NULL, &s.w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT, "geometry");
    g = s.g, g.d_model = 0;
    bad_convert("d_model 0", &g, &s.w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT, "geometry.d_model");
    g = s.g, g.n_kv_heads = 4;
    bad_convert("n_kv_heads not dividing n_heads", &g, &s.w, NULL, &p0,
                MLA_ERR_INVALID_ARGUMENT, "geometry.n_kv_heads");
    g = s.g, g.head_dim = 15;
    bad_convert("odd head_dim", &g, &s.w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT,
                "geometry.head_dim");
    g = s.g, g.rope_theta = -1;
    bad_convert("negative theta", &g, &s.w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT,
                "geometry.rope_theta");
    g = s.g, g.rope_scaling = MLA_ROPE_SCALING_LINEAR, g.rope_scaling_factor = 0;
    bad_convert("linear scaling factor 0", &g, &s.w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT,
                "geometry.rope_scaling_factor");
    g = s.g, g.d_model = INT32_MAX, g.n_heads = 65536, g.head_dim = 32768, g.n_kv_heads = 1;
    bad_convert("sizes overflowing", &g, &s.w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT,
                "geometry");
    /* n_kv·d_h = 1.6e9 fits in int32, but [W_k_nope; W_v] has 3.2e9 rows: more than LAPACK's
     * 32-bit dimensions. Refused before the (small) weights would be read. */
    g = s.g, g.d_model = g.n_heads = g.n_kv_heads = 12582912, g.head_dim = 128, g.qkv_bias = 0;
    w = s.w, w.bq = w.bk = w.bv = NULL;
    p = p0, p.rope_dim = 0, p.d_kv = 1;
    bad_convert("joint matrix rows beyond int32", &g, &w, NULL, &p, MLA_ERR_UNSUPPORTED,
                "3221225472 rows");

    /* Weights. */
    bad_convert("NULL weights", &s.g, NULL, NULL, &p0, MLA_ERR_INVALID_ARGUMENT, "weights");
    w = s.w, w.wv = NULL;
    bad_convert("NULL wv", &s.g, &w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT, "weights.wv");
    w = s.w, w.bk = NULL;
    bad_convert("missing bk with qkv_bias", &s.g, &w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT,
                "weights.bk");
    g = s.g, g.qkv_bias = 0;
    bad_convert("bias given without qkv_bias", &g, &s.w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT,
                "weights.bq");
    w = s.w, w.dtype = MLA_DTYPE_I8;
    bad_convert("i8 weights", &s.g, &w, NULL, &p0, MLA_ERR_INVALID_ARGUMENT, "weights.dtype");
    s.wk[3 * 64 + 5] = NAN;
    bad_convert("NaN in W_k", &s.g, &s.w, NULL, &p0, MLA_ERR_NUMERICAL, "wk[3][5]");
    s.wk[3 * 64 + 5] = 0.5f;
    s.bv[7] = INFINITY;
    bad_convert("Inf in b_v", &s.g, &s.w, NULL, &p0, MLA_ERR_NUMERICAL, "bv[7]");
    s.bv[7] = 0.5f;

    /* Conversion parameters. */
    p = p0, p.rope_dim = 5;
    bad_convert("odd rope_dim", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT, "params.rope_dim");
    p = p0, p.rope_dim = 18;
    bad_convert("rope_dim > head_dim", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.rope_dim");
    p = p0, p.d_kv = 0;
    bad_convert("d_kv 0", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT, "params.d_kv");
    p = p0, p.d_kv = 33; /* R = 66 > min(2·12 + 32, 64) = 56 */
    bad_convert("d_kv above full rank", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.d_kv");
    p = p0, p.d_kv = 13, p.factorization = MLA_FACTOR_SPLIT; /* R = 26 > 24 rows of W_k_nope */
    bad_convert("split d_kv above W_k_nope rank", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.d_kv");
    p = p0, p.rope_dim = 16, p.factorization = MLA_FACTOR_SPLIT, p.d_kv = 1;
    bad_convert("split with no K_nope rows", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.d_kv");
    p = p0, p.rope_strategy = (mla_rope_strategy)9;
    bad_convert("unknown strategy", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.rope_strategy");
    p = p0, p.factorization = (mla_factorization)-1;
    bad_convert("unknown factorization", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.factorization");
    p = p0, p.damping = -1;
    bad_convert("negative damping", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.damping");
    p = p0, p.rope_strategy = MLA_ROPE_UNIFORM, p.uniform_start = 4; /* step 16/4 = 4 */
    bad_convert("uniform start ≥ step", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.uniform_start");
    p = p0, p.rope_strategy = MLA_ROPE_UNIFORM, p.rope_dim = 6; /* 16/6 is not an integer */
    bad_convert("uniform step not integral", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.rope_dim");
    p = p0, p.rope_strategy = MLA_ROPE_EXPLICIT;
    bad_convert("explicit without freqs", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.explicit_freqs");
    const int32_t dup[] = {1, 1, 0, 2}, range[] = {0, 1, 8, 2};
    p.explicit_freqs = dup;
    bad_convert("explicit duplicate", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.explicit_freqs[0]");
    p.explicit_freqs = range;
    bad_convert("explicit out of range", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.explicit_freqs[1][0] is 8");
    p = p0, p.rope_strategy = MLA_ROPE_2NORM;
    bad_convert("2-norm without calib", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "MLA_ROPE_2NORM");
    p = p0, p.factorization = MLA_FACTOR_ACTIVATION_JOINT;
    bad_convert("activation-aware without calib", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "MLA_FACTOR_ACTIVATION_JOINT");
    p = p0;
    p.struct_size = 3;
    bad_convert("params.struct_size too small", &s.g, &s.w, NULL, &p, MLA_ERR_INVALID_ARGUMENT,
                "params.struct_size");

    /* Calibration. */
    mla_calib *c = NULL;
    CHECK(mla_calib_create(&s.g, &s.w, NULL, &c) == MLA_OK, "calib create");
    p = p0, p.rope_strategy = MLA_ROPE_2NORM;
    bad_convert("2-norm with an empty calib", &s.g, &s.w, c, &p, MLA_ERR_INVALID_ARGUMENT,
                "no tokens");
    p = p0, p.factorization = MLA_FACTOR_ACTIVATION_JOINT;
    bad_convert("activation-aware with an empty calib", &s.g, &s.w, c, &p,
                MLA_ERR_INVALID_ARGUMENT, "tokens fed");
    unsigned long long seed = 3;
    float *x = rand_floats(10 * 64, &seed, 1);
    x[2 * 64 + 9] = NAN;
    CHECK(expect(mla_calib_feed(c, x, 10), MLA_ERR_NUMERICAL, "x[2][9]"),
          "feed NaN names row and column: %s", mla_last_error());
    int64_t n = -1;
    mla_calib_token_count(c, &n);
    CHECK(n == 0, "a failed feed adds nothing");
    CHECK(expect(mla_calib_feed(c, x, -1), MLA_ERR_INVALID_ARGUMENT, "n_tokens"),
          "negative n_tokens");
    CHECK(expect(mla_calib_feed(c, NULL, 2), MLA_ERR_INVALID_ARGUMENT, "x"), "NULL x");
    x[2 * 64 + 9] = 0;
    mla_calib_feed(c, x, 10);
    g = s.g, g.n_heads = 4, g.n_kv_heads = 2, g.qkv_bias = 1;
    bad_convert("calib of another geometry", &g, &s.w, c, &p0, MLA_ERR_SHAPE_MISMATCH, "calib");
    mla_calib *c2 = (mla_calib *)SENTINEL;
    mla_calib_params cp;
    mla_calib_default_params(&cp, sizeof cp);
    cp.qk_norms = cp.covariance = 0;
    CHECK(expect(mla_calib_create(&s.g, &s.w, &cp, &c2), MLA_ERR_INVALID_ARGUMENT, "qk_norms") &&
              c2 == (mla_calib *)SENTINEL, "calib with nothing to collect");
    w = s.w, w.wq = NULL;
    CHECK(expect(mla_calib_create(&s.g, &w, NULL, &c2), MLA_ERR_INVALID_ARGUMENT, "weights.wq"),
          "calib without W_q");

    /* Cancellation after each stage: CANCELLED, nothing returned, nothing leaked. */
    int total = 0;
    for (stop_at = 1; stop_at <= 4; stop_at++) {
        p = p0;
        p.progress = progress;
        p.progress_user = &total;
        p.rope_strategy = MLA_ROPE_2NORM;
        calls = 0;
        bad_convert("cancel", &s.g, &s.w, c, &p, MLA_ERR_CANCELLED, "cancelled");
        CHECK(calls == stop_at && total == 4, "cancelled at stage %d of %d after %d calls",
              stop_at, total, calls);
    }
    p = p0;
    p.progress = progress;
    p.progress_user = &total;
    stop_at = 100;
    calls = 0;
    mla_layer *l = NULL;
    CHECK(mla_layer_convert(&s.g, &s.w, c, &p, &l) == MLA_OK && calls == 4,
          "a callback returning 0 lets the conversion finish (%d calls)", calls);

    /* NULL arguments of the calibration calls. */
    mla_calib *c3 = (mla_calib *)SENTINEL;
    CHECK(expect(mla_calib_create(NULL, &s.w, NULL, &c3), MLA_ERR_INVALID_ARGUMENT, "geometry") &&
              c3 == (mla_calib *)SENTINEL, "calib_create: NULL geometry");
    CHECK(expect(mla_calib_create(&s.g, NULL, NULL, &c3), MLA_ERR_INVALID_ARGUMENT, "weights") &&
              c3 == (mla_calib *)SENTINEL, "calib_create: NULL weights with qk_norms");
    CHECK(expect(mla_calib_create(&s.g, &s.w, NULL, NULL), MLA_ERR_INVALID_ARGUMENT, "out"),
          "calib_create: NULL out");
    CHECK(expect(mla_calib_feed(NULL, x, 1), MLA_ERR_INVALID_ARGUMENT, "calib"),
          "feed: NULL calib");
    CHECK(expect(mla_calib_token_count(NULL, &n), MLA_ERR_INVALID_ARGUMENT, "calib") &&
              expect(mla_calib_token_count(c, NULL), MLA_ERR_INVALID_ARGUMENT, "n_tokens"),
          "token_count: NULL calib, NULL n_tokens");
    CHECK(expect(mla_calib_qk_stats(NULL, NULL, NULL, NULL), MLA_ERR_INVALID_ARGUMENT, "calib"),
          "qk_stats: NULL calib");
    CHECK(expect(mla_calib_covariance(NULL, NULL), MLA_ERR_INVALID_ARGUMENT, "calib") &&
              expect(mla_calib_covariance(c, NULL), MLA_ERR_INVALID_ARGUMENT, "xtx"),
          "covariance: NULL calib, NULL xtx");

    /* Getters. */
    mla_tensor t;
    int32_t dims[16];
    CHECK(expect(mla_layer_tensor(l, 0, NULL), MLA_ERR_INVALID_ARGUMENT, "out") &&
              expect(mla_layer_tensor(NULL, 0, &t), MLA_ERR_INVALID_ARGUMENT, "layer") &&
              expect(mla_layer_tensor(l, -1, &t), MLA_ERR_INVALID_ARGUMENT, "-1"),
          "tensor: NULL out, NULL layer, index -1");
    CHECK(expect(mla_layer_tensor_by_name(l, NULL, &t), MLA_ERR_INVALID_ARGUMENT, "name") &&
              expect(mla_layer_tensor_by_name(l, "q_proj.weight", NULL), MLA_ERR_INVALID_ARGUMENT,
                     "out"), "tensor_by_name: NULL name, NULL out");
    CHECK(expect(mla_layer_rope_dims(l, 0, NULL), MLA_ERR_INVALID_ARGUMENT, "dims") &&
              expect(mla_layer_rope_dims(l, -1, dims), MLA_ERR_INVALID_ARGUMENT, "kv_head"),
          "rope_dims: NULL dims, kv_head -1");
    mla_convert_report rep;
    CHECK(expect(mla_layer_get_report(NULL, &rep, sizeof rep), MLA_ERR_INVALID_ARGUMENT, "layer") &&
              expect(mla_layer_get_report(l, &rep, 2), MLA_ERR_INVALID_ARGUMENT, "struct_size"),
          "get_report: NULL layer, struct_size 2");
    mla_layer *l2 = SENTINEL;
    CHECK(expect(mla_layer_from_tensors(&s.g, 4, 4, NULL, 3, &l2), MLA_ERR_INVALID_ARGUMENT,
                 "tensors") && l2 == SENTINEL, "from_tensors: NULL tensors");
    CHECK(expect(mla_layer_from_tensors(&s.g, 4, 4, &t, 1, NULL), MLA_ERR_INVALID_ARGUMENT, "out"),
          "from_tensors: NULL out");
    CHECK(expect(mla_layer_tensor(l, 99, &t), MLA_ERR_INVALID_ARGUMENT, "99"), "tensor index");
    CHECK(expect(mla_layer_tensor_by_name(l, "k_proj.weight", &t), MLA_ERR_INVALID_ARGUMENT,
                 "k_proj.weight"), "unknown tensor name");
    CHECK(expect(mla_layer_rope_dims(l, 2, dims), MLA_ERR_INVALID_ARGUMENT, "kv_head"),
          "kv head out of range");
    CHECK(expect(mla_layer_get_info(NULL, NULL, 0), MLA_ERR_INVALID_ARGUMENT, "layer"),
          "info of NULL");
    mla_layer_destroy(l);
    mla_layer_destroy(NULL);

    /* from_mha checks the same way. */
    l = SENTINEL;
    w = s.w, w.wo = NULL;
    CHECK(expect(mla_layer_from_mha(&s.g, &w, &l), MLA_ERR_INVALID_ARGUMENT, "weights.wo") &&
              l == SENTINEL, "from_mha without W_o");
    CHECK(expect(mla_layer_from_mha(&s.g, &s.w, NULL), MLA_ERR_INVALID_ARGUMENT, "out") &&
              expect(mla_layer_from_mha(NULL, &s.w, &l), MLA_ERR_INVALID_ARGUMENT, "geometry") &&
              l == SENTINEL, "from_mha: NULL out, NULL geometry");
    CHECK(expect(mla_layer_convert(&s.g, &s.w, NULL, &p0, NULL), MLA_ERR_INVALID_ARGUMENT, "out"),
          "convert: NULL out");

    free(x);
    mla_calib_destroy(c);
    src_free(&s);
    return tap_done();
}

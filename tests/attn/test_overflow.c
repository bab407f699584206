/*
 * Finite input of every size up to float32's overflow: a forward either fails with NUMERICAL
 * (nothing appended, out untouched) or returns what the float64 formula gives. Never finite
 * output far from it: the vectorized exp once clamped the NaN of inf − inf to its lower bound,
 * and inputs of 1e20 came back as finite, wrong rows on one path or another (doc/attention.md,
 * "The call, step by step"; that exp fails 24 checks here with the AVX-512 table, 48 with
 * AVX2).
 *
 * Each layer (the MHA and GQA baselines, joint and split conversions with and without RoPE
 * dimensions) runs a 6-token prompt whose middle tokens are scaled by 10^e, e = 0, 15, 17, 18,
 * 19, 20, 22, 25, 30, on each path, over an F32 cache (the huge latents fit), an F16 one
 * (where they do not, and the cache refuses them) and a BF16 one (whose absorbed path multiplies
 * in bf16). meson runs it with each kernel table.
 */
#include "run.h"

#define D 32
#define N 6

typedef struct lcase {
    const char *name;
    int mha, n_kv, r, d_kv;
    mla_factorization f;
} lcase;

/* The float64 output of the prompt through layer l (built from src). */
static void reference(const lcase *lc, const src_layer *src, const mla_layer *l, const float *x,
                      const int64_t *pos, double *ref)
{
    if (lc->mha) {
        ref_mha(src, x, pos, N, NULL, NULL, ref);
        return;
    }
    ref_mla m;
    ref_mla_init(&m, l);
    ref_mla_forward(&m, x, pos, N, NULL, NULL, ref);
}

int main(void)
{
    static const lcase layers[] = {
        {"MHA baseline", 1, 4, 0, 0, MLA_FACTOR_JOINT},
        {"GQA baseline", 1, 2, 0, 0, MLA_FACTOR_JOINT},
        {"joint, r 4", 0, 2, 4, 4, MLA_FACTOR_JOINT},
        {"joint, r 0", 0, 2, 0, 6, MLA_FACTOR_JOINT},
        {"split, r 2", 0, 4, 2, 3, MLA_FACTOR_SPLIT},
    };
    static const int exps[] = {0, 15, 17, 18, 19, 20, 22, 25, 30};
    static const mla_dtype dtypes[] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16};
    int64_t pos[N];
    for (int i = 0; i < N; i++)
        pos[i] = i;
    int32_t seq[N] = {0};
    int n_ok = 0, n_refused = 0;
    for (size_t li = 0; li < sizeof layers / sizeof layers[0]; li++) {
        const lcase *lc = &layers[li];
        src_layer src;
        src_init(&src, D, 4, lc->n_kv, 8, (int)li % 2, 40 + li);
        mla_layer *l = NULL;
        if (lc->mha)
            mla_layer_from_mha(&src.g, &src.w, &l);
        else
            l = convert(&src, lc->r, lc->d_kv, lc->f);
        CHECK(l != NULL, "%s: layer (%s)", lc->name, mla_last_error());
        if (!l) {
            src_free(&src);
            continue;
        }
        unsigned long long seed = 7 + li;
        float *x0 = rand_floats(N * D, &seed, 1.0);
        float *x = malloc(N * D * sizeof *x);
        double *ref = malloc(N * D * sizeof *ref);
        float out[N * D];
        for (size_t ei = 0; ei < sizeof exps / sizeof exps[0]; ei++) {
            memcpy(x, x0, N * D * sizeof *x);
            for (int i = 2 * D; i < 4 * D; i++) /* tokens 2 and 3 */
                x[i] *= powf(10.0f, (float)exps[ei]);
            reference(lc, &src, l, x, pos, ref);
            for (int p = MLA_ATTN_PATH_ABSORBED; p <= MLA_ATTN_PATH_MATERIALIZED; p++) {
                if (lc->mha && p == MLA_ATTN_PATH_ABSORBED)
                    continue; /* the baseline has one path */
                for (size_t di = 0; di < sizeof dtypes / sizeof dtypes[0]; di++) {
                    mla_cache *c = make_cache(&l, 1, dtypes[di], dtypes[di], 64, 16);
                    mla_attn *a = make_attn(1, (mla_attn_path)p);
                    if (!c || !a) {
                        CHECK(0, "%s: cache and handle", lc->name);
                        mla_cache_destroy(c);
                        mla_attn_destroy(a);
                        continue;
                    }
                    for (int i = 0; i < N * D; i++)
                        out[i] = 1234.5f;
                    mla_status st = mla_attn_forward(a, l, c, 0, x, N, seq, pos, out);
                    int64_t len = -1;
                    mla_cache_seq_length(c, 0, &len);
                    const char *what = p == MLA_ATTN_PATH_ABSORBED ? "absorbed" : "materialized";
                    if (st == MLA_OK) {
                        /* BF16 caches keep 8 bits of each value and (absorbed) multiply
                         * bf16-rounded queries: 2.8e-3 at most here. */
                        double e = rel_diff_d(out, ref, N * D);
                        double tol = dtypes[di] == MLA_DTYPE_BF16 ? 1e-2 : 1e-3;
                        CHECK(e < tol && len == N,
                              "%s, %s, %s cache, tokens x 1e%d: accepted, output within %.1e of "
                              "the float64 formula (want < %.0e)", lc->name, what,
                              mla_dtype_name(dtypes[di]), exps[ei], e, tol);
                        n_ok++;
                    } else {
                        int untouched = 1;
                        for (int i = 0; i < N * D; i++)
                            untouched &= out[i] == 1234.5f;
                        CHECK(st == MLA_ERR_NUMERICAL && exps[ei] > 0 && len == 0 && untouched,
                              "%s, %s, %s cache, tokens x 1e%d: refused as NUMERICAL, nothing "
                              "appended, out untouched (%s)", lc->name, what,
                              mla_dtype_name(dtypes[di]), exps[ei], mla_last_error());
                        n_refused++;
                    }
                    mla_attn_destroy(a);
                    mla_cache_destroy(c);
                }
            }
        }
        free(x0);
        free(x);
        free(ref);
        mla_layer_destroy(l);
        src_free(&src);
    }
    /* Both outcomes occur, or the sizes above test less than they claim. */
    CHECK(n_ok > 0 && n_refused > 0, "accepted %d forwards and refused %d", n_ok, n_refused);
    return tap_done();
}

/*
 * RoPE dimension selection against masks written out by hand from the rules of mha2mla.md
 * (high, low, uniform with a start point, explicit), for MHA and GQA 3:1 with head_dim 64 and
 * 128; query heads take their KV head's dims.
 */
#include <math.h>

#include "util.h"

static const int H64_R8_HIGH[] = {0, 1, 2, 3, 32, 33, 34, 35};
static const int H64_R8_LOW[] = {28, 29, 30, 31, 60, 61, 62, 63};
static const int H64_R8_UNI0[] = {0, 8, 16, 24, 32, 40, 48, 56};
static const int H64_R8_UNI5[] = {5, 13, 21, 29, 37, 45, 53, 61};
static const int H64_R2_HIGH[] = {0, 32};
static const int H64_R2_LOW[] = {31, 63};
static const int H128_R16_HIGH[] = {0, 1, 2, 3, 4, 5, 6, 7, 64, 65, 66, 67, 68, 69, 70, 71};
static const int H128_R16_LOW[] = {56, 57, 58, 59, 60, 61, 62, 63,
                                   120, 121, 122, 123, 124, 125, 126, 127};
static const int H128_R16_UNI7[] = {7, 15, 23, 31, 39, 47, 55, 63,
                                    71, 79, 87, 95, 103, 111, 119, 127};
static const int H128_R32_UNI2[] = {2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42, 46, 50, 54, 58, 62,
                                    66, 70, 74, 78, 82, 86, 90, 94, 98, 102, 106, 110, 114, 118,
                                    122, 126};

static mla_layer *convert(src_layer *s, mla_rope_strategy strat, int r, int start,
                          const int32_t *explicit_freqs)
{
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_strategy = strat;
    p.rope_dim = r;
    p.uniform_start = start;
    p.explicit_freqs = explicit_freqs;
    p.d_kv = 2;
    mla_layer *l = NULL;
    if (mla_layer_convert(&s->g, &s->w, NULL, &p, &l) != MLA_OK)
        CHECK(0, "convert: %s", mla_last_error());
    return l;
}

/* Every KV head keeps `want`; the q rows of every query head follow its KV head's dims. */
static void check_dims(const char *what, src_layer *s, mla_layer *l, int r,
                       const int *const *want)
{
    if (!l)
        return;
    const int n_kv = s->g.n_kv_heads, n_h = s->g.n_heads, d = s->g.d_model, d_h = s->g.head_dim;
    int ok = 1;
    int32_t got[128];
    for (int j = 0; j < n_kv; j++) {
        mla_layer_rope_dims(l, j, got);
        for (int k = 0; k < r; k++)
            ok &= got[k] == want[j][k];
    }
    CHECK(ok, "%s: kept dims of each KV head match the hand mask", what);
    const float *wq = get_tensor(l, "q_proj.weight").data;
    const float *wk = get_tensor(l, "k_r_proj.weight").data;
    ok = 1;
    for (int h = 0; h < n_h; h++)
        for (int k = 0; k < r; k++)
            ok &= memcmp(wq + ((size_t)h * r + k) * d,
                         s->wq + ((size_t)h * d_h + want[h / (n_h / n_kv)][k]) * d,
                         sizeof(float) * (size_t)d) == 0;
    for (int j = 0; j < n_kv; j++)
        for (int k = 0; k < r; k++)
            ok &= memcmp(wk + ((size_t)j * r + k) * d, s->wk + ((size_t)j * d_h + want[j][k]) * d,
                         sizeof(float) * (size_t)d) == 0;
    CHECK(ok, "%s: q RoPE rows use the KV head's dims; k_r rows are the kept rows", what);
    mla_layer_destroy(l);
}

static void same_mask(const char *what, src_layer *s, mla_rope_strategy strat, int r, int start,
                      const int *mask)
{
    const int *want[8];
    for (int j = 0; j < 8; j++)
        want[j] = mask;
    check_dims(what, s, convert(s, strat, r, start, NULL), r, want);
}

/* Column 0 of W (the only one a token e_0 reads): every pair (i, i + 8) of every head gets the
 * norm 1 through (1, 0), then the given dims their own values. */
static void set_col0(src_layer *s, const float *q_set, const float *k_set)
{
    const int d = s->g.d_model, d_h = s->g.head_dim;
    for (int row = 0; row < s->g.n_heads * d_h; row++)
        s->wq[row * d] = row % d_h < d_h / 2 ? 1.0f : 0.0f;
    for (int row = 0; row < s->g.n_kv_heads * d_h; row++)
        s->wk[row * d] = row % d_h < d_h / 2 ? 1.0f : 0.0f;
    for (int i = 0; q_set && q_set[i] >= 0; i += 2)
        s->wq[(int)q_set[i] * d] = q_set[i + 1];
    for (int i = 0; k_set && k_set[i] >= 0; i += 2)
        s->wk[(int)k_set[i] * d] = k_set[i + 1];
}

/* 2-norm on one calibration token e_0, with pair norms chosen so the mask is known by hand:
 * GQA 3:1, d_h 16, r 4. Scores S_{j,i} = (Σ_{h in group j} a_{h,i}) · b_{j,i}:
 *   KV head 0 (q heads 0-2): a_{0,1} = 5, a_{1,5} = 3, a_{2,5} = 4, b_{0,7} = 2.5, the rest 1:
 *     S_1 = 7, S_5 = 8, S_7 = 7.5, others 3  ->  F = {5, 7}
 *     (q head 0 alone would give {1, 7}; q heads 0, 2, 4 (h mod n_kv) would give {1, 7})
 *   KV head 1 (q heads 3-5): a_{3,0} = |(3, 4)| = 5, b_{1,2} = 4, b_{1,6} = |(1.2, 1.6)| = 2:
 *     S_0 = 7, S_2 = 12, S_6 = 6, others 3  ->  F = {0, 2}
 * Then all norms equal: every score ties, and ties go to the lower index: F = {0, 1}. */
static void two_norm_by_hand(void)
{
    src_layer s;
    src_init(&s, 4, 6, 2, 16, 0, 11);
    /* (row of W, value) pairs; row = head·16 + dim */
    const float q_set[] = {0 * 16 + 1, 5, 1 * 16 + 5, 3, 2 * 16 + 5, 4, 3 * 16 + 0, 3,
                           3 * 16 + 8, 4, -1};
    const float k_set[] = {0 * 16 + 7, 2.5f, 1 * 16 + 2, 4, 1 * 16 + 6, 1.2f, 1 * 16 + 14, 1.6f,
                           -1};
    const float e0[4] = {1, 0, 0, 0};
    static const int want0[] = {5, 7, 13, 15}, want1[] = {0, 2, 8, 10}, tie[] = {0, 1, 8, 9};
    for (int round = 0; round < 2; round++) {
        set_col0(&s, round ? NULL : q_set, round ? NULL : k_set);
        mla_calib *c = NULL;
        if (mla_calib_create(&s.g, &s.w, NULL, &c) != MLA_OK ||
            mla_calib_feed(c, e0, 1) != MLA_OK) {
            CHECK(0, "2-norm by hand: calibration: %s", mla_last_error());
            mla_calib_destroy(c);
            break;
        }
        if (round == 0) {
            float score[2 * 8];
            mla_calib_qk_stats(c, NULL, NULL, score);
            CHECK(fabs(score[5] - 8) < 1e-6 && fabs(score[7] - 7.5) < 1e-6 &&
                      fabs(score[1] - 7) < 1e-6 && fabs(score[0] - 3) < 1e-6 &&
                      fabs(score[8 + 2] - 12) < 1e-6 && fabs(score[8 + 6] - 6) < 1e-5 &&
                      fabs(score[8 + 0] - 7) < 1e-6 && fabs(score[8 + 7] - 3) < 1e-6,
                  "2-norm scores by hand: S_0,5 %g, S_0,7 %g, S_1,2 %g, S_1,6 %g", score[5],
                  score[7], score[8 + 2], score[8 + 6]);
        }
        mla_convert_params p;
        mla_convert_default_params(&p, sizeof p);
        p.rope_strategy = MLA_ROPE_2NORM;
        p.rope_dim = 4;
        p.d_kv = 2;
        mla_layer *l = NULL;
        if (mla_layer_convert(&s.g, &s.w, c, &p, &l) != MLA_OK)
            CHECK(0, "2-norm convert: %s", mla_last_error());
        const int *want[2] = {round ? tie : want0, round ? tie : want1};
        check_dims(round ? "2-norm, all scores tied: lower indices" : "2-norm GQA 3:1 by hand", &s,
                   l, 4, want);
        mla_calib_destroy(c);
    }
    src_free(&s);
}

int main(void)
{
    src_layer mha64, gqa64, mha128, gqa128;
    src_init(&mha64, 32, 4, 4, 64, 0, 1);
    src_init(&gqa64, 32, 6, 2, 64, 1, 2);
    src_init(&mha128, 32, 2, 2, 128, 0, 3);
    src_init(&gqa128, 32, 6, 2, 128, 0, 4);
    src_layer *d64[2] = {&mha64, &gqa64}, *d128[2] = {&mha128, &gqa128};
    const char *name[2] = {"MHA", "GQA 3:1"};
    char what[128];
    for (int i = 0; i < 2; i++) {
        snprintf(what, sizeof what, "%s d_h=64 r=8 high", name[i]);
        same_mask(what, d64[i], MLA_ROPE_HIGH, 8, 0, H64_R8_HIGH);
        snprintf(what, sizeof what, "%s d_h=64 r=8 low", name[i]);
        same_mask(what, d64[i], MLA_ROPE_LOW, 8, 0, H64_R8_LOW);
        snprintf(what, sizeof what, "%s d_h=64 r=8 uniform start 0", name[i]);
        same_mask(what, d64[i], MLA_ROPE_UNIFORM, 8, 0, H64_R8_UNI0);
        snprintf(what, sizeof what, "%s d_h=64 r=8 uniform start 5", name[i]);
        same_mask(what, d64[i], MLA_ROPE_UNIFORM, 8, 5, H64_R8_UNI5);
        snprintf(what, sizeof what, "%s d_h=64 r=2 high", name[i]);
        same_mask(what, d64[i], MLA_ROPE_HIGH, 2, 0, H64_R2_HIGH);
        snprintf(what, sizeof what, "%s d_h=64 r=2 low", name[i]);
        same_mask(what, d64[i], MLA_ROPE_LOW, 2, 0, H64_R2_LOW);
        snprintf(what, sizeof what, "%s d_h=128 r=16 high", name[i]);
        same_mask(what, d128[i], MLA_ROPE_HIGH, 16, 0, H128_R16_HIGH);
        snprintf(what, sizeof what, "%s d_h=128 r=16 low", name[i]);
        same_mask(what, d128[i], MLA_ROPE_LOW, 16, 0, H128_R16_LOW);
        snprintf(what, sizeof what, "%s d_h=128 r=16 uniform start 7", name[i]);
        same_mask(what, d128[i], MLA_ROPE_UNIFORM, 16, 7, H128_R16_UNI7);
        snprintf(what, sizeof what, "%s d_h=128 r=32 uniform start 2", name[i]);
        same_mask(what, d128[i], MLA_ROPE_UNIFORM, 32, 2, H128_R32_UNI2);
    }

    /* Explicit, different per KV head, given unsorted. */
    const int32_t freqs[] = {5, 1, 30, 2, /* head 1: */ 0, 31, 16, 9};
    static const int e0[] = {1, 2, 5, 30, 33, 34, 37, 62};
    static const int e1[] = {0, 9, 16, 31, 32, 41, 48, 63};
    const int *want[2] = {e0, e1};
    check_dims("GQA 3:1 d_h=64 explicit per head", &gqa64,
               convert(&gqa64, MLA_ROPE_EXPLICIT, 8, 0, freqs), 8, want);

    /* r = 0 keeps nothing: every row of W_k is in the latent. */
    mla_layer *l = convert(&gqa64, MLA_ROPE_HIGH, 0, 0, NULL);
    mla_cache_layer_desc cd;
    CHECK(l && mla_layer_cache_desc(l, &cd, sizeof cd) == MLA_OK && cd.rope_heads == 0 &&
              cd.rope_dim == 0 && get_tensor(l, "kv_proj.up_k.weight").shape[0] == 2 * 64,
          "r = 0: no RoPE part, all 64 key dims per head go through the latent");
    mla_layer_destroy(l);
    l = convert(&gqa64, MLA_ROPE_2NORM, 0, 0, NULL);
    CHECK(l != NULL, "r = 0 with 2-norm selects nothing, so needs no calibration");
    mla_layer_destroy(l);

    two_norm_by_hand();

    src_free(&mha64);
    src_free(&gqa64);
    src_free(&mha128);
    src_free(&gqa128);
    return tap_done();
}

/*
 * Property: shifting cached keys by delta positions equals writing them at the new positions.
 * Keys are RoPE-rotated here, independently of the library (HF rotate_half convention on the
 * kept frequencies θ_i = 10000^(−2i/d_h) of mha2mla.md), written at p, shifted, and compared with
 * the same keys rotated at p + delta (to 1e-5, f32 storage). Also: linear position scaling, large
 * positions, a shift inside a block shared with another sequence (copy-on-write: the other keeps
 * its keys), the latent untouched, and refused shifts changing nothing.
 */
#include <math.h>
#include <string.h>

#include <mla/mla.h>

#include "cache/internal.h"
#include "../tap.h"

#define DH 64
#define NKV 3
#define R 6 /* kept RoPE dims per head: 3 frequency pairs */
#define LAT 24
#define NTOK 40

static unsigned long long rng = 0x1234567ULL;
/* kept frequencies per KV head (indices i < d_h/2), as a 2-norm selection might pick them */
static const int kept[NKV][R / 2] = {{0, 1, 2}, {3, 11, 30}, {5, 6, 20}};
static float theta[NKV * R / 2];
static float raw[NTOK][NKV * R];      /* keys before RoPE */
static float latent[NTOK * LAT];

/* key of token t rotated at position p (scaled by s), in double */
static void rotated(int t, double p, double s, float *out)
{
    for (int k = 0; k < NKV; k++)
        for (int j = 0; j < R / 2; j++) {
            double a = p * s * theta[k * R / 2 + j];
            double x = raw[t][k * R + j], y = raw[t][k * R + j + R / 2];
            out[k * R + j] = (float)(x * cos(a) - y * sin(a));
            out[k * R + j + R / 2] = (float)(y * cos(a) + x * sin(a));
        }
}

static mla_cache *make(double scale, mla_dtype rope_dtype)
{
    mla_cache_layer_desc L[2];
    for (int l = 0; l < 2; l++) {
        mla_cache_layer_desc_default_params(&L[l], sizeof L[l]);
        L[l].latent_dim = LAT;
        L[l].rope_heads = NKV;
        L[l].rope_dim = R;
        L[l].rope_freqs = theta;
        L[l].rope_position_scale = scale;
        L[l].mha_kv_dim = NKV * DH;
    }
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 2;
    p.layers = L;
    p.latent_dtype = MLA_DTYPE_F32;
    p.rope_dtype = rope_dtype;
    p.block_tokens = 8;
    p.capacity_tokens = 256;
    p.n_seq_max = 4;
    mla_cache *c = NULL;
    mla_cache_create(&p, &c);
    return c;
}

/* Write tokens 0 .. n−1 at positions pos[t] (both layers) into seq. */
static void put(mla_cache *c, int seq, const int64_t *pos, int n, double scale)
{
    float k[NKV * R];
    for (int t = 0; t < n; t++) {
        rotated(t, (double)pos[t], scale, k);
        if (t > 0 && pos[t] != pos[t - 1] + 1) /* a gap: reserve, the writes then fill */
            mla_cache_reserve(c, seq, pos[t], 1);
        for (int l = 0; l < 2; l++)
            if (mla_cache_write(c, l, seq, pos[t], 1, latent + t * LAT, k) != MLA_OK)
                printf("# write: %s\n", mla_last_error());
    }
}

/* max |cached key − key rotated at want[t]| over both layers, and whether the latent and the
 * positions are as expected */
static double compare(const mla_cache *c, int seq, const int64_t *want, int n, double scale,
                      int *others_ok)
{
    static float lat[NTOK * LAT], rope[NTOK * NKV * R];
    int64_t pos[NTOK], len;
    float k[NKV * R];
    double err = 0;
    mla_cache_seq_length(c, seq, &len);
    *others_ok = len == n;
    for (int l = 0; l < 2 && *others_ok; l++) {
        mla_cache_seq_read(c, l, seq, 0, n, lat, rope, pos);
        *others_ok &= memcmp(lat, latent, sizeof(float) * (size_t)(n * LAT)) == 0;
        for (int t = 0; t < n; t++) {
            *others_ok &= pos[t] == want[t];
            rotated(t, (double)want[t], scale, k);
            for (int i = 0; i < NKV * R; i++)
                err = fmax(err, fabs((double)rope[t * NKV * R + i] - k[i]));
        }
    }
    return err;
}

static void shift_case(double scale, int64_t base, int64_t delta, int64_t p0, int64_t p1)
{
    mla_cache *c = make(scale, MLA_DTYPE_F32);
    int64_t pos[NTOK], want[NTOK];
    for (int t = 0; t < NTOK; t++) {
        pos[t] = base + t + (t > 20 ? 5 : 0); /* a gap the shift can close */
        int in = (p0 < 0 || pos[t] >= p0) && (p1 < 0 || pos[t] < p1);
        want[t] = pos[t] + (in ? delta : 0);
    }
    put(c, 0, pos, NTOK, scale);
    mla_status st = mla_cache_seq_shift(c, 0, p0, p1, delta);
    int others;
    double err = compare(c, 0, want, NTOK, scale, &others);
    CHECK(st == MLA_OK && err <= 1e-5 && others,
          "shift [%lld, %lld) of positions %lld.. by %lld (scale %g) = writing there: max error "
          "%.2e", (long long)p0, (long long)p1, (long long)base, (long long)delta, scale, err);
    mla_cache_destroy(c);
}

int main(void)
{
    for (int k = 0; k < NKV; k++)
        for (int j = 0; j < R / 2; j++)
            theta[k * R / 2 + j] = (float)pow(10000.0, -2.0 * kept[k][j] / DH);
    for (int t = 0; t < NTOK; t++)
        for (int i = 0; i < NKV * R; i++)
            raw[t][i] = (float)tap_rand(&rng);
    for (int i = 0; i < NTOK * LAT; i++)
        latent[i] = (float)tap_rand(&rng);

    shift_case(1.0, 0, 7, -1, -1);          /* everything forward */
    shift_case(1.0, 100, -100, -1, -1);     /* back to 0 */
    shift_case(1.0, 10, -3, 31, -1);        /* the tail, into the gap */
    shift_case(1.0, 10, 4, 20, 31);         /* a middle range, into the gap after it */
    shift_case(0.25, 50, 13, 65, -1);       /* linear RoPE scaling */
    shift_case(1.0, 1000000, -999983, -1, -1); /* large positions: the angle is taken in double */

    /* a shift inside a block shared with another sequence copies the block first */
    {
        mla_cache *c = make(1.0, MLA_DTYPE_F32);
        int64_t pos[NTOK], want[NTOK];
        for (int t = 0; t < NTOK; t++)
            pos[t] = want[t] = t;
        put(c, 0, pos, NTOK, 1.0);
        mla_cache_seq_fork(c, 0, 1);
        mla_cache_stats before, after;
        mla_cache_get_stats(c, &before, sizeof before);
        for (int t = 10; t < NTOK; t++)
            want[t] = t + 9;
        mla_status st = mla_cache_seq_shift(c, 1, 10, -1, 9);
        mla_cache_get_stats(c, &after, sizeof after);
        int others0, others1;
        double e1 = compare(c, 1, want, NTOK, 1.0, &others1);
        double e0 = compare(c, 0, pos, NTOK, 1.0, &others0);
        CHECK(st == MLA_OK && e1 <= 1e-5 && others1, "shift of a forked sequence: error %.2e", e1);
        CHECK(e0 == 0 && others0, "the sequence it shares blocks with keeps its keys exactly");
        CHECK(after.blocks_free == before.blocks_free - 4,
              "the 4 blocks holding positions ≥ 10 were copied (%lld -> %lld free)",
              (long long)before.blocks_free, (long long)after.blocks_free);
        CHECK(mla__cache_check(c) == 0, "invariants hold: %s", mla_last_error());
        mla_cache_destroy(c);
    }

    /* refused shifts change nothing */
    {
        mla_cache *c = make(1.0, MLA_DTYPE_F32);
        int64_t pos[NTOK];
        for (int t = 0; t < NTOK; t++)
            pos[t] = 2 * t + 3;
        put(c, 0, pos, NTOK, 1.0);
        struct { int64_t p0, p1, d; const char *what; } bad[] = {
            {-1, -1, -4, "below position 0"},
            {10, 20, 2, "onto the next token"},
            {10, 20, -2, "onto the previous token"},
            {10, -1, INT64_MAX - 5, "past INT64_MAX"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            mla_status st = mla_cache_seq_shift(c, 0, bad[i].p0, bad[i].p1, bad[i].d);
            int others;
            double err = compare(c, 0, pos, NTOK, 1.0, &others);
            CHECK(st == MLA_ERR_INVALID_ARGUMENT && err <= 1e-6 && others,
                  "a shift %s is refused and changes nothing (%s)", bad[i].what, mla_last_error());
        }
        CHECK(mla_cache_seq_shift(c, 0, 1000, 2000, 5) == MLA_OK,
              "a shift of an empty range is a no-op");
        CHECK(mla_cache_seq_shift(c, 9, -1, -1, 1) == MLA_ERR_INVALID_ARGUMENT,
              "unknown sequence refused");
        mla_cache_destroy(c);
    }

    /* A rotation keeps a pair's norm, not its values: (v, v) near the top of the storage type's
     * range turned by 1 radian has a component v·(cos 1 + sin 1) ≈ 1.38·v beyond it. Such a
     * shift is NUMERICAL and changes nothing (positions, keys, blocks: no copy-on-write). */
    {
        const mla_dtype types[2] = {MLA_DTYPE_F16, MLA_DTYPE_F32};
        const float big[2] = {60000.0f, 3.0e38f};
        for (int k = 0; k < 2; k++) {
            mla_cache *c = make(1.0, types[k]);
            float key[NKV * R], back[2][NKV * R];
            for (int i = 0; i < NKV * R; i++)
                key[i] = 0.5f;
            key[0] = key[R / 2] = big[k]; /* head 0, pair 0: θ = 1 */
            int64_t pos[2], len;
            for (int t = 0; t < 2; t++)
                for (int l = 0; l < 2; l++)
                    mla_cache_write(c, l, 0, t, 1, latent, key);
            mla_cache_seq_fork(c, 0, 1); /* a successful shift would copy the block first */
            mla_cache_stats before, after;
            mla_cache_get_stats(c, &before, sizeof before);
            mla_status st = mla_cache_seq_shift(c, 0, 1, -1, 1);
            mla_cache_get_stats(c, &after, sizeof after);
            mla_cache_seq_read(c, 1, 0, 0, 2, NULL, back[0], pos);
            mla_cache_seq_length(c, 0, &len);
            int same = len == 2 && pos[0] == 0 && pos[1] == 1 &&
                       back[0][0] == big[k] && back[1][0] == big[k] &&
                       back[1][R / 2] == big[k] && after.blocks_free == before.blocks_free;
            CHECK(st == MLA_ERR_NUMERICAL && same && mla__cache_check(c) == 0,
                  "%s RoPE part: a shift that would rotate %g out of range is NUMERICAL and "
                  "changes nothing (%s)", mla_dtype_name(types[k]), (double)big[k],
                  mla_last_error());
            /* 44 rad is 0.0177 rad past 7 turns: v·(cos + sin) ≈ 1.018·v stays in range */
            st = mla_cache_seq_shift(c, 0, 1, -1, 44);
            mla_cache_seq_read(c, 1, 0, 0, 2, NULL, back[0], pos);
            double a = 44.0, want = (double)big[k] * (cos(a) + sin(a));
            CHECK(st == MLA_OK && pos[1] == 45 &&
                      fabs(back[1][R / 2] - want) <= fabs(want) * (k == 0 ? 1e-3 : 1e-6),
                  "%s: a shift whose rotation stays in range is done (%g, want %g)",
                  mla_dtype_name(types[k]), (double)back[1][R / 2], want);
            mla_cache_destroy(c);
        }
    }

    /* f16 RoPE storage: shifting rounds once more, to f16 precision */
    {
        mla_cache *c = make(1.0, MLA_DTYPE_F16);
        int64_t pos[NTOK], want[NTOK];
        for (int t = 0; t < NTOK; t++) {
            pos[t] = t;
            want[t] = t + 17;
        }
        put(c, 0, pos, NTOK, 1.0);
        mla_cache_seq_shift(c, 0, -1, -1, 17);
        int others;
        double err = compare(c, 0, want, NTOK, 1.0, &others);
        CHECK(err <= 2e-3 && others, "f16 RoPE part: shift within f16 rounding (%.2e)", err);
        mla_cache_destroy(c);
    }
    return tap_done();
}

/*
 * Storage types of the latent cache:
 * - i8 and i4: every value read back is within scale/2 of what was written, with scale computed
 *   here per group: max|x| / 127 for i8, max(max x / 7, max −x / 8) for i4; the stored codes stay
 *   in [−127, 127] and [−8, 7], i4 using all 16; and the error is really that of 8 or 4 bits.
 * - f16, bf16 latents read back as the round-to-nearest conversion of the input; f32 exactly.
 * - the RoPE part is exact in f32 and the nearest f16/bf16 otherwise, whatever the latent type.
 * - the AVX-512 dequantization equals the portable one bit for bit (when the CPU has it).
 * - NaN, Inf and f16 overflow give NUMERICAL and change nothing.
 * - bytes_per_token and mha_bytes_per_token follow the formula of doc/cache.md.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#ifdef MLA_TEST_AVX512_EMULATED
#  include "../avx512_emulated_names.h"
#endif
#include "cache/internal.h"
#include "../tap.h"

#ifdef MLA_TEST_AVX512_EMULATED
/* test_cache_quant_avx512_emulated: the AVX-512 dequantization compiled over SIMDe
 * (tests/cache/span_avx512_emulated.c) runs on any x86-64 CPU. */
#  undef mla__cache_have_avx512
#  define mla__cache_have_avx512() 1
#endif

#define NTOK 37
#define D 96
#define RHEADS 3
#define RDIM 8
#define RW (RHEADS * RDIM)

static unsigned long long rng = 0x9e3779b97f4a7c15ULL;
static float freqs[RHEADS * RDIM / 2];

static mla_cache *make(mla_dtype lt, mla_dtype rt, int group, int latent_dim)
{
    mla_cache_layer_desc L;
    mla_cache_layer_desc_default_params(&L, sizeof L);
    L.latent_dim = latent_dim;
    L.rope_heads = RHEADS;
    L.rope_dim = RDIM;
    L.rope_freqs = freqs;
    L.mha_kv_dim = 2 * 64;
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 1;
    p.layers = &L;
    p.latent_dtype = lt;
    p.rope_dtype = rt;
    p.quant_group = group;
    p.block_tokens = 16;
    p.capacity_tokens = 256;
    p.n_seq_max = 2;
    mla_cache *c = NULL;
    if (mla_cache_create(&p, &c) != MLA_OK)
        printf("# create: %s\n", mla_last_error());
    return c;
}

/* Random rows whose groups span magnitudes 1e-3 .. 1e3, with an occasional exact zero group. */
static void data(float *x, int n, int group)
{
    for (int g = 0; g < n / group; g++) {
        double mag = pow(10.0, 6.0 * (tap_rand(&rng) + 1.0) / 2.0 - 3.0);
        int zero = tap_rand(&rng) > 0.9;
        for (int i = 0; i < group; i++)
            x[g * group + i] = zero ? 0.0f : (float)(mag * tap_rand(&rng));
    }
}

static float rounded(float x, mla_dtype t)
{
    if (t == MLA_DTYPE_F16)
        return mla_f16_to_f32(mla_f32_to_f16(x));
    if (t == MLA_DTYPE_BF16)
        return mla_bf16_to_f32(mla_f32_to_bf16(x));
    return x;
}


/* The scale of a group as doc/cache.md defines it: the smallest that keeps every value's code
 * in [qneg, qpos], max(max x / qpos, max −x / −qneg). */
static double group_scale(const float *x, int n, int qneg, int qpos)
{
    double pmax = 0, nmax = 0;
    for (int i = 0; i < n; i++) {
        pmax = fmax(pmax, x[i]);
        nmax = fmax(nmax, -x[i]);
    }
    return fmax(pmax / qpos, nmax / -qneg);
}
static void quantized(mla_dtype lt, int group)
{
    static float lat[NTOK * D], rope[NTOK * RW], lat2[NTOK * D], rope2[NTOK * RW];
    /* codes in [qneg, qpos] */
    const int qpos = lt == MLA_DTYPE_I8 ? 127 : 7, qneg = lt == MLA_DTYPE_I8 ? -127 : -8;
    const char *name = mla_dtype_name(lt);
    mla_cache *c = make(lt, MLA_DTYPE_F32, group, D);
    data(lat, NTOK * D, group);
    for (int i = 0; i < NTOK * RW; i++)
        rope[i] = (float)tap_rand(&rng) * 50.0f;
    CHECK(mla_cache_write(c, 0, 0, 0, NTOK, lat, rope) == MLA_OK, "%s g%d: write", name, group);
    CHECK(mla_cache_seq_read(c, 0, 0, 0, NTOK, lat2, rope2, NULL) == MLA_OK, "%s g%d: read", name,
          group);
    int within = 1, rope_exact = 1;
    double worst_ratio = 0; /* max over elements of |x − x̂| / (scale/2) */
    for (int t = 0; t < NTOK; t++)
        for (int g = 0; g < D / group; g++) {
            double scale = group_scale(lat + t * D + g * group, group, qneg, qpos);
            for (int i = 0; i < group; i++) {
                int k = t * D + g * group + i;
                double err = fabs((double)lat[k] - (double)lat2[k]);
                /* the bound, plus the float rounding of the scale and of q·scale */
                if (err > scale / 2 * (1 + 1e-6) + fabs(lat2[k]) * 0x1p-23)
                    within = 0;
                if (scale > 0 && err / (scale / 2) > worst_ratio)
                    worst_ratio = err / (scale / 2);
            }
        }
    for (int i = 0; i < NTOK * RW; i++)
        rope_exact &= rope[i] == rope2[i];
    CHECK(within, "%s g%d: |x − x̂| ≤ scale/2 for every value (worst %.4f of the bound)", name,
          group, worst_ratio);
    CHECK(worst_ratio > 0.9, "%s g%d: the error reaches the bound (%.4f): really %d levels",
          name, group, worst_ratio, qpos - qneg + 1);
    CHECK(rope_exact, "%s g%d: the f32 RoPE part reads back exactly", name, group);

    /* the raw codes, through the span reader */
    int64_t n_spans;
    int codes_ok = 1, scales_ok = 1, lowest_used = 0;
    mla__cache_seq_span_count(c, 0, &n_spans);
    for (int64_t s = 0, t0 = 0; s < n_spans; s++) {
        mla_cache_span sp;
        mla__cache_seq_span(c, 0, 0, s, &sp);
        for (int64_t t = 0; t < sp.n_tokens; t++) {
            const unsigned char *row = (const unsigned char *)sp.latent + t * sp.latent_row_bytes;
            for (int i = 0; i < D; i++) {
                int v = lt == MLA_DTYPE_I8 ? (int8_t)row[i] : ((row[i / 2] >> (4 * (i % 2))) & 15);
                if (lt == MLA_DTYPE_I4 && v >= 8)
                    v -= 16;
                codes_ok &= v >= qneg && v <= qpos;
                lowest_used |= v == qneg;
            }
            for (int g = 0; g < D / group; g++) {
                double want = group_scale(lat + (t0 + t) * D + g * group, group, qneg, qpos);
                float sc = sp.latent_scale[t * (D / group) + g];
                scales_ok &= fabs(sc - want) <= 1e-6 * want;
            }
        }
        t0 += sp.n_tokens;
    }
    CHECK(codes_ok && lowest_used, "%s g%d: codes within [%d, %d], %d among them", name, group,
          qneg, qpos, qneg);
    CHECK(scales_ok, "%s g%d: stored scales are %s per group", name, group,
          lt == MLA_DTYPE_I8 ? "max|x| / 127" : "max(max x / 7, max −x / 8)");
    mla_cache_destroy(c);
}

static void floats(mla_dtype lt, mla_dtype rt)
{
    static float lat[NTOK * D], rope[NTOK * RW], lat2[NTOK * D], rope2[NTOK * RW];
    mla_cache *c = make(lt, rt, 32, D);
    for (int i = 0; i < NTOK * D; i++)
        lat[i] = (float)(tap_rand(&rng) * 300.0);
    for (int i = 0; i < NTOK * RW; i++)
        rope[i] = (float)(tap_rand(&rng) * 300.0);
    mla_cache_write(c, 0, 1, 5, NTOK, lat, rope);
    CHECK(mla_cache_seq_read(c, 0, 1, 0, NTOK, lat2, rope2, NULL) == MLA_OK, "%s/%s: read",
          mla_dtype_name(lt), mla_dtype_name(rt));
    int ok_l = 1, ok_r = 1;
    for (int i = 0; i < NTOK * D; i++)
        ok_l &= lat2[i] == rounded(lat[i], lt);
    for (int i = 0; i < NTOK * RW; i++)
        ok_r &= rope2[i] == rounded(rope[i], rt);
    CHECK(ok_l, "%s latent reads back as the nearest %s value", mla_dtype_name(lt),
          mla_dtype_name(lt));
    CHECK(ok_r, "%s RoPE part reads back as the nearest %s value (latent %s)", mla_dtype_name(rt),
          mla_dtype_name(rt), mla_dtype_name(lt));
    mla_cache_destroy(c);
}

/* AVX-512 and AVX2 against portable, on every span and sub-range, for one type combination. */
static void kernels(mla_dtype lt, mla_dtype rt, int group, int d)
{
    static float lat[NTOK * 1080], rope[NTOK * RW];
    static float a_l[NTOK * 1080], a_r[NTOK * RW], b_l[NTOK * 1080], b_r[NTOK * RW];
    mla_cache *c = make(lt, rt, group, d);
    data(lat, NTOK * d, group);
    for (int i = 0; i < NTOK * RW; i++)
        rope[i] = (float)tap_rand(&rng);
    mla_cache_write(c, 0, 0, 0, NTOK, lat, rope);
    mla_cache_layer_format fmt;
    mla__cache_layer_format(c, 0, &fmt);
    int64_t n_spans;
    mla__cache_seq_span_count(c, 0, &n_spans);
    int same = 1, same2 = 1, codes_same = 1;
    static int8_t codes[NTOK * 1080];
    for (int64_t s = 0; s < n_spans; s++) {
        mla_cache_span sp;
        mla__cache_seq_span(c, 0, 0, s, &sp);
        for (int64_t first = 0; first < sp.n_tokens; first += 3) {
            int64_t n = sp.n_tokens - first;
            memset(a_l, 0xaa, sizeof a_l);
            memset(b_l, 0x55, sizeof b_l);
            memset(a_r, 0xaa, sizeof a_r);
            memset(b_r, 0x55, sizeof b_r);
            mla__cache_span_to_f32_c(&fmt, &sp, first, n, a_l, a_r);
            if (lt == MLA_DTYPE_I4) {
                /* the codes times their scales are the dequantized values, bit for bit; odd
                 * sub-ranges read the rows as they are (packed), even ones from a copy whose
                 * rows are 3 bytes apart, as a padded layout would keep them */
                static unsigned char padded[NTOK * (1080 / 2 + 3)];
                mla_cache_span pad = sp;
                size_t rb = (size_t)d / 2 + 3;
                for (int64_t t = 0; t < sp.n_tokens; t++)
                    memcpy(padded + t * rb,
                           (const unsigned char *)sp.latent + t * sp.latent_row_bytes,
                           (size_t)d / 2);
                pad.latent = padded;
                pad.latent_row_bytes = rb;
                memset(codes, 0x55, sizeof codes);
                mla__cache_span_i4_codes(&fmt, first % 2 ? &sp : &pad, first, n, codes);
                for (int64_t t = 0; t < n; t++)
                    for (int k = 0; k < d; k++) {
                        float v = (float)codes[t * d + k] *
                                  sp.latent_scale[(first + t) * (d / group) + k / group];
                        codes_same &= memcmp(&v, &a_l[t * d + k], sizeof v) == 0 &&
                                      codes[t * d + k] >= -8 && codes[t * d + k] <= 7;
                    }
            }
            if (mla__cache_have_avx512()) {
                mla__cache_span_to_f32_avx512(&fmt, &sp, first, n, b_l, b_r);
                same &= memcmp(a_l, b_l, sizeof(float) * (size_t)(n * d)) == 0 &&
                        memcmp(a_r, b_r, sizeof(float) * (size_t)(n * RW)) == 0;
            }
            if (mla__cache_have_avx2()) {
                memset(b_l, 0x55, sizeof b_l);
                memset(b_r, 0x55, sizeof b_r);
                mla__cache_span_to_f32_avx2(&fmt, &sp, first, n, b_l, b_r);
                same2 &= memcmp(a_l, b_l, sizeof(float) * (size_t)(n * d)) == 0 &&
                         memcmp(a_r, b_r, sizeof(float) * (size_t)(n * RW)) == 0;
            }
        }
    }
    if (lt == MLA_DTYPE_I4)
        CHECK(codes_same, "i4 codes as int8 times their scales equal the dequantized values "
              "(group %d, dim %d, rope %s)", group, d, mla_dtype_name(rt));
    if (mla__cache_have_avx512())
        CHECK(same, "AVX-512 dequantization equals the portable one: latent %s (group %d, "
              "dim %d), rope %s", mla_dtype_name(lt), group, d, mla_dtype_name(rt));
    if (mla__cache_have_avx2())
        CHECK(same2, "AVX2 dequantization equals the portable one: latent %s (group %d, dim %d), "
              "rope %s", mla_dtype_name(lt), group, d, mla_dtype_name(rt));
    mla_cache_destroy(c);
}

static void numerical(void)
{
    static float lat[4 * D], rope[4 * RW];
    mla_cache *c = make(MLA_DTYPE_F16, MLA_DTYPE_F16, 32, D);
    for (int i = 0; i < 4 * D; i++)
        lat[i] = 1.0f;
    for (int i = 0; i < 4 * RW; i++)
        rope[i] = 2.0f;
    mla_cache_write(c, 0, 0, 0, 2, lat, rope);
    /* the failing writes carry 3.0 at position 1 (row 0), so that a partial write would show */
    for (int i = 0; i < D; i++)
        lat[i] = 3.0f;
    float bad[4] = {NAN, INFINITY, -INFINITY, 70000.0f};
    for (int k = 0; k < 4; k++) {
        lat[D + 7] = k < 3 ? bad[k] : 1.0f;
        rope[RW + 3] = k == 3 ? bad[k] : 2.0f;
        mla_status st = mla_cache_write(c, 0, 0, 1, 3, lat, rope);
        int64_t n;
        mla_cache_seq_length(c, 0, &n);
        float back[2 * D];
        int same = 1;
        mla_cache_seq_read(c, 0, 0, 1, 1, back, NULL, NULL);
        for (int i = 0; i < D; i++)
            same &= back[i] == 1.0f;
        CHECK(st == MLA_ERR_NUMERICAL && n == 2 && same,
              "%g in the %s gives NUMERICAL, nothing written (%s)", (double)bad[k],
              k < 3 ? "latent" : "f16 RoPE part", mla_last_error());
    }
    mla_cache_destroy(c);
    c = make(MLA_DTYPE_I4, MLA_DTYPE_BF16, 16, D);
    lat[5] = NAN;
    CHECK(mla_cache_write(c, 0, 0, 0, 1, lat, rope) == MLA_ERR_NUMERICAL,
          "NaN gives NUMERICAL with i4 storage too");
    mla_cache_destroy(c);

    /* The largest finite floats: max|x| / 127 rounds up for FLT_MAX, and 127 · scale would
     * overflow on reading. Every value must read back finite and within scale/2. */
    for (int q = 0; q < 2; q++) {
        mla_dtype t = q ? MLA_DTYPE_I4 : MLA_DTYPE_I8;
        const double qmax = q ? 7 : 127;
        c = make(t, MLA_DTYPE_F32, 32, D);
        for (int i = 0; i < D; i++)
            lat[i] = (float)((i % 3 ? -1.0 : 1.0) * FLT_MAX * (D - i) / D);
        for (int i = 0; i < RW; i++)
            rope[i] = 0.0f;
        float back[D];
        int ok = mla_cache_write(c, 0, 0, 0, 1, lat, rope) == MLA_OK &&
                 mla_cache_seq_read(c, 0, 0, 0, 1, back, NULL, NULL) == MLA_OK;
        for (int g = 0; g < D / 32 && ok; g++) {
            double amax = 0;
            for (int i = 0; i < 32; i++) /* not fmax: GCC 12 for AArch64 (doc/testing.md) */
                amax = fabs(lat[g * 32 + i]) > amax ? fabs(lat[g * 32 + i]) : amax;
            for (int i = 0; i < 32; i++) {
                int k = g * 32 + i;
                ok &= isfinite(back[k]) &&
                      fabs((double)back[k] - lat[k]) <= amax / qmax / 2 * (1 + 1e-6);
            }
        }
        CHECK(ok, "%s: values up to FLT_MAX read back finite, within scale/2", mla_dtype_name(t));
        mla_cache_destroy(c);
    }
}

/* bytes_per_token = Σ_layers latent_dim·bits/8 + (latent_dim/group)·4 [i8, i4] + rope·bits/8 */
static void accounting(void)
{
    const mla_dtype types[5] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16, MLA_DTYPE_I8,
                                MLA_DTYPE_I4};
    const int bits[5] = {32, 16, 16, 8, 4};
    int ok = 1;
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 3; b++) {
            mla_cache *c = make(types[a], types[b], 16, D);
            mla_cache_stats st;
            mla_cache_get_stats(c, &st, sizeof st);
            int64_t want = D * bits[a] / 8 + (a >= 3 ? D / 16 * 4 : 0) + RW * bits[b] / 8;
            int64_t mha = 2 * 128 * bits[b] / 8;
            if (st.bytes_per_token != want || st.mha_bytes_per_token != mha ||
                st.block_bytes < 16 * (want + 8) || st.capacity_tokens != 256) {
                printf("# %s/%s: %lld bytes/token (want %lld), mha %lld (want %lld), block %lld\n",
                       mla_dtype_name(types[a]), mla_dtype_name(types[b]),
                       (long long)st.bytes_per_token, (long long)want,
                       (long long)st.mha_bytes_per_token, (long long)mha,
                       (long long)st.block_bytes);
                ok = 0;
            }
            mla_cache_destroy(c);
        }
    CHECK(ok, "bytes_per_token and mha_bytes_per_token follow the formula for all 15 type pairs");

    /* Llama-2-7B, d_kv 16, r 4 (mha2mla.md): 640 values per token and layer against 8192 */
    mla_cache_layer_desc L[32];
    float f[32 * 2];
    for (int i = 0; i < 64; i++)
        f[i] = 1.0f;
    for (int l = 0; l < 32; l++)
        L[l] = (mla_cache_layer_desc){.struct_size = sizeof L[l], .latent_dim = 16 * 32,
                                      .rope_heads = 32, .rope_dim = 4, .rope_freqs = f,
                                      .mha_kv_dim = 32 * 128};
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 32;
    p.layers = L;
    p.latent_dtype = MLA_DTYPE_F16;
    p.rope_dtype = MLA_DTYPE_F16;
    p.capacity_tokens = 64;
    mla_cache *c = NULL;
    mla_cache_create(&p, &c);
    mla_cache_stats st;
    mla_cache_get_stats(c, &st, sizeof st);
    double saving = 100.0 * (1.0 - (double)st.bytes_per_token / (double)st.mha_bytes_per_token);
    CHECK(st.bytes_per_token == 32 * 640 * 2 && st.mha_bytes_per_token == 32 * 8192 * 2 &&
          fabs(saving - 92.1875) < 1e-9,
          "Llama-2-7B d_kv 16, r 4 in f16: %lld vs %lld bytes per token, %.4f%% saved",
          (long long)st.bytes_per_token, (long long)st.mha_bytes_per_token, saving);
    mla_cache_destroy(c);
}

int main(void)
{
    for (int i = 0; i < RHEADS * RDIM / 2; i++)
        freqs[i] = (float)pow(10000.0, -2.0 * i / 64.0);
    quantized(MLA_DTYPE_I8, 32);
    quantized(MLA_DTYPE_I8, 6);
    quantized(MLA_DTYPE_I4, 32);
    quantized(MLA_DTYPE_I4, 8);
    const mla_dtype ft[3] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            floats(ft[a], ft[b]);
    if (mla__cache_have_avx512() || mla__cache_have_avx2()) {
        const mla_dtype all[5] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16, MLA_DTYPE_I8,
                                  MLA_DTYPE_I4};
        for (int a = 0; a < 5; a++)
            for (int b = 0; b < 3; b++) {
                kernels(all[a], ft[b], 32, 160);
                if (a >= 3) {
                    kernels(all[a], ft[b], 10, 40); /* groups not a multiple of 16: tails */
                    kernels(all[a], ft[b], 6, 30);  /* groups within a vector, a 14-value tail */
                    /* groups straddling vectors, rows longer than the 1024 values whose scale
                     * maps the kernels keep at once */
                    kernels(all[a], ft[b], 24, 1080);
                } else
                    kernels(all[a], ft[b], 4, 44); /* rows not a multiple of 8 or 16: tails */
            }
    } else {
        printf("ok %d - # SKIP no AVX-512 or AVX2 on this CPU\n", ++tap_count);
    }
    numerical();
    accounting();
    return tap_done();
}

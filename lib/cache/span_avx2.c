/*
 * AVX2 dequantization of cache spans (x86-64 with AVX2 and F16C, no AVX-512), selected at run
 * time (mla_cpu()). F16 rows convert with vcvtph2ps, BF16 with a shift, both exact; I8 and I4
 * latents 8 values a vector, each times its group's scale as in the portable kernel. Equal bit
 * for bit to it (tests/cache/test_quant.c).
 */
#include <string.h>

#include "cache/internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#  include <immintrin.h>
#  define HAVE_AVX2_KERNEL 1
#  define TARGET __attribute__((target("avx2,f16c")))
#endif

int mla__cache_have_avx2(void)
{
#ifdef HAVE_AVX2_KERNEL
    const mla_cpu_features *f = mla_cpu();
    return f->avx2 && f->f16c;
#else
    return 0;
#endif
}

#ifdef HAVE_AVX2_KERNEL

/* n values of a float type (f32, f16, bf16) to float32; the last n % 8 one at a time. */
TARGET static void float_row(mla_dtype t, const void *src, size_t n, float *y)
{
    if (t == MLA_DTYPE_F32) {
        memcpy(y, src, n * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(h + i));
        __m256 f = t == MLA_DTYPE_F16
                       ? _mm256_cvtph_ps(v)
                       : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
        _mm256_storeu_ps(y + i, f);
    }
    for (; i < n; i++)
        y[i] = t == MLA_DTYPE_F16 ? mla_f16_to_f32(h[i]) : mla_bf16_to_f32(h[i]);
}

/* Values i .. i+7 (i even for i4) of an i8 or i4 row as float32. */
TARGET static __m256 q8(mla_dtype t, const unsigned char *row, size_t i)
{
    __m128i b;
    if (t == MLA_DTYPE_I8) {
        b = _mm_loadl_epi64((const __m128i *)(const void *)(row + i));
    } else {
        int32_t w;
        memcpy(&w, row + i / 2, 4);
        b = mla__cache_i4_codes16(_mm_cvtsi32_si128(w), 0);
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

/* Where the scales of a row's values i .. i+7 sit: n groups from g0, spread over the lanes by idx
 * (ld: the lanes of the n scales read). It depends on i alone, so it is worked out once for all
 * rows. */
typedef struct vec_scales {
    size_t g0;
    unsigned n;
    __m256i idx, ld;
} vec_scales;

#define QCHUNK 128 /* vectors (1024 values) of a row whose scale maps are kept at once */

/* Latents of rows first .. first+n−1 of an i8 or i4 span: 8 values a vector, the last d % 8 one
 * at a time, each value times its own group's scale. */
TARGET static void quant_rows(const mla_cache_layer_format *f, const mla_cache_span *span,
                              int64_t first, int64_t n, float *y)
{
    const size_t d = (size_t)f->latent_dim, gs = (size_t)f->quant_group, ng = d / gs;
    const size_t dv = d / 8 * 8;
    vec_scales vs[QCHUNK];
    for (size_t c0 = 0; c0 < dv; c0 += 8 * QCHUNK) {
        size_t nv = (dv - c0) / 8 < QCHUNK ? (dv - c0) / 8 : QCHUNK;
        for (size_t v = 0; v < nv; v++) {
            size_t i = c0 + 8 * v;
            int32_t idx[8], ld[8];
            vs[v].g0 = i / gs;
            vs[v].n = (unsigned)((i + 7) / gs - vs[v].g0 + 1);
            for (size_t l = 0; l < 8; l++) {
                idx[l] = (int32_t)((i + l) / gs - vs[v].g0);
                ld[l] = l < vs[v].n ? -1 : 0;
            }
            vs[v].idx = _mm256_loadu_si256((const __m256i *)(const void *)idx);
            vs[v].ld = _mm256_loadu_si256((const __m256i *)(const void *)ld);
        }
        for (int64_t t = 0; t < n; t++) {
            size_t row = (size_t)(first + t);
            const unsigned char *q = (const unsigned char *)span->latent +
                                     row * span->latent_row_bytes;
            const float *sc = span->latent_scale + row * ng;
            float *yr = y + (size_t)t * d;
            for (size_t v = 0; v < nv; v++) {
                size_t i = c0 + 8 * v;
                __m256 s = vs[v].n == 1 ? _mm256_broadcast_ss(sc + vs[v].g0)
                                        : _mm256_permutevar8x32_ps(
                                              _mm256_maskload_ps(sc + vs[v].g0, vs[v].ld),
                                              vs[v].idx);
                _mm256_storeu_ps(yr + i, _mm256_mul_ps(q8(f->latent_dtype, q, i), s));
            }
        }
    }
    for (int64_t t = 0; t < n && dv < d; t++) {
        size_t row = (size_t)(first + t);
        const unsigned char *q = (const unsigned char *)span->latent +
                                 row * span->latent_row_bytes;
        const float *sc = span->latent_scale + row * ng;
        for (size_t k = dv; k < d; k++)
            y[(size_t)t * d + k] = (float)mla__cache_qvalue(f->latent_dtype, q, k) * sc[k / gs];
    }
}

TARGET void mla__cache_span_to_f32_avx2(const mla_cache_layer_format *fmt,
                                        const mla_cache_span *span, int64_t first, int64_t n,
                                        float *latent, float *rope)
{
    const size_t d = (size_t)fmt->latent_dim, r = (size_t)fmt->rope_width;
    if (latent && (fmt->latent_dtype == MLA_DTYPE_I8 || fmt->latent_dtype == MLA_DTYPE_I4)) {
        quant_rows(fmt, span, first, n, latent);
        latent = NULL;
    }
    for (int64_t t = 0; t < n; t++) {
        size_t row = (size_t)(first + t);
        if (latent)
            float_row(fmt->latent_dtype,
                      (const char *)span->latent + row * span->latent_row_bytes, d,
                      latent + (size_t)t * d);
        if (rope && r)
            float_row(fmt->rope_dtype, (const char *)span->rope + row * span->rope_row_bytes, r,
                      rope + (size_t)t * r);
    }
}

#else

void mla__cache_span_to_f32_avx2(const mla_cache_layer_format *fmt, const mla_cache_span *span,
                                 int64_t first, int64_t n, float *latent, float *rope)
{
    mla__cache_span_to_f32_c(fmt, span, first, n, latent, rope);
}

#endif

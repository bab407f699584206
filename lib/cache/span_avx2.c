/*
 * AVX2 dequantization of cache spans (x86-64 with AVX2 and F16C, no AVX-512), selected at run
 * time (mla_cpu()). F16 rows convert with vcvtph2ps, BF16 with a shift, both exact; I8 and I4
 * latents, rarer and already a multiply a value, take the portable rows. Equal bit for bit to
 * the portable kernel (tests/cache/test_quant.c).
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

TARGET void mla__cache_span_to_f32_avx2(const mla_cache_layer_format *fmt,
                                        const mla_cache_span *span, int64_t first, int64_t n,
                                        float *latent, float *rope)
{
    const size_t d = (size_t)fmt->latent_dim, r = (size_t)fmt->rope_width;
    if (fmt->latent_dtype == MLA_DTYPE_I8 || fmt->latent_dtype == MLA_DTYPE_I4) {
        mla__cache_span_to_f32_c(fmt, span, first, n, latent, NULL);
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

/*
 * AVX-512 dequantization of cache spans, selected at run time (mla_cpu()). Every conversion is
 * exact or one IEEE float multiplication, as in the portable kernel, so the results are equal bit
 * for bit; tests/cache/test_quant.c checks that. Tails of rows (widths not a multiple of 16)
 * use masked loads and stores; only I4 group tails take the scalar path.
 */
#include <string.h>

#include "cache/internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#  include <immintrin.h>
#  define HAVE_AVX512_KERNEL 1
#  define TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

int mla__cache_have_avx512(void)
{
#ifdef HAVE_AVX512_KERNEL
    const mla_cpu_features *f = mla_cpu();
    return f->avx512f && f->avx512bw && f->avx512vl;
#else
    return 0;
#endif
}

#ifdef HAVE_AVX512_KERNEL

/* n values of a float type (f32, f16, bf16) to float32. */
TARGET static void float_row(mla_dtype t, const void *src, size_t n, float *y)
{
    size_t i = 0;
    if (t == MLA_DTYPE_F32) {
        memcpy(y, src, n * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    /* The tail (SmolLM's RoPE width 24, odd latent widths) with masked loads and stores: the
     * lanes past n are neither read nor written. */
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m256i v = _mm256_maskz_loadu_epi16(m, h + i);
        __m512 f = t == MLA_DTYPE_F16
                       ? _mm512_cvtph_ps(v)
                       : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
        _mm512_mask_storeu_ps(y + i, m, f);
    }
}

/* 16 consecutive i8 or i4 values starting at value index i of a row, as float32 times scale. */
TARGET static __m512 q16(mla_dtype t, const unsigned char *row, size_t i, __m512 scale)
{
    __m128i b;
    if (t == MLA_DTYPE_I8) {
        b = _mm_loadu_si128((const __m128i *)(const void *)(row + i));
    } else {
        /* 8 bytes, value 2k in the low nibble of byte k: interleave low and high nibbles, then
         * sign-extend 4 bits within each byte with (v ^ 8) − 8 */
        __m128i x = _mm_loadl_epi64((const __m128i *)(const void *)(row + i / 2));
        __m128i m = _mm_set1_epi8(0x0f), e = _mm_set1_epi8(8);
        __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
        b = _mm_sub_epi8(_mm_xor_si128(_mm_unpacklo_epi8(lo, hi), e), e);
    }
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), scale);
}

TARGET static void quant_row(const mla_cache_layer_format *f, const unsigned char *row,
                             const float *scales, float *y)
{
    const size_t d = (size_t)f->latent_dim, gs = (size_t)f->quant_group;
    for (size_t g0 = 0; g0 < d; g0 += gs) {
        float sc = scales[g0 / gs];
        __m512 vs = _mm512_set1_ps(sc);
        size_t i = 0;
        for (; i + 16 <= gs; i += 16)
            _mm512_storeu_ps(y + g0 + i, q16(f->latent_dtype, row, g0 + i, vs));
        if (i < gs && f->latent_dtype == MLA_DTYPE_I8) {
            /* An I8 group tail: masked load and store. */
            __mmask16 m = (__mmask16)((1u << (gs - i)) - 1u);
            __m128i b = _mm_maskz_loadu_epi8(m, row + g0 + i);
            _mm512_mask_storeu_ps(y + g0 + i, m,
                                  _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), vs));
            i = gs;
        }
        for (; i < gs; i++) {
            size_t k = g0 + i;
            int v;
            if (f->latent_dtype == MLA_DTYPE_I8) {
                v = (int8_t)row[k];
            } else {
                v = (row[k / 2] >> (4 * (k % 2))) & 0xf;
                v = v >= 8 ? v - 16 : v;
            }
            y[k] = (float)v * sc;
        }
    }
}

TARGET void mla__cache_span_to_f32_avx512(const mla_cache_layer_format *fmt,
                                          const mla_cache_span *span, int64_t first, int64_t n,
                                          float *latent, float *rope)
{
    const size_t d = (size_t)fmt->latent_dim, r = (size_t)fmt->rope_width;
    const int quant = fmt->latent_dtype == MLA_DTYPE_I8 || fmt->latent_dtype == MLA_DTYPE_I4;
    const size_t ng = quant ? d / (size_t)fmt->quant_group : 0;
    for (int64_t t = 0; t < n; t++) {
        size_t row = (size_t)(first + t);
        const unsigned char *lrow = (const unsigned char *)span->latent +
                                    row * span->latent_row_bytes;
        if (latent && quant)
            quant_row(fmt, lrow, span->latent_scale + row * ng, latent + (size_t)t * d);
        else if (latent)
            float_row(fmt->latent_dtype, lrow, d, latent + (size_t)t * d);
        if (rope && r)
            float_row(fmt->rope_dtype, (const char *)span->rope + row * span->rope_row_bytes, r,
                      rope + (size_t)t * r);
    }
}

#else

void mla__cache_span_to_f32_avx512(const mla_cache_layer_format *fmt, const mla_cache_span *span,
                                   int64_t first, int64_t n, float *latent, float *rope)
{
    mla__cache_span_to_f32_c(fmt, span, first, n, latent, rope);
}

#endif

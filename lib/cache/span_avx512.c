/*
 * AVX-512 dequantization of cache spans, selected at run time (mla_cpu()). Every conversion is
 * exact or one IEEE float multiplication, as in the portable kernel, so the results are equal bit
 * for bit; tests/cache/test_quant.c checks that. Tails of rows (widths not a multiple of 16)
 * use masked loads and stores; I8 and I4 latents of any group size take 16 values a vector.
 */
#include <string.h>

#include "cache/internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#  include <immintrin.h>
#  define HAVE_AVX512_KERNEL 1
#  ifdef MLA_X86_EMULATED /* tests/avx512_emulated.h: over SIMDe, for CPUs without AVX-512 */
#    define TARGET
#  else
#    define TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#  endif
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

/* Values i .. i+L−1 (L ≤ 16; i even for i4) of an i8 or i4 row as float32, 0 in the lanes after
 * them; bytes past them are not read. */
TARGET static __m512 q16(mla_dtype t, const unsigned char *row, size_t i, unsigned L)
{
    __m128i b;
    if (t == MLA_DTYPE_I8) {
        b = _mm_maskz_loadu_epi8((__mmask16)((1u << L) - 1u), row + i);
    } else {
        /* an odd L reads one nibble more, of the same byte, which no lane stored keeps */
        b = mla__cache_i4_codes16(
            _mm_maskz_loadu_epi8((__mmask16)((1u << ((L + 1) / 2)) - 1u), row + i / 2), 0);
    }
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

/* Where the scales of a row's values i .. i+15 sit: n groups from g0, spread over the lanes by idx
 * (groups of 8, 12 or 24 straddle vectors; groups of 16 or more that are multiples of 16 never
 * do, and take one broadcast). It depends on i alone, so it is worked out once for all rows. */
typedef struct vec_scales {
    size_t g0;
    unsigned n;
    __m512i idx;
} vec_scales;

#define QCHUNK 64 /* vectors (1024 values) of a row whose scale maps are kept at once */

/* Latents of rows first .. first+n−1 of an i8 or i4 span, 16 values at a time with masked tails,
 * each vector's value times its own group's scale: the same multiplication as the portable
 * kernel, so the same bits. */
TARGET static void quant_rows(const mla_cache_layer_format *f, const mla_cache_span *span,
                              int64_t first, int64_t n, float *y)
{
    const size_t d = (size_t)f->latent_dim, gs = (size_t)f->quant_group, ng = d / gs;
    vec_scales vs[QCHUNK];
    for (size_t c0 = 0; c0 < d; c0 += 16 * QCHUNK) {
        size_t nv = (d - c0 + 15) / 16 < QCHUNK ? (d - c0 + 15) / 16 : QCHUNK;
        for (size_t v = 0; v < nv; v++) {
            size_t i = c0 + 16 * v, last = i + 15 < d ? i + 15 : d - 1;
            int32_t idx[16];
            vs[v].g0 = i / gs;
            vs[v].n = (unsigned)(last / gs - vs[v].g0 + 1);
            for (size_t l = 0; l < 16; l++)
                idx[l] = (int32_t)((i + l) / gs - vs[v].g0) & 15;
            vs[v].idx = _mm512_loadu_si512(idx);
        }
        for (int64_t t = 0; t < n; t++) {
            size_t row = (size_t)(first + t);
            const unsigned char *q = (const unsigned char *)span->latent +
                                     row * span->latent_row_bytes;
            const float *sc = span->latent_scale + row * ng;
            float *yr = y + (size_t)t * d;
            for (size_t v = 0; v < nv; v++) {
                size_t i = c0 + 16 * v;
                unsigned L = d - i >= 16 ? 16 : (unsigned)(d - i);
                __mmask16 m = (__mmask16)((1u << L) - 1u);
                __m512 s = vs[v].n == 1
                               ? _mm512_set1_ps(sc[vs[v].g0])
                               : _mm512_permutexvar_ps(
                                     vs[v].idx,
                                     _mm512_maskz_loadu_ps((__mmask16)((1u << vs[v].n) - 1u),
                                                           sc + vs[v].g0));
                _mm512_mask_storeu_ps(yr + i, m, _mm512_mul_ps(q16(f->latent_dtype, q, i, L), s));
            }
        }
    }
}

TARGET void mla__cache_span_to_f32_avx512(const mla_cache_layer_format *fmt,
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

void mla__cache_span_to_f32_avx512(const mla_cache_layer_format *fmt, const mla_cache_span *span,
                                   int64_t first, int64_t n, float *latent, float *rope)
{
    mla__cache_span_to_f32_c(fmt, span, first, n, latent, rope);
}

#endif

/*
 * Row storage: float32 in, the cache's types out (f32, f16, bf16, i8 and i4 with per-group
 * scales), and back (the portable kernel of mla__cache_span_to_f32, the oracle of the others).
 *
 * Quantization is symmetric per group of quant_group values, q = round(x / scale), stored value
 * q·scale. i8: scale = max|x| / 127, codes in [−127, 127]. i4 uses all 16 codes, [−8, 7]:
 * scale = max(max x / 7, max −x / 8), the smallest step that keeps every value of the group in
 * range, so a group whose largest magnitude is negative gets a step 8/7 finer (5–6% less error
 * on Gaussian groups of 8 to 32). The ratio is taken in double, so q is the nearest integer to
 * x/scale and |x − q·scale| ≤ scale/2 up to the rounding of the product.
 */
#include <math.h>
#include <string.h>

#include "cache/internal.h"

int64_t mla__cache_check_values(const float *x, int64_t n, mla_dtype dtype)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (!isfinite(v))
            return i;
        /* f16 rounds |x| ≥ 65520 to infinity; bf16 overflows only next to FLT_MAX */
        if (dtype == MLA_DTYPE_F16 && fabsf(v) >= 65520.0f)
            return i;
        if (dtype == MLA_DTYPE_BF16 && !isfinite(mla_bf16_to_f32(mla_f32_to_bf16(v))))
            return i;
    }
    return -1;
}

/* The code of x: the nearest integer to x / scale, in [qneg, qpos] (the scale keeps it there;
 * the clamp only guards the rounding of a scale taken next to FLT_MAX). */
static int qround(float x, float scale, int qneg, int qpos)
{
    long v = scale > 0 ? lrint((double)x / (double)scale) : 0;
    return v > qpos ? qpos : v < qneg ? qneg : (int)v;
}

/* Scales of a row, per group: max(max x / qpos, max −x / −qneg), for i8 (qneg = −qpos) max|x| /
 * qpos. */
static void group_scales(const float *x, int32_t n, int32_t group, int qneg, int qpos,
                         float *scales)
{
    for (int32_t g = 0; g < n / group; g++) {
        const float *xg = x + (size_t)g * (size_t)group;
        float pmax = 0, nmax = 0;
        for (int32_t i = 0; i < group; i++) {
            pmax = xg[i] > pmax ? xg[i] : pmax;
            nmax = -xg[i] > nmax ? -xg[i] : nmax;
        }
        float sp = pmax / (float)qpos, sn = nmax / (float)-qneg;
        float sc = sp > sn ? sp : sn;
        /* max near FLT_MAX: the quotient may round up so that the largest code times the scale
         * overflows to infinity on reading; the next float down keeps it finite. */
        if (isinf(sc * (float)-qneg) || isinf(sc * (float)qpos))
            sc = nextafterf(sc, 0.0f);
        scales[g] = sc;
    }
}

void mla__cache_encode_latent(const mla_cache_layer_format *f, const float *x, void *row,
                              float *scales)
{
    const int32_t d = f->latent_dim;
    switch (f->latent_dtype) {
    case MLA_DTYPE_F32:
    case MLA_DTYPE_F16:
    case MLA_DTYPE_BF16:
        mla__cache_encode_rope(f->latent_dtype, x, d, row);
        break;
    case MLA_DTYPE_I8: {
        int8_t *q = row;
        group_scales(x, d, f->quant_group, -127, 127, scales);
        for (int32_t i = 0; i < d; i++)
            q[i] = (int8_t)qround(x[i], scales[i / f->quant_group], -127, 127);
        break;
    }
    case MLA_DTYPE_I4: {
        /* groups have even size, so a byte never straddles two scales */
        unsigned char *q = row;
        group_scales(x, d, f->quant_group, -8, 7, scales);
        for (int32_t i = 0; i < d; i += 2) {
            float sc = scales[i / f->quant_group];
            unsigned lo = (unsigned)qround(x[i], sc, -8, 7) & 0xf;
            unsigned hi = (unsigned)qround(x[i + 1], sc, -8, 7) & 0xf;
            q[i / 2] = (unsigned char)(lo | hi << 4);
        }
        break;
    }
    default:
        break;
    }
}

void mla__cache_encode_rope(mla_dtype dtype, const float *x, int32_t n, void *row)
{
    switch (dtype) {
    case MLA_DTYPE_F32:
        memcpy(row, x, (size_t)n * sizeof(float));
        break;
    case MLA_DTYPE_F16:
        for (int32_t i = 0; i < n; i++)
            ((uint16_t *)row)[i] = mla_f32_to_f16(x[i]);
        break;
    case MLA_DTYPE_BF16:
        for (int32_t i = 0; i < n; i++)
            ((uint16_t *)row)[i] = mla_f32_to_bf16(x[i]);
        break;
    default:
        break;
    }
}

static void decode_latent(const mla_cache_layer_format *f, const void *row, const float *scales,
                          float *y)
{
    const int32_t d = f->latent_dim;
    switch (f->latent_dtype) {
    case MLA_DTYPE_I8:
    case MLA_DTYPE_I4:
        for (int32_t i = 0; i < d; i++)
            y[i] = (float)mla__cache_qvalue(f->latent_dtype, row, (size_t)i) *
                   scales[i / f->quant_group];
        break;
    default:
        mla_to_f32(y, row, f->latent_dtype, (size_t)d);
        break;
    }
}

void mla__cache_span_to_f32_c(const mla_cache_layer_format *fmt, const mla_cache_span *span,
                              int64_t first, int64_t n, float *latent, float *rope)
{
    const size_t d = (size_t)fmt->latent_dim, r = (size_t)fmt->rope_width;
    const size_t ng = fmt->quant_group > 0 ? d / (size_t)fmt->quant_group : 0;
    for (int64_t t = 0; t < n; t++) {
        size_t row = (size_t)(first + t);
        if (latent)
            decode_latent(fmt, (const char *)span->latent + row * span->latent_row_bytes,
                          span->latent_scale ? span->latent_scale + row * ng : NULL,
                          latent + (size_t)t * d);
        if (rope && r)
            mla_to_f32(rope + (size_t)t * r, (const char *)span->rope + row * span->rope_row_bytes,
                       fmt->rope_dtype, r);
    }
}

void mla__cache_span_to_f32(const mla_cache_layer_format *fmt, const mla_cache_span *span,
                            int64_t first, int64_t n, float *latent, float *rope)
{
    if (mla__cache_have_avx512())
        mla__cache_span_to_f32_avx512(fmt, span, first, n, latent, rope);
    else if (mla__cache_have_avx2())
        mla__cache_span_to_f32_avx2(fmt, span, first, n, latent, rope);
    else
        mla__cache_span_to_f32_c(fmt, span, first, n, latent, rope);
}

void mla__cache_span_i4_codes(const mla_cache_layer_format *fmt, const mla_cache_span *span,
                              int64_t first, int64_t n, int8_t *codes)
{
    size_t d = (size_t)fmt->latent_dim, nb = d / 2;
    /* Packed rows (no padding between them) are one run of bytes: SmolLM-135M d_kv 8's rows
     * are 12 bytes, shorter than a vector. */
    if (span->latent_row_bytes == nb) {
        nb *= (size_t)n;
        d *= (size_t)n;
        n = 1;
    }
    for (int64_t t = 0; t < n; t++) {
        const unsigned char *q = (const unsigned char *)span->latent +
                                 (size_t)(first + t) * span->latent_row_bytes;
        int8_t *y = codes + (size_t)t * d;
        size_t b = 0;
#ifdef __SSE2__
        /* 16 bytes to 32 codes */
        for (; b + 16 <= nb; b += 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(q + b));
            _mm_storeu_si128((__m128i *)(void *)(y + 2 * b), mla__cache_i4_codes16(x, 0));
            _mm_storeu_si128((__m128i *)(void *)(y + 2 * b + 16), mla__cache_i4_codes16(x, 1));
        }
#endif
        for (size_t k = 2 * b; k < d; k++)
            y[k] = (int8_t)mla__cache_qvalue(MLA_DTYPE_I4, q, k);
    }
}

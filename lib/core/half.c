/* float16 and bfloat16 conversions, portable; vector kernels use the hardware instructions. */
#include <math.h>
#include <string.h>

#include "core.h"

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float mla_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f)
        return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        /* zero or subnormal: man · 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t mla_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* Inf or NaN (keep NaN quiet) */
        return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0);
    if (a >= 0x477ff000u) /* rounds to ≥ 65520: overflow to Inf */
        return sign | 0x7c00;
    if (a < 0x38800000u) {
        /* result is subnormal or zero: round a·2^24 to an integer, ties to even */
        float v = bits_f32(a) * 16777216.0f;
        return sign | (uint16_t)lrintf(v);
    }
    /* normal: rebias exponent, round mantissa to 10 bits, ties to even */
    uint32_t r = a + 0xfffu + ((a >> 13) & 1);
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

float mla_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t mla_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

void mla_to_f32(float *dst, const void *src, mla_dtype dtype, size_t n)
{
    switch (dtype) {
    case MLA_DTYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case MLA_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = mla_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case MLA_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = mla_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case MLA_DTYPE_F64:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)((const double *)src)[i];
        break;
    default:
        break;
    }
}

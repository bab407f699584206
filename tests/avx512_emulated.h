/*
 * The library's AVX-512 kernels (lib/attn/kernels/avx512.c and avx512_bf16.c,
 * lib/cache/span_avx512.c) compiled for any x86-64 CPU, so that every test machine runs them
 * against the portable oracle, not only those with AVX-512. The intrinsics come from SIMDe's
 * portable versions (libsimde-dev, header-only); the masked loads and stores, conversions and
 * reductions SIMDe 0.7.4 lacks are written here lane by lane from Intel's pseudocode, and so is
 * vdpbf16ps (SIMDe adds a pair's products in the other order, without DAZ and FTZ).
 *
 * A masked load here reads only its enabled lanes. The hardware's does not fault on the others
 * either, so ASan and valgrind report any lane a mask lets through past the end of an array.
 *
 * Include first in the translation unit, with MLA_X86_EMULATED defined (the kernels' sources then
 * drop their target attributes), and rename the kernels' external symbols before including
 * them, as tests/attn/avx512_emulated.c does.
 */
#ifndef MLA_TESTS_AVX512_EMULATED_H
#define MLA_TESTS_AVX512_EMULATED_H

#ifndef MLA_X86_EMULATED
#  error "define MLA_X86_EMULATED before including avx512_emulated.h"
#endif

/* The compiler's own declarations first: SIMDe's aliases below then stand for them in what
 * follows, and the kernels' own #include <immintrin.h> is a no-op. */
#include <immintrin.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#ifdef __SANITIZE_ADDRESS__
/* SIMDe's functions called rather than inlined: inlined, they took GCC 12 over four minutes to
 * compile avx512.c with ASan (17 s so). */
#  define SIMDE_NO_INLINE
#endif
#include <simde/x86/avx512.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define EMU static inline

/* Lanes in and out of vectors. */
EMU void emu_f32_out(simde__m512 v, float x[16]) { simde_mm512_storeu_ps(x, v); }
EMU simde__m512 emu_f32_in(const float x[16]) { return simde_mm512_loadu_ps(x); }
EMU void emu_i512_out(simde__m512i v, void *x) { simde_mm512_storeu_si512(x, v); }
EMU simde__m512i emu_i512_in(const void *x) { return simde_mm512_loadu_si512(x); }
EMU void emu_i256_out(simde__m256i v, void *x) { simde_mm256_storeu_si256(x, v); }
EMU simde__m256i emu_i256_in(const void *x) { return simde_mm256_loadu_si256(x); }

/* IEEE binary16 to float32, exactly (subnormals, infinities and NaNs included). */
EMU float emu_half(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 31)
        bits = sign | 0x7f800000u | m << 13;
    else if (e != 0)
        bits = sign | (e + 112) << 23 | m << 13;
    else {
        float v = ldexpf((float)m, -24); /* subnormal (or zero): exact in float32 */
        memcpy(&bits, &v, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Masked loads (zeroing, or keeping src's lanes) and stores of `n` lanes of `size` bytes. */
EMU void emu_mask_load(void *dst, const void *src, uint32_t k, int n, size_t size)
{
    memset(dst, 0, (size_t)n * size);
    for (int i = 0; i < n; i++)
        if (k >> i & 1)
            memcpy((char *)dst + i * size, (const char *)src + i * size, size);
}
EMU void emu_mask_store(void *dst, const void *src, uint32_t k, int n, size_t size)
{
    for (int i = 0; i < n; i++)
        if (k >> i & 1)
            memcpy((char *)dst + i * size, (const char *)src + i * size, size);
}

EMU simde__m512 emu_mm512_maskz_loadu_ps(uint16_t k, const void *p)
{
    float x[16];
    emu_mask_load(x, p, k, 16, 4);
    return emu_f32_in(x);
}
EMU simde__m512 emu_mm512_mask_loadu_ps(simde__m512 src, uint16_t k, const void *p)
{
    float x[16], y[16];
    emu_f32_out(src, x);
    emu_mask_load(y, p, k, 16, 4);
    for (int i = 0; i < 16; i++)
        if (k >> i & 1)
            x[i] = y[i];
    return emu_f32_in(x);
}
EMU simde__m512i emu_mm512_maskz_loadu_epi32(uint16_t k, const void *p)
{
    int32_t x[16];
    emu_mask_load(x, p, k, 16, 4);
    return emu_i512_in(x);
}
EMU void emu_mm512_mask_storeu_ps(void *p, uint16_t k, simde__m512 v)
{
    float x[16];
    emu_f32_out(v, x);
    emu_mask_store(p, x, k, 16, 4);
}
EMU void emu_mm512_mask_storeu_epi32(void *p, uint16_t k, simde__m512i v)
{
    int32_t x[16];
    emu_i512_out(v, x);
    emu_mask_store(p, x, k, 16, 4);
}
EMU simde__m256i emu_mm256_maskz_loadu_epi16(uint16_t k, const void *p)
{
    int16_t x[16];
    emu_mask_load(x, p, k, 16, 2);
    return emu_i256_in(x);
}
EMU void emu_mm256_mask_storeu_epi16(void *p, uint16_t k, simde__m256i v)
{
    int16_t x[16];
    emu_i256_out(v, x);
    emu_mask_store(p, x, k, 16, 2);
}
EMU simde__m256 emu_mm256_maskz_loadu_ps(uint8_t k, const void *p)
{
    float x[8];
    emu_mask_load(x, p, k, 8, 4);
    return simde_mm256_loadu_ps(x);
}
EMU void emu_mm256_mask_storeu_ps(void *p, uint8_t k, simde__m256 v)
{
    float x[8];
    simde_mm256_storeu_ps(x, v);
    emu_mask_store(p, x, k, 8, 4);
}
EMU simde__m128 emu_mm_maskz_loadu_ps(uint8_t k, const void *p)
{
    float x[4];
    emu_mask_load(x, p, k, 4, 4);
    return simde_mm_loadu_ps(x);
}
EMU void emu_mm_mask_storeu_ps(void *p, uint8_t k, simde__m128 v)
{
    float x[4];
    simde_mm_storeu_ps(x, v);
    emu_mask_store(p, x, k, 4, 4);
}
EMU simde__m128i emu_mm_maskz_loadu_epi16(uint8_t k, const void *p)
{
    int16_t x[8];
    emu_mask_load(x, p, k, 8, 2);
    return simde_mm_loadu_si128(x);
}
EMU simde__m128i emu_mm_maskz_loadu_epi8(uint16_t k, const void *p)
{
    int8_t x[16];
    emu_mask_load(x, p, k, 16, 1);
    return simde_mm_loadu_si128(x);
}

/* Conversions. */
EMU simde__m512 emu_mm512_cvtph_ps(simde__m256i h)
{
    uint16_t x[16];
    float y[16];
    emu_i256_out(h, x);
    for (int i = 0; i < 16; i++)
        y[i] = emu_half(x[i]);
    return emu_f32_in(y);
}
EMU simde__m256 emu_mm256_maskz_cvtph_ps(uint8_t k, simde__m128i h)
{
    uint16_t x[8];
    float y[8];
    simde_mm_storeu_si128(x, h);
    for (int i = 0; i < 8; i++)
        y[i] = k >> i & 1 ? emu_half(x[i]) : 0.0f;
    return simde_mm256_loadu_ps(y);
}
EMU simde__m512 emu_mm512_cvtepi32_ps(simde__m512i v)
{
    int32_t x[16];
    float y[16];
    emu_i512_out(v, x);
    for (int i = 0; i < 16; i++)
        y[i] = (float)x[i];
    return emu_f32_in(y);
}
/* Truncation; out of range (NaN included) gives the "integer indefinite" 0x80000000. */
EMU simde__m512i emu_mm512_cvttps_epi32(simde__m512 v)
{
    float x[16];
    int32_t y[16];
    emu_f32_out(v, x);
    for (int i = 0; i < 16; i++)
        y[i] = x[i] > -2147483904.0f && x[i] < 2147483648.0f ? (int32_t)x[i] : INT32_MIN;
    return emu_i512_in(y);
}
EMU simde__m512i emu_mm512_cvtepi8_epi32(simde__m128i v)
{
    int8_t x[16];
    int32_t y[16];
    simde_mm_storeu_si128(x, v);
    for (int i = 0; i < 16; i++)
        y[i] = x[i];
    return emu_i512_in(y);
}
EMU simde__m512i emu_mm512_cvtepu16_epi32(simde__m256i v)
{
    uint16_t x[16];
    int32_t y[16];
    emu_i256_out(v, x);
    for (int i = 0; i < 16; i++)
        y[i] = x[i];
    return emu_i512_in(y);
}

/* float32 to bf16 as vcvtneps2bf16: round to nearest even, NaN made quiet, and denormal inputs
 * taken as zero (the instruction ignores MXCSR and always treats them so). */
EMU uint16_t emu_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(u >> 16 | 0x40);
    if ((u & 0x7f800000u) == 0)
        u &= 0x80000000u;
    u += 0x7fffu + (u >> 16 & 1);
    return (uint16_t)(u >> 16);
}
EMU simde__m256bh emu_mm512_cvtneps_pbh(simde__m512 v)
{
    float x[16];
    uint16_t y[16];
    emu_f32_out(v, x);
    for (int i = 0; i < 16; i++)
        y[i] = emu_to_bf16(x[i]);
    simde__m256bh r;
    memcpy(&r, y, sizeof r);
    return r;
}

/* A bf16 value widened, as vdpbf16ps reads it: denormals as zero. */
EMU float emu_bf16_daz(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    if ((u & 0x7f800000u) == 0)
        u &= 0x80000000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* An accumulator as vdpbf16ps leaves it: denormal results flushed to zero. */
EMU float emu_ftz(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0)
        u &= 0x80000000u;
    memcpy(&f, &u, 4);
    return f;
}
/* vdpbf16ps: lane i += a[2i+1]·b[2i+1], then += a[2i]·b[2i] (Intel's order), each product exact
 * in float32 and each sum rounded to nearest even. */
EMU simde__m512 emu_mm512_dpbf16_ps(simde__m512 src, simde__m512bh a, simde__m512bh b)
{
    float s[16];
    uint16_t x[32], y[32];
    emu_f32_out(src, s);
    memcpy(x, &a, sizeof x);
    memcpy(y, &b, sizeof y);
    for (int i = 0; i < 16; i++) {
        s[i] = emu_ftz(s[i] + emu_bf16_daz(x[2 * i + 1]) * emu_bf16_daz(y[2 * i + 1]));
        s[i] = emu_ftz(s[i] + emu_bf16_daz(x[2 * i]) * emu_bf16_daz(y[2 * i]));
    }
    return emu_f32_in(s);
}

/* maxps(a, b): a > b ? a : b, so b when either is NaN. */
EMU float emu_maxps(float a, float b) { return a > b ? a : b; }
/* The reductions as GCC's avx512fintrin.h takes them: halves combined, 8 + 8 and 4 + 4 with the
 * upper half as maxps's first operand, then 2 + 2 and 1 + 1 with the lower one. */
EMU float emu_reduce(simde__m512 v, int max)
{
    float x[16];
    emu_f32_out(v, x);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            x[i] = !max ? x[i] + x[i + w]
                   : w >= 4 ? emu_maxps(x[i + w], x[i]) : emu_maxps(x[i], x[i + w]);
    return x[0];
}
EMU float emu_mm512_reduce_add_ps(simde__m512 v) { return emu_reduce(v, 0); }
EMU float emu_mm512_reduce_max_ps(simde__m512 v) { return emu_reduce(v, 1); }

#undef _mm512_dpbf16_ps
#define _mm512_shuffle_f32x4 simde_mm512_shuffle_f32x4 /* in SIMDe, without the alias */
#define _mm512_maskz_loadu_ps emu_mm512_maskz_loadu_ps
#define _mm512_mask_loadu_ps emu_mm512_mask_loadu_ps
#define _mm512_maskz_loadu_epi32 emu_mm512_maskz_loadu_epi32
#define _mm512_mask_storeu_ps emu_mm512_mask_storeu_ps
#define _mm512_mask_storeu_epi32 emu_mm512_mask_storeu_epi32
#define _mm256_maskz_loadu_epi16 emu_mm256_maskz_loadu_epi16
#define _mm256_mask_storeu_epi16 emu_mm256_mask_storeu_epi16
#define _mm256_maskz_loadu_ps emu_mm256_maskz_loadu_ps
#define _mm256_mask_storeu_ps emu_mm256_mask_storeu_ps
#define _mm_maskz_loadu_ps emu_mm_maskz_loadu_ps
#define _mm_mask_storeu_ps emu_mm_mask_storeu_ps
#define _mm_maskz_loadu_epi16 emu_mm_maskz_loadu_epi16
#define _mm_maskz_loadu_epi8 emu_mm_maskz_loadu_epi8
#define _mm512_cvtph_ps emu_mm512_cvtph_ps
#define _mm256_maskz_cvtph_ps emu_mm256_maskz_cvtph_ps
#define _mm512_cvtepi32_ps emu_mm512_cvtepi32_ps
#define _mm512_cvttps_epi32 emu_mm512_cvttps_epi32
#define _mm512_cvtepi8_epi32 emu_mm512_cvtepi8_epi32
#define _mm512_cvtepu16_epi32 emu_mm512_cvtepu16_epi32
#define _mm512_cvtneps_pbh emu_mm512_cvtneps_pbh
#define _mm512_dpbf16_ps emu_mm512_dpbf16_ps
#define _mm512_reduce_add_ps emu_mm512_reduce_add_ps
#define _mm512_reduce_max_ps emu_mm512_reduce_max_ps

#endif

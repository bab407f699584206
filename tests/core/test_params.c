/* The struct_size convention and the half-precision conversions of lib/core. */
#define _GNU_SOURCE /* sched_setaffinity, CPU_COUNT */
#include <sched.h>
#include <stddef.h>
#include <string.h>

#include <mla/mla.h>

#include "core/core.h"
#include "../tap.h"

/* What a caller built against an older header would have: the first fields only. */
typedef struct {
    size_t struct_size;
    int32_t d_model;
    int32_t n_heads;
} old_geometry;

int main(void)
{
    /* Defaults reach only the bytes the caller owns; struct_size records the caller's size. */
    unsigned char buf[sizeof(mla_geometry) + 16];
    memset(buf, 0xab, sizeof buf);
    CHECK(mla_geometry_default_params((mla_geometry *)buf, sizeof(old_geometry)) == MLA_OK,
          "default params into an older, shorter struct");
    old_geometry og;
    memcpy(&og, buf, sizeof og);
    CHECK(og.struct_size == sizeof(old_geometry), "struct_size is the caller's (%zu)",
          og.struct_size);
    CHECK(buf[sizeof(old_geometry)] == 0xab, "nothing written past the caller's struct");

    /* A newer caller's extra bytes are zeroed, not left as garbage. */
    memset(buf, 0xab, sizeof buf);
    CHECK(mla_geometry_default_params((mla_geometry *)buf, sizeof buf) == MLA_OK,
          "default params into a newer, longer struct");
    CHECK(buf[sizeof buf - 1] == 0 && buf[sizeof(mla_geometry)] == 0,
          "fields unknown to the library are zero");
    mla_geometry g;
    memcpy(&g, buf, sizeof g);
    CHECK(g.rope_theta == 10000.0 && g.rope_scaling_factor == 1.0, "defaults are set");

    /* Reading: a short struct keeps the library's defaults for the fields it lacks. */
    mla_geometry full;
    mla_geometry_default_params(&full, sizeof full);
    full.rope_theta = 5.0;
    og.struct_size = sizeof og;
    og.d_model = 64;
    og.n_heads = 4;
    CHECK(mla_params_read(&full, sizeof full, &og, "geometry") == MLA_OK, "read a short struct");
    CHECK(full.d_model == 64 && full.n_heads == 4 && full.rope_theta == 5.0,
          "covered fields copied, the rest kept");
    CHECK(full.struct_size == sizeof full, "internal copy has the full size");
    og.struct_size = 2;
    CHECK(mla_params_read(&full, sizeof full, &og, "geometry") == MLA_ERR_INVALID_ARGUMENT,
          "struct_size smaller than the size field is refused");
    CHECK(strstr(mla_last_error(), "geometry.struct_size is 2") != NULL, "message names it: %s",
          mla_last_error());

    /* f16: exact values, rounding to nearest even, overflow, subnormals (IEEE 754 binary16). */
    struct { float f; uint16_t h; } f16[] = {
        {0.0f, 0x0000}, {1.0f, 0x3c00}, {-2.0f, 0xc000}, {65504.0f, 0x7bff},
        {65520.0f, 0x7c00}, {0x1p-24f, 0x0001}, {0x1p-14f, 0x0400}, {1.0f + 0x1p-11f, 0x3c00},
        {1.0f + 3 * 0x1p-11f, 0x3c02}, {0.333333343f, 0x3555}, {INFINITY, 0x7c00},
        /* the subnormal path: ties to even, and rounding up into the smallest normal */
        {0x1p-25f, 0x0000}, {0x1.8p-24f, 0x0002}, {0x1.4p-23f, 0x0002},
        {0x1p-14f - 0x1p-26f, 0x0400}, {-0.0f, 0x8000}, {-0x1p-24f, 0x8001},
        /* just below the overflow threshold 65520 */
        {65519.0f, 0x7bff}, {-65520.0f, 0xfc00},
    };
    for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++) {
        CHECK(mla_f32_to_f16(f16[i].f) == f16[i].h, "f32 %a -> f16 0x%04x (got 0x%04x)",
              (double)f16[i].f, f16[i].h, mla_f32_to_f16(f16[i].f));
    }
    int roundtrip_ok = 1;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue; /* NaN payloads */
        if (mla_f32_to_f16(mla_f16_to_f32((uint16_t)h)) != h)
            roundtrip_ok = 0;
    }
    CHECK(roundtrip_ok, "every non-NaN f16 survives f16 -> f32 -> f16");
    CHECK(isnan(mla_f16_to_f32(mla_f32_to_f16(NAN))), "NaN stays NaN in f16");

    /* bf16: truncation with round-to-nearest-even of the low 16 bits. */
    CHECK(mla_f32_to_bf16(1.0f) == 0x3f80, "bf16(1) = 0x3f80");
    CHECK(mla_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "tie rounds to even (down)");
    CHECK(mla_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82, "tie rounds to even (up)");
    CHECK(mla_bf16_to_f32(0xc040) == -3.0f, "bf16 0xc040 = -3");
    CHECK(mla_f32_to_bf16(0x1.fffffep127f) == 0x7f80 && mla_f32_to_bf16(-INFINITY) == 0xff80,
          "FLT_MAX rounds to bf16 Inf, -Inf stays");
    CHECK(isnan(mla_bf16_to_f32(mla_f32_to_bf16(NAN))), "NaN stays NaN in bf16");

    const mla_cpu_features *cpu = mla_cpu();
    CHECK(!cpu->avx512_bf16 || cpu->avx512f, "avx512_bf16 implies avx512f");
    CHECK(!cpu->avx512f || cpu->avx2, "avx512f implies avx2 on every CPU seen");
    CHECK(mla_cpu_count() >= 1, "at least one CPU (%d)", mla_cpu_count());
#ifdef CPU_COUNT
    /* Restricted to one CPU (as taskset would), "all cores" means one. */
    cpu_set_t saved, one;
    if (sched_getaffinity(0, sizeof saved, &saved) == 0) {
        CPU_ZERO(&one);
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &saved)) {
                CPU_SET(c, &one);
                break;
            }
        int set_ok = sched_setaffinity(0, sizeof one, &one) == 0;
        int n_one = mla_cpu_count();
        CHECK(set_ok && n_one == 1, "with affinity to one CPU, mla_cpu_count() is 1 (%d)", n_one);
        sched_setaffinity(0, sizeof saved, &saved);
    }
#endif
    return tap_done();
}

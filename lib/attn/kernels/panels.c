/*
 * gemm_bc_asrc by panels (avx512.c, avx2.c, generic.c): aligned float32 rows are read where
 * they are; other rows are converted, up to 24 rows and 8192 values (32 KiB) at a time, into a
 * float32 buffer that stays in L1, which the table's gemm_bc then multiplies.
 */
#include "attn/kernels/kernels.h"

#define PANEL_FLOATS 8192

void mla__gemm_bc_asrc_panels(int64_t m, int64_t n, int64_t k, const mla__src *a, int64_t t0,
                              int64_t col0, const float *b, ptrdiff_t ldb, float beta, float *c,
                              ptrdiff_t ldc, mla__gemm_bc_fn gemm_bc, mla__panel_fn convert)
{
    if (a->t == MLA_DTYPE_F32 && a->ld % (ptrdiff_t)sizeof(float) == 0 &&
        (uintptr_t)a->p % sizeof(float) == 0) {
        gemm_bc(m, n, k, (const float *)(const void *)(a->p + t0 * a->ld) + col0,
                a->ld / (ptrdiff_t)sizeof(float), 1, b, ldb, beta, c, ldc);
        return;
    }
    float buf[PANEL_FLOATS];
    int64_t kc_max = k < PANEL_FLOATS ? (k > 0 ? k : 1) : PANEL_FLOATS;
    int64_t pm = PANEL_FLOATS / kc_max < 24 ? PANEL_FLOATS / kc_max : 24;
    for (int64_t i = 0; i < m; i += pm) {
        int64_t rows = m - i < pm ? m - i : pm;
        if (k == 0) {
            gemm_bc(rows, n, 0, buf, 1, 1, b, ldb, beta, c + i * ldc, ldc);
            continue;
        }
        for (int64_t k0 = 0; k0 < k; k0 += kc_max) {
            int64_t kc = k - k0 < kc_max ? k - k0 : kc_max;
            convert(a, t0 + i, rows, col0 + k0, kc, buf);
            gemm_bc(rows, n, kc, buf, kc, 1, b + k0 * ldb, ldb, k0 == 0 ? beta : 1.0f,
                    c + i * ldc, ldc);
        }
    }
}

/*
 * Float32 inner loops of the attention paths. The portable versions are the oracle; vectorized
 * variants (avx512.c) are chosen once at run time from the CPU's features. Kernels never allocate.
 *
 * Both products write C = beta·C + A·op(B) with beta 0 or 1 and row-major C (row stride ldc):
 * - gemm_bc ("broadcast"): B(k, j) = b[k·ldb + j] is contiguous along j, vectorized along the
 *   columns j; A(i, k) = a[i·rsa + k·csa] may have any strides (its elements are broadcast).
 *   Scores against cached latents (A = latent rows, B = the queries transposed) and the
 *   weighted sums (A = probabilities, B = latent or value rows) are both of this form.
 * - gemm_dot: A rows and B rows contiguous along k (C = A·Bᵀ), vectorized along k. Scores of
 *   few query rows against key rows of a head (MHA decode).
 */
#ifndef MLA_ATTN_KERNELS_H
#define MLA_ATTN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

typedef void (*mla__gemm_bc_fn)(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                                ptrdiff_t csa, const float *b, ptrdiff_t ldb, float beta,
                                float *c, ptrdiff_t ldc);
typedef void (*mla__gemm_dot_fn)(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
                                 const float *b, ptrdiff_t ldb, float beta, float *c,
                                 ptrdiff_t ldc);
/*
 * One step of the online softmax over a tile of scores for n_rows query rows. Score (i, t) is
 * s[i·s_row + t·s_col]; row i sees the first nvis[i / rows_per_nvis] of the tile's t_len tokens
 * (positions ascend, so the visible ones are a prefix). On return s holds the unnormalized
 * probabilities exp(s − max) of the visible entries and 0 elsewhere; the running max mx[i·ms],
 * sum l[i·ms] and output row o + i·ldo (dv values) are rescaled to the new max.
 */
typedef void (*mla__softmax_step_fn)(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_row,
                                     ptrdiff_t s_col, const int64_t *nvis, int64_t rows_per_nvis,
                                     float *mx, float *l, ptrdiff_t ms, float *o, ptrdiff_t ldo,
                                     int64_t dv);

typedef struct mla__attn_kernels {
    const char *name;
    mla__gemm_bc_fn gemm_bc;
    mla__gemm_dot_fn gemm_dot;
    mla__softmax_step_fn softmax_step;
} mla__attn_kernels;

MLA_INTERNAL extern const mla__attn_kernels mla__attn_kernels_portable;
#if defined(__x86_64__) && defined(__GNUC__)
#  define MLA_ATTN_HAVE_AVX512 1
MLA_INTERNAL extern const mla__attn_kernels mla__attn_kernels_avx512;
#endif

/* The best kernels this CPU runs (chosen once). MLA_ATTN_KERNELS=portable in the environment
 * forces the portable ones (for comparisons in bench/). */
MLA_INTERNAL const mla__attn_kernels *mla__attn_kernels_best(void);

#endif /* MLA_ATTN_KERNELS_H */

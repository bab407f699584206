/*
 * Float32 inner loops of the attention paths. The portable versions are the oracle; vectorized
 * variants (avx512.c, avx2.c, generic.c) are chosen once at run time from the CPU's features.
 * Kernels never allocate.
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

/*
 * Cached rows read in place (no float32 copy of the tile): element (t, k) of a source is the
 * value at column k of row t, converted to float32 in registers. F32, F16, BF16 and I8 (value ·
 * sc[t·lds + k / group]); the other storage types are converted to a float32 tile first.
 */
typedef struct mla__src {
    const unsigned char *p;      /* row 0, column 0 */
    ptrdiff_t ld;                /* bytes between rows */
    mla_dtype t;
    const float *sc;             /* I8: scales of row 0 */
    ptrdiff_t lds;               /* I8: floats between rows' scales */
    int32_t group;               /* I8: values per scale */
} mla__src;

/* dst[k·ldd + t] = element (t0 + t, col0 + k) for t < n, k < kw: rows transposed to float32
 * columns (the layout gemm_bc vectorizes along the tokens). */
typedef void (*mla__load_t_fn)(const mla__src *s, int64_t t0, int64_t n, int64_t col0,
                               int64_t kw, float *dst, ptrdiff_t ldd);
/* The same transposition for F16 and BF16 sources without the conversion: dst[k·ldd + t] = the
 * stored 16 bits of (t0 + t, col0 + k). Half the bytes and shuffles of load_t; gemm_bc_src over
 * the result (an F16 source of rows k, row stride 2·ldd bytes) converts as it multiplies. */
typedef void (*mla__load_t16_fn)(const mla__src *s, int64_t t0, int64_t n, int64_t col0,
                                 int64_t kw, uint16_t *dst, ptrdiff_t ldd);
/* gemm_bc with B read from a source: B(k, j) = element (t0 + k, col0 + j). */
typedef void (*mla__gemm_bc_src_fn)(int64_t m, int64_t n, int64_t k, const float *a,
                                    ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b, int64_t t0,
                                    int64_t col0, float beta, float *c, ptrdiff_t ldc);
/* gemm_dot with B's rows read from a source: C(i, j) = beta·C + Σ_kk A(i, kk)·element
 * (t0 + j, col0 + kk); A rows contiguous along k (lda). Scores against cached keys rows, and
 * products with a layer's weights read in place (gemm.c, mla__sgemm_wt). */
typedef void (*mla__gemm_dot_src_fn)(int64_t m, int64_t n, int64_t k, const float *a,
                                     ptrdiff_t lda, const mla__src *b, int64_t t0, int64_t col0,
                                     float beta, float *c, ptrdiff_t ldc);
/* gemm_bc with A read from a source: C(i, j) = beta·C + Σ_kk element(t0 + i, col0 + kk)·B(kk, j).
 * Scores of many query rows (the heads, vectorized along B's columns) against cached latents. */
typedef void (*mla__gemm_bc_asrc_fn)(int64_t m, int64_t n, int64_t k, const mla__src *a,
                                     int64_t t0, int64_t col0, const float *b, ptrdiff_t ldb,
                                     float beta, float *c, ptrdiff_t ldc);

/*
 * One decode query of the MHA baseline with one query row a KV head (MHA proper: n_h = n_kv)
 * against a step of n cached rows, every head in one call (the per-head products are too short
 * to be worth a call each: Llama-2-7B has 32 heads of 256 bytes a row). Head j owns columns
 * j·d .. j·d + d − 1 of the rows, its query q[j·d ..], scores s[j·lds + u], u < n, and output
 * row o[j·ldo ..].
 * mha_scores: s[j·lds + u] = Σ_k q[j·d + k]·element(t0 + u, j·d + k).
 * mha_values: o[j·ldo + k] += Σ_u p[j·lds + u]·element(t0 + u, j·d + k).
 */
typedef void (*mla__mha_scores_fn)(int64_t n_kv, int64_t d, int64_t n, const float *q,
                                   const mla__src *k, int64_t t0, float *s, ptrdiff_t lds);
typedef void (*mla__mha_values_fn)(int64_t n_kv, int64_t d, int64_t n, const float *p,
                                   ptrdiff_t lds, const mla__src *v, int64_t t0, float *o,
                                   ptrdiff_t ldo);

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

/*
 * BF16 products (the absorbed path over a BF16 cache, absorbed.c): both operands are bf16 values
 * taken in pairs along k, as vdpbf16ps multiplies them: A's pair (i, p) is a[i·rsa + p·csa]
 * and the value after it, B's pair (p, j) is b[p·ldb + 2j] and the one after it. C(i, j) =
 * beta·C + Σ_{p < kp} both products of the pairs; every bf16 product is exact in float32, the
 * sums are float32 (their order is the kernel's; strides count uint16 values).
 */
typedef void (*mla__gemm_bf16_fn)(int64_t m, int64_t n, int64_t kp, const uint16_t *a,
                                  ptrdiff_t rsa, ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb,
                                  float beta, float *c, ptrdiff_t ldc);
/* Rows of a BF16 source interleaved in pairs of tokens (B of the weighted sum Σ p·c): row i
 * (token u = t + i of the tile) goes to dst[(u / 2)·ldd + 2k + u % 2] for columns col0 + k,
 * k < w, bit for bit. */
typedef void (*mla__pack_pairs_fn)(const mla__src *s, int64_t n, int64_t col0, int64_t w,
                                   uint16_t *dst, ptrdiff_t ldd, int64_t t);

/* dst[i] = x[i] rounded to bf16 (nearest, ties to even) for finite x, i < n. The vectorized
 * variant (vcvtneps2bf16) treats float32 subnormals as zero: they differ from the portable
 * result only below 2⁻¹²⁶ (probabilities that small add nothing to a float32 sum of ones). */
typedef void (*mla__to_bf16_fn)(const float *x, int64_t n, uint16_t *dst);
/* x[i] = x[i] rounded to bf16 precision (nearest, ties to even; still float32) for finite x,
 * i < n: the float32 products over a BF16 cache take the operands the bf16 ones would. */
typedef void (*mla__round_bf16_fn)(float *x, int64_t n);

/*
 * The RoPE part of many-rows absorbed scores (absorbed.c): each token u of a float32 tile holds
 * n_kv segments of r values, x[u·ldx + j·r ..], and each segment is dotted with the g query
 * rows of its KV head, packed q[(j·g + i)·r + kk]:
 * s[u·lds + j·g + i] = beta·s + Σ_{kk < r} x[u·ldx + j·r + kk]·q[(j·g + i)·r + kk] (beta 0: set).
 */
typedef void (*mla__seg_dots_fn)(int64_t n, int64_t n_kv, int64_t g, int64_t r, const float *x,
                                 ptrdiff_t ldx, const float *q, float beta, float *s,
                                 ptrdiff_t lds);

/*
 * Scores over I8 latents with the group scales after the sums (absorbed.c, few query rows):
 * load_t8 transposes I8 codes as load_t16 does 16-bit values, dst[k·ldd + t] = the code of
 * (t0 + t, col0 + k) sign-extended to 16 bits, scales not applied; gemm_bc_i16s multiplies
 * them, C(i, j) = beta·C + cs[j]·Σ_kk A(i, kk)·b[kk·ldb + j] (one group's columns as the
 * depth, cs[j] the group's scale of token j). NULL in tables that dequantize in load_t instead.
 */
typedef void (*mla__load_t8_fn)(const mla__src *s, int64_t t0, int64_t n, int64_t col0,
                                int64_t kw, int16_t *dst, ptrdiff_t ldd);
typedef void (*mla__gemm_bc_i16s_fn)(int64_t m, int64_t n, int64_t k, const float *a,
                                     ptrdiff_t rsa, ptrdiff_t csa, const int16_t *b,
                                     ptrdiff_t ldb, const float *cs, float beta, float *c,
                                     ptrdiff_t ldc);

typedef struct mla__attn_kernels {
    const char *name;
    mla__gemm_bc_fn gemm_bc;
    mla__gemm_dot_fn gemm_dot;
    mla__softmax_step_fn softmax_step;
    mla__load_t_fn load_t;
    mla__load_t16_fn load_t16;
    mla__gemm_bc_src_fn gemm_bc_src;
    mla__gemm_dot_src_fn gemm_dot_src;
    mla__gemm_bc_asrc_fn gemm_bc_asrc;
    mla__mha_scores_fn mha_scores;
    mla__mha_values_fn mha_values;
    mla__gemm_bf16_fn gemm_bf16;
    mla__pack_pairs_fn pack_pairs;
    mla__to_bf16_fn to_bf16;
    mla__round_bf16_fn round_bf16;
    mla__seg_dots_fn seg_dots;
    /*
     * The latent width (lat_k) from which the absorbed path with few query rows over a BF16
     * cache multiplies with gemm_bf16; below it, float32 FMAs over a 16-bit transposed tile
     * with the same bf16-rounded queries and probabilities are faster (absorbed.c). Set by
     * kernels.c from the gemm_bf16 it chose.
     */
    int64_t bf16_few_rows_min_k;
    /* 1: many query rows over a BF16 cache multiply with gemm_bf16 (job_bf16); 0: float32 FMAs
     * over the float32 tile, with the same bf16-rounded queries and probabilities (absorbed.c),
     * where the table's gemm_bf16 only emulates bf16 products with FMAs on split words. */
    int bf16_many_rows;
    /* Which gemm_bf16 this is ("portable", "fma", "vdpbf16ps", "amx"), for mla_build_info. */
    const char *bf16_products;
    /* Tokens of a few-rows absorbed tile over 16-bit keys when the query rows are 9
     * (SmolLM-135M's decode: the rows gemm_bc_src's 9 × 48 blocks serve); 0, and for any other
     * rows: as many as keep the transposed keys in 32 KiB (forward.c). Set by kernels.c with
     * the gemm_bc_src whose blocks it suits. */
    int64_t nine_rows_tile;
    /* Products of fewer rows than this with a layer's weights take gemm_dot_src, which reads
     * the weights in place (gemm.c, mla__sgemm_wt), instead of BLIS: 512 with AVX-512 (below
     * BLIS's small-matrix threshold), 64 with AVX2 (half the vector width: BLIS's packed
     * product is faster from there), 0 in the portable table. */
    int64_t dot_weights_max_m;
    mla__load_t8_fn load_t8;           /* both or neither (see their types) */
    mla__gemm_bc_i16s_fn gemm_bc_i16s;
} mla__attn_kernels;

/*
 * The vectorized exp(x) for x ≤ 0 of the softmax step (avx512.c, avx2.c): 2^(x·log2 e) split into
 * an integer power and a degree-6 polynomial of the fraction f on [−0.5, 0.5], the Taylor
 * coefficients of e^y with y = f·ln 2 folded in, highest first (relative error below 2e-7).
 * Inputs below EXP_MIN flush to 0, as expf underflows there too.
 */
#define MLA__EXP_MIN (-87.3f)
#define MLA__EXP_LOG2E 1.44269504088896341f
#define MLA__EXP_C6 1.5353362e-4f
#define MLA__EXP_C5 1.3398874e-3f
#define MLA__EXP_C4 9.6182630e-3f
#define MLA__EXP_C3 5.5503366e-2f
#define MLA__EXP_C2 2.4022650e-1f
#define MLA__EXP_C1 6.9314718e-1f

/* Rows t0 .. t0+rows−1, columns col0 .. col0+kc−1 of a source converted into buf (rows × kc). */
typedef void (*mla__panel_fn)(const mla__src *a, int64_t t0, int64_t rows, int64_t col0,
                              int64_t kc, float *buf);
/* gemm_bc_asrc by panels converted with `convert` and multiplied by `gemm_bc` (panels.c). */
MLA_INTERNAL void mla__gemm_bc_asrc_panels(int64_t m, int64_t n, int64_t k, const mla__src *a,
                                           int64_t t0, int64_t col0, const float *b,
                                           ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc,
                                           mla__gemm_bc_fn gemm_bc, mla__panel_fn convert);

/* Element (t, k) of a source (the portable conversion every kernel must reproduce exactly). */
MLA_INTERNAL float mla__src_get(const mla__src *s, int64_t t, int64_t k);

MLA_INTERNAL extern const mla__attn_kernels mla__attn_kernels_portable;
/* portable.c's seg_dots, which the generic table and the vectorized ones' remainders use. */
MLA_INTERNAL void mla__seg_dots_portable(int64_t n, int64_t n_kv, int64_t g, int64_t r,
                                         const float *x, ptrdiff_t ldx, const float *q,
                                         float beta, float *s, ptrdiff_t lds);
/* generic.c: the products in GCC/Clang vector extensions, for any target (CPUs without AVX2). */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)
#  define MLA_ATTN_HAVE_GENERIC 1
MLA_INTERNAL extern const mla__attn_kernels mla__attn_kernels_generic;
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#  define MLA_ATTN_HAVE_AVX512 1
MLA_INTERNAL extern const mla__attn_kernels mla__attn_kernels_avx512;
/* avx2.c: the same kernels in 8 lanes, for CPUs with AVX2, FMA and F16C but no AVX-512. */
MLA_INTERNAL extern const mla__attn_kernels mla__attn_kernels_avx2;
/* avx2.c's seg_dots, which the AVX-512 table takes too. */
MLA_INTERNAL void mla__seg_dots_avx2(int64_t n, int64_t n_kv, int64_t g, int64_t r,
                                     const float *x, ptrdiff_t ldx, const float *q, float beta,
                                     float *s, ptrdiff_t lds);
/* avx512_bf16.c: the BF16 kernels with vdpbf16ps (CPUs with AVX512_BF16 only). */
MLA_INTERNAL void mla__gemm_bf16_avx512(int64_t m, int64_t n, int64_t kp, const uint16_t *a,
                                        ptrdiff_t rsa, ptrdiff_t csa, const uint16_t *b,
                                        ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc);
MLA_INTERNAL void mla__to_bf16_avx512(const float *x, int64_t n, uint16_t *dst);
/* avx512.c: gemm_bf16 on float32 FMAs (AVX-512F/BW only; faster than vdpbf16ps where that
 * issues at half the FMA rate, kernels.c). */
MLA_INTERNAL void mla__gemm_bf16_fma(int64_t m, int64_t n, int64_t kp, const uint16_t *a,
                                     ptrdiff_t rsa, ptrdiff_t csa, const uint16_t *b,
                                     ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc);
/* avx512.c: gemm_bc_src with 9 rows in 9 × 48 blocks where they cover B (AMD CPUs). */
MLA_INTERNAL void mla__gemm_bc_src_w48_avx512(int64_t m, int64_t n, int64_t k, const float *a,
                                              ptrdiff_t rsa, ptrdiff_t csa, const mla__src *b,
                                              int64_t t0, int64_t col0, float beta, float *c,
                                              ptrdiff_t ldc);
/* amx.c: gemm_bf16 on AMX tiles (CPUs with AMX-BF16, after mla__amx_request granted them). */
MLA_INTERNAL void mla__gemm_bf16_amx(int64_t m, int64_t n, int64_t kp, const uint16_t *a,
                                     ptrdiff_t rsa, ptrdiff_t csa, const uint16_t *b,
                                     ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc);
MLA_INTERNAL int mla__amx_request(void);
MLA_INTERNAL void mla__pack_pairs_avx512(const mla__src *s, int64_t n, int64_t col0, int64_t w,
                                         uint16_t *dst, ptrdiff_t ldd, int64_t t);
#endif

/* The best kernels this CPU runs (chosen once): AVX-512, else AVX2 (with FMA and F16C), else
 * portable. MLA_ATTN_KERNELS in the environment, for comparisons in bench/: "portable" forces
 * the portable ones, "avx2" the AVX2 ones (where the CPU has them), "avx512" the AVX-512 ones
 * without AMX. */
MLA_INTERNAL const mla__attn_kernels *mla__attn_kernels_best(void);
/* The table for a CPU with features f, MLA_ATTN_KERNELS being `force` (NULL when unset): what
 * mla__attn_kernels_best returns for this CPU. An AVX-512 table, whose BF16 kernels depend on
 * the CPU, is filled into *avx512 and returned from there. */
MLA_INTERNAL const mla__attn_kernels *mla__attn_kernels_choose(const mla_cpu_features *f,
                                                              const char *force,
                                                              mla__attn_kernels *avx512);

#endif /* MLA_ATTN_KERNELS_H */

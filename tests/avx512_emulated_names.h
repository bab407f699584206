/*
 * The external names of the AVX-512 kernels, the AMX one and kernels.c's choice among the
 * tables, as the emulated sources in tests/attn and tests/cache compile them
 * (tests/avx512_emulated.h, tests/amx_emulated.h): the library's own names with "_emulated"
 * added, so that both copies link into one test program.
 * A test that includes this before the library's internal headers calls the emulated copies.
 */
#ifndef MLA_TESTS_AVX512_EMULATED_NAMES_H
#define MLA_TESTS_AVX512_EMULATED_NAMES_H

#define mla__attn_kernels_avx512 mla__attn_kernels_avx512_emulated
#define mla__gemm_bc_src_w48_avx512 mla__gemm_bc_src_w48_avx512_emulated
#define mla__gemm_bf16_fma mla__gemm_bf16_fma_emulated
#define mla__gemm_bf16_avx512 mla__gemm_bf16_avx512_emulated
#define mla__gemm_bf16_amx mla__gemm_bf16_amx_emulated
#define mla__amx_request mla__amx_request_emulated
#define mla__pack_pairs_avx512 mla__pack_pairs_avx512_emulated
#define mla__to_bf16_avx512 mla__to_bf16_avx512_emulated
#define mla__attn_kernels_choose mla__attn_kernels_choose_emulated
#define mla__attn_kernels_best mla__attn_kernels_best_emulated
#define mla__cache_have_avx512 mla__cache_have_avx512_emulated
#define mla__cache_span_to_f32_avx512 mla__cache_span_to_f32_avx512_emulated

/* tdpbf16ps run on the emulated tiles so far, all threads (tests/attn/amx_emulated.c). */
long mla_test_amx_products(void);

#endif

/* lib/attn/kernels/avx512_bf16.c (vdpbf16ps) over SIMDe (tests/avx512_emulated.h), for
 * test_attn_kernels_avx512_emulated. */
#define MLA_X86_EMULATED 1
#include "../avx512_emulated.h"
#include "../avx512_emulated_names.h"
#include "attn/kernels/avx512_bf16.c"

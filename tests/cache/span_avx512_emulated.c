/* lib/cache/span_avx512.c over SIMDe (tests/avx512_emulated.h), for
 * test_cache_quant_avx512_emulated. */
#define MLA_X86_EMULATED 1
#include "../avx512_emulated.h"
#include "../avx512_emulated_names.h"
#include "cache/span_avx512.c"

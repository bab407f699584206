/* lib/attn/kernels/kernels.c with the names of tests/avx512_emulated_names.h: its choice of
 * tables for given CPU features, which then takes the AVX-512 kernels compiled over SIMDe. */
#include "../avx512_emulated_names.h"
#include "attn/kernels/kernels.c"

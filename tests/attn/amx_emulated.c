/* lib/attn/kernels/amx.c on emulated tiles (tests/amx_emulated.h), for the emulated suite. */
#define MLA_X86_EMULATED 1
#include "../avx512_emulated.h"
#include "../amx_emulated.h"
#include "../avx512_emulated_names.h"
#include "attn/kernels/amx.c"

atomic_long emu_amx_products;

long mla_test_amx_products(void)
{
    return atomic_load(&emu_amx_products);
}

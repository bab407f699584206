/*
 * AMX tiles for lib/attn/kernels/amx.c on any x86-64 CPU, after tests/avx512_emulated.h: the
 * eight tile registers and their configuration as plain memory, one set a thread (each thread
 * has its own on the hardware), and the instructions amx.c uses written from Intel's
 * pseudocode. GCC's own versions are inline assembly, which would assemble and then fault on
 * CPUs without AMX; the names here stand for them in what follows.
 *
 * The checks the hardware makes are made too, and a failed one ends the test (it would fault):
 * an instruction before ldtilecfg or after tilerelease or on a tile left unconfigured, a
 * configuration other than palette 1 within 16 rows of 64 bytes, and tdpbf16ps over tiles whose
 * shapes do not chain. Loads and
 * stores touch only each row's colsb bytes, so ASan sees a row that runs past its array.
 *
 * emu_amx_products counts tdpbf16ps over all threads, so that a test can tell that a forward
 * went through the tiles at all.
 */
#ifndef MLA_TESTS_AMX_EMULATED_H
#define MLA_TESTS_AMX_EMULATED_H

#ifndef MLA_TESTS_AVX512_EMULATED_H
#  error "include avx512_emulated.h before amx_emulated.h"
#endif

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define EMU_TILES 8

typedef struct emu_tile_config {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} emu_tile_config;

static _Thread_local struct {
    int configured;
    emu_tile_config cfg;
    unsigned char t[EMU_TILES][16][64];
} emu_amx;

/* tdpbf16ps over all threads (tests/attn/amx_emulated.c defines it). */
extern atomic_long emu_amx_products;

/* Where the hardware raises #UD or #GP: the test cannot go on. */
static void emu_amx_fault(const char *what)
{
    fprintf(stderr, "emulated AMX: %s (the instruction would fault)\n", what);
    abort();
}

static void emu_amx_check(int t)
{
    if (!emu_amx.configured)
        emu_amx_fault("tile instruction without a tile configuration");
    if (t < 0 || t >= EMU_TILES)
        emu_amx_fault("tile number out of range");
    if (emu_amx.cfg.rows[t] == 0)
        emu_amx_fault("a tile the configuration leaves out");
}

/* ldtilecfg: palette 1 (8 tiles of at most 16 rows × 64 bytes); all tiles zeroed. */
static void emu_tile_loadconfig(const void *config)
{
    emu_tile_config c;
    memcpy(&c, config, sizeof c);
    if (c.palette == 0) { /* the init state: as tilerelease */
        memset(&emu_amx, 0, sizeof emu_amx);
        return;
    }
    if (c.palette != 1 || c.start_row != 0)
        emu_amx_fault("ldtilecfg: palette other than 1, or start_row set");
    for (int i = 0; i < 14; i++)
        if (c.reserved[i])
            emu_amx_fault("ldtilecfg: reserved bytes set");
    for (int t = 0; t < 16; t++) {
        int used = t < EMU_TILES;
        if (!used && (c.rows[t] || c.colsb[t]))
            emu_amx_fault("ldtilecfg: tile beyond the palette's 8 configured");
        if (c.rows[t] > 16 || c.colsb[t] > 64 || (c.rows[t] == 0) != (c.colsb[t] == 0))
            emu_amx_fault("ldtilecfg: a tile over 16 rows or 64 bytes, or half empty");
    }
    memset(&emu_amx, 0, sizeof emu_amx);
    emu_amx.cfg = c;
    emu_amx.configured = 1;
}

static void emu_tile_release(void) { memset(&emu_amx, 0, sizeof emu_amx); }

/* tileloadd: each configured row's colsb bytes from base + row·stride; the rest zero. */
static void emu_tile_loadd(int t, const void *base, long stride)
{
    emu_amx_check(t);
    memset(emu_amx.t[t], 0, sizeof emu_amx.t[t]);
    for (int r = 0; r < emu_amx.cfg.rows[t]; r++)
        memcpy(emu_amx.t[t][r], (const char *)base + (long)r * stride, emu_amx.cfg.colsb[t]);
}

static void emu_tile_stored(int t, void *base, long stride)
{
    emu_amx_check(t);
    for (int r = 0; r < emu_amx.cfg.rows[t]; r++)
        memcpy((char *)base + (long)r * stride, emu_amx.t[t][r], emu_amx.cfg.colsb[t]);
}

static void emu_tile_zero(int t)
{
    emu_amx_check(t);
    memset(emu_amx.t[t], 0, sizeof emu_amx.t[t]);
}

/*
 * tdpbf16ps dst += a · b as the SDM's pseudocode has it: for row m of dst, each column n sums
 * its even products a(m, 2k)·b(k, 2n) and its odd ones a(m, 2k + 1)·b(k, 2n + 1) over k apart,
 * from zero, then adds the two sums together and that to dst. Inputs denormal as zero, every
 * sum rounded to nearest even and flushed to zero, whatever MXCSR says (a bf16 product is
 * exact in float32, so a multiply and an add are the FMA).
 */
static void emu_tile_dpbf16ps(int dst, int a, int b)
{
    emu_amx_check(dst);
    emu_amx_check(a);
    emu_amx_check(b);
    const emu_tile_config *c = &emu_amx.cfg;
    if (dst == a || dst == b || a == b)
        emu_amx_fault("tdpbf16ps: a tile used twice");
    if (c->rows[dst] != c->rows[a] || c->colsb[dst] != c->colsb[b] ||
        c->colsb[a] != 4 * c->rows[b] || c->colsb[dst] % 4 || c->colsb[a] % 4)
        emu_amx_fault("tdpbf16ps: tile shapes do not chain");
    int ks = c->colsb[a] / 4, ns = c->colsb[dst] / 4;
    for (int m = 0; m < c->rows[dst]; m++) {
        float acc[16], even[16] = {0}, odd[16] = {0};
        uint16_t ar[32];
        memcpy(acc, emu_amx.t[dst][m], sizeof acc);
        memcpy(ar, emu_amx.t[a][m], sizeof ar);
        for (int k = 0; k < ks; k++) {
            uint16_t br[32];
            memcpy(br, emu_amx.t[b][k], sizeof br);
            for (int n = 0; n < ns; n++) {
                even[n] = emu_ftz(even[n] + emu_bf16_daz(ar[2 * k]) * emu_bf16_daz(br[2 * n]));
                odd[n] = emu_ftz(odd[n] + emu_bf16_daz(ar[2 * k + 1]) *
                                              emu_bf16_daz(br[2 * n + 1]));
            }
        }
        for (int n = 0; n < ns; n++)
            acc[n] = emu_ftz(emu_ftz(acc[n]) + emu_ftz(even[n] + odd[n]));
        /* The row's bytes past colsb are zeroed, as the hardware's write does. */
        memset(emu_amx.t[dst][m], 0, 64);
        memcpy(emu_amx.t[dst][m], acc, (size_t)ns * 4);
    }
    memset(&emu_amx.t[dst][0][0] + c->rows[dst] * 64, 0, (size_t)(16 - c->rows[dst]) * 64);
    atomic_fetch_add_explicit(&emu_amx_products, 1, memory_order_relaxed);
}

#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbf16ps
#define _tile_loadconfig emu_tile_loadconfig
#define _tile_release emu_tile_release
#define _tile_loadd(t, base, stride) emu_tile_loadd(t, base, (long)(stride))
#define _tile_stored(t, base, stride) emu_tile_stored(t, base, (long)(stride))
#define _tile_zero(t) emu_tile_zero(t)
#define _tile_dpbf16ps(dst, a, b) emu_tile_dpbf16ps(dst, a, b)

#endif

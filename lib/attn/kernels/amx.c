/*
 * gemm_bf16 on AMX tiles (AMX-BF16: tdpbf16ps, a 16 × 16 float32 tile += 16 × 32 bf16 times
 * 32 × 16 bf16 in one instruction, 16 times the products a cycle of 512-bit FMAs). The kernel
 * contract's pair layout is already the tiles' (kernels.h): B's pair (p, j) at b[p·ldb + 2j] is
 * the "VNNI" row p of a B tile, and A's pairs along k are a row of an A tile when csa is 2, so
 * cache rows and packed queries are loaded where they are. kernels.c installs this only when
 * the CPU has AMX-TILE and AMX-BF16, the OS saves tile state (XCR0) and Linux granted this
 * process the tile data (mla__amx_request).
 *
 * Every tile is 16 rows of 64 bytes (one configuration for the whole call); tiles at the edges
 * of A, B or C go through zero-padded copies. Products are exact in float32, sums float32 with
 * round-to-nearest whatever MXCSR says, and bf16 subnormals count as zero, as vdpbf16ps does.
 */
#define _GNU_SOURCE /* syscall */
#include "attn/kernels/kernels.h"

#ifdef MLA_ATTN_HAVE_AVX512

#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* tests/amx_emulated.h runs this file on any x86-64 CPU, its tiles plain memory. */
#ifdef MLA_X86_EMULATED
#  define TGT
#  define INL static __attribute__((unused))
#else
#  define TGT __attribute__((target("amx-tile,amx-bf16")))
#  define INL static inline __attribute__((always_inline)) TGT
#endif

#define TR 16   /* rows of a tile; also pairs (32-bit words) of a row */
/* Pairs of A copied at a time when A's pairs are not contiguous (csa ≠ 2): 32 rows × KC words
 * on the stack (32 KiB), packed once for all the columns of C. */
#define KC 256

/* Where one tile comes from: its first row and the bytes between rows. */
typedef struct tile_src {
    const unsigned char *p;
    size_t stride;
} tile_src;

/* rows × words 32-bit words at p (rows rs bytes apart) as a tile: in place when whole, else
 * copied into pad (16 × 16 words) with zeros beyond. Tile loads take any address and stride. */
INL tile_src tile_words(const unsigned char *p, size_t rs, int64_t rows, int64_t words,
                        uint32_t *pad)
{
    if (rows == TR && words == TR)
        return (tile_src){p, rs};
    memset(pad, 0, TR * TR * 4);
    for (int64_t r = 0; r < rows; r++)
        memcpy(pad + r * TR, p + (size_t)r * rs, (size_t)words * 4);
    return (tile_src){(const unsigned char *)pad, TR * 4};
}

/* Tile steps (16 pairs) ahead that A's rows are prefetched when read in place from the cache:
 * a tile load waits for its 16 rows, each a line of its own stream. */
#define PF_STEPS 8

/*
 * One block of up to 2 × 2 C tiles (mi ≤ 32 rows, nj ≤ 32 columns at c) over kc pairs: A's row
 * r at a + r·rsa bytes, its pairs contiguous and whole tiles there (rows up to a multiple of 16,
 * pairs up to a multiple of 16); B's pair row p at b + p·ldb bytes (column j's pair at 4j).
 * acc: 1 adds to C, 0 overwrites it. pf_rows > 0: A is read in place, and its next pf_rows rows
 * (this block's and the next ones') are prefetched PF_STEPS steps ahead. Tiles 0-3 hold C, 4-5
 * A, 6-7 B; tile numbers are immediates, hence the spelled-out cases.
 */
INL void block(const unsigned char *a, size_t rsa, int64_t mi, const unsigned char *b,
               size_t ldb, int64_t nj, int64_t kc, int64_t pf_rows, int acc, float *c,
               ptrdiff_t ldc)
{
    float cpad[4][TR * TR];
    uint32_t pad[TR * TR];
    int two_a = mi > TR, two_b = nj > TR;
    int64_t mr[2] = {two_a ? TR : mi, two_a ? mi - TR : 0};
    int64_t nc[2] = {two_b ? TR : nj, two_b ? nj - TR : 0};
    /* C tile t = 2·ti + tj: in place when whole, else through cpad[t]. */
    float *cp[4];
    size_t cs[4];
    for (int t = 0; t < 4; t++) {
        int ti = t / 2, tj = t % 2;
        float *ct = c + ti * TR * ldc + tj * TR;
        int whole = mr[ti] == TR && nc[tj] == TR;
        cp[t] = whole ? ct : cpad[t];
        cs[t] = whole ? (size_t)ldc * 4 : TR * 4;
        if (!whole && acc && mr[ti] > 0 && nc[tj] > 0) {
            memset(cpad[t], 0, sizeof cpad[t]);
            for (int64_t r = 0; r < mr[ti]; r++)
                memcpy(cpad[t] + r * TR, ct + r * ldc, (size_t)nc[tj] * 4);
        }
    }
    if (acc) {
        _tile_loadd(0, cp[0], cs[0]);
        if (two_b)
            _tile_loadd(1, cp[1], cs[1]);
        if (two_a)
            _tile_loadd(2, cp[2], cs[2]);
        if (two_a && two_b)
            _tile_loadd(3, cp[3], cs[3]);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t p = 0; p < kc; p += TR) {
        int64_t w = kc - p < TR ? kc - p : TR;
        if (pf_rows > 0) {
            /* Step p + PF_STEPS of these rows, or past their end the first steps of the rows
             * after them (the next block of the same A). Hints only: integer arithmetic. */
            int64_t q = p + PF_STEPS * TR, r0 = q < kc ? 0 : 2 * TR;
            q = q < kc ? q : q - kc;
            for (int64_t r = r0; r < r0 + 2 * TR && r < pf_rows; r++)
                _mm_prefetch((const char *)((uintptr_t)a + (uintptr_t)r * rsa + 4 * (uintptr_t)q),
                             _MM_HINT_T0);
        }
        _tile_loadd(4, a + 4 * p, rsa);
        if (two_a)
            _tile_loadd(5, a + TR * rsa + 4 * p, rsa);
        tile_src s = tile_words(b + (size_t)p * ldb, ldb, w, nc[0], pad);
        _tile_loadd(6, s.p, s.stride);
        _tile_dpbf16ps(0, 4, 6);
        if (two_a)
            _tile_dpbf16ps(2, 5, 6);
        if (two_b) {
            s = tile_words(b + (size_t)p * ldb + 4 * TR, ldb, w, nc[1], pad);
            _tile_loadd(7, s.p, s.stride);
            _tile_dpbf16ps(1, 4, 7);
            if (two_a)
                _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, cp[0], cs[0]);
    if (two_b)
        _tile_stored(1, cp[1], cs[1]);
    if (two_a)
        _tile_stored(2, cp[2], cs[2]);
    if (two_a && two_b)
        _tile_stored(3, cp[3], cs[3]);
    for (int t = 0; t < 4; t++) {
        int ti = t / 2, tj = t % 2;
        if (cp[t] != cpad[t] || mr[ti] == 0 || nc[tj] == 0)
            continue;
        float *ct = c + ti * TR * ldc + tj * TR;
        for (int64_t r = 0; r < mr[ti]; r++)
            memcpy(ct + r * ldc, cpad[t] + r * TR, (size_t)nc[tj] * 4);
    }
}

/* The 64-byte configuration: palette 1, tiles 0-7 of 16 rows × 64 bytes. */
typedef struct tile_config {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

TGT void mla__gemm_bf16_amx(int64_t m, int64_t n, int64_t kp, const uint16_t *a, ptrdiff_t rsa,
                            ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb, float beta,
                            float *c, ptrdiff_t ldc)
{
    /* Products that would leave most of the tiles empty: float32 FMAs, which AMX parts issue
     * at twice vdpbf16ps's multiply rate (RoPE keys, r/2 pairs; SmolLM-135M d_kv 8, 12 latent
     * pairs and 24 value columns, measured 1.3 times slower on tiles than vdpbf16ps). */
    if (m < 8 || n < 32 || kp < 16) {
        mla__gemm_bf16_fma(m, n, kp, a, rsa, csa, b, ldb, beta, c, ldc);
        return;
    }
    _Alignas(64) tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = TR * 4;
        cfg.rows[t] = TR;
    }
    _tile_loadconfig(&cfg);
    /* A (the cache rows, or the queries) is read in place in whole tiles: pairs contiguous
     * (csa = 2), rows and pairs in multiples of 16. Else (a few query rows, odd widths, pairs
     * strided) a zero-padded copy of KC pairs of its rows at a time serves every column. */
    int in_place = csa == 2 && m % TR == 0 && kp % TR == 0;
    int64_t kc_max = in_place ? kp : KC;
    uint32_t apack[2 * TR * KC];
    for (int64_t i = 0; i < m; i += 2 * TR) {
        int64_t mi = m - i < 2 * TR ? m - i : 2 * TR;
        for (int64_t k0 = 0; k0 < kp; k0 += kc_max) {
            int64_t kc = kp - k0 < kc_max ? kp - k0 : kc_max;
            const unsigned char *aw = (const unsigned char *)(a + i * rsa) + 4 * k0;
            size_t rsab = (size_t)rsa * 2;
            if (!in_place) {
                int64_t rows = (mi + TR - 1) / TR * TR, words = (kc + TR - 1) / TR * TR;
                for (int64_t r = 0; r < rows; r++) {
                    uint32_t *d = apack + r * KC;
                    int64_t q = 0;
                    if (r < mi) {
                        const uint16_t *ar = a + (i + r) * rsa + k0 * csa;
                        if (csa == 2)
                            memcpy(d, ar, (size_t)kc * 4);
                        else
                            for (int64_t x = 0; x < kc; x++)
                                memcpy(d + x, ar + x * csa, 4);
                        q = kc;
                    }
                    memset(d + q, 0, (size_t)(words - q) * 4);
                }
                aw = (const unsigned char *)apack;
                rsab = KC * 4;
            }
            int acc = k0 > 0 || beta != 0.0f;
            for (int64_t j = 0; j < n; j += 2 * TR)
                block(aw, rsab, mi, (const unsigned char *)(b + k0 * ldb + 2 * j),
                      (size_t)ldb * 2, n - j < 2 * TR ? n - j : 2 * TR, kc,
                      in_place && j == 0 ? m - i : 0, acc, c + i * ldc + j, ldc);
        }
    }
    _tile_release();
}

/* Linux ≥ 5.16 hands tile data to a process only on request (arch_prctl ARCH_REQ_XCOMP_PERM
 * for XTILEDATA, feature 18); without it the first tile instruction faults. 1 when granted. */
int mla__amx_request(void)
{
#if defined(MLA_X86_EMULATED)
    return 1; /* no tile state to be granted */
#elif defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0;
#else
    return 0;
#endif
}

#endif /* MLA_ATTN_HAVE_AVX512 */

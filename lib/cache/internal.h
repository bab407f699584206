/*
 * The latent cache's internal representation, shared by the files of lib/cache (and its tests).
 *
 * The pool is one allocation of n_blocks blocks of block_bytes each, made at creation. A block
 * holds block_tokens slots for every layer: first the slots' positions (int64), then per layer
 * the latent rows, the I8/I4 scales and the RoPE rows, each section 64-byte aligned so kernels
 * can load rows with aligned vector loads.
 *
 * A sequence is a list of entries (block, off, n): slots off .. off+n−1 of that block, in position
 * order. An entry is what the span reader hands out. A block's reference count is the number of
 * entries (in every sequence) that point at it. Invariant: a block whose count is 1 is referenced
 * by exactly one entry and its other slots are free for that entry's owner to use; a block whose
 * count is above 1 is never written (copy-on-write first).
 */
#ifndef MLA_CACHE_INTERNAL_H
#define MLA_CACHE_INTERNAL_H

#include <pthread.h>
#ifdef __SSE2__
#  include <emmintrin.h>
#endif

#include <mla/cache.h>

#include "cache/reader.h"
#include "core/core.h"

typedef struct mla_cache_layer {
    mla_cache_layer_format fmt;
    int32_t rope_heads;
    int32_t rope_dim;
    double pos_scale;          /* rope_position_scale, 0 replaced by 1 */
    float *freqs;              /* rope_heads × rope_dim/2, owned (NULL if rope_dim is 0) */
    int32_t mha_kv_dim;
    int32_t n_groups;          /* scales per token: latent_dim / quant_group for I8/I4, else 0 */
    size_t latent_row_bytes;   /* packed: latent_dim · bits / 8 */
    size_t scale_row_bytes;    /* n_groups · 4 */
    size_t rope_row_bytes;
    size_t latent_off;         /* section offsets inside a block */
    size_t scale_off;
    size_t rope_off;
} mla_cache_layer;

typedef struct mla_cache_entry {
    int32_t block;
    int32_t off;
    int32_t n;
} mla_cache_entry;

typedef struct mla_cache_seq {
    mla_cache_entry *e;
    int64_t n_e;
    int64_t cap_e;
    int64_t n_tokens;
    /* n_layers counts, owned by the cache (mla_cache.written): tokens [0, written[l]) of the
     * sequence, in position order, hold data written in layer l. Reserved slots are not
     * written; the forward continues each layer exactly where it stopped. */
    int64_t *written;
} mla_cache_seq;

struct mla_cache {
    int32_t n_layers;
    mla_cache_layer *layers;
    mla_dtype latent_dtype;
    mla_dtype rope_dtype;
    int32_t quant_group;
    int32_t block_tokens;
    int32_t n_seq_max;
    int32_t n_blocks;
    size_t block_bytes;
    int64_t bytes_per_token;
    int64_t mha_bytes_per_token;
    int32_t max_rope_width;
    int32_t max_rope_pairs;

    /* Guards rc, free_stack and n_free: writers of distinct sequences allocate concurrently. */
    pthread_mutex_t lock;
    unsigned char *pool;
    int32_t *rc;
    int32_t *free_stack;
    int32_t n_free;

    mla_cache_seq *seqs;
    int64_t *written;          /* n_seq_max × n_layers, the sequences' written counts */

    /* Scratch of calls that need exclusive access (shift). */
    float *rope_buf;
    double *rope_cos;
    double *rope_sin;
};

/* ---- blocks (pool.c) ---- */

static inline unsigned char *mla__cache_block(const mla_cache *c, int32_t b)
{
    return c->pool + (size_t)b * c->block_bytes;
}

static inline int64_t *mla__cache_block_pos(const mla_cache *c, int32_t b)
{
    return (int64_t *)(void *)mla__cache_block(c, b);
}

/* Take n free blocks (reference count 1 each), all or none: returns 0, or −1 if fewer are free. */
MLA_INTERNAL int mla__cache_blocks_take(mla_cache *c, int64_t n, int32_t *out);
/* Return blocks taken but not used. */
MLA_INTERNAL void mla__cache_blocks_give(mla_cache *c, int64_t n, const int32_t *blocks);
MLA_INTERNAL void mla__cache_block_ref(mla_cache *c, int32_t b);
MLA_INTERNAL void mla__cache_block_unref(mla_cache *c, int32_t b);
MLA_INTERNAL int32_t mla__cache_block_refs(const mla_cache *c, int32_t b);
MLA_INTERNAL int32_t mla__cache_blocks_free(const mla_cache *c);
/* Forget every block (all free, counts 0). Exclusive access. */
MLA_INTERNAL void mla__cache_blocks_reset(mla_cache *c);

/* Slots: positions and every layer's sections. */
MLA_INTERNAL void mla__cache_slots_zero(mla_cache *c, int32_t b, int32_t slot, int32_t n);
MLA_INTERNAL void mla__cache_slots_copy(mla_cache *c, int32_t dst, int32_t dst_slot, int32_t src,
                                        int32_t src_slot, int32_t n);

/* ---- sequences (seq.c) ---- */

static inline int64_t mla__cache_entry_pos(const mla_cache *c, const mla_cache_entry *e, int32_t i)
{
    return mla__cache_block_pos(c, e->block)[e->off + i];
}

/* Position of token idx (0 .. n_tokens−1) of s. */
MLA_INTERNAL int64_t mla__cache_seq_pos(const mla_cache *c, const mla_cache_seq *s, int64_t idx);
/* Entry holding token idx and the token's index inside it. */
MLA_INTERNAL int64_t mla__cache_seq_find(const mla_cache_seq *s, int64_t idx, int32_t *in_entry);
/* Index of the first token whose position is ≥ pos (n_tokens if none). */
MLA_INTERNAL int64_t mla__cache_seq_lower(const mla_cache *c, const mla_cache_seq *s, int64_t pos);
/* Room for at least n entries; OUT_OF_MEMORY leaves s unchanged. */
MLA_INTERNAL mla_status mla__cache_seq_grow(mla_cache_seq *s, int64_t n);
/* Set every layer's written count of s to n. */
MLA_INTERNAL void mla__cache_seq_written_all(const mla_cache *c, mla_cache_seq *s, int64_t n);
/* Drop every entry of s (unreferencing its blocks); the caller sets its written counts. */
MLA_INTERNAL void mla__cache_seq_drop(mla_cache *c, mla_cache_seq *s);
/* Make entry i of s the only user of its block: if it is shared, copy it into the next spare
 * block (spare[*next], then ++*next). */
MLA_INTERNAL void mla__cache_seq_own(mla_cache *c, mla_cache_seq *s, int64_t i,
                                     const int32_t *spare, int64_t *next);
/* Number of entries in [i0, i1) of s whose block is shared. */
MLA_INTERNAL int64_t mla__cache_seq_shared(const mla_cache *c, const mla_cache_seq *s, int64_t i0,
                                           int64_t i1);
/* Validate a sequence id for a call; INVALID_ARGUMENT names the call. */
MLA_INTERNAL mla_status mla__cache_check_seq(const mla_cache *c, int32_t seq, const char *what);

/*
 * All-or-nothing preparation of a change to sequence seq: entries [i0, i1) become owned
 * (copy-on-write), then n_new tokens are appended at positions pos_new, pos_new+1, … (zeroed;
 * pos_new after the last position). CAPACITY or OUT_OF_MEMORY leave everything unchanged.
 * Writers of distinct sequences may call it concurrently.
 */
MLA_INTERNAL mla_status mla__cache_seq_prepare(mla_cache *c, int32_t seq, int64_t i0, int64_t i1,
                                               int64_t pos_new, int64_t n_new);

/* ---- rows (quant.c) ---- */

/* Check that n values can be stored in dtype (finite, in range). Returns the index of the first
 * value that cannot, or −1. */
MLA_INTERNAL int64_t mla__cache_check_values(const float *x, int64_t n, mla_dtype dtype);
/* Store one latent row (latent_dim values) with its scales (I8/I4). */
MLA_INTERNAL void mla__cache_encode_latent(const mla_cache_layer_format *f, const float *x,
                                           void *row, float *scales);
MLA_INTERNAL void mla__cache_encode_rope(mla_dtype dtype, const float *x, int32_t n, void *row);

/* Value k of an I8 or I4 latent row as stored: I4 value 2j is the low nibble of byte j, two's
 * complement in [−8, 7]. */
static inline int mla__cache_qvalue(mla_dtype t, const unsigned char *row, size_t k)
{
    if (t == MLA_DTYPE_I8)
        return (int8_t)row[k];
    int v = (row[k / 2] >> (4 * (k % 2))) & 0xf;
    return v >= 8 ? v - 16 : v;
}

#ifdef __SSE2__
/* The I4 values of bytes 0–7 (high = 0) or 8–15 (high = 1) of x as 16 int8 codes in order:
 * interleaving the low and high nibbles puts them in order, and (v ^ 8) − 8 sign-extends 4 bits
 * within a byte. SSE2 is part of x86-64, so the AVX2 and AVX-512 kernels inline it too. */
static inline __m128i mla__cache_i4_codes16(__m128i x, int high)
{
    const __m128i lo_m = _mm_set1_epi8(0x0f), e = _mm_set1_epi8(8);
    __m128i lo = _mm_and_si128(x, lo_m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), lo_m);
    __m128i v = high ? _mm_unpackhi_epi8(lo, hi) : _mm_unpacklo_epi8(lo, hi);
    return _mm_sub_epi8(_mm_xor_si128(v, e), e);
}
#endif

/* Kernels of mla__cache_span_to_f32, for tests. */
MLA_INTERNAL void mla__cache_span_to_f32_c(const mla_cache_layer_format *fmt,
                                           const mla_cache_span *span, int64_t first, int64_t n,
                                           float *latent, float *rope);
MLA_INTERNAL int mla__cache_have_avx2(void);
MLA_INTERNAL void mla__cache_span_to_f32_avx2(const mla_cache_layer_format *fmt,
                                              const mla_cache_span *span, int64_t first,
                                              int64_t n, float *latent, float *rope);
MLA_INTERNAL int mla__cache_have_avx512(void);
MLA_INTERNAL void mla__cache_span_to_f32_avx512(const mla_cache_layer_format *fmt,
                                                const mla_cache_span *span, int64_t first,
                                                int64_t n, float *latent, float *rope);

/* ---- snapshots ---- */

MLA_INTERNAL uint32_t mla__crc32(uint32_t crc, const void *data, size_t n);

/* Check the internal invariants (reference counts, free list, entry bounds, position order).
 * Returns 0, or −1 with a message in mla_last_error(). For tests. */
MLA_INTERNAL int mla__cache_check(const mla_cache *c);

#endif /* MLA_CACHE_INTERNAL_H */

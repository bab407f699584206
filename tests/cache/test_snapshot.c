/*
 * Snapshots:
 * - round trip: a whole-cache snapshot loaded into another cache reproduces every sequence, the
 *   sharing (same blocks and slots used) and the snapshot bytes themselves; a one-sequence
 *   snapshot lands in the sequence asked for and nothing else changes.
 * - every corruption is refused without changing the cache: each byte XOR 0xff, each single-bit
 *   flip, each truncation, for a small cache (whole and one-sequence snapshots).
 * - another geometry or type, too few blocks, unknown sequence ids: refused, nothing changed.
 * - files: saved through a temporary name (none left behind), loaded back; I/O errors name the
 *   path and the system's reason.
 * - CRC-32 is the standard one (check value of "123456789", and a bitwise version on random data).
 * - format versions: a version 1 snapshot (no written counts) loads with every token written;
 *   version 2's written counts round-trip, one beyond the tokens is refused, and so is version 3.
 */
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mla/mla.h>

#include "cache/internal.h"
#include "../files.h"
#include "../tap.h"

static unsigned long long rng = 0xabcdef12345ULL;
static const float freqs[1] = {0.25f};

typedef struct geo {
    int n_layers, lat0, lat1, block_tokens, n_seq_max, capacity;
    mla_dtype lt;
} geo;

static const geo BASE = {2, 8, 4, 4, 3, 32, MLA_DTYPE_I8};

static mla_cache *make(geo g)
{
    mla_cache_layer_desc L[2];
    memset(L, 0, sizeof L);
    L[0] = (mla_cache_layer_desc){.struct_size = sizeof L[0], .latent_dim = g.lat0,
                                  .rope_heads = 1, .rope_dim = 2, .rope_freqs = freqs,
                                  .mha_kv_dim = 8};
    L[1] = (mla_cache_layer_desc){.struct_size = sizeof L[1], .latent_dim = g.lat1,
                                  .mha_kv_dim = 8}; /* no RoPE part */
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = g.n_layers;
    p.layers = L;
    p.latent_dtype = g.lt;
    p.rope_dtype = MLA_DTYPE_F16;
    p.quant_group = 4;
    p.block_tokens = g.block_tokens;
    p.capacity_tokens = g.capacity;
    p.n_seq_max = g.n_seq_max;
    mla_cache *c = NULL;
    if (mla_cache_create(&p, &c) != MLA_OK)
        printf("# create: %s\n", mla_last_error());
    return c;
}

static void put(mla_cache *c, int seq, int64_t pos, int n)
{
    float lat[64], rope[16];
    for (int i = 0; i < 64; i++)
        lat[i] = (float)tap_rand(&rng);
    for (int i = 0; i < 16; i++)
        rope[i] = (float)tap_rand(&rng);
    for (int l = 0; l < c->n_layers; l++)
        mla_cache_write(c, l, seq, pos, n, lat, rope);
}

/* Everything observable: a whole snapshot, the stats, and the invariants. */
typedef struct print {
    unsigned char *bytes;
    size_t size;
    mla_cache_stats st;
} print;

static print fingerprint(const mla_cache *c)
{
    print p;
    memset(&p, 0, sizeof p);
    mla_cache_save_size(c, -1, &p.size);
    p.bytes = malloc(p.size);
    mla_cache_save(c, -1, p.bytes, p.size, NULL);
    mla_cache_get_stats(c, &p.st, sizeof p.st);
    return p;
}

static int same(const mla_cache *c, const print *a)
{
    print b = fingerprint(c);
    int eq = a->size == b.size && memcmp(a->bytes, b.bytes, a->size) == 0 &&
             a->st.tokens_used == b.st.tokens_used && a->st.blocks_free == b.st.blocks_free &&
             mla__cache_check(c) == 0;
    free(b.bytes);
    return eq;
}

/* Sequence q of a and sequence r of b hold the same tokens (all layers, as float32). */
static int seq_equal(const mla_cache *a, int q, const mla_cache *b, int r)
{
    int64_t na, nb;
    mla_cache_seq_length(a, q, &na);
    mla_cache_seq_length(b, r, &nb);
    if (na != nb)
        return 0;
    for (int l = 0; l < a->n_layers; l++) {
        float la[256], lb[256], ra[64], rb[64];
        int64_t pa[32], pb[32];
        mla_cache_seq_read(a, l, q, 0, na, la, ra, pa);
        mla_cache_seq_read(b, l, r, 0, nb, lb, rb, pb);
        mla_cache_layer_format f;
        mla__cache_layer_format(a, l, &f);
        if (memcmp(la, lb, sizeof(float) * (size_t)(na * f.latent_dim)) ||
            memcmp(ra, rb, sizeof(float) * (size_t)(na * f.rope_width)) ||
            memcmp(pa, pb, sizeof(int64_t) * (size_t)na))
            return 0;
    }
    return 1;
}

static unsigned char *save(const mla_cache *c, int seq, size_t *size)
{
    mla_cache_save_size(c, seq, size);
    unsigned char *b = malloc(*size);
    size_t w = 0;
    if (mla_cache_save(c, seq, b, *size, &w) != MLA_OK || w != *size)
        printf("# save: %s\n", mla_last_error());
    return b;
}

/* Every flip of every byte, and every truncation, is refused and changes nothing. */
static void corruption(const mla_cache *a, mla_cache *b, int seq, const char *what)
{
    size_t size;
    unsigned char *snap = save(a, seq, &size);
    unsigned char *bad = malloc(size);
    print before = fingerprint(b);
    long accepted = 0, changed = 0, n = 0;
    for (size_t i = 0; i < size; i++)
        for (int f = 0; f < 9; f++) {
            memcpy(bad, snap, size);
            bad[i] ^= f == 8 ? 0xff : (unsigned char)(1u << f);
            n++;
            if (mla_cache_load(b, 1, bad, size) == MLA_OK)
                accepted++;
            if (!same(b, &before))
                changed++;
        }
    CHECK(accepted == 0 && changed == 0,
          "%s snapshot (%zu bytes): %ld corruptions (each byte ^0xff and each bit) all refused "
          "(%ld accepted), cache unchanged (%ld changed)", what, size, n, accepted, changed);
    accepted = changed = 0;
    for (size_t len = 0; len < size; len++) {
        if (mla_cache_load(b, 1, snap, len) == MLA_OK)
            accepted++;
        if (!same(b, &before))
            changed++;
    }
    CHECK(accepted == 0 && changed == 0,
          "%s snapshot: all %zu truncations refused, cache unchanged", what, size);
    CHECK(mla_cache_load(b, 1, snap, size) == MLA_OK, "%s snapshot: the intact one loads (%s)",
          what, mla_last_error());
    free(before.bytes);
    free(bad);
    free(snap);
}

static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

/* ---- snapshots written by hand from doc/cache.md, not by the library ---------------------- */

typedef struct bytes {
    unsigned char *p;
    size_t n, cap, section;
} bytes;

static void put_raw(bytes *b, const void *v, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n);
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}

static void put_u32(bytes *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put_raw(b, x, 4);
}

static void put_u64(bytes *b, uint64_t v)
{
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_f32(bytes *b, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(b, v);
}

/* A section's tag and a length patched in section_end, then its CRC-32. */
static void section_begin(bytes *b, const char *tag)
{
    b->section = b->n;
    put_raw(b, tag, 4);
    put_u64(b, 0);
}

static void section_end(bytes *b)
{
    uint64_t len = b->n - b->section - 12;
    for (int i = 0; i < 8; i++)
        b->p[b->section + 4 + (size_t)i] = (unsigned char)(len >> (8 * i));
    put_u32(b, crc_bitwise(b->p + b->section, b->n - b->section));
}

/* Header (format `version`) and GEOM of a whole-cache snapshot: one layer of latent_dim 4 in
 * `lt` (group 4), no RoPE part, blocks of one token. */
static void hand_head(bytes *b, uint32_t version, mla_dtype lt)
{
    put_raw(b, "MLAC", 4);
    put_u32(b, version);
    section_begin(b, "GEOM");
    const uint32_t g[9] = {1, 1, (uint32_t)lt, MLA_DTYPE_F32, 4, 1, 4, 0, 0};
    for (int i = 0; i < 9; i++)
        put_u32(b, g[i]);
    section_end(b);
}

static mla_cache *hand_cache(mla_dtype lt, int n_seq_max)
{
    mla_cache_layer_desc L;
    mla_cache_layer_desc_default_params(&L, sizeof L);
    L.latent_dim = 4;
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 1;
    p.layers = &L;
    p.latent_dtype = lt;
    p.rope_dtype = MLA_DTYPE_F32;
    p.quant_group = 4;
    p.block_tokens = 1;
    p.capacity_tokens = 4;
    p.n_seq_max = n_seq_max;
    mla_cache *c = NULL;
    if (mla_cache_create(&p, &c) != MLA_OK)
        printf("# create: %s\n", mla_last_error());
    return c;
}

/* One block holding one token at position 7 with the given codes (4 bytes of i8, or 2 of i4)
 * and scale, and n_seqs sequences listed in ids: the one with id `owner` holds the token. From
 * version 2 each sequence has its written count: `written` for the owner, 0 for the others. */
static bytes hand_snapshot_v(uint32_t version, mla_dtype lt, const unsigned char *codes,
                             float scale, const uint32_t *ids, uint32_t n_seqs, uint32_t owner,
                             uint64_t written)
{
    bytes b = {0};
    hand_head(&b, version, lt);
    section_begin(&b, "BLKS");
    put_u32(&b, 1);
    put_u32(&b, 0);
    put_u32(&b, 1);
    put_u64(&b, 7);
    put_raw(&b, codes, lt == MLA_DTYPE_I8 ? 4 : 2);
    put_f32(&b, scale);
    section_end(&b);
    section_begin(&b, "SEQS");
    put_u32(&b, n_seqs);
    for (uint32_t i = 0; i < n_seqs; i++) {
        put_u32(&b, ids[i]);
        put_u32(&b, ids[i] == owner);
        if (ids[i] == owner) {
            put_u32(&b, 0);
            put_u32(&b, 0);
            put_u32(&b, 1);
        }
        if (version >= 2)
            put_u64(&b, ids[i] == owner ? written : 0);
    }
    section_end(&b);
    return b;
}

static bytes hand_snapshot(mla_dtype lt, const unsigned char *codes, float scale,
                           const uint32_t *ids, uint32_t n_seqs, uint32_t owner)
{
    return hand_snapshot_v(2, lt, codes, scale, ids, n_seqs, owner, 1);
}

/* Format versions: version 1 (no written counts) counts every token as written; version 2
 * carries them, and one beyond the sequence's tokens is refused; version 3 is unknown. */
static void hand_versions(void)
{
    const unsigned char i8[4] = {1, 2, 3, 4};
    const uint32_t one[1] = {2};
    mla_cache *c = hand_cache(MLA_DTYPE_I8, 4);
    bytes b = hand_snapshot_v(1, MLA_DTYPE_I8, i8, 0.5f, one, 1, 2, 0);
    int64_t w = -1;
    mla_status st = mla_cache_load(c, 0, b.p, b.n);
    mla_cache_seq_written(c, 0, 2, &w);
    CHECK(st == MLA_OK && w == 1, "version 1: loads, its token counts as written (%lld; %s)",
          (long long)w, st == MLA_OK ? "ok" : mla_last_error());
    free(b.p);
    b = hand_snapshot_v(2, MLA_DTYPE_I8, i8, 0.5f, one, 1, 2, 0);
    st = mla_cache_load(c, 0, b.p, b.n);
    w = -1;
    mla_cache_seq_written(c, 0, 2, &w);
    CHECK(st == MLA_OK && w == 0, "version 2: the written count 0 is restored (%lld; %s)",
          (long long)w, st == MLA_OK ? "ok" : mla_last_error());
    free(b.p);
    print before = fingerprint(c);
    b = hand_snapshot_v(2, MLA_DTYPE_I8, i8, 0.5f, one, 1, 2, 2);
    st = mla_cache_load(c, 0, b.p, b.n);
    CHECK(st == MLA_ERR_BAD_FORMAT && strstr(mla_last_error(), "written") && same(c, &before),
          "version 2: 2 tokens written of 1 is refused, nothing changed (%s)", mla_last_error());
    free(b.p);
    b = hand_snapshot_v(3, MLA_DTYPE_I8, i8, 0.5f, one, 1, 2, 1);
    st = mla_cache_load(c, 0, b.p, b.n);
    CHECK(st == MLA_ERR_BAD_FORMAT && strstr(mla_last_error(), "version 3") && same(c, &before),
          "version 3 is refused, nothing changed (%s)", mla_last_error());
    free(b.p);
    free(before.bytes);
    mla_cache_destroy(c);
    mla_clear_error();
}

/* The format as documented, read by the library; and the loader's checks of what a hand-made
 * snapshot can hold that the writer never produces. */
static void hand_made(void)
{
    /* i8 codes 1, 2, −3, 127 and i4 codes 1, −2 | −8, 7 (value 2k in the low nibble) */
    const unsigned char i8[4] = {1, 2, 0xfd, 127}, i4[2] = {0xe1, 0x78};
    const float want8[4] = {0.5f, 1.0f, -1.5f, 63.5f}, want4[4] = {0.5f, -1.0f, -4.0f, 3.5f};
    const uint32_t one[1] = {2};
    for (int k = 0; k < 2; k++) {
        mla_dtype lt = k ? MLA_DTYPE_I4 : MLA_DTYPE_I8;
        mla_cache *c = hand_cache(lt, 4);
        bytes b = hand_snapshot(lt, k ? i4 : i8, 0.5f, one, 1, 2);
        float back[4];
        int64_t pos = -1;
        mla_status st = mla_cache_load(c, 0, b.p, b.n);
        int ok = st == MLA_OK && mla_cache_seq_read(c, 0, 2, 0, 1, back, NULL, &pos) == MLA_OK &&
                 pos == 7 && memcmp(back, k ? want4 : want8, sizeof back) == 0;
        CHECK(ok, "%s: a snapshot written by hand from doc/cache.md loads as documented (%s)",
              mla_dtype_name(lt), st == MLA_OK ? "ok" : mla_last_error());
        free(b.p);
        /* a finite scale whose product with the largest code (127, or −8 for i4) overflows */
        print before = fingerprint(c);
        float big = k ? FLT_MAX / 7.5f : FLT_MAX / 100.0f;
        b = hand_snapshot(lt, k ? i4 : i8, big, one, 1, 2);
        st = mla_cache_load(c, 0, b.p, b.n);
        CHECK(st == MLA_ERR_BAD_FORMAT && same(c, &before),
              "%s: a scale of %g (code × scale beyond FLT_MAX) is refused, nothing changed (%s)",
              mla_dtype_name(lt), (double)big, mla_last_error());
        free(b.p);
        free(before.bytes);
        mla_cache_destroy(c);
    }

    /* Every id of a cache with 2^20 sequences, listed from the highest; then a duplicate. */
    const uint32_t n = 1u << 20;
    uint32_t *ids = malloc(n * sizeof *ids);
    for (uint32_t i = 0; i < n; i++)
        ids[i] = n - 1 - i;
    mla_cache *c = hand_cache(MLA_DTYPE_I8, (int)n);
    bytes b = hand_snapshot(MLA_DTYPE_I8, i8, 0.5f, ids, n, 54321);
    mla_status st = mla_cache_load(c, 0, b.p, b.n);
    int64_t len0 = -1, len1 = -1, pos = -1;
    mla_cache_seq_length(c, 54321, &len1);
    mla_cache_seq_length(c, (int32_t)n - 1, &len0);
    mla_cache_seq_pos_min(c, 54321, &pos);
    CHECK(st == MLA_OK && len1 == 1 && pos == 7 && len0 == 0,
          "a whole-cache snapshot listing 2^20 sequence ids loads (%s)",
          st == MLA_OK ? "ok" : mla_last_error());
    free(b.p);
    ids[n - 1] = ids[0];
    b = hand_snapshot(MLA_DTYPE_I8, i8, 0.5f, ids, n, 54321);
    st = mla_cache_load(c, 0, b.p, b.n);
    len1 = -1;
    mla_cache_seq_length(c, 54321, &len1);
    CHECK(st == MLA_ERR_BAD_FORMAT && strstr(mla_last_error(), "twice") && len1 == 1 &&
              mla__cache_check(c) == 0,
          "the same list with one id twice is refused, nothing changed (%s)", mla_last_error());
    free(b.p);
    free(ids);
    mla_cache_destroy(c);
}

/* A save that fails after its temporary file exists leaves the target as it was and no
 * temporary behind: the writer's promise (snapshot_file.c). Two failures a test can cause
 * without privileges: the write (a file size limit: EFBIG) and the rename (over a directory). */
static void file_failures(const mla_cache *a, const char *dir)
{
    char path[256], sub[256];
    snprintf(path, sizeof path, "%s/kept.mlac", dir);
    snprintf(sub, sizeof sub, "%s/a_directory", dir);
    mla_status st = mla_cache_save_file(a, 2, path);
    CHECK(st == MLA_OK, "a one-sequence snapshot saved (%s)", st ? mla_last_error() : "ok");
    size_t old_size = 0, full_size = 0, now_size = 0;
    unsigned char *old = read_all(path, &old_size);
    CHECK(old != NULL && old_size > 0, "the first snapshot reads back");
    st = mla_cache_save_size(a, -1, &full_size);
    CHECK(st == MLA_OK && full_size > old_size,
          "the whole cache's snapshot is larger than one sequence's (%zu > %zu)", full_size,
          old_size);

    /* The write: files may not grow past half the new snapshot. */
    struct rlimit saved;
    CHECK(getrlimit(RLIMIT_FSIZE, &saved) == 0, "getrlimit");
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved;
    small.rlim_cur = (rlim_t)(full_size / 2);
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0, "setrlimit");
    st = mla_cache_save_file(a, -1, path);
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, old_handler);
    CHECK(st == MLA_ERR_IO && strstr(mla_last_error(), "write failed") &&
          strstr(mla_last_error(), path) && strstr(mla_last_error(), "too large"),
          "a write past the file size limit: IO, naming the step, the file and the cause (%s)",
          mla_last_error());
    unsigned char *now = read_all(path, &now_size);
    CHECK(now && now_size == old_size && memcmp(now, old, old_size) == 0,
          "after the failed write the target holds the previous snapshot, byte for byte");
    free(now);
    CHECK(count_files(dir) == 1, "no temporary file is left (%d files)", count_files(dir));

    /* The rename: the target is a directory, which rename(2) will not replace by a file. */
    CHECK(mkdir(sub, 0700) == 0, "mkdir");
    st = mla_cache_save_file(a, -1, sub);
    CHECK(st == MLA_ERR_IO && strstr(mla_last_error(), "rename failed") &&
          strstr(mla_last_error(), sub), "a rename over a directory: IO, naming the step and "
          "the target (%s)", mla_last_error());
    CHECK(count_files(dir) == 2, "no temporary file is left beside the directory (%d files)",
          count_files(dir));

    /* Loading a directory: an IO error, the cache unchanged. */
    mla_cache *f = make(BASE);
    put(f, 0, 0, 3);
    print pf = fingerprint(f);
    st = mla_cache_load_file(f, 0, sub);
    CHECK(st == MLA_ERR_IO && strstr(mla_last_error(), sub) && same(f, &pf),
          "loading a directory: IO naming it, the cache unchanged (%s)", mla_last_error());
    free(pf.bytes);
    mla_cache_destroy(f);

    rmdir(sub);
    unlink(path);
    free(old);
}

int main(void)
{
    /* CRC-32 */
    CHECK(mla__crc32(0, "123456789", 9) == 0xcbf43926u, "CRC-32 check value of \"123456789\"");
    unsigned char rnd[1000];
    for (int i = 0; i < 1000; i++)
        rnd[i] = (unsigned char)(tap_rand(&rng) * 127 + 128);
    CHECK(mla__crc32(mla__crc32(0, rnd, 300), rnd + 300, 700) == crc_bitwise(rnd, 1000),
          "CRC-32 equals the bitwise definition, also computed in two pieces");

    hand_made();
    hand_versions();

    /* A sequence whose layers stopped at different tokens (a snapshot between the layers of one
     * batch): the counts come back as they were. */
    {
        mla_cache *a = make(BASE), *b = make(BASE);
        float lat[64] = {0}, rope[16] = {0};
        mla_cache_write(a, 0, 0, 0, 6, lat, rope);
        mla_cache_write(a, 1, 0, 0, 3, lat, rope);
        size_t n = 0;
        unsigned char *snap = save(a, 0, &n);
        int64_t w0 = -1, w1 = -1;
        mla_status st = mla_cache_load(b, 1, snap, n);
        mla_cache_seq_written(b, 0, 1, &w0);
        mla_cache_seq_written(b, 1, 1, &w1);
        CHECK(st == MLA_OK && w0 == 6 && w1 == 3,
              "written prefixes 6 and 3 saved and loaded into another sequence: %lld, %lld (%s)",
              (long long)w0, (long long)w1, st == MLA_OK ? "ok" : mla_last_error());
        free(snap);
        mla_cache_destroy(a);
        mla_cache_destroy(b);
    }

    /* a small cache with sharing: seq 1 forks seq 0 and continues; seq 2 separate */
    mla_cache *a = make(BASE);
    put(a, 0, 0, 6);
    mla_cache_seq_fork(a, 0, 1);
    put(a, 1, 6, 3);
    put(a, 2, 10, 3);
    mla_cache_seq_rm(a, 2, 11, 12); /* a hole */
    mla_cache *b = make(BASE);
    put(b, 0, 3, 5);
    put(b, 2, 0, 2);

    /* round trip of the whole cache */
    size_t size;
    unsigned char *snap = save(a, -1, &size);
    CHECK(memcmp(snap, "MLAC", 4) == 0, "snapshot starts with the magic");
    mla_cache *c = make(BASE);
    CHECK(mla_cache_load(c, 0, snap, size) == MLA_OK, "whole-cache snapshot loads: %s",
          mla_last_error());
    int eq = 1;
    for (int q = 0; q < 3; q++)
        eq &= seq_equal(a, q, c, q);
    print pa = fingerprint(a), pc = fingerprint(c);
    CHECK(eq, "every sequence reads back the same");
    CHECK(pa.size == pc.size && memcmp(pa.bytes, pc.bytes, pa.size) == 0 &&
          pa.st.tokens_used == pc.st.tokens_used && pa.st.blocks_free == pc.st.blocks_free,
          "sharing restored: same snapshot bytes, %lld slots in %lld blocks",
          (long long)pc.st.tokens_used, (long long)(pc.st.blocks_total - pc.st.blocks_free));
    free(pa.bytes);
    free(pc.bytes);
    free(snap);

    /* one sequence into another id */
    snap = save(a, 1, &size);
    print pb0 = fingerprint(b);
    CHECK(mla_cache_load(b, 2, snap, size) == MLA_OK, "one-sequence snapshot loads into seq 2");
    CHECK(seq_equal(a, 1, b, 2), "seq 2 now holds seq 1 of the source");
    mla_cache *b0 = make(BASE);
    mla_cache_load(b0, 0, pb0.bytes, pb0.size);
    CHECK(seq_equal(b0, 0, b, 0) && mla__cache_check(b) == 0, "seq 0 untouched");
    mla_cache_destroy(b0);
    free(pb0.bytes);
    free(snap);

    /* corruption and truncation */
    corruption(a, b, -1, "whole-cache");
    corruption(a, b, 1, "one-sequence");

    /* other geometries, types, capacities */
    snap = save(a, -1, &size);
    geo others[] = {
        {2, 8, 4, 4, 3, 32, MLA_DTYPE_I4}, {2, 8, 4, 8, 3, 32, MLA_DTYPE_I8},
        {2, 8, 8, 4, 3, 32, MLA_DTYPE_I8}, {1, 8, 4, 4, 3, 32, MLA_DTYPE_I8},
    };
    const char *names[] = {"latent type", "block size", "latent width", "layer count"};
    for (int i = 0; i < 4; i++) {
        mla_cache *o = make(others[i]);
        put(o, 0, 0, 2);
        print p = fingerprint(o);
        mla_status st = mla_cache_load(o, 0, snap, size);
        CHECK(st == MLA_ERR_BAD_FORMAT && strstr(mla_last_error(), "differ") && same(o, &p),
              "another %s: BAD_FORMAT, unchanged (%s)", names[i], mla_last_error());
        free(p.bytes);
        mla_cache_destroy(o);
    }
    {
        geo small = BASE;
        small.capacity = 8;
        mla_cache *o = make(small);
        put(o, 0, 0, 2);
        print p = fingerprint(o);
        CHECK(mla_cache_load(o, 0, snap, size) == MLA_ERR_CAPACITY && same(o, &p),
              "too few blocks: CAPACITY, unchanged (%s)", mla_last_error());
        free(p.bytes);
        mla_cache_destroy(o);
        geo few = BASE;
        few.n_seq_max = 2;
        o = make(few);
        put(o, 0, 0, 2);
        p = fingerprint(o);
        CHECK(mla_cache_load(o, 0, snap, size) == MLA_ERR_INVALID_ARGUMENT && same(o, &p),
              "a sequence id beyond n_seq_max: INVALID_ARGUMENT, unchanged (%s)",
              mla_last_error());
        free(p.bytes);
        mla_cache_destroy(o);
    }
    size_t w = 12345;
    CHECK(mla_cache_save(a, -1, snap, size - 1, &w) == MLA_ERR_CAPACITY && w == 12345,
          "a buffer one byte short: CAPACITY, written untouched");

    /* files */
    char dir[] = "/tmp/mla_cache_test.XXXXXX", path[256], missing[256];
    CHECK(mkdtemp(dir) != NULL, "temporary directory");
    snprintf(path, sizeof path, "%s/cache.mlac", dir);
    snprintf(missing, sizeof missing, "%s/no/such/dir/cache.mlac", dir);
    CHECK(mla_cache_save_file(a, -1, path) == MLA_OK, "save_file: %s", mla_last_error());
    CHECK(count_files(dir) == 1, "only the snapshot is left in the directory");
    mla_cache *f = make(BASE);
    CHECK(mla_cache_load_file(f, 0, path) == MLA_OK && seq_equal(a, 1, f, 1) &&
          seq_equal(a, 2, f, 2), "load_file restores the cache");
    CHECK(mla_cache_save_file(a, 2, path) == MLA_OK && count_files(dir) == 1,
          "saving over an existing file replaces it");
    CHECK(mla_cache_load_file(f, 0, path) == MLA_OK && seq_equal(a, 2, f, 0),
          "the replaced file is the one-sequence snapshot");
    mla_status st = mla_cache_save_file(a, -1, missing);
    CHECK(st == MLA_ERR_IO && strstr(mla_last_error(), missing) &&
          strstr(mla_last_error(), "No such file"), "save into a missing directory: %s",
          mla_last_error());
    st = mla_cache_load_file(f, 0, missing);
    CHECK(st == MLA_ERR_IO && strstr(mla_last_error(), missing), "load of a missing file: %s",
          mla_last_error());
    FILE *h = fopen(path, "wb");
    fwrite(snap, 1, size / 2, h);
    fclose(h);
    print pf = fingerprint(f);
    st = mla_cache_load_file(f, 0, path);
    CHECK(st == MLA_ERR_BAD_FORMAT && strstr(mla_last_error(), path) && same(f, &pf),
          "a truncated file: BAD_FORMAT naming the file, unchanged (%s)", mla_last_error());
    free(pf.bytes);
    unlink(path);
    file_failures(a, dir);
    rmdir(dir);

    free(snap);
    mla_cache_destroy(f);
    mla_cache_destroy(c);
    mla_cache_destroy(b);
    mla_cache_destroy(a);
    return tap_done();
}

/*
 * Fuzz target: mla_cache_load on arbitrary bytes, into a small cache that already holds shared
 * sequences. Whatever the input: no crash, the cache's invariants hold, a refused input leaves
 * the cache byte-for-byte as it was, and an accepted one can be read, saved and loaded again.
 * When the first byte is odd, the target recomputes the sections' CRCs before loading, so that
 * mutations reach the validation behind the checksums.
 *
 * Built with -DMLA_FUZZING and -fsanitize=fuzzer it is a libFuzzer target. Built normally (as
 * meson does) it is a program:
 *   fuzz_cache_load FILE|DIR...       replay inputs (a directory: each file in it)
 *   fuzz_cache_load --write-seeds DIR write a seed corpus (valid snapshots of several shapes)
 *   fuzz_cache_load --self-test       seeds and random mutations of them, as a TAP test
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "cache/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const float freqs[2] = {0.5f, 0.05f};
static mla_cache *cache;
static unsigned char *initial;
static size_t initial_size;
static long n_accepted, n_refused[MLA_STATUS_COUNT];

static mla_cache *make(void)
{
    mla_cache_layer_desc L[2];
    memset(L, 0, sizeof L);
    L[0] = (mla_cache_layer_desc){.struct_size = sizeof L[0], .latent_dim = 8, .rope_heads = 2,
                                  .rope_dim = 2, .rope_freqs = freqs, .mha_kv_dim = 16};
    L[1] = (mla_cache_layer_desc){.struct_size = sizeof L[1], .latent_dim = 4, .mha_kv_dim = 16};
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = 2;
    p.layers = L;
    p.latent_dtype = MLA_DTYPE_I8;
    p.rope_dtype = MLA_DTYPE_BF16;
    p.quant_group = 4;
    p.block_tokens = 4;
    p.capacity_tokens = 40;
    p.n_seq_max = 4;
    mla_cache *c = NULL;
    if (mla_cache_create(&p, &c) != MLA_OK) {
        fprintf(stderr, "create: %s\n", mla_last_error());
        abort();
    }
    return c;
}

static void put(mla_cache *c, int seq, int64_t pos, int n, float v)
{
    float lat[8 * 16], rope[4 * 16];
    for (int i = 0; i < 8 * 16; i++)
        lat[i] = v + (float)i * 0.25f;
    for (int i = 0; i < 4 * 16; i++)
        rope[i] = v - (float)i * 0.5f;
    mla_cache_write(c, 0, seq, pos, n, lat, rope);
    mla_cache_write(c, 1, seq, pos, n, lat, NULL);
}

static unsigned char *snapshot(const mla_cache *c, int seq, size_t *size)
{
    if (mla_cache_save_size(c, seq, size) != MLA_OK)
        abort();
    unsigned char *b = malloc(*size ? *size : 1);
    if (!b || mla_cache_save(c, seq, b, *size, NULL) != MLA_OK)
        abort();
    return b;
}

static void setup(void)
{
    cache = make();
    put(cache, 0, 0, 6, 1.0f);
    mla_cache_seq_fork(cache, 0, 1);
    put(cache, 1, 6, 3, -2.0f);
    put(cache, 3, 100, 2, 5.0f);
    initial = snapshot(cache, -1, &initial_size);
}

/* Recompute the CRC of each well-framed section (see doc/cache.md). */
static void fix_crcs(unsigned char *p, size_t n)
{
    size_t at = 8;
    for (int s = 0; s < 3 && n >= 12 && at <= n - 12; s++) {
        uint64_t len = 0;
        for (int i = 7; i >= 0; i--)
            len = len << 8 | p[at + 4 + (size_t)i];
        if (len > n - at - 12 || n - at - 12 - len < 4)
            return;
        uint32_t crc = mla__crc32(0, p + at, 12 + (size_t)len);
        size_t c = at + 12 + (size_t)len;
        for (int i = 0; i < 4; i++)
            p[c + (size_t)i] = (unsigned char)(crc >> (8 * i));
        at = c + 4;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!cache)
        setup();
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    if (size > 8 && (data[size - 1] & 1))
        fix_crcs(buf, size);
    int seq = size ? data[size / 2] % 4 : 0;
    mla_status st = mla_cache_load(cache, seq, buf, size);
    if (mla__cache_check(cache) != 0) {
        fprintf(stderr, "invariants broken after load (%s): %s\n", mla_status_string(st),
                mla_last_error());
        abort();
    }
    size_t now_size;
    unsigned char *now = snapshot(cache, -1, &now_size);
    if (st != MLA_OK && (now_size != initial_size || memcmp(now, initial, now_size) != 0)) {
        fprintf(stderr, "a refused load changed the cache\n");
        abort();
    }
    if (st != MLA_OK && (unsigned)st < MLA_STATUS_COUNT)
        n_refused[st]++;
    if (st == MLA_OK) {
        n_accepted++;
        /* what was accepted must be readable and survive its own round trip */
        float lat[8 * 64], rope[4 * 64];
        for (int q = 0; q < 4; q++) {
            int64_t n;
            mla_cache_seq_length(cache, q, &n);
            for (int l = 0; l < 2; l++)
                if (n > 64 || mla_cache_seq_read(cache, l, q, 0, n, lat, rope, NULL) != MLA_OK)
                    abort();
        }
        if (mla_cache_load(cache, 0, now, now_size) != MLA_OK)
            abort();
        if (mla_cache_load(cache, 0, initial, initial_size) != MLA_OK)
            abort();
    }
    free(now);
    free(buf);
    return 0;
}

#ifndef MLA_FUZZING

/* Valid snapshots of several shapes: the seed corpus. */
static unsigned char *seed(int k, size_t *size)
{
    mla_cache *c = make();
    switch (k) {
    case 0: /* empty cache */
        break;
    case 1:
        put(c, 0, 0, 9, 0.5f);
        break;
    case 2:
        put(c, 2, 3, 5, 2.0f);
        mla_cache_seq_fork(c, 2, 0);
        put(c, 0, 8, 2, 3.0f);
        mla_cache_seq_rm(c, 2, 4, 6);
        break;
    case 3:
        put(c, 1, 7, 13, -1.0f);
        mla_cache_seq_cp(c, 1, 3, 9, 15);
        mla_cache_seq_shift(c, 3, -1, -1, 40);
        break;
    }
    unsigned char *b = snapshot(c, k == 3 ? 3 : k == 2 ? -1 : (k == 1 ? 0 : -1), size);
    mla_cache_destroy(c);
    return b;
}

#define N_SEEDS 4

static int self_test(void)
{
    unsigned long long s = 88172645463325252ULL;
    long runs = 0;
    for (int k = 0; k < N_SEEDS; k++) {
        size_t n;
        unsigned char *b = seed(k, &n);
        LLVMFuzzerTestOneInput(b, n);
        runs++;
        unsigned char *m = malloc(n + 16);
        for (int r = 0; r < 2000; r++) {
            memcpy(m, b, n);
            size_t len = n;
            int edits = 1 + (int)(s % 4);
            for (int e = 0; e < edits; e++) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                size_t at = (size_t)(s >> 8) % n;
                switch (s % 4) {
                case 0: m[at] ^= (unsigned char)(1u << (s >> 40) % 8); break;
                case 1: m[at] = (unsigned char)(s >> 32); break;
                case 2: len = at; break;                     /* truncate */
                default: m[at] = m[(at + 5) % n]; break;     /* copy a byte */
                }
            }
            /* odd last byte: CRCs fixed up, so the structure checks are what is tested */
            if (len > 8)
                m[len - 1] = (unsigned char)(m[len - 1] | (r & 1));
            LLVMFuzzerTestOneInput(m, len);
            runs++;
        }
        free(m);
        free(b);
    }
    printf("# accepted %ld; refused: bad format %ld, invalid argument %ld, capacity %ld\n",
           n_accepted, n_refused[MLA_ERR_BAD_FORMAT], n_refused[MLA_ERR_INVALID_ARGUMENT],
           n_refused[MLA_ERR_CAPACITY]);
    /* reaching here means no abort: every load kept the invariants and the no-change rule */
    printf("ok 1 - %ld inputs (%d seeds and mutations of them, half with fixed-up CRCs) loaded: "
           "no crash, invariants held, refused loads changed nothing\n1..1\n", runs, N_SEEDS);
    return 0;
}

static int write_seeds(const char *dir)
{
    for (int k = 0; k < N_SEEDS; k++) {
        size_t n;
        unsigned char *b = seed(k, &n);
        char path[4096];
        snprintf(path, sizeof path, "%s/seed%d.mlac", dir, k);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(b, 1, n, f) != n) {
            perror(path);
            return 1;
        }
        fclose(f);
        free(b);
    }
    return 0;
}

/* Replay one input file, or every file of a directory (a corpus the fuzzer minimized). */
static int replay(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        int rc = 0, n = 0;
        struct dirent *e;
        char sub[4096];
        while (rc == 0 && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rc = replay(sub);
            n++;
        }
        closedir(d);
        printf("%s: %d inputs\n", path, n);
        return rc;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    unsigned char *b = malloc(1 << 20);
    size_t n = fread(b, 1, 1 << 20, f);
    fclose(f);
    LLVMFuzzerTestOneInput(b, n);
    free(b);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 0;
    if (argc == 2 && strcmp(argv[1], "--self-test") == 0)
        rc = self_test();
    else if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0)
        rc = write_seeds(argv[2]);
    else
        for (int i = 1; i < argc && rc == 0; i++)
            rc = replay(argv[i]);
    mla_cache_destroy(cache);
    free(initial);
    return rc;
}

#endif

/*
 * Snapshots: the versioned byte format of doc/cache.md ("MLAC", version, then the sections
 * GEOM, BLKS and SEQS, each with a CRC-32), written through a callback and read from memory.
 *
 * Loading is two-phase: the whole input is parsed and validated into a staging area (geometry,
 * bounds, checksums, values, positions, capacity, memory for the new block tables), and only
 * then committed; the commit cannot fail, so a rejected snapshot leaves the cache as it was.
 * Shared blocks are written once with the entries that point at them, so a whole-cache snapshot
 * restores its sharing and fits the cache it came from.
 */
#include <math.h>
#include <string.h>

#include <mla/cache.h>

#include "cache/internal.h"
#include "cache/snapshot.h"

/* Version 2 adds each sequence's written prefix per layer; version 1 snapshots still load
 * (their tokens count as written in every layer). */
#define VERSION 2
#define KIND_CACHE 1
#define KIND_SEQ 2
#define FRAME 16 /* tag, length, CRC of a section */

static const char MAGIC[4] = {'M', 'L', 'A', 'C'};
static const char TAG_GEOM[4] = {'G', 'E', 'O', 'M'};
static const char TAG_BLKS[4] = {'B', 'L', 'K', 'S'};
static const char TAG_SEQS[4] = {'S', 'E', 'Q', 'S'};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#  define BIG_ENDIAN_HOST 1
#endif

/* Bytes of one element in a row of this type, for the little-endian conversion. */
static size_t elem_size(mla_dtype t)
{
    return t == MLA_DTYPE_F32 ? 4 : (t == MLA_DTYPE_F16 || t == MLA_DTYPE_BF16) ? 2 : 1;
}

/* Copy count little-endian elements of elem bytes to native order (or back: it is symmetric). */
static void copy_le(void *dst, const void *src, size_t elem, size_t count)
{
    memcpy(dst, src, elem * count);
#ifdef BIG_ENDIAN_HOST
    unsigned char *d = dst;
    for (size_t i = 0; i < count; i++)
        for (size_t a = 0, b = elem - 1; a < b; a++, b--) {
            unsigned char t = d[i * elem + a];
            d[i * elem + a] = d[i * elem + b];
            d[i * elem + b] = t;
        }
#else
    (void)elem;
#endif
}

static size_t slot_bytes(const mla_cache *c)
{
    return sizeof(int64_t) + (size_t)c->bytes_per_token;
}

/* ==== saving ================================================================================ */

typedef struct plan {
    int32_t kind;
    int32_t s0, s1;          /* sequences [s0, s1) */
    int32_t n_seqs;          /* of them, those written */
    int32_t nb;              /* blocks written */
    int32_t *map;            /* cache block → written index, or −1 */
    int32_t *blocks;         /* written index → cache block */
    int32_t *lo, *hi;        /* slot range written per block */
    unsigned char *covered;  /* nb × block_tokens: slot referenced by a written entry */
    size_t geom, blks, seqs; /* payload bytes */
    size_t total;
} plan;

static void plan_free(plan *p)
{
    mla_free(p->map);
    mla_free(p->blocks);
    mla_free(p->lo);
    mla_free(p->hi);
    mla_free(p->covered);
}

static int written(const mla_cache *c, const plan *p, int32_t q)
{
    return p->kind == KIND_SEQ || c->seqs[q].n_e > 0;
}

static mla_status plan_make(const mla_cache *c, int32_t seq, plan *p)
{
    memset(p, 0, sizeof *p);
    p->kind = seq < 0 ? KIND_CACHE : KIND_SEQ;
    p->s0 = seq < 0 ? 0 : seq;
    p->s1 = seq < 0 ? c->n_seq_max : seq + 1;
    const size_t nbt = (size_t)c->n_blocks, bt = (size_t)c->block_tokens;
    p->map = mla_alloc(nbt * sizeof *p->map);
    p->blocks = mla_alloc(nbt * sizeof *p->blocks);
    p->lo = mla_alloc(nbt * sizeof *p->lo);
    p->hi = mla_alloc(nbt * sizeof *p->hi);
    p->covered = mla_calloc(nbt, bt);
    if (!p->map || !p->blocks || !p->lo || !p->hi || !p->covered) {
        plan_free(p);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache snapshot: plan of %d blocks",
                        (int)c->n_blocks);
    }
    for (int32_t b = 0; b < c->n_blocks; b++)
        p->map[b] = -1;
    p->seqs = 4;
    for (int32_t q = p->s0; q < p->s1; q++) {
        if (!written(c, p, q))
            continue;
        const mla_cache_seq *s = &c->seqs[q];
        p->n_seqs++;
        p->seqs += 8 + 12 * (size_t)s->n_e + 8 * (size_t)c->n_layers;
        for (int64_t i = 0; i < s->n_e; i++) {
            const mla_cache_entry *e = &s->e[i];
            int32_t k = p->map[e->block];
            if (k < 0) {
                k = p->map[e->block] = p->nb++;
                p->blocks[k] = e->block;
                p->lo[k] = e->off;
                p->hi[k] = e->off + e->n;
            }
            if (e->off < p->lo[k])
                p->lo[k] = e->off;
            if (e->off + e->n > p->hi[k])
                p->hi[k] = e->off + e->n;
            memset(p->covered + (size_t)k * bt + (size_t)e->off, 1, (size_t)e->n);
        }
    }
    p->geom = 24 + 12 * (size_t)c->n_layers;
    p->blks = 4;
    for (int32_t k = 0; k < p->nb; k++)
        p->blks += 8 + (size_t)(p->hi[k] - p->lo[k]) * slot_bytes(c);
    p->total = 8 + 3 * FRAME + p->geom + p->blks + p->seqs;
    return MLA_OK;
}

/* A buffered writer that keeps the running CRC of the current section. */
typedef struct out {
    mla__cache_write_fn fn;
    void *user;
    uint32_t crc;
    int err;
    size_t n;
    unsigned char buf[16384];
} out;

static void out_flush(out *o)
{
    if (o->n && !o->err)
        o->err = o->fn(o->user, o->buf, o->n);
    o->n = 0;
}

static void out_put(out *o, const void *data, size_t n)
{
    const unsigned char *p = data;
    o->crc = mla__crc32(o->crc, p, n);
    while (n) {
        size_t k = sizeof o->buf - o->n < n ? sizeof o->buf - o->n : n;
        memcpy(o->buf + o->n, p, k);
        o->n += k;
        p += k;
        n -= k;
        if (o->n == sizeof o->buf)
            out_flush(o);
    }
}

static void out_u32(out *o, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    out_put(o, b, 4);
}

static void out_u64(out *o, uint64_t v)
{
    out_u32(o, (uint32_t)v);
    out_u32(o, (uint32_t)(v >> 32));
}

/* count elements of elem bytes, little-endian; NULL writes zeros */
static void out_le(out *o, const void *data, size_t elem, size_t count)
{
    unsigned char tmp[256];
    const unsigned char *p = data;
    size_t per = sizeof tmp / elem, done = 0;
    while (done < count) {
        size_t k = count - done < per ? count - done : per;
        if (p)
            copy_le(tmp, p + done * elem, elem, k);
        else
            memset(tmp, 0, k * elem);
        out_put(o, tmp, k * elem);
        done += k;
    }
}

static void section_begin(out *o, const char tag[4], size_t len)
{
    o->crc = 0;
    out_put(o, tag, 4);
    out_u64(o, len);
}

static void section_end(out *o)
{
    out_u32(o, o->crc);
}

static void write_geom(const mla_cache *c, const plan *p, out *o)
{
    section_begin(o, TAG_GEOM, p->geom);
    out_u32(o, (uint32_t)p->kind);
    out_u32(o, (uint32_t)c->n_layers);
    out_u32(o, (uint32_t)c->latent_dtype);
    out_u32(o, (uint32_t)c->rope_dtype);
    out_u32(o, (uint32_t)c->quant_group);
    out_u32(o, (uint32_t)c->block_tokens);
    for (int32_t l = 0; l < c->n_layers; l++) {
        out_u32(o, (uint32_t)c->layers[l].fmt.latent_dim);
        out_u32(o, (uint32_t)c->layers[l].rope_heads);
        out_u32(o, (uint32_t)c->layers[l].rope_dim);
    }
    section_end(o);
}

/* One array of a block (positions, or a layer's latent, scales or RoPE rows) for slots
 * [lo, hi), with zeros in the slots no written entry references. */
static void write_rows(out *o, const plan *p, int32_t k, const unsigned char *rows,
                       size_t row_bytes, size_t elem, size_t bt)
{
    if (row_bytes == 0)
        return;
    const unsigned char *cov = p->covered + (size_t)k * bt;
    for (int32_t t = p->lo[k]; t < p->hi[k]; t++)
        out_le(o, cov[t] ? rows + (size_t)t * row_bytes : NULL, elem, row_bytes / elem);
}

static void write_blocks(const mla_cache *c, const plan *p, out *o)
{
    const size_t bt = (size_t)c->block_tokens;
    section_begin(o, TAG_BLKS, p->blks);
    out_u32(o, (uint32_t)p->nb);
    for (int32_t k = 0; k < p->nb; k++) {
        const unsigned char *base = mla__cache_block(c, p->blocks[k]);
        out_u32(o, (uint32_t)p->lo[k]);
        out_u32(o, (uint32_t)p->hi[k]);
        write_rows(o, p, k, base, sizeof(int64_t), sizeof(int64_t), bt);
        for (int32_t l = 0; l < c->n_layers; l++) {
            const mla_cache_layer *L = &c->layers[l];
            write_rows(o, p, k, base + L->latent_off, L->latent_row_bytes,
                       elem_size(c->latent_dtype), bt);
            write_rows(o, p, k, base + L->scale_off, L->scale_row_bytes, sizeof(float), bt);
            write_rows(o, p, k, base + L->rope_off, L->rope_row_bytes, elem_size(c->rope_dtype),
                       bt);
        }
    }
    section_end(o);
}

static void write_seqs(const mla_cache *c, const plan *p, out *o)
{
    section_begin(o, TAG_SEQS, p->seqs);
    out_u32(o, (uint32_t)p->n_seqs);
    for (int32_t q = p->s0; q < p->s1; q++) {
        if (!written(c, p, q))
            continue;
        const mla_cache_seq *s = &c->seqs[q];
        out_u32(o, (uint32_t)q);
        out_u32(o, (uint32_t)s->n_e);
        for (int64_t i = 0; i < s->n_e; i++) {
            out_u32(o, (uint32_t)p->map[s->e[i].block]);
            out_u32(o, (uint32_t)s->e[i].off);
            out_u32(o, (uint32_t)s->e[i].n);
        }
        for (int32_t l = 0; l < c->n_layers; l++)
            out_u64(o, (uint64_t)s->written[l]);
    }
    section_end(o);
}

mla_status mla__cache_save_stream(const mla_cache *c, int32_t seq, size_t *size,
                                  mla__cache_write_fn fn, void *user)
{
    if (!c)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache snapshot: cache is NULL");
    if (seq >= c->n_seq_max)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache snapshot: sequence %d out of range (0 .. %d, or < 0 for all)",
                        (int)seq, (int)c->n_seq_max - 1);
    plan p;
    mla_status st = plan_make(c, seq, &p);
    if (st != MLA_OK)
        return st;
    if (size)
        *size = p.total;
    if (!fn) {
        plan_free(&p);
        return MLA_OK;
    }
    out *o = mla_calloc(1, sizeof *o);
    if (!o) {
        plan_free(&p);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache snapshot: writer");
    }
    o->fn = fn;
    o->user = user;
    out_put(o, MAGIC, 4);
    out_u32(o, VERSION);
    write_geom(c, &p, o);
    write_blocks(c, &p, o);
    write_seqs(c, &p, o);
    out_flush(o);
    int err = o->err;
    mla_free(o);
    plan_free(&p);
    if (err)
        return mla_fail(MLA_ERR_IO, "cache snapshot: the writer failed (%d)", err);
    return MLA_OK;
}

MLA_API mla_status mla_cache_save_size(const mla_cache *c, int32_t seq, size_t *size)
{
    if (!size)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_save_size: size is NULL");
    size_t n = 0;
    mla_status st = mla__cache_save_stream(c, seq, &n, NULL, NULL);
    if (st == MLA_OK)
        *size = n;
    return st;
}

typedef struct membuf {
    unsigned char *p;
    size_t cap, n;
} membuf;

static int mem_write(void *user, const void *data, size_t n)
{
    membuf *m = user;
    if (n > m->cap - m->n)
        return 1; /* cannot happen: the size was checked first */
    memcpy(m->p + m->n, data, n);
    m->n += n;
    return 0;
}

MLA_API mla_status mla_cache_save(const mla_cache *c, int32_t seq, void *buf, size_t buf_size,
                                  size_t *written_out)
{
    if (!buf)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_save: buf is NULL");
    size_t need = 0;
    mla_status st = mla__cache_save_stream(c, seq, &need, NULL, NULL);
    if (st != MLA_OK)
        return st;
    if (need > buf_size)
        return mla_fail(MLA_ERR_CAPACITY,
                        "mla_cache_save: the snapshot needs %zu bytes, the buffer has %zu", need,
                        buf_size);
    membuf m = {buf, buf_size, 0};
    if ((st = mla__cache_save_stream(c, seq, NULL, mem_write, &m)) != MLA_OK)
        return st;
    if (written_out)
        *written_out = m.n;
    return MLA_OK;
}

/* ==== loading =============================================================================== */

typedef struct in {
    const unsigned char *p;
    size_t n, at;
} in;

static int in_has(const in *r, size_t k)
{
    return r->n - r->at >= k;
}

static uint32_t in_u32(in *r)
{
    const unsigned char *b = r->p + r->at;
    r->at += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t in_u64(in *r)
{
    uint64_t lo = in_u32(r);
    return lo | (uint64_t)in_u32(r) << 32;
}

/* The next section: check its tag, length and CRC; its payload becomes *payload. */
static mla_status section(in *r, const char tag[4], in *payload)
{
    if (!in_has(r, 12))
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: truncated before section %.4s "
                        "(offset %zu of %zu bytes)", tag, r->at, r->n);
    size_t start = r->at;
    if (memcmp(r->p + r->at, tag, 4) != 0)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: expected section %.4s at offset %zu",
                        tag, r->at);
    r->at += 4;
    uint64_t len = in_u64(r);
    if (len > r->n - r->at || r->n - r->at - len < 4)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: section %.4s claims %llu bytes, "
                        "%zu remain", tag, (unsigned long long)len, r->n - r->at);
    uint32_t crc = mla__crc32(0, r->p + start, 12 + (size_t)len);
    payload->p = r->p + r->at;
    payload->n = (size_t)len;
    payload->at = 0;
    r->at += (size_t)len;
    uint32_t stored = in_u32(r);
    if (crc != stored)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: section %.4s checksum %08x, stored "
                        "%08x", tag, (unsigned)crc, (unsigned)stored);
    return MLA_OK;
}

typedef struct sblock {
    uint32_t lo, hi;
    const unsigned char *data; /* positions then every layer's arrays, for slots [lo, hi) */
    int64_t refs;
    int32_t block;             /* cache block at commit */
} sblock;

typedef struct sseq {
    int32_t id;
    mla_cache_seq s;           /* entries name staged blocks until commit */
} sseq;

typedef struct stage {
    int32_t kind;
    uint32_t version;
    uint32_t nb, n_seqs;
    sblock *b;
    sseq *q;
    int64_t *written;          /* n_seqs × n_layers written prefixes */
} stage;

static void stage_free(stage *st)
{
    for (uint32_t i = 0; st->q && i < st->n_seqs; i++)
        mla_free(st->q[i].s.e);
    mla_free(st->q);
    mla_free(st->b);
    mla_free(st->written);
}

static mla_status parse_geom(const mla_cache *c, in *g, stage *st)
{
    if (!in_has(g, 24))
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: GEOM is %zu bytes", g->n);
    st->kind = (int32_t)in_u32(g);
    uint32_t v[5];
    for (int i = 0; i < 5; i++)
        v[i] = in_u32(g);
    if (st->kind != KIND_CACHE && st->kind != KIND_SEQ)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: kind %d", (int)st->kind);
    const char *names[5] = {"n_layers", "latent_dtype", "rope_dtype", "quant_group",
                            "block_tokens"};
    uint32_t have[5] = {(uint32_t)c->n_layers, (uint32_t)c->latent_dtype,
                        (uint32_t)c->rope_dtype, (uint32_t)c->quant_group,
                        (uint32_t)c->block_tokens};
    for (int i = 0; i < 5; i++)
        if (v[i] != have[i])
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: geometry differs: %s is %u, "
                            "the cache has %u", names[i], (unsigned)v[i], (unsigned)have[i]);
    if (g->n != 24 + 12 * (size_t)c->n_layers)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: GEOM is %zu bytes for %d layers",
                        g->n, (int)c->n_layers);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer *L = &c->layers[l];
        uint32_t d = in_u32(g), h = in_u32(g), r = in_u32(g);
        if (d != (uint32_t)L->fmt.latent_dim || h != (uint32_t)L->rope_heads ||
            r != (uint32_t)L->rope_dim)
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: geometry differs at layer %d: "
                            "latent_dim %u, rope_heads %u, rope_dim %u; the cache has %d, %d, %d",
                            (int)l, (unsigned)d, (unsigned)h, (unsigned)r, (int)L->fmt.latent_dim,
                            (int)L->rope_heads, (int)L->rope_dim);
    }
    return MLA_OK;
}

/* Values a cache could have written: finite floats, non-negative scales whose product with
 * any code is finite, i8 ≠ −128. */
static int float_ok(mla_dtype t, const unsigned char *p, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (t == MLA_DTYPE_F32) {
            float f;
            copy_le(&f, p + 4 * i, 4, 1);
            if (!isfinite(f))
                return 0;
        } else {
            uint16_t h;
            copy_le(&h, p + 2 * i, 2, 1);
            if ((t == MLA_DTYPE_F16 && (h & 0x7c00) == 0x7c00) ||
                (t == MLA_DTYPE_BF16 && (h & 0x7f80) == 0x7f80))
                return 0;
        }
    }
    return 1;
}

static mla_status check_block_values(const mla_cache *c, uint32_t k, const sblock *b)
{
    const size_t m = b->hi - b->lo;
    const unsigned char *p = b->data + m * sizeof(int64_t);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer *L = &c->layers[l];
        const size_t nl = m * L->latent_row_bytes;
        int ok = 1;
        if (c->latent_dtype == MLA_DTYPE_I8) {
            for (size_t i = 0; i < nl; i++)
                ok &= p[i] != 0x80;
        } else if (c->latent_dtype != MLA_DTYPE_I4) {
            ok = float_ok(c->latent_dtype, p, nl / elem_size(c->latent_dtype));
        }
        p += nl;
        /* the largest code times the scale must stay finite: a read never gives Inf */
        const float qmax = c->latent_dtype == MLA_DTYPE_I8 ? 127.0f : 8.0f;
        for (size_t i = 0; i < m * (size_t)L->n_groups; i++) {
            float s;
            copy_le(&s, p + 4 * i, 4, 1);
            ok &= isfinite(s * qmax) && s >= 0;
        }
        p += m * L->scale_row_bytes;
        ok &= float_ok(c->rope_dtype, p, m * (size_t)L->fmt.rope_width);
        p += m * L->rope_row_bytes;
        if (!ok)
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: block %u, layer %d holds values "
                            "a cache cannot store (NaN, Inf, a negative or too large scale, or i8 "
                            "−128)",
                            (unsigned)k, (int)l);
    }
    return MLA_OK;
}

static mla_status parse_blocks(const mla_cache *c, in *r, stage *st)
{
    if (!in_has(r, 4))
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: BLKS is %zu bytes", r->n);
    st->nb = in_u32(r);
    const size_t slot = slot_bytes(c);
    /* each block takes at least 8 + one slot: bounds the allocation by the input's size */
    if (st->nb > (r->n - r->at) / (8 + slot))
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: %u blocks in %zu bytes",
                        (unsigned)st->nb, r->n - r->at);
    st->b = mla_calloc((size_t)st->nb + 1, sizeof *st->b);
    if (!st->b)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache snapshot: %u blocks", (unsigned)st->nb);
    for (uint32_t k = 0; k < st->nb; k++) {
        sblock *b = &st->b[k];
        if (!in_has(r, 8))
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: block %u truncated", (unsigned)k);
        b->lo = in_u32(r);
        b->hi = in_u32(r);
        if (b->lo >= b->hi || b->hi > (uint32_t)c->block_tokens)
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: block %u holds slots %u .. %u "
                            "(block_tokens %d)", (unsigned)k, (unsigned)b->lo, (unsigned)b->hi,
                            (int)c->block_tokens);
        size_t bytes = (size_t)(b->hi - b->lo) * slot;
        if (!in_has(r, bytes))
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: block %u truncated", (unsigned)k);
        b->data = r->p + r->at;
        r->at += bytes;
        mla_status s = check_block_values(c, k, b);
        if (s != MLA_OK)
            return s;
    }
    if (r->at != r->n)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: %zu stray bytes after the blocks",
                        r->n - r->at);
    return MLA_OK;
}

static int64_t staged_pos(const sblock *b, uint32_t slot)
{
    int64_t v;
    copy_le(&v, b->data + (size_t)(slot - b->lo) * sizeof(int64_t), sizeof v, 1);
    return v;
}

static mla_status parse_entries(const mla_cache *c, in *r, stage *st, sseq *q)
{
    uint32_t n_e = in_u32(r);
    if (n_e > (r->n - r->at) / 12)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: sequence %d: %u entries in %zu "
                        "bytes", (int)q->id, (unsigned)n_e, r->n - r->at);
    mla_status s = mla__cache_seq_grow(&q->s, (int64_t)n_e);
    if (s != MLA_OK)
        return s;
    int64_t prev = -1;
    for (uint32_t i = 0; i < n_e; i++) {
        uint32_t k = in_u32(r), off = in_u32(r), n = in_u32(r);
        if (k >= st->nb || n < 1 || off < st->b[k].lo || off > st->b[k].hi ||
            n > st->b[k].hi - off)
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: sequence %d entry %u: block %u, "
                            "slots %u + %u", (int)q->id, (unsigned)i, (unsigned)k,
                            (unsigned)off, (unsigned)n);
        for (uint32_t t = off; t < off + n; t++) {
            int64_t p = staged_pos(&st->b[k], t);
            if (p <= prev)
                return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: sequence %d: position %lld "
                                "after %lld", (int)q->id, (long long)p, (long long)prev);
            prev = p;
        }
        if (++st->b[k].refs > INT32_MAX)
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: block %u referenced too often",
                            (unsigned)k);
        q->s.e[q->s.n_e++] = (mla_cache_entry){(int32_t)k, (int32_t)off, (int32_t)n};
        q->s.n_tokens += n;
    }
    return MLA_OK;
}

/* The n sequences of SEQS into st->q; seen marks the ids met (whole-cache snapshots). */
static mla_status parse_seq_list(const mla_cache *c, in *r, stage *st, uint32_t n,
                                 unsigned char *seen)
{
    for (uint32_t i = 0; i < n; i++) {
        sseq *q = &st->q[i];
        if (!in_has(r, 8))
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: sequence %u truncated",
                            (unsigned)i);
        st->n_seqs = i + 1; /* entries of sequences so far are freed by stage_free */
        q->id = (int32_t)in_u32(r);
        if (q->id < 0 || (st->kind == KIND_CACHE && q->id >= c->n_seq_max))
            return mla_fail(q->id < 0 ? MLA_ERR_BAD_FORMAT : MLA_ERR_INVALID_ARGUMENT,
                            "cache snapshot: sequence id %d (the cache has 0 .. %d)", (int)q->id,
                            (int)c->n_seq_max - 1);
        if (st->kind == KIND_CACHE) {
            if (seen[q->id / 8] & (1u << (q->id % 8)))
                return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: sequence %d twice",
                                (int)q->id);
            seen[q->id / 8] |= (unsigned char)(1u << (q->id % 8));
        }
        mla_status s = parse_entries(c, r, st, q);
        if (s != MLA_OK)
            return s;
        int64_t *w = st->written + (size_t)i * (size_t)c->n_layers;
        if (st->version < 2) {
            for (int32_t l = 0; l < c->n_layers; l++)
                w[l] = q->s.n_tokens;
            continue;
        }
        if (!in_has(r, 8 * (size_t)c->n_layers))
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: sequence %d: written counts "
                            "truncated", (int)q->id);
        for (int32_t l = 0; l < c->n_layers; l++) {
            uint64_t v = in_u64(r);
            if (v > (uint64_t)q->s.n_tokens)
                return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: sequence %d, layer %d: "
                                "%llu tokens written of %lld", (int)q->id, (int)l,
                                (unsigned long long)v, (long long)q->s.n_tokens);
            w[l] = (int64_t)v;
        }
    }
    return MLA_OK;
}

static mla_status parse_seqs(const mla_cache *c, in *r, stage *st)
{
    if (!in_has(r, 4))
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: SEQS is %zu bytes", r->n);
    uint32_t n = in_u32(r);
    if (n > (r->n - r->at) / 8 || (st->kind == KIND_SEQ && n != 1))
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: %u sequences (%zu bytes)",
                        (unsigned)n, r->n - r->at);
    if (st->kind == KIND_CACHE && n > (uint32_t)c->n_seq_max)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache snapshot: %u sequences, the cache "
                        "holds %d", (unsigned)n, (int)c->n_seq_max);
    st->q = mla_calloc((size_t)n + 1, sizeof *st->q);
    st->written = mla_calloc(((size_t)n + 1) * (size_t)c->n_layers, sizeof *st->written);
    if (!st->q || !st->written)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache snapshot: %u sequences", (unsigned)n);
    /* ids seen, one bit per id of the cache (a pairwise check would be quadratic in n) */
    unsigned char *seen = mla_calloc((size_t)c->n_seq_max / 8 + 1, 1);
    if (!seen)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache snapshot: %d sequence ids",
                        (int)c->n_seq_max);
    mla_status s = parse_seq_list(c, r, st, n, seen);
    mla_free(seen);
    if (s != MLA_OK)
        return s;
    st->n_seqs = n;
    if (r->at != r->n)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: %zu stray bytes after the sequences",
                        r->n - r->at);
    for (uint32_t k = 0; k < st->nb; k++)
        if (st->b[k].refs == 0)
            return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: block %u is not used",
                            (unsigned)k);
    return MLA_OK;
}

static mla_status parse(const mla_cache *c, const unsigned char *buf, size_t size, stage *st)
{
    in r = {buf, size, 0}, g, b, s;
    if (size < 8)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: %zu bytes, too short", size);
    if (memcmp(buf, MAGIC, 4) != 0)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: not a libmla cache snapshot "
                        "(magic %02x %02x %02x %02x)", buf[0], buf[1], buf[2], buf[3]);
    r.at = 4;
    uint32_t version = in_u32(&r);
    if (version < 1 || version > VERSION)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: format version %u, this library "
                        "reads versions 1 to %d", (unsigned)version, VERSION);
    st->version = version;
    mla_status e;
    if ((e = section(&r, TAG_GEOM, &g)) != MLA_OK || (e = parse_geom(c, &g, st)) != MLA_OK)
        return e;
    if ((e = section(&r, TAG_BLKS, &b)) != MLA_OK || (e = parse_blocks(c, &b, st)) != MLA_OK)
        return e;
    if ((e = section(&r, TAG_SEQS, &s)) != MLA_OK || (e = parse_seqs(c, &s, st)) != MLA_OK)
        return e;
    if (r.at != r.n)
        return mla_fail(MLA_ERR_BAD_FORMAT, "cache snapshot: %zu stray bytes at the end",
                        r.n - r.at);
    return MLA_OK;
}

/* Blocks that dropping sequence seq would free. */
static mla_status freed_by_drop(const mla_cache *c, int32_t seq, int64_t *freed)
{
    const mla_cache_seq *s = &c->seqs[seq];
    int32_t *mine = mla_calloc((size_t)c->n_blocks, sizeof *mine);
    if (!mine)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache snapshot: %d counters", (int)c->n_blocks);
    int64_t n = 0;
    for (int64_t i = 0; i < s->n_e; i++)
        if (++mine[s->e[i].block] == mla__cache_block_refs(c, s->e[i].block))
            n++;
    mla_free(mine);
    *freed = n;
    return MLA_OK;
}

static void copy_block(mla_cache *c, const sblock *b)
{
    const size_t m = b->hi - b->lo;
    unsigned char *base = mla__cache_block(c, b->block);
    const unsigned char *p = b->data;
    copy_le(mla__cache_block_pos(c, b->block) + b->lo, p, sizeof(int64_t), m);
    p += m * sizeof(int64_t);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer *L = &c->layers[l];
        size_t offs[3] = {L->latent_off, L->scale_off, L->rope_off};
        size_t rows[3] = {L->latent_row_bytes, L->scale_row_bytes, L->rope_row_bytes};
        size_t elems[3] = {elem_size(c->latent_dtype), sizeof(float), elem_size(c->rope_dtype)};
        for (int k = 0; k < 3; k++) {
            copy_le(base + offs[k] + b->lo * rows[k], p, elems[k], m * rows[k] / elems[k]);
            p += m * rows[k];
        }
    }
}

/* Cannot fail: capacity and memory were checked while staging. */
static void commit(mla_cache *c, int32_t seq, stage *st, int32_t *blocks)
{
    if (st->kind == KIND_CACHE)
        mla_cache_clear(c);
    else
        mla__cache_seq_drop(c, &c->seqs[seq]);
    int taken = mla__cache_blocks_take(c, st->nb, blocks);
    (void)taken; /* 0: the staged capacity check counted the blocks the drop frees */
    for (uint32_t k = 0; k < st->nb; k++) {
        st->b[k].block = blocks[k];
        copy_block(c, &st->b[k]);
        for (int64_t r = 1; r < st->b[k].refs; r++)
            mla__cache_block_ref(c, blocks[k]);
    }
    for (uint32_t i = 0; i < st->n_seqs; i++) {
        mla_cache_seq *n = &st->q[i].s;
        for (int64_t j = 0; j < n->n_e; j++)
            n->e[j].block = st->b[n->e[j].block].block;
        mla_cache_seq *d = &c->seqs[st->kind == KIND_CACHE ? st->q[i].id : seq];
        mla_free(d->e);
        n->written = d->written;
        *d = *n;
        n->e = NULL;
        memcpy(d->written, st->written + (size_t)i * (size_t)c->n_layers,
               (size_t)c->n_layers * sizeof *d->written);
    }
}

MLA_API mla_status mla_cache_load(mla_cache *c, int32_t seq, const void *buf, size_t size)
{
    if (!c || !buf)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_load: %s is NULL",
                        !c ? "cache" : "buf");
    stage st;
    memset(&st, 0, sizeof st);
    mla_status s = parse(c, buf, size, &st);
    int32_t *blocks = NULL;
    if (s == MLA_OK && st.kind == KIND_SEQ)
        s = mla__cache_check_seq(c, seq, "mla_cache_load");
    if (s == MLA_OK) {
        int64_t avail = c->n_blocks;
        if (st.kind == KIND_SEQ) {
            int64_t freed = 0;
            s = freed_by_drop(c, seq, &freed);
            avail = mla__cache_blocks_free(c) + freed;
        }
        if (s == MLA_OK && (int64_t)st.nb > avail)
            s = mla_fail(MLA_ERR_CAPACITY, "mla_cache_load: the snapshot holds %u blocks, %lld "
                         "are available", (unsigned)st.nb, (long long)avail);
    }
    if (s == MLA_OK && !(blocks = mla_alloc(((size_t)st.nb + 1) * sizeof *blocks)))
        s = mla_fail(MLA_ERR_OUT_OF_MEMORY, "mla_cache_load: %u block ids", (unsigned)st.nb);
    if (s != MLA_OK) {
        mla_free(blocks);
        stage_free(&st);
        return s;
    }
    commit(c, seq, &st, blocks);
    mla_free(blocks);
    stage_free(&st);
    return MLA_OK;
}

/* Creating a cache: parameters, the block layout, the pool; and its accounting. */
#include <math.h>
#include <string.h>

#include <mla/cache.h>

#include "cache/internal.h"

#define ALIGN 64
/* Block ids and per-block reference counts are int32; keep every count below that. */
#define MAX_BLOCK_TOKENS (1 << 16)
#define MAX_SEQ (1 << 20)
#define MAX_DIM (1 << 24)

MLA_API mla_status mla_cache_default_params(mla_cache_params *p, size_t struct_size)
{
    mla_cache_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.latent_dtype = MLA_DTYPE_F16;
    d.rope_dtype = MLA_DTYPE_F16;
    d.quant_group = 0; /* chosen from the layers' latent widths (resolve_group) */
    d.block_tokens = 64;
    d.n_seq_max = 64;
    return mla_params_write(p, struct_size, &d, sizeof d, "cache params");
}

MLA_API mla_status mla_cache_layer_desc_default_params(mla_cache_layer_desc *d,
                                                       size_t struct_size)
{
    mla_cache_layer_desc f;
    memset(&f, 0, sizeof f);
    f.struct_size = sizeof f;
    f.rope_position_scale = 1.0;
    return mla_params_write(d, struct_size, &f, sizeof f, "cache layer desc");
}

static int is_latent_dtype(mla_dtype t)
{
    return t == MLA_DTYPE_F32 || t == MLA_DTYPE_F16 || t == MLA_DTYPE_BF16 || t == MLA_DTYPE_I8 ||
           t == MLA_DTYPE_I4;
}

static int is_rope_dtype(mla_dtype t)
{
    return t == MLA_DTYPE_F32 || t == MLA_DTYPE_F16 || t == MLA_DTYPE_BF16;
}

static int is_quant(mla_dtype t)
{
    return t == MLA_DTYPE_I8 || t == MLA_DTYPE_I4;
}

static size_t align_up(size_t x)
{
    return (x + ALIGN - 1) / ALIGN * ALIGN;
}

static mla_status check_params(const mla_cache_params *p)
{
    if (p->n_layers < 1 || p->n_layers > MAX_DIM)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: n_layers is %d, expected 1 .. %d", (int)p->n_layers,
                        MAX_DIM);
    if (!p->layers)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache params: layers is NULL");
    if (!is_latent_dtype(p->latent_dtype))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: latent_dtype %d is not f32, f16, bf16, i8 or i4",
                        (int)p->latent_dtype);
    if (!is_rope_dtype(p->rope_dtype))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: rope_dtype %d is not f32, f16 or bf16", (int)p->rope_dtype);
    if (is_quant(p->latent_dtype)) {
        if (p->quant_group < 0 || p->quant_group > MAX_DIM)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: quant_group is %d, expected 0 (chosen from the "
                            "latent widths) or 1 .. %d", (int)p->quant_group, MAX_DIM);
        /* i4 groups start on a byte so a kernel can take a group's bytes directly */
        if (p->latent_dtype == MLA_DTYPE_I4 && p->quant_group % 2)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: quant_group is %d, must be even for i4",
                            (int)p->quant_group);
    }
    if (p->block_tokens < 1 || p->block_tokens > MAX_BLOCK_TOKENS)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: block_tokens is %d, expected 1 .. %d",
                        (int)p->block_tokens, MAX_BLOCK_TOKENS);
    if (p->n_seq_max < 1 || p->n_seq_max > MAX_SEQ ||
        (int64_t)p->n_seq_max * p->block_tokens > INT32_MAX)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: n_seq_max is %d, expected 1 .. %d (and n_seq_max · "
                        "block_tokens < 2^31)", (int)p->n_seq_max, MAX_SEQ);
    if (p->capacity_tokens < 0 || p->capacity_bytes < 0 ||
        (p->capacity_tokens == 0 && p->capacity_bytes == 0))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: capacity_tokens is %lld and capacity_bytes %lld: set one "
                        "of them (> 0)", (long long)p->capacity_tokens,
                        (long long)p->capacity_bytes);
    return MLA_OK;
}

/*
 * Copy the caller's layer array into full-size descs. It is an array of the caller's
 * mla_cache_layer_desc, whose size layers[0].struct_size gives: that is the stride. An element
 * with another struct_size means the caller's idea of the stride is not ours, so every element
 * is checked before any is read. Elements are read with memcpy: a stride need not keep them
 * aligned.
 */
static mla_status read_layers(const mla_cache_params *p, mla_cache_layer_desc **out)
{
    const unsigned char *base = (const unsigned char *)p->layers;
    size_t stride, total;
    memcpy(&stride, base, sizeof stride);
    if (stride < sizeof(size_t))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: layers[0].struct_size is %zu: set it with "
                        "mla_cache_layer_desc_default_params", stride);
    if (!mla_mul_size((size_t)p->n_layers, stride, &total))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: n_layers %d × layers[0].struct_size %zu overflows",
                        (int)p->n_layers, stride);
    for (int32_t l = 1; l < p->n_layers; l++) {
        size_t size;
        memcpy(&size, base + (size_t)l * stride, sizeof size);
        if (size != stride)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: layers[%d].struct_size is %zu, but "
                            "layers[0].struct_size is %zu: every element of the array must "
                            "have the same size", (int)l, size, stride);
    }
    mla_cache_layer_desc *d = mla_calloc((size_t)p->n_layers, sizeof *d);
    if (!d)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache params: %d layer descs", (int)p->n_layers);
    for (int32_t l = 0; l < p->n_layers; l++) {
        mla_cache_layer_desc_default_params(&d[l], sizeof d[l]);
        mla_params_read(&d[l], sizeof d[l], base + (size_t)l * stride, "cache params: layers[]");
    }
    *out = d;
    return MLA_OK;
}

/*
 * quant_group 0: the largest of 32, 16, 8, 4, 2, 1 that divides every layer's latent width (32
 * where it divides them all, as before 0 existed; SmolLM-135M's latents of 24, 48 or 96 values
 * take 8, 16, 32). I4 needs an even group: an odd width is refused, naming its layer.
 */
static mla_status resolve_group(mla_cache_params *p)
{
    if (!is_quant(p->latent_dtype) || p->quant_group > 0)
        return MLA_OK;
    int32_t g = 32;
    for (int32_t l = 0; l < p->n_layers; l++)
        while (p->layers[l].latent_dim % g)
            g /= 2;
    if (p->latent_dtype == MLA_DTYPE_I4 && g < 2) {
        int32_t l = 0;
        while (p->layers[l].latent_dim % 2 == 0)
            l++;
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: layer %d: latent_dim %d is odd, and i4 needs an even "
                        "quant_group (two values a byte)", (int)l, (int)p->layers[l].latent_dim);
    }
    p->quant_group = g;
    return MLA_OK;
}

static mla_status check_layers(const mla_cache_params *p)
{
    for (int32_t l = 0; l < p->n_layers; l++) {
        const mla_cache_layer_desc *d = &p->layers[l];
        if (d->latent_dim < 1 || d->latent_dim > MAX_DIM)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: layer %d: latent_dim is %d, expected 1 .. %d", (int)l,
                            (int)d->latent_dim, MAX_DIM);
        /* quant_group 0: resolve_group picks one that divides every width */
        if (is_quant(p->latent_dtype) && p->quant_group > 0 && d->latent_dim % p->quant_group)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: layer %d: latent_dim %d is not a multiple of "
                            "quant_group %d", (int)l, (int)d->latent_dim, (int)p->quant_group);
        if (d->rope_dim < 0 || d->rope_dim % 2 || d->rope_dim > MAX_DIM || d->rope_heads < 0 ||
            d->rope_heads > MAX_DIM || (d->rope_dim == 0) != (d->rope_heads == 0) ||
            (int64_t)d->rope_heads * d->rope_dim > MAX_DIM)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: layer %d: rope_heads %d, rope_dim %d (rope_dim must be "
                            "even; both 0 or both positive; at most %d values a token)", (int)l,
                            (int)d->rope_heads, (int)d->rope_dim, MAX_DIM);
        if (d->rope_dim > 0 && !d->rope_freqs)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: layer %d: rope_freqs is NULL with rope_dim %d",
                            (int)l, (int)d->rope_dim);
        for (int64_t i = 0; d->rope_dim > 0 && i < (int64_t)d->rope_heads * d->rope_dim / 2; i++)
            if (!isfinite(d->rope_freqs[i]))
                return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                                "cache params: layer %d: rope_freqs[%lld] is not finite", (int)l,
                                (long long)i);
        if (!isfinite(d->rope_position_scale) || d->rope_position_scale < 0)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: layer %d: rope_position_scale is %g", (int)l,
                            d->rope_position_scale);
        if (d->mha_kv_dim < 0 || d->mha_kv_dim > MAX_DIM)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: layer %d: mha_kv_dim is %d, expected 0 .. %d", (int)l,
                            (int)d->mha_kv_dim, MAX_DIM);
    }
    return MLA_OK;
}

/* Lay out the layers' sections in a block; sizes are bounded by the checks above (each layer's
 * sections < 2^24 values · 4 bytes · 2^16 slots), so only the running total can overflow. */
static mla_status layout(mla_cache *c, const mla_cache_params *p)
{
    const int64_t bt = c->block_tokens;
    size_t off = align_up((size_t)bt * sizeof(int64_t));
    int64_t bpt = 0, mha = 0;
    int rbits = mla_dtype_bits(c->rope_dtype);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer_desc *d = &p->layers[l];
        mla_cache_layer *L = &c->layers[l];
        L->fmt.latent_dim = d->latent_dim;
        L->fmt.rope_width = d->rope_heads * d->rope_dim;
        L->fmt.latent_dtype = c->latent_dtype;
        L->fmt.rope_dtype = c->rope_dtype;
        L->fmt.quant_group = is_quant(c->latent_dtype) ? c->quant_group : 0;
        L->rope_heads = d->rope_heads;
        L->rope_dim = d->rope_dim;
        L->pos_scale = d->rope_position_scale == 0 ? 1.0 : d->rope_position_scale;
        L->mha_kv_dim = d->mha_kv_dim;
        L->n_groups = is_quant(c->latent_dtype) ? d->latent_dim / c->quant_group : 0;
        L->latent_row_bytes = (size_t)d->latent_dim * (size_t)mla_dtype_bits(c->latent_dtype) / 8;
        L->scale_row_bytes = (size_t)L->n_groups * sizeof(float);
        L->rope_row_bytes = (size_t)L->fmt.rope_width * (size_t)rbits / 8;
        size_t sizes[3] = {L->latent_row_bytes, L->scale_row_bytes, L->rope_row_bytes};
        size_t *offs[3] = {&L->latent_off, &L->scale_off, &L->rope_off};
        for (int k = 0; k < 3; k++) {
            size_t sec = align_up(sizes[k] * (size_t)bt);
            *offs[k] = off;
            if (off > SIZE_MAX - sec || off + sec > (size_t)INT64_MAX / 2)
                return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                                "cache params: a block of %d tokens is too large at layer %d",
                                (int)bt, (int)l);
            off += sec;
        }
        bpt += (int64_t)(L->latent_row_bytes + L->scale_row_bytes + L->rope_row_bytes);
        mha += 2 * (int64_t)d->mha_kv_dim * rbits / 8;
        if (L->fmt.rope_width > c->max_rope_width)
            c->max_rope_width = L->fmt.rope_width;
        if (L->fmt.rope_width / 2 > c->max_rope_pairs)
            c->max_rope_pairs = L->fmt.rope_width / 2;
    }
    c->block_bytes = off;
    c->bytes_per_token = bpt;
    c->mha_bytes_per_token = mha;
    return MLA_OK;
}

static mla_status pool_size(mla_cache *c, const mla_cache_params *p)
{
    int64_t n;
    if (p->capacity_tokens > 0) {
        n = p->capacity_tokens / c->block_tokens + (p->capacity_tokens % c->block_tokens != 0);
    } else {
        n = (int64_t)((uint64_t)p->capacity_bytes / c->block_bytes);
        if (n < 1)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "cache params: capacity_bytes %lld is less than one block (%zu bytes)",
                            (long long)p->capacity_bytes, c->block_bytes);
    }
    size_t total;
    if (n > INT32_MAX || !mla_mul_size((size_t)n, c->block_bytes, &total))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "cache params: %lld blocks of %zu bytes do not fit in memory",
                        (long long)n, c->block_bytes);
    c->n_blocks = (int32_t)n;
    return MLA_OK;
}

MLA_API void mla_cache_destroy(mla_cache *c)
{
    if (!c)
        return;
    if (c->layers)
        for (int32_t l = 0; l < c->n_layers; l++)
            mla_free(c->layers[l].freqs);
    if (c->seqs)
        for (int32_t s = 0; s < c->n_seq_max; s++)
            mla_free(c->seqs[s].e);
    if (c->pool)
        pthread_mutex_destroy(&c->lock);
    mla_free(c->layers);
    mla_free(c->seqs);
    mla_free(c->written);
    mla_free(c->pool);
    mla_free(c->rc);
    mla_free(c->free_stack);
    mla_free(c->rope_buf);
    mla_free(c->rope_cos);
    mla_free(c->rope_sin);
    mla_free(c);
}

static mla_status alloc_all(mla_cache *c, const mla_cache_params *p)
{
    c->layers = mla_calloc((size_t)c->n_layers, sizeof *c->layers);
    c->seqs = mla_calloc((size_t)c->n_seq_max, sizeof *c->seqs);
    c->written = mla_calloc((size_t)c->n_seq_max * (size_t)c->n_layers, sizeof *c->written);
    if (!c->layers || !c->seqs || !c->written)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache: %d layers, %d sequences",
                        (int)c->n_layers, (int)c->n_seq_max);
    for (int32_t q = 0; q < c->n_seq_max; q++)
        c->seqs[q].written = c->written + (size_t)q * (size_t)c->n_layers;
    for (int32_t l = 0; l < c->n_layers; l++) {
        const mla_cache_layer_desc *d = &p->layers[l];
        if (d->rope_dim == 0)
            continue;
        size_t nf = (size_t)d->rope_heads * (size_t)d->rope_dim / 2;
        c->layers[l].freqs = mla_alloc(nf * sizeof(float));
        if (!c->layers[l].freqs)
            return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache: layer %d rope_freqs", (int)l);
        memcpy(c->layers[l].freqs, d->rope_freqs, nf * sizeof(float));
    }
    mla_status st = layout(c, p);
    if (st == MLA_OK)
        st = pool_size(c, p);
    if (st != MLA_OK)
        return st;
    /* Zeroed so that the never-written parts of a block (padding, unused slots) hold no garbage. */
    c->pool = mla_calloc((size_t)c->n_blocks, c->block_bytes);
    c->rc = mla_calloc((size_t)c->n_blocks, sizeof *c->rc);
    c->free_stack = mla_calloc((size_t)c->n_blocks, sizeof *c->free_stack);
    c->rope_buf = mla_calloc((size_t)c->max_rope_width + 1, sizeof *c->rope_buf);
    c->rope_cos = mla_calloc((size_t)c->max_rope_pairs + 1, sizeof *c->rope_cos);
    c->rope_sin = mla_calloc((size_t)c->max_rope_pairs + 1, sizeof *c->rope_sin);
    if (!c->pool || !c->rc || !c->free_stack || !c->rope_buf || !c->rope_cos || !c->rope_sin) {
        mla_free(c->pool);
        c->pool = NULL;
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache: pool of %d blocks of %zu bytes",
                        (int)c->n_blocks, c->block_bytes);
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        mla_free(c->pool);
        c->pool = NULL;
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache: pthread_mutex_init failed");
    }
    mla__cache_blocks_reset(c);
    return MLA_OK;
}

MLA_API mla_status mla_cache_create(const mla_cache_params *params, mla_cache **out)
{
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    mla_status st = mla_params_read(&p, sizeof p, params, "cache params");
    if (st != MLA_OK)
        return st;
    if (!out)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_create: out is NULL");
    if ((st = check_params(&p)) != MLA_OK)
        return st;
    mla_cache_layer_desc *layers = NULL;
    if ((st = read_layers(&p, &layers)) != MLA_OK)
        return st;
    p.layers = layers;
    if ((st = check_layers(&p)) != MLA_OK || (st = resolve_group(&p)) != MLA_OK) {
        mla_free(layers);
        return st;
    }
    mla_cache *c = mla_calloc(1, sizeof *c);
    if (!c) {
        mla_free(layers);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "cache: handle");
    }
    c->n_layers = p.n_layers;
    c->latent_dtype = p.latent_dtype;
    c->rope_dtype = p.rope_dtype;
    c->quant_group = is_quant(p.latent_dtype) ? p.quant_group : 0;
    c->block_tokens = p.block_tokens;
    c->n_seq_max = p.n_seq_max;
    st = alloc_all(c, &p);
    mla_free(layers);
    if (st != MLA_OK) {
        mla_cache_destroy(c);
        return st;
    }
    *out = c;
    return MLA_OK;
}

/* Token slots referenced by at least one entry: a shared slot counts once. */
static mla_status count_slots(const mla_cache *c, int64_t *tokens)
{
    size_t n_slots = (size_t)c->n_blocks * (size_t)c->block_tokens;
    unsigned char *seen = mla_calloc(n_slots / 8 + 1, 1);
    if (!seen)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "mla_cache_get_stats: %zu slots", n_slots);
    int64_t count = 0;
    for (int32_t s = 0; s < c->n_seq_max; s++) {
        const mla_cache_seq *q = &c->seqs[s];
        for (int64_t i = 0; i < q->n_e; i++) {
            size_t base = (size_t)q->e[i].block * (size_t)c->block_tokens + (size_t)q->e[i].off;
            for (int32_t t = 0; t < q->e[i].n; t++) {
                size_t k = base + (size_t)t;
                if (!(seen[k / 8] & (1u << (k % 8)))) {
                    seen[k / 8] |= (unsigned char)(1u << (k % 8));
                    count++;
                }
            }
        }
    }
    mla_free(seen);
    *tokens = count;
    return MLA_OK;
}

MLA_API mla_status mla_cache_get_stats(const mla_cache *c, mla_cache_stats *stats,
                                       size_t struct_size)
{
    if (!c || !stats)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_get_stats: %s is NULL",
                        !c ? "cache" : "stats");
    if (struct_size < sizeof(size_t))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_get_stats: struct_size is %zu",
                        struct_size);
    mla_cache_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    mla_status st = count_slots(c, &s.tokens_used);
    if (st != MLA_OK)
        return st;
    s.bytes_per_token = c->bytes_per_token;
    s.mha_bytes_per_token = c->mha_bytes_per_token;
    s.block_bytes = (int64_t)c->block_bytes;
    s.blocks_total = c->n_blocks;
    s.blocks_free = mla__cache_blocks_free(c);
    s.bytes_used = (s.blocks_total - s.blocks_free) * s.block_bytes;
    s.capacity_tokens = (int64_t)c->n_blocks * c->block_tokens;
    s.quant_group = c->quant_group;
    return mla_params_write(stats, struct_size, &s, sizeof s, "cache stats");
}

mla_status mla__cache_layer_format(const mla_cache *c, int32_t layer, mla_cache_layer_format *fmt)
{
    if (!c || !fmt)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache layer format: NULL argument");
    if (layer < 0 || layer >= c->n_layers)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "cache: layer %d out of range (%d layers)",
                        (int)layer, (int)c->n_layers);
    *fmt = c->layers[layer].fmt;
    return MLA_OK;
}

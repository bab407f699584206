/*
 * The struct getters of a layer: mla_layer_get_geometry gives back, field by field, the geometry a
 * layer was built from (converted, MHA baseline, rebuilt from tensors); mla_layer_cache_desc
 * describes the cache of a layer with linear RoPE scaling. Both honour the caller's struct_size
 * (a shorter struct gets only its prefix, a longer one zeros past ours) and refuse NULLs and
 * a too-small struct_size, leaving the output untouched.
 */
#include <math.h>
#include <stddef.h>

#include "util.h"

static int same_geometry(const mla_geometry *a, const mla_geometry *b)
{
    return a->d_model == b->d_model && a->n_heads == b->n_heads &&
           a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
           a->rope_theta == b->rope_theta && a->rope_scaling == b->rope_scaling &&
           a->rope_scaling_factor == b->rope_scaling_factor && a->qkv_bias == b->qkv_bias;
}

static void check_geometry(const char *what, const mla_layer *l, const mla_geometry *want)
{
    mla_geometry g;
    memset(&g, 0x5a, sizeof g);
    mla_status st = mla_layer_get_geometry(l, &g, sizeof g);
    CHECK(st == MLA_OK && g.struct_size == sizeof g && same_geometry(&g, want),
          "%s: geometry d %d, heads %d/%d × %d, theta %g, scaling %d × %g, bias %d as given",
          what, g.d_model, g.n_heads, g.n_kv_heads, g.head_dim, g.rope_theta,
          (int)g.rope_scaling, g.rope_scaling_factor, g.qkv_bias);
}

/* A newer caller's geometry: ours plus a field. */
typedef struct newer_geometry {
    mla_geometry g;
    int64_t future;
} newer_geometry;

static void geometry_struct_size(const mla_layer *l, const mla_geometry *want)
{
    newer_geometry n;
    memset(&n, 0x5a, sizeof n);
    mla_status st = mla_layer_get_geometry(l, &n.g, sizeof n);
    CHECK(st == MLA_OK && n.g.struct_size == sizeof n && same_geometry(&n.g, want) &&
          n.future == 0, "larger struct_size: our fields, then zeros");

    mla_geometry g;
    memset(&g, 0x5a, sizeof g);
    size_t size = offsetof(mla_geometry, rope_theta);
    st = mla_layer_get_geometry(l, &g, size);
    const unsigned char *bytes = (const unsigned char *)&g;
    int untouched = 1;
    for (size_t i = size; i < sizeof g; i++)
        untouched &= bytes[i] == 0x5a;
    CHECK(st == MLA_OK && g.struct_size == size && g.d_model == want->d_model &&
          g.n_heads == want->n_heads && g.n_kv_heads == want->n_kv_heads &&
          g.head_dim == want->head_dim && untouched,
          "smaller struct_size %zu: the sizes written, nothing past them", size);
}

static void geometry_errors(const mla_layer *l)
{
    mla_geometry g, before;
    memset(&g, 0x5a, sizeof g);
    memcpy(&before, &g, sizeof g); /* padding included */
    mla_status st = mla_layer_get_geometry(NULL, &g, sizeof g);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "layer") &&
          memcmp(&g, &before, sizeof g) == 0, "NULL layer refused, g untouched: %s",
          mla_last_error());
    st = mla_layer_get_geometry(l, NULL, sizeof g);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "geometry"),
          "NULL g refused: %s", mla_last_error());
    st = mla_layer_get_geometry(l, &g, 2);
    CHECK(st == MLA_ERR_INVALID_ARGUMENT && strstr(mla_last_error(), "struct_size") &&
          memcmp(&g, &before, sizeof g) == 0, "struct_size 2 refused, g untouched: %s",
          mla_last_error());
}

/* The cache desc of a layer with linear RoPE scaling: the kept frequencies of MLA_ROPE_HIGH are
 * 0 .. r/2−1 of every KV head, θ_i = theta^(−2i/d_h), and positions scale by 1/factor. */
static void cache_desc(const mla_layer *l, const mla_geometry *g, int r, int d_kv)
{
    mla_cache_layer_desc d;
    memset(&d, 0x5a, sizeof d);
    mla_status st = mla_layer_cache_desc(l, &d, sizeof d);
    int freq_ok = st == MLA_OK && d.rope_freqs != NULL;
    for (int j = 0; freq_ok && j < g->n_kv_heads; j++)
        for (int i = 0; i < r / 2; i++) {
            double th = pow(g->rope_theta, -2.0 * i / g->head_dim);
            freq_ok &= fabs(d.rope_freqs[j * (r / 2) + i] - th) <= 1e-6 * th;
        }
    CHECK(st == MLA_OK && d.struct_size == sizeof d && d.latent_dim == d_kv * g->n_kv_heads &&
          d.rope_heads == g->n_kv_heads && d.rope_dim == r && freq_ok &&
          fabs(d.rope_position_scale - 1.0 / g->rope_scaling_factor) < 1e-15 &&
          d.mha_kv_dim == g->n_kv_heads * g->head_dim,
          "cache desc: latent %d, rope %d × %d, θ, position scale %g = 1/factor", d.latent_dim,
          d.rope_heads, d.rope_dim, d.rope_position_scale);

    /* An older caller's desc, without mha_kv_dim. */
    mla_cache_layer_desc o;
    memset(&o, 0x5a, sizeof o);
    const int32_t sentinel = o.mha_kv_dim;
    size_t size = offsetof(mla_cache_layer_desc, mha_kv_dim);
    st = mla_layer_cache_desc(l, &o, size);
    CHECK(st == MLA_OK && o.struct_size == size && o.latent_dim == d.latent_dim &&
          o.rope_freqs == d.rope_freqs && o.rope_position_scale == d.rope_position_scale &&
          o.mha_kv_dim == sentinel, "cache desc with struct_size %zu: no byte past it", size);

    mla_cache_layer_desc before;
    memcpy(&before, &d, sizeof d);
    CHECK(mla_layer_cache_desc(NULL, &d, sizeof d) == MLA_ERR_INVALID_ARGUMENT &&
          memcmp(&d, &before, sizeof d) == 0, "cache desc: NULL layer refused, desc untouched");
    CHECK(mla_layer_cache_desc(l, NULL, sizeof d) == MLA_ERR_INVALID_ARGUMENT,
          "cache desc: NULL desc refused");
    CHECK(mla_layer_cache_desc(l, &d, 2) == MLA_ERR_INVALID_ARGUMENT &&
          memcmp(&d, &before, sizeof d) == 0,
          "cache desc: struct_size 2 refused, desc untouched: %s", mla_last_error());
}

int main(void)
{
    src_layer s;
    src_init(&s, 32, 4, 2, 8, 1, 4242);
    /* Every field away from its default, so that a default cannot pass for the given value. */
    s.g.rope_theta = 500000.0;
    s.g.rope_scaling = MLA_ROPE_SCALING_LINEAR;
    s.g.rope_scaling_factor = 4.0;
    const int r = 4, d_kv = 2;
    mla_convert_params p;
    mla_convert_default_params(&p, sizeof p);
    p.rope_strategy = MLA_ROPE_HIGH;
    p.rope_dim = r;
    p.d_kv = d_kv;

    mla_layer *l = NULL, *mha = NULL, *rebuilt = NULL;
    CHECK(mla_layer_convert(&s.g, &s.w, NULL, &p, &l) == MLA_OK, "convert: %s",
          mla_last_error());
    CHECK(mla_layer_from_mha(&s.g, &s.w, &mha) == MLA_OK, "from_mha: %s", mla_last_error());
    if (!l || !mha)
        return tap_done();
    mla_layer_info info;
    mla_layer_get_info(l, &info, sizeof info);
    mla_tensor t[16];
    for (int i = 0; i < info.n_tensors && i < 16; i++)
        mla_layer_tensor(l, i, &t[i]);
    CHECK(mla_layer_from_tensors(&s.g, r, d_kv, t, info.n_tensors, &rebuilt) == MLA_OK,
          "from_tensors: %s", mla_last_error());

    check_geometry("converted", l, &s.g);
    check_geometry("MHA baseline", mha, &s.g);
    if (rebuilt)
        check_geometry("rebuilt from tensors", rebuilt, &s.g);
    geometry_struct_size(l, &s.g);
    geometry_errors(l);
    cache_desc(l, &s.g, r, d_kv);

    mla_layer_destroy(rebuilt);
    mla_layer_destroy(mha);
    mla_layer_destroy(l);
    src_free(&s);
    return tap_done();
}

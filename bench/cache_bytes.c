/*
 * Bytes per token of the latent cache against the MHA/GQA cache it replaces, for the
 * SmolLM-135M and Llama-2-7B shapes, d_kv ∈ {8, 16, 32}, r ∈ {4, 8, 16}, at each latent storage
 * type. Every figure is what mla_cache_get_stats reports for a cache created with that geometry
 * (not a formula restated here). The RoPE part is stored as f32 beside an f32 latent, bf16 beside
 * bf16, else f16; the MHA figure is K and V in that same type.
 *
 *   cache_bytes            all shapes
 *   cache_bytes --headline only Llama-2-7B, d_kv 16, r 4 (the paper's headline)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

typedef struct shape {
    const char *name;
    int n_layers, n_kv, d_h;
} shape;

static const shape shapes[] = {
    {"SmolLM-135M", 30, 3, 64},
    {"Llama-2-7B", 32, 32, 128},
};

static const mla_dtype latent_types[] = {MLA_DTYPE_F32, MLA_DTYPE_F16, MLA_DTYPE_BF16,
                                         MLA_DTYPE_I8, MLA_DTYPE_I4};

static mla_dtype rope_type(mla_dtype latent)
{
    return latent == MLA_DTYPE_F32 ? MLA_DTYPE_F32
         : latent == MLA_DTYPE_BF16 ? MLA_DTYPE_BF16 : MLA_DTYPE_F16;
}

static int stats(const shape *s, int d_kv, int r, mla_dtype lt, mla_cache_stats *st, int *group)
{
    mla_cache_layer_desc *L = calloc((size_t)s->n_layers, sizeof *L);
    float *freqs = calloc((size_t)(s->n_kv * r / 2), sizeof *freqs);
    for (int l = 0; l < s->n_layers; l++) {
        mla_cache_layer_desc_default_params(&L[l], sizeof L[l]);
        L[l].latent_dim = d_kv * s->n_kv;
        L[l].rope_heads = s->n_kv;
        L[l].rope_dim = r;
        L[l].rope_freqs = freqs;
        L[l].mha_kv_dim = s->n_kv * s->d_h;
    }
    mla_cache_params p;
    mla_cache_default_params(&p, sizeof p);
    p.n_layers = s->n_layers;
    p.layers = L;
    p.latent_dtype = lt;
    p.rope_dtype = rope_type(lt);
    p.capacity_tokens = 64; /* quant_group left at 0: the library picks it (stats report it) */
    mla_cache *c = NULL;
    mla_status e = mla_cache_create(&p, &c);
    if (e == MLA_OK)
        e = mla_cache_get_stats(c, st, sizeof *st);
    *group = e == MLA_OK ? st->quant_group : 0;
    if (e != MLA_OK)
        fprintf(stderr, "%s d_kv %d r %d %s: %s\n", s->name, d_kv, r, mla_dtype_name(lt),
                mla_last_error());
    mla_cache_destroy(c);
    free(L);
    free(freqs);
    return e == MLA_OK;
}

static void row(const shape *s, int d_kv, int r)
{
    int R = d_kv * s->n_kv, mla_values = R + s->n_kv * r, mha_values = 2 * s->n_kv * s->d_h;
    printf("%-12s d_kv %2d r %2d | values/token/layer %5d vs MHA %5d (%.2f%% saved)\n", s->name,
           d_kv, r, mla_values, mha_values, 100.0 * (1.0 - (double)mla_values / mha_values));
    for (size_t k = 0; k < sizeof latent_types / sizeof latent_types[0]; k++) {
        mla_cache_stats st;
        int g;
        if (!stats(s, d_kv, r, latent_types[k], &st, &g))
            continue;
        char group[16] = "";
        if (latent_types[k] == MLA_DTYPE_I8 || latent_types[k] == MLA_DTYPE_I4)
            snprintf(group, sizeof group, " g%d", g);
        printf("    latent %-4s%-4s rope %-4s  %8lld B/token   MHA %-4s %8lld B/token   "
               "%6.2f%% saved\n", mla_dtype_name(latent_types[k]), group,
               mla_dtype_name(rope_type(latent_types[k])), (long long)st.bytes_per_token,
               mla_dtype_name(rope_type(latent_types[k])), (long long)st.mha_bytes_per_token,
               100.0 * (1.0 - (double)st.bytes_per_token / (double)st.mha_bytes_per_token));
    }
}

int main(int argc, char **argv)
{
    int headline = argc > 1 && strcmp(argv[1], "--headline") == 0;
    printf("libmla %s: latent cache bytes per token (all layers), from mla_cache_get_stats\n",
           mla_version_string());
    if (headline) {
        row(&shapes[1], 16, 4);
        return 0;
    }
    const int d_kvs[3] = {8, 16, 32}, rs[3] = {4, 8, 16};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        printf("\n%s: %d layers, %d KV heads, head dim %d\n", shapes[s].name, shapes[s].n_layers,
               shapes[s].n_kv, shapes[s].d_h);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                row(&shapes[s], d_kvs[i], rs[j]);
    }
    return 0;
}

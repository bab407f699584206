//! The struct getters through the safe API: `Layer::geometry` (`mla_layer_get_geometry`) gives
//! back every field of the geometry a layer was built from, and `Layer::cache_desc` the scaled
//! positions of linear RoPE scaling; a cache built from those descs (an array the library steps
//! through by its `struct_size`) holds them.
mod common;

use common::SplitMix64;
use mla::*;

fn same(a: &sys::mla_geometry, b: &sys::mla_geometry) -> bool {
    a.d_model == b.d_model
        && a.n_heads == b.n_heads
        && a.n_kv_heads == b.n_kv_heads
        && a.head_dim == b.head_dim
        && a.rope_theta == b.rope_theta
        && a.rope_scaling == b.rope_scaling
        && a.rope_scaling_factor == b.rope_scaling_factor
        && a.qkv_bias == b.qkv_bias
}

#[test]
fn geometry_is_the_given_one() {
    let mut rng = SplitMix64::new();
    // Every field away from its default.
    let g = Geometry::new(32, 4, 2, 8)
        .rope_theta(123456.0)
        .rope_scaling(RopeScaling::Linear, 2.5)
        .qkv_bias(true);
    let (wq, wk, wv, wo) = (
        rng.fill(32 * 32, 0.25),
        rng.fill(16 * 32, 0.25),
        rng.fill(16 * 32, 0.25),
        rng.fill(32 * 32, 0.25),
    );
    let (bq, bk, bv) = (rng.fill(32, 0.1), rng.fill(16, 0.1), rng.fill(16, 0.1));
    let w = Weights::new(&wq, &wk, &wv, &wo).biases(&bq, &bk, &bv);
    let mla = Layer::convert(
        &g,
        &w,
        None,
        &ConvertParams::new().unwrap().rope_dim(4).d_kv(2),
    )
    .unwrap();
    let mha = Layer::from_mha(&g, &w).unwrap();
    for layer in [&mla, &mha] {
        let got = layer.geometry().unwrap();
        assert!(same(got.raw(), g.raw()), "{:?} != {:?}", got.raw(), g.raw());
        assert_eq!(
            got.raw().struct_size,
            std::mem::size_of::<sys::mla_geometry>()
        );
    }

    let descs = [mla.cache_desc().unwrap(), mha.cache_desc().unwrap()];
    assert_eq!(descs[0].rope_position_scale, 1.0 / 2.5);
    assert_eq!(
        (descs[0].latent_dim, descs[0].rope_heads, descs[0].rope_dim),
        (4, 2, 4)
    );
    assert_eq!(descs[1].latent_dim, 16);
    let cache = Cache::new(
        &descs,
        &CacheParams::new()
            .unwrap()
            .latent_dtype(DType::F32)
            .rope_dtype(DType::F32)
            .capacity_tokens(16),
    )
    .unwrap();
    let s = cache.stats().unwrap();
    // f32: (latent + RoPE part) per layer, against both layers' K and V.
    assert_eq!(s.bytes_per_token, 4 * ((4 + 2 * 4) + (16 + 16)));
    assert_eq!(s.mha_bytes_per_token, 4 * 2 * (16 + 16));
    assert_eq!(s.quant_group, 0);
    // I8 latents with quant_group left out: the largest power of two up to 32 dividing both
    // widths (4 and 16) is 4, and the bytes per token are the codes plus one f32 scale a group.
    let cache = Cache::new(
        &descs,
        &CacheParams::new()
            .unwrap()
            .latent_dtype(DType::I8)
            .rope_dtype(DType::F32)
            .capacity_tokens(16),
    )
    .unwrap();
    let s = cache.stats().unwrap();
    assert_eq!(s.quant_group, 4);
    assert_eq!(s.bytes_per_token, (4 + 4 + 8 * 4) + (16 + 4 * 4 + 16 * 4));
}

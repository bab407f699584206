//! Two threads decoding two sequences with one shared Layer (Sync), each with its own Cache and
//! Attn, give what one thread doing both gives.
mod common;

use common::SplitMix64;
use mla::*;

const D: usize = 64;
const STEPS: usize = 24;

fn decode(layer: &Layer, seq: i32, x: &[f32]) -> Vec<f32> {
    let p = CacheParams::new()
        .unwrap()
        .latent_dtype(DType::F32)
        .rope_dtype(DType::F32)
        .capacity_tokens(128)
        .block_tokens(4)
        .n_seq_max(2);
    let mut cache = Cache::new(&[layer.cache_desc().unwrap()], &p).unwrap();
    let mut attn = Attn::new(&AttnParams::new().unwrap()).unwrap();
    let mut out = attn
        .forward_seq(layer, &mut cache, 0, &x[..4 * D], seq, 0)
        .unwrap();
    for t in 4..STEPS {
        out.extend(
            attn.forward_seq(layer, &mut cache, 0, &x[t * D..(t + 1) * D], seq, t as i64)
                .unwrap(),
        );
    }
    assert_eq!(cache.seq_length(seq).unwrap(), STEPS as i64);
    out
}

#[test]
fn two_threads_two_sequences() {
    let mut rng = SplitMix64::new();
    let (wq, wk, wv, wo) = (
        rng.fill(64 * 64, 0.125),
        rng.fill(32 * 64, 0.125),
        rng.fill(32 * 64, 0.125),
        rng.fill(64 * 64, 0.125),
    );
    let g = Geometry::new(64, 4, 2, 16);
    let layer = Layer::convert(
        &g,
        &Weights::new(&wq, &wk, &wv, &wo),
        None,
        &ConvertParams::new().unwrap().rope_dim(4).d_kv(4),
    )
    .unwrap();
    let xs = [rng.fill(STEPS * D, 1.0), rng.fill(STEPS * D, 1.0)];
    let serial = [decode(&layer, 0, &xs[0]), decode(&layer, 1, &xs[1])];
    let barrier = std::sync::Barrier::new(2);
    let parallel: Vec<Vec<f32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (layer, x, barrier) = (&layer, &xs[i], &barrier);
                s.spawn(move || {
                    barrier.wait();
                    decode(layer, i as i32, x)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..2 {
        assert_eq!(parallel[i], serial[i], "sequence {i}");
    }
    assert_ne!(serial[0], serial[1]);
}

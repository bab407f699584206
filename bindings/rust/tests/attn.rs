//! Identities the library must satisfy through the safe API: a full-rank, full-RoPE conversion
//! reproduces the MHA baseline; absorbed and materialized paths agree.
mod common;

use common::SplitMix64;
use mla::*;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn run(layer: &Layer, x: &[f32], path: AttnPath) -> Vec<f32> {
    let p = CacheParams::new()
        .unwrap()
        .latent_dtype(DType::F32)
        .rope_dtype(DType::F32)
        .capacity_tokens(64);
    let mut cache = Cache::new(&[layer.cache_desc().unwrap()], &p).unwrap();
    let mut attn = Attn::new(&AttnParams::new().unwrap().path(path)).unwrap();
    let mut y = attn
        .forward_seq(layer, &mut cache, 0, &x[..8 * 48], 0, 0)
        .unwrap();
    for t in 8..12 {
        y.extend(
            attn.forward_seq(layer, &mut cache, 0, &x[t * 48..(t + 1) * 48], 0, t as i64)
                .unwrap(),
        );
    }
    y
}

#[test]
fn full_rank_conversion_is_the_mha_layer() {
    let mut rng = SplitMix64::new();
    let g = Geometry::new(48, 6, 2, 8).rope_theta(500.0).qkv_bias(true);
    let (wq, wk, wv, wo) = projections(&mut rng);
    let (bq, bk, bv) = (rng.fill(48, 0.1), rng.fill(16, 0.1), rng.fill(16, 0.1));
    let w = Weights::new(&wq, &wk, &wv, &wo).biases(&bq, &bk, &bv);
    let x = rng.fill(12 * 48, 1.0);
    let mha = Layer::from_mha(&g, &w).unwrap();
    assert_eq!(mha.info().unwrap().kind, Some(LayerKind::Mha));
    let full = Layer::convert(
        &g,
        &w,
        None,
        &ConvertParams::new().unwrap().rope_dim(8).d_kv(8),
    )
    .unwrap();
    let want = run(&mha, &x, AttnPath::Auto);
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for path in [AttnPath::Absorbed, AttnPath::Materialized] {
        let got = run(&full, &x, path);
        assert!(
            max_abs_diff(&got, &want) < 1e-4 * scale,
            "{path:?}: {}",
            max_abs_diff(&got, &want)
        );
    }
    // At reduced rank the two paths still agree with each other, and differ from MHA.
    let low = Layer::convert(
        &g,
        &w,
        None,
        &ConvertParams::new()
            .unwrap()
            .rope_dim(2)
            .d_kv(2)
            .rope_strategy(RopeStrategy::Low),
    )
    .unwrap();
    let a = run(&low, &x, AttnPath::Absorbed);
    let m = run(&low, &x, AttnPath::Materialized);
    assert!(max_abs_diff(&a, &m) < 1e-4 * scale);
    assert!(max_abs_diff(&a, &want) > 1e-2);
    let info = low.info().unwrap();
    assert_eq!(
        (info.rope_dim, info.d_kv, info.latent_dim, info.rope_width),
        (2, 2, 4, 4)
    );
    assert_eq!(low.rope_dims(1).unwrap(), vec![3, 7]);
}

/// Random q, k, v, o projections of the 48-wide layer with 6 heads and 2 KV heads of 8.
fn projections(rng: &mut SplitMix64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        rng.fill(48 * 48, 0.25),
        rng.fill(16 * 48, 0.25),
        rng.fill(16 * 48, 0.25),
        rng.fill(48 * 48, 0.25),
    )
}

/// max_scratch_bytes bounds the scratch a handle keeps: one byte under the fastest plan's need,
/// a 300-token prompt takes a plan of less scratch and still equals the MHA layer (full rank);
/// under every plan's need it fails with Capacity, naming the need, and appends nothing;
/// release_scratch frees it.
#[test]
fn scratch_limit_and_release() {
    let mut rng = SplitMix64::new();
    let g = Geometry::new(48, 6, 2, 8).rope_theta(500.0);
    let (wq, wk, wv, wo) = projections(&mut rng);
    let w = Weights::new(&wq, &wk, &wv, &wo);
    let n = 300;
    let x = rng.fill(n * 48, 1.0);
    let mha = Layer::from_mha(&g, &w).unwrap();
    let full = Layer::convert(
        &g,
        &w,
        None,
        &ConvertParams::new().unwrap().rope_dim(8).d_kv(8),
    )
    .unwrap();
    let cp = CacheParams::new()
        .unwrap()
        .latent_dtype(DType::F32)
        .rope_dtype(DType::F32)
        .capacity_tokens(512);
    let run = |layer: &Layer, attn: &mut Attn| {
        let mut cache = Cache::new(&[layer.cache_desc().unwrap()], &cp).unwrap();
        let y = attn.forward_seq(layer, &mut cache, 0, &x, 0, 0);
        (y, cache.seq_length(0).unwrap())
    };
    let params = AttnParams::new().unwrap().path(AttnPath::Materialized);
    let want = run(&mha, &mut Attn::new(&params).unwrap()).0.unwrap();
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));

    let mut free = Attn::new(&params).unwrap();
    assert_eq!(free.scratch_bytes().unwrap(), 0);
    let got = run(&full, &mut free).0.unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-4 * scale);
    let most = free.scratch_bytes().unwrap();
    free.release_scratch().unwrap();
    assert_eq!(free.scratch_bytes().unwrap(), 0);

    let mut low = Attn::new(&params.max_scratch_bytes(most - 1)).unwrap();
    let got = run(&full, &mut low).0.unwrap();
    let least = low.scratch_bytes().unwrap();
    assert!(0 < least && least < most, "{least} vs {most}");
    assert!(max_abs_diff(&got, &want) < 1e-4 * scale);

    let mut tiny = Attn::new(&params.max_scratch_bytes(least - 1)).unwrap();
    let (y, len) = run(&full, &mut tiny);
    let e = y.unwrap_err();
    assert_eq!(e.status(), Status::Capacity);
    assert!(
        e.message().contains(&format!("needs {least} bytes")),
        "{}",
        e.message()
    );
    assert_eq!(len, 0);
    assert_eq!(tiny.scratch_bytes().unwrap(), 0);

    let e = Attn::new(&params.max_scratch_bytes(-1)).unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument);
}

/// A random 48-wide layer (6 heads, 2 KV heads) converted at d_kv 4, and an n-token prompt.
fn layer_and_prompt(n: usize) -> (Layer, Vec<f32>) {
    let mut rng = SplitMix64::new();
    let g = Geometry::new(48, 6, 2, 8).rope_theta(500.0);
    let (wq, wk, wv, wo) = projections(&mut rng);
    let w = Weights::new(&wq, &wk, &wv, &wo);
    let x = rng.fill(n * 48, 1.0);
    let layer = Layer::convert(&g, &w, None, &ConvertParams::new().unwrap().d_kv(4)).unwrap();
    (layer, x)
}

/// forward_with_progress: the total is the closed form n·(n+1)/2 for a fresh n-token prompt,
/// the last call has done == total, and the output is forward's; Break cancels with nothing
/// appended; a panic in the callback cancels and resumes after the call.
#[test]
fn forward_progress_and_cancel() {
    let n = 200usize;
    let (layer, x) = layer_and_prompt(n);
    let cp = CacheParams::new().unwrap().capacity_tokens(2048);
    let mut cache = Cache::new(&[layer.cache_desc().unwrap()], &cp).unwrap();
    let mut attn = Attn::new(&AttnParams::new().unwrap().n_threads(2)).unwrap();
    let seq = vec![0i32; n];
    let pos: Vec<i64> = (0..n as i64).collect();
    let want = attn.forward_seq(&layer, &mut cache, 0, &x, 1, 0).unwrap();

    let mut calls = Vec::new();
    let mut out = vec![0.0f32; n * 48];
    attn.forward_with_progress(
        &layer,
        &mut cache,
        0,
        &x,
        &seq,
        &pos,
        &mut out,
        &mut |d, t| {
            calls.push((d, t));
            std::ops::ControlFlow::Continue(())
        },
    )
    .unwrap();
    let total = (n * (n + 1) / 2) as i64;
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|&(_, t)| t == total), "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    assert_eq!(calls.last().unwrap().0, total);
    assert_eq!(out, want);

    let mut out = vec![7.0f32; 48];
    let e = attn
        .forward_with_progress(
            &layer,
            &mut cache,
            0,
            &x[..48],
            &[2],
            &[0],
            &mut out,
            &mut |_, _| std::ops::ControlFlow::Break(()),
        )
        .unwrap_err();
    assert_eq!(e.status(), Status::Cancelled);
    assert_eq!(cache.seq_length(2).unwrap(), 0);
    assert!(out.iter().all(|&v| v == 7.0));

    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut out = vec![0.0f32; 48];
        let _ = attn.forward_with_progress(
            &layer,
            &mut cache,
            0,
            &x[..48],
            &[3],
            &[0],
            &mut out,
            &mut |_, _| panic!("from the callback"),
        );
    }));
    assert!(r.is_err());
    assert_eq!(cache.seq_length(3).unwrap(), 0);
    // The callback is gone: a plain forward runs.
    attn.forward_seq(&layer, &mut cache, 0, &x[..48], 3, 0)
        .unwrap();
}

/// Weights that bf16 holds exactly (float32 with the low 16 bits clear): stored as BF16 they
/// are the same numbers, so the layer's output equals the float32 layer's (up to the order of
/// the float32 sums); the stored patterns are the high halves. A value beyond f16's range makes
/// F16 fail with Numerical and leaves the layer as it was.
#[test]
fn weights_in_16_bits() {
    let mut rng = SplitMix64::new();
    let g = Geometry::new(48, 6, 2, 8).rope_theta(500.0);
    let bf16_exact = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| f32::from_bits(x.to_bits() & 0xffff_0000))
            .collect()
    };
    let (wq, wk, wv, wo) = projections(&mut rng);
    let (wq, wk, wv, mut wo) = (
        bf16_exact(wq),
        bf16_exact(wk),
        bf16_exact(wv),
        bf16_exact(wo),
    );
    let x = rng.fill(12 * 48, 1.0);
    let w = Weights::new(&wq, &wk, &wv, &wo);
    let f32_layer = Layer::from_mha(&g, &w).unwrap();
    let mut layer = Layer::from_mha(&g, &w).unwrap();
    layer.set_weight_dtype(DType::Bf16).unwrap();
    assert_eq!(layer.info().unwrap().weight_dtype, Some(DType::Bf16));
    let bits = layer
        .tensor("q_proj.weight")
        .unwrap()
        .as_u16()
        .unwrap()
        .to_vec();
    assert!(bits
        .iter()
        .zip(&wq)
        .all(|(&b, &v)| b as u32 == v.to_bits() >> 16));
    assert!(layer.tensor("q_proj.weight").unwrap().as_f32().is_none());
    let want = run(&f32_layer, &x, AttnPath::Auto);
    let got = run(&layer, &x, AttnPath::Auto);
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&got, &want) < 1e-5 * scale,
        "{}",
        max_abs_diff(&got, &want)
    );
    layer.set_weight_dtype(DType::F32).unwrap();
    assert_eq!(
        layer.tensor("o_proj.weight").unwrap().as_f32().unwrap(),
        &wo[..]
    );

    wo[3 * 48 + 7] = 1e5;
    let mut big = Layer::from_mha(&g, &Weights::new(&wq, &wk, &wv, &wo)).unwrap();
    let e = big.set_weight_dtype(DType::F16).unwrap_err();
    assert_eq!(e.status(), Status::Numerical);
    assert!(
        e.message().contains("o_proj.weight") && e.message().contains("row 3, column 7"),
        "{e}"
    );
    assert_eq!(big.info().unwrap().weight_dtype, Some(DType::F32));
    assert_eq!(
        big.tensor("o_proj.weight").unwrap().as_f32().unwrap()[3 * 48 + 7],
        1e5
    );
    assert_eq!(
        big.set_weight_dtype(DType::I8).unwrap_err().status(),
        Status::InvalidArgument
    );
}

/// A 200-token prompt on two threads of the handle's pool and on two of OpenMP: the same plan,
/// each part the same computation wherever it runs, so the same bits; one thread (another cut
/// of the work into parts) within float32 rounding.
#[test]
fn pool_and_openmp_threads_agree() {
    let n = 200usize;
    let (layer, x) = layer_and_prompt(n);
    let mut outs = Vec::new();
    for (n_threads, threads) in [
        (2, AttnThreads::Pool),
        (2, AttnThreads::OpenMp),
        (1, AttnThreads::Pool),
    ] {
        let cp = CacheParams::new().unwrap().capacity_tokens(1024);
        let mut cache = Cache::new(&[layer.cache_desc().unwrap()], &cp).unwrap();
        let params = AttnParams::new()
            .unwrap()
            .n_threads(n_threads)
            .threads(threads);
        let mut attn = Attn::new(&params).unwrap();
        outs.push(attn.forward_seq(&layer, &mut cache, 0, &x, 1, 0).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    let scale = outs[2].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&outs[0], &outs[2]) <= 1e-5 * scale);
}

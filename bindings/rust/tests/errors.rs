//! Error mapping: every failure is an mla::Error with the C status and the library's message.
mod common;

use std::ops::ControlFlow;

use common::SplitMix64;
use mla::*;

struct W {
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
}

fn small() -> (Geometry, W) {
    let mut rng = SplitMix64::new();
    let w = W {
        wq: rng.fill(32 * 32, 0.25),
        wk: rng.fill(16 * 32, 0.25),
        wv: rng.fill(16 * 32, 0.25),
        wo: rng.fill(32 * 32, 0.25),
    };
    (Geometry::new(32, 4, 2, 8), w)
}

fn expect_err<T: std::fmt::Debug>(r: Result<T>, status: Status, needle: &str) -> Error {
    let e = r.expect_err("expected an error");
    assert_eq!(e.status(), status, "{e}");
    assert!(!e.message().is_empty());
    assert!(
        e.message().contains(needle),
        "{:?} does not mention {needle:?}",
        e.message()
    );
    e
}

#[test]
fn status_codes_and_messages() {
    for code in 1..sys::MLA_STATUS_COUNT {
        let s = Status::from_code(code);
        assert_eq!(s.code(), code);
        assert!(!matches!(s, Status::Unknown(_)), "{code}");
        assert_ne!(s.description(), Status::Unknown(999).description());
    }
    assert_eq!(Status::from_code(77), Status::Unknown(77));
    let (g, w) = small();
    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo);
    let e = expect_err(
        Layer::convert(
            &g,
            &weights,
            None,
            &ConvertParams::new().unwrap().rope_dim(3).d_kv(2),
        ),
        Status::InvalidArgument,
        "rope_dim",
    );
    assert!(e.to_string().starts_with("[InvalidArgument]"));
    // The message is the C side's, taken right after the call.
    // SAFETY: mla_last_error never returns NULL.
    let last = unsafe { std::ffi::CStr::from_ptr(sys::mla_last_error()) };
    assert_eq!(e.message(), last.to_str().unwrap());
}

#[test]
fn conversion_errors() {
    let (g, w) = small();
    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo);
    let p = || ConvertParams::new().unwrap().rope_dim(4);
    expect_err(
        Layer::convert(&g, &weights, None, &p().d_kv(13)),
        Status::InvalidArgument,
        "d_kv",
    );
    expect_err(
        Layer::convert(
            &g,
            &weights,
            None,
            &p().d_kv(2).rope_strategy(RopeStrategy::Norm2),
        ),
        Status::InvalidArgument,
        "",
    );
    let mut wv = w.wv.clone();
    wv[7] = f32::NAN;
    let bad = Weights::new(&w.wq, &w.wk, &wv, &w.wo);
    expect_err(
        Layer::convert(&g, &bad, None, &p().d_kv(2)),
        Status::Numerical,
        "",
    );
    let odd = Geometry::new(32, 4, 3, 8);
    expect_err(
        Layer::convert(
            &odd,
            &Weights::new(&w.wq, &w.wq[..24 * 32], &w.wq[..24 * 32], &w.wo),
            None,
            &p().d_kv(2),
        ),
        Status::InvalidArgument,
        "",
    );
}

#[test]
fn slices_are_checked_before_c_sees_them() {
    let (g, w) = small();
    let short = Weights::new(&w.wq, &w.wk[1..], &w.wv, &w.wo);
    expect_err(
        Layer::convert(&g, &short, None, &ConvertParams::new().unwrap()),
        Status::ShapeMismatch,
        "wk",
    );
    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo);
    let layer = Layer::convert(
        &g,
        &weights,
        None,
        &ConvertParams::new().unwrap().rope_dim(4).d_kv(2),
    )
    .unwrap();
    let mut cache = Cache::new(
        &[layer.cache_desc().unwrap()],
        &CacheParams::new().unwrap().capacity_tokens(16),
    )
    .unwrap();
    let mut attn = Attn::new(&AttnParams::new().unwrap()).unwrap();
    let mut out = vec![0.0; 64];
    expect_err(
        attn.forward(
            &layer,
            &mut cache,
            0,
            &[0.0; 63],
            &[0, 0],
            &[0, 1],
            &mut out,
        ),
        Status::ShapeMismatch,
        "x",
    );
    expect_err(
        attn.forward(&layer, &mut cache, 0, &[0.0; 64], &[0, 0], &[0], &mut out),
        Status::ShapeMismatch,
        "pos",
    );
    expect_err(
        cache.write(0, 0, 0, &[0.0; 5], &[]),
        Status::ShapeMismatch,
        "latent",
    );
    expect_err(
        cache.write(7, 0, 0, &[], &[]),
        Status::InvalidArgument,
        "layer 7",
    );
    assert_eq!(cache.seq_length(0).unwrap(), 0);
}

#[test]
fn sizes_that_overflow_are_errors_not_panics_or_short_reads() {
    // n_heads·head_dim·d_model = 2^64: wrapped to 0, empty slices would pass for the weights.
    let g = Geometry::new(1 << 24, 1 << 20, 1 << 20, 1 << 20);
    let empty = Weights::<f32>::new(&[], &[], &[], &[]);
    expect_err(
        Layer::convert(&g, &empty, None, &ConvertParams::new().unwrap()),
        Status::ShapeMismatch,
        "overflow",
    );
    expect_err(
        Layer::from_mha(&g, &empty),
        Status::ShapeMismatch,
        "overflow",
    );
    expect_err(
        Layer::from_tensors(
            &small().0,
            4,
            2,
            &[("o_proj.weight", &[1 << 32, 1 << 32], TensorData::F32(&[]))],
        ),
        Status::ShapeMismatch,
        "overflow",
    );
    // A read past the sequence is the library's error, before any allocation of that size.
    let (g, w) = small();
    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo);
    let layer = Layer::convert(
        &g,
        &weights,
        None,
        &ConvertParams::new().unwrap().rope_dim(4).d_kv(2),
    )
    .unwrap();
    let mut cache = Cache::new(
        &[layer.cache_desc().unwrap()],
        &CacheParams::new().unwrap().capacity_tokens(16),
    )
    .unwrap();
    cache.reserve(0, 0, 3).unwrap();
    for (first, n) in [
        (0, i64::MAX),
        (1, 1 << 40),
        (0, 4),
        (4, 0),
        (-1, 1),
        (0, -1),
    ] {
        expect_err(
            cache.read(0, 0, first, n),
            Status::InvalidArgument,
            "sequence 0",
        );
    }
    assert_eq!(cache.read(0, 0, 1, 2).unwrap().pos, vec![1, 2]);
}

#[test]
fn cache_and_attention_errors() {
    let (g, w) = small();
    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo);
    let layer = Layer::convert(
        &g,
        &weights,
        None,
        &ConvertParams::new().unwrap().rope_dim(4).d_kv(2),
    )
    .unwrap();
    let desc = layer.cache_desc().unwrap();
    expect_err(
        Cache::new(
            std::slice::from_ref(&desc),
            &CacheParams::new()
                .unwrap()
                .capacity_tokens(64)
                .block_tokens(0),
        ),
        Status::InvalidArgument,
        "",
    );
    let mut cache = Cache::new(
        &[desc],
        &CacheParams::new()
            .unwrap()
            .capacity_tokens(16)
            .block_tokens(8)
            .n_seq_max(2),
    )
    .unwrap();
    expect_err(cache.reserve(0, 0, 17), Status::Capacity, "");
    expect_err(cache.reserve(2, 0, 1), Status::InvalidArgument, "");
    let mut attn = Attn::new(&AttnParams::new().unwrap()).unwrap();
    let x = vec![0.5f32; 2 * 32];
    attn.forward_seq(&layer, &mut cache, 0, &x, 0, 0).unwrap();
    expect_err(
        attn.forward_seq(&layer, &mut cache, 0, &x, 0, 5),
        Status::InvalidArgument,
        "",
    );
    let mut nan = x.clone();
    nan[40] = f32::NAN;
    expect_err(
        attn.forward_seq(&layer, &mut cache, 0, &nan, 0, 2),
        Status::Numerical,
        "",
    );
    assert_eq!(cache.seq_length(0).unwrap(), 2, "nothing appended on error");
    // Position 2, once written in cache layer 0, is a repeat: refused; after removing it, it
    // computes again to the same output.
    let first = attn
        .forward_seq(&layer, &mut cache, 0, &x[32..], 0, 2)
        .unwrap();
    expect_err(
        attn.forward_seq(&layer, &mut cache, 0, &x[32..], 0, 2),
        Status::InvalidArgument,
        "repeat",
    );
    assert_eq!(
        cache.seq_length(0).unwrap(),
        3,
        "nothing appended on a repeat"
    );
    assert_eq!(cache.seq_written(0, 0).unwrap(), 3);
    expect_err(cache.seq_written(1, 0), Status::InvalidArgument, "layer 1");
    cache.seq_rm(0, 2, -1).unwrap();
    assert_eq!(cache.seq_written(0, 0).unwrap(), 2);
    let again = attn
        .forward_seq(&layer, &mut cache, 0, &x[32..], 0, 2)
        .unwrap();
    assert_eq!(again, first, "recomputed after seq_rm");
    expect_err(cache.load(-1, b"not a snapshot"), Status::BadFormat, "");
    expect_err(
        cache.load_file(-1, std::path::Path::new("/nonexistent/x.snap")),
        Status::Io,
        "",
    );
    expect_err(
        Attn::new(&AttnParams::new().unwrap().n_threads(-1)),
        Status::InvalidArgument,
        "",
    );
}

#[test]
fn progress_cancels_and_panics_propagate() {
    let (g, w) = small();
    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo);
    let mut calls = Vec::new();
    let mut stop = |done: i64, total: i64| {
        calls.push((done, total));
        ControlFlow::Break(())
    };
    let mut p = ConvertParams::new()
        .unwrap()
        .rope_dim(4)
        .d_kv(2)
        .progress(&mut stop);
    expect_err(
        Layer::convert(&g, &weights, None, &p),
        Status::InvalidArgument,
        "convert_with_progress",
    );
    expect_err(
        Layer::convert_with_progress(&g, &weights, None, &mut p),
        Status::Cancelled,
        "",
    );
    assert_eq!(calls.len(), 1);
    let mut seen = 0;
    let mut go = |_d: i64, _t: i64| {
        seen += 1;
        ControlFlow::Continue(())
    };
    let mut p = ConvertParams::new()
        .unwrap()
        .rope_dim(4)
        .d_kv(2)
        .progress(&mut go);
    Layer::convert_with_progress(&g, &weights, None, &mut p).unwrap();
    assert!(seen > 0);
    let r = std::panic::catch_unwind(|| {
        let mut boom = |_d: i64, _t: i64| -> ControlFlow<()> { panic!("from the callback") };
        let mut p = ConvertParams::new()
            .unwrap()
            .rope_dim(4)
            .d_kv(2)
            .progress(&mut boom);
        let _ = Layer::convert_with_progress(&g, &weights, None, &mut p);
    });
    let msg = r.expect_err("the panic must come through");
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"from the callback"));
}

#[test]
fn errors_are_per_thread() {
    let (g, w) = small();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (g, w) = (&g, &w);
                s.spawn(move || {
                    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo);
                    let r = Layer::convert(
                        g,
                        &weights,
                        None,
                        &ConvertParams::new().unwrap().rope_dim(2 * i + 1).d_kv(2),
                    );
                    r.expect_err("odd rope_dim").message().to_string()
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let m = h.join().unwrap();
            assert!(m.contains(&(2 * i + 1).to_string()), "{m}");
        }
    });
}

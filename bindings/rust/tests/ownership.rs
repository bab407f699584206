//! Ownership: handles are destroyed once by Drop (in any order), borrowed data cannot outlive its
//! layer (the borrow checker's job), Send/Sync exactly where the C headers promise them.
mod common;

use common::SplitMix64;
use mla::*;

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

// Compiles only if T is not Sync: with T: Sync both impls apply and the call is ambiguous.
trait AmbiguousIfSync<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfSync<()> for T {}
#[allow(dead_code)]
struct IsSync;
impl<T: ?Sized + Sync> AmbiguousIfSync<IsSync> for T {}

#[test]
fn thread_markers_follow_the_c_documentation() {
    assert_send::<Layer>();
    assert_sync::<Layer>();
    assert_send::<Cache>();
    assert_send::<Attn>();
    assert_send::<Calib>();
    <Cache as AmbiguousIfSync<_>>::check();
    <Attn as AmbiguousIfSync<_>>::check();
    <Calib as AmbiguousIfSync<_>>::check();
}

fn layer() -> Layer {
    let mut rng = SplitMix64::new();
    let (wq, wk, wv, wo) = (
        rng.fill(1024, 0.25),
        rng.fill(512, 0.25),
        rng.fill(512, 0.25),
        rng.fill(1024, 0.25),
    );
    let g = Geometry::new(32, 4, 2, 8);
    Layer::convert(
        &g,
        &Weights::new(&wq, &wk, &wv, &wo),
        None,
        &ConvertParams::new().unwrap().rope_dim(4).d_kv(2),
    )
    .unwrap()
}

#[test]
fn handles_drop_in_any_order_and_the_cache_outlives_its_layer() {
    for order in 0..3 {
        let l = layer();
        let mut cache = Cache::new(
            &[l.cache_desc().unwrap()],
            &CacheParams::new()
                .unwrap()
                .latent_dtype(DType::F32)
                .rope_dtype(DType::F32)
                .capacity_tokens(32),
        )
        .unwrap();
        let mut attn = Attn::new(&AttnParams::new().unwrap()).unwrap();
        attn.forward_seq(&l, &mut cache, 0, &[0.25; 3 * 32], 0, 0)
            .unwrap();
        match order {
            0 => {
                drop(attn);
                drop(l);
                // The cache copied the layer's frequencies: shifting still works.
                let before = cache.read_all(0, 0).unwrap();
                cache.seq_shift(0, -1, -1, 2).unwrap();
                cache.seq_shift(0, -1, -1, -2).unwrap();
                let after = cache.read_all(0, 0).unwrap();
                assert_eq!(after.pos, before.pos);
                for (a, b) in after.rope.iter().zip(&before.rope) {
                    assert!((a - b).abs() < 1e-5);
                }
                drop(cache);
            }
            1 => {
                drop(cache);
                drop(l);
                drop(attn);
            }
            _ => {
                drop(l);
                drop(cache);
                drop(attn);
            }
        }
    }
}

#[test]
fn tensors_borrow_the_layer() {
    let l = layer();
    let names: Vec<String> = l.tensors().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names.len() as i32, l.info().unwrap().n_tensors);
    let up = l.tensor("kv_proj.up_v.weight").unwrap();
    assert_eq!(up.shape, vec![16, 4]);
    let data = up.as_f32().unwrap();
    assert_eq!(data.len(), 64);
    assert!(up.as_i32().is_none());
    let dims = l.tensor("rope_dims").unwrap();
    assert_eq!(
        dims.as_i32().unwrap(),
        [l.rope_dims(0).unwrap(), l.rope_dims(1).unwrap()].concat()
    );
    // `drop(l)` here would not compile while `data` is used below.
    assert!(data.iter().any(|&v| v != 0.0));
    let e = l.tensor("no_such.weight").unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument);
}

#[test]
fn layers_move_to_and_drop_on_other_threads() {
    let l = layer();
    let cache = Cache::new(
        &[l.cache_desc().unwrap()],
        &CacheParams::new().unwrap().capacity_tokens(16),
    )
    .unwrap();
    let attn = Attn::new(&AttnParams::new().unwrap()).unwrap();
    std::thread::spawn(move || {
        let (mut cache, mut attn) = (cache, attn);
        attn.forward_seq(&l, &mut cache, 0, &[0.5; 32], 0, 0)
            .unwrap();
        assert_eq!(cache.seq_length(0).unwrap(), 1);
    })
    .join()
    .unwrap();
}

#[test]
fn snapshots_round_trip() {
    let l = layer();
    let p = CacheParams::new()
        .unwrap()
        .latent_dtype(DType::F32)
        .rope_dtype(DType::F32)
        .capacity_tokens(32)
        .n_seq_max(2);
    let mut a = Cache::new(&[l.cache_desc().unwrap()], &p).unwrap();
    let mut attn = Attn::new(&AttnParams::new().unwrap()).unwrap();
    attn.forward_seq(&l, &mut a, 0, &SplitMix64::new().fill(5 * 32, 1.0), 1, 0)
        .unwrap();
    let snap = a.save(-1).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    a.save_file(1, &dir.join("seq1.snap")).unwrap();
    let mut b = Cache::new(&[l.cache_desc().unwrap()], &p).unwrap();
    b.load(-1, &snap).unwrap();
    assert_eq!(b.read_all(0, 1).unwrap(), a.read_all(0, 1).unwrap());
    let mut c = Cache::new(&[l.cache_desc().unwrap()], &p).unwrap();
    c.load_file(0, &dir.join("seq1.snap")).unwrap();
    assert_eq!(c.read_all(0, 0).unwrap(), a.read_all(0, 1).unwrap());
    let s = a.stats().unwrap();
    assert_eq!(s.tokens_used, 5);
    assert!(saving(&s) > 0.0 && saving(&s) < 1.0);
}

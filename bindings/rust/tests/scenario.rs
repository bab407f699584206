//! The cross-language scenario (bindings/scenario/README.md): the safe API must produce exactly
//! what the C program produces on the same library.
mod common;

use common::*;

#[test]
fn rust_matches_c() {
    let c = parse(&run_c_scenario());
    let rust = run_rust_scenario().expect("scenario");
    assert_eq!(c.seq_length, 13);
    assert_eq!(c.out.len(), 13);
    assert!(c.out.iter().all(|r| r.len() == 64));
    assert_eq!(rust.rope_dims, c.rope_dims);
    assert_eq!(rust.bytes_per_token, c.bytes_per_token);
    assert_eq!(rust.mha_bytes_per_token, c.mha_bytes_per_token);
    assert_eq!(rust.seq_length, c.seq_length);
    // Same library, same inputs, same calls, one thread: the same bits.
    for (t, (a, b)) in rust.out.iter().zip(&c.out).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "out[{t}][{i}]: rust {x} c {y}");
        }
    }
    // The cache saving the scenario reads: latent 16 + RoPE 8 values against K and V 2·32.
    assert_eq!(c.bytes_per_token * 64, c.mha_bytes_per_token * 24);
}

#[test]
fn version_matches_the_headers() {
    mla::check_version().unwrap();
    assert_eq!(mla::version(), mla::sys::MLA_VERSION_NUMBER);
    assert_eq!(mla::version_string(), env!("CARGO_PKG_VERSION"));
    assert!(mla::build_info().contains("libmla"));
}

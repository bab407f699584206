//! Shared by the integration tests: the scenario's input generator, the scenario itself, and
//! building the C version of it against the library this crate linked.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mla::*;

/// SplitMix64 (bindings/scenario/README.md): bit-identical inputs in C, Python and Rust.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new() -> Self {
        SplitMix64(0x6d6c61)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 * (1.0 / 8388608.0) - 1.0) * scale)
            .collect()
    }
}

/// What the scenario prints, parsed.
#[derive(Debug, Default, PartialEq)]
pub struct ScenarioOutput {
    pub rope_dims: Vec<i32>,
    pub bytes_per_token: i64,
    pub mha_bytes_per_token: i64,
    pub seq_length: i64,
    pub out: Vec<Vec<f32>>,
}

pub fn parse(text: &str) -> ScenarioOutput {
    let mut s = ScenarioOutput::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("rope_dims") => s.rope_dims = it.map(|v| v.parse().unwrap()).collect(),
            Some("bytes_per_token") => s.bytes_per_token = it.next().unwrap().parse().unwrap(),
            Some("mha_bytes_per_token") => {
                s.mha_bytes_per_token = it.next().unwrap().parse().unwrap()
            }
            Some("seq_length") => s.seq_length = it.next().unwrap().parse().unwrap(),
            Some("out") => s.out.push(it.skip(1).map(|v| v.parse().unwrap()).collect()),
            other => panic!("unexpected line {other:?}"),
        }
    }
    s
}

pub struct ScenarioWeights {
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub bq: Vec<f32>,
    pub bk: Vec<f32>,
    pub bv: Vec<f32>,
}

pub fn scenario_weights(rng: &mut SplitMix64) -> ScenarioWeights {
    ScenarioWeights {
        wq: rng.fill(64 * 64, 0.125),
        wk: rng.fill(32 * 64, 0.125),
        wv: rng.fill(32 * 64, 0.125),
        wo: rng.fill(64 * 64, 0.125),
        bq: rng.fill(64, 0.0625),
        bk: rng.fill(32, 0.0625),
        bv: rng.fill(32, 0.0625),
    }
}

pub fn scenario_geometry() -> Geometry {
    Geometry::new(64, 4, 2, 16)
        .rope_theta(10000.0)
        .qkv_bias(true)
}

/// The scenario through the safe API, step for step as scenario.c does it.
pub fn run_rust_scenario() -> Result<ScenarioOutput> {
    let mut rng = SplitMix64::new();
    let w = scenario_weights(&mut rng);
    let x_calib = rng.fill(48 * 64, 1.0);
    let x_prefill = rng.fill(10 * 64, 1.0);
    let x_decode = rng.fill(3 * 64, 1.0);

    let g = scenario_geometry();
    let weights = Weights::new(&w.wq, &w.wk, &w.wv, &w.wo).biases(&w.bq, &w.bk, &w.bv);
    let mut calib = Calib::new(&g, &weights)?;
    calib.feed(&x_calib)?;
    let params = ConvertParams::new()?
        .rope_strategy(RopeStrategy::Norm2)
        .rope_dim(4)
        .d_kv(8)
        .factorization(Factorization::Joint);
    let layer = Layer::convert(&g, &weights, Some(&calib), &params)?;
    drop(calib);

    let mut cache = Cache::new(
        &[layer.cache_desc()?],
        &CacheParams::new()?
            .capacity_tokens(256)
            .block_tokens(16)
            .n_seq_max(4),
    )?;
    let mut attn = Attn::new(&AttnParams::new()?.n_threads(1).path(AttnPath::Auto))?;
    let mut rows = Vec::new();
    let y = attn.forward_seq(&layer, &mut cache, 0, &x_prefill, 0, 0)?;
    rows.extend(y.chunks(64).map(|r| r.to_vec()));
    for t in 0..3 {
        let y = attn.forward_seq(
            &layer,
            &mut cache,
            0,
            &x_decode[t * 64..(t + 1) * 64],
            0,
            10 + t as i64,
        )?;
        rows.push(y);
    }
    let stats = cache.stats()?;
    let mut rope_dims = layer.rope_dims(0)?;
    rope_dims.extend(layer.rope_dims(1)?);
    Ok(ScenarioOutput {
        rope_dims,
        bytes_per_token: stats.bytes_per_token,
        mha_bytes_per_token: stats.mha_bytes_per_token,
        seq_length: cache.seq_length(0)?,
        out: rows,
    })
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn include_flags(lib_dir: &Path) -> Vec<String> {
    if let Ok(dirs) = std::env::var("MLA_INCLUDE") {
        return std::env::split_paths(&dirs)
            .map(|d| format!("-I{}", d.display()))
            .collect();
    }
    let build_include = lib_dir.join("../include");
    if build_include.join("mla/version.h").exists() {
        return vec![
            format!("-I{}", repo_root().join("include").display()),
            format!("-I{}", build_include.display()),
        ];
    }
    let out = Command::new("pkg-config")
        .args(["--cflags", "mla"])
        .output()
        .expect("pkg-config");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Compile and run bindings/scenario/scenario.c against the library this crate linked.
pub fn run_c_scenario() -> String {
    let lib_dir = PathBuf::from(env!("MLA_LINKED_LIB_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scenario_c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(&cc);
    // A sanitizer runtime preloaded for the tests is not for the compiler.
    cmd.env_remove("LD_PRELOAD");
    cmd.args(["-std=c11", "-Wall", "-Werror"])
        .args(include_flags(&lib_dir))
        .arg(repo_root().join("bindings/scenario/scenario.c"))
        .arg("-o")
        .arg(&exe);
    if !lib_dir.as_os_str().is_empty() {
        cmd.arg(format!("-L{}", lib_dir.display()))
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    }
    cmd.arg("-lmla");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stdout).unwrap()
}

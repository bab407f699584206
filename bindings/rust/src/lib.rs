//! Safe Rust binding of libmla: MHA2MLA conversion ([`Layer::convert`]), the latent KV cache
//! ([`Cache`]) and MLA attention ([`Attn`]).
//!
//! Every handle owns its C object and destroys it once, on drop. Every fallible call returns
//! [`Result`], whose [`Error`] carries the C status and the library's message. Slices go to C
//! without copies; their lengths are checked against the shapes the C side will read or write.
//! Thread-safety follows the C headers: a [`Layer`] is read-only after construction (`Send` and
//! `Sync`); a [`Cache`], an [`Attn`] and a [`Calib`] may move between threads (`Send`) but are used
//! by one at a time. The raw declarations are in [`sys`].
//!
//! ```no_run
//! use mla::*;
//! # fn main() -> mla::Result<()> {
//! let g = Geometry::new(64, 4, 2, 16);
//! # let (wq, wk, wv, wo) = (vec![0f32; 4096], vec![0f32; 2048], vec![0f32; 2048], vec![0f32; 4096]);
//! let w = Weights::new(&wq, &wk, &wv, &wo);
//! let layer = Layer::convert(&g, &w, None, &ConvertParams::new()?.rope_dim(4).d_kv(8))?;
//! let mut cache = Cache::new(&[layer.cache_desc()?], &CacheParams::new()?.capacity_tokens(1024))?;
//! let mut attn = Attn::new(&AttnParams::new()?)?;
//! let x = vec![0.5f32; 3 * 64];
//! let y = attn.forward_seq(&layer, &mut cache, 0, &x, 0, 0)?;
//! # Ok(()) }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

pub mod sys;

use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::ops::ControlFlow;
use std::os::raw::{c_int, c_void};
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

// ---- errors --------------------------------------------------------------------------------------

/// `mla_status` without `MLA_OK`; `Unknown` for values this binding does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    InvalidArgument,
    ShapeMismatch,
    OutOfMemory,
    Io,
    BadFormat,
    Unsupported,
    Capacity,
    Numerical,
    Internal,
    Cancelled,
    Unknown(i32),
}

impl Status {
    /// The C value.
    pub fn code(self) -> i32 {
        match self {
            Status::InvalidArgument => sys::MLA_ERR_INVALID_ARGUMENT,
            Status::ShapeMismatch => sys::MLA_ERR_SHAPE_MISMATCH,
            Status::OutOfMemory => sys::MLA_ERR_OUT_OF_MEMORY,
            Status::Io => sys::MLA_ERR_IO,
            Status::BadFormat => sys::MLA_ERR_BAD_FORMAT,
            Status::Unsupported => sys::MLA_ERR_UNSUPPORTED,
            Status::Capacity => sys::MLA_ERR_CAPACITY,
            Status::Numerical => sys::MLA_ERR_NUMERICAL,
            Status::Internal => sys::MLA_ERR_INTERNAL,
            Status::Cancelled => sys::MLA_ERR_CANCELLED,
            Status::Unknown(v) => v,
        }
    }

    /// The status of a nonzero C value.
    pub fn from_code(code: i32) -> Status {
        match code {
            sys::MLA_ERR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::MLA_ERR_SHAPE_MISMATCH => Status::ShapeMismatch,
            sys::MLA_ERR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::MLA_ERR_IO => Status::Io,
            sys::MLA_ERR_BAD_FORMAT => Status::BadFormat,
            sys::MLA_ERR_UNSUPPORTED => Status::Unsupported,
            sys::MLA_ERR_CAPACITY => Status::Capacity,
            sys::MLA_ERR_NUMERICAL => Status::Numerical,
            sys::MLA_ERR_INTERNAL => Status::Internal,
            sys::MLA_ERR_CANCELLED => Status::Cancelled,
            v => Status::Unknown(v),
        }
    }

    /// The library's short description (`mla_status_string`).
    pub fn description(self) -> String {
        // SAFETY: mla_status_string never returns NULL and returns static strings.
        unsafe { cstr(sys::mla_status_string(self.code())) }
    }
}

/// A failed call: the status and what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

impl Error {
    /// An error detected by this binding before calling C (a slice of the wrong length).
    fn binding(status: Status, message: String) -> Error {
        Error { status, message }
    }

    /// The calling thread's last libmla error, for a status a C call just returned.
    fn last(code: c_int) -> Error {
        // SAFETY: mla_last_error never returns NULL; the text is copied before any other call.
        let mut message = unsafe { cstr(sys::mla_last_error()) };
        let status = Status::from_code(code);
        if message.is_empty() {
            message = status.description();
        }
        Error { status, message }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// `mla_last_error()` right after the failed call (or this binding's own message).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn check(code: c_int) -> Result<()> {
    if code == sys::MLA_OK {
        Ok(())
    } else {
        Err(Error::last(code))
    }
}

/// # Safety
/// p is NULL or a valid NUL-terminated string.
unsafe fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's promise.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn shape_error<T>(what: &str, got: usize, want: usize, how: &str) -> Result<T> {
    Err(Error::binding(
        Status::ShapeMismatch,
        format!("{what}: {got} values, expected {want} ({how})"),
    ))
}

fn expect_len(what: &str, got: usize, want: usize, how: &str) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        shape_error(what, got, want, how)
    }
}

fn to_usize(v: i64) -> usize {
    usize::try_from(v.max(0)).unwrap_or(usize::MAX)
}

/// The product of sizes, or ShapeMismatch when it overflows usize: a wrapped product would let a
/// short slice pass for a tensor the C side reads in full.
fn product(what: &str, sizes: &[usize]) -> Result<usize> {
    sizes
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| {
            Error::binding(
                Status::ShapeMismatch,
                format!("{what}: {sizes:?} elements overflow usize"),
            )
        })
}

// ---- version -------------------------------------------------------------------------------------

/// The library's version string ("major.minor.patch").
pub fn version_string() -> String {
    // SAFETY: static string, never NULL.
    unsafe { cstr(sys::mla_version_string()) }
}

/// The library's version number (major·10000 + minor·100 + patch).
pub fn version() -> i32 {
    // SAFETY: no arguments.
    unsafe { sys::mla_version() }
}

/// The library's build description: BLAS/LAPACK, CPU features.
pub fn build_info() -> String {
    // SAFETY: static string, never NULL.
    unsafe { cstr(sys::mla_build_info()) }
}

/// Fails with `Unsupported` unless the linked library has this binding's major version and is at
/// least as new. Every constructor calls it (once per process).
pub fn check_version() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let have = version();
    let want = sys::MLA_VERSION_NUMBER;
    if *OK.get_or_init(|| have / 10000 == want / 10000 && have >= want) {
        Ok(())
    } else {
        Err(Error::binding(
            Status::Unsupported,
            format!(
                "libmla {} is loaded, this binding needs {}.{}.{} or a newer {}.x",
                version_string(),
                sys::MLA_VERSION_MAJOR,
                sys::MLA_VERSION_MINOR,
                sys::MLA_VERSION_PATCH,
                sys::MLA_VERSION_MAJOR
            ),
        ))
    }
}

// ---- enums ---------------------------------------------------------------------------------------

macro_rules! c_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $value:path),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }
        impl $name {
            pub fn code(self) -> c_int { match self { $($name::$variant => $value),* } }
            pub fn from_code(v: c_int) -> Option<$name> {
                match v { $(x if x == $value => Some($name::$variant),)* _ => None }
            }
        }
    };
}

c_enum!(
    /// `mla_dtype`.
    DType { F32 = sys::MLA_DTYPE_F32, F16 = sys::MLA_DTYPE_F16, Bf16 = sys::MLA_DTYPE_BF16,
            I8 = sys::MLA_DTYPE_I8, I4 = sys::MLA_DTYPE_I4, I32 = sys::MLA_DTYPE_I32,
            F64 = sys::MLA_DTYPE_F64 });
c_enum!(
    /// `mla_rope_scaling`.
    RopeScaling { None = sys::MLA_ROPE_SCALING_NONE, Linear = sys::MLA_ROPE_SCALING_LINEAR });
c_enum!(
    /// `mla_rope_strategy`: which RoPE frequency pairs a converted layer keeps.
    RopeStrategy { High = sys::MLA_ROPE_HIGH, Low = sys::MLA_ROPE_LOW,
                   Uniform = sys::MLA_ROPE_UNIFORM, Norm2 = sys::MLA_ROPE_2NORM,
                   Explicit = sys::MLA_ROPE_EXPLICIT });
c_enum!(
    /// `mla_factorization`.
    Factorization { Joint = sys::MLA_FACTOR_JOINT, Split = sys::MLA_FACTOR_SPLIT,
                    ActivationJoint = sys::MLA_FACTOR_ACTIVATION_JOINT });
c_enum!(
    /// `mla_layer_kind`.
    LayerKind { Mla = sys::MLA_LAYER_MLA, Mha = sys::MLA_LAYER_MHA });
c_enum!(
    /// `mla_attn_path`.
    AttnPath { Auto = sys::MLA_ATTN_PATH_AUTO, Absorbed = sys::MLA_ATTN_PATH_ABSORBED,
               Materialized = sys::MLA_ATTN_PATH_MATERIALIZED });
c_enum!(
    /// `mla_attn_threads`: where an [`Attn`]'s threads run.
    AttnThreads { Pool = sys::MLA_ATTN_THREADS_POOL, OpenMp = sys::MLA_ATTN_THREADS_OPENMP });

// ---- params helpers ------------------------------------------------------------------------------

/// A params struct filled by its `*_default_params` call.
fn defaults<T>(f: unsafe extern "C" fn(*mut T, usize) -> c_int) -> Result<T> {
    let mut p = MaybeUninit::<T>::zeroed();
    // SAFETY: p is a writable T; the call writes struct_size bytes (= size_of::<T>()).
    check(unsafe { f(p.as_mut_ptr(), size_of::<T>()) })?;
    // SAFETY: every field was written by the call (and zeroed before: all-zero is valid for
    // these plain-data structs, whose pointer fields are nullable and fn pointers Option).
    Ok(unsafe { p.assume_init() })
}

// ---- geometry and weights ------------------------------------------------------------------------

/// Shape of one source attention layer (`mla_geometry`), with the library's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    raw: sys::mla_geometry,
}

impl Geometry {
    /// The library's defaults (θ 10000, no scaling, no biases) with the four sizes set.
    pub fn new(d_model: i32, n_heads: i32, n_kv_heads: i32, head_dim: i32) -> Geometry {
        // Only fails for a NULL pointer or a tiny struct_size, neither possible here.
        let mut raw: sys::mla_geometry =
            defaults(sys::mla_geometry_default_params).expect("mla_geometry_default_params");
        raw.d_model = d_model;
        raw.n_heads = n_heads;
        raw.n_kv_heads = n_kv_heads;
        raw.head_dim = head_dim;
        Geometry { raw }
    }
    pub fn rope_theta(mut self, theta: f64) -> Self {
        self.raw.rope_theta = theta;
        self
    }
    pub fn rope_scaling(mut self, scaling: RopeScaling, factor: f64) -> Self {
        self.raw.rope_scaling = scaling.code();
        self.raw.rope_scaling_factor = factor;
        self
    }
    pub fn qkv_bias(mut self, bias: bool) -> Self {
        self.raw.qkv_bias = bias as i32;
        self
    }
    pub fn d_model(&self) -> i32 {
        self.raw.d_model
    }
    pub fn n_heads(&self) -> i32 {
        self.raw.n_heads
    }
    pub fn n_kv_heads(&self) -> i32 {
        self.raw.n_kv_heads
    }
    pub fn head_dim(&self) -> i32 {
        self.raw.head_dim
    }
    pub fn raw(&self) -> &sys::mla_geometry {
        &self.raw
    }
    fn sizes(&self) -> Result<(usize, usize, usize)> {
        let g = &self.raw;
        if g.d_model <= 0 || g.n_heads <= 0 || g.n_kv_heads <= 0 || g.head_dim <= 0 {
            return Err(Error::binding(
                Status::InvalidArgument,
                format!(
                    "geometry: d_model {}, n_heads {}, n_kv_heads {}, head_dim {}: all must be > 0",
                    g.d_model, g.n_heads, g.n_kv_heads, g.head_dim
                ),
            ));
        }
        let d = g.d_model as usize;
        let hq = product(
            "n_heads·head_dim",
            &[g.n_heads as usize, g.head_dim as usize],
        )?;
        let hk = product(
            "n_kv_heads·head_dim",
            &[g.n_kv_heads as usize, g.head_dim as usize],
        )?;
        product("n_heads·head_dim × d_model", &[hq, d])?;
        Ok((d, hq, hk))
    }
}

/// An element type of source weights.
pub trait WeightElement: Copy {
    const DTYPE: DType;
}
impl WeightElement for f32 {
    const DTYPE: DType = DType::F32;
}
/// IEEE binary16 bits.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct F16(pub u16);
impl WeightElement for F16 {
    const DTYPE: DType = DType::F16;
}
/// bfloat16 bits.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bf16(pub u16);
impl WeightElement for Bf16 {
    const DTYPE: DType = DType::Bf16;
}

/// Borrowed projections of one source layer (nn.Linear layout, out × in, row-major).
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a, T: WeightElement> {
    pub wq: &'a [T],
    pub wk: &'a [T],
    pub wv: &'a [T],
    pub wo: &'a [T],
    pub bq: Option<&'a [T]>,
    pub bk: Option<&'a [T]>,
    pub bv: Option<&'a [T]>,
}

impl<'a, T: WeightElement> Weights<'a, T> {
    /// wq: n_heads·head_dim × d_model; wk, wv: n_kv_heads·head_dim × d_model;
    /// wo: d_model × n_heads·head_dim.
    pub fn new(wq: &'a [T], wk: &'a [T], wv: &'a [T], wo: &'a [T]) -> Self {
        Weights {
            wq,
            wk,
            wv,
            wo,
            bq: None,
            bk: None,
            bv: None,
        }
    }
    /// The q, k and v biases (required with `Geometry::qkv_bias(true)`).
    pub fn biases(mut self, bq: &'a [T], bk: &'a [T], bv: &'a [T]) -> Self {
        self.bq = Some(bq);
        self.bk = Some(bk);
        self.bv = Some(bv);
        self
    }

    /// The C view, after checking every length against g: C reads as much as g says.
    fn raw(&self, g: &Geometry) -> Result<sys::mla_layer_weights> {
        let (d, hq, hk) = g.sizes()?;
        expect_len("wq", self.wq.len(), hq * d, "n_heads·head_dim × d_model")?;
        expect_len("wk", self.wk.len(), hk * d, "n_kv_heads·head_dim × d_model")?;
        expect_len("wv", self.wv.len(), hk * d, "n_kv_heads·head_dim × d_model")?;
        expect_len("wo", self.wo.len(), d * hq, "d_model × n_heads·head_dim")?;
        let mut w: sys::mla_layer_weights = defaults(sys::mla_layer_weights_default_params)?;
        w.dtype = T::DTYPE.code();
        w.wq = self.wq.as_ptr().cast();
        w.wk = self.wk.as_ptr().cast();
        w.wv = self.wv.as_ptr().cast();
        w.wo = self.wo.as_ptr().cast();
        for (name, b, n, field) in [
            ("bq", self.bq, hq, &mut w.bq),
            ("bk", self.bk, hk, &mut w.bk),
            ("bv", self.bv, hk, &mut w.bv),
        ] {
            if let Some(b) = b {
                expect_len(name, b.len(), n, "rows of its projection")?;
                *field = b.as_ptr().cast();
            }
        }
        Ok(w)
    }
}

// ---- calibration ---------------------------------------------------------------------------------

/// Calibration accumulator of one layer (`mla_calib`). Send, not Sync (not thread-safe).
pub struct Calib {
    raw: NonNull<sys::mla_calib>,
    geometry: Geometry,
}

// SAFETY: the handle has no thread affinity; &mut self serializes feeds.
unsafe impl Send for Calib {}

/// The 2-norm statistics, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct QkStats {
    /// n_heads × head_dim/2 mean pair norms of q.
    pub q_norm: Vec<f32>,
    /// n_kv_heads × head_dim/2 mean pair norms of k.
    pub k_norm: Vec<f32>,
    /// n_kv_heads × head_dim/2 ranking scores.
    pub score: Vec<f32>,
}

impl Calib {
    /// Copies the q/k projections of `w`. `qk_norms` and `covariance` choose what is
    /// accumulated (the library's defaults: both).
    pub fn new<T: WeightElement>(g: &Geometry, w: &Weights<'_, T>) -> Result<Calib> {
        Self::with_options(g, w, true, true)
    }

    pub fn with_options<T: WeightElement>(
        g: &Geometry,
        w: &Weights<'_, T>,
        qk_norms: bool,
        covariance: bool,
    ) -> Result<Calib> {
        check_version()?;
        let rw = w.raw(g)?;
        let mut p: sys::mla_calib_params = defaults(sys::mla_calib_default_params)?;
        p.qk_norms = qk_norms as i32;
        p.covariance = covariance as i32;
        let mut out = ptr::null_mut();
        // SAFETY: all pointers valid for the call; slices checked against g.
        check(unsafe { sys::mla_calib_create(g.raw(), &rw, &p, &mut out) })?;
        Ok(Calib {
            raw: NonNull::new(out).expect("mla_calib_create gave NULL"),
            geometry: *g,
        })
    }

    /// Feed x: n_tokens × d_model, row-major (the layer input after its input norm).
    pub fn feed(&mut self, x: &[f32]) -> Result<()> {
        let d = self.geometry.d_model() as usize;
        if d == 0 || x.len() % d != 0 {
            return shape_error("x", x.len(), d, "a multiple of d_model");
        }
        // SAFETY: x holds n_tokens·d_model floats.
        check(unsafe { sys::mla_calib_feed(self.raw.as_ptr(), x.as_ptr(), (x.len() / d) as i64) })
    }

    pub fn token_count(&self) -> Result<i64> {
        let mut n = 0;
        // SAFETY: valid handle and out-pointer.
        check(unsafe { sys::mla_calib_token_count(self.raw.as_ptr(), &mut n) })?;
        Ok(n)
    }

    pub fn qk_stats(&self) -> Result<QkStats> {
        let g = &self.geometry;
        let half = g.head_dim() as usize / 2;
        let mut s = QkStats {
            q_norm: vec![0.0; g.n_heads() as usize * half],
            k_norm: vec![0.0; g.n_kv_heads() as usize * half],
            score: vec![0.0; g.n_kv_heads() as usize * half],
        };
        // SAFETY: buffers sized as the header documents.
        check(unsafe {
            sys::mla_calib_qk_stats(
                self.raw.as_ptr(),
                s.q_norm.as_mut_ptr(),
                s.k_norm.as_mut_ptr(),
                s.score.as_mut_ptr(),
            )
        })?;
        Ok(s)
    }

    /// XᵀX so far: d_model × d_model, row-major.
    pub fn covariance(&self) -> Result<Vec<f64>> {
        let d = self.geometry.d_model() as usize;
        let mut c = vec![0.0; d * d];
        // SAFETY: d_model² doubles.
        check(unsafe { sys::mla_calib_covariance(self.raw.as_ptr(), c.as_mut_ptr()) })?;
        Ok(c)
    }
}

impl Drop for Calib {
    fn drop(&mut self) {
        // SAFETY: owned handle, destroyed once.
        unsafe { sys::mla_calib_destroy(self.raw.as_ptr()) }
    }
}

// ---- conversion ----------------------------------------------------------------------------------

/// Conversion parameters (`mla_convert_params`), starting from the library's defaults.
pub struct ConvertParams<'a> {
    raw: sys::mla_convert_params,
    explicit: Option<&'a [i32]>,
    progress: Option<&'a mut dyn FnMut(i64, i64) -> ControlFlow<()>>,
}

impl<'a> ConvertParams<'a> {
    pub fn new() -> Result<Self> {
        Ok(ConvertParams {
            raw: defaults(sys::mla_convert_default_params)?,
            explicit: None,
            progress: None,
        })
    }
    pub fn rope_strategy(mut self, s: RopeStrategy) -> Self {
        self.raw.rope_strategy = s.code();
        self
    }
    pub fn rope_dim(mut self, r: i32) -> Self {
        self.raw.rope_dim = r;
        self
    }
    pub fn uniform_start(mut self, s: i32) -> Self {
        self.raw.uniform_start = s;
        self
    }
    /// n_kv_heads × rope_dim/2 frequency indices for `RopeStrategy::Explicit`.
    pub fn explicit_freqs(mut self, f: &'a [i32]) -> Self {
        self.explicit = Some(f);
        self
    }
    pub fn factorization(mut self, f: Factorization) -> Self {
        self.raw.factorization = f.code();
        self
    }
    pub fn d_kv(mut self, d: i32) -> Self {
        self.raw.d_kv = d;
        self
    }
    pub fn damping(mut self, d: f64) -> Self {
        self.raw.damping = d;
        self
    }
    /// Called between stages with (done, total); `ControlFlow::Break` cancels the conversion.
    pub fn progress(mut self, f: &'a mut dyn FnMut(i64, i64) -> ControlFlow<()>) -> Self {
        self.progress = Some(f);
        self
    }
}

unsafe extern "C" fn progress_trampoline(user: *mut c_void, done: i64, total: i64) -> c_int {
    // A panic must not unwind into C: it cancels, and is resumed after the call returns.
    let slot = user as *mut ProgressSlot<'_>;
    // SAFETY: user is the ProgressSlot that Layer::convert or Attn::forward_with_progress
    // passed, alive during the call.
    let slot = unsafe { &mut *slot };
    let f = &mut slot.f;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(done, total))) {
        Ok(ControlFlow::Continue(())) => 0,
        Ok(ControlFlow::Break(())) => 1,
        Err(p) => {
            slot.panic = Some(p);
            1
        }
    }
}

struct ProgressSlot<'a> {
    f: &'a mut dyn FnMut(i64, i64) -> ControlFlow<()>,
    panic: Option<Box<dyn std::any::Any + Send>>,
}

/// What an MLA layer is (`mla_layer_info`); its geometry is `Layer::geometry`.
#[derive(Debug, Clone, Copy)]
pub struct LayerInfo {
    pub kind: Option<LayerKind>,
    pub factorization: Option<Factorization>,
    pub rope_strategy: Option<RopeStrategy>,
    pub rope_dim: i32,
    pub d_kv: i32,
    pub latent_dim: i32,
    pub rope_width: i32,
    pub n_tensors: i32,
    /// How the weights a forward streams are stored (`Layer::set_weight_dtype`).
    pub weight_dtype: Option<DType>,
}

/// What the conversion lost (`mla_convert_report`); NaN where not computed.
pub type ConvertReport = sys::mla_convert_report;

/// A tensor of a layer, borrowed from it.
#[derive(Debug, Clone)]
pub struct Tensor<'a> {
    pub name: String,
    pub dtype: Option<DType>,
    pub shape: Vec<i64>,
    data: *const c_void,
    _layer: PhantomData<&'a Layer>,
}

impl<'a> Tensor<'a> {
    fn elements(&self) -> usize {
        self.shape.iter().map(|&s| to_usize(s)).product()
    }
    /// The data, if the tensor is float32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        (self.dtype == Some(DType::F32)).then(|| {
            if self.elements() == 0 {
                &[][..]
            } else {
                // SAFETY: the layer owns elements() floats at data and outlives 'a.
                unsafe { std::slice::from_raw_parts(self.data as *const f32, self.elements()) }
            }
        })
    }
    /// The stored 16-bit patterns, if the tensor is F16 or BF16 (after
    /// `Layer::set_weight_dtype`).
    pub fn as_u16(&self) -> Option<&'a [u16]> {
        matches!(self.dtype, Some(DType::F16) | Some(DType::Bf16)).then(|| {
            if self.elements() == 0 {
                &[][..]
            } else {
                // SAFETY: the layer owns elements() 16-bit values at data and outlives 'a.
                unsafe { std::slice::from_raw_parts(self.data as *const u16, self.elements()) }
            }
        })
    }
    /// The data, if the tensor is int32.
    pub fn as_i32(&self) -> Option<&'a [i32]> {
        (self.dtype == Some(DType::I32)).then(|| {
            if self.elements() == 0 {
                &[][..]
            } else {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(self.data as *const i32, self.elements()) }
            }
        })
    }
}

/// A tensor to build a layer from (`Layer::from_tensors`), borrowed for the call.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

/// An MLA layer (or an MHA baseline) owned by libmla. Read-only after construction except
/// through `set_weight_dtype` (`&mut self`), so it is `Send + Sync`: share it between threads
/// by reference.
pub struct Layer {
    raw: NonNull<sys::mla_layer>,
}

// SAFETY: convert.h: the layer is not modified after construction; every call taking a const
// mla_layer * only reads it, so concurrent use from several threads is safe.
unsafe impl Send for Layer {}
unsafe impl Sync for Layer {}

impl Layer {
    fn wrap(out: *mut sys::mla_layer) -> Layer {
        Layer {
            raw: NonNull::new(out).expect("libmla returned a NULL layer"),
        }
    }

    /// Convert one MHA/GQA layer (`mla_layer_convert`). `calib` is required for
    /// `RopeStrategy::Norm2` and `Factorization::ActivationJoint`. Parameters with a progress
    /// callback go to `convert_with_progress`.
    pub fn convert<T: WeightElement>(
        g: &Geometry,
        w: &Weights<'_, T>,
        calib: Option<&Calib>,
        params: &ConvertParams<'_>,
    ) -> Result<Layer> {
        if params.progress.is_some() {
            return Err(Error::binding(
                Status::InvalidArgument,
                "params has a progress callback: use Layer::convert_with_progress".into(),
            ));
        }
        Self::convert_mut(
            g,
            w,
            calib,
            &mut ConvertParams {
                progress: None,
                ..*params
            },
        )
    }

    /// As `convert`, with a progress callback (it needs `&mut`).
    pub fn convert_with_progress<T: WeightElement>(
        g: &Geometry,
        w: &Weights<'_, T>,
        calib: Option<&Calib>,
        params: &mut ConvertParams<'_>,
    ) -> Result<Layer> {
        Self::convert_mut(g, w, calib, params)
    }

    fn convert_mut<T: WeightElement>(
        g: &Geometry,
        w: &Weights<'_, T>,
        calib: Option<&Calib>,
        params: &mut ConvertParams<'_>,
    ) -> Result<Layer> {
        check_version()?;
        let rw = w.raw(g)?;
        let mut p = params.raw;
        if let Some(f) = params.explicit {
            let want = g.n_kv_heads().max(0) as usize * (p.rope_dim.max(0) as usize / 2);
            expect_len("explicit_freqs", f.len(), want, "n_kv_heads × rope_dim/2")?;
            p.explicit_freqs = f.as_ptr();
        }
        let mut slot = params
            .progress
            .take()
            .map(|f| ProgressSlot { f, panic: None });
        if let Some(s) = slot.as_mut() {
            p.progress = Some(progress_trampoline);
            p.progress_user = s as *mut ProgressSlot<'_> as *mut c_void;
        }
        let c = calib.map_or(ptr::null(), |c| c.raw.as_ptr() as *const _);
        let mut out = ptr::null_mut();
        // SAFETY: all pointers valid for the call; the slot outlives it.
        let status = unsafe { sys::mla_layer_convert(g.raw(), &rw, c, &p, &mut out) };
        if let Some(s) = slot {
            if let Some(panic) = s.panic {
                if !out.is_null() {
                    // SAFETY: created by the call above, not yet owned.
                    unsafe { sys::mla_layer_destroy(out) };
                }
                std::panic::resume_unwind(panic);
            }
            params.progress = Some(s.f);
        }
        check(status)?;
        Ok(Layer::wrap(out))
    }

    /// The unconverted MHA/GQA layer, the baseline (`mla_layer_from_mha`).
    pub fn from_mha<T: WeightElement>(g: &Geometry, w: &Weights<'_, T>) -> Result<Layer> {
        check_version()?;
        let rw = w.raw(g)?;
        let mut out = ptr::null_mut();
        // SAFETY: pointers valid for the call.
        check(unsafe { sys::mla_layer_from_mha(g.raw(), &rw, &mut out) })?;
        Ok(Layer::wrap(out))
    }

    /// A layer from checkpoint tensors (`mla_layer_from_tensors`), copied.
    /// Each entry: name, shape, data (whose length must be the product of the shape).
    pub fn from_tensors(
        g: &Geometry,
        rope_dim: i32,
        d_kv: i32,
        tensors: &[(&str, &[i64], TensorData<'_>)],
    ) -> Result<Layer> {
        check_version()?;
        let names: Vec<CString> = tensors
            .iter()
            .map(|(n, _, _)| CString::new(*n))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::binding(Status::InvalidArgument, format!("tensor name: {e}")))?;
        let mut raw = Vec::with_capacity(tensors.len());
        for ((name, shape, data), cname) in tensors.iter().zip(&names) {
            if shape.is_empty() || shape.len() > sys::MLA_TENSOR_MAX_DIMS {
                return Err(Error::binding(
                    Status::InvalidArgument,
                    format!("{name}: {} dimensions, expected 1 to 4", shape.len()),
                ));
            }
            let (dtype, len, ptr) = match data {
                TensorData::F32(d) => (DType::F32, d.len(), d.as_ptr() as *const c_void),
                TensorData::I32(d) => (DType::I32, d.len(), d.as_ptr() as *const c_void),
            };
            let dims: Vec<usize> = shape.iter().map(|&s| to_usize(s)).collect();
            expect_len(name, len, product(name, &dims)?, "the product of its shape")?;
            let mut s = [1i64; sys::MLA_TENSOR_MAX_DIMS];
            s[..shape.len()].copy_from_slice(shape);
            raw.push(sys::mla_tensor {
                name: cname.as_ptr(),
                dtype: dtype.code(),
                ndim: shape.len() as i32,
                shape: s,
                data: ptr,
            });
        }
        let mut out = ptr::null_mut();
        // SAFETY: raw and the names/data it points to live through the call.
        check(unsafe {
            sys::mla_layer_from_tensors(
                g.raw(),
                rope_dim,
                d_kv,
                raw.as_ptr(),
                raw.len() as i32,
                &mut out,
            )
        })?;
        Ok(Layer::wrap(out))
    }

    pub fn info(&self) -> Result<LayerInfo> {
        let mut i = MaybeUninit::<sys::mla_layer_info>::zeroed();
        // SAFETY: a writable struct of the size passed.
        check(unsafe {
            sys::mla_layer_get_info(
                self.raw.as_ptr(),
                i.as_mut_ptr(),
                size_of::<sys::mla_layer_info>(),
            )
        })?;
        // SAFETY: zeroed then written; plain data.
        let i = unsafe { i.assume_init() };
        Ok(LayerInfo {
            kind: LayerKind::from_code(i.kind),
            factorization: Factorization::from_code(i.factorization),
            rope_strategy: RopeStrategy::from_code(i.rope_strategy),
            rope_dim: i.rope_dim,
            d_kv: i.d_kv,
            latent_dim: i.latent_dim,
            rope_width: i.rope_width,
            n_tensors: i.n_tensors,
            weight_dtype: DType::from_code(i.weight_dtype),
        })
    }

    /// Store the layer's weight matrices (every projection; biases stay float32) as
    /// `DType::Bf16` or `DType::F16`, or as `DType::F32` again (`mla_layer_set_weight_dtype`):
    /// half the bytes a decode reads and the layer holds, the products still accumulated in
    /// float32 over the stored values. Takes `&mut self`: no tensor borrowed
    /// from the layer and no forward on it can be alive, as the old weights are freed. A value
    /// beyond f16's range fails with `Status::Numerical` and leaves the layer as it was.
    pub fn set_weight_dtype(&mut self, dtype: DType) -> Result<()> {
        // SAFETY: a valid layer, borrowed exclusively.
        check(unsafe { sys::mla_layer_set_weight_dtype(self.raw.as_ptr(), dtype.code()) })
    }

    /// The geometry the layer was built from (`mla_layer_get_geometry`).
    pub fn geometry(&self) -> Result<Geometry> {
        let mut g = MaybeUninit::<sys::mla_geometry>::zeroed();
        // SAFETY: a writable struct of the size passed.
        check(unsafe {
            sys::mla_layer_get_geometry(
                self.raw.as_ptr(),
                g.as_mut_ptr(),
                size_of::<sys::mla_geometry>(),
            )
        })?;
        // SAFETY: zeroed then written; plain data.
        Ok(Geometry {
            raw: unsafe { g.assume_init() },
        })
    }

    /// The kept RoPE dimensions of one KV head, ascending.
    pub fn rope_dims(&self, kv_head: i32) -> Result<Vec<i32>> {
        let r = self.info()?.rope_dim.max(0) as usize;
        let mut dims = vec![0; r.max(1)];
        // SAFETY: rope_dim ints.
        check(unsafe { sys::mla_layer_rope_dims(self.raw.as_ptr(), kv_head, dims.as_mut_ptr()) })?;
        dims.truncate(r);
        Ok(dims)
    }

    fn tensor_of(&self, t: sys::mla_tensor) -> Tensor<'_> {
        Tensor {
            // SAFETY: the name is a NUL-terminated string owned by the layer (or NULL).
            name: unsafe { cstr(t.name) },
            dtype: DType::from_code(t.dtype),
            shape: t.shape[..t.ndim.clamp(0, 4) as usize].to_vec(),
            data: t.data,
            _layer: PhantomData,
        }
    }

    /// A tensor by checkpoint name ("kv_proj.up_k.weight"), borrowed from the layer.
    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>> {
        let cname = CString::new(name)
            .map_err(|e| Error::binding(Status::InvalidArgument, format!("name: {e}")))?;
        let mut t = MaybeUninit::<sys::mla_tensor>::zeroed();
        // SAFETY: valid name and out-pointer.
        check(unsafe {
            sys::mla_layer_tensor_by_name(self.raw.as_ptr(), cname.as_ptr(), t.as_mut_ptr())
        })?;
        // SAFETY: written by the call.
        Ok(self.tensor_of(unsafe { t.assume_init() }))
    }

    /// Every tensor of the layer.
    pub fn tensors(&self) -> Result<Vec<Tensor<'_>>> {
        (0..self.info()?.n_tensors)
            .map(|i| {
                let mut t = MaybeUninit::<sys::mla_tensor>::zeroed();
                // SAFETY: valid out-pointer; index in range.
                check(unsafe { sys::mla_layer_tensor(self.raw.as_ptr(), i, t.as_mut_ptr()) })?;
                // SAFETY: written by the call.
                Ok(self.tensor_of(unsafe { t.assume_init() }))
            })
            .collect()
    }

    pub fn report(&self) -> Result<ConvertReport> {
        let mut r = MaybeUninit::<sys::mla_convert_report>::zeroed();
        // SAFETY: a writable struct of the size passed.
        check(unsafe {
            sys::mla_layer_get_report(
                self.raw.as_ptr(),
                r.as_mut_ptr(),
                size_of::<sys::mla_convert_report>(),
            )
        })?;
        // SAFETY: written by the call.
        Ok(unsafe { r.assume_init() })
    }

    /// What this layer caches per token, with the frequencies copied out.
    pub fn cache_desc(&self) -> Result<CacheLayerDesc> {
        let mut d = MaybeUninit::<sys::mla_cache_layer_desc>::zeroed();
        // SAFETY: valid out-pointer.
        check(unsafe {
            sys::mla_layer_cache_desc(
                self.raw.as_ptr(),
                d.as_mut_ptr(),
                size_of::<sys::mla_cache_layer_desc>(),
            )
        })?;
        // SAFETY: written by the call.
        let d = unsafe { d.assume_init() };
        let n = d.rope_heads.max(0) as usize * (d.rope_dim.max(0) as usize / 2);
        let rope_freqs = if n == 0 || d.rope_freqs.is_null() {
            Vec::new()
        } else {
            // SAFETY: the layer holds rope_heads × rope_dim/2 frequencies there.
            unsafe { std::slice::from_raw_parts(d.rope_freqs, n) }.to_vec()
        };
        Ok(CacheLayerDesc {
            latent_dim: d.latent_dim,
            rope_heads: d.rope_heads,
            rope_dim: d.rope_dim,
            rope_freqs,
            rope_position_scale: d.rope_position_scale,
            mha_kv_dim: d.mha_kv_dim,
        })
    }

    pub fn as_ptr(&self) -> *const sys::mla_layer {
        self.raw.as_ptr()
    }
}

impl Drop for Layer {
    fn drop(&mut self) {
        // SAFETY: owned handle; tensors borrowed from it cannot outlive it.
        unsafe { sys::mla_layer_destroy(self.raw.as_ptr()) }
    }
}

// ---- cache ---------------------------------------------------------------------------------------

/// What one layer caches per token (`mla_cache_layer_desc`), owning its frequencies.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheLayerDesc {
    pub latent_dim: i32,
    pub rope_heads: i32,
    pub rope_dim: i32,
    /// rope_heads × rope_dim/2 angular frequencies.
    pub rope_freqs: Vec<f32>,
    pub rope_position_scale: f64,
    pub mha_kv_dim: i32,
}

impl CacheLayerDesc {
    fn rope_width(&self) -> usize {
        self.rope_heads.max(0) as usize * self.rope_dim.max(0) as usize
    }
}

/// Cache parameters (`mla_cache_params` without the layers), from the library's defaults.
#[derive(Debug, Clone, Copy)]
pub struct CacheParams {
    raw: sys::mla_cache_params,
}

impl CacheParams {
    pub fn new() -> Result<Self> {
        Ok(CacheParams {
            raw: defaults(sys::mla_cache_default_params)?,
        })
    }
    pub fn latent_dtype(mut self, t: DType) -> Self {
        self.raw.latent_dtype = t.code();
        self
    }
    pub fn rope_dtype(mut self, t: DType) -> Self {
        self.raw.rope_dtype = t.code();
        self
    }
    /// Values per scale of I8/I4 latents; 0 (the default): the largest power of two up to 32
    /// dividing every latent width, which `Cache::stats` reports (doc/cache.md).
    pub fn quant_group(mut self, n: i32) -> Self {
        self.raw.quant_group = n;
        self
    }
    pub fn block_tokens(mut self, n: i32) -> Self {
        self.raw.block_tokens = n;
        self
    }
    pub fn capacity_tokens(mut self, n: i64) -> Self {
        self.raw.capacity_tokens = n;
        self
    }
    pub fn capacity_bytes(mut self, n: i64) -> Self {
        self.raw.capacity_bytes = n;
        self
    }
    pub fn n_seq_max(mut self, n: i32) -> Self {
        self.raw.n_seq_max = n;
        self
    }
}

/// Cache accounting (`mla_cache_stats`).
pub type CacheStats = sys::mla_cache_stats;

/// 1 − bytes_per_token / mha_bytes_per_token: the fraction of KV-cache memory saved.
pub fn saving(s: &CacheStats) -> f64 {
    1.0 - s.bytes_per_token as f64 / s.mha_bytes_per_token as f64
}

/// A latent KV cache (`mla_cache`). `Send` but not `Sync`: most calls need the cache to
/// themselves, which `&mut self` expresses.
pub struct Cache {
    raw: NonNull<sys::mla_cache>,
    layers: Vec<CacheLayerDesc>,
}

// SAFETY: the cache has no thread affinity; calls needing exclusive access take &mut self.
unsafe impl Send for Cache {}

/// One sequence's tokens read out of the cache, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqData {
    pub latent: Vec<f32>,
    pub rope: Vec<f32>,
    pub pos: Vec<i64>,
}

impl Cache {
    /// A cache for these layers (descs are copied).
    pub fn new(layers: &[CacheLayerDesc], params: &CacheParams) -> Result<Cache> {
        check_version()?;
        let mut raw_layers = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let n = l.rope_heads.max(0) as usize * (l.rope_dim.max(0) as usize / 2);
            expect_len(
                &format!("layers[{i}].rope_freqs"),
                l.rope_freqs.len(),
                n,
                "rope_heads × rope_dim/2",
            )?;
            // struct_size = size_of (the Vec's stride), as the library reads the array by it.
            let mut raw: sys::mla_cache_layer_desc =
                defaults(sys::mla_cache_layer_desc_default_params)?;
            raw.latent_dim = l.latent_dim;
            raw.rope_heads = l.rope_heads;
            raw.rope_dim = l.rope_dim;
            raw.rope_freqs = if n == 0 {
                ptr::null()
            } else {
                l.rope_freqs.as_ptr()
            };
            raw.rope_position_scale = l.rope_position_scale;
            raw.mha_kv_dim = l.mha_kv_dim;
            raw_layers.push(raw);
        }
        let mut p = params.raw;
        p.n_layers = layers.len() as i32;
        p.layers = raw_layers.as_ptr();
        let mut out = ptr::null_mut();
        // SAFETY: descs and frequencies live through the call (copied by the library).
        check(unsafe { sys::mla_cache_create(&p, &mut out) })?;
        Ok(Cache {
            raw: NonNull::new(out).expect("mla_cache_create gave NULL"),
            layers: layers.to_vec(),
        })
    }

    fn desc(&self, layer: i32) -> Result<&CacheLayerDesc> {
        usize::try_from(layer)
            .ok()
            .and_then(|l| self.layers.get(l))
            .ok_or_else(|| {
                Error::binding(
                    Status::InvalidArgument,
                    format!(
                        "layer {layer} out of range: the cache has {}",
                        self.layers.len()
                    ),
                )
            })
    }

    pub fn layers(&self) -> &[CacheLayerDesc] {
        &self.layers
    }

    pub fn reserve(&mut self, seq: i32, pos: i64, n_tokens: i64) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::mla_cache_reserve(self.raw.as_ptr(), seq, pos, n_tokens) })
    }

    /// Store one layer's data for tokens at positions pos.. of seq: latent n × latent_dim,
    /// rope n × rope_heads·rope_dim (already rotated; empty when the layer has none).
    pub fn write(
        &mut self,
        layer: i32,
        seq: i32,
        pos: i64,
        latent: &[f32],
        rope: &[f32],
    ) -> Result<()> {
        let d = self.desc(layer)?;
        let ld = d.latent_dim.max(1) as usize;
        if latent.len() % ld != 0 {
            return shape_error("latent", latent.len(), ld, "a multiple of latent_dim");
        }
        let n = latent.len() / ld;
        expect_len(
            "rope",
            rope.len(),
            n * d.rope_width(),
            "n_tokens × rope_heads·rope_dim",
        )?;
        let rp = if d.rope_width() == 0 {
            ptr::null()
        } else {
            rope.as_ptr()
        };
        // SAFETY: slices hold what the layer's shapes say.
        check(unsafe {
            sys::mla_cache_write(
                self.raw.as_ptr(),
                layer,
                seq,
                pos,
                n as i64,
                latent.as_ptr(),
                rp,
            )
        })
    }

    pub fn seq_rm(&mut self, seq: i32, p0: i64, p1: i64) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::mla_cache_seq_rm(self.raw.as_ptr(), seq, p0, p1) })
    }
    pub fn seq_cp(&mut self, src: i32, dst: i32, p0: i64, p1: i64) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::mla_cache_seq_cp(self.raw.as_ptr(), src, dst, p0, p1) })
    }
    pub fn seq_fork(&mut self, src: i32, dst: i32) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::mla_cache_seq_fork(self.raw.as_ptr(), src, dst) })
    }
    pub fn seq_keep(&mut self, seq: i32) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::mla_cache_seq_keep(self.raw.as_ptr(), seq) })
    }
    pub fn seq_shift(&mut self, seq: i32, p0: i64, p1: i64, delta: i64) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::mla_cache_seq_shift(self.raw.as_ptr(), seq, p0, p1, delta) })
    }

    fn query(
        &self,
        f: unsafe extern "C" fn(*const sys::mla_cache, i32, *mut i64) -> c_int,
        seq: i32,
    ) -> Result<i64> {
        let mut v = 0;
        // SAFETY: valid handle and out-pointer.
        check(unsafe { f(self.raw.as_ptr(), seq, &mut v) })?;
        Ok(v)
    }
    pub fn seq_pos_min(&self, seq: i32) -> Result<i64> {
        self.query(sys::mla_cache_seq_pos_min, seq)
    }
    pub fn seq_pos_max(&self, seq: i32) -> Result<i64> {
        self.query(sys::mla_cache_seq_pos_max, seq)
    }
    pub fn seq_length(&self, seq: i32) -> Result<i64> {
        self.query(sys::mla_cache_seq_length, seq)
    }
    /// Tokens of seq, from its first, that cache layer `layer` has written: where that layer's
    /// next forward for seq starts (reserved slots are unwritten).
    pub fn seq_written(&self, layer: i32, seq: i32) -> Result<i64> {
        let mut v = 0;
        // SAFETY: valid handle and out-pointer.
        check(unsafe { sys::mla_cache_seq_written(self.raw.as_ptr(), layer, seq, &mut v) })?;
        Ok(v)
    }
    pub fn clear(&mut self) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::mla_cache_clear(self.raw.as_ptr()) })
    }

    /// Tokens [first, first+n_tokens) of seq at one layer, dequantized to float32.
    pub fn read(&self, layer: i32, seq: i32, first: i64, n_tokens: i64) -> Result<SeqData> {
        let d = self.desc(layer)?;
        // A range past the sequence is the library's error to report, before n_tokens sizes an
        // allocation (a huge one aborts the process instead of returning an error).
        let len = self.seq_length(seq)?;
        if first < 0 || n_tokens < 0 || first > len || n_tokens > len - first {
            // SAFETY: NULL outputs are allowed; the library rejects the range before writing.
            check(unsafe {
                sys::mla_cache_seq_read(
                    self.raw.as_ptr(),
                    layer,
                    seq,
                    first,
                    n_tokens,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            })?;
        }
        let n = to_usize(n_tokens);
        let mut s = SeqData {
            latent: vec![0.0; product("latent", &[n, d.latent_dim.max(0) as usize])?],
            rope: vec![0.0; product("rope", &[n, d.rope_width()])?],
            pos: vec![0; n],
        };
        let rp = if d.rope_width() == 0 {
            ptr::null_mut()
        } else {
            s.rope.as_mut_ptr()
        };
        // SAFETY: buffers sized n × the layer's widths.
        check(unsafe {
            sys::mla_cache_seq_read(
                self.raw.as_ptr(),
                layer,
                seq,
                first,
                n_tokens,
                s.latent.as_mut_ptr(),
                rp,
                s.pos.as_mut_ptr(),
            )
        })?;
        Ok(s)
    }

    /// All tokens of seq at one layer.
    pub fn read_all(&self, layer: i32, seq: i32) -> Result<SeqData> {
        let n = self.seq_length(seq)?;
        self.read(layer, seq, 0, n)
    }

    pub fn stats(&self) -> Result<CacheStats> {
        let mut s = CacheStats::default();
        // SAFETY: a writable struct of the size passed.
        check(unsafe {
            sys::mla_cache_get_stats(self.raw.as_ptr(), &mut s, size_of::<CacheStats>())
        })?;
        Ok(s)
    }

    /// A snapshot of seq (or of everything with seq < 0).
    pub fn save(&self, seq: i32) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: valid out-pointer.
        check(unsafe { sys::mla_cache_save_size(self.raw.as_ptr(), seq, &mut size) })?;
        let mut buf = vec![0u8; size];
        let mut written = 0usize;
        // SAFETY: buf holds size bytes.
        check(unsafe {
            sys::mla_cache_save(
                self.raw.as_ptr(),
                seq,
                buf.as_mut_ptr().cast(),
                size,
                &mut written,
            )
        })?;
        buf.truncate(written);
        Ok(buf)
    }

    /// Load a snapshot; on failure the cache is unchanged.
    pub fn load(&mut self, seq: i32, data: &[u8]) -> Result<()> {
        // SAFETY: data is readable for its length.
        check(unsafe {
            sys::mla_cache_load(self.raw.as_ptr(), seq, data.as_ptr().cast(), data.len())
        })
    }

    fn c_path(path: &Path) -> Result<CString> {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes())
            .map_err(|e| Error::binding(Status::InvalidArgument, format!("path: {e}")))
    }

    pub fn save_file(&self, seq: i32, path: &Path) -> Result<()> {
        let p = Self::c_path(path)?;
        // SAFETY: NUL-terminated path.
        check(unsafe { sys::mla_cache_save_file(self.raw.as_ptr(), seq, p.as_ptr()) })
    }

    pub fn load_file(&mut self, seq: i32, path: &Path) -> Result<()> {
        let p = Self::c_path(path)?;
        // SAFETY: NUL-terminated path.
        check(unsafe { sys::mla_cache_load_file(self.raw.as_ptr(), seq, p.as_ptr()) })
    }

    pub fn as_ptr(&self) -> *const sys::mla_cache {
        self.raw.as_ptr()
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // SAFETY: owned handle, destroyed once.
        unsafe { sys::mla_cache_destroy(self.raw.as_ptr()) }
    }
}

// ---- attention -----------------------------------------------------------------------------------

/// Attention parameters (`mla_attn_params`), from the library's defaults.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    raw: sys::mla_attn_params,
}

impl AttnParams {
    pub fn new() -> Result<Self> {
        Ok(AttnParams {
            raw: defaults(sys::mla_attn_default_params)?,
        })
    }
    /// Threads a forward runs on, the caller's included (0: all cores; doc/attention.md,
    /// "Threads").
    pub fn n_threads(mut self, n: i32) -> Self {
        self.raw.n_threads = n;
        self
    }
    /// Where they run: [`AttnThreads::Pool`] (the default: the handle's own workers, which
    /// take work as they come and yield the core when idle) or [`AttnThreads::OpenMp`] (the
    /// process's OpenMP runtime, for a host whose own parallel work runs on the same libgomp).
    pub fn threads(mut self, t: AttnThreads) -> Self {
        self.raw.threads = t.code();
        self
    }
    pub fn path(mut self, p: AttnPath) -> Self {
        self.raw.path = p.code();
        self
    }
    /// Path AUTO's switch: 0 (the default) weighs both paths' multiply-adds for each chunk,
    /// `n > 0` takes materialized for chunks of `n` or more query tokens (doc/attention.md).
    pub fn crossover_tokens(mut self, n: i32) -> Self {
        self.raw.crossover_tokens = n;
        self
    }
    /// The most scratch memory the handle keeps; 0 (the default): no limit. A batch that
    /// needs more than any plan within it fails with [`Status::Capacity`], naming its need.
    pub fn max_scratch_bytes(mut self, bytes: i64) -> Self {
        self.raw.max_scratch_bytes = bytes;
        self
    }
}

/// Worker threads and scratch memory for forward passes (`mla_attn`). `Send`, not `Sync`:
/// give each thread its own.
pub struct Attn {
    raw: NonNull<sys::mla_attn>,
}

// SAFETY: no thread affinity; forward takes &mut self (not thread-safe on one handle).
unsafe impl Send for Attn {}

impl Attn {
    pub fn new(params: &AttnParams) -> Result<Attn> {
        check_version()?;
        let mut out = ptr::null_mut();
        // SAFETY: valid pointers.
        check(unsafe { sys::mla_attn_create(&params.raw, &mut out) })?;
        Ok(Attn {
            raw: NonNull::new(out).expect("mla_attn_create gave NULL"),
        })
    }

    /// The scratch memory the handle holds now, in bytes: forwards grow it to the largest
    /// batch's need and keep it.
    pub fn scratch_bytes(&self) -> Result<i64> {
        let mut b = 0i64;
        // SAFETY: live handle, valid pointer.
        check(unsafe { sys::mla_attn_scratch_bytes(self.raw.as_ptr(), &mut b) })?;
        Ok(b)
    }

    /// Frees the scratch memory (the next forward allocates what it needs again).
    pub fn release_scratch(&mut self) -> Result<()> {
        // SAFETY: live handle; &mut self: no forward runs on it meanwhile.
        check(unsafe { sys::mla_attn_scratch_release(self.raw.as_ptr()) })
    }

    /// As `forward`, calling `progress(done, total)` on this thread as the attention advances
    /// (units: (query token, context token) pairs; the last call has `done == total`).
    /// `ControlFlow::Break` cancels: `Status::Cancelled`, nothing appended, `out` untouched. A
    /// panic in it cancels and resumes after the call.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_progress(
        &mut self,
        layer: &Layer,
        cache: &mut Cache,
        cache_layer: i32,
        x: &[f32],
        seq: &[i32],
        pos: &[i64],
        out: &mut [f32],
        progress: &mut dyn FnMut(i64, i64) -> ControlFlow<()>,
    ) -> Result<()> {
        let mut slot = ProgressSlot {
            f: progress,
            panic: None,
        };
        // SAFETY: live handle; the slot outlives the forward, and the callback is cleared
        // before it goes.
        check(unsafe {
            sys::mla_attn_set_progress(
                self.raw.as_ptr(),
                Some(progress_trampoline),
                &mut slot as *mut ProgressSlot<'_> as *mut c_void,
            )
        })?;
        let r = self.forward(layer, cache, cache_layer, x, seq, pos, out);
        // SAFETY: live handle.
        unsafe { sys::mla_attn_set_progress(self.raw.as_ptr(), None, ptr::null_mut()) };
        if let Some(panic) = slot.panic {
            std::panic::resume_unwind(panic);
        }
        r
    }

    /// Run `layer` (cache layer `cache_layer`) for n tokens: x n × d_model, seq and pos n
    /// entries, out n × d_model (the o_proj output). Appends to the cache.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        layer: &Layer,
        cache: &mut Cache,
        cache_layer: i32,
        x: &[f32],
        seq: &[i32],
        pos: &[i64],
        out: &mut [f32],
    ) -> Result<()> {
        let d = layer.geometry()?.d_model().max(1) as usize;
        let n = seq.len();
        expect_len(
            "x",
            x.len(),
            n * d,
            "n_tokens × d_model, n_tokens = seq.len()",
        )?;
        expect_len("pos", pos.len(), n, "n_tokens")?;
        expect_len("out", out.len(), n * d, "n_tokens × d_model")?;
        // SAFETY: slices sized as checked; out cannot alias x (& and &mut).
        check(unsafe {
            sys::mla_attn_forward(
                self.raw.as_ptr(),
                layer.raw.as_ptr(),
                cache.raw.as_ptr(),
                cache_layer,
                x.as_ptr(),
                n as i64,
                seq.as_ptr(),
                pos.as_ptr(),
                out.as_mut_ptr(),
            )
        })
    }

    /// `forward` for consecutive tokens of one sequence starting at position `pos0`.
    pub fn forward_seq(
        &mut self,
        layer: &Layer,
        cache: &mut Cache,
        cache_layer: i32,
        x: &[f32],
        seq: i32,
        pos0: i64,
    ) -> Result<Vec<f32>> {
        let d = layer.geometry()?.d_model().max(1) as usize;
        if x.len() % d != 0 {
            return shape_error("x", x.len(), d, "a multiple of d_model");
        }
        let n = x.len() / d;
        let seqs = vec![seq; n];
        let pos: Vec<i64> = (0..n as i64).map(|t| pos0 + t).collect();
        let mut out = vec![0.0; x.len()];
        self.forward(layer, cache, cache_layer, x, &seqs, &pos, &mut out)?;
        Ok(out)
    }
}

impl Drop for Attn {
    fn drop(&mut self) {
        // SAFETY: owned handle, destroyed once.
        unsafe { sys::mla_attn_destroy(self.raw.as_ptr()) }
    }
}

// ---- Debug ---------------------------------------------------------------------------------------

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Layer");
        d.field("ptr", &self.raw);
        if let Ok(i) = self.info() {
            d.field("kind", &i.kind)
                .field("rope_dim", &i.rope_dim)
                .field("d_kv", &i.d_kv);
        }
        d.finish()
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("ptr", &self.raw)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl fmt::Debug for Attn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attn").field("ptr", &self.raw).finish()
    }
}

impl fmt::Debug for Calib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calib").field("ptr", &self.raw).finish()
    }
}

/// The README's example, run by `cargo test` as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

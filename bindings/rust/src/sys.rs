//! Raw declarations of libmla's C API (include/mla/*.h), field for field and argument for
//! argument. Nothing here is safe to call without reading the header comments; the safe layer is
//! the crate root. C enums are plain `c_int` with constants, since the library may return values
//! this binding does not know yet.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

// ---- version.h (the header version these declarations mirror) ----------------------------------
pub const MLA_VERSION_MAJOR: c_int = 0;
pub const MLA_VERSION_MINOR: c_int = 1;
pub const MLA_VERSION_PATCH: c_int = 0;
pub const MLA_VERSION_NUMBER: c_int =
    MLA_VERSION_MAJOR * 10000 + MLA_VERSION_MINOR * 100 + MLA_VERSION_PATCH;

// ---- common.h ------------------------------------------------------------------------------------
pub type mla_status = c_int;
pub const MLA_OK: mla_status = 0;
pub const MLA_ERR_INVALID_ARGUMENT: mla_status = 1;
pub const MLA_ERR_SHAPE_MISMATCH: mla_status = 2;
pub const MLA_ERR_OUT_OF_MEMORY: mla_status = 3;
pub const MLA_ERR_IO: mla_status = 4;
pub const MLA_ERR_BAD_FORMAT: mla_status = 5;
pub const MLA_ERR_UNSUPPORTED: mla_status = 6;
pub const MLA_ERR_CAPACITY: mla_status = 7;
pub const MLA_ERR_NUMERICAL: mla_status = 8;
pub const MLA_ERR_INTERNAL: mla_status = 9;
pub const MLA_ERR_CANCELLED: mla_status = 10;
pub const MLA_STATUS_COUNT: c_int = 11;

pub type mla_dtype = c_int;
pub const MLA_DTYPE_F32: mla_dtype = 0;
pub const MLA_DTYPE_F16: mla_dtype = 1;
pub const MLA_DTYPE_BF16: mla_dtype = 2;
pub const MLA_DTYPE_I8: mla_dtype = 3;
pub const MLA_DTYPE_I4: mla_dtype = 4;
pub const MLA_DTYPE_I32: mla_dtype = 5;
pub const MLA_DTYPE_F64: mla_dtype = 6;

pub const MLA_TENSOR_MAX_DIMS: usize = 4;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_tensor {
    pub name: *const c_char,
    pub dtype: mla_dtype,
    pub ndim: i32,
    pub shape: [i64; MLA_TENSOR_MAX_DIMS],
    pub data: *const c_void,
}

pub type mla_progress_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, done: i64, total: i64) -> c_int>;

// ---- convert.h -----------------------------------------------------------------------------------
pub type mla_rope_scaling = c_int;
pub const MLA_ROPE_SCALING_NONE: mla_rope_scaling = 0;
pub const MLA_ROPE_SCALING_LINEAR: mla_rope_scaling = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_geometry {
    pub struct_size: usize,
    pub d_model: i32,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub head_dim: i32,
    pub rope_theta: f64,
    pub rope_scaling: mla_rope_scaling,
    pub rope_scaling_factor: f64,
    pub qkv_bias: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_layer_weights {
    pub struct_size: usize,
    pub dtype: mla_dtype,
    pub wq: *const c_void,
    pub wk: *const c_void,
    pub wv: *const c_void,
    pub wo: *const c_void,
    pub bq: *const c_void,
    pub bk: *const c_void,
    pub bv: *const c_void,
}

/// Opaque.
#[repr(C)]
pub struct mla_calib {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_calib_params {
    pub struct_size: usize,
    pub qk_norms: i32,
    pub covariance: i32,
}

pub type mla_rope_strategy = c_int;
pub const MLA_ROPE_HIGH: mla_rope_strategy = 0;
pub const MLA_ROPE_LOW: mla_rope_strategy = 1;
pub const MLA_ROPE_UNIFORM: mla_rope_strategy = 2;
pub const MLA_ROPE_2NORM: mla_rope_strategy = 3;
pub const MLA_ROPE_EXPLICIT: mla_rope_strategy = 4;

pub type mla_factorization = c_int;
pub const MLA_FACTOR_JOINT: mla_factorization = 0;
pub const MLA_FACTOR_SPLIT: mla_factorization = 1;
pub const MLA_FACTOR_ACTIVATION_JOINT: mla_factorization = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_convert_params {
    pub struct_size: usize,
    pub rope_strategy: mla_rope_strategy,
    pub rope_dim: i32,
    pub uniform_start: i32,
    pub explicit_freqs: *const i32,
    pub factorization: mla_factorization,
    pub d_kv: i32,
    pub damping: f64,
    pub progress: mla_progress_fn,
    pub progress_user: *mut c_void,
}

/// Opaque.
#[repr(C)]
pub struct mla_layer {
    _private: [u8; 0],
}

pub type mla_layer_kind = c_int;
pub const MLA_LAYER_MLA: mla_layer_kind = 0;
pub const MLA_LAYER_MHA: mla_layer_kind = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_layer_info {
    pub struct_size: usize,
    pub kind: mla_layer_kind,
    pub factorization: mla_factorization,
    pub rope_strategy: mla_rope_strategy,
    pub rope_dim: i32,
    pub d_kv: i32,
    pub latent_dim: i32,
    pub rope_width: i32,
    pub n_tensors: i32,
    pub weight_dtype: mla_dtype,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_convert_report {
    pub struct_size: usize,
    pub kept_energy: f64,
    pub k_nope_rel_error: f64,
    pub v_rel_error: f64,
    pub k_nope_act_rel_error: f64,
    pub v_act_rel_error: f64,
    pub seconds: f64,
}

// ---- cache.h -------------------------------------------------------------------------------------
/// Opaque.
#[repr(C)]
pub struct mla_cache {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_cache_layer_desc {
    pub struct_size: usize,
    pub latent_dim: i32,
    pub rope_heads: i32,
    pub rope_dim: i32,
    pub rope_freqs: *const f32,
    pub rope_position_scale: f64,
    pub mha_kv_dim: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_cache_params {
    pub struct_size: usize,
    pub n_layers: i32,
    pub layers: *const mla_cache_layer_desc,
    pub latent_dtype: mla_dtype,
    pub rope_dtype: mla_dtype,
    pub quant_group: i32,
    pub block_tokens: i32,
    pub capacity_tokens: i64,
    pub capacity_bytes: i64,
    pub n_seq_max: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct mla_cache_stats {
    pub struct_size: usize,
    pub bytes_per_token: i64,
    pub mha_bytes_per_token: i64,
    pub block_bytes: i64,
    pub blocks_total: i64,
    pub blocks_free: i64,
    pub tokens_used: i64,
    pub bytes_used: i64,
    pub capacity_tokens: i64,
    pub quant_group: i32,
}

// ---- attn.h --------------------------------------------------------------------------------------
/// Opaque.
#[repr(C)]
pub struct mla_attn {
    _private: [u8; 0],
}

pub type mla_attn_path = c_int;
pub const MLA_ATTN_PATH_AUTO: mla_attn_path = 0;
pub const MLA_ATTN_PATH_ABSORBED: mla_attn_path = 1;
pub const MLA_ATTN_PATH_MATERIALIZED: mla_attn_path = 2;

pub type mla_attn_threads = c_int;
pub const MLA_ATTN_THREADS_POOL: mla_attn_threads = 0;
pub const MLA_ATTN_THREADS_OPENMP: mla_attn_threads = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mla_attn_params {
    pub struct_size: usize,
    pub n_threads: i32,
    pub path: mla_attn_path,
    pub crossover_tokens: i32,
    pub max_scratch_bytes: i64,
    pub threads: mla_attn_threads,
}

extern "C" {
    // common.h
    pub fn mla_status_string(status: mla_status) -> *const c_char;
    pub fn mla_last_error() -> *const c_char;
    pub fn mla_clear_error();
    pub fn mla_version() -> c_int;
    pub fn mla_version_string() -> *const c_char;
    pub fn mla_build_info() -> *const c_char;
    pub fn mla_dtype_bits(dtype: mla_dtype) -> c_int;
    pub fn mla_dtype_name(dtype: mla_dtype) -> *const c_char;

    // convert.h
    pub fn mla_geometry_default_params(g: *mut mla_geometry, struct_size: usize) -> mla_status;
    pub fn mla_layer_weights_default_params(
        w: *mut mla_layer_weights,
        struct_size: usize,
    ) -> mla_status;
    pub fn mla_calib_default_params(p: *mut mla_calib_params, struct_size: usize) -> mla_status;
    pub fn mla_calib_create(
        g: *const mla_geometry,
        w: *const mla_layer_weights,
        params: *const mla_calib_params,
        out: *mut *mut mla_calib,
    ) -> mla_status;
    pub fn mla_calib_destroy(calib: *mut mla_calib);
    pub fn mla_calib_feed(calib: *mut mla_calib, x: *const f32, n_tokens: i64) -> mla_status;
    pub fn mla_calib_token_count(calib: *const mla_calib, n_tokens: *mut i64) -> mla_status;
    pub fn mla_calib_qk_stats(
        calib: *const mla_calib,
        q_norm: *mut f32,
        k_norm: *mut f32,
        score: *mut f32,
    ) -> mla_status;
    pub fn mla_calib_covariance(calib: *const mla_calib, xtx: *mut f64) -> mla_status;
    pub fn mla_convert_default_params(p: *mut mla_convert_params, struct_size: usize)
        -> mla_status;
    pub fn mla_layer_convert(
        g: *const mla_geometry,
        w: *const mla_layer_weights,
        calib: *const mla_calib,
        params: *const mla_convert_params,
        out: *mut *mut mla_layer,
    ) -> mla_status;
    pub fn mla_layer_from_mha(
        g: *const mla_geometry,
        w: *const mla_layer_weights,
        out: *mut *mut mla_layer,
    ) -> mla_status;
    pub fn mla_layer_destroy(layer: *mut mla_layer);
    pub fn mla_layer_get_info(
        layer: *const mla_layer,
        info: *mut mla_layer_info,
        struct_size: usize,
    ) -> mla_status;
    pub fn mla_layer_get_geometry(
        layer: *const mla_layer,
        g: *mut mla_geometry,
        struct_size: usize,
    ) -> mla_status;
    pub fn mla_layer_rope_dims(layer: *const mla_layer, kv_head: i32, dims: *mut i32)
        -> mla_status;
    pub fn mla_layer_tensor(
        layer: *const mla_layer,
        index: i32,
        out: *mut mla_tensor,
    ) -> mla_status;
    pub fn mla_layer_tensor_by_name(
        layer: *const mla_layer,
        name: *const c_char,
        out: *mut mla_tensor,
    ) -> mla_status;
    pub fn mla_layer_from_tensors(
        g: *const mla_geometry,
        rope_dim: i32,
        d_kv: i32,
        tensors: *const mla_tensor,
        n_tensors: i32,
        out: *mut *mut mla_layer,
    ) -> mla_status;
    pub fn mla_layer_get_report(
        layer: *const mla_layer,
        report: *mut mla_convert_report,
        struct_size: usize,
    ) -> mla_status;
    pub fn mla_layer_set_weight_dtype(layer: *mut mla_layer, dtype: mla_dtype) -> mla_status;

    // cache.h
    pub fn mla_cache_layer_desc_default_params(
        d: *mut mla_cache_layer_desc,
        struct_size: usize,
    ) -> mla_status;
    pub fn mla_layer_cache_desc(
        layer: *const mla_layer,
        desc: *mut mla_cache_layer_desc,
        struct_size: usize,
    ) -> mla_status;
    pub fn mla_cache_default_params(p: *mut mla_cache_params, struct_size: usize) -> mla_status;
    pub fn mla_cache_create(p: *const mla_cache_params, out: *mut *mut mla_cache) -> mla_status;
    pub fn mla_cache_destroy(cache: *mut mla_cache);
    pub fn mla_cache_reserve(
        cache: *mut mla_cache,
        seq: i32,
        pos: i64,
        n_tokens: i64,
    ) -> mla_status;
    pub fn mla_cache_write(
        cache: *mut mla_cache,
        layer: i32,
        seq: i32,
        pos: i64,
        n_tokens: i64,
        latent: *const f32,
        rope: *const f32,
    ) -> mla_status;
    pub fn mla_cache_seq_rm(cache: *mut mla_cache, seq: i32, p0: i64, p1: i64) -> mla_status;
    pub fn mla_cache_seq_cp(
        cache: *mut mla_cache,
        src: i32,
        dst: i32,
        p0: i64,
        p1: i64,
    ) -> mla_status;
    pub fn mla_cache_seq_fork(cache: *mut mla_cache, src: i32, dst: i32) -> mla_status;
    pub fn mla_cache_seq_keep(cache: *mut mla_cache, seq: i32) -> mla_status;
    pub fn mla_cache_seq_shift(
        cache: *mut mla_cache,
        seq: i32,
        p0: i64,
        p1: i64,
        delta: i64,
    ) -> mla_status;
    pub fn mla_cache_seq_pos_min(cache: *const mla_cache, seq: i32, pos: *mut i64) -> mla_status;
    pub fn mla_cache_seq_pos_max(cache: *const mla_cache, seq: i32, pos: *mut i64) -> mla_status;
    pub fn mla_cache_seq_length(
        cache: *const mla_cache,
        seq: i32,
        n_tokens: *mut i64,
    ) -> mla_status;
    pub fn mla_cache_seq_written(
        cache: *const mla_cache,
        layer: i32,
        seq: i32,
        n_tokens: *mut i64,
    ) -> mla_status;
    pub fn mla_cache_clear(cache: *mut mla_cache) -> mla_status;
    pub fn mla_cache_seq_read(
        cache: *const mla_cache,
        layer: i32,
        seq: i32,
        first: i64,
        n_tokens: i64,
        latent: *mut f32,
        rope: *mut f32,
        pos: *mut i64,
    ) -> mla_status;
    pub fn mla_cache_get_stats(
        cache: *const mla_cache,
        stats: *mut mla_cache_stats,
        struct_size: usize,
    ) -> mla_status;
    pub fn mla_cache_save_size(cache: *const mla_cache, seq: i32, size: *mut usize) -> mla_status;
    pub fn mla_cache_save(
        cache: *const mla_cache,
        seq: i32,
        buf: *mut c_void,
        buf_size: usize,
        written: *mut usize,
    ) -> mla_status;
    pub fn mla_cache_load(
        cache: *mut mla_cache,
        seq: i32,
        buf: *const c_void,
        size: usize,
    ) -> mla_status;
    pub fn mla_cache_save_file(
        cache: *const mla_cache,
        seq: i32,
        path: *const c_char,
    ) -> mla_status;
    pub fn mla_cache_load_file(cache: *mut mla_cache, seq: i32, path: *const c_char) -> mla_status;

    // attn.h
    pub fn mla_attn_default_params(p: *mut mla_attn_params, struct_size: usize) -> mla_status;
    pub fn mla_attn_create(params: *const mla_attn_params, out: *mut *mut mla_attn) -> mla_status;
    pub fn mla_attn_destroy(attn: *mut mla_attn);
    pub fn mla_attn_scratch_bytes(attn: *const mla_attn, bytes: *mut i64) -> mla_status;
    pub fn mla_attn_scratch_release(attn: *mut mla_attn) -> mla_status;
    pub fn mla_attn_set_progress(
        attn: *mut mla_attn,
        progress: mla_progress_fn,
        user: *mut c_void,
    ) -> mla_status;
    pub fn mla_attn_forward(
        attn: *mut mla_attn,
        layer: *const mla_layer,
        cache: *mut mla_cache,
        cache_layer: i32,
        x: *const f32,
        n_tokens: i64,
        seq: *const i32,
        pos: *const i64,
        out: *mut f32,
    ) -> mla_status;
}

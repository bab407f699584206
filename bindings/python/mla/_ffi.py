"""Raw ctypes declarations of libmla's C API, and nothing else.

Mirrors include/mla/*.h exactly: every struct field for field (same names, same order, same
types), every function with its argtypes and restype. No policy lives here: the pythonic layer
(mla/__init__.py, convert.py, cache.py, attn.py) decides how to call these. tests/python/test_ffi.py
checks this file against the headers (names, signatures) and against the C compiler (sizes and
offsets of every field).
"""
from __future__ import annotations

import ctypes
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_float, c_int, c_int32,
                    c_int64, c_size_t, c_void_p)
from typing import Callable, Dict, List, Tuple

# The header version these declarations mirror (include/mla/version.h).
VERSION_MAJOR = 0
VERSION_MINOR = 1
VERSION_PATCH = 0
VERSION_NUMBER = VERSION_MAJOR * 10000 + VERSION_MINOR * 100 + VERSION_PATCH

# ---- common.h ---------------------------------------------------------------------------------
# C enums are ints with these compilers (all values fit).
mla_status = c_int
MLA_OK = 0
MLA_ERR_INVALID_ARGUMENT = 1
MLA_ERR_SHAPE_MISMATCH = 2
MLA_ERR_OUT_OF_MEMORY = 3
MLA_ERR_IO = 4
MLA_ERR_BAD_FORMAT = 5
MLA_ERR_UNSUPPORTED = 6
MLA_ERR_CAPACITY = 7
MLA_ERR_NUMERICAL = 8
MLA_ERR_INTERNAL = 9
MLA_ERR_CANCELLED = 10
MLA_STATUS_COUNT = 11

mla_dtype = c_int
MLA_DTYPE_F32 = 0
MLA_DTYPE_F16 = 1
MLA_DTYPE_BF16 = 2
MLA_DTYPE_I8 = 3
MLA_DTYPE_I4 = 4
MLA_DTYPE_I32 = 5
MLA_DTYPE_F64 = 6

MLA_TENSOR_MAX_DIMS = 4


class mla_tensor(Structure):
    _fields_ = [
        ("name", c_char_p),
        ("dtype", mla_dtype),
        ("ndim", c_int32),
        ("shape", c_int64 * MLA_TENSOR_MAX_DIMS),
        ("data", c_void_p),
    ]


mla_progress_fn = CFUNCTYPE(c_int, c_void_p, c_int64, c_int64)

# ---- convert.h --------------------------------------------------------------------------------
mla_rope_scaling = c_int
MLA_ROPE_SCALING_NONE = 0
MLA_ROPE_SCALING_LINEAR = 1


class mla_geometry(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("d_model", c_int32),
        ("n_heads", c_int32),
        ("n_kv_heads", c_int32),
        ("head_dim", c_int32),
        ("rope_theta", c_double),
        ("rope_scaling", mla_rope_scaling),
        ("rope_scaling_factor", c_double),
        ("qkv_bias", c_int32),
    ]


class mla_layer_weights(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("dtype", mla_dtype),
        ("wq", c_void_p),
        ("wk", c_void_p),
        ("wv", c_void_p),
        ("wo", c_void_p),
        ("bq", c_void_p),
        ("bk", c_void_p),
        ("bv", c_void_p),
    ]


class mla_calib(Structure):
    """Opaque."""


class mla_calib_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("qk_norms", c_int32),
        ("covariance", c_int32),
    ]


mla_rope_strategy = c_int
MLA_ROPE_HIGH = 0
MLA_ROPE_LOW = 1
MLA_ROPE_UNIFORM = 2
MLA_ROPE_2NORM = 3
MLA_ROPE_EXPLICIT = 4

mla_factorization = c_int
MLA_FACTOR_JOINT = 0
MLA_FACTOR_SPLIT = 1
MLA_FACTOR_ACTIVATION_JOINT = 2


class mla_convert_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("rope_strategy", mla_rope_strategy),
        ("rope_dim", c_int32),
        ("uniform_start", c_int32),
        ("explicit_freqs", POINTER(c_int32)),
        ("factorization", mla_factorization),
        ("d_kv", c_int32),
        ("damping", c_double),
        ("progress", mla_progress_fn),
        ("progress_user", c_void_p),
    ]


class mla_layer(Structure):
    """Opaque."""


mla_layer_kind = c_int
MLA_LAYER_MLA = 0
MLA_LAYER_MHA = 1


class mla_layer_info(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("kind", mla_layer_kind),
        ("factorization", mla_factorization),
        ("rope_strategy", mla_rope_strategy),
        ("rope_dim", c_int32),
        ("d_kv", c_int32),
        ("latent_dim", c_int32),
        ("rope_width", c_int32),
        ("n_tensors", c_int32),
        ("weight_dtype", c_int),
    ]


class mla_convert_report(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("kept_energy", c_double),
        ("k_nope_rel_error", c_double),
        ("v_rel_error", c_double),
        ("k_nope_act_rel_error", c_double),
        ("v_act_rel_error", c_double),
        ("seconds", c_double),
    ]


# ---- cache.h ----------------------------------------------------------------------------------
class mla_cache(Structure):
    """Opaque."""


class mla_cache_layer_desc(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("latent_dim", c_int32),
        ("rope_heads", c_int32),
        ("rope_dim", c_int32),
        ("rope_freqs", POINTER(c_float)),
        ("rope_position_scale", c_double),
        ("mha_kv_dim", c_int32),
    ]


class mla_cache_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("n_layers", c_int32),
        ("layers", POINTER(mla_cache_layer_desc)),
        ("latent_dtype", mla_dtype),
        ("rope_dtype", mla_dtype),
        ("quant_group", c_int32),
        ("block_tokens", c_int32),
        ("capacity_tokens", c_int64),
        ("capacity_bytes", c_int64),
        ("n_seq_max", c_int32),
    ]


class mla_cache_stats(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("bytes_per_token", c_int64),
        ("mha_bytes_per_token", c_int64),
        ("block_bytes", c_int64),
        ("blocks_total", c_int64),
        ("blocks_free", c_int64),
        ("tokens_used", c_int64),
        ("bytes_used", c_int64),
        ("capacity_tokens", c_int64),
        ("quant_group", c_int32),
    ]


# ---- attn.h -----------------------------------------------------------------------------------
class mla_attn(Structure):
    """Opaque."""


mla_attn_path = c_int
MLA_ATTN_PATH_AUTO = 0
MLA_ATTN_PATH_ABSORBED = 1
MLA_ATTN_PATH_MATERIALIZED = 2

mla_attn_threads = c_int
MLA_ATTN_THREADS_POOL = 0
MLA_ATTN_THREADS_OPENMP = 1


class mla_attn_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("n_threads", c_int32),
        ("path", mla_attn_path),
        ("crossover_tokens", c_int32),
        ("max_scratch_bytes", c_int64),
        ("threads", mla_attn_threads),
    ]


# ---- functions --------------------------------------------------------------------------------
_P = POINTER
_f32p = _P(c_float)
_f64p = _P(c_double)
_i32p = _P(c_int32)
_i64p = _P(c_int64)

# name: (restype, argtypes), in header order.
FUNCTIONS: Dict[str, Tuple[object, List[object]]] = {
    # common.h
    "mla_status_string": (c_char_p, [mla_status]),
    "mla_last_error": (c_char_p, []),
    "mla_clear_error": (None, []),
    "mla_version": (c_int, []),
    "mla_version_string": (c_char_p, []),
    "mla_build_info": (c_char_p, []),
    "mla_dtype_bits": (c_int, [mla_dtype]),
    "mla_dtype_name": (c_char_p, [mla_dtype]),
    # convert.h
    "mla_geometry_default_params": (mla_status, [_P(mla_geometry), c_size_t]),
    "mla_layer_weights_default_params": (mla_status, [_P(mla_layer_weights), c_size_t]),
    "mla_calib_default_params": (mla_status, [_P(mla_calib_params), c_size_t]),
    "mla_calib_create": (mla_status, [_P(mla_geometry), _P(mla_layer_weights),
                                      _P(mla_calib_params), _P(_P(mla_calib))]),
    "mla_calib_destroy": (None, [_P(mla_calib)]),
    "mla_calib_feed": (mla_status, [_P(mla_calib), _f32p, c_int64]),
    "mla_calib_token_count": (mla_status, [_P(mla_calib), _i64p]),
    "mla_calib_qk_stats": (mla_status, [_P(mla_calib), _f32p, _f32p, _f32p]),
    "mla_calib_covariance": (mla_status, [_P(mla_calib), _f64p]),
    "mla_convert_default_params": (mla_status, [_P(mla_convert_params), c_size_t]),
    "mla_layer_convert": (mla_status, [_P(mla_geometry), _P(mla_layer_weights), _P(mla_calib),
                                       _P(mla_convert_params), _P(_P(mla_layer))]),
    "mla_layer_from_mha": (mla_status, [_P(mla_geometry), _P(mla_layer_weights),
                                        _P(_P(mla_layer))]),
    "mla_layer_destroy": (None, [_P(mla_layer)]),
    "mla_layer_get_info": (mla_status, [_P(mla_layer), _P(mla_layer_info), c_size_t]),
    "mla_layer_get_geometry": (mla_status, [_P(mla_layer), _P(mla_geometry), c_size_t]),
    "mla_layer_rope_dims": (mla_status, [_P(mla_layer), c_int32, _i32p]),
    "mla_layer_tensor": (mla_status, [_P(mla_layer), c_int32, _P(mla_tensor)]),
    "mla_layer_tensor_by_name": (mla_status, [_P(mla_layer), c_char_p, _P(mla_tensor)]),
    "mla_layer_from_tensors": (mla_status, [_P(mla_geometry), c_int32, c_int32, _P(mla_tensor),
                                            c_int32, _P(_P(mla_layer))]),
    "mla_layer_get_report": (mla_status, [_P(mla_layer), _P(mla_convert_report), c_size_t]),
    "mla_layer_set_weight_dtype": (mla_status, [_P(mla_layer), c_int]),
    # cache.h
    "mla_cache_layer_desc_default_params": (mla_status, [_P(mla_cache_layer_desc), c_size_t]),
    "mla_layer_cache_desc": (mla_status, [_P(mla_layer), _P(mla_cache_layer_desc), c_size_t]),
    "mla_cache_default_params": (mla_status, [_P(mla_cache_params), c_size_t]),
    "mla_cache_create": (mla_status, [_P(mla_cache_params), _P(_P(mla_cache))]),
    "mla_cache_destroy": (None, [_P(mla_cache)]),
    "mla_cache_reserve": (mla_status, [_P(mla_cache), c_int32, c_int64, c_int64]),
    "mla_cache_write": (mla_status, [_P(mla_cache), c_int32, c_int32, c_int64, c_int64, _f32p,
                                     _f32p]),
    "mla_cache_seq_rm": (mla_status, [_P(mla_cache), c_int32, c_int64, c_int64]),
    "mla_cache_seq_cp": (mla_status, [_P(mla_cache), c_int32, c_int32, c_int64, c_int64]),
    "mla_cache_seq_fork": (mla_status, [_P(mla_cache), c_int32, c_int32]),
    "mla_cache_seq_keep": (mla_status, [_P(mla_cache), c_int32]),
    "mla_cache_seq_shift": (mla_status, [_P(mla_cache), c_int32, c_int64, c_int64, c_int64]),
    "mla_cache_seq_pos_min": (mla_status, [_P(mla_cache), c_int32, _i64p]),
    "mla_cache_seq_pos_max": (mla_status, [_P(mla_cache), c_int32, _i64p]),
    "mla_cache_seq_length": (mla_status, [_P(mla_cache), c_int32, _i64p]),
    "mla_cache_seq_written": (mla_status, [_P(mla_cache), c_int32, c_int32, _i64p]),
    "mla_cache_clear": (mla_status, [_P(mla_cache)]),
    "mla_cache_seq_read": (mla_status, [_P(mla_cache), c_int32, c_int32, c_int64, c_int64,
                                        _f32p, _f32p, _i64p]),
    "mla_cache_get_stats": (mla_status, [_P(mla_cache), _P(mla_cache_stats), c_size_t]),
    "mla_cache_save_size": (mla_status, [_P(mla_cache), c_int32, _P(c_size_t)]),
    "mla_cache_save": (mla_status, [_P(mla_cache), c_int32, c_void_p, c_size_t, _P(c_size_t)]),
    "mla_cache_load": (mla_status, [_P(mla_cache), c_int32, c_void_p, c_size_t]),
    "mla_cache_save_file": (mla_status, [_P(mla_cache), c_int32, c_char_p]),
    "mla_cache_load_file": (mla_status, [_P(mla_cache), c_int32, c_char_p]),
    # attn.h
    "mla_attn_default_params": (mla_status, [_P(mla_attn_params), c_size_t]),
    "mla_attn_create": (mla_status, [_P(mla_attn_params), _P(_P(mla_attn))]),
    "mla_attn_destroy": (None, [_P(mla_attn)]),
    "mla_attn_scratch_bytes": (mla_status, [_P(mla_attn), _P(c_int64)]),
    "mla_attn_scratch_release": (mla_status, [_P(mla_attn)]),
    "mla_attn_set_progress": (mla_status, [_P(mla_attn), mla_progress_fn, c_void_p]),
    "mla_attn_forward": (mla_status, [_P(mla_attn), _P(mla_layer), _P(mla_cache), c_int32, _f32p,
                                      c_int64, _i32p, _i64p, _f32p]),
}


class MissingSymbolError(AttributeError):
    """The loaded libmla lacks a function this binding declares (an older or partial build)."""


def _missing(name: str, path: str) -> Callable[..., object]:
    def call(*args: object) -> object:
        raise MissingSymbolError(f"{path} does not export {name}(): the library is older than "
                                 f"this binding or was built without that part")
    call.__name__ = name
    return call


class Library:
    """One loaded libmla: every function of FUNCTIONS as an attribute with argtypes/restype set.

    Functions the file does not export become callables that raise MissingSymbolError, so that a
    partial library still serves the parts it has; `missing` lists them.
    """

    def __init__(self, path: str) -> None:
        # CDLL (not PyDLL) releases the GIL during every call, so threads run in parallel in C.
        self.path = path
        self.dll = ctypes.CDLL(path)
        self.missing: List[str] = []
        for name, (restype, argtypes) in FUNCTIONS.items():
            try:
                fn = getattr(self.dll, name)
            except AttributeError:
                self.missing.append(name)
                setattr(self, name, _missing(name, path))
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)

    def __getattr__(self, name: str) -> object:  # only reached for undeclared names
        raise AttributeError(f"libmla has no declared function {name}")

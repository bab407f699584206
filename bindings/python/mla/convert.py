"""Conversion: calibration statistics, MHA/GQA → MLA conversion, the MLA layer handle."""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _ffi
from ._arrays import BufferView, c_string, check_array, int_arg, ptr, set_int
from ._handle import Handle, Owned
from ._library import library
from ._locks import CacheLock
from .errors import check
from .types import (DType, Factorization, LayerKind, RopeScaling, RopeStrategy, to_enum,
                    weight_dtype)

__all__ = ["Geometry", "LayerWeights", "Calib", "Layer", "LayerInfo", "ConvertReport", "convert"]


def _defaults(lib: _ffi.Library, struct: Any, fn: str) -> Any:
    """A params struct filled by its *_default_params call (struct_size = ctypes.sizeof)."""
    p = struct()
    check(lib, getattr(lib, fn)(ctypes.byref(p), ctypes.sizeof(struct)))
    return p


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Shape of one source attention layer (mla_geometry).

    Fields left None take the library's defaults (mla_geometry_default_params): rope_theta 10000,
    no RoPE scaling, factor 1, no biases.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: Optional[float] = None
    rope_scaling: Optional[Union[RopeScaling, str]] = None
    rope_scaling_factor: Optional[float] = None
    qkv_bias: Optional[bool] = None

    def _to_c(self, lib: _ffi.Library) -> _ffi.mla_geometry:
        g = _defaults(lib, _ffi.mla_geometry, "mla_geometry_default_params")
        for name in ("d_model", "n_heads", "n_kv_heads", "head_dim"):
            set_int(g, name, getattr(self, name))
        if self.rope_theta is not None:
            g.rope_theta = self.rope_theta
        if self.rope_scaling is not None:
            g.rope_scaling = to_enum(RopeScaling, self.rope_scaling, "rope_scaling")
        if self.rope_scaling_factor is not None:
            g.rope_scaling_factor = self.rope_scaling_factor
        if self.qkv_bias is not None:
            g.qkv_bias = 1 if self.qkv_bias else 0
        return g

    @classmethod
    def _from_c(cls, g: _ffi.mla_geometry) -> "Geometry":
        return cls(d_model=g.d_model, n_heads=g.n_heads, n_kv_heads=g.n_kv_heads,
                   head_dim=g.head_dim, rope_theta=g.rope_theta,
                   rope_scaling=RopeScaling(g.rope_scaling),
                   rope_scaling_factor=g.rope_scaling_factor, qkv_bias=bool(g.qkv_bias))


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """One source layer's projections in nn.Linear layout (out × in), all of one dtype.

    wq: (n_heads·head_dim, d_model); wk, wv: (n_kv_heads·head_dim, d_model);
    wo: (d_model, n_heads·head_dim); bq, bk, bv: 1-D biases or None (required with qkv_bias).
    float32, float16 or bfloat16 (ml_dtypes), C-contiguous: passed to C without copies.
    """

    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    bq: Optional[np.ndarray] = None
    bk: Optional[np.ndarray] = None
    bv: Optional[np.ndarray] = None

    def _to_c(self, lib: _ffi.Library, geom: Geometry) -> _ffi.mla_layer_weights:
        """The C view. Checks every shape here: C reads as many elements as the geometry says,
        so a short array would be read past its end."""
        dtype = weight_dtype(self.wq, "wq")
        npdt = self.wq.dtype
        q_rows = geom.n_heads * geom.head_dim
        kv_rows = geom.n_kv_heads * geom.head_dim
        shapes = {"wq": (q_rows, geom.d_model), "wk": (kv_rows, geom.d_model),
                  "wv": (kv_rows, geom.d_model), "wo": (geom.d_model, q_rows),
                  "bq": (q_rows,), "bk": (kv_rows,), "bv": (kv_rows,)}
        w = _defaults(lib, _ffi.mla_layer_weights, "mla_layer_weights_default_params")
        w.dtype = dtype
        for name, shape in shapes.items():
            arr = getattr(self, name)
            if arr is None:
                if name.startswith("w"):
                    raise TypeError(f"{name}: required")
                continue
            check_array(arr, npdt, shape, name)
            setattr(w, name, arr.ctypes.data)
        return w


def _progress_callback(progress: Optional[Callable[[int, int], Any]],
                       errors: List[BaseException]) -> Any:
    """Wrap a Python progress function: returning True cancels; an exception cancels and is
    re-raised by the caller (kept in `errors`) instead of MlaError(CANCELLED)."""
    if progress is None:
        return _ffi.mla_progress_fn()

    def call(user: Any, done: int, total: int) -> int:
        try:
            return 1 if progress(done, total) else 0
        except BaseException as e:  # noqa: B902 - must not unwind through C
            errors.append(e)
            return 1

    return _ffi.mla_progress_fn(call)


class Calib(Handle):
    """Calibration accumulator of one layer (mla_calib): 2-norm statistics and XᵀX.

    Copies the layer's q/k projections at creation; feed() the layer's normalized inputs.
    mla_calib is one thread at a time: a lock serializes the methods (and convert() reading it),
    so threads may share one Calib; their feeds run one after the other.
    """

    def __init__(self, geometry: Geometry, weights: LayerWeights, *,
                 qk_norms: Optional[bool] = None, covariance: Optional[bool] = None) -> None:
        lib = library()
        g = geometry._to_c(lib)
        w = weights._to_c(lib, geometry)
        p = _defaults(lib, _ffi.mla_calib_params, "mla_calib_default_params")
        if qk_norms is not None:
            p.qk_norms = 1 if qk_norms else 0
        if covariance is not None:
            p.covariance = 1 if covariance else 0
        out = ctypes.POINTER(_ffi.mla_calib)()
        check(lib, lib.mla_calib_create(ctypes.byref(g), ctypes.byref(w), ctypes.byref(p),
                                        ctypes.byref(out)))
        super().__init__(Owned(lib, out, "mla_calib_destroy"))
        self.geometry = geometry
        # Reentrant only for convert()'s progress callback, which runs on the converting thread
        # while it holds the lock: a Calib call from there would otherwise hang for good.
        self._busy = threading.RLock()

    def feed(self, x: np.ndarray) -> None:
        """Accumulate x: (n_tokens, d_model) float32, the layer input after its input norm."""
        o = self._own()
        check_array(x, np.float32, (None, self.geometry.d_model), "x")
        with self._busy:
            status = o.lib.mla_calib_feed(o.ptr, ptr(x, ctypes.c_float), x.shape[0])
        check(o.lib, status)

    @property
    def token_count(self) -> int:
        o = self._own()
        n = ctypes.c_int64()
        with self._busy:
            status = o.lib.mla_calib_token_count(o.ptr, ctypes.byref(n))
        check(o.lib, status)
        return n.value

    def qk_stats(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q_norm (n_heads, head_dim/2), k_norm (n_kv_heads, head_dim/2), score (n_kv_heads,
        head_dim/2)): mean pair 2-norms and the 2-norm ranking score, float32."""
        o = self._own()
        g = self.geometry
        half = g.head_dim // 2
        q = np.empty((g.n_heads, half), np.float32)
        k = np.empty((g.n_kv_heads, half), np.float32)
        s = np.empty((g.n_kv_heads, half), np.float32)
        with self._busy:
            status = o.lib.mla_calib_qk_stats(o.ptr, ptr(q, ctypes.c_float),
                                              ptr(k, ctypes.c_float), ptr(s, ctypes.c_float))
        check(o.lib, status)
        return q, k, s

    def covariance(self) -> np.ndarray:
        """XᵀX accumulated so far: (d_model, d_model) float64, not divided by the token count."""
        o = self._own()
        d = self.geometry.d_model
        c = np.empty((d, d), np.float64)
        with self._busy:
            status = o.lib.mla_calib_covariance(o.ptr, ptr(c, ctypes.c_double))
        check(o.lib, status)
        return c


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """mla_layer_info. The geometry is Layer.geometry (mla_layer_get_geometry)."""

    kind: LayerKind
    factorization: Factorization
    rope_strategy: RopeStrategy
    rope_dim: int
    d_kv: int
    latent_dim: int
    rope_width: int
    n_tensors: int
    weight_dtype: DType = DType.F32


@dataclasses.dataclass(frozen=True)
class ConvertReport:
    """mla_convert_report: relative Frobenius errors; NaN where not computed."""

    kept_energy: float
    k_nope_rel_error: float
    v_rel_error: float
    k_nope_act_rel_error: float
    v_act_rel_error: float
    seconds: float


_NP_OF = {DType.F32: np.float32, DType.F16: np.float16, DType.BF16: np.uint16,
          DType.I32: np.int32, DType.F64: np.float64}


# The tensors mla_layer_set_weight_dtype stores anew (their old memory freed): every weight
# matrix, not the biases or rope_dims.
_WEIGHTS = frozenset({"q_proj.weight", "k_r_proj.weight", "k_proj.weight", "v_proj.weight",
                      "kv_proj.down_kv.weight", "kv_proj.down_k.weight", "kv_proj.down_v.weight",
                      "kv_proj.up_k.weight", "kv_proj.up_v.weight", "o_proj.weight"})


def _safe_enum(cls: Any, v: int) -> Any:
    try:
        return cls(v)
    except ValueError:
        return v


class Layer(Handle):
    """An MLA layer (or an MHA baseline layer) owned by libmla (mla_layer).

    Read-only after construction except for set_weight_dtype(): one Layer may be used by
    several threads at once. Create with mla.convert(), Layer.from_mha() or Layer.from_tensors().
    """

    def __init__(self, owned: Owned) -> None:
        super().__init__(owned)
        # Forwards hold the shared side; set_weight_dtype, which frees the weights they read,
        # the exclusive one.
        self._lock = CacheLock(0)
        # Views of the weight matrices, which set_weight_dtype frees.
        self._weight_views: "weakref.WeakSet[BufferView]" = weakref.WeakSet()
        self._read_info()

    def _read_info(self) -> None:
        o = self._own()
        lib = o.lib
        info = _ffi.mla_layer_info()
        check(lib, lib.mla_layer_get_info(o.ptr, ctypes.byref(info),
                                          ctypes.sizeof(_ffi.mla_layer_info)))
        self._info = LayerInfo(
            kind=_safe_enum(LayerKind, info.kind),
            factorization=_safe_enum(Factorization, info.factorization),
            rope_strategy=_safe_enum(RopeStrategy, info.rope_strategy), rope_dim=info.rope_dim,
            d_kv=info.d_kv, latent_dim=info.latent_dim, rope_width=info.rope_width,
            n_tensors=info.n_tensors, weight_dtype=_safe_enum(DType, info.weight_dtype))

    def set_weight_dtype(self, dtype: Union[DType, str]) -> None:
        """Store the layer's weight matrices (every projection; biases stay float32) as "bf16"
        or "f16", or as "f32" again (mla_layer_set_weight_dtype): half the bytes a decode reads
        and the layer holds, products still accumulated in float32 over the stored values.
        Waits for forwards on other threads to finish. Raises RuntimeError while numpy views of
        weight matrices (tensor(), tensors()) are alive: their memory is freed (copy them
        first), and mla.MlaError (NUMERICAL: a value beyond f16's range) leaving the layer as
        it was."""
        o = self._own()
        dt = to_enum(DType, dtype, "dtype")
        with self._lock.exclusive():
            alive = len(self._weight_views)
            if alive:
                raise RuntimeError(f"{alive} numpy view(s) of this layer's weight matrices are "
                                   "alive: copy them (numpy.array) or drop them before "
                                   "set_weight_dtype frees that memory")
            check(o.lib, o.lib.mla_layer_set_weight_dtype(o.ptr, int(dt)))
            self._read_info()

    @classmethod
    def _wrap(cls, lib: _ffi.Library, out: Any) -> "Layer":
        owned = Owned(lib, out, "mla_layer_destroy")
        return cls(owned)

    @classmethod
    def convert(cls, geometry: Geometry, weights: LayerWeights, calib: Optional[Calib] = None,
                **params: Any) -> "Layer":
        """See mla.convert()."""
        return convert(geometry, weights, calib, **params)

    @classmethod
    def from_mha(cls, geometry: Geometry, weights: LayerWeights) -> "Layer":
        """The unconverted MHA/GQA layer (the baseline), usable with Cache and Attn alike."""
        lib = library()
        g = geometry._to_c(lib)
        w = weights._to_c(lib, geometry)
        out = ctypes.POINTER(_ffi.mla_layer)()
        check(lib, lib.mla_layer_from_mha(ctypes.byref(g), ctypes.byref(w), ctypes.byref(out)))
        return cls._wrap(lib, out)

    @classmethod
    def from_tensors(cls, geometry: Geometry, rope_dim: int, d_kv: int,
                     tensors: Mapping[str, np.ndarray]) -> "Layer":
        """A layer from checkpoint tensors (names as Layer.tensor_names; float32/float16/
        bfloat16, rope_dims int32), copied. The factorization follows from the names."""
        lib = library()
        g = geometry._to_c(lib)
        arr = (_ffi.mla_tensor * max(1, len(tensors)))()
        names = []
        # The arrays themselves, held until the call returns: a Mapping may make a new array on
        # every access (a lazy checkpoint reader), which nothing else would keep alive.
        arrays = []
        for i, (name, t) in enumerate(tensors.items()):
            if not isinstance(t, np.ndarray):
                raise TypeError(f"{name}: expected a numpy.ndarray, got {type(t).__name__}")
            if t.dtype == np.int32:
                dt = DType.I32
            else:
                dt = weight_dtype(t, name)
            if not t.flags.c_contiguous:
                raise ValueError(f"{name}: not C-contiguous (use numpy.ascontiguousarray)")
            if not 1 <= t.ndim <= _ffi.MLA_TENSOR_MAX_DIMS:
                raise ValueError(f"{name}: {t.ndim} dimensions, expected 1 to "
                                 f"{_ffi.MLA_TENSOR_MAX_DIMS}")
            arrays.append(t)
            names.append(c_string(name, "tensor name"))
            arr[i].name = names[-1]
            arr[i].dtype = dt
            arr[i].ndim = t.ndim
            for k in range(_ffi.MLA_TENSOR_MAX_DIMS):
                arr[i].shape[k] = t.shape[k] if k < t.ndim else 1
            arr[i].data = t.ctypes.data
        out = ctypes.POINTER(_ffi.mla_layer)()
        rope_dim = int_arg(rope_dim, ctypes.c_int32, "rope_dim")
        d_kv = int_arg(d_kv, ctypes.c_int32, "d_kv")
        check(lib, lib.mla_layer_from_tensors(ctypes.byref(g), rope_dim, d_kv, arr, len(arrays),
                                              ctypes.byref(out)))
        del arrays
        return cls._wrap(lib, out)

    @property
    def info(self) -> LayerInfo:
        self._own()
        return self._info

    @property
    def geometry(self) -> Geometry:
        """The geometry the layer was built from (mla_layer_get_geometry)."""
        o = self._own()
        g = _ffi.mla_geometry()
        check(o.lib, o.lib.mla_layer_get_geometry(o.ptr, ctypes.byref(g),
                                                  ctypes.sizeof(_ffi.mla_geometry)))
        return Geometry._from_c(g)

    def rope_dims(self, kv_head: Optional[int] = None) -> np.ndarray:
        """Kept RoPE dimensions, ascending indices into [0, head_dim): of one KV head (rope_dim,)
        or of all, (n_kv_heads, rope_dim), int32."""
        o = self._own()
        info = self._info
        heads = (range(self.geometry.n_kv_heads) if kv_head is None
                 else [int_arg(kv_head, ctypes.c_int32, "kv_head")])
        out = np.empty((len(heads), info.rope_dim), np.int32)
        for i, h in enumerate(heads):
            check(o.lib, o.lib.mla_layer_rope_dims(o.ptr, h, ptr(out[i], ctypes.c_int32)))
        return out if kv_head is None else out[0]

    def _view(self, o: Owned, t: _ffi.mla_tensor) -> np.ndarray:
        dtype = _NP_OF.get(t.dtype)
        if dtype is None:
            raise ValueError(f"tensor {t.name!r} has dtype {t.dtype} with no numpy equivalent")
        shape = tuple(int(t.shape[k]) for k in range(t.ndim))
        if math.prod(shape) == 0 or not t.data:
            return np.empty(shape, dtype)
        view = BufferView(o, t.data, shape, np.dtype(dtype))
        if t.name.decode() in _WEIGHTS:
            self._weight_views.add(view)
        a = np.asarray(view)
        a.flags.writeable = False
        return a

    def tensor(self, key: Union[str, int]) -> np.ndarray:
        """A tensor of the layer by checkpoint name ("kv_proj.up_k.weight") or index, as a
        read-only numpy view of the layer's memory (no copy). The view keeps the C layer alive,
        also after close()."""
        o = self._own()
        t = _ffi.mla_tensor()
        if isinstance(key, str):
            check(o.lib, o.lib.mla_layer_tensor_by_name(o.ptr, c_string(key, "name"),
                                                        ctypes.byref(t)))
        else:
            check(o.lib, o.lib.mla_layer_tensor(o.ptr, int_arg(key, ctypes.c_int32, "index"),
                                                ctypes.byref(t)))
        return self._view(o, t)

    @property
    def tensor_names(self) -> List[str]:
        o = self._own()
        names = []
        for i in range(self._info.n_tensors):
            t = _ffi.mla_tensor()
            check(o.lib, o.lib.mla_layer_tensor(o.ptr, i, ctypes.byref(t)))
            names.append(t.name.decode())
        return names

    def tensors(self) -> Dict[str, np.ndarray]:
        """Every tensor by name (read-only views, see tensor())."""
        return {name: self.tensor(name) for name in self.tensor_names}

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensor_names)

    @property
    def report(self) -> ConvertReport:
        o = self._own()
        r = _ffi.mla_convert_report()
        check(o.lib, o.lib.mla_layer_get_report(o.ptr, ctypes.byref(r),
                                                ctypes.sizeof(_ffi.mla_convert_report)))
        return ConvertReport(r.kept_energy, r.k_nope_rel_error, r.v_rel_error,
                             r.k_nope_act_rel_error, r.v_act_rel_error, r.seconds)

    def cache_desc(self) -> "Any":
        """What this layer caches per token (a mla.CacheLayerDesc, frequencies copied)."""
        from .cache import CacheLayerDesc  # cache.py imports this module
        o = self._own()
        d = _ffi.mla_cache_layer_desc()
        check(o.lib, o.lib.mla_layer_cache_desc(o.ptr, ctypes.byref(d),
                                                ctypes.sizeof(_ffi.mla_cache_layer_desc)))
        n = d.rope_heads * (d.rope_dim // 2)
        freqs = (np.ctypeslib.as_array(d.rope_freqs, (n,)).astype(np.float32, copy=True)
                 if n > 0 and d.rope_freqs else np.zeros(0, np.float32))
        return CacheLayerDesc(latent_dim=d.latent_dim, rope_heads=d.rope_heads,
                              rope_dim=d.rope_dim, rope_freqs=freqs.reshape(d.rope_heads, -1)
                              if n > 0 else freqs,
                              rope_position_scale=d.rope_position_scale,
                              mha_kv_dim=d.mha_kv_dim)


def convert(geometry: Geometry, weights: LayerWeights, calib: Optional[Calib] = None, *,
            rope_strategy: Optional[Union[RopeStrategy, str]] = None,
            rope_dim: Optional[int] = None, uniform_start: Optional[int] = None,
            explicit_freqs: Optional[np.ndarray] = None,
            factorization: Optional[Union[Factorization, str]] = None,
            d_kv: Optional[int] = None, damping: Optional[float] = None,
            progress: Optional[Callable[[int, int], Any]] = None) -> Layer:
    """Convert one MHA/GQA layer to MLA (mla_layer_convert).

    Parameters left None take the library's defaults (mla_convert_default_params: HIGH strategy,
    rope_dim 8, joint factorization, d_kv 16, damping 1e-3). rope_strategy/factorization accept
    the enums or the reference's names ("2-norm", "joint"). explicit_freqs: (n_kv_heads,
    rope_dim/2) int32 frequency indices. calib is required for "2-norm" and
    "activation_joint". progress(done, total) may return True (or raise) to cancel.
    Raises MlaError on failure.
    """
    lib = library()
    g = geometry._to_c(lib)
    w = weights._to_c(lib, geometry)
    p = _defaults(lib, _ffi.mla_convert_params, "mla_convert_default_params")
    if rope_strategy is not None:
        p.rope_strategy = to_enum(RopeStrategy, rope_strategy, "rope_strategy")
    if rope_dim is not None:
        set_int(p, "rope_dim", rope_dim)
    if uniform_start is not None:
        set_int(p, "uniform_start", uniform_start)
    if explicit_freqs is not None:
        check_array(explicit_freqs, np.int32, (geometry.n_kv_heads, p.rope_dim // 2),
                    "explicit_freqs")
        p.explicit_freqs = ptr(explicit_freqs, ctypes.c_int32)
    if factorization is not None:
        p.factorization = to_enum(Factorization, factorization, "factorization")
    if d_kv is not None:
        set_int(p, "d_kv", d_kv)
    if damping is not None:
        p.damping = damping
    errors: List[BaseException] = []
    callback = _progress_callback(progress, errors)  # alive until the call returns
    p.progress = callback
    c_calib = None
    keep = None
    if calib is not None:
        keep = calib._own()
        if keep.lib is not lib:
            raise ValueError("calib was created with another loaded libmla")
        c_calib = keep.ptr
    out = ctypes.POINTER(_ffi.mla_layer)()
    # The conversion reads the calib: no other thread may feed() it meanwhile.
    with calib._busy if calib is not None else contextlib.nullcontext():
        status = lib.mla_layer_convert(ctypes.byref(g), ctypes.byref(w), c_calib,
                                       ctypes.byref(p), ctypes.byref(out))
    del keep
    if errors:
        raise errors[0]
    check(lib, status)
    return Layer._wrap(lib, out)

"""The latent KV cache (mla_cache): sequences of cached latents and RoPE keys, snapshots."""
from __future__ import annotations

import ctypes
import dataclasses
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _ffi
from ._arrays import c_string, check_array, int_arg, ptr, set_int
from ._handle import Handle, Owned
from ._library import library
from ._locks import CacheLock
from .convert import Layer, _defaults
from .errors import check
from .types import DType, to_enum

__all__ = ["Cache", "CacheLayerDesc", "CacheStats"]


def _int32(value: Any, name: str) -> int:
    return int_arg(value, ctypes.c_int32, name)


def _int64(value: Any, name: str) -> int:
    return int_arg(value, ctypes.c_int64, name)


@dataclasses.dataclass(frozen=True)
class CacheLayerDesc:
    """What one layer caches per token (mla_cache_layer_desc); Layer.cache_desc() makes one.

    rope_freqs: (rope_heads, rope_dim/2) float32 angular frequencies, or empty when rope_dim is 0.
    """

    latent_dim: int
    rope_heads: int
    rope_dim: int
    rope_freqs: np.ndarray
    rope_position_scale: float = 1.0
    mha_kv_dim: int = 0

    @property
    def rope_width(self) -> int:
        return self.rope_heads * self.rope_dim


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """mla_cache_stats, plus the saving against the source model's K/V cache."""

    bytes_per_token: int
    mha_bytes_per_token: int
    block_bytes: int
    blocks_total: int
    blocks_free: int
    tokens_used: int
    bytes_used: int
    capacity_tokens: int
    quant_group: int
    """values per scale of I8/I4 latents (the one chosen when quant_group was left out), else 0"""

    @property
    def saving(self) -> float:
        """1 − bytes_per_token / mha_bytes_per_token: the fraction of KV memory saved."""
        if self.mha_bytes_per_token <= 0:
            return float("nan")
        return 1.0 - self.bytes_per_token / self.mha_bytes_per_token


class Cache(Handle):
    """A latent KV cache for a stack of layers.

    Sequence ids are 0 .. n_seq_max−1; position ranges [p0, p1) with −1 meaning open.

    Threads: the methods enforce include/mla/cache.h's rules. write(), read(), seq_length(),
    seq_pos_min() and seq_pos_max() (and Attn.forward, for the sequences in its batch) run
    concurrently on distinct sequences; on one sequence they run one at a time. Every other
    method (reserve, seq_rm, seq_cp, seq_fork, seq_keep, seq_shift, clear, stats, save*, load*)
    waits until no other call on the cache is running, and holds new ones back meanwhile.
    """

    def __init__(self, layers: Sequence[Union[Layer, CacheLayerDesc]], *,
                 latent_dtype: Optional[Union[DType, str]] = None,
                 rope_dtype: Optional[Union[DType, str]] = None,
                 quant_group: Optional[int] = None, block_tokens: Optional[int] = None,
                 capacity_tokens: Optional[int] = None, capacity_bytes: Optional[int] = None,
                 n_seq_max: Optional[int] = None) -> None:
        """layers: one Layer or CacheLayerDesc per cache layer. Other parameters left None take
        mla_cache_default_params's defaults (F16 latents and RoPE keys; for I8/I4 latents groups
        of the largest of 32, 16, .., 1 values dividing every latent width, which stats reports;
        blocks of 64 tokens, 64 sequences); give capacity_tokens or capacity_bytes."""
        lib = library()
        descs: List[CacheLayerDesc] = [l.cache_desc() if isinstance(l, Layer) else l
                                       for l in layers]
        if not descs:
            raise ValueError("layers: at least one layer is needed")
        # An array of structs: the library steps through it by c_descs[0].struct_size, which
        # default_params sets to ctypes.sizeof (the element size) in every element.
        c_descs = (_ffi.mla_cache_layer_desc * len(descs))()
        freq_arrays = []  # borrowed by C for the create call only
        for i, d in enumerate(descs):
            if not isinstance(d, CacheLayerDesc):
                raise TypeError(f"layers[{i}]: expected mla.Layer or mla.CacheLayerDesc, got "
                                f"{type(d).__name__}")
            c = c_descs[i]
            check(lib, lib.mla_cache_layer_desc_default_params(
                ctypes.byref(c), ctypes.sizeof(_ffi.mla_cache_layer_desc)))
            for field in ("latent_dim", "rope_heads", "rope_dim", "mha_kv_dim"):
                set_int(c, field, getattr(d, field), f"layers[{i}].{field}")
            c.rope_position_scale = d.rope_position_scale
            n_freq = d.rope_heads * (d.rope_dim // 2)
            if n_freq > 0:
                f = check_array(d.rope_freqs, np.float32, (d.rope_heads, d.rope_dim // 2),
                                f"layers[{i}].rope_freqs")
                freq_arrays.append(f)
                c.rope_freqs = ptr(f, ctypes.c_float)
        p = _defaults(lib, _ffi.mla_cache_params, "mla_cache_default_params")
        p.n_layers = len(descs)
        p.layers = c_descs
        if latent_dtype is not None:
            p.latent_dtype = to_enum(DType, latent_dtype, "latent_dtype")
        if rope_dtype is not None:
            p.rope_dtype = to_enum(DType, rope_dtype, "rope_dtype")
        for name, value in (("quant_group", quant_group), ("block_tokens", block_tokens),
                            ("capacity_tokens", capacity_tokens),
                            ("capacity_bytes", capacity_bytes), ("n_seq_max", n_seq_max)):
            if value is not None:
                set_int(p, name, value)
        out = ctypes.POINTER(_ffi.mla_cache)()
        check(lib, lib.mla_cache_create(ctypes.byref(p), ctypes.byref(out)))
        super().__init__(Owned(lib, out, "mla_cache_destroy"))
        self.layers: Tuple[CacheLayerDesc, ...] = tuple(descs)
        self.latent_dtype = DType(p.latent_dtype)
        self.rope_dtype = DType(p.rope_dtype)
        self.n_seq_max = int(p.n_seq_max)
        self._lock = CacheLock(self.n_seq_max)

    def _desc(self, layer: int) -> CacheLayerDesc:
        if not 0 <= layer < len(self.layers):
            raise IndexError(f"layer {layer} out of range: the cache has {len(self.layers)}")
        return self.layers[layer]

    # ---- writing ------------------------------------------------------------------------------
    def reserve(self, seq: int, pos: int, n_tokens: int) -> None:
        """Append n_tokens empty slots at positions pos.. to seq."""
        o = self._own()
        seq, pos, n_tokens = _int32(seq, "seq"), _int64(pos, "pos"), _int64(n_tokens, "n_tokens")
        with self._lock.exclusive():
            status = o.lib.mla_cache_reserve(o.ptr, seq, pos, n_tokens)
        check(o.lib, status)

    def write(self, layer: int, seq: int, pos: int, latent: np.ndarray,
              rope: Optional[np.ndarray] = None) -> None:
        """Store one layer's data for tokens at positions pos.. of seq.

        latent: (n_tokens, latent_dim) float32; rope: (n_tokens, rope_heads·rope_dim) float32,
        already rotated (None when the layer has no RoPE part).
        """
        o = self._own()
        d = self._desc(layer)
        check_array(latent, np.float32, (None, d.latent_dim), "latent")
        n = latent.shape[0]
        if d.rope_width > 0:
            if rope is None:
                raise TypeError(f"rope: required, layer {layer} caches {d.rope_width} RoPE values")
            check_array(rope, np.float32, (n, d.rope_width), "rope")
        elif rope is not None:
            raise ValueError(f"rope: layer {layer} caches no RoPE part; pass None")
        seq, pos = _int32(seq, "seq"), _int64(pos, "pos")
        with self._lock.shared((seq,)):
            status = o.lib.mla_cache_write(o.ptr, layer, seq, pos, n, ptr(latent, ctypes.c_float),
                                           ptr(rope, ctypes.c_float))
        check(o.lib, status)

    # ---- sequences ----------------------------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        """Remove positions [p0, p1) of seq (seq < 0: of every sequence)."""
        o = self._own()
        seq, p0, p1 = _int32(seq, "seq"), _int64(p0, "p0"), _int64(p1, "p1")
        with self._lock.exclusive():
            status = o.lib.mla_cache_seq_rm(o.ptr, seq, p0, p1)
        check(o.lib, status)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Replace dst with src's tokens in [p0, p1), sharing blocks (copy on write)."""
        o = self._own()
        src, dst = _int32(src, "src"), _int32(dst, "dst")
        p0, p1 = _int64(p0, "p0"), _int64(p1, "p1")
        with self._lock.exclusive():
            status = o.lib.mla_cache_seq_cp(o.ptr, src, dst, p0, p1)
        check(o.lib, status)

    def seq_fork(self, src: int, dst: int) -> None:
        o = self._own()
        src, dst = _int32(src, "src"), _int32(dst, "dst")
        with self._lock.exclusive():
            status = o.lib.mla_cache_seq_fork(o.ptr, src, dst)
        check(o.lib, status)

    def seq_keep(self, seq: int) -> None:
        """Remove every sequence but seq."""
        o = self._own()
        seq = _int32(seq, "seq")
        with self._lock.exclusive():
            status = o.lib.mla_cache_seq_keep(o.ptr, seq)
        check(o.lib, status)

    def seq_shift(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Add delta to positions [p0, p1) of seq, re-rotating the cached RoPE keys."""
        o = self._own()
        seq, p0, p1 = _int32(seq, "seq"), _int64(p0, "p0"), _int64(p1, "p1")
        delta = _int64(delta, "delta")
        with self._lock.exclusive():
            status = o.lib.mla_cache_seq_shift(o.ptr, seq, p0, p1, delta)
        check(o.lib, status)

    def _i64(self, fn: str, seq: int, layer: Optional[int] = None) -> int:
        """A per-sequence count: fn(cache, [layer,] seq, &v)."""
        o = self._own()
        seq = _int32(seq, "seq")
        lead = () if layer is None else (_int32(layer, "layer"),)
        v = ctypes.c_int64()
        with self._lock.shared((seq,)):
            status = getattr(o.lib, fn)(o.ptr, *lead, seq, ctypes.byref(v))
        check(o.lib, status)
        return v.value

    def seq_pos_min(self, seq: int) -> int:
        """Smallest position of seq, −1 when empty."""
        return self._i64("mla_cache_seq_pos_min", seq)

    def seq_pos_max(self, seq: int) -> int:
        """Largest position of seq, −1 when empty."""
        return self._i64("mla_cache_seq_pos_max", seq)

    def seq_length(self, seq: int) -> int:
        return self._i64("mla_cache_seq_length", seq)

    def seq_written(self, layer: int, seq: int) -> int:
        """Tokens of seq, from its first, that cache layer `layer` has written: where that
        layer's next forward for seq starts (reserved slots are unwritten)."""
        return self._i64("mla_cache_seq_written", seq, layer)

    def clear(self) -> None:
        o = self._own()
        with self._lock.exclusive():
            status = o.lib.mla_cache_clear(o.ptr)
        check(o.lib, status)

    # ---- reading ------------------------------------------------------------------------------
    def read(self, layer: int, seq: int, first: int = 0,
             n_tokens: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens [first, first+n_tokens) of seq (in position order; default: to the end) at one
        layer, dequantized: (latent (n, latent_dim) float32, rope (n, rope_width) float32,
        positions (n,) int64)."""
        o = self._own()
        d = self._desc(layer)
        seq = _int32(seq, "seq")
        first = _int64(first, "first")
        if n_tokens is not None:
            n_tokens = _int64(n_tokens, "n_tokens")
            if n_tokens < 0:
                raise ValueError(f"n_tokens: {n_tokens} is negative")
        # The length and the tokens under one hold: a write in between would change the length.
        with self._lock.shared((seq,)):
            if n_tokens is None:
                length = ctypes.c_int64()
                check(o.lib, o.lib.mla_cache_seq_length(o.ptr, seq, ctypes.byref(length)))
                n_tokens = max(0, length.value - first)
            latent = np.empty((n_tokens, d.latent_dim), np.float32)
            rope = np.empty((n_tokens, d.rope_width), np.float32)
            pos = np.empty(n_tokens, np.int64)
            status = o.lib.mla_cache_seq_read(
                o.ptr, layer, seq, first, n_tokens, ptr(latent, ctypes.c_float),
                ptr(rope, ctypes.c_float) if d.rope_width else None, ptr(pos, ctypes.c_int64))
        check(o.lib, status)
        return latent, rope, pos

    # ---- accounting ---------------------------------------------------------------------------
    @property
    def stats(self) -> CacheStats:
        """The cache's accounting (walks every sequence: waits for other calls to finish)."""
        o = self._own()
        s = _ffi.mla_cache_stats()
        with self._lock.exclusive():
            status = o.lib.mla_cache_get_stats(o.ptr, ctypes.byref(s),
                                               ctypes.sizeof(_ffi.mla_cache_stats))
        check(o.lib, status)
        return CacheStats(s.bytes_per_token, s.mha_bytes_per_token, s.block_bytes,
                          s.blocks_total, s.blocks_free, s.tokens_used, s.bytes_used,
                          s.capacity_tokens, s.quant_group)

    # ---- snapshots ----------------------------------------------------------------------------
    def save(self, seq: int = -1) -> bytes:
        """A snapshot of seq (or of the whole cache with seq < 0) in libmla's format."""
        o = self._own()
        seq = _int32(seq, "seq")
        size = ctypes.c_size_t()
        written = ctypes.c_size_t()
        # Size and contents under one hold, so that the buffer fits what is saved.
        with self._lock.exclusive():
            check(o.lib, o.lib.mla_cache_save_size(o.ptr, seq, ctypes.byref(size)))
            buf = ctypes.create_string_buffer(max(1, size.value))
            status = o.lib.mla_cache_save(o.ptr, seq, buf, size.value, ctypes.byref(written))
        check(o.lib, status)
        return buf.raw[:written.value]

    def load(self, data: Any, seq: int = -1) -> None:
        """Load a snapshot from a bytes-like object (read in place, not copied). On failure the
        cache is left as it was."""
        o = self._own()
        seq = _int32(seq, "seq")
        mv = memoryview(data)
        if not mv.c_contiguous:
            raise ValueError("data: not a contiguous buffer")
        mv = mv.cast("B")
        n = mv.nbytes
        buf = np.frombuffer(mv, np.uint8) if n else np.zeros(1, np.uint8)
        with self._lock.exclusive():
            status = o.lib.mla_cache_load(o.ptr, seq, buf.ctypes.data, n)
        check(o.lib, status)

    def save_file(self, path: "Union[str, os.PathLike[str]]", seq: int = -1) -> None:
        """Write a snapshot to path (through a temporary file renamed when complete)."""
        o = self._own()
        seq = _int32(seq, "seq")
        c_path = c_string(os.fsencode(path), "path")
        with self._lock.exclusive():
            status = o.lib.mla_cache_save_file(o.ptr, seq, c_path)
        check(o.lib, status)

    def load_file(self, path: "Union[str, os.PathLike[str]]", seq: int = -1) -> None:
        o = self._own()
        seq = _int32(seq, "seq")
        c_path = c_string(os.fsencode(path), "path")
        with self._lock.exclusive():
            status = o.lib.mla_cache_load_file(o.ptr, seq, c_path)
        check(o.lib, status)

"""Attention forward (mla_attn): one layer over a batch of tokens, through the cache."""
from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable, List, Optional, Union

import numpy as np

from . import _ffi
from ._arrays import check_array, int_arg, ptr, set_int
from ._handle import Handle, Owned
from ._library import library
from .cache import Cache
from .convert import Layer, _defaults, _progress_callback
from .errors import check
from .types import AttnPath, AttnThreads, to_enum

__all__ = ["Attn"]


class Attn(Handle):
    """Worker threads and scratch memory for forward passes (mla_attn).

    One Attn runs one forward at a time (a second thread calling forward() waits for the first);
    give each thread its own to run in parallel. Distinct Attn objects may run forwards on
    distinct sequences of one Cache concurrently; a forward waits for other calls on the
    sequences of its batch, and for the Cache methods that need the whole cache (see mla.Cache).
    """

    def __init__(self, *, n_threads: Optional[int] = None,
                 path: Optional[Union[AttnPath, str]] = None,
                 crossover_tokens: Optional[int] = None,
                 max_scratch_bytes: Optional[int] = None,
                 threads: Optional[Union[AttnThreads, str]] = None) -> None:
        """n_threads: the threads a forward runs on, the caller's included (0: all cores);
        threads: "pool" (default: the handle's own workers, which take work as they come and
        yield the core when idle) or "openmp" (the process's OpenMP runtime, for a host whose
        own parallel work runs on the same libgomp; doc/attention.md, "Threads").
        Parameters left None take mla_attn_default_params's defaults (1 thread, AUTO path,
        crossover_tokens 0: AUTO weighs both paths' multiply-adds for each chunk; N > 0 takes
        materialized for chunks of N or more query tokens; max_scratch_bytes 0: no limit on the
        scratch memory the handle keeps, else a batch that needs more fails with MlaError
        CAPACITY, naming its need)."""
        lib = library()
        p = _defaults(lib, _ffi.mla_attn_params, "mla_attn_default_params")
        if n_threads is not None:
            set_int(p, "n_threads", n_threads)
        if path is not None:
            p.path = to_enum(AttnPath, path, "path")
        if crossover_tokens is not None:
            set_int(p, "crossover_tokens", crossover_tokens)
        if max_scratch_bytes is not None:
            set_int(p, "max_scratch_bytes", max_scratch_bytes)
        if threads is not None:
            p.threads = to_enum(AttnThreads, threads, "threads")
        out = ctypes.POINTER(_ffi.mla_attn)()
        check(lib, lib.mla_attn_create(ctypes.byref(p), ctypes.byref(out)))
        super().__init__(Owned(lib, out, "mla_attn_destroy"))
        # mla_attn is one thread at a time, and forward grows its scratch memory: a second
        # forward on the same handle would write into memory the first just freed.
        self._busy = threading.Lock()

    @property
    def scratch_bytes(self) -> int:
        """The scratch memory this handle holds now (mla_attn_scratch_bytes): forwards grow it
        to the largest batch's need and keep it."""
        o = self._own()
        out = ctypes.c_int64()
        with self._busy:
            check(o.lib, o.lib.mla_attn_scratch_bytes(o.ptr, ctypes.byref(out)))
        return out.value

    def release_scratch(self) -> None:
        """Free the scratch memory (mla_attn_scratch_release), for example after a long prompt;
        the next forward allocates what it needs again."""
        o = self._own()
        with self._busy:
            check(o.lib, o.lib.mla_attn_scratch_release(o.ptr))

    def forward(self, layer: Layer, cache: Cache, cache_layer: int, x: np.ndarray,
                seq: Union[int, np.ndarray], pos: Union[int, np.ndarray],
                out: Optional[np.ndarray] = None,
                progress: Optional[Callable[[int, int], Any]] = None) -> np.ndarray:
        """Run `layer` (stored as cache layer `cache_layer`) on x and append to the cache.

        x: (n_tokens, d_model) float32, the layer input after its input norm.
        seq: one sequence id for every token, or (n_tokens,) int32 ids.
        pos: the first token's position (the rest follow), or (n_tokens,) int64 positions.
        out: optional (n_tokens, d_model) float32 output array (must not be x).
        progress(done, total): called on this thread as the attention advances, in (query token,
        context token) pairs, the last call with done == total; returning True (or raising)
        cancels (MlaError CANCELLED, or the exception). It may not use this Attn or the cache.
        Returns the o_proj output (n_tokens, d_model) float32. Raises MlaError; on error nothing
        is appended to the cache.
        """
        o = self._own()
        lo = layer._own()
        co = cache._own()
        if lo.lib is not o.lib or co.lib is not o.lib:
            raise ValueError("layer, cache and attn come from different loaded libmla copies")
        d_model = layer.geometry.d_model
        check_array(x, np.float32, (None, d_model), "x")
        n = x.shape[0]
        cache_layer = int_arg(cache_layer, ctypes.c_int32, "cache_layer")
        if isinstance(seq, (int, np.integer)):
            seq = np.full(n, int_arg(seq, ctypes.c_int32, "seq"), np.int32)
        check_array(seq, np.int32, (n,), "seq")
        if isinstance(pos, (int, np.integer)):
            first = int_arg(pos, ctypes.c_int64, "pos")
            int_arg(first + max(n - 1, 0), ctypes.c_int64, "pos + n_tokens - 1")
            pos = np.arange(first, first + n, dtype=np.int64)
        check_array(pos, np.int64, (n,), "pos")
        if out is None:
            out = np.empty((n, d_model), np.float32)
        else:
            check_array(out, np.float32, (n, d_model), "out", writable=True)
            if np.shares_memory(out, x):
                raise ValueError("out: may not alias x")
        # The forward writes every sequence of its batch: the cache's shared side plus those
        # sequences' locks (mla.Cache's threading rules).
        seqs = np.unique(seq).tolist()
        errors: List[BaseException] = []
        callback = _progress_callback(progress, errors)  # alive until the call returns
        with self._busy, layer._lock.shared(()), cache._lock.shared(seqs):
            if progress is not None:
                check(o.lib, o.lib.mla_attn_set_progress(o.ptr, callback, None))
            try:
                status = o.lib.mla_attn_forward(o.ptr, lo.ptr, co.ptr, cache_layer,
                                                ptr(x, ctypes.c_float), n,
                                                ptr(seq, ctypes.c_int32),
                                                ptr(pos, ctypes.c_int64), ptr(out, ctypes.c_float))
            finally:
                if progress is not None:
                    o.lib.mla_attn_set_progress(o.ptr, _ffi.mla_progress_fn(), None)
        if errors:
            raise errors[0]
        check(o.lib, status)
        return out

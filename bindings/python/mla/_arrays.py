"""Checks that an argument can be handed to C as it is (no copies, no silent conversion)."""
from __future__ import annotations

import ctypes
import operator
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np


def check_array(arr: Any, dtype: Any, shape: Sequence[Optional[int]], name: str,
                writable: bool = False) -> np.ndarray:
    """Return arr if it is a C-contiguous numpy array of exactly this dtype and shape.

    shape entries that are None match any size. Raises TypeError (not an ndarray, wrong dtype) or
    ValueError (wrong shape, not C-contiguous, read-only where C writes), naming the argument.
    """
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    want = np.dtype(dtype)
    if arr.dtype != want:
        raise TypeError(f"{name}: dtype is {arr.dtype}, expected {want} "
                        f"(convert explicitly, e.g. {name}.astype(numpy.{want.name}))")
    if arr.ndim != len(shape) or any(w is not None and g != w for g, w in zip(arr.shape, shape)):
        pretty = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise ValueError(f"{name}: shape is {arr.shape}, expected {pretty}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: not C-contiguous (use numpy.ascontiguousarray({name}))")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name}: read-only, but libmla writes into it")
    return arr


def int_arg(value: Any, ctype: Any, name: str) -> int:
    """value as a Python int that fits ctype (c_int32, c_int64, ...), else TypeError/ValueError.

    ctypes wraps an out-of-range int silently (2**32 passed as int32 is 0): a sequence id or a
    position that does not fit would address another sequence or position instead of failing.
    """
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None
    bits = 8 * ctypes.sizeof(ctype)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not lo <= v <= hi:
        raise ValueError(f"{name}: {v} does not fit the C type int{bits}_t [{lo}, {hi}]")
    return v


def set_int(struct: Any, field: str, value: Any, name: Optional[str] = None) -> None:
    """struct.field = value, checked against the field's C integer type (see int_arg)."""
    ctype = dict(type(struct)._fields_)[field]
    setattr(struct, field, int_arg(value, ctype, name or field))


def c_string(value: Union[str, bytes], name: str) -> bytes:
    """value as a NUL-terminated C string's bytes; ValueError for an embedded NUL, which C would
    take as the end of the string (another file, another tensor name)."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if b"\0" in raw:
        raise ValueError(f"{name}: embedded null byte in {value!r}")
    return raw


def ptr(arr: Optional[np.ndarray], ctype: Any) -> Any:
    """A ctypes pointer to arr's first element (NULL for None). arr must outlive the call."""
    if arr is None:
        return None
    return arr.ctypes.data_as(ctypes.POINTER(ctype))


def void_ptr(arr: Optional[np.ndarray]) -> Optional[int]:
    return None if arr is None else arr.ctypes.data


class BufferView:
    """Exposes memory owned by a libmla handle to numpy, keeping the handle alive.

    numpy.asarray(BufferView(...)) is a read-only array whose .base is this object, which holds
    `keep` (the handle's Owned): the memory stays valid as long as the array lives.
    """

    def __init__(self, keep: Any, address: int, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        self.keep = keep
        self.__array_interface__ = {
            "version": 3,
            "data": (address, True),
            "shape": shape,
            "typestr": np.dtype(dtype).str,
        }

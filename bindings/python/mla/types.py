"""Enumerations of the C API, as Python IntEnums (values fixed forever, like the C ones)."""
from __future__ import annotations

import enum
from typing import Any, Union

import numpy as np

from . import _ffi


class DType(enum.IntEnum):
    """mla_dtype."""

    F32 = _ffi.MLA_DTYPE_F32
    F16 = _ffi.MLA_DTYPE_F16
    BF16 = _ffi.MLA_DTYPE_BF16
    I8 = _ffi.MLA_DTYPE_I8
    I4 = _ffi.MLA_DTYPE_I4
    I32 = _ffi.MLA_DTYPE_I32
    F64 = _ffi.MLA_DTYPE_F64


class RopeScaling(enum.IntEnum):
    NONE = _ffi.MLA_ROPE_SCALING_NONE
    LINEAR = _ffi.MLA_ROPE_SCALING_LINEAR


class RopeStrategy(enum.IntEnum):
    HIGH = _ffi.MLA_ROPE_HIGH
    LOW = _ffi.MLA_ROPE_LOW
    UNIFORM = _ffi.MLA_ROPE_UNIFORM
    NORM2 = _ffi.MLA_ROPE_2NORM
    EXPLICIT = _ffi.MLA_ROPE_EXPLICIT


class Factorization(enum.IntEnum):
    JOINT = _ffi.MLA_FACTOR_JOINT
    SPLIT = _ffi.MLA_FACTOR_SPLIT
    ACTIVATION_JOINT = _ffi.MLA_FACTOR_ACTIVATION_JOINT


class LayerKind(enum.IntEnum):
    MLA = _ffi.MLA_LAYER_MLA
    MHA = _ffi.MLA_LAYER_MHA


class AttnPath(enum.IntEnum):
    AUTO = _ffi.MLA_ATTN_PATH_AUTO
    ABSORBED = _ffi.MLA_ATTN_PATH_ABSORBED
    MATERIALIZED = _ffi.MLA_ATTN_PATH_MATERIALIZED


class AttnThreads(enum.IntEnum):
    """Where an Attn's n_threads run: its own pool, or the process's OpenMP runtime."""
    POOL = _ffi.MLA_ATTN_THREADS_POOL
    OPENMP = _ffi.MLA_ATTN_THREADS_OPENMP


# Strings accepted wherever an enum is: the reference's names for the strategies, dtype names.
_ALIASES = {
    RopeStrategy: {"high": RopeStrategy.HIGH, "low": RopeStrategy.LOW,
                   "uniform": RopeStrategy.UNIFORM, "2-norm": RopeStrategy.NORM2,
                   "2norm": RopeStrategy.NORM2, "explicit": RopeStrategy.EXPLICIT},
    Factorization: {"joint": Factorization.JOINT, "split": Factorization.SPLIT,
                    "activation_joint": Factorization.ACTIVATION_JOINT,
                    "activation-joint": Factorization.ACTIVATION_JOINT},
    DType: {"f32": DType.F32, "float32": DType.F32, "f16": DType.F16, "float16": DType.F16,
            "bf16": DType.BF16, "bfloat16": DType.BF16, "i8": DType.I8, "int8": DType.I8,
            "i4": DType.I4, "int4": DType.I4, "i32": DType.I32, "int32": DType.I32,
            "f64": DType.F64, "float64": DType.F64},
    AttnPath: {"auto": AttnPath.AUTO, "absorbed": AttnPath.ABSORBED,
               "materialized": AttnPath.MATERIALIZED},
    AttnThreads: {"pool": AttnThreads.POOL, "openmp": AttnThreads.OPENMP},
    RopeScaling: {"none": RopeScaling.NONE, "linear": RopeScaling.LINEAR},
}


def to_enum(cls: Any, value: Union[int, str], name: str) -> Any:
    """cls(value), also from a name ("2-norm", "f16", "JOINT"); ValueError naming the argument."""
    if isinstance(value, str):
        key = value.lower()
        aliases = _ALIASES.get(cls, {})
        if key in aliases:
            return aliases[key]
        if value.upper() in cls.__members__:
            return cls[value.upper()]
        raise ValueError(f"{name}: unknown {cls.__name__} {value!r}; one of "
                         f"{sorted(set(aliases) | {m.lower() for m in cls.__members__})}")
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a {cls.__name__}") from None


def numpy_dtype(dtype: DType) -> np.dtype:
    """The numpy dtype holding one element of dtype (BF16 as raw uint16 bits)."""
    table = {DType.F32: np.float32, DType.F16: np.float16, DType.BF16: np.uint16,
             DType.I32: np.int32, DType.F64: np.float64, DType.I8: np.int8}
    if dtype not in table:
        raise ValueError(f"no numpy dtype for {dtype!r}")
    return np.dtype(table[dtype])


def weight_dtype(arr: np.ndarray, name: str) -> DType:
    """The mla dtype of a weight array: float32, float16, or bfloat16 (ml_dtypes' type)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype == np.float32:
        return DType.F32
    if arr.dtype == np.float16:
        return DType.F16
    if arr.dtype.name == "bfloat16" and arr.dtype.itemsize == 2:
        return DType.BF16
    raise TypeError(f"{name}: dtype is {arr.dtype}; weights must be float32, float16 or bfloat16 "
                    f"(convert explicitly)")

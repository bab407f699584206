"""Python binding of libmla: MHA2MLA conversion, the latent KV cache and MLA attention.

    import mla
    layer = mla.convert(geometry, weights, rope_strategy="2-norm", calib=calib, rope_dim=4, d_kv=8)
    with mla.Cache([layer], capacity_tokens=4096) as cache, mla.Attn() as attn:
        y = attn.forward(layer, cache, 0, x, seq=0, pos=0)

The library is found by mla.load_library(path), else $MLA_LIBRARY, else the system loader; its
version is checked when it is loaded (at import when it can be found then). Every failed C call
raises mla.MlaError with .status (mla.Status) and .message. See bindings/python/README.md.
"""
from __future__ import annotations

from . import _ffi
from ._library import library, load_library, try_load_at_import
from .attn import Attn
from .cache import Cache, CacheLayerDesc, CacheStats
from .convert import Calib, ConvertReport, Geometry, Layer, LayerInfo, LayerWeights, convert
from .errors import LibraryError, LibraryVersionError, MlaError, Status
from .types import AttnPath, AttnThreads, DType, Factorization, LayerKind, RopeScaling, RopeStrategy

__version__ = f"{_ffi.VERSION_MAJOR}.{_ffi.VERSION_MINOR}.{_ffi.VERSION_PATCH}"

__all__ = [
    "Attn", "AttnPath", "AttnThreads", "Cache", "CacheLayerDesc", "CacheStats", "Calib",
    "ConvertReport", "DType", "Factorization", "Geometry", "Layer", "LayerInfo", "LayerKind", "LayerWeights",
    "LibraryError", "LibraryVersionError", "MlaError", "RopeScaling", "RopeStrategy", "Status",
    "convert", "library", "library_version", "load_library", "status_string", "build_info",
]


def library_version() -> str:
    """The loaded library's "major.minor.patch"."""
    return library().mla_version_string().decode()


def build_info() -> str:
    """The loaded library's build description (BLAS/LAPACK, CPU features)."""
    return library().mla_build_info().decode()


def status_string(status: int) -> str:
    """The library's short description of a status."""
    return library().mla_status_string(status).decode()


try_load_at_import()

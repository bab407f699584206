"""Finding and loading libmla.so, and checking its version against this binding."""
from __future__ import annotations

import ctypes.util
import os
import threading
from typing import List, Optional

from . import _ffi
from .errors import LibraryError, LibraryVersionError

_lock = threading.Lock()
_current: Optional[_ffi.Library] = None


def _candidates(path: Optional[str]) -> List[str]:
    """The lookup order: explicit path, then $MLA_LIBRARY, then the system loader."""
    if path is not None:
        return [os.fspath(path)]
    env = os.environ.get("MLA_LIBRARY")
    if env:
        return [env]
    found = ctypes.util.find_library("mla")
    return [found] if found else ["libmla.so.0"]


def _open(path: str) -> _ffi.Library:
    try:
        lib = _ffi.Library(path)
    except OSError as e:
        raise LibraryError(f"cannot load libmla from {path!r}: {e}. Pass the path to "
                           f"mla.load_library(), set MLA_LIBRARY, or install libmla") from e
    if "mla_version" in lib.missing:
        raise LibraryError(f"{path} is not libmla (no mla_version symbol)")
    have = lib.mla_version()
    want = _ffi.VERSION_NUMBER
    # Same major (the soname) and a library at least as new as the declarations here.
    if have // 10000 != want // 10000 or have < want:
        raw = lib.mla_version_string()
        version = raw.decode() if raw else str(have)
        raise LibraryVersionError(
            f"libmla at {path} is version {version}, this binding needs "
            f"{_ffi.VERSION_MAJOR}.{_ffi.VERSION_MINOR}.{_ffi.VERSION_PATCH} or a newer "
            f"{_ffi.VERSION_MAJOR}.x")
    return lib


def load_library(path: "Optional[str | os.PathLike[str]]" = None) -> _ffi.Library:
    """Load libmla and make it the library new objects use.

    path: the shared library file; without it, $MLA_LIBRARY, then the system loader
    (ctypes.util.find_library("mla"), then "libmla.so.0"). Objects created before keep using the
    library that created them. Raises LibraryError if it cannot be loaded or its version does not
    match this binding.
    """
    global _current
    lib = _open(_candidates(None if path is None else os.fspath(path))[0])
    with _lock:
        _current = lib
    return lib


def library() -> _ffi.Library:
    """The library in use, loading it by the default lookup on first use."""
    global _current
    with _lock:
        lib = _current
    if lib is None:
        lib = load_library()
    return lib


def try_load_at_import() -> None:
    """Load and version-check at import when the library is findable; defer otherwise.

    An explicitly set $MLA_LIBRARY that does not load is an error at once. With nothing found, the
    import succeeds so that mla.load_library(path) can still be called; the first use fails then.
    """
    if os.environ.get("MLA_LIBRARY"):
        load_library()
        return
    try:
        load_library()
    except LibraryVersionError:
        raise
    except LibraryError:
        pass

"""Status codes and the one exception type every failed libmla call raises."""
from __future__ import annotations

import enum
from typing import Union

from . import _ffi


class Status(enum.IntEnum):
    """mla_status (include/mla/common.h). Values are fixed forever."""

    OK = _ffi.MLA_OK
    INVALID_ARGUMENT = _ffi.MLA_ERR_INVALID_ARGUMENT
    SHAPE_MISMATCH = _ffi.MLA_ERR_SHAPE_MISMATCH
    OUT_OF_MEMORY = _ffi.MLA_ERR_OUT_OF_MEMORY
    IO = _ffi.MLA_ERR_IO
    BAD_FORMAT = _ffi.MLA_ERR_BAD_FORMAT
    UNSUPPORTED = _ffi.MLA_ERR_UNSUPPORTED
    CAPACITY = _ffi.MLA_ERR_CAPACITY
    NUMERICAL = _ffi.MLA_ERR_NUMERICAL
    INTERNAL = _ffi.MLA_ERR_INTERNAL
    CANCELLED = _ffi.MLA_ERR_CANCELLED


class MlaError(Exception):
    """A libmla call failed.

    Attributes:
        status: the Status the call returned (a plain int if this binding does not know it).
        message: mla_last_error() right after the call: what was wrong and where.
    """

    def __init__(self, status: Union[Status, int], message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        name = self.status.name if isinstance(self.status, Status) else str(self.status)
        return f"[{name}] {self.message}"


class LibraryError(OSError):
    """libmla could not be found or loaded, or its version does not match this binding."""


class LibraryVersionError(LibraryError):
    """The loaded libmla's version is incompatible with this binding."""


def check(lib: _ffi.Library, status: int) -> None:
    """Raise MlaError for a nonzero status, with the calling thread's last error message."""
    if status == _ffi.MLA_OK:
        return
    raw = lib.mla_last_error()
    message = raw.decode("utf-8", "replace") if raw else ""
    if not message:
        message = lib.mla_status_string(status).decode("utf-8", "replace")
    try:
        code: Union[Status, int] = Status(status)
    except ValueError:
        code = int(status)
    raise MlaError(code, message)

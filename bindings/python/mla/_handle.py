"""Ownership of C handles: one destructor call per handle, whatever happens."""
from __future__ import annotations

import weakref
from typing import Any, Optional, TypeVar

from . import _ffi

T = TypeVar("T", bound="Handle")


class Owned:
    """A C handle and its destructor, called exactly once: when this object is collected.

    Every Python object that needs the handle alive (the owner, a numpy view into the handle's
    memory, a call in progress on another thread) holds a reference to this object, so the C
    destroy runs only after the last of them is gone, never twice.
    """

    __slots__ = ("ptr", "lib", "finalizer", "__weakref__")

    def __init__(self, lib: _ffi.Library, ptr: Any, destroy: str) -> None:
        self.ptr = ptr
        self.lib = lib
        self.finalizer = weakref.finalize(self, getattr(lib, destroy), ptr)


class Handle:
    """Base of the classes owning a libmla handle: close(), context manager, finalizer."""

    _owned: Optional[Owned]

    def __init__(self, owned: Owned) -> None:
        self._owned = owned

    def _own(self) -> Owned:
        """The live handle (hold the result for the duration of the C call), or ValueError."""
        owned = self._owned
        if owned is None:
            raise ValueError(f"operation on a closed {type(self).__name__}")
        return owned

    @property
    def closed(self) -> bool:
        return self._owned is None

    def close(self) -> None:
        """Release the C handle. Safe to call twice. Later calls on this object raise ValueError.

        The C destroy runs at once unless numpy views into the handle's memory (Layer.tensor) or
        a call on another thread still use it; then it runs when the last of them is done.
        """
        self._owned = None

    def __enter__(self: T) -> T:
        self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._owned is None else "open"
        return f"<mla.{type(self).__name__} {state}>"

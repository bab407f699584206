"""The C library's threading rules for one mla_cache, enforced: a readers–writer lock whose shared
side also locks the sequences a call touches.

ctypes releases the GIL, so Python threads run C calls truly at once; an mla_cache call that
needs exclusive access racing a forward on another thread would be a data race in C.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterable, Iterator, List


class CacheLock:
    """Shared side: calls that the C header allows to run concurrently on distinct sequences
    (mla_cache_write, mla_cache_seq_read and the per-sequence queries, mla_attn_forward). Each also
    takes one lock per sequence it touches, so two calls on the same sequence run one after the
    other. Exclusive side: every other call; it waits for all shared holders to finish.

    A waiting exclusive caller blocks new shared callers, so a stream of forwards cannot starve
    structural calls. Neither side is reentrant: a method holding it must not call another
    locking method of the same cache.
    """

    def __init__(self, n_seq: int) -> None:
        self._n_seq = n_seq
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0           # threads inside the shared side
        self._exclusive = False    # a thread inside the exclusive side
        self._waiting = 0          # threads waiting for the exclusive side
        self._seq: Dict[int, threading.Lock] = {}  # made on first use, at most n_seq of them

    def _seq_locks(self, seqs: Iterable[int]) -> List[threading.Lock]:
        """The locks of the valid ids among seqs, in increasing id order (one global order, so
        calls locking several sequences cannot deadlock). Ids out of range get none: the C call
        rejects them before touching any sequence."""
        ids = sorted({s for s in seqs if 0 <= s < self._n_seq})
        locks = []
        for s in ids:  # under the GIL; setdefault makes one lock per id even when threads race
            lock = self._seq.get(s)
            if lock is None:
                lock = self._seq.setdefault(s, threading.Lock())
            locks.append(lock)
        return locks

    @contextlib.contextmanager
    def shared(self, seqs: Iterable[int]) -> Iterator[None]:
        locks = self._seq_locks(seqs)
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        held: List[threading.Lock] = []
        try:
            for lock in locks:
                lock.acquire()
                held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
                if not self._waiting:
                    # Also when the wait was interrupted: shared callers held back by this one
                    # may go on.
                    self._cond.notify_all()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

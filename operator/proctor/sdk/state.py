"""Task-level checkpoints and cooperative interruption for long cases.

A long case calls :func:`save_state` every so often and :func:`load_state` when it starts; when
its worker is preempted the case runs again elsewhere and picks up where the last save left it.
Keys are scoped to the case being evaluated, and in a comparison to its side, so two cases
(or the baseline and the candidate of one case) never see each other's state.

State is pickled (protocol 5, so numpy arrays and the like work) and zstd-compressed. It is read
back only from the run's own storage, which the run trusts as it trusts its image.
"""

from __future__ import annotations

import pickle
import re
import threading
from typing import Any, Protocol

import zstandard

_MAGIC = b"PRS1"
_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_COMPRESSION_LEVEL = 3


class StateStore(Protocol):
    """Where task state lives; the worker installs one backed by the run's storage."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    def get(self, key: str) -> bytes | None:
        """The data under ``key``, or None."""


class MemoryStateStore:
    """A store in this process's memory: the default outside a worker, and for tests."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``."""
        with self._lock:
            self.data[key] = data

    def get(self, key: str) -> bytes | None:
        """The data under ``key``, or None."""
        with self._lock:
            return self.data.get(key)


class CaseInterrupted(BaseException):
    """Raised by a case that saw :func:`stop_requested` and saved its state.

    The batch ends without a record for that case (nor the ones after it), so the worker hands
    them back to the queue and they run again elsewhere, resuming from the saved state. A
    BaseException so that a task's ``except Exception`` does not swallow it.
    """


class _Context(threading.local):
    case: int | None = None
    side: str | None = None  # "baseline" or "candidate" in a comparison


class _Stop:
    """Whether the worker asked running cases to stop: a plain attribute (a bool's assignment
    is atomic), so that an evaluation loop reads it before every case without a call."""

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False


_context = _Context()
_store: StateStore = MemoryStateStore()
_stop = _Stop()


def set_state_store(store: StateStore | None) -> None:
    """Install the store :func:`save_state` writes to (None: a fresh in-memory store)."""
    global _store  # noqa: PLW0603 - one store per worker process, installed by the worker
    _store = store if store is not None else MemoryStateStore()


def get_state_store() -> StateStore:
    """The installed store."""
    return _store


def set_current_case(index: int | None) -> None:
    """Scope state keys to case ``index`` in this thread (the evaluation loop calls this)."""
    _context.case = index


def set_current_side(side: str | None) -> None:
    """Scope state keys to one side of a comparison (``baseline``, ``candidate``) in this
    thread, or to the case alone (None: a run without compare)."""
    _context.side = side


def case_slots() -> tuple[_Context, _Stop]:
    """This thread's case slot (``.case``: what :func:`set_current_case` sets) and the stop flag
    (``.requested``: what :func:`stop_requested` reads), for an evaluation loop that sets and
    reads them for every case without a call."""
    return _context, _stop


def state_key(key: str) -> str:
    """The store key for a task's ``key``: ``cases/<index>/<key>`` inside a case (one side of
    a comparison: ``cases/<index>/<side>/<key>``), else ``task/<key>``."""
    if len(key) > 200 or not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(
            f"state key {key!r} must be 1-200 characters of letters, digits, '.', '_', '-' "
            "and '/' separators"
        )
    case, side = _context.case, _context.side
    if case is None:
        return f"task/{key}"
    return f"cases/{case}/{key}" if side is None else f"cases/{case}/{side}/{key}"


def encode_state(state: Any) -> bytes:
    """Pickle and compress ``state``."""
    raw = pickle.dumps(state, protocol=5)
    return _MAGIC + zstandard.ZstdCompressor(level=_COMPRESSION_LEVEL).compress(raw)


def decode_state(data: bytes) -> Any:
    """The inverse of :func:`encode_state`."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a proctor task state: bad header")
    raw = zstandard.ZstdDecompressor().decompress(data[len(_MAGIC) :])
    # Only ever read back from the run's own storage, which the run trusts like its image.
    return pickle.loads(raw)


def save_state(key: str, state: Any) -> None:
    """Checkpoint ``state`` under ``key`` for the current case."""
    _store.put(state_key(key), encode_state(state))


def load_state(key: str) -> Any | None:
    """The state last saved under ``key`` for the current case, or None."""
    data = _store.get(state_key(key))
    return None if data is None else decode_state(data)


def request_stop() -> None:
    """Ask running cases to stop (the worker calls this on SIGTERM); no new case starts."""
    _stop.requested = True


def clear_stop() -> None:
    """Withdraw :func:`request_stop`, for a process that keeps evaluating afterwards."""
    _stop.requested = False


def stop_requested() -> bool:
    """Whether the worker is shutting down: a long case should save its state and raise
    :class:`CaseInterrupted`."""
    return _stop.requested

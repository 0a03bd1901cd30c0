"""The cache's objects: immutable pieces of one side's results, written create-once.

A piece holds the results of some cases of one block (see :mod:`proctor.cache.keys`) and is
numbered within it. A writer reads the block's pieces, keeps only the cases none of them
holds, and creates the next number with a conditional put; when another writer took that
number first it reads that piece, drops what it holds and tries the next. So concurrent runs
sharing a cache never overwrite an entry, and no case is in two pieces of one block. A piece
that cannot be read back whole, or says it is another key's, is ignored (logged once,
counted), never trusted. A store whose writes are refused becomes read-only (logged once)
instead of failing the run.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import structlog

from proctor.cache import keys
from proctor.cache.keys import FORMAT, SideKey, blocks, piece_number
from proctor.sdk.records import Record
from proctor.storage import Blobs, StorageError
from proctor.storage.run import compress, decompress

log = structlog.get_logger("proctor.cache")

MAX_PIECE_TRIES = 64
"""Conditional puts lost to other writers before a block's results are left uncached."""
BLOCKS_KEPT = 16
"""Blocks whose pieces a store keeps in memory, per side: consecutive batches share them."""

Event = Callable[[str, str], None]
"""``(what, role)`` for each corrupt piece ("corrupt") and a store turned read-only
("readOnly"): the worker's metrics."""

_STRINGS = pa.list_(pa.string())
_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("row", pa.string(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("errorType", pa.string()),
        pa.field("violations", _STRINGS, nullable=False),
        pa.field("output", pa.string()),
        pa.field("run", pa.string(), nullable=False),
    ]
)


class CorruptPieceError(ValueError):
    """A piece that is not a whole entry object of the key it is stored under."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One side's cached result on one case: ``row`` is the dataset row's digest ("" for a
    generated case), ``side`` the side record, ``run`` the run that evaluated it."""

    index: int
    row: str
    side: Record
    run: str

    @property
    def case(self) -> tuple[int, str]:
        return (self.index, self.row)


def encode(key: SideKey, block: int, entries: Sequence[Entry]) -> bytes:
    """A piece: one Arrow IPC file of ``entries``, tagged with its key, compressed."""
    sides = [e.side for e in entries]
    outputs = any("output" in s for s in sides)
    columns = [
        pa.array([e.index for e in entries], pa.int64()),
        pa.array([e.row for e in entries], pa.string()),
        pa.array([bool(s["passed"]) for s in sides], pa.bool_()),
        pa.array([s.get("error") for s in sides], pa.string()),
        pa.array([s.get("errorType") for s in sides], pa.string()),
        pa.array([list(s.get("violations") or []) for s in sides], _STRINGS),
        pa.array(
            [json.dumps(s.get("output"), separators=(",", ":")) for s in sides]
            if outputs
            else [None] * len(sides),
            pa.string(),
        ),
        pa.array([e.run for e in entries], pa.string()),
    ]
    meta = {"proctor.cache": FORMAT, "key": key.block_prefix(block), "outputs": str(int(outputs))}
    schema = _SCHEMA.with_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    return compress(bytes(sink.getvalue()), "zstd", 3)


def decode(data: bytes, key: SideKey, block: int, name: str) -> list[Entry]:
    """The entries of a piece stored under ``key``'s ``block``; raises
    :class:`CorruptPieceError` for anything else."""
    try:
        raw = decompress(data, name)
        with pa.ipc.open_file(pa.py_buffer(raw)) as reader:
            table = reader.read_all()
    except Exception as exc:  # zstd and Arrow raise several types for a torn object
        raise CorruptPieceError(f"not a whole entry object: {type(exc).__name__}: {exc}") from exc
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("proctor.cache") != FORMAT or meta.get("key") != key.block_prefix(block):
        raise CorruptPieceError("the object is not an entry of this key")
    if not table.schema.remove_metadata().equals(_SCHEMA):
        raise CorruptPieceError("the object's columns are not an entry's")
    c = table.to_pydict()
    lo, hi = block * keys.BLOCK, (block + 1) * keys.BLOCK
    out = []
    for i, index in enumerate(c["index"]):
        if not lo <= index < hi:
            raise CorruptPieceError(f"case {index} is not in block {block}")
        side = _side(c["passed"][i], c["error"][i], c["errorType"][i], c["violations"][i])
        if meta.get("outputs") == "1":
            side["output"] = json.loads(c["output"][i]) if c["output"][i] is not None else None
        out.append(Entry(index, c["row"][i], side, c["run"][i]))
    return out


def _side(passed: bool, error: str | None, error_type: str | None, violations: list[str]) -> Record:
    return {
        "passed": bool(passed) and error is None,
        "errored": error is not None,
        "violations": list(violations or []) if error is None else [],
        "error": error,
        "errorType": error_type if error is not None else None,
    }


@dataclass
class _Block:
    """What a store has read of one block: keys read, entries by case, the next piece."""

    read: set[str] = field(default_factory=set)
    entries: dict[tuple[int, str], Entry] = field(default_factory=dict)
    next_piece: int = 0


class CacheStore:
    """The cache under ``blobs`` for one run (``run`` names it in the entries it writes)."""

    def __init__(self, blobs: Blobs, run: str, *, writes: bool, on_event: Event | None = None):
        self.blobs = blobs
        self.run = run
        self.writes = writes
        self.read_only_reason = ""
        self.corrupt: set[str] = set()
        self._on_event = on_event or (lambda what, role: None)
        self._blocks: OrderedDict[tuple[str, int], _Block] = OrderedDict()

    @property
    def read_only(self) -> bool:
        return bool(self.read_only_reason)

    def lookup(
        self, key: SideKey, start: int, end: int, rows: Mapping[int, str | None]
    ) -> dict[int, Entry]:
        """The entries of ``key`` for the cases ``[start, end)`` whose row digest (``rows``:
        index to digest, "" for a generated case, None for an uncacheable one) matches."""
        found: dict[int, Entry] = {}
        for b in blocks(start, end):
            blk = self._refresh(key, b)
            for index in range(max(start, b * keys.BLOCK), min(end, (b + 1) * keys.BLOCK)):
                row = rows.get(index)
                entry = blk.entries.get((index, row)) if row is not None else None
                if entry is not None:
                    found[index] = entry
        return found

    def add(self, key: SideKey, entries: Iterable[Entry]) -> int:
        """Write the entries no piece holds yet, one new piece per block; how many were
        written. Never raises for the store: a refused write makes the store read-only."""
        by_block: dict[int, list[Entry]] = {}
        for e in entries:
            by_block.setdefault(e.index // keys.BLOCK, []).append(e)
        written = 0
        for b, items in sorted(by_block.items()):
            if self.read_only or not self.writes:
                break
            try:
                written += self._add_block(key, b, items)
            except (StorageError, OSError) as exc:
                self._refused(key, exc)
        return written

    def _add_block(self, key: SideKey, block: int, items: list[Entry]) -> int:
        blk = self._refresh(key, block)
        for _ in range(MAX_PIECE_TRIES):
            missing = [e for e in items if e.case not in blk.entries]
            if not missing:
                return 0
            name = key.piece_key(block, blk.next_piece)
            if self.blobs.put_if_absent(name, encode(key, block, missing)):
                blk.read.add(name)
                blk.next_piece += 1
                blk.entries.update((e.case, e) for e in missing)
                return len(missing)
            self._refresh(key, block)  # another writer took the number: read its piece
        log.warning("cache block contended; its results are left uncached", key=name)
        return 0

    def _refresh(self, key: SideKey, block: int) -> _Block:
        """The block's pieces, reading those not read yet."""
        slot = (key.prefix, block)
        blk = self._blocks.get(slot)
        if blk is None:
            blk = self._blocks[slot] = _Block()
            while len(self._blocks) > BLOCKS_KEPT * 2:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(slot)
        try:
            names = list(self.blobs.list(key.block_prefix(block)))
        except (StorageError, OSError) as exc:
            log.warning("cache block cannot be listed; treated as empty", error=str(exc))
            return blk
        for name in names:
            n = piece_number(name)
            if n is None or name in blk.read:
                continue
            blk.next_piece = max(blk.next_piece, n + 1)
            self._read_piece(key, block, name, blk)
        return blk

    def _read_piece(self, key: SideKey, block: int, name: str, blk: _Block) -> None:
        try:
            data = self.blobs.get(name)
            if data is None:
                return
            entries = decode(data, key, block, name)
        except (CorruptPieceError, StorageError, OSError) as exc:
            blk.read.add(name)
            if name not in self.corrupt:
                self.corrupt.add(name)
                log.warning("cache entry ignored: cannot be trusted", key=name, error=str(exc))
                self._on_event("corrupt", key.role)
            return
        blk.read.add(name)
        for e in entries:
            blk.entries.setdefault(e.case, e)

    def _refused(self, key: SideKey, exc: BaseException) -> None:
        if self.read_only:
            return
        self.read_only_reason = (
            f"the cache at {self.blobs.uri()} cannot be written ({type(exc).__name__}: {exc}); "
            "it is only read: give the run's credentials write access, or set cache.mode: read"
        )
        log.warning("cache is read-only for this run", reason=self.read_only_reason)
        self._on_event("readOnly", key.role)

"""Embedded backend: one SQLite file (WAL mode), safe across processes on one machine.

Used by ``proctor run`` without servers. Each change is one ``BEGIN IMMEDIATE`` transaction,
so it has the same atomicity as the Redis scripts. A lease is a ``lease_until`` time and a
random token; a claim takes waiting entries and entries whose lease expired.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from proctor.queue.base import DeadLetter, Lease, QueueDepth, QueueError, Range

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run TEXT NOT NULL, start INTEGER NOT NULL, end_ INTEGER NOT NULL, prior INTEGER NOT NULL,
  deliveries INTEGER NOT NULL DEFAULT 0, owner TEXT, token TEXT, lease_until REAL
);
CREATE INDEX IF NOT EXISTS entries_run ON entries (run, lease_until);
CREATE TABLE IF NOT EXISTS chunks (
  run TEXT NOT NULL, chunk TEXT NOT NULL, PRIMARY KEY (run, chunk)
);
CREATE TABLE IF NOT EXISTS dead (
  run TEXT NOT NULL, start INTEGER NOT NULL, end_ INTEGER NOT NULL, deliveries INTEGER NOT NULL,
  reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stops (run TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


class SqliteQueue:
    """A run's queue in a SQLite file. One connection per thread."""

    def __init__(self, path: Path, run_id: str, *, lease_seconds: float) -> None:
        self.path = path
        self.run_id = run_id
        self.lease_seconds = lease_seconds
        self._local = threading.local()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db().executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise QueueError(f"cannot open the embedded queue at {path}: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def enqueue(self, ranges: Sequence[Range], *, chunk: str) -> int:
        with self._tx() as db:
            seen = db.execute(
                "SELECT 1 FROM chunks WHERE run = ? AND chunk = ?", (self.run_id, chunk)
            ).fetchone()
            if seen:
                return 0
            db.executemany(
                "INSERT INTO entries (run, start, end_, prior) VALUES (?, ?, ?, 0)",
                [(self.run_id, r.start, r.end) for r in ranges],
            )
            db.execute("INSERT INTO chunks (run, chunk) VALUES (?, ?)", (self.run_id, chunk))
        return len(ranges)

    def claim(self, count: int, consumer: str) -> list[Lease]:
        now = time.time()
        leases = []
        with self._tx() as db:
            if db.execute("SELECT 1 FROM stops WHERE run = ?", (self.run_id,)).fetchone():
                return []
            # Expired leases first (they are older work), then waiting entries, oldest first.
            rows = db.execute(
                "SELECT id, start, end_, prior, deliveries FROM entries WHERE run = ? AND "
                "(lease_until IS NULL OR lease_until < ?) "
                "ORDER BY lease_until IS NULL, id LIMIT ?",
                (self.run_id, now, count),
            ).fetchall()
            for entry_id, start, end, prior, deliveries in rows:
                token = f"{entry_id}:{secrets.token_hex(8)}"
                db.execute(
                    "UPDATE entries SET deliveries = ?, owner = ?, token = ?, lease_until = ? "
                    "WHERE id = ?",
                    (deliveries + 1, consumer, token, now + self.lease_seconds, entry_id),
                )
                leases.append(Lease(Range(start, end), token, prior + deliveries + 1, prior))
        return leases

    @staticmethod
    def _id(lease: Lease) -> int:
        return int(lease.token.split(":", 1)[0])

    def renew(self, lease: Lease, consumer: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE entries SET lease_until = ? WHERE id = ? AND token = ?",
                (time.time() + self.lease_seconds, self._id(lease), lease.token),
            )
            return cur.rowcount == 1

    def _finish(
        self,
        lease: Lease,
        remainder: Iterable[Range],
        prior: int,
        dead: tuple[Range, str] | None = None,
    ) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM entries WHERE id = ? AND token = ?", (self._id(lease), lease.token)
            )
            if cur.rowcount != 1:
                return False
            if dead is not None:
                db.execute(
                    "INSERT INTO dead (run, start, end_, deliveries, reason) VALUES (?,?,?,?,?)",
                    (self.run_id, dead[0].start, dead[0].end, lease.delivery, dead[1]),
                )
            if not db.execute("SELECT 1 FROM stops WHERE run = ?", (self.run_id,)).fetchone():
                db.executemany(
                    "INSERT INTO entries (run, start, end_, prior) VALUES (?, ?, ?, ?)",
                    [(self.run_id, r.start, r.end, prior) for r in remainder],
                )
        return True

    def ack(self, lease: Lease, consumer: str) -> bool:
        return self._finish(lease, (), 0)

    def handback(
        self, lease: Lease, consumer: str, remainder: Iterable[Range], *, prior: int = 0
    ) -> bool:
        return self._finish(lease, remainder, prior)

    def dead_letter(
        self,
        lease: Lease,
        consumer: str,
        reason: str,
        *,
        dead: Range | None = None,
        remainder: Iterable[Range] = (),
    ) -> bool:
        return self._finish(lease, remainder, 0, (dead or lease.range, reason))

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._db().execute(
            "SELECT start, end_, deliveries, reason FROM dead WHERE run = ? ORDER BY start",
            (self.run_id,),
        )
        return [DeadLetter(Range(s, e), d, r) for s, e, d, r in rows]

    def depth(self) -> QueueDepth:
        db = self._db()
        now = time.time()
        waiting, in_flight, cases = db.execute(
            "SELECT COALESCE(SUM(lease_until IS NULL OR lease_until < ?), 0), "
            "COALESCE(SUM(lease_until >= ?), 0), COALESCE(SUM(end_ - start), 0) "
            "FROM entries WHERE run = ?",
            (now, now, self.run_id),
        ).fetchone()
        holders = self._holders(db, now)
        return QueueDepth(int(waiting), int(in_flight), int(cases), self.stopped(), holders)

    def _holders(self, db: sqlite3.Connection, now: float) -> frozenset[str]:
        rows = db.execute(
            "SELECT DISTINCT owner FROM entries WHERE run = ? AND lease_until >= ?",
            (self.run_id, now),
        )
        return frozenset(str(owner) for (owner,) in rows if owner)

    def lease_holders(self) -> frozenset[str] | None:
        return self._holders(self._db(), time.time())

    def stop(self, reason: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO stops (run, reason) VALUES (?, ?)", (self.run_id, reason)
            )
            db.execute(
                "DELETE FROM entries WHERE run = ? AND (lease_until IS NULL OR lease_until < ?)",
                (self.run_id, time.time()),
            )

    def stopped(self) -> str | None:
        row = (
            self._db().execute("SELECT reason FROM stops WHERE run = ?", (self.run_id,)).fetchone()
        )
        return str(row[0]) if row else None

    def delete(self) -> None:
        with self._tx() as db:
            for table in ("entries", "chunks", "dead", "stops"):
                db.execute(f"DELETE FROM {table} WHERE run = ?", (self.run_id,))

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

"""Redis Streams backend: one stream and one consumer group per run.

Every state change that touches more than one key is a Lua script, so it is atomic: enqueue
(entries and the chunk marker), ack (ack, delete, case counter), handback (ack the claimed
entry and add the remainder), dead-letter and stop. A lease is the entry's idle time in the
group's pending list: renewing resets it (``XCLAIM ... JUSTID``), and ``XAUTOCLAIM`` hands
entries idle longer than the lease to the next claimer, raising their delivery count.
Acked entries are deleted, so ``XLEN`` is waiting plus in flight.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from proctor.queue.base import DeadLetter, Lease, QueueDepth, QueueError, Range
from proctor.redact import redact_text, redact_url

GROUP = "workers"

_OWNED = """
local function owned(stream, group, id, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
"""

_ENQUEUE = """
-- KEYS: stream, chunks, cases  ARGV: chunk, start1, end1, start2, end2, ...
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
local cases = 0
local n = 0
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 's', ARGV[i], 'e', ARGV[i + 1], 'p', '0')
  cases = cases + tonumber(ARGV[i + 1]) - tonumber(ARGV[i])
  n = n + 1
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('INCRBY', KEYS[3], cases)
return n
"""

_CLAIM = """
-- KEYS: stream, stop  ARGV: group, consumer, min_idle_ms, count
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local n = tonumber(ARGV[4])
local out = {}
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', n)
for _, e in ipairs(claimed[2]) do
  if e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    table.insert(out, {e[1], e[2], p[1][4]})
  end
end
if #out < n then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n - #out,
                       'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do table.insert(out, {e[1], e[2], 1}) end
  end
end
return out
"""

_RENEW = (
    _OWNED
    + """
-- KEYS: stream  ARGV: group, consumer, id
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""
)

_HANDBACK = (
    _OWNED
    + """
-- KEYS: stream, cases, stop, dead  ARGV: group, consumer, id, cases, dead_json, prior, s1, e1, ...
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('DECRBY', KEYS[2], ARGV[4])
if ARGV[5] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[5]) end
if redis.call('EXISTS', KEYS[3]) == 0 then
  local cases = 0
  for i = 7, #ARGV, 2 do
    redis.call('XADD', KEYS[1], '*', 's', ARGV[i], 'e', ARGV[i + 1], 'p', ARGV[6])
    cases = cases + tonumber(ARGV[i + 1]) - tonumber(ARGV[i])
  end
  redis.call('INCRBY', KEYS[2], cases)
end
return 1
"""
)

_STOP = """
-- KEYS: stop, stream, cases  ARGV: group, reason
redis.call('SET', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local last = '0-0'
local groups = redis.call('XINFO', 'GROUPS', KEYS[2])
for _, g in ipairs(groups) do
  for i = 1, #g, 2 do
    if g[i] == 'name' and g[i + 1] ~= ARGV[1] then break end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
end
local removed = 0
while true do
  local batch = redis.call('XRANGE', KEYS[2], '(' .. last, '+', 'COUNT', 1000)
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    local f = e[2]
    local s, en = 0, 0
    for i = 1, #f, 2 do
      if f[i] == 's' then s = tonumber(f[i + 1]) elseif f[i] == 'e' then en = tonumber(f[i + 1]) end
    end
    redis.call('XDEL', KEYS[2], e[1])
    redis.call('DECRBY', KEYS[3], en - s)
    removed = removed + 1
    last = e[1]
  end
end
return removed
"""


def _fields(raw: Sequence[Any]) -> dict[str, str]:
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
    return dict(zip(items[::2], items[1::2], strict=True))


def _holders(pending: Any) -> frozenset[str]:
    """Consumers with pending entries, from the summary form of ``XPENDING``."""
    consumers = (pending or {}).get("consumers") or []
    names = (c["name"] for c in consumers if int(c.get("pending") or 0) > 0)
    return frozenset(n.decode() if isinstance(n, bytes) else str(n) for n in names)


class RedisQueue:
    """A run's queue in Redis Streams. Keys share the hash tag ``{run_id}`` (Cluster-safe)."""

    def __init__(
        self, client: redis.Redis, run_id: str, *, lease_seconds: float, prefix: str = "proctor"
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.lease_seconds = lease_seconds
        base = f"{prefix}:{{{run_id}}}"
        self.stream = f"{base}:stream"
        self.chunks_key = f"{base}:chunks"
        self.cases_key = f"{base}:cases"
        self.stop_key = f"{base}:stop"
        self.dead_key = f"{base}:dead"
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._handback = client.register_script(_HANDBACK)
        self._stop = client.register_script(_STOP)
        self._ensure_group()

    @classmethod
    def from_url(cls, url: str, run_id: str, *, lease_seconds: float) -> RedisQueue:
        try:
            client = redis.Redis.from_url(url, socket_timeout=30, health_check_interval=30)
            client.ping()
        except (redis.RedisError, ValueError) as exc:
            raise QueueError(
                f"cannot reach Redis at {redact_url(url)}: {redact_text(str(exc))}; "
                "check the queue URL and that Redis runs"
            ) from exc
        return cls(client, run_id, lease_seconds=lease_seconds)

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def enqueue(self, ranges: Sequence[Range], *, chunk: str) -> int:
        args: list[int | str] = [chunk]
        for r in ranges:
            args += [r.start, r.end]
        return int(self._enqueue(keys=[self.stream, self.chunks_key, self.cases_key], args=args))

    def claim(self, count: int, consumer: str) -> list[Lease]:
        min_idle = max(1, int(self.lease_seconds * 1000))
        rows = self._claim(
            keys=[self.stream, self.stop_key], args=[GROUP, consumer, min_idle, count]
        )
        leases = []
        for entry_id, raw, deliveries in cast(list[Any], rows):
            f = _fields(raw)
            prior = int(f.get("p", "0"))
            token = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            leases.append(
                Lease(Range(int(f["s"]), int(f["e"])), token, prior + int(deliveries), prior)
            )
        return leases

    def renew(self, lease: Lease, consumer: str) -> bool:
        return bool(self._renew(keys=[self.stream], args=[GROUP, consumer, lease.token]))

    def _finish(
        self, lease: Lease, consumer: str, remainder: Iterable[Range], prior: int, dead: str
    ) -> bool:
        args: list[int | str] = [GROUP, consumer, lease.token, len(lease.range), dead, prior]
        for r in remainder:
            args += [r.start, r.end]
        keys = [self.stream, self.cases_key, self.stop_key, self.dead_key]
        return bool(self._handback(keys=keys, args=args))

    def ack(self, lease: Lease, consumer: str) -> bool:
        return self._finish(lease, consumer, (), 0, "")

    def handback(
        self, lease: Lease, consumer: str, remainder: Iterable[Range], *, prior: int = 0
    ) -> bool:
        return self._finish(lease, consumer, remainder, prior, "")

    def dead_letter(
        self,
        lease: Lease,
        consumer: str,
        reason: str,
        *,
        dead: Range | None = None,
        remainder: Iterable[Range] = (),
    ) -> bool:
        r = dead or lease.range
        record = json.dumps(
            {"start": r.start, "end": r.end, "deliveries": lease.delivery, "reason": reason}
        )
        return self._finish(lease, consumer, remainder, 0, record)

    def dead_letters(self) -> list[DeadLetter]:
        out = []
        for raw in cast(list[bytes], self.client.lrange(self.dead_key, 0, -1)):
            d = json.loads(raw)
            out.append(DeadLetter(Range(d["start"], d["end"]), d["deliveries"], d["reason"]))
        return out

    def depth(self) -> QueueDepth:
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.xpending(self.stream, GROUP)
        pipe.get(self.cases_key)
        pipe.get(self.stop_key)
        length, pending, cases, stop = pipe.execute()
        in_flight = int(pending["pending"]) if pending else 0
        return QueueDepth(
            waiting=max(0, int(length) - in_flight),
            in_flight=in_flight,
            cases=int(cases or 0),
            stopped=stop.decode() if stop else None,
            holders=_holders(pending),
        )

    def lease_holders(self) -> frozenset[str] | None:
        return _holders(self.client.xpending(self.stream, GROUP))

    def stop(self, reason: str) -> None:
        self._stop(keys=[self.stop_key, self.stream, self.cases_key], args=[GROUP, reason])

    def stopped(self) -> str | None:
        value = self.client.get(self.stop_key)
        return cast(bytes, value).decode() if value else None

    def delete(self) -> None:
        self.client.delete(
            self.stream, self.chunks_key, self.cases_key, self.stop_key, self.dead_key
        )

    def close(self) -> None:
        self.client.close()

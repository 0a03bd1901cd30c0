"""SQS backend: a FIFO queue per run, the visibility timeout as the lease.

FIFO for its deduplication: a restarted enqueuer re-sending a chunk within SQS's five-minute
window adds nothing; the chunk counter kept in a queue tag covers restarts after that. Every
message has its own message group, so FIFO ordering never holds work back. Handback sends the
remainder and then deletes the claimed message: a crash between the two makes both visible
again, and the results keys (a range's object is created once) keep that from recording a case
twice. Dead letters go to a second FIFO queue, ``<name>-dead.fifo``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from proctor import aws
from proctor.queue.base import DeadLetter, Lease, QueueDepth, QueueError, Range

_ENQUEUED_TAG = "proctor-enqueued-chunks"
_STOP_TAG = "proctor-stopped"


def queue_name(run_id: str, suffix: str = "") -> str:
    """``proctor-<run_id>[-suffix].fifo``, within SQS's 80 characters and alphabet."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", run_id)
    room = 80 - len("proctor-") - len(suffix) - len(".fifo")
    if len(safe) > room:
        # Keep names distinct when cut (an attempt suffix is at the end): a digest of the whole.
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
        safe = f"{safe[: room - 11]}-{digest}"
    return f"proctor-{safe}{suffix}.fifo"


def _body(r: Range, prior: int) -> str:
    return json.dumps({"s": r.start, "e": r.end, "p": prior}, separators=(",", ":"))


class SqsQueue:
    """A run's queue in SQS."""

    def __init__(
        self,
        run_id: str,
        *,
        lease_seconds: float,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.run_id = run_id
        self.lease_seconds = lease_seconds
        self._visibility = max(1, math.ceil(lease_seconds))
        self.client = client or aws.client(
            "sqs", endpoint_url=endpoint_url, region=region or "us-east-1", max_attempts=10
        )
        self._stop_cache: tuple[float, str | None] = (0.0, None)
        self._lock = threading.Lock()
        try:
            self.url = self._create(queue_name(run_id))
            self.dead_url = self._create(queue_name(run_id, "-dead"))
        except (ClientError, BotoCoreError) as exc:
            raise QueueError(
                f"cannot create or open the SQS queue for run {run_id}: {exc}; check the "
                "endpoint, region and credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            ) from exc

    def _create(self, name: str) -> str:
        attributes = {
            "FifoQueue": "true",
            "VisibilityTimeout": str(self._visibility),
            "MessageRetentionPeriod": "1209600",
        }
        url: str = self.client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        return url

    def _tags(self) -> dict[str, str]:
        tags: dict[str, str] = self.client.list_queue_tags(QueueUrl=self.url).get("Tags", {})
        return tags

    def _send(self, url: str, bodies: Sequence[tuple[str, str, str]]) -> None:
        """Send (body, group, dedup) triples, ten per call, retrying partial failures."""
        for i in range(0, len(bodies), 10):
            entries = [
                {"Id": str(n), "MessageBody": b, "MessageGroupId": g, "MessageDeduplicationId": d}
                for n, (b, g, d) in enumerate(bodies[i : i + 10])
            ]
            for attempt in range(8):
                reply = self.client.send_message_batch(QueueUrl=url, Entries=entries)
                failed = {f["Id"] for f in reply.get("Failed", [])}
                if not failed:
                    break
                entries = [e for e in entries if e["Id"] in failed]
                time.sleep(min(2.0, 0.05 * 2**attempt))
            else:
                raise QueueError(f"SQS refused {len(entries)} messages after 8 attempts")

    def enqueue(self, ranges: Sequence[Range], *, chunk: str) -> int:
        if not chunk.isdigit():
            raise ValueError("SQS chunks are numbered 0, 1, 2, ... in order")
        done = int(self._tags().get(_ENQUEUED_TAG, "0"))
        if int(chunk) < done:
            return 0
        self._send(self.url, [(_body(r, 0), f"{r.start}", f"e-{r.start}-{r.end}") for r in ranges])
        self.client.tag_queue(QueueUrl=self.url, Tags={_ENQUEUED_TAG: str(int(chunk) + 1)})
        return len(ranges)

    def claim(self, count: int, consumer: str) -> list[Lease]:
        if self.stopped():
            return []
        reply = self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(count, 10)),
            VisibilityTimeout=self._visibility,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        leases = []
        for message in reply.get("Messages", []):
            d = json.loads(message["Body"])
            received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            leases.append(
                Lease(Range(d["s"], d["e"]), message["ReceiptHandle"], d["p"] + received, d["p"])
            )
        return leases

    def renew(self, lease: Lease, consumer: str) -> bool:
        try:
            self.client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=lease.token, VisibilityTimeout=self._visibility
            )
        except ClientError:
            return False
        return True

    def ack(self, lease: Lease, consumer: str) -> bool:
        try:
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=lease.token)
        except ClientError:
            # A stop purges the queue, in-flight messages included: nothing is left to ack.
            return self.stopped() is not None
        return True

    def handback(
        self, lease: Lease, consumer: str, remainder: Iterable[Range], *, prior: int = 0
    ) -> bool:
        if not self.stopped():
            # The dedup id is tied to this lease, so a retried call adds nothing twice while a
            # later handback of the same range (another lease) is still delivered.
            tag = hashlib.sha256(lease.token.encode()).hexdigest()[:32]
            self._send(
                self.url,
                [(_body(r, prior), f"{r.start}", f"h-{r.start}-{r.end}-{tag}") for r in remainder],
            )
        return self.ack(lease, consumer)

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
        body = json.dumps({"s": r.start, "e": r.end, "d": lease.delivery, "r": reason})
        self._send(self.dead_url, [(body, "dead", f"d-{r.start}-{r.end}")])
        return self.handback(lease, consumer, remainder)

    def dead_letters(self) -> list[DeadLetter]:
        """Peek at the dead-letter queue (messages stay; visibility timeout 0)."""
        seen: dict[str, DeadLetter] = {}
        for _ in range(100):
            reply = self.client.receive_message(
                QueueUrl=self.dead_url, MaxNumberOfMessages=10, VisibilityTimeout=0
            )
            messages = reply.get("Messages", [])
            fresh = [m for m in messages if m["MessageId"] not in seen]
            if not fresh:
                break
            for m in fresh:
                d = json.loads(m["Body"])
                seen[m["MessageId"]] = DeadLetter(Range(d["s"], d["e"]), d["d"], d["r"])
        return sorted(seen.values(), key=lambda x: x.range.start)

    def depth(self) -> QueueDepth:
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return QueueDepth(
            waiting=int(attrs.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            cases=None,
            stopped=self.stopped(),
        )

    def lease_holders(self) -> frozenset[str] | None:
        # A received message carries no record of who received it: SQS cannot tell.
        return None

    def stop(self, reason: str) -> None:
        self.client.tag_queue(QueueUrl=self.url, Tags={_STOP_TAG: reason[:256]})
        with self._lock:
            self._stop_cache = (time.monotonic(), reason[:256])
        try:
            self.client.purge_queue(QueueUrl=self.url)
        except ClientError as exc:
            # One purge per minute; a second stop finds the queue purged or purging.
            if "PurgeQueueInProgress" not in str(exc):
                raise

    def stopped(self) -> str | None:
        # Tags cost a request; a stop is acted on within two seconds, which is soon enough.
        with self._lock:
            at, value = self._stop_cache
            if value is not None or time.monotonic() - at < 2.0:
                return value
        value = self._tags().get(_STOP_TAG)
        with self._lock:
            self._stop_cache = (time.monotonic(), value)
        return value

    def delete(self) -> None:
        for url in (self.url, self.dead_url):
            try:
                self.client.delete_queue(QueueUrl=url)
            except ClientError as exc:
                if "NonExistentQueue" not in str(exc):
                    raise

    def close(self) -> None:
        self.client.close()

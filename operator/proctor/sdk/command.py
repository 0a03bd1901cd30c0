"""Command tasks: a task in any language, one long-lived process speaking JSON lines."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import subprocess
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proctor.sdk.cases import DatasetRow, RowSource
from proctor.sdk.deadline import timeout_enabled
from proctor.sdk.records import (
    ErrorType,
    Record,
    bounded,
    case_record,
    describe_error,
    side_record,
    with_output,
)
from proctor.sdk.runner import LoadedTask
from proctor.sdk.state import stop_requested

Request = tuple[int, int]
"""(case index, role)."""


class _Resent:
    """What ``_exchange`` returns when the requests in flight went again to a fresh command."""


_RESENT = _Resent()


class _Exited(Exception):  # noqa: N818 - internal control flow
    def __init__(self, message: str, error_type: ErrorType = "crashed") -> None:
        super().__init__(message)
        self.error_type: ErrorType = error_type


class _Channel:
    """A running command: JSON lines in on stdin, JSON lines out on stdout."""

    MAX_LINE = 16 * 1024 * 1024

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(env),
            bufsize=0,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._fd = self.proc.stdout.fileno()
        self._buf = bytearray()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = self._stdin.write(view)
                view = view[written or 0 :]
        except BrokenPipeError:
            # The command died: the answers it wrote before are still to be read, and the read
            # that finds its end tells how it died.
            pass

    def read_line(self, deadline: float | None) -> bytes | None:
        """The next line, or None at the deadline; raises _Exited when the command ended."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.MAX_LINE:
                raise _Exited(f"a result line longer than {self.MAX_LINE} bytes", "badOutput")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                try:
                    code = self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    raise _Exited("the command closed its stdout") from None
                raise _Exited(f"the command exited with code {code}")
            self._buf += chunk

    def close(self, grace: float) -> None:
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class CommandTask(LoadedTask):
    """A task in any language: one long-lived process speaking JSON lines.

    Each case goes to the command as ``{"index", "seed", "role", "implementation"}`` (once per
    side when comparing), with ``"case"`` (the row) and ``"id"`` in a run over a dataset, and
    comes back as ``{"index", "passed", "violations", "output"}``, or with ``"error"`` when the
    case errored. A row that cannot be read is not sent: its case errors (``badInput``). Up to
    ``WINDOW`` requests are in flight, so the pipe round trip is paid once per window, not per
    case. An answer that is not a valid result
    errors its case (``badOutput``) and the command goes on; a case that overruns its timeout
    (``timeout``), an exit (``crashed``) or an answer to another case than the one due (the
    stream is out of step) errors the case at the head of the line and restarts the command;
    an exit with several requests in flight charges none of them: they go again to a fresh
    command one at a time, so the exit is charged only to the request it happens alone on;
    after ``MAX_FAILED_STARTS`` such restarts with no good answer between them the rest of the
    batch errors at once.
    """

    WINDOW = 32
    MAX_FAILED_STARTS = 3

    def __init__(
        self,
        command: Sequence[str],
        seed: int,
        params: Mapping[str, Any],
        roles: Sequence[tuple[str | None, str | None]],
        *,
        rows: RowSource | None = None,
        max_output: int | None = None,
    ) -> None:
        self.command = list(command)
        self.seed = seed
        self.roles = list(roles)
        self.rows = rows
        self.max_output = max_output
        self._batch_rows: dict[int, DatasetRow] = {}
        self._env = {
            **os.environ,
            "PROCTOR_SEED": str(seed),
            "PROCTOR_TASK_PARAMS": json.dumps(dict(params), separators=(",", ":")),
        }
        self._channel: _Channel | None = None

    @property
    def sides(self) -> int:
        """See :attr:`LoadedTask.sides`."""
        return len(self.roles)

    def _request(self, index: int, role: int) -> bytes:
        name, ref = self.roles[role]
        body = {"index": index, "seed": self.seed, "role": name, "implementation": ref}
        row = self._batch_rows.get(index)
        if row is not None:
            body["case"], body["id"] = row.case, row.id
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    def _open(self) -> _Channel:
        if self._channel is None:
            self._channel = _Channel(self.command, self._env)
        return self._channel

    def _restart(self) -> None:
        if self._channel is not None:
            self._channel.proc.kill()
            self._channel.close(grace=5.0)
            self._channel = None

    def evaluate_batch(self, start: int, end: int, case_timeout: float) -> Iterator[Record]:
        """See :meth:`LoadedTask.evaluate_batch`."""
        if start < 0 or end < start:
            raise ValueError(f"bad batch range [{start}, {end})")
        rows = self._load_rows(start, end)
        answers = self._answers([i for i in range(start, end) if i not in rows], case_timeout)
        case_t0 = time.perf_counter()
        try:
            for index in range(start, end):
                bad = rows.get(index)
                if bad is not None:
                    sides = [self._kept(side_record([], bad.error, "badInput"), None)] * len(
                        self.roles
                    )
                else:
                    sides = [side for _, side in itertools.islice(answers, len(self.roles))]
                    if len(sides) < len(self.roles):
                        return
                row = self._batch_rows.get(index) or bad
                identity = row.identity() if row is not None else None
                yield case_record(index, sides, (time.perf_counter() - case_t0) * 1000.0, identity)
                case_t0 = time.perf_counter()
                if stop_requested():
                    return
        finally:
            answers.close()
            self._batch_rows = {}

    def _load_rows(self, start: int, end: int) -> dict[int, DatasetRow]:
        """Read the batch's rows (kept for the requests); the unreadable ones by index."""
        self._batch_rows = {}
        if self.rows is None:
            return {}
        bad = {}
        for row in self.rows.rows(start, end):
            if row.error is not None:
                bad[row.index] = row
            else:
                self._batch_rows[row.index] = row
        return bad

    def identity(self, index: int) -> dict[str, Any]:
        """See :meth:`LoadedTask.identity`."""
        if self.rows is None:
            return {}
        return next(iter(self.rows.rows(index, index + 1))).identity()

    def evaluate_side(
        self, start: int, end: int, role: int, case_timeout: float
    ) -> Iterator[Record]:
        """See :meth:`LoadedTask.evaluate_side`: a command of its own for that side alone."""
        alone = CommandTask(
            self.command,
            self.seed,
            {},
            [self.roles[role]],
            rows=self.rows,
            max_output=self.max_output,
        )
        alone._env = self._env
        try:
            bad = alone._load_rows(start, end)
            answers = alone._answers([i for i in range(start, end) if i not in bad], case_timeout)
            try:
                for index in range(start, end):
                    got = bad.get(index)
                    if got is not None:
                        side = alone._kept(side_record([], got.error, "badInput"), None)
                    else:
                        answer = next(answers, None)
                        if answer is None:
                            return
                        side = answer[1]
                    yield {"index": index, **side}
                    if stop_requested():
                        return
            finally:
                answers.close()
        finally:
            alone.close()

    def _kept(self, side: Record, output: Any) -> Record:
        return with_output(side, output, self.max_output)

    def _answers(
        self, indices: Sequence[int], case_timeout: float
    ) -> Generator[tuple[Request, Record], None, None]:
        flow = _Flow(
            ((i, r) for i in indices for r in range(len(self.roles))),
            case_timeout if timeout_enabled(case_timeout) else None,
        )
        try:
            while True:
                step = (
                    self._give_up(flow)
                    if flow.failures >= self.MAX_FAILED_STARTS
                    else self._exchange(flow, case_timeout)
                )
                if step is None:
                    return
                if step is not _RESENT:
                    assert isinstance(step, tuple)
                    yield step
        finally:
            if flow.sent:
                # Abandoned mid-window (stop, or the consumer went away): answers for cases
                # nobody will read would desynchronise the next batch.
                self._restart()

    def _give_up(self, flow: _Flow) -> tuple[Request, Record] | None:
        req = flow.sent.popleft() if flow.sent else flow.next_request()
        if req is None:
            return None
        error = bounded(f"the command keeps failing: {flow.last_error}")
        return req, self._kept(side_record([], error, flow.last_type), None)

    def _exchange(
        self, flow: _Flow, case_timeout: float
    ) -> tuple[Request, Record] | _Resent | None:
        """Send what the window allows, read the head's answer: (request, its side)."""
        answer: dict[str, Any] | None = None
        error: str | None = None
        error_type: ErrorType | None = None
        resync = False
        try:
            channel = self._open()
            self._fill(channel, flow)
            if not flow.sent:
                return None
            deadline = None if flow.timeout is None else flow.head_since + flow.timeout
            line = channel.read_line(deadline)
            if line is None:
                error = f"case timed out after {case_timeout:g}s; the command was restarted"
                error_type, resync = "timeout", True
            else:
                answer, error, error_type, resync = _parse_answer(line, flow.sent[0][0])
        except (_Exited, OSError) as exc:
            if isinstance(exc, _Exited) and exc.error_type == "crashed" and len(flow.sent) > 1:
                return self._resend_alone(flow)
            error = str(exc) if isinstance(exc, _Exited) else describe_error(exc)
            error_type = exc.error_type if isinstance(exc, _Exited) else "crashed"
            resync = True
            if not flow.sent:
                # The command could not even start: charge the next request.
                nxt = flow.next_request()
                if nxt is None:
                    return None
                flow.sent.append(nxt)
        req = flow.sent.popleft()
        flow.head_since = time.monotonic()
        flow.alone = max(0, flow.alone - 1)
        if resync:
            # Timeout, exit or a stream out of step: the rest of the window is lost with the
            # process and goes again to a fresh one.
            self._restart()
            flow.retry.extendleft(reversed(flow.sent))
            flow.sent.clear()
            flow.failures += 1
            flow.last_error, flow.last_type = error or "", error_type or "crashed"
        elif error is None:
            flow.failures = 0
        if answer is not None and error is None:
            return req, self._kept(_answer_side(answer), answer.get("output"))
        return req, self._kept(side_record([], error or "no answer", error_type), None)

    def _resend_alone(self, flow: _Flow) -> _Resent:
        """The command died with several requests in flight: which one killed it is unknown
        (it may have been working on any), so none is charged; they go again, one at a time."""
        self._restart()
        flow.alone = len(flow.sent)
        flow.retry.extendleft(reversed(flow.sent))
        flow.sent.clear()
        return _RESENT

    def _fill(self, channel: _Channel, flow: _Flow) -> None:
        batch = bytearray()
        while len(flow.sent) < (1 if flow.alone else self.WINDOW):
            nxt = flow.next_request()
            if nxt is None:
                break
            batch += self._request(*nxt)
            if not flow.sent:
                flow.head_since = time.monotonic()
            flow.sent.append(nxt)
        if batch:
            channel.send(bytes(batch))

    def close(self) -> None:
        """End the command: close its stdin, wait briefly, then kill it."""
        if self._channel is not None:
            self._channel.close(grace=5.0)
            self._channel = None


@dataclass
class _Flow:
    """Requests of one batch: not sent yet, to send again after a restart, awaiting answers."""

    fresh: Iterator[Request]
    timeout: float | None
    retry: deque[Request] = field(default_factory=deque)
    sent: deque[Request] = field(default_factory=deque)
    failures: int = 0
    alone: int = 0
    """How many of the next requests go one at a time (after an exit with several in flight)."""
    last_error: str = ""
    last_type: ErrorType = "crashed"
    head_since: float = field(default_factory=time.monotonic)

    def next_request(self) -> Request | None:
        return self.retry.popleft() if self.retry else next(self.fresh, None)


def _parse_answer(
    line: bytes, index: int
) -> tuple[dict[str, Any] | None, str | None, ErrorType | None, bool]:
    """(answer, error, errorType, out of step) for a line read where ``index``'s answer is due.

    Not JSON, or JSON without a valid result: an error of that case (``badOutput``) on a stream
    still in step. An object answering another case: the stream is out of step (restart).
    """
    try:
        answer = json.loads(line)
    except ValueError:
        return (
            None,
            f"the command wrote a line that is not JSON: {line[:200]!r}",
            "badOutput",
            False,
        )
    if not isinstance(answer, dict):
        why = f"the command wrote {line[:200]!r}, not a JSON object, where case {index}'s was due"
        return None, why, "badOutput", False
    if answer.get("index") != index:
        why = f"the command answered {line[:200]!r} where case {index}'s result was due"
        return None, why, "badOutput", True
    if answer.get("error"):
        return answer, bounded(str(answer["error"])), "exception", False
    violations = answer.get("violations", [])
    if not isinstance(answer.get("passed"), bool) or not isinstance(violations, list):
        why = f"case {index}: a result needs a boolean 'passed' and a list 'violations'"
        return answer, why, "badOutput", False
    return answer, None, None, False


def _answer_side(answer: Mapping[str, Any]) -> Record:
    violations = [str(v) for v in answer.get("violations", [])]
    # A command saying passed with violations listed is taken at its violations.
    if not answer["passed"] and not violations:
        violations = ["failed"]
    return side_record(violations, None)

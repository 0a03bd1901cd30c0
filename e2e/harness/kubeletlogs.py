"""The kubelet's log endpoint for the pods the pod runner runs, so that ``pods/log`` (kubectl
logs, ``proctor logs``) works through the API server as on a real cluster.

The API server answers ``GET /api/v1/namespaces/NS/pods/NAME/log`` by asking the pod's node's
kubelet (``https://<node InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>``) for
``/containerLogs/NS/NAME/CONTAINER`` with the ``PodLogOptions`` it was given (``follow``,
``tailLines``, ``sinceSeconds``, ``sinceTime``, ``timestamps``, ``previous``). kwok's nodes
advertise this server's port (kwok ``--node-port``) and 127.0.0.1; the API server does not
verify a kubelet's certificate unless given ``--kubelet-certificate-authority``, so a serving
certificate of the test CA is enough.

Logs are kept as a container runtime keeps them (:class:`Recorder`): the process's stdout and
stderr are pipes, read as they arrive; each line goes, with the time it arrived, into its
container instance's log (``<pod dir>/containers/<N>.log``, N counting restarts from 0, in the
CRI format ``TIME STREAM F|P TEXT``: both streams interleaved as written), and its bytes also
to ``stdout.log``/``stderr.log`` (what ``podrunner.read_log`` reads). The server answers as the
kubelet does: the current instance's log (``previous``: the one before it, else 400 ``previous
terminated container ... not found``; none started yet: 400 ``... is waiting to start``), its
last ``tailLines`` lines, then those at or after ``sinceSeconds`` ago or ``sinceTime``, each
led by its time with ``timestamps``; ``follow`` goes on until that instance has ended and its
log is read to the end.
"""

from __future__ import annotations

import calendar
import http.server
import os
import re
import shutil
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO

PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)$")
POLL_SECONDS = 0.2
INSTANCES = "containers"
"""The folder, in a pod's folder, of its container instances' logs (``<N>.log``)."""
CHUNK = 64 * 1024
MAX_LINE = 16 * 1024
"""The longest entry; a longer line is split into partial (``P``) entries, as containerd does."""


def rfc3339_nano(ns: int) -> str:
    """A time as the kubelet prints it with ``timestamps``: UTC, nine fraction digits."""
    seconds, fraction = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (``Z`` or an offset, any fraction)."""
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})", text.upper()
    )
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, fraction, zone = match.groups()
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 10**9 + int(((fraction or "") + "000000000")[:9])


def split_entries(data: bytes) -> tuple[list[tuple[bytes, bool]], bytes]:
    """The log entries in ``data`` (text, whether it ends a line), and what is left for the
    next read: a line longer than :data:`MAX_LINE` goes out in parts, as a runtime splits it
    (pure)."""
    *lines, rest = data.split(b"\n")
    entries: list[tuple[bytes, bool]] = []
    for line in lines:
        parts = [line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE)] or [b""]
        entries += [(part, False) for part in parts[:-1]] + [(parts[-1], True)]
    whole = len(rest) - len(rest) % MAX_LINE
    entries += [(rest[i : i + MAX_LINE], False) for i in range(0, whole, MAX_LINE)]
    return entries, rest[whole:]


def instance_log(folder: Path, instance: int) -> Path:
    return folder / INSTANCES / f"{instance}.log"


def instances(folder: Path) -> list[int]:
    """The container instances of a pod with a log, oldest first."""
    try:
        names = os.listdir(folder / INSTANCES)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())


class Recorder:
    """One container instance's stdout and stderr, copied from their pipes as they arrive."""

    def __init__(self, folder: Path, instance: int, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        if instance == 0:  # a new pod: what an earlier pod of its name logged is not its own
            shutil.rmtree(folder / INSTANCES, ignore_errors=True)
        (folder / INSTANCES).mkdir(parents=True, exist_ok=True)
        self.path = instance_log(folder, instance)
        self.log = self.path.open("ab")
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(
                target=self._copy, args=(pipe, name, folder / f"{name}.log"), daemon=True,
                name=f"log-{folder.name}-{instance}-{name}",
            )
            for pipe, name in ((stdout, "stdout"), (stderr, "stderr"))
        ]  # fmt: skip
        self.open = len(self.threads)
        for thread in self.threads:
            thread.start()

    def _copy(self, pipe: IO[bytes], stream: str, raw: Path) -> None:
        pending = b""
        with raw.open("ab") as out:
            while chunk := os.read(pipe.fileno(), CHUNK):
                out.write(chunk)
                out.flush()
                entries, pending = split_entries(pending + chunk)
                self._write(stream, entries)
            if pending:
                self._write(stream, [(pending, False)])
        pipe.close()
        with self.lock:
            self.open -= 1
            if self.open == 0:
                self.log.close()
                self.path.with_suffix(".done").touch()

    def _write(self, stream: str, lines: list[tuple[bytes, bool]]) -> None:
        if not lines:
            return
        with self.lock:  # times in the order of the lines
            head = f"{rfc3339_nano(time.time_ns())} {stream} ".encode()
            self.log.write(
                b"".join(head + (b"F " if full else b"P ") + line + b"\n" for line, full in lines)
            )
            self.log.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Wait for both streams to end (the process and what it started have exited)."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class LogServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        port: int,
        cert: Path,
        key: Path,
        pod_dir: Callable[[str, str], Path],
        running: Callable[[str, str], bool],
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.pod_dir = pod_dir
        self.running = running

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="kubelet-logs", daemon=True)
        thread.start()
        return thread


class Query:
    """The kubelet's query parameters (``PodLogOptions``), as the API server sends them."""

    def __init__(self, query: str, now_ns: int) -> None:
        q = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        self.follow = q.get("follow") == "true"
        self.previous = q.get("previous") == "true"
        self.timestamps = q.get("timestamps") == "true"
        self.tail = int(q["tailLines"]) if "tailLines" in q else None
        self.since: int | None = None
        if "sinceSeconds" in q:
            self.since = now_ns - int(q["sinceSeconds"]) * 10**9
        elif "sinceTime" in q:
            self.since = parse_time(q["sinceTime"])

    def tailed(self, entries: list[bytes]) -> list[bytes]:
        """The last ``tailLines`` entries; the kubelet takes them before ``since`` (pure)."""
        if self.tail is None:
            return entries
        return entries[-self.tail :] if self.tail > 0 else []

    def render(self, entries: list[bytes]) -> bytes:
        """The entries (CRI lines) this query shows, as the kubelet writes them (pure)."""
        out = []
        for entry in entries:
            stamp, _stream, tag, text = entry.rstrip(b"\n").split(b" ", 3)
            if self.since is not None and parse_time(stamp.decode()) < self.since:
                continue
            line = text + (b"\n" if tag == b"F" else b"")
            out.append(stamp + b" " + line if self.timestamps else line)
        return b"".join(out)


def pick(folder: Path, container: str, pod: str, previous: bool) -> int | str:
    """The instance a query reads, or the kubelet's error when there is none (pure but for
    listing the folder)."""
    numbers = instances(folder)
    if previous:
        if len(numbers) < 2:
            return f'previous terminated container "{container}" in pod "{pod}" not found'
        return numbers[-2]
    if not numbers:
        return f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating'
    return numbers[-1]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: LogServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        match = PATH.match(url.path)
        if match is None:
            self.send_error(404, "only /containerLogs is served")
            return
        namespace, name, container = (urllib.parse.unquote(p) for p in match.groups())
        try:
            query = Query(url.query, time.time_ns())
        except ValueError as exc:
            self._plain(400, str(exc))
            return
        folder = self.server.pod_dir(namespace, name)
        if not folder.exists():
            self.send_error(404, f"pod {namespace}/{name} is not run by the pod runner")
            return
        chosen = pick(folder, container, name, query.previous)
        if isinstance(chosen, str):
            self._plain(400, chosen)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        try:
            self._serve(folder, chosen, query, (namespace, name))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return

    def _serve(self, folder: Path, instance: int, query: Query, pod: tuple[str, str]) -> None:
        path = instance_log(folder, instance)
        entries, offset = _complete_lines(path, 0)
        self.wfile.write(query.render(query.tailed(entries)))
        self.wfile.flush()
        while query.follow:
            ended = _ended(folder, instance) or not self.server.running(*pod)
            grown, offset = _complete_lines(path, offset)
            if grown:
                self.wfile.write(query.render(grown))
                self.wfile.flush()
            if ended:
                return
            time.sleep(POLL_SECONDS)

    def _plain(self, code: int, message: str) -> None:
        """An error as the kubelet writes it: the message as plain text."""
        body = message.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _ended(folder: Path, instance: int) -> bool:
    """The instance's streams have closed, or a later instance has started (its recorder was
    lost with a runner that restarted)."""
    if instance_log(folder, instance).with_suffix(".done").exists():
        return True
    return any(n > instance for n in instances(folder))


def _complete_lines(path: Path, start: int) -> tuple[list[bytes], int]:
    """The whole lines of ``path`` from byte ``start``, and the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return [], start
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(keepends=True), start + end

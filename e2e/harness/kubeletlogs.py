"""The kubelet's log endpoint for the pods the pod runner runs, so that ``pods/log`` (kubectl
logs, ``proctor logs``) works through the API server as on a real cluster.

The API server answers ``GET /api/v1/namespaces/NS/pods/NAME/log`` by asking the pod's node's
kubelet (``https://<node InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>``) for
``/containerLogs/NS/NAME/CONTAINER?follow=&tailLines=``. kwok's nodes advertise this server's
port (kwok ``--node-port``) and 127.0.0.1; the API server does not verify a kubelet's
certificate unless given ``--kubelet-certificate-authority``, so a serving certificate of the
test CA is enough.

A container's log is its process's stderr then stdout (the pod runner keeps them in two files;
a kubelet interleaves them in one, which this cannot rebuild). ``follow`` goes on until the
pod's process has exited and its files are read to the end.
"""

from __future__ import annotations

import http.server
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)$")
POLL_SECONDS = 0.2


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


def tail(data: bytes, lines: int | None) -> bytes:
    """The last ``lines`` lines of ``data`` (all when None)."""
    if lines is None:
        return data
    if lines <= 0:
        return b""
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept)


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
        namespace, name, _container = (urllib.parse.unquote(p) for p in match.groups())
        query = urllib.parse.parse_qs(url.query)
        follow = query.get("follow", ["false"])[0] == "true"
        lines = int(query["tailLines"][0]) if "tailLines" in query else None
        folder = self.server.pod_dir(namespace, name)
        files = [folder / "stderr.log", folder / "stdout.log"]
        if not folder.exists():
            self.send_error(404, f"pod {namespace}/{name} is not run by the pod runner")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        offsets = [_size(f) for f in files]
        start = b"".join(_read(f, 0, end) for f, end in zip(files, offsets, strict=True))
        try:
            self.wfile.write(tail(start, lines))
            self.wfile.flush()
            while follow:
                running = self.server.running(namespace, name)
                for i, f in enumerate(files):
                    grown = _read(f, offsets[i], None)
                    offsets[i] += len(grown)
                    if grown:
                        self.wfile.write(grown)
                        self.wfile.flush()
                if not running:
                    return
                time.sleep(POLL_SECONDS)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read(path: Path, start: int, end: int | None) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(start)
            return f.read() if end is None else f.read(max(0, end - start))
    except FileNotFoundError:
        return b""

"""Lifecycle of the local control plane: `up`, `down`, `env`.

`up` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
the kwok controller and the pod runner on 127.0.0.1 with free ports, all
detached from the caller, and records their PIDs and ports in a state file
so that `down` (possibly from another process) stops exactly those PIDs.
The state directory is ``$PROCTOR_CLUSTER_DIR`` or
``~/.cache/proctor/cluster``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from e2e.harness import kubeconfig, pki
from e2e.harness.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "e2e" / "build-control-plane"
KWOK_CONFIG = Path(__file__).with_name("kwok.yaml")
STATE_FILE = "state.json"
SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"

# Stop order: consumers of the API first, etcd last.
STOP_ORDER = [
    "podrunner",
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
]


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached."""


def default_state_dir() -> Path:
    env = os.environ.get("PROCTOR_CLUSTER_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "proctor" / "cluster"


@dataclass
class Process:
    pid: int
    argv0: str
    log: str


@dataclass
class ClusterState:
    dir: str
    server: str
    kubeconfig: str
    ca: str
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    up_seconds: float = 0.0

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def save(self) -> None:
        tmp = self.path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        raw["processes"] = {k: Process(**v) for k, v in raw.get("processes", {}).items()}
        return cls(**raw)


# --- processes -------------------------------------------------------------


def _alive(proc: Process) -> bool:
    """True if `proc.pid` is still the process we started (not a reused PID)."""
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # A zombie is dead; reap it if it is our child.
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        _reap(proc.pid)
        return False
    return bool(cmdline) and cmdline[0].decode(errors="replace") == proc.argv0


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _stop(proc: Process, timeout: float = 15.0) -> None:
    if not _alive(proc):
        return
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not _alive(proc):
            return
        time.sleep(0.1)
    if _alive(proc):
        os.kill(proc.pid, signal.SIGKILL)
        for _ in range(50):
            _reap(proc.pid)
            if not _alive(proc):
                return
            time.sleep(0.1)


def _spawn(
    state: ClusterState, name: str, argv: list[str], env: dict[str, str] | None = None
) -> None:
    log = state.path / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # A new session detaches the component from the caller's terminal and
        # process group, so it outlives `e2e/cluster up` and a Ctrl-C there.
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=state.dir,
            env=env,
            start_new_session=True,
        )
    state.processes[name] = Process(pid=popen.pid, argv0=argv[0], log=str(log))
    # Record each PID as soon as it exists: a failed `up` is still cleaned up by `down`.
    state.save()


# --- readiness ---------------------------------------------------------------


def _get(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def _insecure() -> ssl.SSLContext:
    # Controller-manager and scheduler serve /healthz with self-signed certs.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _client_context(state: ClusterState) -> ssl.SSLContext:
    pki_dir = state.path / "pki"
    ctx = ssl.create_default_context(cafile=state.ca)
    ctx.load_cert_chain(pki_dir / "admin.crt", pki_dir / "admin.key")
    return ctx


def _wait(
    state: ClusterState, what: str, check: Callable[[], bool], timeout: float, owner: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        proc = state.processes.get(owner)
        if proc is not None and not _alive(proc):
            raise ClusterError(f"{owner} exited while waiting for {what}; see {proc.log}")
        time.sleep(0.2)
    log = state.processes[owner].log if owner in state.processes else "?"
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; see {log}")


# --- build ---------------------------------------------------------------------


def build() -> None:
    """Build the binaries, or reuse the cache (a fast no-op)."""
    subprocess.run([str(BUILD_SCRIPT)], check=True)


def bin_dirs() -> list[Path]:
    out = subprocess.run(
        [str(BUILD_SCRIPT), "--print-bin-dirs"], check=True, capture_output=True, text=True
    ).stdout
    return [Path(line) for line in out.splitlines() if line]


def binary(name: str) -> Path:
    for directory in bin_dirs():
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ClusterError(f"{name} is not built; run e2e/build-control-plane")


def _version(path: Path) -> str:
    out = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return (out.stdout or out.stderr).strip().splitlines()[0]


# --- up / down -------------------------------------------------------------------


def status(directory: Path | None = None) -> ClusterState | None:
    """The running cluster's state, or None when none is fully running there."""
    directory = directory or default_state_dir()
    state = ClusterState.load(directory)
    if state is None:
        return None
    if set(state.processes) != set(STOP_ORDER) or not all(
        _alive(p) for p in state.processes.values()
    ):
        return None
    code, _ = _get(state.server + "/readyz", _client_context(state))
    return state if code == 200 else None


def up(
    directory: Path | None = None, *, do_build: bool = True, timeout: float = 120.0
) -> ClusterState:
    """Start the control plane (or return the one already running there)."""
    directory = directory or default_state_dir()
    running = status(directory)
    if running is not None:
        return running
    # A half-started or crashed cluster: stop its leftovers first.
    down(directory)
    if do_build:
        build()
    started = time.monotonic()
    # Start clean: a failed `up` leaves logs (and etcd data) behind for reading.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        state = _start(directory, timeout)
    except BaseException:
        down(directory, keep_logs=True)
        raise
    state.up_seconds = round(time.monotonic() - started, 1)
    state.save()
    return state


def _start(directory: Path, timeout: float) -> ClusterState:
    bins = {
        name: binary(name)
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
    }
    ports = {
        name: free_port()
        for name in (
            "etcd",
            "etcd-peer",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kubelet",
        )
    }
    server = f"https://127.0.0.1:{ports['kube-apiserver']}"
    pki_dir = directory / "pki"
    ca = pki.Authority(pki_dir)
    state = ClusterState(
        dir=str(directory),
        server=server,
        kubeconfig=str(directory / "kubeconfig"),
        ca=str(ca.cert_path),
        ports=ports,
    )
    state.save()

    serving = ca.issue(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        ips=["127.0.0.1", "10.96.0.1"],
    )
    # The pod runner's kubelet log endpoint (kubeletlogs.py), which kwok's nodes advertise.
    kubelet = ca.issue(
        "kubelet", "kubelet", server=True, dns_names=["localhost"], ips=["127.0.0.1"]
    )
    sa = pki.service_account_keys(pki_dir)
    # The aggregation layer's front-proxy CA: without it, the controller-manager
    # and scheduler retry reading requestheader-client-ca-file forever.
    front_proxy = pki.Authority(pki_dir / "front-proxy")
    proxy_client = front_proxy.issue("front-proxy-client", "front-proxy-client")
    kubeconfigs: dict[str, Path] = {}
    for name, user, groups in [
        ("admin", "proctor-e2e-admin", ["system:masters"]),
        ("kube-controller-manager", "system:kube-controller-manager", []),
        ("kube-scheduler", "system:kube-scheduler", []),
        ("kwok", "kwok-controller", ["system:masters"]),
        ("podrunner", "proctor-e2e-podrunner", ["system:masters"]),
    ]:
        pair = ca.issue(name, user, groups)
        path = directory / "kubeconfig" if name == "admin" else directory / f"{name}.kubeconfig"
        kubeconfigs[name] = kubeconfig.write_cert_kubeconfig(
            path, server, ca.cert_path, pair.cert, pair.key
        )

    state.versions = {name: _version(path) for name, path in bins.items()}

    data = directory / "etcd-data"
    _spawn(
        state,
        "etcd",
        [
            str(bins["etcd"]),
            f"--data-dir={data}",
            "--name=proctor-e2e",
            f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-cluster=proctor-e2e=http://127.0.0.1:{ports['etcd-peer']}",
            # Test data is disposable: trade durability for speed.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ],
    )
    _wait(
        state,
        "etcd /health",
        lambda: '"health":"true"' in _get(f"http://127.0.0.1:{ports['etcd']}/health")[1],
        timeout,
        "etcd",
    )

    _spawn(
        state,
        "kube-apiserver",
        [
            str(bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--cert-dir={pki_dir}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert_path}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The loopback address may not be an Endpoints address; nothing
            # in-cluster dials the `kubernetes` Service here anyway.
            "--endpoint-reconciler-type=none",
            f"--requestheader-client-ca-file={front_proxy.cert_path}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={proxy_client.cert}",
            f"--proxy-client-key-file={proxy_client.key}",
            "--allow-privileged=true",
            # PROCTOR_E2E_PROFILING=1 serves /debug/pprof (benchmarks' --apiserver-profile).
            f"--profiling={'true' if os.environ.get('PROCTOR_E2E_PROFILING') == '1' else 'false'}",
        ],
    )
    admin_ctx = _client_context(state)
    _wait(
        state,
        "kube-apiserver /readyz",
        lambda: _get(server + "/readyz", admin_ctx)[0] == 200,
        timeout,
        "kube-apiserver",
    )

    kcm_cfg = kubeconfigs["kube-controller-manager"]
    _spawn(
        state,
        "kube-controller-manager",
        [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={kcm_cfg}",
            f"--authentication-kubeconfig={kcm_cfg}",
            f"--authorization-kubeconfig={kcm_cfg}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kube-controller-manager']}",
            f"--cert-dir={pki_dir / 'kube-controller-manager'}",
            f"--root-ca-file={ca.cert_path}",
            f"--service-account-private-key-file={sa.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Each controller uses its own ServiceAccount, so the bootstrap
            # RBAC roles are exercised as in a real cluster.
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    sched_cfg = kubeconfigs["kube-scheduler"]
    _spawn(
        state,
        "kube-scheduler",
        [
            str(bins["kube-scheduler"]),
            f"--kubeconfig={sched_cfg}",
            f"--authentication-kubeconfig={sched_cfg}",
            f"--authorization-kubeconfig={sched_cfg}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kube-scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    _spawn(
        state,
        "kwok",
        [
            str(bins["kwok"]),
            f"--kubeconfig={kubeconfigs['kwok']}",
            f"--config={KWOK_CONFIG}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-ip=127.0.0.1",
            f"--node-port={ports['kubelet']}",
            "--node-lease-duration-seconds=40",
        ],
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    _spawn(
        state,
        "podrunner",
        [
            sys.executable,
            "-m",
            "e2e.harness.podrunner",
            f"--kubeconfig={kubeconfigs['podrunner']}",
            f"--state-dir={directory}",
            f"--kubelet-port={ports['kubelet']}",
            f"--kubelet-cert={kubelet.cert}",
            f"--kubelet-key={kubelet.key}",
        ],
        env=env,
    )

    insecure = _insecure()
    for name in ("kube-controller-manager", "kube-scheduler"):
        url = f"https://127.0.0.1:{ports[name]}/healthz"

        def healthy(url: str = url) -> bool:
            return _get(url, insecure)[0] == 200

        _wait(state, f"{name} /healthz", healthy, timeout, name)
    kwok_url = f"http://127.0.0.1:{ports['kwok']}/healthz"
    _wait(state, "kwok /healthz", lambda: _get(kwok_url)[0] == 200, timeout, "kwok")
    # Controllers are really working once the ServiceAccount controller has
    # made `default` in `default` and the root CA publisher its ConfigMap.
    sa_url = server + "/api/v1/namespaces/default/serviceaccounts/default"
    cm_url = server + "/api/v1/namespaces/default/configmaps/kube-root-ca.crt"
    _wait(
        state,
        "controllers (default ServiceAccount, kube-root-ca.crt)",
        lambda: _get(sa_url, admin_ctx)[0] == 200 and _get(cm_url, admin_ctx)[0] == 200,
        timeout,
        "kube-controller-manager",
    )
    ready = directory / "podrunner.ready"
    _wait(state, "pod runner", ready.exists, timeout, "podrunner")
    return state


def down(directory: Path | None = None, *, keep_logs: bool = False) -> bool:
    """Stop the processes recorded in the state file and remove the state.

    Returns True if a state file was found. With keep_logs, the state
    directory is left in place (for a failed `up`, to read why).
    """
    directory = directory or default_state_dir()
    state = ClusterState.load(directory)
    if state is None:
        return False
    names = [n for n in STOP_ORDER if n in state.processes]
    names += [n for n in state.processes if n not in names]
    for name in names:
        _stop(state.processes[name])
    if keep_logs:
        (directory / STATE_FILE).unlink(missing_ok=True)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return True


def env_lines(state: ClusterState) -> str:
    return f"export KUBECONFIG={state.kubeconfig}\n"


# --- command line ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e2e/cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="state directory")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build if needed, start, wait until ready")
    p_up.add_argument("--no-build", action="store_true", help="fail instead of building")
    p_up.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("down", help="stop the started processes and remove the state")
    sub.add_parser("env", help="print `export KUBECONFIG=...`")
    sub.add_parser("status", help="print the state file of a running cluster")
    args = parser.parse_args(argv)
    directory = args.dir.resolve() if args.dir else default_state_dir()

    if args.command == "up":
        before = time.monotonic()
        try:
            state = up(directory, do_build=not args.no_build, timeout=args.timeout)
        except ClusterError as err:
            print(f"e2e/cluster up failed: {err}", file=sys.stderr)
            return 1
        for name, version in state.versions.items():
            print(f"  {name}: {version}", file=sys.stderr)
        print(
            f"cluster up in {time.monotonic() - before:.1f}s: {state.server} (state {state.dir})",
            file=sys.stderr,
        )
        print(env_lines(state), end="")
        return 0
    if args.command == "down":
        found = down(directory)
        print("cluster stopped" if found else f"no cluster state in {directory}", file=sys.stderr)
        return 0
    state_or_none = ClusterState.load(directory)
    if state_or_none is None:
        print(f"no cluster state in {directory}; run e2e/cluster up", file=sys.stderr)
        return 1
    if args.command == "env":
        print(env_lines(state_or_none), end="")
        return 0
    running = status(directory) is not None
    print(json.dumps({"running": running, **asdict(state_or_none)}, indent=2))
    return 0 if running else 1


if __name__ == "__main__":
    sys.exit(main())

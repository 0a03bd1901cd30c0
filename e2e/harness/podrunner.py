"""Runs marked pods on kwok nodes as local processes.

kwok makes pods look Running but runs nothing. For every pod bound to a kwok
node and labelled ``e2e.proctor.dev/run=local``, this runner plays the
kubelet's part with a local process instead of a container:

- runs the main (first) container's ``command + args`` in a per-pod work
  dir, with PATH led by this interpreter's bin dir (so ``python`` and
  ``proctor`` are the project's), and the pod's env (literal values, Secret,
  ConfigMap and field refs, envFrom, ``$(VAR)`` expansion);
- gives the process its ServiceAccount identity: a TokenRequest token bound
  to the pod, in a generated kubeconfig (``KUBECONFIG``), so RBAC applies;
- writes Running, restarts per ``restartPolicy`` with backoff, and writes the
  exit (phase, exit code, reason) into the pod status;
- on deletion sends SIGTERM, SIGKILL after the grace period, writes the exit,
  then removes the pod (delete with grace 0), as the kubelet does.

kwok's stages (kwok.yaml) exclude marked pods, so the two never fight over
them. Output goes to ``<state>/pods/<namespace>_<name>/{stdout,stderr}.log``
(``read_log`` reads it) and, line by line with the time it arrived, to the container
instance's log the kubelet endpoint serves (kubeletlogs.py).

A pod labelled ``e2e.proctor.dev/run=image-<key>`` runs inside the rootfs of
that e2e/build-image build instead (image mode, imagepod.py and sandbox.py):
the image's env, user and working directory, a read-only root, its
emptyDir/configMap/secret volumes and its ServiceAccount token mounted where
a kubelet mounts them; nothing from the host's Python or env.

If the runner restarts, it kills processes its predecessor left (by the PID
files it wrote) and treats them as exited with 137, like a node reboot; the
restart policy then decides what happens.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from e2e.harness import imagepod, kubeletlogs
from e2e.harness.image import Image, ImageError, image_for_label
from e2e.harness.kubeconfig import write_token_kubeconfig

MARKER = "e2e.proctor.dev/run"
MARKER_VALUE = "local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
POD_IP = "127.0.0.1"
MAX_BACKOFF = 10.0  # the kubelet's 5 minutes would only slow tests down
TOKEN_SECONDS = 3600

log = logging.getLogger("podrunner")

Pod = dict[str, Any]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_state_dir() -> Path:
    # Same default as cluster.py, without importing it (keeps this module light).
    env = os.environ.get("PROCTOR_CLUSTER_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "proctor" / "cluster"


def pod_dir(namespace: str, name: str, state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / "pods" / f"{namespace}_{name}"


def read_log(
    namespace: str, name: str, stream: str = "stdout", state_dir: Path | None = None
) -> str:
    """What a pod's process has written so far to stdout (or stderr)."""
    try:
        return (pod_dir(namespace, name, state_dir) / f"{stream}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


class ConfigError(Exception):
    """The pod's env cannot be resolved yet (missing Secret/ConfigMap/key)."""


_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: known vars expand, $$ escapes, others stay."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(repl, value)


def _field_ref(pod: Pod, path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = (meta.get(path.split(".")[1]) or {}).items()
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items))
    raise ConfigError(f"fieldRef {path} is not supported by the pod runner")


@dataclass
class Local:
    """The local process standing in for one pod's main container."""

    uid: str
    namespace: str
    name: str
    workdir: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restart_count: int = 0
    next_start: float = 0.0
    term_sent: bool = False
    kill_deadline: float = 0.0
    last_exit: dict[str, Any] | None = None  # a containerStatus `terminated` block
    final: bool = False  # terminal status written
    config_error: str = ""
    recorder: kubeletlogs.Recorder | None = None  # its stdout and stderr, as they arrive
    delete_sent: float = 0.0  # monotonic time of our last final delete

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Runner:
    def __init__(self, api: client.CoreV1Api, state_dir: Path, server: str, ca: Path) -> None:
        self.api = api
        self.state_dir = state_dir
        self.server = server
        self.ca = ca
        self.pods: dict[str, Pod] = {}
        self.locals: dict[str, Local] = {}
        self.kwok_nodes: dict[str, bool] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.synced = threading.Event()

    def running(self, namespace: str, name: str) -> bool:
        """Whether the pod's process runs now (or will be restarted): its log may grow."""
        with self.lock:
            found = [
                loc
                for loc in self.locals.values()
                if (loc.namespace, loc.name) == (namespace, name)
            ]
        return any(loc.running() or not loc.final for loc in found)

    # --- watching ---------------------------------------------------------

    def watch_pods(self) -> None:
        """List+watch marked pods into self.pods until stopping."""
        selector = MARKER  # "local" and "image-<key>"
        while not self.stopping.is_set():
            try:
                listed = self.api.list_pod_for_all_namespaces(
                    label_selector=selector, _preload_content=False
                )
                body = json.loads(listed.data)
                with self.lock:
                    self.pods = {p["metadata"]["uid"]: p for p in body["items"]}
                self.synced.set()
                rv = body["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.api.list_pod_for_all_namespaces,
                    label_selector=selector,
                    resource_version=rv,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    if self.stopping.is_set():
                        return
                    obj = event["raw_object"]
                    kind = event["type"]
                    if kind == "ERROR":
                        break  # usually 410 Gone: re-list
                    if kind == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    with self.lock:
                        if kind == "DELETED":
                            self.pods.pop(uid, None)
                        else:
                            self.pods[uid] = obj
            except Exception as err:
                log.warning("pod watch failed, re-listing: %s", err)
                time.sleep(1)

    def is_kwok_node(self, name: str) -> bool:
        if name not in self.kwok_nodes:
            try:
                node = self.api.read_node(name)
            except ApiException:
                return False
            annotations = node.metadata.annotations or {}
            self.kwok_nodes[name] = KWOK_NODE_ANNOTATION in annotations
        return self.kwok_nodes[name]

    # --- reconciling ------------------------------------------------------

    def loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                pods = dict(self.pods)
            for uid in set(pods) | set(self.locals):
                try:
                    self.reconcile(uid, pods.get(uid))
                except Exception:
                    log.exception("reconciling pod %s failed", uid)
            time.sleep(0.1)

    def reconcile(self, uid: str, pod: Pod | None) -> None:
        local = self.locals.get(uid)
        if pod is None:
            # Gone from the API (force-deleted, or our own final delete).
            if local is not None:
                if local.running():
                    self._terminate(local, grace=2)
                    return
                self._cleanup(local)
                del self.locals[uid]
            return
        node = pod["spec"].get("nodeName")
        if not node or not self.is_kwok_node(node):
            return
        meta = pod["metadata"]
        deleting = meta.get("deletionTimestamp") is not None
        phase = (pod.get("status") or {}).get("phase")
        if local is None:
            local = Local(
                uid=uid,
                namespace=meta["namespace"],
                name=meta["name"],
                workdir=pod_dir(meta["namespace"], meta["name"], self.state_dir) / "work",
            )
            self.locals[uid] = local
            if phase in ("Succeeded", "Failed"):
                local.final = True
            else:
                self._adopt_leftover(local, pod)

        if local.popen is not None and local.popen.poll() is not None:
            self._on_exit(local, pod, deleting)

        if deleting:
            if local.running():
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                self._terminate(local, grace=float(grace))
                return
            if not local.final:
                self._write_final(local, pod)
            self._finalize_delete(local)
            return

        if local.running() or local.final:
            return
        if time.monotonic() >= local.next_start:
            self._start(local, pod)

    def _adopt_leftover(self, local: Local, pod: Pod) -> None:
        """Kill a process a previous runner left for this pod, and count it as lost."""
        pid_file = local.workdir.parent / "pid"
        try:
            pid = int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            pid = 0
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        was_running = bool(statuses and "running" in (statuses[0].get("state") or {}))
        # Only a process still running in this pod's work dir is ours (PIDs get reused).
        cwd = self._cwd(pid) if pid > 0 else None
        if cwd is not None and cwd.is_relative_to(local.workdir.parent):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            pid_file.unlink(missing_ok=True)
        if was_running:
            local.restart_count = int(statuses[0].get("restartCount", 0))
            local.started_at = statuses[0]["state"]["running"].get("startedAt", now_iso())
            local.last_exit = self._terminated(137, "Error", "runner restarted; process lost")
            local.popen = None
            self._after_exit(
                local, pod, deleting=pod["metadata"].get("deletionTimestamp") is not None
            )

    @staticmethod
    def _cwd(pid: int) -> Path | None:
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return None

    # --- process lifecycle ------------------------------------------------

    def _start(self, local: Local, pod: Pod) -> None:
        container = pod["spec"]["containers"][0]
        try:
            env = self._resolve_env(pod, container)
            image = image_for_label(pod["metadata"]["labels"][MARKER])
            token = self._service_account_token(pod)
            if image is None:
                argv, base = self._host_process(local, pod, container, env, token)
            else:
                argv, base = self._image_process(image, pod, container, env, token)
        except (ConfigError, ApiException, ImageError, imagepod.VolumeError) as err:
            message = str(err)
            if isinstance(err, ApiException):
                message = f"ServiceAccount token request failed: {err.status} {err.reason}"
            if message != local.config_error:
                local.config_error = message
                self._write_waiting(local, pod, "CreateContainerConfigError", message)
            local.next_start = time.monotonic() + 1.0
            return
        local.config_error = ""
        if not argv:
            local.last_exit = self._terminated(
                128, "StartError", "pod runner needs an explicit command"
            )
            self._write_final(local, pod)
            return
        directory = local.workdir.parent
        local.workdir.mkdir(parents=True, exist_ok=True)
        local.term_sent = False
        local.started_at = now_iso()
        try:
            # Own process group: SIGKILL at the end reaches the whole tree,
            # as tearing down a container's cgroup would.
            local.popen = subprocess.Popen(
                argv,
                cwd=local.workdir,
                env=base,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            local.popen = None
            local.last_exit = self._terminated(127, "StartError", f"{argv[0]}: {err}")
            self._after_exit(local, pod, deleting=False)
            return
        assert local.popen.stdout is not None
        assert local.popen.stderr is not None
        # Instance N of the container (N restarts before it), as the kubelet counts them.
        local.recorder = kubeletlogs.Recorder(
            directory, local.restart_count, local.popen.stdout, local.popen.stderr
        )
        (directory / "pid").write_text(str(local.popen.pid))
        log.info("started %s/%s pid %d: %s", local.namespace, local.name, local.popen.pid, argv)
        self._write_running(local, pod)

    def _host_process(
        self, local: Local, pod: Pod, container: dict[str, Any], env: dict[str, str], token: str
    ) -> tuple[list[str], dict[str, str]]:
        """argv and env of a process run with the host's Python, as the pod's ServiceAccount."""
        meta = pod["metadata"]
        path = pod_dir(meta["namespace"], meta["name"], self.state_dir) / "kubeconfig"
        kubeconfig = write_token_kubeconfig(
            path, self.server, self.ca, token, namespace=meta["namespace"]
        )
        # There is no image to take an entrypoint from: no command, no argv.
        argv = [
            expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])
        ]
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("KUBERNETES_") and k not in ("KUBECONFIG", "PROCTOR_CLUSTER_DIR")
        }
        bindir = os.path.dirname(sys.executable)
        base["PATH"] = os.pathsep.join([bindir, base.get("PATH", "")])
        base["HOSTNAME"] = local.name
        base["KUBECONFIG"] = str(kubeconfig)
        base.update(env)
        return (argv if container.get("command") else []), base

    def _image_process(
        self, image: Image, pod: Pod, container: dict[str, Any], env: dict[str, str], token: str
    ) -> tuple[list[str], dict[str, str]]:
        """argv and env of the sandbox that runs the container inside ``image``'s rootfs."""
        meta = pod["metadata"]
        directory = pod_dir(meta["namespace"], meta["name"], self.state_dir)
        url = urllib.parse.urlsplit(self.server)
        api = imagepod.ApiAccess(url.hostname or POD_IP, url.port or 443, token)
        sources = imagepod.Sources(self._config_map, self._secret)
        spec = imagepod.sandbox_spec(
            image,
            pod,
            env,
            [expand(a, env) for a in container.get("command") or []],
            [expand(a, env) for a in container.get("args") or []],
            directory,
            api,
            sources,
        )
        spec_path = directory / "sandbox.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)  # the env holds the pod's Secrets
        # -I: the sandbox's own Python ignores PYTHON* variables and the user site.
        return [sys.executable, "-I", str(imagepod.SANDBOX), str(spec_path)], {}

    def _terminate(self, local: Local, grace: float) -> None:
        assert local.popen is not None
        if not local.term_sent:
            local.term_sent = True
            local.kill_deadline = time.monotonic() + grace
            log.info("SIGTERM %s/%s (grace %.0fs)", local.namespace, local.name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(local.popen.pid, signal.SIGTERM)
        elif time.monotonic() >= local.kill_deadline:
            log.info("SIGKILL %s/%s after grace period", local.namespace, local.name)
            self._kill_group(local)

    def _kill_group(self, local: Local) -> None:
        if local.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(local.popen.pid, signal.SIGKILL)

    def _close_outputs(self, local: Local) -> None:
        if local.recorder is not None:
            local.recorder.close()
        local.recorder = None

    def _on_exit(self, local: Local, pod: Pod, deleting: bool) -> None:
        assert local.popen is not None
        code = local.popen.returncode
        # A signal shows as 128 + signo, as in a container.
        exit_code = 128 - code if code < 0 else code
        self._kill_group(local)  # leftovers of the tree
        self._close_outputs(local)
        (local.workdir.parent / "pid").unlink(missing_ok=True)
        log.info("%s/%s exited with %d", local.namespace, local.name, exit_code)
        local.last_exit = self._terminated(
            exit_code, "Completed" if exit_code == 0 else "Error", ""
        )
        local.last_exit["startedAt"] = local.started_at
        local.popen = None
        self._after_exit(local, pod, deleting)

    def _after_exit(self, local: Local, pod: Pod, deleting: bool) -> None:
        assert local.last_exit is not None
        if deleting:
            return  # reconcile writes the final status and removes the pod
        policy = pod["spec"].get("restartPolicy", "Always")
        code = local.last_exit["exitCode"]
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            self._write_final(local, pod)
            return
        local.restart_count += 1
        backoff = min(MAX_BACKOFF, 2.0 ** (local.restart_count - 1))
        local.next_start = time.monotonic() + backoff
        self._write_waiting(
            local,
            pod,
            "CrashLoopBackOff",
            f"back-off {backoff:.0f}s restarting failed container",
        )

    def _finalize_delete(self, local: Local) -> None:
        # The watch's DELETED event ends this; until then, retry only now and then.
        if time.monotonic() - local.delete_sent < 2.0:
            return
        local.delete_sent = time.monotonic()
        try:
            self.api.delete_namespaced_pod(
                local.name,
                local.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=local.uid)
                ),
            )
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def _cleanup(self, local: Local) -> None:
        self._close_outputs(local)
        # Logs stay for the test to read; the work dir and token do not.
        shutil.rmtree(local.workdir, ignore_errors=True)
        directory = local.workdir.parent
        for name in ("overlay", "volumes", "etc"):  # image mode's
            shutil.rmtree(directory / name, ignore_errors=True)
        for name in ("kubeconfig", "sandbox.json"):
            (directory / name).unlink(missing_ok=True)

    def shutdown(self) -> None:
        """Stop every process: SIGTERM, then SIGKILL after 5 s."""
        running = [loc for loc in self.locals.values() if loc.running()]
        for loc in running:
            assert loc.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(loc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(loc.running() for loc in running):
            time.sleep(0.1)
        for loc in running:
            self._kill_group(loc)

    # --- env and identity -------------------------------------------------

    def _resolve_env(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_map(ns, ref["name"], ref.get("optional", False))
            else:
                ref = source["secretRef"]
                data = self._secret(ns, ref["name"], ref.get("optional", False))
            for key, value in data.items():
                env[prefix + key] = value
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                is_secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if is_secret else "configMapKeyRef"]
                optional = bool(ref.get("optional", False))
                fetch = self._secret if is_secret else self._config_map
                data = fetch(ns, ref["name"], optional)
                if ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not optional:
                    raise ConfigError(f"key {ref['key']} not found in {ref['name']}")
            elif "fieldRef" in source:
                env[name] = _field_ref(pod, source["fieldRef"]["fieldPath"])
            else:
                raise ConfigError(
                    f"env {name}: only value, secret, configMap and field refs are supported"
                )
        return env

    def _config_map(self, ns: str, name: str, optional: bool) -> dict[str, str]:
        try:
            return dict(self.api.read_namespaced_config_map(name, ns).data or {})
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            raise ConfigError(f'configmap "{name}" not found') from err

    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, str]:
        try:
            data = self.api.read_namespaced_secret(name, ns).data or {}
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            raise ConfigError(f'secret "{name}" not found') from err
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def _service_account_token(self, pod: Pod) -> str:
        """A TokenRequest token for the pod's ServiceAccount, bound to the pod."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=TOKEN_SECONDS,
                # Bound to the pod: the token dies with it, as a projected one does.
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
                ),
            )
        )
        token = self.api.create_namespaced_service_account_token(sa, meta["namespace"], request)
        return str(token.status.token)

    # --- status -----------------------------------------------------------

    @staticmethod
    def _terminated(code: int, reason: str, message: str) -> dict[str, Any]:
        block: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": now_iso(),
            "finishedAt": now_iso(),
        }
        if message:
            block["message"] = message
        return block

    def _container_status(
        self, local: Local, pod: Pod, state: dict[str, Any], ready: bool
    ) -> dict[str, Any]:
        container = pod["spec"]["containers"][0]
        status: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": local.restart_count,
            "state": state,
        }
        if local.popen is not None:
            status["containerID"] = f"local://{local.popen.pid}"
        if local.last_exit is not None and "terminated" not in state:
            status["lastState"] = {"terminated": local.last_exit}
        return status

    def _write_running(self, local: Local, pod: Pod) -> None:
        state = {"running": {"startedAt": local.started_at}}
        self._patch_status(local, "Running", True, state, pod)

    def _write_waiting(self, local: Local, pod: Pod, reason: str, message: str) -> None:
        state = {"waiting": {"reason": reason, "message": message}}
        phase = "Running" if local.restart_count else "Pending"
        self._patch_status(local, phase, False, state, pod)

    def _write_final(self, local: Local, pod: Pod) -> None:
        exit_block = local.last_exit or self._terminated(137, "Error", "process was not running")
        phase = "Succeeded" if exit_block["exitCode"] == 0 else "Failed"
        self._patch_status(local, phase, False, {"terminated": exit_block}, pod)
        local.final = True

    def _patch_status(
        self, local: Local, phase: str, ready: bool, state: dict[str, Any], pod: Pod
    ) -> None:
        """Merge-patch the pod status, keeping others' conditions; retry on conflict."""
        for _ in range(10):
            try:
                current = self.api.read_namespaced_pod_status(
                    local.name, local.namespace, _preload_content=False
                )
            except ApiException as err:
                if err.status == 404:
                    return
                raise
            live = json.loads(current.data)
            if live["metadata"]["uid"] != local.uid:
                return
            status = live.get("status") or {}
            now = now_iso()
            wanted = {
                "PodReadyToStartContainers": "True",
                "Initialized": "True",
                "ContainersReady": "True" if ready else "False",
                "Ready": "True" if ready else "False",
            }
            conditions = [c for c in status.get("conditions") or [] if c["type"] not in wanted]
            old = {c["type"]: c for c in status.get("conditions") or []}
            for ctype, value in wanted.items():
                prev = old.get(ctype)
                changed = prev is None or prev.get("status") != value
                since = now if prev is None or changed else prev.get("lastTransitionTime", now)
                cond = {"type": ctype, "status": value, "lastTransitionTime": since}
                if value == "False" and phase in ("Succeeded", "Failed"):
                    cond["reason"] = "PodCompleted"
                conditions.append(cond)
            body = {
                "metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
                "status": {
                    "phase": phase,
                    "conditions": conditions,
                    "hostIP": POD_IP,
                    "hostIPs": [{"ip": POD_IP}],
                    "podIP": POD_IP,
                    "podIPs": [{"ip": POD_IP}],
                    "startTime": status.get("startTime") or now,
                    "containerStatuses": [self._container_status(local, pod, state, ready)],
                },
            }
            try:
                self.api.patch_namespaced_pod_status(
                    local.name,
                    local.namespace,
                    body,
                    _content_type="application/merge-patch+json",
                )
                return
            except ApiException as err:
                if err.status == 409:
                    continue  # someone (e.g. preemption's DisruptionTarget) wrote first
                if err.status == 404:
                    return
                raise
        log.warning("gave up writing status of %s/%s after conflicts", local.namespace, local.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run marked kwok pods as local processes.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--kubelet-port", type=int, help="serve pods' logs here (kubeletlogs.py)")
    parser.add_argument("--kubelet-cert", type=Path, help="its serving certificate")
    parser.add_argument("--kubelet-key", type=Path, help="its key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    cfg = api_client.configuration
    runner = Runner(
        client.CoreV1Api(api_client), args.state_dir, cfg.host, args.state_dir / "pki" / "ca.crt"
    )

    def on_signal(signum: int, _frame: object) -> None:
        runner.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.kubelet_port:
        kubeletlogs.LogServer(
            args.kubelet_port,
            args.kubelet_cert,
            args.kubelet_key,
            lambda ns, name: pod_dir(ns, name, args.state_dir),
            runner.running,
        ).start()
    watcher = threading.Thread(target=runner.watch_pods, name="watch", daemon=True)
    watcher.start()
    if not runner.synced.wait(timeout=60):
        log.error("could not list pods")
        return 1
    (args.state_dir / "podrunner.ready").write_text(str(os.getpid()))
    log.info("pod runner ready")
    try:
        runner.loop()
    finally:
        runner.shutdown()
        (args.state_dir / "podrunner.ready").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

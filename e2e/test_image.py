"""The image built without a container engine (e2e/build-image) against the Dockerfile, and a pod
run inside it by the pod runner's image mode: the package list equals the Dockerfile's pins, the
OCI config carries the Dockerfile's user, env, entrypoint and ports, and a pod labelled with the
image runs as uid 10001 on a read-only root with its volumes, its env and nothing of the host's,
reaches the API server as its ServiceAccount, and exits on SIGTERM with its own code."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from e2e.conftest import Cluster
from e2e.harness import nodes
from e2e.harness.image import Image
from e2e.harness.podrunner import MARKER, read_log
from e2e.harness.poll import wait_until
from e2e.test_control_plane import _watch_pod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def dockerfile_pins() -> dict[str, str]:
    body = re.search(r"^COPY <<EOF_PINS \S+\n(.*?)^EOF_PINS$", DOCKERFILE, re.M | re.S)
    assert body, "the Dockerfile's constraints heredoc"
    pins = dict(line.split("==") for line in body.group(1).split())
    return {canonicalize_name(k): v for k, v in pins.items()}


def test_image_holds_exactly_the_dockerfiles_pins_and_the_wheel(image: Image) -> None:
    installed = {canonicalize_name(k): v for k, v in image.packages().items()}
    assert installed == {**dockerfile_pins(), "proctor": VERSION}


def test_oci_config_is_the_dockerfiles(image: Image) -> None:
    config = image.config()
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["proctor"]
    assert config["Cmd"] == ["--help"]
    assert config["WorkingDir"] == "/tmp"
    assert set(config["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PATH"].startswith("/opt/proctor/bin:")
    for name, value in re.findall(r"^\s+(\w+)=(\S+?)(?: \\)?$", DOCKERFILE, re.M):
        if name in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "HOME"):
            assert env[name] == value
    labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', DOCKERFILE))
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{image.dir / 'oci'}:{VERSION}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(inspected.stdout)["Labels"] == labels
    assert image.reference() == VERSION


_PROBE = textwrap.dedent(
    """
    import json, os, signal, ssl, sys, time, urllib.error, urllib.request
    print("id", os.getuid(), os.getgid(), os.getgroups(), flush=True)
    print("python", sys.executable, sys.version_info[:2], flush=True)
    try:
        open("/probe", "w")
    except OSError as err:
        print("root", err.strerror, flush=True)
    with open("/tmp/probe", "w") as f:
        f.write("ok")
    print("tmp writable", flush=True)
    print("config", open("/etc/settings/greeting").read(), flush=True)
    host = ("PIP_", "PYTHONPATH", "KUBECONFIG", "VIRTUAL_ENV")
    print("env", sorted(k for k in os.environ if k.startswith(host)), flush=True)
    print("secret", os.environ["TOKEN"], flush=True)
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    ns = open(sa + "/namespace").read()
    url = "https://{}:{}/api/v1/namespaces/{}/pods".format(
        os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"], ns)
    token = open(sa + "/token").read()
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    try:
        urllib.request.urlopen(req, context=ssl.create_default_context(cafile=sa + "/ca.crt"))
    except urllib.error.HTTPError as err:
        print("api", err.code, json.load(err)["message"], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
    print("ready", flush=True)
    while True:
        time.sleep(0.1)
    """
)


SECRET_REF = {"name": "creds", "key": "token"}


def _probe_pod(image: Image, pool: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "probe", "labels": {MARKER: image.label}},
        "spec": {
            "nodeSelector": pool,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 20,
            "containers": [
                {
                    "name": "main",
                    "image": f"proctor/proctor:{VERSION}",
                    "command": ["python", "-c", _PROBE],
                    "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": SECRET_REF}}],
                    "volumeMounts": [
                        {"name": "settings", "mountPath": "/etc/settings"},
                        {"name": "scratch", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }


def test_pod_runs_inside_the_image_as_uid_10001_on_a_read_only_root(
    cluster: Cluster, core: Any, namespace: str, image: Image
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    node = f"kwok-image-{namespace}"
    nodes.create_node(core, node, labels=pool)
    try:
        core.create_namespaced_secret(
            namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
        )
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}
        )
        core.create_namespaced_pod(namespace, _probe_pod(image, pool))

        def log() -> str:
            return read_log(namespace, "probe", state_dir=cluster.state_dir) + read_log(
                namespace, "probe", stream="stderr", state_dir=cluster.state_dir
            )

        try:
            wait_until(lambda: "ready" in log(), 90, "the probe's output")
        except TimeoutError as exc:
            status = core.read_namespaced_pod("probe", namespace).status
            raise AssertionError(f"{exc}\n{log()}\n{status}") from exc
        out = log()
        assert "id 10001 10001 []" in out
        assert "python /opt/proctor/bin/python (3, 11)" in out
        assert "root Read-only file system" in out
        assert "tmp writable" in out
        assert "config hello" in out
        assert "env []" in out, "nothing of the host's Python env leaks in"
        assert "secret s3cr3t" in out
        # Authenticated as the pod's ServiceAccount, which may not list pods: 403, not 401.
        assert f'api 403 pods is forbidden: User "system:serviceaccount:{namespace}:default"' in out

        events, done = _watch_pod(core, namespace, "probe")
        core.delete_namespaced_pod("probe", namespace)
        assert done.wait(60), "probe was not deleted"
        final = events[-1]["object"]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert final["exitCode"] == 42, "SIGTERM reached the container's own handler"
        assert "Traceback" not in log(), log()
    finally:
        nodes.delete_node(core, node)

"""The pod runner's image mode, pure parts: Kubernetes' command/args rules against the image's
Entrypoint/Cmd, the user, the env, volumes and the ServiceAccount mount (an OCI layout written
here; no cluster, no build)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import imagepod, sandbox
from e2e.harness.image import Image, ImageError, image_for_label

CONFIG = {
    "User": "10001:10001",
    "Env": ["PATH=/opt/proctor/bin:/usr/bin", "HOME=/tmp", "PYTHONUNBUFFERED=1"],
    "Entrypoint": ["proctor"],
    "Cmd": ["--help"],
    "WorkingDir": "/tmp",
}


def _blob(oci: Path, data: dict[str, Any]) -> str:
    raw = json.dumps(data).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (oci / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (oci / "blobs" / "sha256" / digest).write_bytes(raw)
    return f"sha256:{digest}"


@pytest.fixture
def image(tmp_path: Path) -> Image:
    oci = tmp_path / "abc123" / "oci"
    config = _blob(oci, {"config": CONFIG})
    manifest = _blob(oci, {"config": {"digest": config}, "layers": []})
    ref = {"org.opencontainers.image.ref.name": "0.1.0"}
    index = {"manifests": [{"digest": manifest, "annotations": ref}]}
    (oci / "index.json").write_text(json.dumps(index))
    return Image(tmp_path / "abc123")


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ([], [], ["proctor", "--help"]),  # Entrypoint + Cmd
        ([], ["worker"], ["proctor", "worker"]),  # args replace Cmd
        (["python"], [], ["python"]),  # command replaces both
        (["python"], ["-c", "x"], ["python", "-c", "x"]),
    ],
)
def test_argv_follows_kubernetes_rules(
    image: Image, command: list[str], args: list[str], expected: list[str]
) -> None:
    assert imagepod.argv(image, command, args) == expected


@pytest.mark.parametrize(
    ("pod_context", "container_context", "expected"),
    [
        (None, None, (10001, 10001)),  # the image's User
        ({"runAsUser": 2000}, None, (2000, 10001)),
        ({"runAsUser": 2000, "runAsGroup": 3000}, {"runAsUser": 4000}, (4000, 3000)),
        (None, {"runAsUser": 0, "runAsGroup": 0}, (0, 0)),
    ],
)
def test_user_container_over_pod_over_image(
    image: Image,
    pod_context: dict[str, int] | None,
    container_context: dict[str, int] | None,
    expected: tuple[int, int],
) -> None:
    pod = {"spec": {"securityContext": pod_context}}
    assert imagepod.user(image, pod, {"securityContext": container_context}) == expected


def _pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}


def _api(_tmp_path: Path) -> imagepod.ApiAccess:
    return imagepod.ApiAccess("127.0.0.1", 6443, "tok")


def test_env_is_the_images_then_the_api_then_the_pods(image: Image, tmp_path: Path) -> None:
    env = imagepod.environment(image, _pod(), {"HOME": "/work", "A": "1"}, _api(tmp_path))
    assert env == {
        "PATH": "/opt/proctor/bin:/usr/bin",
        "HOME": "/work",
        "PYTHONUNBUFFERED": "1",
        "HOSTNAME": "p",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "A": "1",
    }


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# What the API server's ServiceAccount admission adds to every pod that automounts a token.
_CA = {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
_NS = {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
KUBE_API_ACCESS = {
    "name": "kube-api-access-x",
    "projected": {
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": _CA},
            {"downwardAPI": {"items": [_NS]}},
        ]
    },
}


def _sources() -> imagepod.Sources:
    data = {
        "cm": {"config.yaml": "a: 1", "other": "x"},
        "sec": {"password": "pw"},
        "kube-root-ca.crt": {"ca.crt": "CA"},
    }

    def read(_namespace: str, name: str, optional: bool) -> dict[str, str]:
        if name not in data:
            if optional:
                return {}
            raise LookupError(name)
        return data[name]

    return imagepod.Sources(read, read)


def test_volumes_and_the_service_account(tmp_path: Path) -> None:
    pod = _pod(
        volumes=[
            {"name": "config", "configMap": {"name": "cm", "items": [{"key": "config.yaml"}]}},
            {"name": "creds", "secret": {"secretName": "sec"}},
            {"name": "tmp", "emptyDir": {}},
            KUBE_API_ACCESS,
        ]
    )
    container = {
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/proctor"},
            {"name": "creds", "mountPath": "/creds", "readOnly": False},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "kube-api-access-x", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True},
        ]
    }
    mounts = imagepod.mounts(pod, container, tmp_path / "pod", _api(tmp_path), _sources())
    by_target = {m["target"]: m for m in mounts}
    config = Path(by_target["/etc/proctor"]["source"])
    assert [f.name for f in config.iterdir()] == ["config.yaml"]  # only the item asked for
    assert (Path(by_target["/creds"]["source"]) / "password").read_text() == "pw"
    # ConfigMaps and Secrets are read-only whatever the mount says, as a kubelet makes them.
    assert by_target["/etc/proctor"]["readOnly"]
    assert by_target["/creds"]["readOnly"]
    tmp = Path(by_target["/tmp"]["source"])
    assert not by_target["/tmp"]["readOnly"]
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o777
    sa = Path(by_target[SERVICE_ACCOUNT_DIR]["source"])
    assert {f.name: f.read_text() for f in sa.iterdir()} == {
        "token": "tok",
        "ca.crt": "CA",
        "namespace": "ns",
    }
    assert {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"} <= set(by_target)
    assert "127.0.0.1\tp" in Path(by_target["/etc/hosts"]["source"]).read_text()


@pytest.mark.parametrize(
    ("volume", "mount", "message"),
    [
        ({"name": "v", "hostPath": {"path": "/"}}, {}, r"v \(hostPath\)"),
        ({"name": "v", "emptyDir": {}}, {"subPath": "x"}, "subPath is not supported"),
        ({"name": "w", "emptyDir": {}}, {}, "no volume v"),
        ({"name": "v", "configMap": {"name": "cm", "items": [{"key": "nope"}]}}, {}, "nope"),
        (
            {"name": "v", "projected": {"sources": [{"clusterTrustBundle": {}}]}},
            {},
            "clusterTrustBundle",
        ),
    ],
)
def test_volumes_it_cannot_provide_are_refused_with_the_reason(
    tmp_path: Path, volume: dict[str, Any], mount: dict[str, Any], message: str
) -> None:
    pod = _pod(volumes=[volume])
    container = {"volumeMounts": [{"name": "v", "mountPath": "/v", **mount}]}
    with pytest.raises(imagepod.VolumeError, match=message):
        imagepod.mounts(pod, container, tmp_path / "pod", _api(tmp_path), _sources())


def test_label_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROCTOR_CACHE", str(tmp_path))
    assert image_for_label("local") is None
    with pytest.raises(ImageError, match="run e2e/build-image"):
        image_for_label("image-0123abcd")
    (tmp_path / "image" / "0123abcd").mkdir(parents=True)
    (tmp_path / "image" / "0123abcd" / "done").touch()
    found = image_for_label("image-0123abcd")
    assert found is not None
    assert found.rootfs == tmp_path / "image" / "0123abcd" / "rootfs"
    assert found.label == "image-0123abcd"
    with pytest.raises(ImageError, match="expected image-<hex key>"):
        image_for_label("image-../x")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/var/run/secrets/x", "run/secrets/x"),  # absolute link: inside the root, not the host
        ("/etc/proctor", "etc/proctor"),
        ("/lib/x", "usr/lib/x"),  # relative link
        ("/usr/../../../etc", "etc"),  # never above the root
    ],
)
def test_mount_points_resolve_symlinks_inside_the_root(
    tmp_path: Path, target: str, expected: str
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("/run")
    (tmp_path / "lib").symlink_to("usr/lib")
    assert sandbox.resolve_in(tmp_path, target) == tmp_path / expected

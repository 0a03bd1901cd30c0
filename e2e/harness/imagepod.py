"""A pod's main container as the image runs it, for the pod runner's image mode: the sandbox spec
(``sandbox.py``) with what a kubelet and a container runtime would give the container.

- the command: ``command`` replaces the image's Entrypoint, ``args`` its Cmd (Kubernetes' rules);
- the env: the image's, then ``HOSTNAME`` and ``KUBERNETES_SERVICE_HOST``/``_PORT`` (the API
  server on loopback), then the pod's; nothing from the host;
- the user: ``runAsUser``/``runAsGroup`` of the container, else of the pod, else the image's User;
- the working directory: ``workingDir``, else the image's;
- volumes: ``emptyDir`` (a directory of the pod's, writable by all), ``configMap`` and ``secret``
  (their keys, or ``items``, as files), and ``projected`` ones of those, of ``downwardAPI``
  namespace/name/uid and of ``serviceAccountToken`` (the pod's bound token): the
  ``kube-api-access-*`` volume that the API server's admission adds, so the token, ``ca.crt``
  and ``namespace`` are at ``/var/run/secrets/kubernetes.io/serviceaccount`` and the in-cluster
  login of the image's client is what runs; each mounted at its ``volumeMount``; others are
  refused;
- ``/etc/hosts`` (localhost and the pod's name), ``/etc/hostname``, ``/etc/resolv.conf``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.harness.image import Image

SANDBOX = Path(__file__).resolve().with_name("sandbox.py")

Reader = Callable[[str, str, bool], dict[str, str]]  # (namespace, name, optional) -> data


class VolumeError(Exception):
    """A volume the image mode cannot provide (yet): the message says which and why."""


@dataclass(frozen=True)
class ApiAccess:
    """What the pod gets to reach the API server as its ServiceAccount."""

    host: str
    port: int
    token: str  # a TokenRequest token bound to the pod


@dataclass(frozen=True)
class Sources:
    """Where ConfigMap and Secret volumes read their data."""

    config_map: Reader
    secret: Reader


def argv(image: Image, command: list[str], args: list[str]) -> list[str]:
    config = image.config()
    if command:
        return command + args
    return list(config.get("Entrypoint") or []) + (args or list(config.get("Cmd") or []))


def user(image: Image, pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, int]:
    image_user = str(image.config().get("User") or "0:0")
    uid_text, _, gid_text = image_user.partition(":")
    if not uid_text.isdigit() or not (gid_text or "0").isdigit():
        raise VolumeError(f"image user {image_user!r} is not numeric uid:gid")
    uid, gid = int(uid_text), int(gid_text or 0)
    contexts = [pod["spec"].get("securityContext"), container.get("securityContext")]
    for context in (c for c in contexts if c):
        uid = int(context.get("runAsUser", uid))
        gid = int(context.get("runAsGroup", gid))
    return uid, gid


def environment(
    image: Image, pod: dict[str, Any], pod_env: dict[str, str], api: ApiAccess
) -> dict[str, str]:
    env = dict(item.partition("=")[::2] for item in image.config().get("Env") or [])
    env["HOSTNAME"] = pod["metadata"]["name"]
    env["KUBERNETES_SERVICE_HOST"] = api.host
    env["KUBERNETES_SERVICE_PORT"] = str(api.port)
    env.update(pod_env)
    return env


def _write_files(directory: Path, data: dict[str, str], items: list[dict[str, Any]] | None) -> None:
    directory.mkdir(parents=True)
    chosen = {i["key"]: i.get("path", i["key"]) for i in items} if items else {k: k for k in data}
    for key, path in chosen.items():
        if key not in data:
            raise VolumeError(f"key {key} not found in the volume's source")
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[key])
        target.chmod(0o644)


def _projected(
    pod: dict[str, Any], sources: list[dict[str, Any]], token: str, read: Sources
) -> dict[str, str]:
    """path -> content of a projected volume."""
    meta = pod["metadata"]
    fields = {"metadata.namespace": meta["namespace"], "metadata.name": meta["name"]}
    fields["metadata.uid"] = meta.get("uid", "")
    files: dict[str, str] = {}
    for source in sources:
        if "serviceAccountToken" in source:
            files[source["serviceAccountToken"]["path"]] = token
        elif "configMap" in source or "secret" in source:
            kind = "configMap" if "configMap" in source else "secret"
            ref = source[kind]
            reader = read.config_map if kind == "configMap" else read.secret
            data = reader(meta["namespace"], ref["name"], bool(ref.get("optional", False)))
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            files.update({i["path"]: data[i["key"]] for i in items if i["key"] in data})
        elif "downwardAPI" in source:
            for item in source["downwardAPI"]["items"]:
                path = (item.get("fieldRef") or {}).get("fieldPath")
                if path not in fields:
                    raise VolumeError(f"projected downwardAPI {path or item}: not supported")
                files[item["path"]] = fields[path]
        else:
            raise VolumeError(f"projected source {sorted(source)}: not supported")
    return files


def volume_dir(
    pod: dict[str, Any], volume: dict[str, Any], base: Path, read: Sources, token: str
) -> Path:
    """The host directory holding ``volume``'s content for this pod (made fresh)."""
    namespace = pod["metadata"]["namespace"]
    directory: Path = base / str(volume["name"])
    if "projected" in volume:
        files = _projected(pod, volume["projected"]["sources"], token, read)
        _write_files(directory, files, None)
    elif "emptyDir" in volume:
        directory.mkdir(parents=True)
        directory.chmod(0o777)  # as the kubelet makes it: any uid may write
    elif "configMap" in volume:
        ref = volume["configMap"]
        data = read.config_map(namespace, ref["name"], bool(ref.get("optional", False)))
        _write_files(directory, data, ref.get("items"))
    elif "secret" in volume:
        ref = volume["secret"]
        data = read.secret(namespace, ref["secretName"], bool(ref.get("optional", False)))
        _write_files(directory, data, ref.get("items"))
    else:
        kinds = sorted(set(volume) - {"name"})
        raise VolumeError(
            f"volume {volume['name']} ({', '.join(kinds)}): the pod runner's image mode "
            "provides emptyDir, configMap and secret volumes"
        )
    return directory


def mounts(
    pod: dict[str, Any], container: dict[str, Any], pod_dir: Path, api: ApiAccess, read: Sources
) -> list[dict[str, Any]]:
    """The sandbox's bind mounts, their sources made fresh under ``pod_dir``."""
    for name in ("volumes", "etc"):
        shutil.rmtree(pod_dir / name, ignore_errors=True)
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    made: dict[str, Path] = {}
    out = []
    for m in container.get("volumeMounts") or []:
        if m.get("subPath") or m.get("subPathExpr"):
            raise VolumeError(f"volumeMount {m['mountPath']}: subPath is not supported")
        if m["name"] not in volumes:
            raise VolumeError(f"volumeMount {m['mountPath']}: no volume {m['name']}")
        if m["name"] not in made:
            volume = volumes[m["name"]]
            made[m["name"]] = volume_dir(pod, volume, pod_dir / "volumes", read, api.token)
        source = made[m["name"]]
        read_only = bool(m.get("readOnly")) or "emptyDir" not in volumes[m["name"]]
        out.append({"source": str(source), "target": m["mountPath"], "readOnly": read_only})
    return out + etc_files(pod, pod_dir / "etc")


def etc_files(pod: dict[str, Any], directory: Path) -> list[dict[str, Any]]:
    name = pod["metadata"]["name"]
    directory.mkdir(parents=True)
    (directory / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\t{name}\n"
    )
    (directory / "hostname").write_text(name + "\n")
    resolv = Path("/etc/resolv.conf")
    (directory / "resolv.conf").write_text(resolv.read_text() if resolv.exists() else "")
    return [
        {"source": str(directory / f), "target": f"/etc/{f}", "readOnly": True}
        for f in ("hosts", "hostname", "resolv.conf")
    ]


def sandbox_spec(  # noqa: PLR0917 - one call site, every part named there
    image: Image,
    pod: dict[str, Any],
    pod_env: dict[str, str],
    command: list[str],
    args: list[str],
    pod_dir: Path,
    api: ApiAccess,
    read: Sources,
) -> dict[str, Any]:
    """The spec ``sandbox.py`` reads, for the pod's first container."""
    container = pod["spec"]["containers"][0]
    uid, gid = user(image, pod, container)
    scratch = pod_dir / "overlay"
    shutil.rmtree(scratch, ignore_errors=True)  # a restart gets a fresh root, as in a container
    return {
        "rootfs": str(image.rootfs),
        "scratch": str(scratch),
        "mounts": mounts(pod, container, pod_dir, api, read),
        "uid": uid,
        "gid": gid,
        "workingDir": container.get("workingDir") or image.config().get("WorkingDir") or "/",
        "argv": argv(image, command, args),
        "env": environment(image, pod, pod_env, api),
    }


@dataclass(frozen=True)
class ContainerProcess:
    """A running container's process as the host sees it (for tests to check the sandbox)."""

    pid: int
    uid: int
    gid: int
    root: Path  # the host path of its root: the overlay under the pod's directory
    exe: Path
    mount_options: dict[str, set[str]]  # mount point (as the process sees it) -> options


def inspect_process(directory: Path) -> ContainerProcess:
    """The process the pod runner started for the pod whose directory is ``directory``."""
    pid = int((directory / "pid").read_text())
    proc = Path(f"/proc/{pid}")
    fields = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
    options = {}
    for line in (proc / "mountinfo").read_text().splitlines():
        parts = line.split()
        options[parts[4]] = set(parts[5].split(","))
    return ContainerProcess(
        pid=pid,
        uid=int(fields["Uid"].split()[1]),  # effective
        gid=int(fields["Gid"].split()[1]),
        root=(proc / "root").readlink(),
        exe=(proc / "exe").readlink(),
        mount_options=options,
    )

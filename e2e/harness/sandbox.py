"""Starts one pod's container inside an image's rootfs, as a container runtime would, for the pod
runner's image mode (podrunner.py). Run as ``python -I sandbox.py SPEC.json``; it uses only the
standard library and ends by exec-ing the container's command, so its PID is the container's.

In a private mount namespace it mounts an overlay of the rootfs (the upper layer only takes the
mount points), ``/proc``, a minimal ``/dev`` with ``/dev/shm``, ``/sys`` read-only, and the
spec's mounts (volumes, the ServiceAccount token, ``/etc/hosts``...); then makes the root
read-only, chroots, changes to the working directory, sets no_new_privs, drops to the spec's
uid/gid with no supplementary groups and execs the command with exactly the spec's env. The
network is the host's (loopback included), as with ``hostNetwork``. Needs root.

SPEC.json: ``rootfs``, ``scratch`` (a directory for the overlay), ``mounts``
(``[{source, target, readOnly}]``), ``uid``, ``gid``, ``workingDir``, ``argv``, ``env``.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_NO_NEW_PRIVS = 38
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
EXIT_SETUP_FAILED = 128
EXIT_EXEC_FAILED = 127  # as a shell's command not found

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    """A step of the set-up failed; the message says which."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            str(target).encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def bind(source: Path, target: Path, read_only: bool, flags: int = 0) -> None:
    mount(str(source), target, None, MS_BIND | flags)
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def resolve_in(root: Path, target: str, depth: int = 0) -> Path:
    """``target`` resolved inside ``root`` as the chrooted process will see it: symlinks on the
    way (Debian's /var/run -> /run) are followed within ``root``, never on the host."""
    if depth > 40:
        raise SandboxError(f"{target}: too many levels of symbolic links")
    path = root
    parts = [p for p in target.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if part == "..":
            path = path.parent if path != root else root
            continue
        candidate = path / part
        if candidate.is_symlink():
            link = os.readlink(candidate)
            base = "/" if link.startswith("/") else "/" + str(path.relative_to(root))
            rest = "/".join([link, *parts[i + 1 :]])
            return resolve_in(root, f"{base}/{rest}", depth + 1)
        path = candidate
    return path


def make_target(root: Path, target: str, is_dir: bool) -> Path:
    """The mount point ``target`` inside ``root`` (made in the overlay's upper layer)."""
    path = resolve_in(root, target)
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    return path


def root_filesystem(spec: dict[str, Any]) -> Path:
    """An overlay of the rootfs at ``scratch/merged``; writes land in ``scratch/upper``."""
    scratch = Path(spec["scratch"])
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={spec['rootfs']},upperdir={upper},workdir={work}"
    mount("overlay", merged, "overlay", 0, options)
    return merged


def system_mounts(root: Path) -> None:
    mount("proc", make_target(root, "/proc", True), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = make_target(root, "/dev", True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        bind(Path("/dev") / name, make_target(root, f"/dev/{name}", False), read_only=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        (dev / name).symlink_to(target)
    shm = make_target(root, "/dev/shm", True)
    mount("shm", shm, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    bind(Path("/sys"), make_target(root, "/sys", True), read_only=True)


def enter(spec: dict[str, Any]) -> None:
    """Everything up to the exec, in this process."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS) (the image mode needs root)")
    mount(None, Path("/"), None, MS_REC | MS_PRIVATE)
    root = root_filesystem(spec)
    system_mounts(root)
    for m in spec["mounts"]:
        source = Path(m["source"])
        target = make_target(root, m["target"], source.is_dir())
        bind(source, target, bool(m.get("readOnly")), MS_NOSUID | MS_NODEV)
    mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chroot(root)
    os.chdir(spec["workingDir"])
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.setgroups([])
    os.setgid(int(spec["gid"]))
    os.setuid(int(spec["uid"]))


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    try:
        enter(spec)
    except (SandboxError, OSError) as err:
        print(f"sandbox: {err}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    try:
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as err:
        print(f"sandbox: exec {spec['argv'][0]}: {err}", file=sys.stderr)
    return EXIT_EXEC_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv))

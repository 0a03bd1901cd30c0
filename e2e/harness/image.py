"""The container image built without a container engine (``e2e/build-image``), for the e2e tests:
build it (a no-op when cached), read its OCI config, and name it in a pod label.

A pod labelled ``e2e.proctor.dev/run: image-<key>`` is run by the pod runner inside that build's
rootfs (``<cache>/image/<key>/rootfs``) instead of with the host's Python; ``Image.label`` is that
value for the current sources.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "e2e" / "build-image"
LABEL_PREFIX = "image-"
BUILD_TIMEOUT = 1800.0


class ImageError(Exception):
    """The image could not be built or read."""


def cache_dir() -> Path:
    return Path(os.environ.get("PROCTOR_CACHE") or Path.home() / ".cache" / "proctor")


@dataclass(frozen=True)
class Image:
    """One build: ``<cache>/image/<key>/`` with rootfs/, oci/ and packages.txt."""

    dir: Path

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def label(self) -> str:
        """The ``e2e.proctor.dev/run`` label value that runs a pod inside this image."""
        return LABEL_PREFIX + self.dir.name

    def packages(self) -> dict[str, str]:
        """name -> version of every distribution in the image's /opt/proctor."""
        found = {}
        for line in (self.dir / "packages.txt").read_text().split():
            name, _, version = line.partition("==")
            found[name] = version
        return found

    def reference(self) -> str:
        """The layout's single reference name (the tag, pyproject's version)."""
        index = json.loads((self.dir / "oci" / "index.json").read_text())
        refs = [
            m["annotations"]["org.opencontainers.image.ref.name"]
            for m in index["manifests"]
            if "org.opencontainers.image.ref.name" in (m.get("annotations") or {})
        ]
        if len(refs) != 1:
            raise ImageError(f"{self.dir}/oci holds {len(refs)} references, expected one")
        return str(refs[0])

    def config(self) -> dict[str, Any]:
        """The OCI image config's ``config`` (User, Env, WorkingDir, Entrypoint, Cmd...)."""
        index = json.loads((self.dir / "oci" / "index.json").read_text())
        manifest = json.loads(self._blob(index["manifests"][0]["digest"]))
        config: dict[str, Any] = json.loads(self._blob(manifest["config"]["digest"]))
        return dict(config.get("config") or {})

    def _blob(self, digest: str) -> bytes:
        algorithm, _, hexdigest = digest.partition(":")
        return (self.dir / "oci" / "blobs" / algorithm / hexdigest).read_bytes()


def image_for_label(value: str) -> Image | None:
    """The build a pod label value names, or None when it names none (``local``)."""
    if not value.startswith(LABEL_PREFIX):
        return None
    key = value.removeprefix(LABEL_PREFIX)
    if not key.isalnum():
        raise ImageError(f"label value {value!r}: expected image-<hex key>")
    image = Image(cache_dir() / "image" / key)
    if not (image.dir / "done").exists():
        raise ImageError(f"no image build {image.dir}: run e2e/build-image")
    return image


def build(timeout: float = BUILD_TIMEOUT) -> Image:
    """Runs e2e/build-image (a no-op when the sources' build is cached) and returns it."""
    done = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise ImageError(f"e2e/build-image failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return Image(Path(done.stdout.split()[-1]))

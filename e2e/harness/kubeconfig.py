"""Kubeconfig files for the local control plane's clients."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write(path: Path, server: str, ca: Path, user: dict[str, str], namespace: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "proctor-e2e",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [
            {
                "name": "proctor-e2e",
                "context": {"cluster": "proctor-e2e", "user": "user", "namespace": namespace},
            }
        ],
        "current-context": "proctor-e2e",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # Credentials inside: readable by the owner only.
    path.chmod(0o600)
    return path


def write_cert_kubeconfig(
    path: Path, server: str, ca: Path, cert: Path, key: Path, *, namespace: str = "default"
) -> Path:
    """Kubeconfig authenticating with a client certificate (embedded)."""
    user = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    return _write(path, server, ca, user, namespace)


def write_token_kubeconfig(
    path: Path, server: str, ca: Path, token: str, *, namespace: str = "default"
) -> Path:
    """Kubeconfig authenticating with a bearer token (a ServiceAccount's)."""
    return _write(path, server, ca, {"token": token}, namespace)

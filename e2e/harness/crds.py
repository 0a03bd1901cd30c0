"""Apply CustomResourceDefinitions and wait until the apiserver serves them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def repo_crds() -> list[dict[str, Any]]:
    """The CRDs that ship in ``crds/``, as parsed documents."""
    docs: list[dict[str, Any]] = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def apply_crds(api_client: Any, docs: Iterable[dict[str, Any]], timeout: float = 60.0) -> None:
    """Create or replace each CRD, then wait for Established (and NamesAccepted)."""
    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for doc in docs:
        name = doc["metadata"]["name"]
        names.append(name)
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as err:
            if err.status != 409:
                raise
            live = ext.read_custom_resource_definition(name)
            body = dict(doc)
            body["metadata"] = {
                **doc["metadata"],
                "resourceVersion": live.metadata.resource_version,
            }
            ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            conds = {c.type: c for c in (crd.status.conditions or [])}
            est = conds.get("Established")
            if est is not None and est.status == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established: {conds}")
            time.sleep(0.2)

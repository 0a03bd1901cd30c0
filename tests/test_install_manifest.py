"""manifests/install.yaml and the kustomize base are exactly what manifests/generate-install
renders from the chart (whose copies of crds/ and manifests/rbac/ are current), and the
operator's RBAC grants what it uses and nothing broad."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from e2e.harness.helmtools import kubectl

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "manifests" / "install.yaml"


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return (doc["kind"], meta.get("namespace", ""), meta["name"])


def test_install_manifest_kustomize_base_and_chart_copies_are_in_sync() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "manifests" / "generate-install"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_install_manifest_holds_crds_rbac_and_a_restricted_deployment() -> None:
    docs = _docs(INSTALL.read_text())
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace"
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    crd_names = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    shipped = {
        d["metadata"]["name"] for p in (ROOT / "crds").glob("*.yaml") for d in _docs(p.read_text())
    }
    assert crd_names == shipped
    assert {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
    } <= set(kinds)
    namespaced = [d for d in docs if d["kind"] in ("ServiceAccount", "ConfigMap", "Deployment")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"proctor-system"}
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    # One replica without peering, and never two at once during a rollout.
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "proctor/proctor:0.1.0"
    assert container["command"] == ["proctor", "operator"]
    assert "--peering" not in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # No helm test hook in a plain manifest.
    assert not [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]


def test_kustomize_base_builds_the_same_objects_as_install_yaml() -> None:
    out = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "manifests" / "kustomize")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    built = {_key(d): d for d in _docs(out.stdout)}
    installed = {_key(d): d for d in _docs(INSTALL.read_text())}
    assert built == installed


def test_kustomize_overlay_moves_the_operator_to_another_namespace(tmp_path: Path) -> None:
    """The base is usable as documented: an overlay in another namespace binds the role to the
    ServiceAccount there."""
    overlay = ROOT / "manifests" / f".overlay-test-{tmp_path.name}"
    overlay.mkdir()
    try:
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": "evals",
                    "resources": ["../kustomize"],
                    "images": [{"name": "proctor/proctor", "newName": "mirror.example/proctor"}],
                }
            )
        )
        out = subprocess.run(
            [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
        )
    finally:
        (overlay / "kustomization.yaml").unlink(missing_ok=True)
        overlay.rmdir()
    assert out.returncode == 0, out.stderr
    docs = _docs(out.stdout)
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "evals"
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["metadata"]["namespace"] == "evals"
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "mirror.example/proctor:0.1.0"


def test_cluster_role_has_no_wildcards_and_reads_secrets_by_name_only() -> None:
    role = yaml.safe_load((ROOT / "manifests" / "rbac" / "clusterrole.yaml").read_text())
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"]

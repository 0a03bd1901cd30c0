"""manifests/install.yaml is exactly what manifests/generate-install writes from crds/ and
manifests/rbac/, and the operator's RBAC grants what it uses and nothing broad."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_install_manifest_is_in_sync() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "manifests" / "generate-install"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_install_manifest_holds_crds_rbac_and_a_restricted_deployment() -> None:
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("CustomResourceDefinition") == len(list((ROOT / "crds").glob("*.yaml")))
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    } <= set(kinds)
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["proctor", "operator"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_cluster_role_has_no_wildcards_and_reads_secrets_by_name_only() -> None:
    role = yaml.safe_load((ROOT / "manifests" / "rbac" / "clusterrole.yaml").read_text())
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"]

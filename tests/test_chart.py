"""The Helm chart charts/proctor: `helm lint` and `helm template` for every ci/*-values.yaml, the
strict values schema, and checks of the rendered objects (restricted pod security, probes, PDB,
RBAC equal to manifests/rbac/, configuration the operator accepts, CRDs equal to crds/)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness.helmtools import helm
from proctor import __version__
from proctor.config import OperatorConfig

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "proctor"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RBAC = ROOT / "manifests" / "rbac"
CLUSTER_SCOPED = {"nodes", "namespaces", "customresourcedefinitions", "clusterkopfpeerings"}

Obj = dict[str, Any]


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False)


def render(values: Path | None = None, *sets: str) -> list[Obj]:
    args = ["template", "proctor", str(CHART), "--namespace", "proctor-system"]
    if values is not None:
        args += ["--values", str(values)]
    for s in sets:
        args += ["--set", s]
    out = run_helm(*args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def values_of(path: Path | None) -> Obj:
    """The chart's defaults merged with a values file, as Helm merges them (maps deep, lists and
    scalars replaced)."""

    def merge(base: Obj, over: Obj) -> Obj:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    defaults: Obj = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load(path.read_text()) or {} if path else {})


def one(docs: list[Obj], kind: str) -> Obj:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


# --- restricted pod security, as a pure check with a table test ----------------------------


def restricted_violations(pod: Obj) -> list[str]:
    """What in a pod spec breaks the restricted Pod Security Standard (the subset a chart
    controls: host namespaces, hostPath, privilege, capabilities, non-root, seccomp)."""
    problems: list[str] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is set")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']} is a hostPath")
    pod_ctx = pod.get("securityContext") or {}
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    for container in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        name = container["name"]
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        added = set((ctx.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{name}: adds capabilities {sorted(added)}")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as user 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}")
    return problems


_GOOD_CONTAINER: Obj = {
    "name": "c",
    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
}
_GOOD_POD: Obj = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [_GOOD_CONTAINER],
}


def _with(pod: Obj, **container_ctx: Any) -> Obj:
    ctx = {**_GOOD_CONTAINER["securityContext"], **container_ctx}
    return {**pod, "containers": [{"name": "c", "securityContext": ctx}]}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param(_GOOD_POD, [], id="restricted"),
        pytest.param({**_GOOD_POD, "hostNetwork": True}, ["hostNetwork is set"], id="hostnet"),
        pytest.param(
            {**_GOOD_POD, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
            ["volume h is a hostPath"],
            id="hostpath",
        ),
        pytest.param(_with(_GOOD_POD, privileged=True), ["c: privileged"], id="privileged"),
        pytest.param(
            _with(_GOOD_POD, allowPrivilegeEscalation=True),
            ["c: allowPrivilegeEscalation is not false"],
            id="escalation",
        ),
        pytest.param(
            _with(_GOOD_POD, capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
            ["c: adds capabilities ['SYS_ADMIN']"],
            id="cap-add",
        ),
        pytest.param(
            _with(_GOOD_POD, capabilities={}), ["c: capabilities do not drop ALL"], id="no-drop"
        ),
        pytest.param(
            _with(_GOOD_POD, runAsNonRoot=False, runAsUser=0),
            ["c: runAsNonRoot is not true", "c: runs as user 0"],
            id="root",
        ),
        pytest.param(
            {**_GOOD_POD, "securityContext": {"runAsNonRoot": True}},
            ["c: seccompProfile is None"],
            id="no-seccomp",
        ),
    ],
)
def test_restricted_violations(pod: Obj, expected: list[str]) -> None:
    before = json.dumps(pod, sort_keys=True)
    assert restricted_violations(pod) == expected
    assert json.dumps(pod, sort_keys=True) == before  # not mutated


# --- lint, template, schema ------------------------------------------------------------------


def test_ci_values_files_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "namespaced-values.yaml", "monitoring-values.yaml"} <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_passes_strict(values: Path) -> None:
    out = run_helm("lint", "--strict", str(CHART), "--values", str(values))
    assert out.returncode == 0, out.stdout + out.stderr


def test_chart_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.replica=3", "additional properties 'replica' not allowed"),
        ("config.reservedCpuFraction=1", "/config/reservedCpuFraction"),
        ("operator.logLevel=loud", "/operator/logLevel"),
        ("operator.watchNamespaces[0]=Team_A", "/operator/watchNamespaces/0"),
        ("metrics.serviceMonitor.interval=often", "/metrics/serviceMonitor/interval"),
        ("unknownTopLevel=1", "additional properties 'unknownTopLevel' not allowed"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(setting: str, message: str) -> None:
    out = run_helm("template", "proctor", str(CHART), "--set", setting)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
        (["serviceAccount.create=false"], "serviceAccount.name is required"),
    ],
)
def test_inconsistent_values_fail_with_what_to_do(sets: list[str], message: str) -> None:
    args = ["template", "proctor", str(CHART)]
    for s in sets:
        args += ["--set", s]
    out = run_helm(*args)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def _leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {p for k, v in node.items() for p in _leaf_paths(v, f"{prefix}.{k}".lstrip("."))}
    return {prefix}


def _schema_paths(schema: Obj, prefix: str = "") -> set[str]:
    props = schema.get("properties")
    if schema.get("type") == "object" and props:
        return {p for k, v in props.items() for p in _schema_paths(v, f"{prefix}.{k}".lstrip("."))}
    return {prefix}


def test_schema_is_strict_and_covers_exactly_the_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def objects(node: Obj) -> list[Obj]:
        found = [node] if "properties" in node else []
        for child in (node.get("properties") or {}).values():
            found += objects(child)
        return found

    for node in objects(schema):
        assert node.get("additionalProperties") is False, node.get("description")
    # Every value has a schema entry (maps of free keys, like podLabels, are leaves there).
    schema_paths = _schema_paths(schema) - {"global"}
    value_paths = _leaf_paths(values)
    assert {
        v for v in value_paths if not any(v == s or v.startswith(s + ".") for s in schema_paths)
    } == set()
    assert {s for s in schema_paths if not any(v.startswith(s) for v in value_paths)} == set()


def undocumented_values(text: str) -> list[str]:
    """Keys of a values.yaml that neither have a `# --` comment right above them (comment lines
    in between allowed) nor are a section whose every child is documented. Keys inside a
    documented value (e.g. resources.requests) count as documented."""
    key = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_.-]*):")
    nodes: list[tuple[int, str, bool]] = []  # (indent, dotted path, documented)
    stack: list[tuple[int, str]] = []
    doc = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            doc = True
            continue
        if stripped.startswith("#") or not stripped:
            continue
        m = key.match(line)
        if not m or stripped.startswith("-"):
            doc = False
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([s[1] for s in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        nodes.append((indent, path, doc))
        doc = False
    documented = {path for _, path, d in nodes if d}

    def ok(path: str) -> bool:
        if path in documented or any(path.startswith(d + ".") for d in documented):
            return True
        children = [p for _, p, _ in nodes if p.rsplit(".", 1)[0] == path and p != path]
        return bool(children) and all(ok(c) for c in children)

    return [path for _, path, _ in nodes if not ok(path)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# -- a\na: 1\n", []),
        ("a: 1\n", ["a"]),
        ("s:\n  # -- x\n  x: 1\n  y: 2\n", ["s", "s.y"]),
        ("s:\n  # -- x\n  # more\n  x:\n    inner: 1\n", []),
        ("# -- l\nl:\n  - a: 1\nb: 2\n", ["b"]),
    ],
)
def test_undocumented_values(text: str, expected: list[str]) -> None:
    assert undocumented_values(text) == expected


def test_every_value_is_documented_in_values_yaml() -> None:
    assert undocumented_values((CHART / "values.yaml").read_text()) == []


# --- rendered objects --------------------------------------------------------------------------


def _rules(rules: list[Obj]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _shipped_rules(name: str) -> list[Obj]:
    rules: list[Obj] = yaml.safe_load((RBAC / name).read_text())["rules"]
    return rules


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_rendered_objects(values_file: Path) -> None:
    docs = render(values_file)
    values = values_of(values_file)
    op = values["operator"]
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == "proctor", doc["metadata"]["name"]
        assert labels.get("app.kubernetes.io/name") == "proctor"

    deploy = one(docs, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert _matches(deploy["spec"]["selector"]["matchLabels"], pod_labels)
    assert deploy["spec"]["replicas"] == op["replicas"]
    pod = deploy["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    container = pod["containers"][0]
    assert container["command"] == ["proctor", "operator"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": op["healthPort"], "metrics": values["metrics"]["port"]}
    assert container["resources"]["requests"]
    args = container["args"]
    assert f"--liveness-port={op['healthPort']}" in args
    assert ("--peering" in args) == op["peering"]["enabled"]
    assert [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")] == op[
        "watchNamespaces"
    ]
    if op["replicas"] > 1:
        # Several replicas are safe only with peering (one active).
        assert op["peering"]["enabled"]
        assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    if not op["peering"]["enabled"]:
        assert deploy["spec"]["strategy"]["type"] == "Recreate"
    image = container["image"]
    if values["image"]["digest"]:
        assert image == f"{values['image']['repository']}@{values['image']['digest']}"
    else:
        assert image == f"{values['image']['repository']}:{__version__}"

    # The configuration the operator reads: mounted where PROCTOR_CONFIG points, and valid.
    env = {e["name"]: e for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["PROCTOR_CONFIG"]["value"] == f"{mount['mountPath']}/config.yaml"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    wanted = {k: v for k, v in values["config"].items() if v not in ("", {}, [])}
    assert config == wanted
    parsed = OperatorConfig.model_validate(config)
    assert parsed.reserved_cpu_fraction == values["config"]["reservedCpuFraction"]

    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert bool(pdbs) == op["podDisruptionBudget"]["enabled"]
    for pdb in pdbs:
        assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
        assert pdb["spec"]["maxUnavailable"] == op["podDisruptionBudget"]["maxUnavailable"]

    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        assert _matches(svc["spec"]["selector"], pod_labels)
        assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"metrics", "health"}

    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert bool(policies) == values["networkPolicy"]["enabled"]
    for policy in policies:
        assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
        ingress_ports = {p["port"] for p in policy["spec"]["ingress"][0]["ports"]}
        assert ingress_ports == {"health", "metrics"}
        egress = bool(values["networkPolicy"]["egress"])
        assert ("Egress" in policy["spec"]["policyTypes"]) == egress

    _check_rbac(docs, values)
    _check_crds(docs, values)
    _check_monitoring(docs, values)

    tests = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(tests) == int(values["tests"]["enabled"])
    for test_pod in tests:
        assert restricted_violations(test_pod["spec"]) == []
        assert test_pod["spec"]["restartPolicy"] == "Never"
        url = test_pod["spec"]["containers"][0]["command"][-1]
        assert url == f"http://proctor-operator.proctor-system.svc:{op['healthPort']}/healthz"


def _check_rbac(docs: list[Obj], values: Obj) -> None:
    by_kind: dict[str, list[Obj]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    if not values["rbac"]["create"]:
        assert not {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"} & set(by_kind)
        return
    op = values["operator"]
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    for binding in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", []):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa, "namespace": "proctor-system"}
        ]
    shipped = {"proctor-operator": _shipped_rules("clusterrole.yaml")}
    if op["peering"]["enabled"]:
        shipped["proctor-operator-peering"] = _shipped_rules("peering.yaml")
    cluster = {d["metadata"]["name"]: d["rules"] for d in by_kind.get("ClusterRole", [])}
    if not op["watchNamespaces"]:
        # Exactly the rules of manifests/rbac/, not one verb more or less.
        assert cluster == shipped
        assert "Role" not in by_kind
        return
    roles = by_kind["Role"]
    assert {r["metadata"]["namespace"] for r in roles} == set(op["watchNamespaces"])
    for name, rules in shipped.items():
        wanted = _rules(rules)
        if name.endswith("-peering"):
            # Namespaced peering never touches the cluster-wide peering object.
            wanted = {t for t in wanted if t[1] != "clusterkopfpeerings"}
        cluster_part = _rules(cluster.get(name, []))
        assert all(t[1] in CLUSTER_SCOPED for t in cluster_part), cluster_part
        for namespace in op["watchNamespaces"]:
            role = next(
                r
                for r in roles
                if r["metadata"]["name"] == name and r["metadata"]["namespace"] == namespace
            )
            namespaced = _rules(role["rules"])
            assert not any(t[1] in CLUSTER_SCOPED for t in namespaced)
            assert cluster_part | namespaced == wanted


def _check_crds(docs: list[Obj], values: Obj) -> None:
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    if not values["crds"]["enabled"]:
        assert crds == {}
        return
    shipped = {
        d["metadata"]["name"]: d
        for p in sorted((ROOT / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    }
    assert set(crds) == set(shipped)
    for name, crd in crds.items():
        assert crd["spec"] == shipped[name]["spec"]
        keep = crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy")
        assert keep == ("keep" if values["crds"]["keep"] else None)
    peering = [d for d in docs if d["kind"] in ("ClusterKopfPeering", "KopfPeering")]
    op = values["operator"]
    if not op["peering"]["enabled"]:
        assert peering == []
    elif op["watchNamespaces"]:
        assert sorted(p["metadata"]["namespace"] for p in peering) == sorted(op["watchNamespaces"])
        assert {p["kind"] for p in peering} == {"KopfPeering"}
    else:
        assert [(p["kind"], p["metadata"]["name"]) for p in peering] == [
            ("ClusterKopfPeering", "proctor")
        ]


def _check_monitoring(docs: list[Obj], values: Obj) -> None:
    metrics = values["metrics"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert bool(monitors) == metrics["serviceMonitor"]["enabled"]
    for monitor in monitors:
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert _matches(metrics["serviceMonitor"]["labels"], monitor["metadata"]["labels"])
    pod_monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert bool(pod_monitors) == metrics["workerPodMonitor"]["enabled"]
    for monitor in pod_monitors:
        assert _matches(metrics["workerPodMonitor"]["labels"], monitor["metadata"]["labels"])
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert bool(rules) == metrics["prometheusRule"]["enabled"]
    for rule in rules:
        source = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
        page = metrics["prometheusRule"]["runbookUrl"]
        for group in source["groups"]:
            for alert in group["rules"]:
                if "alert" in alert:  # the runbook at the configured page, same anchor
                    alert["annotations"]["runbook_url"] = f"{page}#{alert['alert'].lower()}"
        assert rule["spec"]["groups"] == source["groups"]
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and "proctor.json" in d["data"]]
    assert bool(dashboards) == metrics["grafanaDashboard"]["enabled"]
    for cm in dashboards:
        source = json.loads((CHART / "files" / "dashboards" / "proctor.json").read_text())
        assert json.loads(cm["data"]["proctor.json"]) == source
        assert _matches(metrics["grafanaDashboard"]["labels"], cm["metadata"]["labels"])
        ns = metrics["grafanaDashboard"]["namespace"] or "proctor-system"
        assert cm["metadata"]["namespace"] == ns


def test_replicas_without_peering_are_refused() -> None:
    out = run_helm("template", "proctor", str(CHART), "--set", "operator.peering.enabled=false")
    assert out.returncode != 0
    assert "operator.replicas > 1 needs operator.peering.enabled" in out.stderr

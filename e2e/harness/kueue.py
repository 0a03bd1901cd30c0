"""Kueue in the local control plane, for the admission tests.

The binary, its CRDs and its webhook manifests come from the same module version, cached by
``e2e/build-kueue`` in ``$PROCTOR_CACHE/bin/kueue-<version>/``. :func:`running_kueue`
starts the controller on loopback for as long as the ``with`` block lasts:

- its webhook server listens on 127.0.0.1 with a serving certificate from the cluster's own CA
  (``<state>/pki``), and Kueue's internal certificate management is off;
- its Validating/MutatingWebhookConfigurations (and the CRDs' conversion webhooks) point at
  that address by URL with the CA as ``caBundle``. Only the webhooks Kueue serves with the pod
  integration alone are installed, and the pod webhooks only for namespaces labelled
  ``e2e.proctor.dev/test=true`` (the ``namespace`` fixture's), which is also Kueue's
  ``managedJobsNamespaceSelector``: nothing else in the cluster passes through Kueue;
- it authenticates with a client certificate of the same CA in ``system:masters`` (as kwok
  does here; a real install binds Kueue's ClusterRole).

On exit the webhook configurations go first (so no pod creation waits on a stopped webhook),
then the process, then Kueue's finalizer on pods it managed (no namespace is left stuck).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.harness import kubeconfig, pki
from e2e.harness.cluster import REPO_ROOT, ClusterError, ClusterState
from e2e.harness.crds import apply_crds
from e2e.harness.net import free_port

BUILD_SCRIPT = REPO_ROOT / "e2e" / "build-kueue"
GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
MANAGED_NAMESPACES = {"matchLabels": {"e2e.proctor.dev/test": "true"}}
WEBHOOK_CONFIG_NAMES = ("kueue-mutating-webhook-configuration",
                        "kueue-validating-webhook-configuration")  # fmt: skip
# CRDs whose conversion (v1beta1 <-> v1beta2) Kueue serves (config/components/crd/patches).
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
POD_FINALIZER = "kueue.x-k8s.io/managed"


def build() -> None:
    """Build Kueue, or reuse the cache (a fast no-op)."""
    subprocess.run([str(BUILD_SCRIPT)], check=True)


def kueue_dir() -> Path:
    """The cached build: ``kueue``, ``crds/`` and ``webhook-manifests.yaml``."""
    out = subprocess.run(
        [str(BUILD_SCRIPT), "--print-bin-dirs"], check=True, capture_output=True, text=True
    ).stdout
    directory = Path(out.strip())
    if not (directory / "kueue").is_file():
        raise ClusterError(f"kueue is not built in {directory}; run e2e/build-kueue")
    return directory


def version() -> str:
    return kueue_dir().name.removeprefix("kueue-")


@dataclass
class Kueue:
    """A running Kueue: its process, log and ports."""

    proc: subprocess.Popen[bytes]
    log: Path
    webhook_port: int
    health_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def crd_docs(url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs as the module ships them, the conversion webhook pointed at ``url``."""
    docs = []
    for path in sorted((kueue_dir() / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["spec"]["names"]["plural"] in CONVERTED:
            doc["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
                    "conversionReviewVersions": ["v1"],
                },
            }
        docs.append(doc)
    return docs


def _served(hook: dict[str, Any]) -> bool:
    """Webhooks Kueue serves with only the pod integration: its own API's and the pods'."""
    return any(
        GROUP in (rule.get("apiGroups") or []) or "pods" in (rule.get("resources") or [])
        for rule in hook.get("rules") or []
    )


def webhook_configs(url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, reached at ``url`` by URL instead of a Service."""
    out = []
    for shipped in yaml.safe_load_all((kueue_dir() / "webhook-manifests.yaml").read_text()):
        if not shipped:
            continue
        doc = copy.deepcopy(shipped)
        doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}"}
        hooks = []
        for hook in doc.get("webhooks") or []:
            if not _served(hook):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
            if any("pods" in (r.get("resources") or []) for r in hook.get("rules") or []):
                hook["namespaceSelector"] = MANAGED_NAMESPACES
            hooks.append(hook)
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def _configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": MANAGED_NAMESPACES,
        "integrations": {"frameworks": ["pod"]},
    }


METRICS_CERTS = Path("/etc/kueue/metrics/certs")
"""Kueue v0.17 with its internal certificate management off loads a metrics serving pair from
this fixed path (cmd/kueue/main.go), even with metrics off, and exits when it is missing."""


def _metrics_certs(ca: pki.Authority) -> None:
    """A pair at :data:`METRICS_CERTS` (metrics are off: any valid pair does); one already
    there is left alone."""
    if (METRICS_CERTS / "tls.crt").is_file() and (METRICS_CERTS / "tls.key").is_file():
        return
    try:
        METRICS_CERTS.mkdir(parents=True, exist_ok=True)
        pair = ca.issue("kueue-metrics", "kueue-metrics", server=True, ips=["127.0.0.1"])
        (METRICS_CERTS / "tls.key").write_bytes(pair.key.read_bytes())
        (METRICS_CERTS / "tls.key").chmod(0o600)
        (METRICS_CERTS / "tls.crt").write_bytes(pair.cert.read_bytes())
    except PermissionError as exc:
        raise ClusterError(
            f"Kueue needs a TLS pair in {METRICS_CERTS} (tls.crt, tls.key; any pair, its "
            "metrics are off) and this user cannot write there: create them as root"
        ) from exc


def _prepare(state: ClusterState, webhook_port: int, health_port: int) -> tuple[Path, Path, str]:
    """Certificates, kubeconfig and Configuration in ``<state>/kueue``; returns the config
    file, the kubeconfig and the base64 CA bundle."""
    work = state.path / "kueue"
    certs = work / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    ca = pki.Authority.load(state.path / "pki")
    _metrics_certs(ca)
    serving = ca.issue(
        "kueue-webhook", "kueue-webhook", server=True, dns_names=["localhost"], ips=["127.0.0.1"]
    )
    (certs / "tls.crt").write_bytes(serving.cert.read_bytes())
    (certs / "tls.key").write_bytes(serving.key.read_bytes())
    (certs / "tls.key").chmod(0o600)
    pair = ca.issue("kueue", "kueue-controller", ["system:masters"])
    config = kubeconfig.write_cert_kubeconfig(
        work / "kubeconfig", state.server, ca.cert_path, pair.cert, pair.key
    )
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(_configuration(webhook_port, health_port, certs)))
    return path, config, base64.b64encode(ca.cert_path.read_bytes()).decode()


def _wait_ready(kueue: Kueue, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{kueue.health_port}/readyz"
    while time.monotonic() < deadline:
        if kueue.proc.poll() is not None:
            raise RuntimeError(f"kueue exited ({kueue.proc.returncode}):\n{kueue.output()[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"kueue not ready after {timeout:.0f}s:\n{kueue.output()[-4000:]}")


def _wait_webhooks(api_client: Any, timeout: float) -> None:
    """Until the API server reaches Kueue's webhooks: a dry-run ResourceFlavor passes its
    mutating and validating webhooks."""
    custom = client.CustomObjectsApi(api_client)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor",
            "metadata": {"name": "probe"}}  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            custom.create_cluster_custom_object(
                GROUP, VERSION, "resourceflavors", body, dry_run="All"
            )
            return
        except ApiException as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kueue's webhooks not reachable: {exc.body}") from exc
            time.sleep(0.3)


@contextlib.contextmanager
def running_kueue(state: ClusterState, api_client: Any, timeout: float = 90.0) -> Iterator[Kueue]:
    """Kueue's CRDs installed and its controller running against the cluster (see the
    module doc); everything it changed outside its CRDs undone on exit."""
    webhook_port, health_port = free_port(), free_port()
    config, kube, ca_bundle = _prepare(state, webhook_port, health_port)
    url = f"https://127.0.0.1:{webhook_port}"
    apply_crds(api_client, crd_docs(url, ca_bundle))
    log = state.path / "logs" / "kueue.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KUBECONFIG": str(kube)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(kueue_dir() / "kueue"), f"--config={config}",
             "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=info"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    kueue = Kueue(proc, log, webhook_port, health_port)
    admission = client.AdmissionregistrationV1Api(api_client)
    try:
        _wait_ready(kueue, timeout)
        _install_webhooks(admission, webhook_configs(url, ca_bundle))
        _wait_webhooks(api_client, timeout)
        yield kueue
    finally:
        _remove_webhooks(admission)
        _stop(proc)
        _release_pods(client.CoreV1Api(api_client))


def _install_webhooks(admission: Any, docs: list[dict[str, Any]]) -> None:
    """Create the webhook configurations afresh (one left by an earlier session goes first)."""
    _remove_webhooks(admission)
    for doc in docs:
        if doc["kind"] == "MutatingWebhookConfiguration":
            admission.create_mutating_webhook_configuration(doc)
        else:
            admission.create_validating_webhook_configuration(doc)


def _remove_webhooks(admission: Any) -> None:
    with contextlib.suppress(ApiException):
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIG_NAMES[0])
    with contextlib.suppress(ApiException):
        admission.delete_validating_webhook_configuration(WEBHOOK_CONFIG_NAMES[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _release_pods(core: Any) -> None:
    """Take Kueue's finalizer off the pods it managed: with Kueue gone nothing else would,
    and their namespaces could never be deleted."""
    for pod in core.list_pod_for_all_namespaces(label_selector=f"{POD_FINALIZER}=true").items:
        finalizers = [f for f in pod.metadata.finalizers or [] if f != POD_FINALIZER]
        if finalizers == list(pod.metadata.finalizers or []):
            continue
        with contextlib.suppress(ApiException):
            core.patch_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                [{"op": "replace", "path": "/metadata/finalizers", "value": finalizers}],
            )

"""The operator's Kubernetes API client: JSON over one pool of urllib3 connections.

The operator makes a handful of calls on plain dicts (read a Secret, list quotas, create and
delete pods, merge-patch a status). The official ``kubernetes`` client would turn every answer
into generated model objects (milliseconds of CPU per pod) and its import alone is about 45 MB
of resident memory per operator, which is why it is not used here, and why the operator stops
kopf from importing it (:func:`keep_kubernetes_client_out`).

Credentials come, in order, from the pod's ServiceAccount (``KUBERNETES_SERVICE_HOST`` and the
projected token, read again on a 401 because the kubelet rotates it), then from the kubeconfig
(``$KUBECONFIG`` or ``~/.kube/config``): client certificates, tokens, token files, basic auth
and ``exec`` credential plugins (EKS, GKE, AKS). The same :func:`login` serves kopf's watches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import urllib3
import yaml

if TYPE_CHECKING:  # kopf is imported late: see keep_kubernetes_client_out
    from kopf import ConnectionInfo

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
FIELD_MANAGER = "proctor"
MERGE_PATCH = "application/merge-patch+json"
EXEC_TIMEOUT_SECONDS = 60.0


class LoginError(Exception):
    """No credentials for the Kubernetes API could be found or used."""


class KubeApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.body = body
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        detail = parsed.get("message") if isinstance(parsed, dict) else None
        self.message = str(detail or body[:500] or f"HTTP {status}")
        self.reason = str(parsed.get("reason") or "") if isinstance(parsed, dict) else ""
        super().__init__(f"{method} {path}: {status} {self.message}".strip())


def keep_kubernetes_client_out() -> None:
    """Make ``import kubernetes`` fail in this process, before kopf is imported.

    kopf imports the official client's models when the package is installed, only to recognise
    them in ``kopf.adopt()``; the operator passes plain dicts, and the import would cost about
    45 MB of resident memory. A module set to None in ``sys.modules`` raises ImportError on
    import, which kopf treats as "not installed"."""
    if "kopf" in sys.modules:
        return  # too late to matter; nothing to gain by breaking an importer
    for name in ("kubernetes", "kubernetes_asyncio"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


# -- credentials -------------------------------------------------------------------------------


def login(*, trust_env: bool = False) -> ConnectionInfo:
    """A ``kopf.ConnectionInfo`` from the ServiceAccount, else from the kubeconfig."""
    info = in_cluster_login(trust_env=trust_env)
    if info is None:
        info = kubeconfig_login(trust_env=trust_env)
    if info is None:
        raise LoginError(
            "no Kubernetes credentials: not in a pod with a ServiceAccount token, and no "
            "kubeconfig ($KUBECONFIG or ~/.kube/config); set KUBECONFIG or run in the cluster"
        )
    return info


def in_cluster_login(
    *,
    trust_env: bool = False,
    directory: Path = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] | None = None,
) -> ConnectionInfo | None:
    """Credentials of the pod's ServiceAccount; None outside a pod."""
    import kopf  # noqa: PLC0415 - late: keep_kubernetes_client_out runs first

    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    token_file = directory / "token"
    if not host or not token_file.exists():
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6
    ca = directory / "ca.crt"
    namespace = directory / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.exists() else None,
        token=token_file.read_text().strip() or None,
        default_namespace=namespace.read_text().strip() if namespace.exists() else None,
        trust_env=trust_env,
    )


def kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if environ is None else environ
    given = env.get("KUBECONFIG")
    if given:
        return [Path(p).expanduser() for p in given.split(os.pathsep) if p.strip()]
    default = Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


@dataclass(frozen=True)
class Kubeconfig:
    """The kubeconfig files merged as kubectl merges them: per section (contexts, clusters,
    users), each name's entry from the first file that has it, and the folder of that file."""

    paths: list[Path]
    current: str | None
    sections: dict[str, dict[str, Any]]
    bases: dict[tuple[str, str], Path]


def merge_kubeconfigs(paths: list[Path]) -> Kubeconfig:
    merged: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    current: str | None = None
    bases: dict[tuple[str, str], Path] = {}
    for path in paths:
        if not path.exists():
            continue  # a missing file in $KUBECONFIG is skipped, as kubectl does
        doc = yaml.safe_load(path.read_text()) or {}
        current = current or doc.get("current-context")
        for section, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in doc.get(section) or []:
                if item.get("name") not in merged[section]:  # the first file wins
                    merged[section][item["name"]] = item.get(key) or {}
                    bases[(section, item["name"])] = path.parent
    return Kubeconfig(paths, current, merged, bases)


def user_login(kubeconfig: str | None = None, context: str | None = None) -> ConnectionInfo:
    """The credentials a command a user runs takes, in kubectl's order: ``--kubeconfig``
    (else ``$KUBECONFIG`` or ``~/.kube/config``) at ``--context`` (else its current
    context); with no kubeconfig at all, the pod's ServiceAccount."""
    if kubeconfig is None and context is None and not kubeconfig_paths():
        info = in_cluster_login()
        if info is not None:
            return info
    info = kubeconfig_login(kubeconfig=kubeconfig, context=context)
    if info is None:
        raise LoginError(
            "no kubeconfig: $KUBECONFIG is not set and ~/.kube/config does not exist, and this "
            "is not a pod with a ServiceAccount; give --kubeconfig FILE or set KUBECONFIG"
        )
    return info


def kubeconfig_login(
    *,
    trust_env: bool = False,
    environ: Mapping[str, str] | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> ConnectionInfo | None:
    """Credentials of the kubeconfig's current context (or ``context``); None when there is
    no kubeconfig. ``kubeconfig`` names the one file to read instead of ``$KUBECONFIG``."""
    import kopf  # noqa: PLC0415 - late: keep_kubernetes_client_out runs first

    paths = kubeconfig_paths(environ) if kubeconfig is None else [Path(kubeconfig).expanduser()]
    if kubeconfig is not None and not paths[0].is_file():
        raise LoginError(f"--kubeconfig {kubeconfig}: no such file")
    if not paths:
        return None
    config = merge_kubeconfigs(paths)
    merged, bases = config.sections, config.bases
    current = _context_name(config, context)
    entry = merged["contexts"][current]
    cluster_name, user_name = entry.get("cluster", ""), entry.get("user", "")
    if cluster_name not in merged["clusters"]:
        raise LoginError(f"kubeconfig context {current!r} names unknown cluster {cluster_name!r}")
    cluster = merged["clusters"][cluster_name]
    user = merged["users"].get(user_name, {})

    def file(section: str, name: str, value: str | None) -> str | None:
        # Relative paths in a kubeconfig are relative to the file that holds them.
        return str(bases[(section, name)] / value) if value else None

    def user_file(key: str) -> str | None:
        return file("users", user_name, user.get(key))

    token: str | None = user.get("token")
    cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    token_file = user_file("tokenFile")
    if not token and token_file:
        token = Path(token_file).read_text().strip()
    if user.get("exec"):
        status = exec_credential(user["exec"], cluster)
        token = status.get("token") or token
        cert_data = status.get("clientCertificateData") or cert_data
        key_data = status.get("clientKeyData") or key_data
    return kopf.ConnectionInfo(
        server=str(cluster.get("server") or ""),
        ca_path=file("clusters", cluster_name, cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        certificate_path=None if cert_data else user_file("client-certificate"),
        certificate_data=cert_data,
        private_key_path=None if key_data else user_file("client-key"),
        private_key_data=key_data,
        username=user.get("username"),
        password=user.get("password"),
        token=token,
        default_namespace=entry.get("namespace"),
        trust_env=trust_env,
    )


def _context_name(config: Kubeconfig, given: str | None) -> str:
    """The context to use: ``given`` (``--context``), else the current one; raises
    :class:`LoginError` naming the files when there is none or it is unknown."""
    contexts = config.sections["contexts"]
    where = os.pathsep.join(map(str, config.paths))
    if given and given not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise LoginError(f"context {given!r} is not in kubeconfig {where} (contexts: {known})")
    current = given or config.current
    if not current or current not in contexts:
        raise LoginError(
            f"kubeconfig {where} has no usable current-context; "
            "set one with `kubectl config use-context NAME` or give --context"
        )
    return current


def exec_credential(spec: Mapping[str, Any], cluster: Mapping[str, Any]) -> dict[str, Any]:
    """Run a kubeconfig ``exec`` credential plugin; its ExecCredential's ``status``."""
    command = [str(spec.get("command") or ""), *(str(a) for a in spec.get("args") or [])]
    api_version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
    info = {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": False, "cluster": {"server": cluster.get("server")}},
    }
    env = {
        **os.environ,
        **{str(e["name"]): str(e["value"]) for e in spec.get("env") or []},
        "KUBERNETES_EXEC_INFO": json.dumps(info),
    }
    try:
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXEC_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoginError(f"kubeconfig exec plugin {command[0]!r} did not run: {exc}") from exc
    if done.returncode != 0:
        raise LoginError(
            f"kubeconfig exec plugin {command[0]!r} exited {done.returncode}: "
            f"{done.stderr.strip()[:500]}"
        )
    try:
        status = json.loads(done.stdout).get("status") or {}
    except (ValueError, AttributeError) as exc:
        raise LoginError(
            f"kubeconfig exec plugin {command[0]!r} printed no ExecCredential"
        ) from exc
    return dict(status)


# -- the client --------------------------------------------------------------------------------


class KubeApi:
    """Thread-safe JSON requests to the API server, on one bounded connection pool.

    ``login`` returns a ``kopf.ConnectionInfo``; it is called on first use and again after a
    401 (a rotated ServiceAccount token, an expired exec credential), and the request is sent
    once more."""

    def __init__(
        self,
        login: Callable[[], ConnectionInfo] = login,
        *,
        pool_size: int = 16,
        timeout: float = 30.0,
    ) -> None:
        self._login = login
        self._pool_size = pool_size
        self._timeout = urllib3.Timeout(connect=10.0, read=timeout)
        self._lock = threading.Lock()
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._headers: dict[str, str] = {}
        self._generation = 0

    def _connect(
        self, stale: int | None = None
    ) -> tuple[urllib3.HTTPConnectionPool, dict[str, str], int]:
        with self._lock:
            if self._pool is None or stale == self._generation:
                info = self._login()
                if self._pool is not None:
                    self._pool.close()
                kwargs: dict[str, Any] = {"maxsize": self._pool_size, "block": False}
                if str(info.server).startswith("https"):
                    kwargs["ssl_context"] = info.as_ssl_context()
                    if info.insecure:
                        kwargs["assert_hostname"] = False
                self._pool = urllib3.connection_from_url(str(info.server), **kwargs)
                self._headers = {
                    **info.as_http_headers(),
                    "Accept": "application/json",
                    "User-Agent": "proctor-operator",
                }
                self._generation += 1
            return self._pool, self._headers, self._generation

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request; the decoded JSON answer. Raises :class:`KubeApiError`."""
        url = path + (f"?{urlencode(dict(query))}" if query else "")
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        generation: int | None = None
        for attempt in range(2):
            pool, headers, generation = self._connect(generation if attempt else None)
            sent = dict(headers)
            if payload is not None:
                sent["Content-Type"] = content_type
            response = pool.urlopen(
                method,
                url,
                body=payload,
                headers=sent,
                timeout=self._timeout,
                retries=urllib3.Retry(total=3, connect=3, read=0, redirect=0, status=0),
                preload_content=True,
            )
            if response.status == 401 and attempt == 0:
                continue  # credentials rotated: log in again, once
            text = response.data.decode("utf-8", "replace")
            if response.status >= 400:
                raise KubeApiError(response.status, text, method=method, path=path)
            return json.loads(text) if text else None
        raise AssertionError("unreachable")

    def stream(
        self,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        read_timeout: float | None = None,
    ) -> Iterator[bytes]:
        """GET ``path`` and yield its answer line by line as it arrives (a pod's log, followed
        or not), each line with its newline; ``read_timeout`` None waits for as long as the
        server keeps the answer open. Raises :class:`KubeApiError`."""
        url = path + (f"?{urlencode(dict(query))}" if query else "")
        pool, headers, _ = self._connect()
        response = pool.urlopen(
            "GET",
            url,
            headers={**headers, "Accept": "*/*"},
            timeout=urllib3.Timeout(connect=10.0, read=read_timeout),
            retries=urllib3.Retry(total=3, connect=3, read=0, redirect=0, status=0),
            preload_content=False,
        )
        try:
            if response.status >= 400:
                text = response.read().decode("utf-8", "replace")
                raise KubeApiError(response.status, text, method="GET", path=path)
            pending = b""
            for chunk in response.stream(64 * 1024):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line + b"\n" for line in lines)
            if pending:
                yield pending
        finally:
            response.release_conn()

    # -- the calls the operator makes ----------------------------------------------------------

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``; None when it does not exist."""
        try:
            got: dict[str, Any] = self.request("GET", path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return got

    def list(self, path: str, query: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        listed = self.request("GET", path, query=query) or {}
        return list(listed.get("items") or [])

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.request(
            "POST", path, body=dict(body), query={"fieldManager": FIELD_MANAGER}
        )
        return created

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.request(
            "PATCH",
            path,
            body=dict(body),
            query={"fieldManager": FIELD_MANAGER},
            content_type=MERGE_PATCH,
        )
        return patched

    def delete(self, path: str) -> bool:
        """Delete the object at ``path``; False when it was already gone."""
        try:
            self.request("DELETE", path)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


def core_path(namespace: str, plural: str, name: str = "") -> str:
    """``/api/v1/namespaces/NS/PLURAL[/NAME]``."""
    base = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{base}/{quote(name, safe='')}" if name else base


def custom_path(group: str, version: str, namespace: str, plural: str, name: str = "") -> str:
    """``/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]``."""
    base = f"/apis/{group}/{version}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{base}/{quote(name, safe='')}" if name else base

"""The operator's Kubernetes client: credentials from a ServiceAccount or a kubeconfig, and
requests against a local HTTP server that answers as the API server would."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from proctor.cluster.client import (
    KubeApi,
    KubeApiError,
    LoginError,
    core_path,
    custom_path,
    in_cluster_login,
    kubeconfig_login,
    user_login,
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _kubeconfig(path: Path, user: dict[str, Any], **cluster: Any) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://k.example:6443", **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


# -- credentials -------------------------------------------------------------------------------


def test_in_cluster_login_reads_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "namespace").write_text("proctor-system")
    (tmp_path / "ca.crt").write_text("ca")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    info = in_cluster_login(directory=tmp_path, environ=env)
    assert info is not None
    assert info.server == "https://10.0.0.1:443"
    assert info.token == "tok-1"
    assert info.default_namespace == "proctor-system"
    assert info.ca_path == str(tmp_path / "ca.crt")


@pytest.mark.parametrize(
    ("env", "token"),
    [
        pytest.param({}, True, id="no service host"),
        pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, False, id="no token file"),
    ],
)
def test_in_cluster_login_is_none_outside_a_pod(
    tmp_path: Path, env: dict[str, str], token: bool
) -> None:
    if token:
        (tmp_path / "token").write_text("t")
    assert in_cluster_login(directory=tmp_path, environ=env) is None


def test_in_cluster_login_brackets_ipv6_hosts(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    info = in_cluster_login(directory=tmp_path, environ=env)
    assert info is not None
    assert info.server == "https://[fd00::1]:443"


@pytest.mark.parametrize(
    ("user", "expect"),
    [
        pytest.param({"token": "abc"}, {"token": "abc"}, id="token"),
        pytest.param(
            {"client-certificate-data": _b64("CERT"), "client-key-data": _b64("KEY")},
            {"certificate_data": _b64("CERT"), "private_key_data": _b64("KEY")},
            id="embedded client certificate",
        ),
        pytest.param(
            {"client-certificate": "certs/c.pem", "client-key": "/abs/k.pem"},
            {"certificate_path": "<dir>/certs/c.pem", "private_key_path": "/abs/k.pem"},
            id="certificate files, relative to the kubeconfig",
        ),
        pytest.param(
            {"username": "admin", "password": "pw"},
            {"username": "admin", "password": "pw"},
            id="basic auth",
        ),
        pytest.param({"tokenFile": "tok"}, {"token": "from-file"}, id="token file"),
    ],
)
def test_kubeconfig_login(tmp_path: Path, user: dict[str, Any], expect: dict[str, Any]) -> None:
    (tmp_path / "tok").write_text("from-file\n")
    path = _kubeconfig(tmp_path / "config", user, **{"certificate-authority-data": _b64("CA")})
    info = kubeconfig_login(environ={"KUBECONFIG": str(path)})
    assert info is not None
    assert info.server == "https://k.example:6443"
    assert info.ca_data == _b64("CA")
    assert info.default_namespace == "ns"
    for key, value in expect.items():
        want = value.replace("<dir>", str(tmp_path)) if isinstance(value, str) else value
        assert getattr(info, key) == want, key


def test_kubeconfig_login_runs_an_exec_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['spec']['cluster']['server'] == 'https://k.example:6443'\n"
        "print(json.dumps({'kind': 'ExecCredential', 'status': "
        "{'token': 'exec-' + os.environ['EXTRA']}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "env": [{"name": "EXTRA", "value": "ok"}],
        }
    }
    info = kubeconfig_login(environ={"KUBECONFIG": str(_kubeconfig(tmp_path / "c", user))})
    assert info is not None
    assert info.token == "exec-ok"


def test_kubeconfig_login_reports_a_failing_exec_plugin(tmp_path: Path) -> None:
    user = {"exec": {"command": sys.executable, "args": ["-c", "raise SystemExit('expired')"]}}
    path = _kubeconfig(tmp_path / "c", user)
    with pytest.raises(LoginError, match="exited 1: expired"):
        kubeconfig_login(environ={"KUBECONFIG": str(path)})


def test_kubeconfig_login_first_file_wins_and_missing_files_are_skipped(tmp_path: Path) -> None:
    first = _kubeconfig(tmp_path / "a", {"token": "first"})
    second = _kubeconfig(tmp_path / "b", {"token": "second"})
    joined = ":".join([str(tmp_path / "missing"), str(first), str(second)])
    info = kubeconfig_login(environ={"KUBECONFIG": joined})
    assert info is not None
    assert info.token == "first"


def test_kubeconfig_without_current_context_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text(yaml.safe_dump({"clusters": [], "users": [], "contexts": []}))
    with pytest.raises(LoginError, match="use-context"):
        kubeconfig_login(environ={"KUBECONFIG": str(path)})


def test_no_kubeconfig_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kubeconfig_login(environ={}) is None


def test_operator_process_never_imports_the_kubernetes_client() -> None:
    # kopf imports the client's models when it is installed; the operator keeps them out.
    code = (
        "import sys\n"
        "from proctor.cluster.client import keep_kubernetes_client_out\n"
        "keep_kubernetes_client_out()\n"
        "import proctor.controller.evalrun\n"
        "loaded = [m for m in sys.modules if m.startswith('kubernetes.')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- requests ----------------------------------------------------------------------------------


class FakeApiServer:
    """Records requests; answers from ``routes`` ((method, path) -> (status, body))."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.seen: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                outer.seen.append(
                    {
                        "method": self.command,
                        "path": path,
                        "query": query,
                        "headers": dict(self.headers),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                answers = outer.routes.get((self.command, path)) or [(404, {"message": "nf"})]
                status, body = answers.pop(0) if len(answers) > 1 else answers[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


def _api(server: FakeApiServer, tokens: list[str]) -> KubeApi:
    def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server.url, token=tokens.pop(0))

    return KubeApi(login, pool_size=2)


def test_requests_send_json_with_the_token_and_field_manager(fake_api: FakeApiServer) -> None:
    pods = core_path("ns", "pods")
    fake_api.routes[("POST", pods)] = [(201, {"metadata": {"name": "p", "uid": "u1"}})]
    status = custom_path("proctor.dev", "v1alpha1", "ns", "evalruns", "r") + "/status"
    fake_api.routes[("PATCH", status)] = [(200, {"status": {"phase": "Running"}})]
    api = _api(fake_api, ["t1"])
    created = api.create(pods, {"metadata": {"generateName": "w-"}})
    assert created["metadata"]["uid"] == "u1"
    api.merge_patch(status, {"status": {"phase": "Running"}})
    post, patch = fake_api.seen
    assert post["headers"]["Authorization"] == "Bearer t1"
    assert post["query"] == "fieldManager=proctor"
    assert post["body"] == {"metadata": {"generateName": "w-"}}
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    assert patch["path"] == "/apis/proctor.dev/v1alpha1/namespaces/ns/evalruns/r/status"
    api.close()


def test_missing_objects_are_none_or_false(fake_api: FakeApiServer) -> None:
    api = _api(fake_api, ["t"])
    assert api.get(core_path("ns", "secrets", "nope")) is None
    assert api.delete(core_path("ns", "pods", "gone")) is False


def test_errors_carry_the_status_and_the_servers_message(fake_api: FakeApiServer) -> None:
    pods = core_path("ns", "pods")
    message = 'pods "w" is forbidden: exceeded quota: q, requested: cpu=2'
    fake_api.routes[("POST", pods)] = [(403, {"kind": "Status", "message": message})]
    api = _api(fake_api, ["t"])
    with pytest.raises(KubeApiError) as caught:
        api.create(pods, {})
    assert caught.value.status == 403
    assert caught.value.message == message
    assert "exceeded quota" in caught.value.body


def test_a_401_logs_in_again_once(fake_api: FakeApiServer) -> None:
    path = core_path("ns", "secrets", "s")
    fake_api.routes[("GET", path)] = [(401, {"message": "expired"}), (200, {"data": {}})]
    api = _api(fake_api, ["old", "new"])
    assert api.get(path) == {"data": {}}
    assert [r["headers"]["Authorization"] for r in fake_api.seen] == [
        "Bearer old",
        "Bearer new",
    ]


def test_a_second_401_is_an_error(fake_api: FakeApiServer) -> None:
    path = core_path("ns", "secrets", "s")
    fake_api.routes[("GET", path)] = [(401, {"message": "Unauthorized"})]
    api = _api(fake_api, ["a", "b"])
    with pytest.raises(KubeApiError, match="401 Unauthorized"):
        api.get(path)


def test_user_login_picks_the_named_context(tmp_path: Path) -> None:
    """``--context`` chooses another context of the kubeconfig (its cluster, user and
    namespace), as kubectl's does; the current one is the default."""
    path = _kubeconfig(tmp_path / "config", {"token": "t-current"})
    doc = yaml.safe_load(path.read_text())
    doc["clusters"].append({"name": "c2", "cluster": {"server": "https://other.example"}})
    doc["users"].append({"name": "u2", "user": {"token": "t-other"}})
    doc["contexts"].append({"name": "ctx2", "context": {"cluster": "c2", "user": "u2"}})
    path.write_text(yaml.safe_dump(doc))
    current = user_login(kubeconfig=str(path))
    assert (current.server, current.token, current.default_namespace) == (
        "https://k.example:6443",
        "t-current",
        "ns",
    )
    other = user_login(kubeconfig=str(path), context="ctx2")
    assert (other.server, other.token, other.default_namespace) == (
        "https://other.example",
        "t-other",
        None,
    )
    with pytest.raises(
        LoginError, match=r"context 'nope' is not in kubeconfig .* \(contexts: ctx, ctx2\)"
    ):
        user_login(kubeconfig=str(path), context="nope")

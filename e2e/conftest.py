"""Fixtures for end-to-end tests against the real local control plane.

`cluster` (session) reuses a cluster started by hand with `e2e/cluster up`
(in the default state dir) and leaves it running; otherwise it builds (or
reuses the cached binaries) and starts one in a state dir of its own, and
stops it at the end (PROCTOR_E2E_KEEP_CLUSTER=1 keeps it, for inspection).
For the session, KUBECONFIG and PROCTOR_CLUSTER_DIR point at that cluster.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from e2e.harness import cluster as cluster_mod
from e2e.harness import services
from e2e.harness.crds import apply_crds, repo_crds
from e2e.harness.image import Image, ImageError
from e2e.harness.image import build as build_image

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs the local control plane (e2e/cluster)")


class Cluster:
    """A running local control plane and an admin client for it."""

    def __init__(self, state: cluster_mod.ClusterState) -> None:
        self.state = state
        self.kubeconfig = Path(state.kubeconfig)
        self.state_dir = Path(state.dir)
        self.api_client: Any = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core: Any = client.CoreV1Api(self.api_client)


@pytest.fixture(scope="session")
def image() -> Image:
    """The engine-free image of the current sources (e2e/build-image; a no-op when e2e/setup
    built it). Pods labelled ``e2e.proctor.dev/run: <image.label>`` run inside its rootfs."""
    if os.geteuid() != 0:
        pytest.fail(
            "the image tests build a rootfs (mmdebstrap) and run pods in it (mount namespace, "
            "chroot): run them as root, as CI does"
        )
    try:
        return build_image()
    except ImageError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    default = cluster_mod.default_state_dir()
    running = cluster_mod.status(default)
    if running is not None:
        with _pointing_at(running):
            yield Cluster(running)
        return
    # A cluster of our own gets its own state dir (unless one was named), so
    # that two test sessions never stop each other's cluster.
    if "PROCTOR_CLUSTER_DIR" in os.environ:
        directory = default
    else:
        directory = default.parent / f"cluster-pytest-{os.getpid()}"
    state = cluster_mod.up(directory, do_build=True)
    try:
        with _pointing_at(state):
            yield Cluster(state)
    finally:
        if os.environ.get("PROCTOR_E2E_KEEP_CLUSTER") != "1":
            cluster_mod.down(directory)


@contextlib.contextmanager
def _pointing_at(state: cluster_mod.ClusterState) -> Iterator[None]:
    """Point KUBECONFIG and PROCTOR_CLUSTER_DIR at the cluster for the session.

    Code under test (an operator, `read_log` without a state dir) then finds it.
    """
    saved = {k: os.environ.get(k) for k in ("KUBECONFIG", "PROCTOR_CLUSTER_DIR")}
    os.environ["KUBECONFIG"] = state.kubeconfig
    os.environ["PROCTOR_CLUSTER_DIR"] = state.dir
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def core(cluster: Cluster) -> Any:
    return cluster.core


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(
        {"metadata": {"name": name, "labels": {"e2e.proctor.dev/test": "true"}}}
    )
    # The ServiceAccount controller creates `default` asynchronously; pods need it.
    for _ in range(100):
        try:
            cluster.core.read_namespaced_service_account("default", name)
            break
        except ApiException:
            time.sleep(0.1)
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            cluster.core.delete_namespace(name)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[dict[str, Any]]:
    """Proctor's CRDs from crds/, applied and Established."""
    docs = repo_crds()
    apply_crds(cluster.api_client, docs)
    return docs


@pytest.fixture
def redis_server() -> Iterator[str]:
    """A fresh redis-server per test; yields its redis:// URL."""
    with services.redis_server() as svc:
        yield svc.url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One moto server (S3, SQS) per session; yields its endpoint URL."""
    with services.moto_server() as svc:
        yield svc.url

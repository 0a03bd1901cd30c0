"""The operator's /metrics during and after a real run: the per-run series the dashboard and the
alert rules read exist in a live scrape and follow the run's status; a (suspended)
BenchmarkSuite beside it has its per-suite series, and the build is reported."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.harness.operator import GROUP, VERSION
from e2e.harness.poll import wait_until
from e2e.harness.promql import dashboard_exprs, metric_names, rules
from e2e.test_operator import Env, env  # the same namespace, Secrets, bucket and nodes
from proctor import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
__all__ = ["env"]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def suspended_suite(env: Env, name: str) -> dict[str, Any]:
    """A BenchmarkSuite that never runs (suspend), on the test's queue and storage."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BenchmarkSuite",
        "metadata": {"name": name},
        "spec": {
            "image": "proctor/proctor:0.1.0",
            "benchmarks": [{"name": "true", "command": ["true"], "repetitions": 3}],
            "variants": [{"name": "a"}, {"name": "b"}],
            "queue": {"type": "redis", "secretRef": {"name": "queue"}},
            "storage": {
                "uri": f"s3://{env.bucket}/suites",
                "endpoint": env.moto,
                "region": "us-east-1",
                "secretRef": {"name": "s3"},
            },
            "suspend": True,
        },
    }


def test_per_run_series_follow_the_run(env: Env) -> None:
    env.node(cpu="4", memory="8Gi")
    run = {"namespace": env.namespace, "run": "metrics"}
    suite = {"namespace": env.namespace, "suite": "metrics-suite"}
    count = 1500
    with env.operator() as op:
        env.create(env.evalrun("metrics", count=count))
        env.custom.create_namespaced_custom_object(
            GROUP, VERSION, env.namespace, "benchmarksuites", suspended_suite(env, suite["suite"])
        )

        def running() -> dict[Any, float] | None:
            try:
                s = scrape(op.metrics_port)
            except (urllib.error.URLError, ConnectionError):
                return None  # the operator has not started serving /metrics yet
            desired = value(s, "proctor_operator_desired_workers", **run)
            return s if desired and desired > 0 else None

        live = wait_until(running, timeout=120, what="desired workers > 0 in /metrics")
        assert value(live, "proctor_operator_run_stalled", **run) == 0.0
        assert value(live, "proctor_operator_disruptions_total", **run) == 0.0
        assert (value(live, "proctor_operator_planned_workers", **run) or 0) > 0

        status = env.wait_phase("metrics", "Succeeded", timeout=240)
        assert status["counts"]["completed"] == count

        def settled() -> dict[Any, float] | None:
            s = scrape(op.metrics_port)
            done = value(s, "proctor_operator_progress_ratio", **run) == 1.0
            return s if done and value(s, "proctor_operator_ready_workers", **run) == 0 else None

        final = wait_until(settled, timeout=60, what="progress 1.0 and no workers in /metrics")
        assert value(final, "proctor_operator_completed_cases", **run) == count
        assert value(final, "proctor_operator_cases_per_second", **run) == 0.0
        assert value(final, "proctor_operator_desired_workers", **run) == 0.0
        assert value(final, "proctor_operator_backlog_batches", **run) == 0.0
        assert value(final, "proctor_operator_runs", phase="Succeeded") == 1.0
        assert value(final, "proctor_operator_suites", phase="Suspended") == 1.0
        assert value(final, "proctor_operator_suite_ready_pods", **suite) == 0.0
        assert value(final, "proctor_operator_suite_disruptions_total", **suite) == 0.0
        builds = [labels for name, labels in final if name == "proctor_build_info"]
        assert [dict(b)["version"] for b in builds] == [__version__]

        # Every operator series the rules and the dashboard read is in a real scrape.
        scraped = {name for name, _ in final}
        used = {
            name
            for expr in [r["expr"] for r in rules()] + dashboard_exprs()
            for name in metric_names(expr)
            if name.startswith("proctor_operator_")
        }
        assert used <= scraped, f"not in the operator's /metrics: {sorted(used - scraped)}"

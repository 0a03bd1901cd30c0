"""Finding 9 of issue 15: credentials never appear in an error, log, Event or status."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from proctor import redact
from proctor.api.conditions import Event
from proctor.cluster.writes import event_object
from proctor.logging import configure_logging

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "manifests" / "samples" / "quickstart.yaml"


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    redact.forget_secrets()
    yield
    redact.forget_secrets()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:S3CRETpw@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
        ("redis://user:S3CRETpw@redis.svc:6379/2", "redis://***@redis.svc:6379/2"),
        ("rediss://tok3n@redis.svc", "rediss://***@redis.svc"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=abcd&X-Amz-Date=1",
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ("sqs://host?region=us-east-1&token=zzzz", "sqs://host?region=us-east-1&token=***"),
        ("https://h/x?password=p%40ss&page=2", "https://h/x?password=***&page=2"),
        ("https://h/x?api_key=k", "https://h/x?api_key=***"),
        ("redis://:ab/c?d#e@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://:S3CRET@h:1/0:", "redis://***@h:1/0:"),
    ],
)
def test_finding9_redact_url(url: str, expected: str) -> None:
    assert redact.redact_url(url) == expected


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("cannot reach Redis at redis://:S3CRETpw@127.0.0.1:1/0: refused", "S3CRETpw"),
        ("queue='redis://u:S3CRETpw@h:1/0'", "S3CRETpw"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI rest", "wJalrXUtnFEMI"),
        ("token: abcdef123 and more", "abcdef123"),
        ("url (https://h/o?X-Amz-Security-Token=FQoG) failed", "FQoG"),
    ],
)
def test_finding9_redact_text_masks_credentials(text: str, secret: str) -> None:
    out = redact.redact_text(text)
    assert secret not in out
    assert redact.MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "passed=5 failed=2 passRate=0.9",
        "queue=redis://127.0.0.1:6379/0 storage=s3://b/runs",
        "error: cannot reach the node; retry in 5s",
        "reason: SecretNotFound",
    ],
)
def test_finding9_redact_text_keeps_plain_text(text: str) -> None:
    assert redact.redact_text(text) == text


@pytest.mark.parametrize(
    ("data", "scrubbed", "kept"),
    [
        ({"url": "redis://:hunter22@redis:6379/0"}, {"hunter22"}, {"redis:6379"}),
        (
            {"AWS_ACCESS_KEY_ID": "AKIAXX", "AWS_SECRET_ACCESS_KEY": "wJal/rX+U"},
            {"AKIAXX", "wJal/rX+U", "wJal%2FrX%2BU"},
            set(),
        ),
        ({"region": "us-east-1", "endpoint": "http://sqs:9324"}, set(), {"us-east-1"}),
        ({"url": "redis://:p%40ssword@h/0"}, {"p@ssword", "p%40ssword"}, {"h/0"}),
        (
            {"url": "redis://admin:wJal/rX?Y@h:1/0"},
            {"wJal/rX?Y", "admin:wJal/rX?Y"},
            {"h:1/0", "admin"},
        ),
    ],
)
def test_finding9_remembered_secret_values_are_scrubbed(
    data: dict[str, str], scrubbed: set[str], kept: set[str]
) -> None:
    redact.remember_secret_data(data)
    for value in scrubbed | kept:
        out = redact.redact_text(f"ConnectionError: failed near {value} (x)")
        assert (value in out) == (value in kept), (value, out)


def test_finding9_event_messages_are_redacted() -> None:
    redact.remember_secret_data({"url": "redis://:S3CRETpw@10.0.0.1:6379/0"})
    body = {"apiVersion": "proctor.dev/v1alpha1", "kind": "EvalRun", "metadata": {"name": "r"}}
    message = "a reconcile pass failed: QueueError: auth S3CRETpw at redis://:S3CRETpw@10.0.0.1"
    obj = event_object(body, Event("Warning", "ReconcileError", message))
    assert "S3CRETpw" not in obj["message"]
    assert "10.0.0.1" in obj["message"]


def test_finding9_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt="json", level="info")
    structlog.reset_defaults()  # cached loggers from other tests would skip the new chain
    configure_logging(fmt="json", level="info")
    structlog.get_logger("t").info("worker started", queue="redis://:S3CRETpw@h:1/0")
    logging.getLogger("kopf.test").warning("failed: %s", "redis://:S3CRETpw@h:1/0")
    try:
        raise RuntimeError("redis://:S3CRETpw@h:1/0 refused")
    except RuntimeError:
        structlog.get_logger("t").exception("pass failed")
    err = capsys.readouterr().err
    assert "S3CRETpw" not in err
    first = json.loads(err.splitlines()[0])
    assert first["queue"] == "redis://***@h:1/0"


def test_finding9_proctor_run_error_hides_queue_password(tmp_path: Path) -> None:
    env = {**os.environ, "PROCTOR_LOG_FORMAT": "console"}
    out = subprocess.run(
        [sys.executable, "-m", "proctor", "run", str(QUICKSTART), "--workers", "1",
         "--queue", "redis://:S3CRETpw@127.0.0.1:1/0", "--results-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "cannot reach Redis" in out.stdout + out.stderr
    assert "S3CRETpw" not in out.stdout
    assert "S3CRETpw" not in out.stderr


@pytest.mark.parametrize(
    ("environ", "scrubbed", "kept"),
    [
        (
            {
                "PROCTOR_QUEUE_URL": "redis://:qpw-123@redis:6379/0",
                "AWS_SECRET_ACCESS_KEY": "wJalrXUtn/K7",
                "AWS_SESSION_TOKEN": "FQoGZXIvYXdzE",
                "GITHUB_TOKEN": "ghp_abcdef",
            },
            {"qpw-123", "wJalrXUtn/K7", "FQoGZXIvYXdzE", "ghp_abcdef"},
            {"redis:6379"},
        ),
        (
            {"PROCTOR_STORAGE_URI": "s3://bucket/runs", "HOME": "/home/app", "LANG": "C.UTF-8"},
            set(),
            {"s3://bucket/runs", "/home/app", "C.UTF-8"},
        ),
    ],
)
def test_finding9_the_processes_own_credentials_are_scrubbed(
    environ: dict[str, str], scrubbed: set[str], kept: set[str]
) -> None:
    redact.remember_environment(environ)
    for value in scrubbed | kept:
        out = redact.redact_text(f"redis.exceptions.AuthenticationError: {value} rejected")
        assert (value in out) == (value in kept), (value, out)

"""Dependencies resolve to real releases and generated docs stay current."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from proctor.api import docgen

ROOT = Path(__file__).resolve().parents[1]


def _major_minor(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def test_boto3_is_a_real_release() -> None:
    # An unpinned kubernetes>=37 drags python-dateutil>=3, which makes pip fall back to the
    # placeholder boto3 0.0.3. The floor in pyproject prevents it; this proves it held.
    assert _major_minor(version("boto3")) >= (1, 34)
    assert _major_minor(version("botocore")) >= (1, 34)


def test_kubernetes_client_below_37() -> None:
    assert _major_minor(version("kubernetes"))[0] < 37


def test_api_docs_are_current() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == docgen.render(), (
        "docs/api.md drifted: run `python -m proctor.api.docgen > docs/api.md`"
    )

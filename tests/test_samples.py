"""Every sample validates; every invalid sample fails with the error it documents."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "manifests" / "samples"
VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def expectation(path: Path) -> tuple[str, str]:
    """The field and message an invalid sample documents in its header."""
    text = path.read_text()
    field = re.search(r"^# expect-field: (.+)$", text, re.M)
    message = re.search(r"^# expect-message: (.+)$", text, re.M)
    assert field, f"{path} lacks an expect-field comment"
    assert message, f"{path} lacks an expect-message comment"
    return field.group(1).strip(), message.group(1).strip()


def proctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proctor", *args], capture_output=True, text=True, check=False
    )


def test_there_are_samples() -> None:
    assert len(VALID) >= 3
    assert len(INVALID) >= 5


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_valid_sample(path: Path) -> None:
    result = proctor("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_sample(path: Path) -> None:
    field, message = expectation(path)
    result = proctor("validate", str(path))
    assert result.returncode == 1
    assert field in result.stderr
    assert message in result.stderr


def test_validate_reports_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = proctor("validate", str(missing))
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_validate_reports_bad_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: EvalRun\nspec: [unclosed\n")
    result = proctor("validate", str(bad))
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr


def test_crds_command_reproduces_the_files() -> None:
    result = proctor("crds")
    assert result.returncode == 0
    expected = "---\n".join(
        (ROOT / "crds" / name).read_text()
        for name in ("proctor.dev_evalruns.yaml", "proctor.dev_benchmarksuites.yaml")
    )
    assert result.stdout == expected

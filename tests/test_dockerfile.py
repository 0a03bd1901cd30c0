"""The container image's Dockerfile, checked without a container engine: hadolint where it is
installed; otherwise (and also) the parsed instructions: a non-root numeric USER, pinned bases, a
wheel built in a builder stage, exact pins that cover every runtime dependency, entrypoint
commands that exist in the CLI, and the image name the manifests use."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from proctor.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"proctor/proctor:{VERSION}"
UID = 10001
COMMANDS = ("operator", "worker", "bench-worker")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    heredoc: str = ""


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions: continuation lines joined, comments dropped, heredoc bodies
    (``<<NAME`` ... ``NAME``) attached to their instruction."""
    out: list[Instruction] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        keyword, _, args = line.strip().partition(" ")
        body = ""
        marker = re.search(r"<<-?[\"']?(\w+)[\"']?", args)
        if marker:
            end = lines.index(marker.group(1), i)
            body = "\n".join(lines[i:end]) + "\n"
            i = end + 1
        out.append(Instruction(keyword.upper(), args.strip(), body))
    return out


INSTRUCTIONS = parse(DOCKERFILE.read_text())


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in INSTRUCTIONS:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for ins in INSTRUCTIONS:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name] = value
    return defaults


def pins() -> dict[str, str]:
    bodies = [ins.heredoc for ins in INSTRUCTIONS if "constraints.txt" in ins.args and ins.heredoc]
    assert len(bodies) == 1, "one heredoc writes /build/constraints.txt"
    found: dict[str, str] = {}
    for line in bodies[0].splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9_.+\-]*)", line.strip())
        assert match, f"constraints line {line!r} is not name==version"
        name = canonicalize_name(match.group(1))
        assert name not in found, f"{name} pinned twice"
        found[name] = match.group(2)
    return found


def runtime_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    return [
        Requirement(r)
        for r in project["dependencies"] + project["optional-dependencies"]["metamorphic-guard"]
    ]


def test_hadolint_if_installed() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed; the parsed checks below still run")
    done = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_parse_joins_continuations_and_reads_heredocs() -> None:
    text = "# c\nFROM a:1 AS b\nRUN x \\\n  && y\nCOPY <<EOF /f\nl1\nl2\nEOF\nUSER 1\n"
    assert parse(text) == [
        Instruction("FROM", "a:1 AS b"),
        Instruction("RUN", "x  && y"),
        Instruction("COPY", "<<EOF /f", "l1\nl2\n"),
        Instruction("USER", "1"),
    ]


def test_multi_stage_wheel_built_in_the_builder() -> None:
    builder, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert builder[0].args.endswith(" AS builder")
    builder_runs = " ".join(i.args for i in builder if i.keyword == "RUN")
    assert "pip wheel" in builder_runs
    assert "--no-build-isolation" in builder_runs, "build tools are the pinned ones"
    assert not any(i.keyword == "RUN" for i in final), "the final stage only copies"
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/proctor /opt/proctor"]


def test_bases_are_pinned_and_never_latest() -> None:
    defaults = arg_defaults()
    for stage in stages():
        image = stage[0].args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert "@sha256:" in image or re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), (
            f"base {image!r}: pin an exact version tag (x.y.z) or a digest"
        )
        assert not image.endswith(":latest")
    assert "latest" not in DOCKERFILE.read_text().replace("# ", "")


def test_base_python_matches_the_supported_and_type_checked_version() -> None:
    base = arg_defaults()["PYTHON_IMAGE"]
    minor = re.search(r"python:(\d+\.\d+)\.", base)
    assert minor is not None
    assert minor.group(1) == PYPROJECT["tool"]["mypy"]["python_version"]
    assert PYPROJECT["project"]["requires-python"] == f">={minor.group(1)}"


def test_final_user_is_numeric_non_root() -> None:
    users = [i.args for i in stages()[-1] if i.keyword == "USER"]
    assert users == [f"{UID}:{UID}"], "Kubernetes' runAsNonRoot can only verify a numeric user"


def test_reproducible_build_settings() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG SOURCE_DATE_EPOCH" in text
    assert "PIP_NO_CACHE_DIR=1" in text
    assert "--invalidation-mode unchecked-hash" in text, "pyc files without timestamps"
    assert not any(i.keyword == "ADD" for i in INSTRUCTIONS), "ADD fetches unpinned content"
    assert "setuptools==" in text
    assert "wheel==" in text


def test_every_runtime_dependency_is_pinned_within_pyproject() -> None:
    pinned = pins()
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} from pyproject.toml has no pin in the Dockerfile"
        assert req.specifier.contains(Version(pinned[name])), (
            f"pin {name}=={pinned[name]} is outside pyproject's {req}"
        )
    assert list(pinned) == sorted(pinned), "keep the pins sorted"


def test_pins_cover_every_transitive_dependency() -> None:
    """For pins installed here at the same version, their own requirements are pinned too
    (the build also runs ``pip check``)."""
    pinned = pins()
    env = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
    checked = 0
    for name, version in pinned.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pinned, f"{name} needs {req}, which the Dockerfile does not pin"
            assert req.specifier.contains(Version(pinned[dep]), prereleases=True), (
                f"{name} needs {req}; the Dockerfile pins {dep}=={pinned[dep]}"
            )
    assert checked >= len(pinned) // 2, (
        "most pins differ from this environment's versions: regenerate them from "
        "`pip freeze` of an environment with `pip install .[metamorphic-guard]`"
    )


def test_entrypoint_commands_exist() -> None:
    entry = [i.args for i in stages()[-1] if i.keyword == "ENTRYPOINT"]
    assert entry == ['["proctor"]']
    assert PYPROJECT["project"]["scripts"]["proctor"] == "proctor.cli:main"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices: Any = sub.choices
    for command in COMMANDS:
        assert command in choices, f"proctor {command} is not a CLI command"
    done = subprocess.run(
        [sys.executable, "-m", "proctor", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"},
    )
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s", done.stdout, re.M), done.stdout


def test_image_name_matches_manifests_and_chart() -> None:
    labels = " ".join(i.args for i in stages()[-1] if i.keyword == "LABEL")
    assert f'org.opencontainers.image.version="{VERSION}"' in labels
    install = list(yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()))
    deployments = [d for d in install if d and d["kind"] == "Deployment"]
    assert deployments, "manifests/install.yaml has no Deployment"
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        for c in pod["containers"]:
            assert c["image"] == IMAGE, f"{c['name']} runs {c['image']}, the image is {IMAGE}"
            assert c["command"][0] == "proctor"
            assert c["command"][1] in COMMANDS
        assert pod["securityContext"]["runAsUser"] == UID
    for sample in (ROOT / "manifests" / "samples").glob("*.yaml"):
        for image in re.findall(r"image: (proctor/proctor:\S+)", sample.read_text()):
            assert image == IMAGE, f"{sample.name} uses {image}"
    chart = yaml.safe_load((ROOT / "charts" / "proctor" / "Chart.yaml").read_text())
    assert str(chart["appVersion"]) == VERSION, "the chart's default image tag is appVersion"
    values = (ROOT / "charts" / "proctor" / "values.yaml").read_text()
    assert re.search(r"repository:\s*\"?proctor/proctor\"?", values), "chart image repository"


def test_dockerignore_lets_through_exactly_what_copy_needs() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, "ignore everything by default"
    sources = set()
    for ins in INSTRUCTIONS:
        if ins.keyword == "COPY" and not ins.args.startswith(("--from", "<<")):
            sources.update(ins.args.split()[:-1])
    assert sources == allowed

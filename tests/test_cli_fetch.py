"""``proctor results|report|logs NAME`` and the one exit-code table of the cluster commands:
the table itself (one meaning per code, the docs print it, every command's --help lists its
own), where a run's storage is and whose credentials read it, the cases not evaluated counted
apart, which pods ``logs`` reads, and the errors without a cluster (issue 19). The commands
against a real control plane are in e2e/test_cli_fetch.py."""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proctor.cli import context, main, views
from proctor.cli.context import Target
from proctor.cli.logs import prefixed, select
from proctor.cli.main import build_parser
from proctor.cli.results import root_before, summary
from proctor.cli.storage_access import Location, location, open_store, unreadable, use_own
from proctor.cluster.client import KubeApi, KubeApiError
from proctor.ranges import Range
from proctor.sdk.records import case_record, side_record
from proctor.storage import LocalBlobs, RunStorage

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_COMMANDS = ("get", "status", "watch", "plan", "cancel", "results", "report", "logs")


# -- the exit codes ----------------------------------------------------------------------------


def test_one_meaning_per_exit_code() -> None:
    codes = [code for code, _ in context.EXIT_CODES]
    assert codes == sorted(set(codes))
    # watch's codes by the final phase are the table's (and proctor run's where they meet).
    assert views.EXIT_SUCCEEDED == context.EXIT_OK
    assert views.EXIT_REJECTED == context.EXIT_NO
    assert views.EXIT_UNDECIDED == context.EXIT_UNDECIDED
    assert views.EXIT_FAILED == context.EXIT_FAILED
    assert views.EXIT_CANCELLED == context.EXIT_CANCELLED


def _docs_table(heading: str) -> dict[int, str]:
    text = (REPO_ROOT / "docs" / "cli.md").read_text()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE)
    }


def test_docs_print_the_exit_code_table() -> None:
    documented = _docs_table("### Exit codes")
    assert sorted(documented) == [code for code, _ in context.EXIT_CODES]
    # proctor run's codes stay as they were: 0 to 3 mean the same for watch.
    run = _docs_table("### `proctor run`")
    assert set(run) == {0, 1, 2, 3, 130}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert all(helps.get(name) for name in sub.choices), helps
    return dict(sub.choices)


def test_every_subcommand_has_help_and_the_cluster_ones_their_exit_codes() -> None:
    commands = _subcommands()
    for name, parser in commands.items():
        assert parser.description, name
        assert parser.epilog, name
        assert "exit codes" in parser.epilog, name
    for name in CLUSTER_COMMANDS:
        listed = re.findall(r"^  (\d+) ", commands[name].epilog or "", re.MULTILINE)
        assert str(context.EXIT_NO_ACCESS) in listed, name
        assert {int(c) for c in listed} <= {c for c, _ in context.EXIT_CODES} | {3, 4}, name


def kubeconfig(path: Path) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "here",
        "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t0ken-value"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("command", ["results", "report", "logs", "cancel"])
def test_no_cluster_is_exit_7_for_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    config = kubeconfig(tmp_path / "config")
    assert main([command, "quick", "--kubeconfig", config]) == context.EXIT_NO_ACCESS
    err = capsys.readouterr().err
    assert "the API server http://127.0.0.1:9 cannot be reached" in err
    assert "t0ken-value" not in err
    assert main([command, "quick", "--kubeconfig", str(tmp_path / "none")]) == 7
    assert "no such file" in capsys.readouterr().err


def test_results_of_a_name_refuses_the_options_of_a_local_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path / "config")
    assert main(["results", "quick", "--run-id", "x", "--kubeconfig", config]) == 2
    assert "for a run of proctor run (FILE.yaml)" in capsys.readouterr().err


# -- where the storage is, whose credentials -------------------------------------------------


def run_body(storage: dict[str, Any] | None, results_uri: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "quick", "namespace": "team", "uid": "u-1"},
        "spec": {"storage": storage} if storage else {},
        "status": {"result": {"resultsUri": results_uri}} if results_uri else {},
    }


@pytest.mark.parametrize(
    ("storage", "results_uri", "expected"),
    [
        (
            {"uri": "s3://b/runs", "endpoint": "http://s3", "secretRef": {"name": "s3"}},
            None,
            Location("s3://b/runs", "http://s3", None, "s3"),
        ),
        (
            {"uri": "s3://b/runs", "region": "eu-west-1"},
            None,
            Location("s3://b/runs", None, "eu-west-1", None),
        ),
        (
            None,
            "s3://default/pre/u-1/results.parquet",
            Location("s3://default/pre", None, None, None),
        ),
        (None, None, None),
    ],
    ids=["spec with Secret", "spec without Secret", "the operator's default", "not yet known"],
)
def test_location(
    storage: dict[str, Any] | None, results_uri: str | None, expected: Location | None
) -> None:
    body = run_body(storage, results_uri)
    assert location(body, root_before(results_uri, "u-1")) == expected


@pytest.mark.parametrize(
    ("flags", "secret", "own"),
    [
        ({}, "s3", False),
        ({"my_credentials": True}, "s3", True),
        ({"profile": "me"}, "s3", True),
        ({}, None, True),
    ],
    ids=["the run's Secret wins by default", "--my-credentials", "--profile", "no Secret"],
)
def test_whose_credentials(flags: dict[str, Any], secret: str | None, own: bool) -> None:
    args = argparse.Namespace(**{"my_credentials": False, "profile": None, **flags})
    assert use_own(args, Location("s3://b/p", None, None, secret)) is own


class SecretApi(KubeApi):
    """The API server of a user who may, or may not, read the run's Secret."""

    def __init__(self, status: int | None) -> None:
        super().__init__(login=lambda: pytest.fail("no login"))
        self.status = status

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        assert (method, path) == ("GET", "/api/v1/namespaces/team/secrets/s3")
        if self.status is not None:
            raise KubeApiError(self.status, json.dumps({"message": "secrets is forbidden"}))
        keys = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
        return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}}


def test_the_runs_secret_signs_and_a_forbidden_one_falls_back_to_yours(
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = Location("s3://b/runs", "http://127.0.0.1:9", None, "s3")
    args = argparse.Namespace(my_credentials=False, profile=None, endpoint=None)
    blobs, whose = open_store(Target(SecretApi(None), "team"), args, where)
    assert whose == "the run's Secret s3"
    assert blobs.client._request_signer._credentials.access_key == "AKIAEXAMPLE"  # type: ignore[attr-defined]
    assert "s3cr3t-value" not in str(unreadable("s3://b/runs", whose, ValueError("s3cr3t-value")))
    _, whose = open_store(Target(SecretApi(403), "team"), args, where)
    assert whose == "your own AWS credentials"
    assert "note: no permission to read Secret s3" in capsys.readouterr().err
    with pytest.raises(context.CommandError) as err:
        open_store(Target(SecretApi(401), "team"), args, where)
    assert err.value.code == context.EXIT_NO_ACCESS


def test_root_before() -> None:
    assert root_before("s3://b/p/ns/nap/r1/report.html", "ns/nap") == "s3://b/p"
    assert root_before("s3://b/p/u-1/results/", "u-1") == "s3://b/p"
    assert root_before("s3://b/p/other/results/", "u-1") is None
    assert root_before(None, "u-1") is None


# -- cases not evaluated, counted apart --------------------------------------------------------


def _record(i: int) -> dict[str, Any]:
    if i < 4:  # the dataset row cannot be read: no side is to blame
        bad = side_record([], f"ValueError: row {i} is not JSON", "badInput")
        return case_record(i, [bad, bad], 1.0)
    if i < 6:  # both sides errored
        err = side_record([], "RuntimeError: boom", "exception")
        return case_record(i, [err, err], 1.0)
    violations = ["sorted"] if i % 10 == 0 else []
    return case_record(i, [side_record([], None), side_record(violations, None)], 1.0)


def test_summary_counts_cases_not_evaluated_apart(tmp_path: Path) -> None:
    storage = RunStorage(LocalBlobs(tmp_path), "run")
    storage.write_results(Range(0, 50), [_record(i) for i in range(50)])
    storage.write_results(Range(50, 80), [_record(i) for i in range(50, 80)])
    storage.write_dead_letter(Range(80, 90), 3, "the worker crashed on every delivery")
    data = summary(storage, total=100)
    assert data["recorded"] == 80
    assert data["evaluated"] == 74  # 4 unreadable rows and 2 cases both sides errored are not
    assert data["errored"] == 0
    assert data["failed"] == 7  # 10, 20, ..., 70
    assert data["passed"] + data["failed"] + data["errored"] == data["evaluated"]
    reasons = {r["reason"]: r["cases"] for r in data["notEvaluated"]}
    assert reasons == {
        "dead-lettered after 3 deliveries: the worker crashed on every delivery": 10,
        "no record: not run (cancelled, stopped early or still running)": 10,
        "both sides errored (baseline exception, candidate exception)": 2,
        "badInput: the dataset row cannot be read: ValueError: row 0 is not JSON": 1,
        "badInput: the dataset row cannot be read: ValueError: row 1 is not JSON": 1,
        "badInput: the dataset row cannot be read: ValueError: row 2 is not JSON": 1,
        "badInput: the dataset row cannot be read: ValueError: row 3 is not JSON": 1,
    }
    assert data["firstFailing"][:2] == [0, 1]  # errored cases did not pass either
    json.dumps(data)


def test_results_prints_the_cases_not_evaluated_under_the_evaluated_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        "apiVersion: proctor.dev/v1alpha1\nkind: EvalRun\nmetadata: {name: run}\n"
        "spec:\n  image: x\n  task: {entrypoint: proctor.examples.topk:task}\n"
        "  cases: {count: 100}\n"
    )
    storage = RunStorage(LocalBlobs(tmp_path / "proctor-results"), "run")
    storage.write_results(Range(0, 80), [_record(i) for i in range(80)])
    storage.write_dead_letter(Range(80, 90), 3, "crashed")
    argv = ["results", str(manifest), "--results-dir", str(tmp_path / "proctor-results")]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  74 evaluated: 67 passed, 7 failed, 0 errored"
    assert out[2] == "not evaluated: 16 cases (not counted above)"
    assert out[3] == "  10  dead-lettered after 3 deliveries: crashed"
    assert out[4] == "   2  both sides errored (baseline exception, candidate exception)"
    assert out[8] == "   1  1 more reason(s)"


# -- logs ----------------------------------------------------------------------------------------


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "worker"}]}}


def test_logs_select_pods_by_name_or_suffix() -> None:
    pods = [pod("quick-abc12"), pod("quick-def34"), pod("quick-ghi56")]
    assert select(pods, None, "quick") == pods
    assert select(pods, ["def34", "quick-ghi56"], "quick") == pods[1:]
    assert select(pods, ["nope"], "quick") == []


def test_logs_prefix_each_line_with_its_pod() -> None:
    lines = [b"worker started\n", b"caf\xc3\xa9 [bold]\n", b"last"]
    assert list(prefixed("quick-abc12", lines)) == [
        "[quick-abc12] worker started",
        "[quick-abc12] café [bold]",
        "[quick-abc12] last",
    ]

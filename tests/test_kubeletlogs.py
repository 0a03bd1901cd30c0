"""The e2e pod runner's container logs (e2e/harness/kubeletlogs.py): recorded from a real
process's pipes with the time each line arrived, and read back as the kubelet answers
``/containerLogs`` (tailLines, sinceSeconds, sinceTime, timestamps, previous)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.harness.kubeletlogs import (
    MAX_LINE,
    Query,
    Recorder,
    instance_log,
    parse_time,
    pick,
    rfc3339_nano,
    split_entries,
)

SCRIPT = (
    "import sys, time\n"
    "print('one', flush=True)\n"
    "time.sleep(0.3)\n"  # two pipes, two readers: apart in time, their order is known
    "print('two', file=sys.stderr, flush=True)\n"
    "time.sleep(0.5)\n"
    "print('three', flush=True)\n"
    "sys.stdout.write('no newline')\n"
)


def run(folder: Path, instance: int, script: str = SCRIPT) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    recorder = Recorder(folder, instance, proc.stdout, proc.stderr)
    proc.wait(timeout=30)
    recorder.close()


def test_times_and_streams_are_recorded_as_a_container_runtime_does(tmp_path: Path) -> None:
    before = time.time_ns()
    run(tmp_path, 0)
    entries = instance_log(tmp_path, 0).read_bytes().splitlines(keepends=True)
    parsed = [e.rstrip(b"\n").split(b" ", 3) for e in entries]
    assert [(s, t, x) for _, s, t, x in parsed] == [
        (b"stdout", b"F", b"one"),
        (b"stderr", b"F", b"two"),
        (b"stdout", b"F", b"three"),
        (b"stdout", b"P", b"no newline"),
    ]
    stamps = [parse_time(p[0].decode()) for p in parsed]
    assert before <= stamps[0] < stamps[1] < stamps[2] <= stamps[3] <= time.time_ns()
    assert stamps[2] - stamps[1] >= 0.25e9  # the sleep between them
    assert instance_log(tmp_path, 0).with_suffix(".done").exists()
    # What podrunner.read_log reads: each stream's bytes.
    assert (tmp_path / "stdout.log").read_bytes() == b"one\nthree\nno newline"
    assert (tmp_path / "stderr.log").read_bytes() == b"two\n"

    def shown(query: str, now_ns: int | None = None) -> bytes:
        return Query(query, now_ns or time.time_ns()).render(entries)

    assert shown("") == b"one\ntwo\nthree\nno newline"
    stamp = rfc3339_nano(stamps[2]).encode()
    assert shown("timestamps=true").splitlines()[2] == stamp + b" three"
    assert shown(f"sinceTime={rfc3339_nano(stamps[2])}") == b"three\nno newline"
    # sinceSeconds counts back from the request's time.
    assert shown("sinceSeconds=1", now_ns=stamps[2] + 10**9 - 1) == b"three\nno newline"
    assert shown("sinceSeconds=1", now_ns=stamps[3] + 2 * 10**9) == b""


def test_a_long_line_is_split_into_partial_entries_and_joined_again(tmp_path: Path) -> None:
    run(tmp_path, 0, "print('x' * 40000 + 'end')")
    entries = instance_log(tmp_path, 0).read_bytes().splitlines(keepends=True)
    assert [e.split(b" ", 3)[2] for e in entries] == [b"P", b"P", b"F"]
    assert Query("", time.time_ns()).render(entries) == b"x" * 40000 + b"end\n"


@pytest.mark.parametrize(
    ("data", "entries", "rest"),
    [
        (b"a\nb\nc", [(b"a", True), (b"b", True)], b"c"),
        (b"a\n", [(b"a", True)], b""),
        (b"x" * MAX_LINE + b"y\n", [(b"x" * MAX_LINE, False), (b"y", True)], b""),
        (b"x" * MAX_LINE + b"y", [(b"x" * MAX_LINE, False)], b"y"),
        (b"x" * MAX_LINE + b"\n", [(b"x" * MAX_LINE, True)], b""),
    ],
)
def test_split_entries(data: bytes, entries: list[tuple[bytes, bool]], rest: bytes) -> None:
    assert split_entries(data) == (entries, rest)


def test_tail_and_since_as_the_kubelet_applies_them() -> None:
    entries = [f"{rfc3339_nano(t * 10**9)} stdout F line{t}\n".encode() for t in (100, 200, 300)]

    def shown(query: str) -> bytes:
        q = Query(query, 0)
        return q.render(q.tailed(entries))

    assert shown("tailLines=2") == b"line200\nline300\n"
    assert shown("tailLines=0") == b""
    assert shown("tailLines=5") == b"line100\nline200\nline300\n"
    # Both: the last N lines that are at or after the time.
    assert shown(f"tailLines=2&sinceTime={rfc3339_nano(150 * 10**9)}") == b"line200\nline300\n"
    assert shown(f"tailLines=1&sinceTime={rfc3339_nano(150 * 10**9)}") == b"line300\n"
    assert shown(f"tailLines=2&sinceTime={rfc3339_nano(250 * 10**9)}") == b"line300\n"
    assert shown(f"tailLines=1&sinceTime={rfc3339_nano(350 * 10**9)}") == b""


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:01:40Z", 100 * 10**9),
        ("1970-01-01T00:01:40.5Z", 100 * 10**9 + 5 * 10**8),
        ("1970-01-01T01:01:40.000000001+01:00", 100 * 10**9 + 1),
        ("1970-01-01t00:01:40z", 100 * 10**9),
    ],
)
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time(text) == ns


def test_previous_is_the_instance_before_the_current_one(tmp_path: Path) -> None:
    assert pick(tmp_path, "worker", "w-1", previous=False) == (
        'container "worker" in pod "w-1" is waiting to start: ContainerCreating'
    )
    run(tmp_path, 0, "print('first')")
    assert pick(tmp_path, "worker", "w-1", previous=False) == 0
    assert pick(tmp_path, "worker", "w-1", previous=True) == (
        'previous terminated container "worker" in pod "w-1" not found'
    )
    run(tmp_path, 1, "print('second')")
    assert pick(tmp_path, "worker", "w-1", previous=False) == 1
    assert pick(tmp_path, "worker", "w-1", previous=True) == 0
    assert (tmp_path / "stdout.log").read_text() == "first\nsecond\n"
    # A new pod of the same name starts again at instance 0, without the old pod's logs.
    run(tmp_path, 0, "print('new pod')")
    assert pick(tmp_path, "worker", "w-1", previous=False) == 0
    assert instance_log(tmp_path, 0).read_bytes().endswith(b" stdout F new pod\n")
    assert not instance_log(tmp_path, 1).exists()

"""Dataset samples: label news headlines by sentiment, one row per case.

The rows (``manifests/samples/data/headlines.{jsonl,parquet}``) are ``{"id", "headline",
"label"}``. The task is a batch scoring job over them: each implementation labels a headline
``positive``, ``negative`` or ``neutral``, and the ``matches-label`` property checks the output
against the row's label. With ``spec.results.outputs`` the labels are kept in the records.

- :func:`task` (``proctor.examples.headlines:task``): the Python task of the Parquet sample;
  ``lexicon`` is its own implementation, ``keywords`` a cruder candidate to compare with it.
- ``python -m proctor.examples.headlines``: the same labeller as a command task (the JSONL
  sample), speaking Proctor's JSON lines: each request carries the row as ``"case"``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from proctor.sdk import Property, Task

POSITIVE = frozenset(
    {"gain", "gains", "rise", "rises", "record", "surge", "surges", "wins", "win", "beat"}
    | {"beats", "boost", "boosts", "growth", "rally", "hope", "recovers", "recovery", "soar"}
    | {"soars", "best", "strong", "up"}
)
NEGATIVE = frozenset(
    {"loss", "losses", "fall", "falls", "drop", "drops", "crash", "slump", "cut", "cuts"}
    | {"fears", "fear", "warns", "warning", "worst", "weak", "down", "strike", "layoffs"}
    | {"recall"}
)


def lexicon(case: dict[str, Any]) -> str:
    """Count positive and negative words; the larger count wins, a tie is neutral."""
    words = [w.strip(".,:;!?'\"").lower() for w in str(case["headline"]).split()]
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def keywords(case: dict[str, Any]) -> str:
    """Look only for the first sentiment word: misses headlines that turn."""
    for word in str(case["headline"]).lower().split():
        if word in POSITIVE:
            return "positive"
        if word in NEGATIVE:
            return "negative"
    return "neutral"


class Headlines(Task):
    """A case is a row; the output is a label; it passes when it is the row's label.

    ``params.delayMs`` adds that much latency to each label, as a model call would (demos and
    preemption tests need runs that last)."""

    properties = (
        Property("matches-label", lambda case, out: out == case["label"], "the row's label"),
    )

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.delay = float(self.params.get("delayMs", 0)) / 1000.0

    def solve(self, case: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return lexicon(case)


def task(params: Mapping[str, Any] | None = None) -> Headlines:
    """The entrypoint ``proctor.examples.headlines:task``."""
    return Headlines(params)


_IMPLEMENTATIONS = {"lexicon": lexicon, "keywords": keywords}


def serve(stdin: TextIO, stdout: TextIO) -> None:
    """Answer each request line with the labelled result (the command task's protocol)."""
    for line in stdin:
        request = json.loads(line)
        index, case = request["index"], request.get("case")
        try:
            impl = _IMPLEMENTATIONS[request.get("implementation") or "lexicon"]
            label = impl(case)
        except Exception as exc:  # a case's error, never the process's
            stdout.write(json.dumps({"index": index, "error": f"{type(exc).__name__}: {exc}"}))
        else:
            ok = label == case.get("label")
            answer = {"index": index, "passed": ok, "violations": [] if ok else ["matches-label"]}
            stdout.write(json.dumps({**answer, "output": label}))
        stdout.write("\n")
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)

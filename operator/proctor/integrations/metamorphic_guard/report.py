"""Metamorphic Guard's report and adopt/reject decision from a Proctor run's records.

The records (one per case, in index order) carry each side's pass/fail, error and violation
names (see :mod:`proctor.integrations.metamorphic_guard.adapter`). From them this module
rebuilds what ``metamorphic_guard.harness.reporting.evaluate_results`` returns (pass counts,
pass indicators, property and relation violations, per-relation totals and failures, cluster
labels) and then calls Metamorphic Guard's own functions for everything statistical:
``compute_delta_ci``, ``compute_relative_risk``, ``compute_paired_stats``,
``summarize_relations`` (with the relation correction), ``collect_metrics``, ``estimate_power``
and, for the verdict, ``decide_adopt``.

The bootstrap interval is computed by Metamorphic Guard's ``compute_delta_ci`` when
``n * bootstrapSamples`` fits :data:`DIRECT_LIMIT`; above that (its one-shot resampling matrix
would need ``24 * n * samples`` bytes: 24 GB at a million cases) the same resamples are drawn
from the same ``numpy`` generator a few rows at a time and summed per row, which gives
bit-identical deltas (a test checks this against Metamorphic Guard), then Metamorphic Guard's
``percentile`` / ``compute_bca_interval`` turn them into the interval.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.dataset import DatasetReader, load_manifest
from proctor.dataset.run import credentials_from_env, dataset_location, total_cases
from proctor.integrations.metamorphic_guard.adapter import (
    ChunkedInputs,
    MGParams,
    RowInputs,
    fresh_copy,
    import_mg,
    load_spec,
    resolve_implementation,
)
from proctor.storage import S3Blobs

DIRECT_LIMIT = 20_000_000
"""Largest ``n * bootstrapSamples`` handed to Metamorphic Guard's one-shot bootstrap."""

ROW_BUDGET = 4_000_000
"""Resample indices drawn at a time by the chunked bootstrap (32 MB)."""


@dataclass
class SideTally:
    """What ``evaluate_results`` counts for one side, built one record at a time."""

    relation_names: list[str]
    violation_cap: int
    passes: int = 0
    total: int = 0
    indicators: bytearray = field(default_factory=bytearray)
    prop_violations: list[dict[str, Any]] = field(default_factory=list)
    mr_violations: list[dict[str, Any]] = field(default_factory=list)
    prop_violation_count: int = 0
    mr_violation_count: int = 0
    relation_totals: dict[str, list[int]] = field(default_factory=dict)

    def add(self, index: int, side: Mapping[str, Any]) -> None:
        self.total += 1
        ok = bool(side.get("passed")) and not side.get("errored")
        self.indicators.append(1 if ok else 0)
        if ok:
            self.passes += 1
        if side.get("errored"):
            self._prop(index, "execution", side.get("error") or "Execution failed")
            return
        names = [str(v) for v in side.get("violations") or ()]
        props = [v.removeprefix("property:") for v in names if v.startswith("property:")]
        if props:
            for prop in props:
                self._prop(index, prop, None)
            return
        failed = next(
            (v.removeprefix("relation:") for v in names if v.startswith("relation:")), None
        )
        for name in self.relation_names:
            counts = self.relation_totals.setdefault(name, [0, 0])
            counts[0] += 1
            if name == failed:
                counts[1] += 1
                self.mr_violation_count += 1
                if len(self.mr_violations) < self.violation_cap:
                    self.mr_violations.append({"test_case": index, "relation": name})
                break

    def _prop(self, index: int, prop: str, error: str | None) -> None:
        self.prop_violation_count += 1
        if len(self.prop_violations) < self.violation_cap:
            entry: dict[str, Any] = {"test_case": index, "property": prop}
            if error is not None:
                entry["error"] = error
            self.prop_violations.append(entry)

    def metrics(self, spec: Any, clusters: list[Any] | None) -> dict[str, Any]:
        """The dict ``evaluate_results`` returns, as Metamorphic Guard's functions read it."""
        stats = {}
        for rel in spec.relations:
            total, failures = self.relation_totals.get(rel.name, [0, 0])
            stats[rel.name] = {
                "category": rel.category or "uncategorized",
                "description": rel.description,
                "total": total,
                "failures": failures,
            }
        return {
            "passes": self.passes,
            "total": self.total,
            "pass_rate": self.passes / self.total if self.total else 0.0,
            "prop_violations": self.prop_violations,
            "mr_violations": self.mr_violations,
            "pass_indicators": list(self.indicators),
            "cluster_labels": clusters,
            "relation_stats": stats,
        }


def _cluster_labels(spec: Any, inputs: ChunkedInputs, indexes: Iterable[int]) -> list[Any]:
    key = spec.cluster_key
    return [key(inputs.get(i)) if key else i for i in indexes]


def chunked_bootstrap_deltas(
    baseline: Any, candidate: Any, *, seed: int, samples: int, clusters: list[Any] | None
) -> list[float]:
    """``generate_bootstrap_deltas``' resampled deltas, drawn a few rows at a time.

    Same generator, same draws, same sums, so the same floats, in ``O(n)`` memory.
    """
    import numpy as np  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)

    base: Any = np.asarray(baseline, dtype=np.float64)
    cand: Any = np.asarray(candidate, dtype=np.float64)
    counts = None
    if clusters:
        order: dict[Any, int] = {}
        ids = np.fromiter(
            (order.setdefault(c, len(order)) for c in clusters), dtype=np.int64, count=len(clusters)
        )
        base = np.bincount(ids, weights=base, minlength=len(order))
        cand = np.bincount(ids, weights=cand, minlength=len(order))
        counts = np.bincount(ids, minlength=len(order))
    units = len(base)
    rng = np.random.default_rng(seed)
    total = max(1, samples)
    rows = max(1, ROW_BUDGET // max(1, units))
    out: list[float] = []
    done = 0
    while done < total:
        r = min(rows, total - done)
        idx = rng.integers(0, units, size=(r, units))
        if counts is None:
            deltas = np.sum(cand[idx], axis=1) / units - np.sum(base[idx], axis=1) / units
        else:
            tb = np.sum(base[idx], axis=1)
            tc = np.sum(cand[idx], axis=1)
            tn = np.sum(counts[idx], axis=1)
            deltas = tc / tn - tb / tn
        out.extend(deltas.tolist())
        done += r
    return out


def delta_interval(
    params: MGParams,
    baseline: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    seed: int,
) -> list[float]:
    """The pass-rate delta interval Metamorphic Guard's ``compute_delta_ci`` gives."""
    from metamorphic_guard.harness.statistics import (  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)
        compute_bca_interval,
        compute_delta_ci,
        percentile,
    )

    method = params.ci_method
    n = int(baseline["total"])
    bootstrap = method.startswith("bootstrap")
    if not bootstrap or n * params.bootstrap_samples <= DIRECT_LIMIT:
        ci = compute_delta_ci(
            baseline,
            candidate,
            alpha=params.alpha,
            seed=seed,
            samples=params.bootstrap_samples,
            method=method,
            hierarchical=params.bayesian_hierarchical,
            bayesian_samples=params.bayesian_samples,
        )
        return [float(x) for x in ci]
    if n == 0 or len(candidate["pass_indicators"]) != n:
        return [0.0, 0.0]
    clusters = baseline.get("cluster_labels") if "cluster" in method else None
    deltas = chunked_bootstrap_deltas(
        baseline["pass_indicators"],
        candidate["pass_indicators"],
        seed=seed,
        samples=params.bootstrap_samples,
        clusters=clusters,
    )
    if method.endswith("bca"):
        observed = candidate["pass_rate"] - baseline["pass_rate"]
        ci = compute_bca_interval(
            deltas,
            observed_delta=observed,
            baseline_indicators=baseline["pass_indicators"],
            candidate_indicators=candidate["pass_indicators"],
            alpha=params.alpha,
            clusters=clusters,
        )
        return [float(x) for x in ci]
    return [
        float(percentile(deltas, params.alpha / 2)),
        float(percentile(deltas, 1 - params.alpha / 2)),
    ]


def _metrics(
    spec: Any, run: EvalRunSpec, inputs: ChunkedInputs, indexes: list[int], seed: int
) -> dict[str, Any]:
    """Metamorphic Guard's ``collect_metrics`` over values extracted here.

    Records carry no outputs, so each implementation is called once more per input (in
    process, without the per-case timeout). Only values are kept, never outputs or inputs.
    """
    if not spec.metrics or run.compare is None:
        return {}
    from metamorphic_guard.harness.reporting import collect_metrics, safe_extract_metric  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)

    impls = [resolve_implementation(s.ref) for s in (run.compare.baseline, run.compare.candidate)]
    values: list[list[list[float | None]]] = [[[] for _ in spec.metrics] for _ in impls]
    for index in indexes:
        args = inputs.get(index)
        for side, impl in enumerate(impls):
            try:
                result = {"success": True, "result": impl(*fresh_copy(args))}
            except Exception:
                result = {"success": False, "result": None}
            for m, metric in enumerate(spec.metrics):
                values[side][m].append(safe_extract_metric(metric, result, args))
    payload: dict[str, Any] = {}
    empty: tuple[Any, ...] = ()
    for m, metric in enumerate(spec.metrics):
        shim = dataclasses.replace(metric, extract=lambda value, _args: value)
        results = [
            [{"success": v is not None, "result": v} for v in values[side][m]] for side in (0, 1)
        ]
        payload.update(
            collect_metrics([shim], results[0], results[1], [empty] * len(indexes), seed=seed)
        )
    return payload


def mg_report(
    spec: EvalRunSpec,
    records: Iterable[Mapping[str, Any]],
    *,
    metrics: bool = True,
    inputs: Any = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Metamorphic Guard's report for a finished (or partial) run, with its decision.

    Keys follow ``metamorphic-guard evaluate``'s JSON report; ``decision`` is its
    ``decide_adopt`` output and ``proctor`` holds the same as accept/reject with counts.
    ``metrics=False`` leaves out ``Spec.metrics`` (extracting them calls the implementations
    again, here); ``decide_adopt`` does not read them. ``inputs`` (``.get(i)``: case ``i``'s
    arguments) defaults to the spec's generator; over a dataset its rows and ``total``.
    """
    import_mg()
    from metamorphic_guard.gate import decide_adopt  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)
    from metamorphic_guard.harness.statistics import (  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)
        compute_relative_risk,
    )

    params = MGParams.from_params(spec.task.params)
    mg_spec = load_spec(params.task)
    seed = spec.cases.seed
    base, cand, indexes = _tally(mg_spec, params, records)
    inputs = inputs or ChunkedInputs(mg_spec, seed, params.chunk_size)
    needs_clusters = "cluster" in params.ci_method or mg_spec.cluster_key is not None
    clusters = _cluster_labels(mg_spec, inputs, indexes) if needs_clusters else None
    for tally in (base, cand):
        for entry in tally.prop_violations + tally.mr_violations:
            entry["input"] = _shown_input(mg_spec, inputs, entry["test_case"])
    bm = base.metrics(mg_spec, clusters if clusters is not None else list(indexes))
    cm = cand.metrics(mg_spec, clusters if clusters is not None else list(indexes))

    delta_ci = delta_interval(params, bm, cm, seed=seed)
    rr, rr_ci = compute_relative_risk(bm, cm, alpha=params.alpha, method=params.rr_ci_method)
    n = base.total
    result: dict[str, Any] = {
        "task": params.task,
        "n": n,
        "seed": seed,
        "config": _config(params),
        "baseline": _side_report(bm, base),
        "candidate": _side_report(cm, cand),
        "delta_pass_rate": cm["pass_rate"] - bm["pass_rate"],
        "delta_ci": delta_ci,
        "relative_risk": rr,
        "relative_risk_ci": rr_ci,
    }
    _add_statistics(result, mg_spec, params, bm, cm)
    extracted = _metrics(mg_spec, spec, inputs, indexes, seed) if metrics else {}
    if extracted:
        result["metrics"] = extracted
    decision = dict(
        decide_adopt(result, min_delta=params.min_delta, min_pass_rate=params.min_pass_rate)
    )
    result["decision"] = decision
    result["proctor"] = _proctor_view(result, base, cand, total or spec.cases.count)
    return result


def _shown_input(mg_spec: Any, inputs: Any, index: int) -> Any:
    """How a violation's input is shown: Metamorphic Guard's ``fmt_in``, or why it has none
    (a dataset row that is not an input of the spec)."""
    try:
        return mg_spec.fmt_in(inputs.get(index))
    except ValueError as exc:
        return str(exc)


def _add_statistics(
    result: dict[str, Any],
    mg_spec: Any,
    params: MGParams,
    bm: Mapping[str, Any],
    cm: Mapping[str, Any],
) -> None:
    """The report's ``statistics`` (power, paired counts, relation categories) and, when the
    spec has relations, its ``relation_coverage``, as ``metamorphic-guard evaluate`` writes
    them."""
    from metamorphic_guard.harness.reporting import summarize_relations  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)
    from metamorphic_guard.harness.statistics import (  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)
        compute_paired_stats,
        estimate_power,
    )

    power, recommended = estimate_power(
        bm["pass_rate"], cm["pass_rate"], result["n"], params.alpha, params.min_delta, 0.8
    )
    statistics: dict[str, Any] = {
        "power_estimate": power,
        "power_target": 0.8,
        "recommended_n": recommended,
        "min_delta": params.min_delta,
        "alpha": params.alpha,
    }
    paired = compute_paired_stats(bm["pass_indicators"], cm["pass_indicators"])
    if paired:
        statistics["paired"] = paired
    relations, categories, correction = summarize_relations(
        mg_spec, bm, cm, alpha=params.alpha, relation_correction=params.correction()
    )
    if relations:
        coverage: dict[str, Any] = {"relations": relations, "categories": categories}
        if correction:
            coverage["correction"] = correction
            statistics["relation_correction"] = correction
        result["relation_coverage"] = coverage
        statistics["relation_categories"] = categories
    result["statistics"] = statistics


def _tally(
    mg_spec: Any, params: MGParams, records: Iterable[Mapping[str, Any]]
) -> tuple[SideTally, SideTally, list[int]]:
    """Each side's tally of the run's compare records, and the case indexes in record order."""
    names = [rel.name for rel in mg_spec.relations]
    base = SideTally(names, params.violation_cap)
    cand = SideTally(names, params.violation_cap)
    indexes: list[int] = []
    for record in records:
        b, c = record.get("baseline"), record.get("candidate")
        if not isinstance(b, Mapping) or not isinstance(c, Mapping):
            raise ValueError("a Metamorphic Guard run needs compare records (baseline, candidate)")
        index = int(record["index"])
        indexes.append(index)
        base.add(index, b)
        cand.add(index, c)
    return base, cand, indexes


def _config(params: MGParams) -> dict[str, Any]:
    """The report's ``config``, as ``metamorphic-guard evaluate`` writes it."""
    return {
        "alpha": params.alpha,
        "min_delta": params.min_delta,
        "min_pass_rate": params.min_pass_rate,
        "violation_cap": params.violation_cap,
        "bootstrap_samples": params.bootstrap_samples,
        "ci_method": params.ci_method,
        "rr_ci_method": params.rr_ci_method,
        "relation_correction": params.correction(),
        "chunk_size": params.chunk_size,
    }


def _proctor_view(
    result: Mapping[str, Any], base: SideTally, cand: SideTally, expected: int | None
) -> dict[str, Any]:
    """Metamorphic Guard's decision as Proctor reports it: accept/reject with counts, and
    ``undecided`` until every case is recorded."""
    n, decision = result["n"], result["decision"]
    complete = n == expected
    rr_ci = result["relative_risk_ci"]
    return {
        "decision": ("accept" if decision.get("adopt") else "reject") if complete else "undecided",
        "reason": str(decision.get("reason", ""))
        if complete
        else f"{n} of {expected} cases recorded",
        "complete": complete,
        "baselinePassRate": result["baseline"]["pass_rate"],
        "candidatePassRate": result["candidate"]["pass_rate"],
        "delta": result["delta_pass_rate"],
        "deltaInterval": result["delta_ci"],
        "relativeRisk": _finite(result["relative_risk"]),
        "relativeRiskInterval": [_finite(x) for x in rr_ci],
        "propertyViolations": {
            "baseline": base.prop_violation_count,
            "candidate": cand.prop_violation_count,
        },
        "relationViolations": {
            "baseline": base.mr_violation_count,
            "candidate": cand.mr_violation_count,
        },
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _side_report(metrics: Mapping[str, Any], tally: SideTally) -> dict[str, Any]:
    return {
        "passes": metrics["passes"],
        "total": metrics["total"],
        "pass_rate": metrics["pass_rate"],
        "prop_violations": metrics["prop_violations"],
        "mr_violations": metrics["mr_violations"],
        "prop_violation_count": tally.prop_violation_count,
        "mr_violation_count": tally.mr_violation_count,
    }


def report_from_storage(spec: EvalRunSpec, storage: Any, *, metrics: bool = True) -> dict[str, Any]:
    """:func:`mg_report` over a run's stored records (``RunStorage.iter_records``); over a
    dataset, its inputs are the rows (read with the storage's client when the dataset is in
    the same store and has no Secret of its own, else with this process's credentials)."""
    if spec.cases.dataset is None:
        return mg_report(spec, storage.iter_records(), metrics=metrics)
    manifest = load_manifest(storage)
    if manifest is None:
        raise ValueError("the run's dataset manifest is missing: the run was never admitted")
    dataset = spec.cases.dataset
    client = None
    if isinstance(storage.blobs, S3Blobs) and dataset.secret_ref is None:
        client = storage.blobs.client
    elif not metrics and dataset.secret_ref is not None:
        # The operator reads a dataset only with the run's credentials, which it has not here.
        raise ValueError("the dataset has a secretRef of its own; its rows are read by workers")
    location = dataset_location(spec, client=client, creds=credentials_from_env(os.environ))
    params = MGParams.from_params(spec.task.params)
    inputs = RowInputs(DatasetReader(manifest, location, storage), params.input_columns)
    total = total_cases(spec, manifest)
    return mg_report(spec, storage.iter_records(), metrics=metrics, inputs=inputs, total=total)

"""The suite's report: Markdown, and a self-contained HTML page with inline SVG box plots.

The HTML page has no external assets (no scripts, fonts, styles or images from elsewhere), so
it opens from S3, a CI artifact or a local folder alike. Each benchmark gets one plot: per
variant a box plot of this run's wall times and, when there is a baseline, the baseline's
beside it, with every repetition drawn as a dot.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from proctor.bench.summary import Records, SuiteSummary, wall_times
from proctor.stats.timing import median, median_interval_ranks, percentile

_NOW_COLOUR = "#2563eb"
_BASE_COLOUR = "#9ca3af"
_BAD_COLOUR = "#dc2626"


def format_seconds(x: float | None) -> str:
    """Seconds, readable at any scale."""
    if x is None or not math.isfinite(x):
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.1f} µs"
    if x < 1.0:
        return f"{x * 1e3:.2f} ms"
    return f"{x:.3f} s"


def measured_by(reused_from: str | None) -> str:
    """Who measured a cell: this run, or the earlier run it was reused from (spec.cache)."""
    return f"reused from {reused_from}" if reused_from else "this run"


def _reused_text(summary: SuiteSummary) -> str:
    return (
        f"{summary.reused} of {len(summary.cells)}, not measured by this run: unchanged since "
        "the run named in their row (spec.cache)"
    )


def _interval(lo_hi: Sequence[float] | None, fmt: Any = format_seconds) -> str:
    return f"[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]" if lo_hi else "-"


def _ratio(x: float) -> str:
    return f"{x:.3f}x" if math.isfinite(x) else "inf"


def _mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def _resources(records: Sequence[Mapping[str, Any]]) -> tuple[float, float, float] | None:
    """Median user CPU, system CPU and peak RSS over successful repetitions."""
    ok = [r for r in records if r.get("ok")]
    if not ok:
        return None
    return (
        median([float(r["user_seconds"]) for r in ok]),
        median([float(r["system_seconds"]) for r in ok]),
        median([float(r["max_rss_bytes"]) for r in ok]),
    )


def _cell_rows(summary: SuiteSummary, records: Records | None) -> list[list[str]]:
    rows = []
    for c in summary.cells:
        res = _resources(records.get(f"{c.benchmark}.{c.variant}", ())) if records else None
        verdict = {True: "REGRESSION", False: "ok", None: ""}[c.regression]
        rows.append(
            [
                c.benchmark,
                c.variant,
                f"{c.completed}/{c.total}",
                str(c.failed),
                measured_by(c.reused_from),
                format_seconds(c.mean),
                format_seconds(c.stddev),
                format_seconds(c.min),
                format_seconds(c.p50),
                _interval(c.median_ci),
                _interval(c.mean_ci),
                format_seconds(c.p95),
                format_seconds(c.p99),
                format_seconds(c.max),
                format_seconds(res[0]) if res else "-",
                format_seconds(res[1]) if res else "-",
                _mib(res[2]) if res else "-",
                verdict,
            ]
        )
    return rows


_CELL_HEADER = [
    "benchmark",
    "variant",
    "done",
    "failed",
    "measured",
    "mean",
    "stddev",
    "min",
    "median",
    "median CI",
    "mean CI",
    "p95",
    "p99",
    "max",
    "user CPU",
    "sys CPU",
    "peak RSS",
    "vs baseline",
]


_COMPARISON_HEADER = ["benchmark", "ratio of medians", "ratio", "interval"]
_BASELINE_HEADER = ["benchmark", "variant", "baseline median", "ratio", "interval", "p", "verdict"]


def _comparison_rows(summary: SuiteSummary) -> list[list[str]]:
    return [
        [
            c.benchmark,
            f"{c.variant} / {c.reference}",
            _ratio(c.ratio),
            _interval(c.ratio_ci, _ratio),
        ]
        for c in summary.comparisons
    ]


def _baseline_rows(summary: SuiteSummary) -> list[list[str]]:
    return [
        [
            b.benchmark,
            b.variant,
            format_seconds(b.baseline_median),
            _ratio(b.ratio),
            _interval(b.ratio_ci, _ratio),
            f"{b.p_value:.4g}",
            "REGRESSION" if b.regression else "ok",
        ]
        for b in summary.baseline
    ]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


def _method(summary: SuiteSummary) -> str:
    level = f"{summary.confidence_level:.4g}"
    text = (
        f"Wall time of successful repetitions. Intervals at confidence level {level}: the mean's "
        "by Student's t, the median's from order statistics (distribution-free), ratios of "
        "medians by a seeded percentile bootstrap."
    )
    short = sorted(
        {
            c.completed - c.failed
            for c in summary.cells
            if c.completed - c.failed >= 1
            and median_interval_ranks(c.completed - c.failed, summary.confidence_level)[2]
            < summary.confidence_level
        }
    )
    if short:
        n = short[-1]
        coverage = median_interval_ranks(n, summary.confidence_level)[2]
        text += (
            f" With {n} or fewer successful repetitions a cell's median interval is its whole "
            f"range [min, max], which covers the median with probability 1 - 2^(1-n) only "
            f"({coverage:.3g} at n = {n}); more repetitions reach the level."
        )
    if summary.threshold is not None:
        text += (
            f" A cell is a regression when the interval of median(now) / median(baseline) lies "
            f"wholly above {1 + summary.threshold:.3g} and a one-sided Mann-Whitney U test "
            f"rejects at {1 - summary.confidence_level:.4g}."
        )
    return text


def render_markdown(
    summary: SuiteSummary,
    records: Records | None = None,
    *,
    title: str = "Benchmark suite",
    details: Mapping[str, str] | None = None,
) -> str:
    """The report as Markdown: cells, comparisons between variants, the baseline verdicts."""
    parts = [f"# {title}", ""]
    for key, value in (details or {}).items():
        parts.append(f"- **{key}**: {value}")
    parts += [
        f"- **repetitions**: {summary.completed} of {summary.total} recorded, "
        f"{summary.failed} failed",
        *([f"- **reused cells**: {_reused_text(summary)}"] if summary.reused else []),
        f"- **regressions**: {len(summary.regressions)}",
        "",
        "## Cells",
        "",
        _md_table(_CELL_HEADER, _cell_rows(summary, records)),
        "",
    ]
    if summary.comparisons:
        parts += ["## Variants compared", ""]
        parts += [_md_table(_COMPARISON_HEADER, _comparison_rows(summary)), ""]
    if summary.baseline:
        parts += ["## Against the baseline", ""]
        parts += [_md_table(_BASELINE_HEADER, _baseline_rows(summary)), ""]
    parts += ["## Method", "", _method(summary), ""]
    return "\n".join(parts)


# --- SVG --------------------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo if hi > lo else abs(hi) or 1.0
    raw = span / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def box_stats(xs: Sequence[float]) -> dict[str, float]:
    """Quartiles, Tukey whiskers (furthest points within 1.5 IQR of the box) and the median."""
    q1, q2, q3 = percentile(xs, 25), percentile(xs, 50), percentile(xs, 75)
    iqr = q3 - q1
    inside = [x for x in xs if q1 - 1.5 * iqr <= x <= q3 + 1.5 * iqr]
    return {"q1": q1, "median": q2, "q3": q3, "lo": min(inside), "hi": max(inside)}


def _box_group(
    xs: Sequence[float], *, y: float, height: float, scale: Any, colour: str, attrs: str
) -> str:
    b = box_stats(xs)
    mid = y + height / 2
    x1, x3, xm = scale(b["q1"]), scale(b["q3"]), scale(b["median"])
    parts = [
        f'<g class="box" {attrs}>',
        f'<line class="whisker" x1="{scale(b["lo"]):.1f}" x2="{x1:.1f}" y1="{mid:.1f}" '
        f'y2="{mid:.1f}" stroke="{colour}"/>',
        f'<line class="whisker" x1="{x3:.1f}" x2="{scale(b["hi"]):.1f}" y1="{mid:.1f}" '
        f'y2="{mid:.1f}" stroke="{colour}"/>',
        f'<rect x="{x1:.1f}" y="{y:.1f}" width="{max(x3 - x1, 1.0):.1f}" height="{height:.1f}" '
        f'fill="{colour}" fill-opacity="0.25" stroke="{colour}"/>',
        f'<line class="median" x1="{xm:.1f}" x2="{xm:.1f}" y1="{y:.1f}" y2="{y + height:.1f}" '
        f'stroke="{colour}" stroke-width="2"/>',
    ]
    for i, x in enumerate(xs):
        jitter = ((i * 0.618034) % 1.0 - 0.5) * height * 0.7
        parts.append(
            f'<circle class="point" cx="{scale(x):.1f}" cy="{mid + jitter:.1f}" r="2.2" '
            f'fill="{colour}"><title>{html.escape(format_seconds(x))}</title></circle>'
        )
    parts.append("</g>")
    return "".join(parts)


def render_plot(benchmark: str, series: list[tuple[str, str, list[float], bool]]) -> str:
    """One benchmark's box plot. ``series``: (variant, "now"|"baseline", wall times, flagged)."""
    shown = [s for s in series if s[2]]
    width, left, right, row_h, top = 760, 170, 30, 34, 16
    height = top + row_h * max(1, len(shown)) + 40
    e = html.escape
    out = [
        f'<svg class="plot" data-benchmark="{e(benchmark)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="wall time of {e(benchmark)} per variant">'
    ]
    if not shown:
        out.append(f'<text x="{left}" y="{top + 20}">no successful repetitions</text></svg>')
        return "".join(out)
    lo = min(min(s[2]) for s in shown)
    hi = max(max(s[2]) for s in shown)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1e-3
    lo, hi = max(0.0, lo - pad), hi + pad

    def scale(x: float) -> float:
        return left + (x - lo) / (hi - lo) * (width - left - right)

    axis_y = top + row_h * len(shown) + 4
    for t in _nice_ticks(lo, hi):
        if lo <= t <= hi:
            out.append(
                f'<line x1="{scale(t):.1f}" x2="{scale(t):.1f}" y1="{top}" y2="{axis_y}" '
                'stroke="#e5e7eb"/>'
                f'<text x="{scale(t):.1f}" y="{axis_y + 16}" font-size="11" '
                f'text-anchor="middle">{e(format_seconds(t))}</text>'
            )
    for n, (variant, kind, xs, flagged) in enumerate(shown):
        y = top + n * row_h + 6
        colour = _BASE_COLOUR if kind == "baseline" else (_BAD_COLOUR if flagged else _NOW_COLOUR)
        label = variant if kind == "now" else f"{variant} (baseline)"
        out.append(
            f'<text x="{left - 8}" y="{y + (row_h - 12) / 2 + 4:.1f}" font-size="12" '
            f'text-anchor="end">{e(label)}</text>'
        )
        attrs = f'data-cell="{e(benchmark)}.{e(variant)}" data-series="{kind}" data-n="{len(xs)}"'
        out.append(_box_group(xs, y=y, height=row_h - 12, scale=scale, colour=colour, attrs=attrs))
    out.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" font-size="11" '
        'text-anchor="middle">wall time per repetition</text></svg>'
    )
    return "".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #111827; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #d1d5db; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f3f4f6; } td:first-child, td:nth-child(2) { text-align: left; }
.regression { color: #dc2626; font-weight: bold; } .ok { color: #059669; }
figure { margin: 0 0 1.5rem; } figcaption { font-weight: bold; margin-bottom: 0.25rem; }
"""


def _html_table(header: list[str], rows: list[list[str]], flag_col: int | None = None) -> str:
    e = html.escape
    out = ["<table><thead><tr>", *(f"<th>{e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = ""
            if i == flag_col and cell:
                cls = ' class="regression"' if cell == "REGRESSION" else ' class="ok"'
            out.append(f"<td{cls}>{e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(
    summary: SuiteSummary,
    records: Records,
    baseline: Records | None = None,
    *,
    title: str = "Benchmark suite",
    details: Mapping[str, str] | None = None,
) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, nothing fetched)."""
    e = html.escape
    flagged = {(c.benchmark, c.variant) for c in summary.cells if c.regression}
    body = [f"<h1>{e(title)}</h1><ul>"]
    for key, value in (details or {}).items():
        body.append(f"<li><b>{e(key)}</b>: {e(value)}</li>")
    body.append(
        f"<li><b>repetitions</b>: {summary.completed} of {summary.total} recorded, "
        f"{summary.failed} failed</li>"
        + (f"<li><b>reused cells</b>: {e(_reused_text(summary))}</li>" if summary.reused else "")
        + f"<li><b>regressions</b>: {len(summary.regressions)}</li></ul>"
    )
    body.append("<h2>Distributions</h2>")
    by_benchmark: dict[str, list[tuple[str, str, list[float], bool]]] = {}
    for c in summary.cells:
        cell_id = f"{c.benchmark}.{c.variant}"
        series = by_benchmark.setdefault(c.benchmark, [])
        now = wall_times(records.get(cell_id, ()))
        series.append((c.variant, "now", now, (c.benchmark, c.variant) in flagged))
        if baseline is not None:
            series.append((c.variant, "baseline", wall_times(baseline.get(cell_id, ())), False))
    for benchmark, series in by_benchmark.items():
        body.append(
            f"<figure><figcaption>{e(benchmark)}</figcaption>{render_plot(benchmark, series)}"
            "</figure>"
        )
    body.append("<h2>Cells</h2>")
    body.append(_html_table(_CELL_HEADER, _cell_rows(summary, records), len(_CELL_HEADER) - 1))
    if summary.comparisons:
        body.append("<h2>Variants compared</h2>")
        body.append(_html_table(_COMPARISON_HEADER, _comparison_rows(summary)))
    if summary.baseline:
        body.append("<h2>Against the baseline</h2>")
        body.append(_html_table(_BASELINE_HEADER, _baseline_rows(summary), 6))
    body.append(f"<h2>Method</h2><p>{e(_method(summary))}</p>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )

"""Finding runs on the cluster: one by name (``NAME`` of either kind, or ``KIND/NAME`` as kubectl
writes it), or every run of a namespace (or of all), both kinds."""

from __future__ import annotations

from typing import Any

from proctor.api.crdgen import KINDS, Kind
from proctor.api.names import GROUP, VERSION
from proctor.cli.context import (
    EXIT_NO_ACCESS,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CommandError,
    Target,
    reported,
)
from proctor.cluster.client import KubeApiError, custom_path


def kind_of(word: str) -> Kind | None:
    """The kind a kubectl-style word names: ``evalrun``, ``evalruns``, ``er``,
    ``evalrun.proctor.dev``, ``EvalRun``, ``benchmarksuite``, ``bs``, ``bench``, ``suite``
    (Proctor's word for the kind, not a CRD short name: kubectl does not know it), ..."""
    word = word.lower().removesuffix(f".{GROUP}")
    for kind in KINDS:
        names = {kind.kind.lower(), kind.plural, kind.singular, *kind.short_names}
        if word in names or (word in {"suite", "suites"} and kind.singular == "benchmarksuite"):
            return kind
    return None


def split_name(ref: str) -> tuple[Kind | None, str]:
    """``KIND/NAME`` or ``NAME`` as (kind or None, name); raises for an unknown kind."""
    if "/" not in ref:
        return None, ref
    word, _, name = ref.partition("/")
    kind = kind_of(word)
    if kind is None or not name:
        known = ", ".join(f"{k.singular}/NAME" for k in KINDS)
        raise CommandError(f"{ref!r}: not a Proctor run; write NAME or one of {known}", EXIT_USAGE)
    return kind, name


def _path(kind: Kind, namespace: str | None, name: str = "") -> str:
    if namespace is None:
        return f"/apis/{GROUP}/{VERSION}/{kind.plural}"
    return custom_path(GROUP, VERSION, namespace, kind.plural, name)


def _not_served(kind: Kind) -> CommandError:
    return CommandError(
        f"the cluster does not serve {kind.crd_name}: Proctor's CRDs are not installed "
        "(kubectl apply -f crds/, or install the chart; see docs/install.md)",
        EXIT_NO_ACCESS,
    )


NOT_SERVED = "the server could not find the requested resource"
"""The API server's words for a resource type it does not serve (a missing object's 404 names
the object instead)."""


def _get(target: Target, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = target.api.request("GET", _path(kind, namespace, name))
    except KubeApiError as exc:
        if exc.status != 404:
            raise
        if NOT_SERVED in exc.message:
            raise _not_served(kind) from exc
        return None
    return body


def find_run(target: Target, ref: str) -> tuple[Kind, dict[str, Any]]:
    """The run ``ref`` names in the target's namespace; raises :class:`CommandError` when
    there is none, or when a bare NAME is both an EvalRun and a BenchmarkSuite."""
    namespace = target.namespace or "default"
    wanted, name = split_name(ref)
    found: list[tuple[Kind, dict[str, Any]]] = []
    for kind in [wanted] if wanted else list(KINDS):
        with reported(f"read {kind.plural} in namespace {namespace}", target.server):
            body = _get(target, kind, namespace, name)
        if body is not None:
            found.append((kind, body))
    if not found:
        what = wanted.kind if wanted else "EvalRun or BenchmarkSuite"
        raise CommandError(f"no {what} named {name!r} in namespace {namespace}", EXIT_NOT_FOUND)
    if len(found) > 1:
        raise CommandError(
            f"{name!r} is both an EvalRun and a BenchmarkSuite in namespace {namespace}: write "
            f"evalrun/{name} or benchmarksuite/{name}",
            EXIT_USAGE,
        )
    return found[0]


def list_runs(target: Target, kinds: tuple[Kind, ...] = KINDS) -> list[tuple[Kind, dict[str, Any]]]:
    """Every run of the target's namespace (or of all), both kinds, by namespace and name."""
    where = f"namespace {target.namespace}" if target.namespace else "all namespaces"
    runs: list[tuple[Kind, dict[str, Any]]] = []
    for kind in kinds:
        with reported(f"list {kind.plural} in {where}", target.server):
            try:
                items = target.api.list(_path(kind, target.namespace))
            except KubeApiError as exc:
                if exc.status == 404:
                    raise _not_served(kind) from exc
                raise
        runs += [(kind, item) for item in items]
    return sorted(runs, key=lambda r: (_meta(r[1], "namespace"), r[0].kind, _meta(r[1], "name")))


def _meta(body: dict[str, Any], key: str) -> str:
    return str((body.get("metadata") or {}).get(key) or "")

"""Dense matrix multiplication: the shape of a GPU kernel check, runnable on any CPU.

Three implementations of ``C = A @ B`` on lists of floats: the textbook triple loop, a tiled
loop (the blocking a GPU kernel uses for shared memory) and a row-times-transposed-column form.
There is no exact oracle for floating point, so correctness comes from Freivalds' check (for a
random vector r, ``A (B r)`` must match ``C r``) and metamorphic relations: transposition
(``(A B)^T = B^T A^T``), scaling (``(sA) B = s (A B)``) and row permutation.

Entrypoint: ``proctor.examples.matmul:task``; params ``maxSize`` (default 24) and ``tile``
(default 8, for ``matmul_tiled``).
"""

from __future__ import annotations

import math
import random
from typing import Any

from proctor.sdk import Property, Relation, Task, case_rng

Matrix = list[list[float]]
Case = dict[str, Any]

RTOL = 1e-9


def matmul_naive(case: Case) -> Matrix:
    """C[i][j] = sum_k A[i][k] B[k][j], innermost over k."""
    a: Matrix = case["a"]
    b: Matrix = case["b"]
    inner, cols = len(b), len(b[0]) if b else 0
    return [[sum(row[k] * b[k][j] for k in range(inner)) for j in range(cols)] for row in a]


def matmul_tiled(case: Case, tile: int = 8) -> Matrix:
    """The same product accumulated tile by tile (i, k, j loop order within a tile)."""
    a: Matrix = case["a"]
    b: Matrix = case["b"]
    rows, inner, cols = len(a), len(b), len(b[0]) if b else 0
    c = [[0.0] * cols for _ in range(rows)]
    for i0 in range(0, rows, tile):
        for k0 in range(0, inner, tile):
            for j0 in range(0, cols, tile):
                for i in range(i0, min(i0 + tile, rows)):
                    a_row, c_row = a[i], c[i]
                    for k in range(k0, min(k0 + tile, inner)):
                        a_ik, b_row = a_row[k], b[k]
                        for j in range(j0, min(j0 + tile, cols)):
                            c_row[j] += a_ik * b_row[j]
    return c


def matmul_transposed(case: Case) -> Matrix:
    """Rows of A dotted with rows of B transposed: the cache-friendly CPU layout."""
    bt = transpose(case["b"])
    return [
        [math.fsum(x * y for x, y in zip(row, col, strict=True)) for col in bt] for row in case["a"]
    ]


def transpose(m: Matrix) -> Matrix:
    """The transpose of ``m``."""
    return [list(col) for col in zip(*m, strict=True)]


def close(x: Matrix, y: Matrix, scale: float = 1.0) -> bool:
    """Same shape and entries equal up to a relative tolerance (``scale``: typical magnitude)."""
    if len(x) != len(y):
        return False
    tol = RTOL * max(1.0, scale)
    return all(
        len(rx) == len(ry)
        and all(abs(p - q) <= tol * max(1.0, abs(p), abs(q)) for p, q in zip(rx, ry, strict=True))
        for rx, ry in zip(x, y, strict=True)
    )


def _magnitude(case: Case) -> float:
    inner = len(case["b"])
    return float(max(1, inner))


def _shape(case: Case, c: Matrix) -> bool:
    cols = len(case["b"][0]) if case["b"] else 0
    return len(c) == len(case["a"]) and all(len(row) == cols for row in c)


def _freivalds(case: Case, c: Matrix) -> bool:
    # A fixed pseudo-random probe per case: a wrong product passes with negligible chance.
    if not _shape(case, c):
        return False
    rng = random.Random(len(case["a"]) * 7919 + len(case["b"]))
    r = [rng.uniform(-1.0, 1.0) for _ in range(len(c[0]) if c else 0)]
    br = [math.fsum(x * y for x, y in zip(row, r, strict=True)) for row in case["b"]]
    abr = [math.fsum(x * y for x, y in zip(row, br, strict=True)) for row in case["a"]]
    cr = [math.fsum(x * y for x, y in zip(row, r, strict=True)) for row in c]
    return close([abr], [cr], _magnitude(case) * len(r))


def _transposed_case(case: Case) -> Case:
    return {"a": transpose(case["b"]), "b": transpose(case["a"])}


SCALE = 3.0


def _scaled_case(case: Case) -> Case:
    return {"a": [[SCALE * x for x in row] for row in case["a"]], "b": case["b"]}


def _row_permuted(case: Case, rng: random.Random) -> Case:
    order = list(range(len(case["a"])))
    rng.shuffle(order)
    return {"a": [case["a"][i] for i in order], "b": case["b"], "order": order}


class MatmulTask(Task):
    """Case: A (m x n) and B (n x p) with m, n, p from 1 to ``maxSize`` and entries in [-1, 1]."""

    properties = (
        Property("shape", _shape, "C is m x p"),
        Property("freivalds", _freivalds, "A (B r) = C r for a random r"),
    )
    relations = (
        Relation(
            "transpose",
            _transposed_case,
            relate=lambda c, follow: close(transpose(c), follow),
            description="(A B)^T = B^T A^T",
        ),
        Relation(
            "scale",
            _scaled_case,
            relate=lambda c, follow: close([[SCALE * x for x in row] for row in c], follow, SCALE),
            description="(s A) B = s (A B)",
        ),
        Relation(
            "row_permutation",
            _row_permuted,
            relate=lambda case, follow_case, c, follow: close(
                [c[i] for i in follow_case["order"]], follow
            ),
            uses_rng=True,
            sees_cases=True,
            description="permuting A's rows permutes C's rows",
        ),
    )

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.max_size = int(self.params.get("maxSize", 24))
        self.tile = int(self.params.get("tile", 8))

    def generate(self, seed: int, index: int) -> Case:
        """Random shapes and entries."""
        rng = case_rng(seed, index)
        m, n, p = (rng.randint(1, self.max_size) for _ in range(3))
        return {
            "a": [[rng.uniform(-1.0, 1.0) for _ in range(n)] for _ in range(m)],
            "b": [[rng.uniform(-1.0, 1.0) for _ in range(p)] for _ in range(n)],
        }

    def solve(self, case: Case) -> Matrix:
        """The tiled kernel, for runs without a comparison."""
        return matmul_tiled(case, self.tile)


task = MatmulTask

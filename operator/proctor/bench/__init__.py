"""BenchmarkSuite engine: the matrix of cells, the measuring runner, storage, the per-cell
worker, statistics summaries, reports and the local runner (``proctor run suite.yaml``).

One *cell* is a benchmark measured under one variant. Each cell has its own queue whose
entries are repetitions ``[i, i + 1)``, and its own results under the suite run's storage, so
the engine's queue, lease and exactly-once write machinery carry over unchanged. See
docs/benchmarks.md.
"""

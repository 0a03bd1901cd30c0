"""A BenchmarkSuite's reconcile pass, its pods and its schedule."""

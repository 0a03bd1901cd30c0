"""Proctor: evaluation runs and benchmark suites as Kubernetes custom resources."""

__version__ = "0.1.0"

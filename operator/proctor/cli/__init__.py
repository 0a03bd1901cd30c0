"""The ``proctor`` command line: :mod:`proctor.cli.main` builds the parser and dispatches;
each command that has grown beyond a few lines lives in a module of its own beside it."""

from proctor.cli.main import build_parser, kubectl_plugin, main

__all__ = ["build_parser", "kubectl_plugin", "main"]

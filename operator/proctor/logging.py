"""structlog set-up for workers and ``proctor run``.

``PROCTOR_LOG_FORMAT`` is ``json`` (one object per line, for pods) or ``console``;
``PROCTOR_LOG_LEVEL`` is a standard level name (default ``info``). Logs go to stderr, so
``proctor run --json`` keeps stdout for its summary. Credentials are masked in every line
(:mod:`proctor.redact`).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

import structlog

from proctor.redact import install_stdlib_redaction, redact_event_dict, remember_environment


class _StderrLogger:
    """Writes each event to whatever ``sys.stderr`` is *now*.

    structlog's PrintLogger keeps the stream it was created with; when that stream is
    replaced and closed (pytest's capture, a daemonised process) every later log call would
    raise. Looking the stream up per call costs nothing measurable here.
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*_: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog once for this process; every event, stdlib record and uncaught
    traceback is redacted (:mod:`proctor.redact`)."""
    install_stdlib_redaction()
    remember_environment(os.environ)  # a worker's Secrets arrive as variables
    fmt = (fmt or os.environ.get("PROCTOR_LOG_FORMAT") or "console").lower()
    level_name = (level or os.environ.get("PROCTOR_LOG_LEVEL") or "info").upper()
    numeric = std_logging.getLevelNamesMapping().get(level_name, std_logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event_dict,  # last before rendering: values, tracebacks, bound context
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        # Not cached: a cached module logger keeps the configuration of its first use, and
        # `proctor run` forks its workers, which configure their own (JSON, their level, their
        # log file); a logger the parent had used dropped the workers' info lines. No log call
        # is on a per-case path, so building the bound logger per call costs nothing that counts.
        cache_logger_on_first_use=False,
    )

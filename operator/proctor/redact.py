"""Credential redaction for every text that leaves a process: errors, logs, Events, status.

Three things are scrubbed: the userinfo of any URL (``redis://:pw@host`` becomes
``redis://***@host``), the values of secret-looking query parameters and ``key=value`` pairs
(``?X-Amz-Signature=...``, ``token=...``), and the exact values of the credentials this
process knows (the Secrets the operator read, :func:`remember_secret_data`, and a worker's own
environment, :func:`remember_environment`), which an exception text may quote in any form.
Over-masking is preferred to a leak: a path with an ``@`` loses its host in messages.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

MASK = "***"

MIN_SECRET_LENGTH = 4
"""Shorter remembered values are not scrubbed from free text: masking every "ab" would make
logs unreadable, and a URL's userinfo is masked whatever its length."""

PUBLIC_SECRET_KEYS = frozenset({"region", "endpoint"})
"""Secret keys whose values are locations, not credentials (kept readable in messages)."""

PUBLIC_VARIABLES = frozenset({"PWD", "OLDPWD"})
"""Variables whose names look secret (``pwd``) but hold the shell's working directories:
masking them would mask every path under the directory a run was started in."""

_SECRET_NAME = re.compile(
    r"password|passwd|\bpass\b|pwd|secret|token|signature|credential|authorization"
    r"|api[-_]?key|access[-_]?key|private[-_]?key",
    re.IGNORECASE,
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PAIR = re.compile(r"(?P<key>[A-Za-z][A-Za-z0-9_.-]*)(?P<sep>=|:\s*)(?P<value>[^\s&'\",;]+)")

_lock = threading.Lock()
_known: frozenset[str] = frozenset()
_index: dict[str, tuple[str, ...]] = {}
"""The remembered values by their first MIN_SECRET_LENGTH characters, longest first: a text is
scanned once whatever the number of values (an operator with a thousand runs remembers
thousands, and every log line and status write is scrubbed)."""


def is_secret_name(name: str) -> bool:
    """Whether a parameter or variable name looks like it holds a credential (pure)."""
    return bool(_SECRET_NAME.search(name))


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        parts.append(f"{key}={MASK}" if eq and value and is_secret_name(unquote(key)) else item)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` without its userinfo and with secret-looking query values masked (pure).

    Everything between ``://`` and the last ``@`` is masked, not only what a URL parser takes
    for userinfo: passwords are often pasted unencoded, with ``/``, ``?`` or ``#`` in them.
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return url
    head, rest = url[: scheme.end()], url[scheme.end() :]
    if "@" in rest:
        rest = f"{MASK}@{rest.rpartition('@')[2]}"
    base, mark, tail = rest.partition("?")
    if mark:
        query, hash_, fragment = tail.partition("#")
        rest = f"{base}?{_redact_query(query)}{hash_}{fragment}"
    return head + rest


def _redact_pair(match: re.Match[str]) -> str:
    if is_secret_name(match["key"]) and match["value"] != MASK:
        return f"{match['key']}{match['sep']}{MASK}"
    return match[0]


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL credentials, secret-looking ``key=value`` pairs, the remembered
    Secret values and ``secrets`` masked (pure but for the remembered values)."""
    out = _URL.sub(lambda m: redact_url(m[0]), text)
    out = _PAIR.sub(_redact_pair, out)
    found = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH and s in out}
    index = _index
    if index:
        for i in range(len(out) - MIN_SECRET_LENGTH + 1):
            for value in index.get(out[i : i + MIN_SECRET_LENGTH], ()):
                if out.startswith(value, i):
                    found.add(value)
    for value in sorted(found, key=len, reverse=True):  # a value may contain a shorter one
        out = out.replace(value, MASK)
    return out


def _url_secrets(value: str) -> list[str]:
    scheme = _SCHEME.match(value)
    if scheme is None:
        return []
    rest = value[scheme.end() :]
    userinfo = rest.rpartition("@")[0] if "@" in rest else ""
    # The password, or the whole userinfo (a token is often written as the user name).
    found = [p for p in (userinfo, userinfo.partition(":")[2]) if p]
    for item in urlsplit(value).query.split("&") if "?" in rest else ():
        key, _, val = item.partition("=")
        if val and is_secret_name(unquote(key)):
            found.append(val)
    return found


def secret_values(data: Mapping[str, str]) -> set[str]:
    """The values of a Secret's data that are credentials, in the forms a text may quote
    them: a URL's userinfo and secret query values, every other value whole (pure)."""
    found: set[str] = set()
    for key, value in data.items():
        if key.lower() in PUBLIC_SECRET_KEYS or not value:
            continue
        pieces = _url_secrets(value) if "://" in value else [value]
        for piece in pieces:
            found |= {piece, unquote(piece), quote(piece, safe="")}
    return {v for v in found if len(v) >= MIN_SECRET_LENGTH}


def remember_secret_data(data: Mapping[str, str]) -> None:
    """Scrub this Secret's credential values from every later :func:`redact_text`."""
    global _known, _index  # noqa: PLW0603 - process-wide, read lock-free by every log call
    values = secret_values(data)
    if values <= _known:
        return
    with _lock:
        _known = _known | values
        index: dict[str, list[str]] = {}
        for value in sorted(_known, key=len, reverse=True):
            index.setdefault(value[:MIN_SECRET_LENGTH], []).append(value)
        _index = {k: tuple(v) for k, v in index.items()}


def environment_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of a process environment that hold credentials: secret-looking names
    (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ``*PASSWORD*``) and URLs with userinfo such as
    ``PROCTOR_QUEUE_URL`` (pure). Workers get their Secrets this way."""
    return {
        k: v
        for k, v in environ.items()
        if (is_secret_name(k) and k not in PUBLIC_VARIABLES)
        or ("://" in v and "@" in v and _SCHEME.match(v))
    }


def remember_environment(environ: Mapping[str, str]) -> None:
    """Scrub this process's credentials from every later :func:`redact_text`."""
    remember_secret_data(environment_secrets(environ))


def forget_secrets() -> None:
    """Forget every remembered value (tests)."""
    global _known, _index
    with _lock:
        _known, _index = frozenset(), {}


def redact_value(value: Any) -> Any:
    """Strings redacted, mappings and sequences walked, other values unchanged."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact_event_dict(_logger: object, _method: str, event_dict: Any) -> Any:
    """structlog processor: every value of every event redacted (after ``format_exc_info``,
    so tracebacks are too)."""
    return {k: redact_value(v) for k, v in event_dict.items()}


def _redacting_factory(base: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        try:
            record.msg = redact_text(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[0] is not None:
                text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
                record.exc_text = redact_text(text)
        except Exception:  # a log call must never fail on redaction
            record.msg, record.args = "(log message withheld: it could not be redacted)", None
        return record

    factory.proctor_redacting = True  # type: ignore[attr-defined]
    return factory


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    text = "".join(traceback.format_exception(kind, exc, tb))
    sys.stderr.write(redact_text(text))


def install_stdlib_redaction() -> None:
    """Redact every stdlib log record (kopf, botocore) and uncaught traceback of this
    process; idempotent."""
    base = logging.getLogRecordFactory()
    if not getattr(base, "proctor_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(base))
    sys.excepthook = _excepthook

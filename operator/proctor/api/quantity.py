"""Kubernetes quantities (``500m``, ``2Gi``) and Go-style durations (``30s``, ``1h30m``).

Parsed exactly as Kubernetes writes them so that a spec valid for the apiserver is valid here.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The canonical quantity grammar from k8s.io/apimachinery (resource.Quantity's OpenAPI pattern).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"

_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity or duration."""


def is_quantity(value: str) -> bool:
    return bool(_QUANTITY_RE.match(value))


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity's value in base units (cores, bytes, GPUs)."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = value.strip()
    if not _QUANTITY_RE.match(text):
        raise QuantityError(
            f"{value!r} is not a Kubernetes quantity; write it like 500m, 2, 1.5, 512Mi or 2Gi"
        )
    number = re.match(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", text)
    assert number is not None  # the full pattern matched, so the number part exists
    suffix = text[number.end() :]
    try:
        base = Decimal(number.group(0))
    except InvalidOperation as exc:  # pragma: no cover - excluded by the pattern
        raise QuantityError(f"{value!r} is not a Kubernetes quantity") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix in _DECIMAL:
        return base * _DECIMAL[suffix]
    return Decimal(text)  # exponent form such as 1e3


def cpu_millis(value: str | int | float) -> int:
    """CPU quantity in millicores, rounded up as the scheduler does."""
    millis = parse_quantity(value) * 1000
    return int(millis.to_integral_value(rounding="ROUND_CEILING"))


def to_bytes(value: str | int | float) -> int:
    """Memory quantity in bytes, rounded up."""
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_bytes(n: int) -> str:
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def is_duration(value: str) -> bool:
    return bool(_DURATION_RE.match(value))


def parse_duration(value: str | int | float) -> float:
    """Seconds in a Go duration string (``90s``, ``1m30s``, ``250ms``); numbers are seconds."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if not _DURATION_RE.match(text):
        raise QuantityError(f"{value!r} is not a duration; write it like 500ms, 30s, 5m or 1h30m")
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART_RE.findall(text))


def format_duration(seconds: float) -> str:
    """Shortest Go-style rendering: ``90`` -> ``1m30s``; zero is ``0s``, as Go writes it."""
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or not parts:
        parts.append(f"{secs}s")
    return "".join(parts)

from decimal import Decimal

import pytest

from proctor.api.quantity import (
    QuantityError,
    cpu_millis,
    format_bytes,
    format_cpu,
    format_duration,
    parse_duration,
    parse_quantity,
    to_bytes,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("512Mi", Decimal(512 * 2**20)),
        ("2Gi", Decimal(2 * 2**30)),
        ("1k", Decimal(1000)),
        ("1e3", Decimal(1000)),
        ("100n", Decimal("1e-7")),
        (3, Decimal(3)),
        (0.25, Decimal("0.25")),
    ],
)
def test_parse_quantity(text: str | int | float, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["two", "1.2.3", "Gi", "5 Gi", "", "1Xi"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(QuantityError, match="not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "millis"), [("500m", 500), ("1", 1000), ("0.1", 100), ("1.0001", 1001), (2, 2000)]
)
def test_cpu_millis_rounds_up(text: str | int, millis: int) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "n"), [("1Gi", 2**30), ("1G", 10**9), ("512Mi", 512 * 2**20), ("1.5Ki", 1536)]
)
def test_to_bytes(text: str, n: int) -> None:
    assert to_bytes(text) == n


@pytest.mark.parametrize(
    ("millis", "text"), [(500, "500m"), (1000, "1"), (2500, "2500m"), (8000, "8")]
)
def test_format_cpu(millis: int, text: str) -> None:
    assert format_cpu(millis) == text


@pytest.mark.parametrize(
    ("n", "text"), [(2**30, "1Gi"), (512 * 2**20, "512Mi"), (1000, "1000"), (3 * 2**30, "3Gi")]
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("1.5h", 5400.0), (7, 7.0)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "s", "1d", "-5s", "5 s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(QuantityError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90, "1m30s"), (0.25, "250ms"), (3600, "1h"), (3661, "1h1m1s"), (0, "0s"), (0.0004, "0ms")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text

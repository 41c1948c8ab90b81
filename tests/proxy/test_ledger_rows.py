"""Ledger row building: timestamps formatted fast, and exactly as datetime formats them."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from proxy.stages.ledger import _iso


def _reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=-1e9, max_value=4e9, allow_nan=False))
def test_iso_matches_datetime(ts: float) -> None:
    assert _iso(ts) == _reference(ts)


@given(st.integers(min_value=0, max_value=4_000_000_000), st.sampled_from([0.0, 0.0005, 0.9995, 0.9999995, 1e-7]))
def test_iso_matches_datetime_at_rounding_edges(second: int, frac: float) -> None:
    assert _iso(second + frac) == _reference(second + frac)
    assert _iso(second - frac) == _reference(second - frac)  # the cached second changes back and forth

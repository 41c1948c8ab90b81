"""`proxy.errors`: one tree, drawn in its docstring, with one envelope base shared with the mock."""

from __future__ import annotations

import re

import proxy.errors
import proxy.pipeline  # noqa: F401  (imports every stage: any error class they define is counted)
import proxy.resources  # noqa: F401
from mockserver.errors import MockError
from proxy.config import FIXTURE_MODES
from proxy.errors import GatewayError
from proxy.stages.fixtures import MODES
from proxy.wire.errors import APIError


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_gateway_error_is_defined_in_proxy_errors_and_drawn_in_its_tree() -> None:
    errors = {c for c in _subclasses(GatewayError) if c.__module__.startswith("proxy.")}
    assert errors, "no GatewayError subclasses found"
    elsewhere = sorted(f"{c.__module__}.{c.__name__}" for c in errors if c.__module__ != "proxy.errors")
    assert not elsewhere, f"define these in proxy/errors.py: {elsewhere}"
    drawn = set(re.findall(r"[─ ]([A-Z]\w+)\s+(?:\d{3}|`)", proxy.errors.__doc__ or ""))
    missing = sorted(c.__name__ for c in errors if c.__name__ not in drawn)
    assert not missing, f"add these to the tree in proxy.errors' docstring: {missing}"


def test_the_gateway_and_the_mock_share_one_envelope_base() -> None:
    gateway = proxy.errors.RateLimited("slow down", headers={"retry-after": "1"})
    mock = MockError(429, "slow down", type="requests", code="rate_limit_exceeded", headers={"retry-after": "1"})
    assert isinstance(gateway, APIError) and isinstance(mock, APIError)
    assert gateway.response().body == mock.response().body
    assert gateway.response().status == mock.response().status == 429


def test_fixture_modes_are_defined_once() -> None:
    assert MODES is FIXTURE_MODES
    assert FIXTURE_MODES == ("live", "record", "replay", "record-missing")

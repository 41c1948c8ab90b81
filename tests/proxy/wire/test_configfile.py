"""Config errors name the file, key and reason, and never show a secret they were given."""

from __future__ import annotations

import pytest

from proxy.config import Config
from proxy.wire.configfile import ConfigError, validate


def error_for(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(Config, raw, "config.toml")
    return str(caught.value)


def test_a_wrong_value_is_shown() -> None:
    assert "(got 'sometimes')" in error_for({"limits": {"on_limit": "sometimes"}})


def test_a_key_given_with_the_wrong_type_is_not_shown() -> None:
    message = error_for({"keys": [{"name": "ci", "key": ["sk-live-secret-123"]}]})
    assert "keys[0].key" in message and "sk-live-secret-123" not in message


def test_credentials_in_a_rejected_url_are_not_shown() -> None:
    message = error_for({"routes": [{"model": "x", "base_url": "ftp://user:s3cret@host/v1"}]})
    assert "routes[0].base_url" in message and "s3cret" not in message and "ftp://***@host/v1" in message

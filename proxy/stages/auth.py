"""authenticate: who is calling. Keys from config are compared by SHA-256 digest in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from ..config import KeyConfig
from ..errors import AuthenticationError
from ..exchange import Exchange
from ..wire.configfile import ConfigError
from . import Stage

ADMIN_NAME = "admin"  # the principal of `[server] admin_key_env`'s key


def token_of(headers: Mapping[str, str]) -> str | None:
    """The bearer token from `Authorization`, or Azure-style `api-key`."""
    get = headers.get
    auth = get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return get("api-key") or None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Authenticate(Stage):
    """Sets `ex.principal`: the key's name, or `anon-<hash>` when no keys are configured."""

    def __init__(self, keys: list[KeyConfig], config_file: str = "config.toml",
                 admin_key_env: str | None = None) -> None:
        self._keys: list[tuple[bytes, str]] = []
        self._admins = {key.name for key in keys if key.admin}
        if admin_key_env is not None and keys:  # with no [[keys]] every caller sees only what is open anyway
            value = os.environ.get(admin_key_env)
            if not value:
                raise ConfigError(config_file, "server.admin_key_env",
                                  f"environment variable {admin_key_env} is not set")
            if any(key.name == ADMIN_NAME for key in keys):
                raise ConfigError(config_file, "server.admin_key_env",
                                  f"a [[keys]] entry is already named {ADMIN_NAME!r}, the name of this key")
            self._keys.append((_digest(value), ADMIN_NAME))
            self._admins.add(ADMIN_NAME)
        for key in keys:
            if key.key_sha256 is not None:
                digest = bytes.fromhex(key.key_sha256)
            elif key.key_env is not None:
                value = os.environ.get(key.key_env)
                if not value:
                    raise ConfigError(config_file, f"keys[{key.name}].key_env",
                                      f"environment variable {key.key_env} is not set")
                digest = _digest(value)
            else:
                digest = _digest(key.key or "")
            self._keys.append((digest, key.name))

    async def request(self, ex: Exchange) -> None:
        token = token_of(ex.headers)
        if token is None:
            raise AuthenticationError(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        ex.client_token = token
        digest = _digest(token)
        if not self._keys:
            ex.principal = "anon-" + digest.hex()[:8]
            return
        name = None
        for known, key_name in self._keys:  # every key compared: timing reveals nothing
            if hmac.compare_digest(known, digest):
                name = key_name
        if name is None:
            raise AuthenticationError("Incorrect API key provided. The key is not one of the keys in the "
                                      "gateway's configuration.")
        ex.principal = name
        ex.admin = name in self._admins

"""Who is looking: every key's rows (an admin, or anyone on a gateway without `[[keys]]`) or one key's."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from ..errors import Forbidden, InvalidRequest


@dataclass(frozen=True, slots=True)
class Viewer:
    """`key`: the one key whose rows the caller may see; None: every key's."""

    key: str | None
    principal: str | None

    def scoped(self, asked: str | None, param: str = "key") -> str | None:
        """The key filter to apply: the caller's own for a non-admin key (asking for another one is an
        error), what was asked otherwise."""
        if self.key is None:
            return asked
        if asked is not None and asked != self.key:
            raise Forbidden(f"This key may see only its own requests ({self.key}); an admin key sees every key's.",
                            param=param)
        return self.key


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def viewer(request: web.Request) -> Viewer:
    """The caller, or the `GatewayError` to answer (401 for no or a wrong key)."""
    from ..app import CONFIG, _caller

    config = request.app[CONFIG]
    if not config.keys:
        if not loopback(config.server.host):
            raise Forbidden("The dashboard shows every request in the ledger: on a gateway that listens beyond "
                            "loopback it needs [[keys]] (one with admin = true sees everything).")
        return Viewer(None, None)
    ex = await _caller(request)
    return Viewer(None if ex.admin else ex.principal, ex.principal)


def one(request: web.Request, name: str) -> str | None:
    """A query parameter given once (empty counts as absent)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidRequest(f"Give {name} once.", param=name)
    return values[0] or None if values else None


def integer(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = one(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, not {text!r}.", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, not {value}.", param=name)
    return value

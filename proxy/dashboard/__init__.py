"""The spend dashboard: `GET /dashboard` (a page served from this package, working offline) and the JSON
behind it, `/oaigate/spend`, `/oaigate/requests`, `/oaigate/limits`, `/oaigate/status`, and OpenAI's
usage and costs API under `/oaigate/v1/organization/` (`usage`).

Who sees what (`access`): with no `[[keys]]` on a loopback bind, everyone sees everything; with
`[[keys]]`, an admin key sees everything, any other key only its own rows, budgets and limits, and no
or a wrong key gets OpenAI's 401 envelope. Queries run in worker threads on read-only connections.
"""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the dashboard's routes (before the app's catch-all) and its startup hook."""
    from . import api, usage

    api.setup(app)
    usage.setup(app)


__all__ = ["setup"]

"""The control API under `/_mock/` (no auth, apart from `/v1`) and the request journal.

- `GET /_mock/journal`: the last `journal_size` requests received outside `/_mock/`, oldest first:
  method, path, query, headers (credentials removed), the JSON body when the request carried JSON,
  and the status answered. Body and status are recorded as the answer's head is sent: both are null
  until then (in flight, or held by `x-mock-fault: timeout`), and stay null for a request that got no
  answer. `DELETE /_mock/journal` empties it.
- `POST /_mock/reset`: forget all state: the journal, fault counters and whatever modules
  registered with `on_reset` (files, batches...). The virtual clock keeps its time.
- `GET /_mock/clock`, `POST /_mock/clock/advance {"seconds": N}`: read and move the virtual clock;
  batches observe the new time at their next retrieve. With `state_dir` set, the clock's time is
  kept there and resumed at the next start.
- `GET`, `POST`, `DELETE /_mock/rules`: the scripted answers, registered by `rules`.

A module with state of its own registers a reset hook while the app is built::

    from .control import on_reset
    on_reset(app, store.clear)
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proxy.wire.jsoncodec import JSONDecodeError, dumps, loads

from ..errors import invalid
from .state import CLOCK, FAULTS, SETTINGS
from .store import StateDir
from .validation import Num, Obj

ResetHook = Callable[[], None]
RESET_HOOKS = web.AppKey("reset_hooks", list[ResetHook])
PREFIX = "/_mock/"
JOURNAL_BODY_BYTES = 256 * 1024  # larger JSON bodies are journalled as null, with their size
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"})
_ADVANCE = Obj({"seconds": Num(0)}, required=("seconds",))


class Journal:
    """The most recent requests, at most `size` of them."""

    def __init__(self, size: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._ids = itertools.count(1)

    def open(self, request: web.Request, now: int) -> dict[str, Any]:
        """Record a request as it arrives; the caller fills in `status` and `body` when it is answered."""
        entry = {
            "id": next(self._ids),
            "time": now,
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS},
            "body": None,
            "body_bytes": request.content_length,
            "status": None,
        }
        if self._entries.maxlen:
            self._entries.append(entry)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()


JOURNAL = web.AppKey("journal", Journal)


def on_reset(app: web.Application, hook: ResetHook) -> None:
    """Have `POST /_mock/reset` call `hook` (while building the app, before it starts)."""
    if RESET_HOOKS not in app:
        app[RESET_HOOKS] = []
    app[RESET_HOOKS].append(hook)


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, if it sent one of journal-able size; never raises."""
    if request.content_type != "application/json" or (request.content_length or 0) > JOURNAL_BODY_BYTES:
        return None
    try:
        raw = await request.read()
        return loads(raw) if raw and len(raw) <= JOURNAL_BODY_BYTES else None
    except Exception:  # a body the handler already failed on: the journal must not fail the request too
        return None


_ENTRY = web.RequestKey("journal_entry", dict[str, Any])


@web.middleware
async def journal_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Journal every request outside `/_mock/` as it arrives; `_answered` completes the entry."""
    if not request.path.startswith(PREFIX):
        request[_ENTRY] = request.app[JOURNAL].open(request, request.app[CLOCK].now())
    return await handler(request)


async def _answered(request: web.Request, response: web.StreamResponse) -> None:
    """Record the body and status as the answer's head is sent, before any byte of it can reach the
    client: not once the handler returns, which a stream does only after its last byte, and never when
    its client leaves halfway (the write fails). Whoever has seen an answer finds it journalled."""
    entry = request.get(_ENTRY)
    if entry is not None and entry["status"] is None:
        entry["body"] = await _json_body(request)  # mostly read by the handler already: the cached bytes
        entry["status"] = response.status  # last: a status in the journal means its body is there too


def _reply(body: Any) -> web.Response:
    return web.Response(body=dumps(body), content_type="application/json")


async def journal(request: web.Request) -> web.Response:
    entries = request.app[JOURNAL].entries()
    return _reply({"object": "list", "data": entries})


async def clear_journal(request: web.Request) -> web.Response:
    request.app[JOURNAL].clear()
    return _reply({"object": "list", "data": []})


async def reset(request: web.Request) -> web.Response:
    app = request.app
    app[JOURNAL].clear()
    app[FAULTS].reset()
    for hook in app.get(RESET_HOOKS, []):
        hook()
    app[CLOCK].rewind(app[SETTINGS].clock_start)  # a reset mock answers as a freshly started one
    return _reply({"reset": True, "now": app[CLOCK].now()})


async def clock(request: web.Request) -> web.Response:
    return _reply({"now": request.app[CLOCK].now(), "start": request.app[SETTINGS].clock_start})


async def advance(request: web.Request) -> web.Response:
    try:
        body = loads(await request.read())
    except JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise invalid('The body must be a JSON object like {"seconds": 60}.')
    _ADVANCE.check(body, "")
    clock_ = request.app[CLOCK]
    clock_.advance(body["seconds"])
    settings = request.app[SETTINGS]
    if settings.state_dir:
        StateDir(settings.state_dir).save("clock", "clock", {"seq": 0, "now": clock_.now()})
    return _reply({"now": clock_.now(), "start": request.app[SETTINGS].clock_start})


def setup(app: web.Application) -> None:
    """Register the journal and the `/_mock/` routes; resume the clock kept in `state_dir`."""
    settings = app[SETTINGS]
    app[JOURNAL] = Journal(settings.journal_size)
    app.on_response_prepare.append(_answered)
    if settings.state_dir:
        for _, now in StateDir(settings.state_dir).load("clock", lambda record, _: int(record["now"])):
            app[CLOCK].advance(max(0, now - app[CLOCK].now()))
    app.router.add_get(PREFIX + "journal", journal)
    app.router.add_delete(PREFIX + "journal", clear_journal)
    app.router.add_post(PREFIX + "reset", reset)
    app.router.add_get(PREFIX + "clock", clock)
    app.router.add_post(PREFIX + "clock/advance", advance)


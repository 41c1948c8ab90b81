"""The page and the JSON it reads: `/dashboard`, `/oaigate/spend`, `/oaigate/requests`, `/oaigate/limits`,
`/oaigate/status`. Every answer is computed for the caller (`access.viewer`): a non-admin key's spend,
requests, budgets and limits are its own."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata, resources
from typing import Any, TypeVar, get_args

from aiohttp import web

from ..db import queries
from ..db.ledger import connect_readonly, is_url, target
from ..db.queries import Filter, Rollup
from ..db.reports import LedgerError, NoLedger, SpendRow, ledger_time, parse_time
from ..errors import GatewayError, InvalidRequest, LedgerUnavailable
from ..wire.jsoncodec import dumps
from .access import Viewer, integer, one, viewer

log = logging.getLogger("oaigate.dashboard")

ROLLUP = web.AppKey("dashboard_rollup", Rollup)
STARTED = web.AppKey("dashboard_started", float)
WARMING = web.AppKey("dashboard_warming", asyncio.Task[None])
SLOTS = web.AppKey("dashboard_slots", asyncio.Semaphore)


class Running:
    """The connections of the queries running now (interrupted at shutdown), and the PostgreSQL ones kept
    for the next query (opening one costs a login; a SQLite file opens in microseconds)."""

    def __init__(self) -> None:
        self.conns: set[Any] = set()
        self.idle: list[Any] = []
        self.lock = threading.Lock()
        self.closed = False

    def take(self, db: str) -> Any:
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        conn = conn or connect_readonly(db)
        self.conns.add(conn)
        return conn

    def give_back(self, conn: Any, keep: bool) -> None:
        self.conns.discard(conn)
        with self.lock:
            if keep and not self.closed and len(self.idle) < THREADS:
                self.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            self.closed, idle, self.idle = True, self.idle, []
        for conn in idle:
            with suppress(Exception):
                conn.close()


OPEN = web.AppKey("dashboard_open", Running)
THREADS = 2  # worker threads the dashboard's queries take at most: the rest stay free for the gateway
T = TypeVar("T")

STATIC = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
HEADERS = {  # the page loads nothing from elsewhere, and nothing else may frame it
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
}
BY = ("hour", "day", "model", "key", "endpoint")
MAX_PAGE = 500


def setup(app: web.Application) -> None:
    app[ROLLUP] = Rollup()
    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/{name}", asset)
    app.router.add_get("/oaigate/spend", spend)
    app.router.add_get("/oaigate/requests", requests)
    app.router.add_get("/oaigate/limits", limits)
    app.router.add_get("/oaigate/status", status)


async def _startup(app: web.Application) -> None:
    """Build the hourly rollup in a thread now, so the first look at a big ledger does not wait for it."""
    app[STARTED] = time.time()
    app[SLOTS] = asyncio.Semaphore(THREADS)
    app[OPEN] = Running()

    async def warm() -> None:
        try:
            await ledger(app, lambda conn: app[ROLLUP].refresh(conn, datetime.now(UTC)), None)
        except Exception as exc:  # a locked or odd ledger: the first query builds it instead
            log.debug("dashboard rollup not built at startup: %s", exc)

    app[WARMING] = asyncio.get_running_loop().create_task(warm())


async def _cleanup(app: web.Application) -> None:
    """Stop the queries still running (the rollup of a big ledger takes seconds): shutdown does not wait."""
    for conn in list(app[OPEN].conns):
        with suppress(Exception):
            conn.interrupt()
    app[OPEN].close()
    task = app[WARMING]
    if not task.done():
        task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await task


async def ledger(app: web.Application, query: Callable[[Any], T], empty: T) -> T:
    """`query(conn)` in a worker thread on a read-only connection to the SQLite file or the PostgreSQL
    database (at most `THREADS` at once); `empty` when there is no ledger file yet. A ledger that cannot
    be read (held by another process, not a ledger, PostgreSQL unreachable) is logged (without the
    password) and raises LedgerUnavailable: an empty report would say nothing was spent."""
    from ..app import CONFIG

    config = app[CONFIG]
    if not config.ledger.enabled:
        return empty

    def run() -> T:
        running = app[OPEN]
        try:
            db = target(config.ledger)
            conn = running.take(db)
        except NoLedger:
            return empty
        except LedgerError as exc:
            log.warning("dashboard: the ledger cannot be read: %s", exc)
            raise LedgerUnavailable() from None
        keep = False
        try:
            found = query(conn)
            keep = is_url(db)
            return found
        except read_errors(db) as exc:  # opened, then it could not be read (locked, damaged, connection lost)
            log.warning("dashboard: the ledger cannot be read: %s", exc)
            raise LedgerUnavailable() from None
        finally:
            running.give_back(conn, keep)

    async with app[SLOTS]:
        return await asyncio.to_thread(run)


def read_errors(db: str) -> tuple[type[Exception], ...]:
    """What a query on the ledger `db` raises when the ledger cannot be read (not when a query is wrong)."""
    if is_url(db):
        import psycopg

        return (psycopg.OperationalError,)
    return (sqlite3.DatabaseError,)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


async def page(request: web.Request) -> web.Response:
    """The page itself; it asks for a key only when the JSON answers 401."""
    body = await asyncio.to_thread(_asset, "index.html")
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=HEADERS)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        from ..app import not_found

        return await not_found(request)
    body = await asyncio.to_thread(_asset, name)
    return web.Response(body=body, headers={**HEADERS, "Content-Type": STATIC[name] + "; charset=utf-8"})


def _when(request: web.Request, name: str, now: datetime, *, end_of_day: bool = False) -> datetime | None:
    text = one(request, name)
    if text is None:
        return None
    try:
        return parse_time(text, now, end_of_day=end_of_day)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}", param=name) from None


def _choice(request: web.Request, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    value = one(request, name) or default
    if value is not None and value not in choices:
        raise InvalidRequest(f"{name} must be one of {', '.join(choices)}, not {value!r}.", param=name)
    return value


def _filter(request: web.Request, who: Viewer, now: datetime) -> Filter:
    since, until = _when(request, "since", now), _when(request, "until", now, end_of_day=True)
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be before until.", param="since")
    status_class = _choice(request, "status", tuple(queries.STATUS_CLASSES), None)
    return Filter(since, until, key=who.scoped(one(request, "key")), model=one(request, "model"),
                  endpoint=one(request, "endpoint"), status=status_class)


def record(row: SpendRow) -> dict[str, Any]:
    """A spend row as JSON: the fields of `oaigate spend --format json`, costs as micro-dollars and USD
    strings (None when unknown: a successful request whose model has no price)."""
    values = row.as_dict()
    values.pop("group")
    return values


async def spend(request: web.Request) -> web.Response:
    """`?since=&until=&by=hour|day|model|key|endpoint[&split=model|key|endpoint][&key=&model=&endpoint=]`:
    one row per group (and split), the total, and the total of the period of the same length before."""
    now = datetime.now(UTC)
    try:
        who = await viewer(request)
        where = _filter(request, who, now)
        if where.status is not None:
            raise InvalidRequest("status filters requests, not spend (which counts errors in each row).",
                                 param="status")
        by = _choice(request, "by", BY, "day")
        split = _choice(request, "split", get_args(queries.Split), None)
    except GatewayError as exc:
        return exc.response()
    rollup = request.app[ROLLUP]

    def query(conn: Any) -> dict[str, Any]:
        coarsest = "hour" if by == "hour" else "day"
        rows, total = queries.spend_of(rollup.cells(conn, where, now, coarsest), by, split)  # type: ignore[arg-type]
        previous = None
        if where.since is not None:
            end = where.until or now
            previous = queries.total_of(rollup.cells(conn, replace(where, since=where.since - (end - where.since),
                                                                     until=where.since), now, "day"))
        return {"rows": [{by: g, **({"split": s} if split else {}), **record(r)} for g, s, r in rows],
                "total": record(total), "previous": previous and record(previous)}

    empty_total = record(queries.total_of({}))
    try:
        found: dict[str, Any] = await ledger(request.app, query, {"rows": [], "total": empty_total,
                                                                  "previous": empty_total if where.since else None})
    except GatewayError as exc:
        return exc.response()
    return _json({"object": "oaigate.spend", "since": where.since and ledger_time(where.since),
                  "until": ledger_time(where.until or now), "by": by, "split": split,
                  "key": where.key, "model": where.model, "endpoint": where.endpoint, **found})


async def requests(request: web.Request) -> web.Response:
    """`?limit=&before=&key=&model=&status=2xx|3xx|4xx|5xx|error|cut&endpoint=&since=&until=`: ledger rows,
    newest first; `next_before` is the cursor of the next (older) page."""
    now = datetime.now(UTC)
    try:
        who = await viewer(request)
        where = _filter(request, who, now)
        limit = integer(request, "limit", 50, 1, MAX_PAGE)
        before = one(request, "before")
        if before is not None:
            queries.decode_cursor(before)
    except ValueError as exc:
        return InvalidRequest(str(exc), param="before").response()
    except GatewayError as exc:
        return exc.response()
    nothing: tuple[list[dict[str, Any]], str | None] = ([], None)
    try:
        rows, cursor = await ledger(request.app, lambda conn: queries.page(conn, where, limit, before), nothing)
    except GatewayError as exc:
        return exc.response()
    return _json({"object": "list", "data": rows, "has_more": cursor is not None, "next_before": cursor})


async def limits(request: web.Request) -> web.Response:
    """Each rate limit's current use (`data`): requests and tokens taken in the last minute (not yet
    refilled), requests in flight; and the budgets (`budgets`, as `/oaigate/budgets` shows them). A
    non-admin key sees the limits and budgets that name it."""
    from ..app import CONFIG, PIPELINE
    from ..stages.ratelimit import RateLimit

    try:
        who = await viewer(request)
    except GatewayError as exc:
        return exc.response()
    pipeline = request.app[PIPELINE]
    stage = next((s for s in pipeline.before if isinstance(s, RateLimit)), None)
    found = [] if stage is None else stage.limiter.status(who.key, own_only=who.key is not None)
    budgets = pipeline.budgets.status(who.key, own_only=True) if who.key else pipeline.budgets.status(None)
    return _json({"object": "list", "key": who.principal, "data": found, "budgets": budgets,
                  "soft_threshold": request.app[CONFIG].limits.soft_threshold})


def _version() -> str:
    try:
        return metadata.version("oaigate")
    except metadata.PackageNotFoundError:
        return "unknown"


async def status(request: web.Request) -> web.Response:
    """The health box (to a caller with no key on a gateway with `[[keys]]`, only `key_required`):
    upstreams, the ledger writer (rows written, backlog, dropped), fixture mode, uptime, version;
    `ledger.written` changes whenever a row is written, so the page knows when to look again."""
    from ..app import CONFIG, PIPELINE, UPSTREAMS
    from ..stages.auth import token_of

    if request.app[CONFIG].keys and token_of(request.headers) is None:
        # how the page learns it must ask for a key, without an error in the browser's console; a wrong
        # key still gets the 401
        return _json({"object": "oaigate.status", "key_required": True})
    try:
        who = await viewer(request)
    except GatewayError as exc:
        return exc.response()
    pipeline, config = request.app[PIPELINE], request.app[CONFIG]
    writer = pipeline.writer
    return _json({
        "object": "oaigate.status", "key_required": False, "key": who.principal, "admin": who.key is None,
        "version": _version(),
        "uptime_s": round(time.time() - request.app[STARTED], 1),
        "upstreams": [u.name for u in request.app[UPSTREAMS].distinct],
        "fixtures": {"mode": config.fixtures.mode, "cassette": config.fixtures.cassette},
        "ledger": None if writer is None else {"written": writer.written, "backlog": writer.backlog,
                                               "dropped": writer.dropped, "write_failures": writer.failures},
        "budgets": bool(pipeline.budgets.rules), "keys": len(config.keys),
    })

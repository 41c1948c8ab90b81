"""/v1/batches: create from an uploaded JSONL file, a lifecycle on the virtual clock, cancel, list.

A batch is `validating` when created. Its later transitions are taken when it is observed (retrieve,
list, or cancel), stamped with the virtual time they were due:

- pace `instant`: every phase ends when the batch is next retrieved, so the first retrieve finds it
  `completed` (or `failed`), stamped with that time. Cancel does not advance it: an instant batch
  not yet retrieved can still be cancelled.
- pace `realistic`: validating, finalizing and cancelling take `batch_phase_s` virtual seconds each,
  in_progress `batch_request_s` per request, with `request_counts` growing as lines are run.
- `batch_expire`: the batch stops halfway through its requests and expires when its 24h window ends;
  the output file holds what ran, the error file a `batch_expired` line for each request that did not.

Validation reports every bad line (up to 1000) in `errors` with OpenAI's codes (`invalid_json_line`,
`duplicate_custom_id`, `url_mismatch`, `model_mismatch`, `empty_file`, `too_many_tasks`, or a
parameter error such as `missing_required_parameter`), and the batch `failed`. Each line runs through
its endpoint's own handler (`dispatch.run_line`): a 200 goes to the output file, any other status to
the error file, as `{id, custom_id, response: {status_code, request_id, body}, error: null}`. A body is
what a direct call with the same body answers at the virtual time the line was due (its `created`;
the id is the same too: ids derive from the body); `request_id` is that call's `x-request-id`
without its `req_` prefix.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, fields
from typing import Any, cast

from aiohttp import web

from proxy.wire.jsoncodec import JSONDecodeError, digest, dumps, loads

from ...engine.control import on_reset
from ...engine.dispatch import LINE_HANDLERS, run_line
from ...engine.rng import RequestRandom
from ...engine.state import CLOCK, SETTINGS, Call, endpoint
from ...engine.store import BoundedStore, StateDir
from ...engine.validation import METADATA, Int, Obj, Str
from ...errors import MockError, invalid
from ...settings import MockSettings
from .files import FILES, StoredFile, answer, following, list_page, query_int

ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations",
             "/v1/images/generations", "/v1/images/edits", "/v1/videos")
WINDOW_S = 86_400
MAX_REQUESTS = 50_000
MAX_REPORTED_ERRORS = 1000
_RUNNING = ("validating", "in_progress", "finalizing")
_EXPIRED = {"code": "batch_expired", "message": "This request could not be executed before the completion window "
            "expired."}

REQUEST = Obj(
    {
        "input_file_id": Str(),
        "endpoint": Str(ENDPOINTS),
        "completion_window": Str(("24h",)),
        "metadata": METADATA,
        "output_expires_after": Obj({"anchor": Str(("created_at",)), "seconds": Int(3600, 2_592_000)},
                                    required=("anchor", "seconds")),
    },
    required=("input_file_id", "endpoint", "completion_window"),
)
_LINE = Obj({"custom_id": Str(), "method": Str(("POST",)), "url": Str(), "body": Obj(extra=True)},
            required=("custom_id", "method", "url", "body"), extra=True)


@dataclass(frozen=True, slots=True)
class Line:
    """One request of the input file; `number` counts from 1 like an editor's lines."""

    number: int
    custom_id: str
    body: dict[str, Any]


def _error(code: str | None, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_input(data: bytes, endpoint_: str) -> tuple[list[Line], list[dict[str, Any]]]:
    """The requests of a batch input file, or the errors OpenAI reports for it (blank lines are skipped)."""
    raw_lines = [(n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    if not raw_lines:
        return [], [_error("empty_file", "The batch input file is empty.")]
    if len(raw_lines) > MAX_REQUESTS:
        return [], [_error("too_many_tasks", f"The batch input file has {len(raw_lines)} requests; a batch can "
                           f"hold at most {MAX_REQUESTS}.")]
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model = None
    for number, raw in raw_lines:
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        try:
            value = loads(raw)
        except JSONDecodeError:
            errors.append(_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        if not isinstance(value, dict):
            errors.append(_error("invalid_json_line", "This line is not a JSON object.", number))
            continue
        try:
            _LINE.check(value, "")
        except MockError as exc:
            errors.append(_error(exc.code, exc.message, number, exc.param))
            continue
        if value["custom_id"] in seen:
            errors.append(_error("duplicate_custom_id", "The custom_id for this request is a duplicate of another "
                                 "request. The custom_id parameter must be unique for each request in a batch.",
                                 number, "custom_id"))
            continue
        seen.add(value["custom_id"])
        if value["url"] != endpoint_:
            errors.append(_error("url_mismatch", f"The url of this request ('{value['url']}') does not match the "
                                 f"batch's endpoint ('{endpoint_}').", number, "url"))
            continue
        line_model = value["body"].get("model")
        if isinstance(line_model, str):
            model = model or line_model
            if line_model != model:
                errors.append(_error("model_mismatch", f"The model of this request ('{line_model}') differs from "
                                     f"the batch's model ('{model}'); every request of a batch must use the same "
                                     "model.", number, "body.model"))
                continue
        lines.append(Line(number, value["custom_id"], value["body"]))
    return lines, errors


@dataclass(slots=True)
class Job:
    """One batch: what it was created with, where it stands, and its results so far."""

    id: str
    seq: int
    endpoint: str
    input_file_id: str
    input_file: StoredFile | None  # until validated
    created_at: int
    metadata: dict[str, str] | None
    output_expires_s: int | None
    status: str = "validating"
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    lines: list[Line] = field(default_factory=list)
    total: int = 0
    done: int = 0
    completed: int = 0
    failed: int = 0
    outputs: list[bytes] = field(default_factory=list)
    failures: list[bytes] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("input", "cached", "output", "reasoning"), 0))
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(
        ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
         "cancelled_at")))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def expires_at(self) -> int:
        return self.created_at + WINDOW_S

    def record(self) -> dict[str, Any]:
        """What `state_dir` keeps of the batch (its input file is kept with the files)."""
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("input_file", "lock")}
        kept["lines"] = [[line.number, line.custom_id, line.body] for line in self.lines]
        kept["outputs"] = [o.decode() for o in self.outputs]
        kept["failures"] = [o.decode() for o in self.failures]
        return kept

    @classmethod
    def from_record(cls, record: dict[str, Any], input_file: StoredFile | None) -> Job:
        values = {**record, "lines": [Line(*line) for line in record["lines"]],
                  "outputs": [o.encode() for o in record["outputs"]],
                  "failures": [o.encode() for o in record["failures"]]}
        return cls(**values, input_file=input_file)

    def card(self) -> dict[str, Any]:
        """The Batch object, fields in OpenAI's order."""
        t = self.times
        u = self.usage
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": "24h", "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "in_progress_at": t["in_progress_at"], "expires_at": self.expires_at,
            "finalizing_at": t["finalizing_at"], "completed_at": t["completed_at"], "failed_at": t["failed_at"],
            "expired_at": t["expired_at"], "cancelling_at": t["cancelling_at"], "cancelled_at": t["cancelled_at"],
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {"input_tokens": u["input"], "input_tokens_details": {"cached_tokens": u["cached"]},
                      "output_tokens": u["output"], "output_tokens_details": {"reasoning_tokens": u["reasoning"]},
                      "total_tokens": u["input"] + u["output"]},
            "metadata": self.metadata,
        }

    def add_usage(self, body: Any) -> None:
        """Add a response body's token usage (chat, completions, embeddings or responses) to the batch's."""
        raw = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(raw, dict):
            return
        usage: dict[str, Any] = raw
        self.usage["input"] += usage.get("prompt_tokens", usage.get("input_tokens", 0))
        self.usage["output"] += usage.get("completion_tokens", usage.get("output_tokens", 0))
        details_in = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        details_out = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
        self.usage["cached"] += details_in.get("cached_tokens", 0)
        self.usage["reasoning"] += details_out.get("reasoning_tokens", 0)


class Batches:
    """Every batch, bounded by `max_batches`, and the engine that moves them along."""

    def __init__(self, app: web.Application, settings: MockSettings) -> None:
        self._app = app
        self._seed = settings.seed
        self._jobs: BoundedStore[Job] = BoundedStore(settings.max_batches)
        self._count = 0
        self.realistic = settings.batch_pace == "realistic"
        self._phase_s, self._request_s = settings.batch_phase_s, settings.batch_request_s
        self._stall = settings.batch_expire
        self._folder = StateDir(settings.state_dir) if settings.state_dir else None
        if self._folder is not None:
            self._load(self._folder)

    def create(self, body: dict[str, Any], input_file: StoredFile, now: int) -> Job:
        self._count += 1
        key = RequestRandom("oaigate-mock/batch", self._seed, input_file.id, body["endpoint"], self._count).key
        expiry = body.get("output_expires_after")
        job = Job("batch_" + key.hex()[:32], self._count, body["endpoint"], input_file.id, input_file, now,
                  body.get("metadata"), None if expiry is None else expiry["seconds"])
        for old in self._jobs.add(job.id, job):
            if self._folder is not None:
                self._folder.drop("batches", old.id)
        self._save(job)
        return job

    def get(self, batch_id: str) -> Job:
        job = self._jobs.get(batch_id)
        if job is None:
            raise MockError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return job

    def newest_first(self) -> list[Job]:
        return list(self._jobs)[::-1]

    def reset(self) -> None:
        self._jobs.clear()
        self._count = 0
        if self._folder is not None:
            self._folder.clear("batches")

    async def settle(self, job: Job) -> None:
        """Take every transition due by now."""
        async with job.lock:
            before = (job.status, job.done)
            now = self._app[CLOCK].now()
            while await self._step(job, now):
                pass
            if (job.status, job.done) != before:
                self._save(job)

    async def cancel(self, job: Job) -> None:
        if self.realistic:
            await self.settle(job)
        async with job.lock:
            if job.status in _RUNNING:
                job.status, job.times["cancelling_at"] = "cancelling", self._app[CLOCK].now()
                self._save(job)
            elif job.status not in ("cancelling", "cancelled"):
                raise MockError(409, f"Cannot cancel a batch with status '{job.status}'.")

    def _save(self, job: Job) -> None:
        if self._folder is not None and self._jobs.get(job.id) is job:
            self._folder.save("batches", job.id, job.record())

    def _load(self, folder: StateDir) -> None:
        """Reload the kept batches; one still validating finds its input file among the reloaded files."""
        files = self._app[FILES]

        def build(record: dict[str, Any], _: bytes | None) -> Job:
            waiting = record["status"] == "validating"
            return Job.from_record(record, files.find(record["input_file_id"]) if waiting else None)

        for seq, job in folder.load("batches", build):
            for old in self._jobs.add(job.id, job):
                folder.drop("batches", old.id)
            self._count = max(self._count, seq)

    async def _step(self, job: Job, now: int) -> bool:
        """Take the next transition if it was due by `now`; False when none is."""
        t = job.times
        if job.status == "validating":
            due = self._due(job.created_at, self._phase_s, now)
            if due > now:
                return False
            if job.input_file is None:
                errors = [_error("file_not_found", f"The input file {job.input_file_id} no longer exists.")]
            else:
                job.lines, errors = parse_input(job.input_file.data, job.endpoint)
            job.input_file = None
            if errors:
                job.status, job.errors, job.lines, t["failed_at"] = "failed", errors, [], due
                return False
            job.model = next((line.body["model"] for line in job.lines if isinstance(line.body.get("model"), str)),
                             None)
            job.status, job.total, t["in_progress_at"] = "in_progress", len(job.lines), due
            return True
        if job.status == "in_progress":
            start = cast(int, t["in_progress_at"])
            target = job.total // 2 if self._stall else job.total
            if self.realistic and self._request_s:
                target = min(target, int((min(now, job.expires_at) - start) / self._request_s))
            await self._run(job, target, start, now)
            if job.done == job.total:
                job.status, t["finalizing_at"] = "finalizing", self._due(start, self._request_s * job.total, now)
                return True
            if now >= job.expires_at:
                self._finish(job, "expired", job.expires_at)
            return False
        if job.status in ("finalizing", "cancelling"):
            since = cast(int, t["finalizing_at" if job.status == "finalizing" else "cancelling_at"])
            due = self._due(since, self._phase_s, now)
            if due > now:
                return False
            self._finish(job, "completed" if job.status == "finalizing" else "cancelled", due)
        return False

    def _due(self, since: int, seconds: float, now: int) -> int:
        """When a phase begun at `since` and lasting `seconds` ends: at once (`now`) at instant pace."""
        return since + math.ceil(seconds) if self.realistic else now

    async def _run(self, job: Job, until: int, start: int, now: int) -> None:
        """Run the lines not yet run, up to `until` of them, each at the virtual time it was due."""
        while job.done < until:
            line = job.lines[job.done]
            when = self._due(start, (job.done + 1) * self._request_s, now)
            result = await run_line(self._app, "POST", job.endpoint, line.body, when)
            request_id = result.request_id or digest("oaigate-mock/batch_request", job.id, line.custom_id).hex()[:32]
            record = {"id": self._line_id(job, line), "custom_id": line.custom_id,
                      "response": {"status_code": result.status, "request_id": request_id, "body": result.body},
                      "error": None}
            if result.status == 200:
                job.outputs.append(dumps(record))
                job.completed += 1
                job.add_usage(result.body)
            else:
                job.failures.append(dumps(record))
                job.failed += 1
            job.done += 1
            await asyncio.sleep(0)  # let other requests in between lines

    def _finish(self, job: Job, status: str, when: int) -> None:
        """End the batch: write its output and error files (an expired batch's unrun lines fail)."""
        if status == "expired":
            for line in job.lines[job.done:]:
                record = {"id": self._line_id(job, line), "custom_id": line.custom_id, "response": None,
                          "error": _EXPIRED}
                job.failures.append(dumps(record))
                job.failed += 1
        if self._jobs.get(job.id) is job:  # not evicted nor reset meanwhile
            files = self._app[FILES]
            for kind, records in (("output", job.outputs), ("error", job.failures)):
                if records:
                    stored = files.add(b"\n".join(records) + b"\n", f"{job.id}_{kind}.jsonl", "batch_output",
                                       job.output_expires_s)
                    setattr(job, f"{kind}_file_id", stored.id)
        job.status, job.times[f"{status}_at"] = status, when
        job.lines, job.outputs, job.failures = [], [], []

    @staticmethod
    def _line_id(job: Job, line: Line) -> str:
        return "batch_req_" + digest("oaigate-mock/batch_req", job.id, line.custom_id).hex()[:32]


BATCHES = web.AppKey("batches", Batches)


async def create(call: Call) -> web.StreamResponse:
    REQUEST.check(call.body, "")
    app = call.request.app
    endpoint_ = call.body["endpoint"]
    line_handlers = app[LINE_HANDLERS]
    if endpoint_ not in line_handlers:
        raise invalid(f"The mock does not run batches for '{endpoint_}'; it runs "
                      f"{', '.join(sorted(line_handlers))}.", "endpoint", "unsupported_value")
    input_file = app[FILES].get(call.body["input_file_id"], "input_file_id")
    if input_file.purpose != "batch":
        raise invalid(f"Invalid 'input_file_id': file '{input_file.id}' has purpose '{input_file.purpose}'; a batch "
                      "input file must be uploaded with purpose 'batch'.", "input_file_id", "invalid_value")
    job = app[BATCHES].create(call.body, input_file, call.clock.now())
    return await call.reply(job.card())


async def retrieve(request: web.Request) -> web.StreamResponse:
    batches = request.app[BATCHES]
    job = batches.get(request.match_info["batch_id"])
    await batches.settle(job)
    return await answer(request, job.card())


async def list_batches(request: web.Request) -> web.StreamResponse:
    limit = query_int(request, "limit", 20, Int(1, 100))
    batches = request.app[BATCHES]
    jobs = following(batches.newest_first(), request.query.get("after"))
    for job in jobs[:limit]:
        await batches.settle(job)
    return await answer(request, list_page(jobs, limit))


async def cancel(request: web.Request) -> web.StreamResponse:
    batches = request.app[BATCHES]
    job = batches.get(request.match_info["batch_id"])
    await batches.cancel(job)
    return await answer(request, job.card())


def setup(app: web.Application) -> None:
    """Register the batch store and the /v1/batches routes (after `files.setup`)."""
    app[BATCHES] = Batches(app, app[SETTINGS])
    on_reset(app, app[BATCHES].reset)
    app.router.add_post("/v1/batches", endpoint(create))
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)

"""The fine-tuning jobs API: /v1/fine_tuning/jobs (create from an uploaded JSONL file, list, retrieve,
events, cancel). A job moves `validating_files` → `queued` → `running` → `succeeded` on the virtual
clock and then produces an `ft:BASE:mock-org:SUFFIX:ID` model that /v1/models lists and chat accepts,
until `DELETE /v1/models/{id}` removes it.

With `[mock] fine_tuning_pace = "instant"` (default) the first retrieve (or list) after creation finds
the job done; with `"realistic"` it spends `fine_tuning_phase_s` virtual seconds validating, as many
queued, and as many per epoch running. Nothing is trained: the model answers as its base does. The
training file must be a `fine-tune` file whose lines are JSON objects with `messages` (chat format) or
`prompt`/`completion`; a malformed file fails the job with OpenAI's `invalid_training_file` error.
`trained_tokens` is the file's token count times the epochs. Checkpoints, pause/resume and
integrations are not emulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.wire.jsoncodec import JSONDecodeError, loads
from proxy.wire.tokens import count_text

from ...engine.catalogue import ModelInfo
from ...engine.control import on_reset
from ...engine.rng import RequestRandom
from ...engine.state import CATALOGUE, CLOCK, SETTINGS, Call, endpoint
from ...engine.store import BoundedStore
from ...engine.validation import METADATA, Anything, Int, Nullable, Num, Obj, OneOf, Str
from ...errors import MockError, invalid
from .files import FILES, answer, query_int

CAPACITY = 1000
ORG = "mock-org"
DEFAULT_EPOCHS = 3

_HYPER = Obj({"n_epochs": OneOf(Str(("auto",)), Int(1, 50)), "batch_size": OneOf(Str(("auto",)), Int(1, 256)),
              "learning_rate_multiplier": OneOf(Str(("auto",)), Num(0.0))})
_CREATE = Obj({
    "model": Str(), "training_file": Str(), "validation_file": Nullable(Str()), "hyperparameters": _HYPER,
    "suffix": Nullable(Str(max_len=64)), "seed": Nullable(Int(0, 2_147_483_647)), "metadata": METADATA,
    "method": Anything(), "integrations": Anything(),
}, required=("model", "training_file"))


@dataclass(slots=True)
class Job:
    """One job and what it knows of its own run."""

    id: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    epochs: int
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    tokens: int
    problem: str | None  # a training file OpenAI would reject: the job fails with this message
    result_model: str
    cancelled_at: int | None = None
    seen: bool = False
    event_ids: list[str] = field(default_factory=list)

    def _times(self, phase: int) -> tuple[int, int, int]:
        """When it is queued, starts running and finishes, with realistic pacing."""
        queued = self.created_at + phase
        running = queued + phase
        return queued, running, running + phase * self.epochs

    def status(self, now: int, pace: str, phase: int) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if pace == "instant":
            done = self.seen
        else:
            queued, running, finished = self._times(phase)
            if now < queued:
                return "validating_files"
            if self.problem is not None:
                return "failed"
            if now < running:
                return "queued"
            done = now >= finished
            if not done:
                return "running"
        if not done:
            return "validating_files"
        return "failed" if self.problem is not None else "succeeded"

    def finished_at(self, pace: str, phase: int) -> int:
        if pace == "instant":
            return self.created_at
        queued, _, finished = self._times(phase)
        return queued if self.problem is not None else finished

    def card(self, now: int, pace: str, phase: int) -> dict[str, Any]:
        status = self.status(now, pace, phase)
        done = status in ("succeeded", "failed")
        hyper = {"n_epochs": self.epochs, "batch_size": 1, "learning_rate_multiplier": 1.8}
        return {
            "object": "fine_tuning.job", "id": self.id, "model": self.model, "created_at": self.created_at,
            "finished_at": (self.cancelled_at if status == "cancelled" else
                            self.finished_at(pace, phase) if done else None),
            "fine_tuned_model": self.result_model if status == "succeeded" else None,
            "organization_id": "org-" + ORG, "result_files": [], "status": status,
            "validation_file": self.validation_file, "training_file": self.training_file,
            "hyperparameters": hyper,
            "trained_tokens": self.tokens * self.epochs if status == "succeeded" else None,
            "error": ({"code": "invalid_training_file", "message": self.problem, "param": "training_file"}
                      if status == "failed" else None),
            "integrations": [], "seed": self.seed, "estimated_finish": None,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
            "metadata": self.metadata,
        }

    def events(self, now: int, pace: str, phase: int) -> list[dict[str, Any]]:
        """What happened so far, oldest first."""
        status = self.status(now, pace, phase)
        queued, running, finished = self._times(phase) if pace == "realistic" else (self.created_at,) * 3
        said: list[tuple[int, str]] = [(self.created_at, "Created fine-tuning job"),
                                       (self.created_at, "Validating training file: " + self.training_file)]
        if status == "failed":
            said.append((queued, f"Training file validation failed: {self.problem}"))
        if status in ("queued", "running", "succeeded"):
            said.append((queued, "Files validated, moving job to queued state"))
        if status in ("running", "succeeded"):
            said.append((running, "Fine-tuning job started"))
        if status == "succeeded":
            said += [(finished, f"New fine-tuned model created: {self.result_model}"),
                     (finished, "The job has successfully completed")]
        if status == "cancelled":
            said.append((self.cancelled_at or now, "Fine-tuning job cancelled"))
        rnd = RequestRandom("oaigate-mock/ftevent", self.id)
        return [{"object": "fine_tuning.job.event", "id": "ftevent-" + rnd.child("event", i).token(24),
                 "created_at": at, "level": "error" if "failed" in message else "info", "message": message,
                 "data": {}, "type": "message"} for i, (at, message) in enumerate(said)]


class JobStore(BoundedStore[Job]):
    def __init__(self, seed: int) -> None:
        super().__init__(CAPACITY)
        self.seed, self.count = seed, 0

    def clear(self) -> None:
        super().clear()
        self.count = 0


JOBS = web.AppKey("fine_tuning_jobs", JobStore)


def _problem(data: bytes) -> tuple[str | None, int, str]:
    """Why OpenAI would reject this training file (None: fine), its token count and its text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "The file is not valid UTF-8.", 0, ""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "The training file is empty.", 0, text
    for number, line in enumerate(lines, 1):
        try:
            example = loads(line)
        except JSONDecodeError:
            return f"Line {number} is not valid JSON.", 0, text
        if not isinstance(example, dict) or not (
                isinstance(example.get("messages"), list) or "prompt" in example and "completion" in example):
            return f"Line {number} has no 'messages' list (or 'prompt' and 'completion').", 0, text
    return None, count_text(text, "gpt-4o"), text


def _pace(app: web.Application) -> tuple[str, int]:
    settings = app[SETTINGS]
    return settings.fine_tuning_pace, settings.fine_tuning_phase_s


def _settle(app: web.Application, job: Job) -> dict[str, Any]:
    """The job's card now; a job that just succeeded registers its model."""
    pace, phase = _pace(app)
    card = job.card(app[CLOCK].now(), pace, phase)
    catalogue = app[CATALOGUE]
    if card["status"] == "succeeded" and not catalogue.made_here(job.result_model):
        base = catalogue.get(job.model)
        if base is not None:
            catalogue.add_fine_tune(ModelInfo(job.result_model, base.kind, card["finished_at"], "user",
                                              base.max_output_tokens, base.reasoning, base.dimensions,
                                              base.context_window))
    return card


def _seen(app: web.Application, job: Job) -> dict[str, Any]:
    job.seen = True
    return _settle(app, job)


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    _CREATE.check(body, "")
    app = call.request.app
    base = call.catalogue.get(body["model"])
    if base is None or base.kind != "chat":
        raise invalid(f"Model {body['model']} is not available for fine-tuning or does not exist.", "model",
                      "model_not_available")
    training = app[FILES].find(body["training_file"])
    if training is None:
        raise invalid(f"Invalid file format for training_file: {body['training_file']} does not exist.",
                      "training_file", "invalid_training_file")  # OpenAI's wording varies; the code is its
    if training.purpose != "fine-tune":
        raise invalid(f"File {training.id} has purpose '{training.purpose}', but fine-tuning needs purpose "
                      "'fine-tune'.", "training_file", "invalid_file_purpose")
    validation = body.get("validation_file")
    if validation is not None and app[FILES].find(validation) is None:
        raise invalid(f"Invalid file format for validation_file: {validation} does not exist.", "validation_file",
                      "invalid_validation_file")
    problem, tokens, _ = await call.compute(_problem, training.data)
    store = app[JOBS]
    store.count += 1
    rnd = call.random("fine_tuning.jobs", {**body, "#": store.count})
    epochs_asked = (body.get("hyperparameters") or {}).get("n_epochs", "auto")
    epochs = DEFAULT_EPOCHS if epochs_asked == "auto" else int(epochs_asked)
    job_token = rnd.child("job").token(24)
    suffix = body.get("suffix") or ""
    job = Job("ftjob-" + job_token, call.clock.now(), body["model"], training.id, validation, epochs,
              body["seed"] if body.get("seed") is not None else rnd.child("seed").randrange(2**31),
              body.get("suffix"), body.get("metadata"), tokens, problem,
              f"ft:{body['model']}:{ORG}:{suffix}:{rnd.child('model').token(8)}")
    store.add(job.id, job)
    return await call.reply(_settle(app, job))


def _job(request: web.Request) -> Job:
    job_id = request.match_info["job_id"]
    job = request.app[JOBS].get(job_id)
    if job is None:
        raise MockError(404, f"Could not find fine-tune job: {job_id}.", param="fine_tuning_job_id")
    return job


async def retrieve(request: web.Request) -> web.StreamResponse:
    return await answer(request, _seen(request.app, _job(request)))


async def list_jobs(request: web.Request) -> web.StreamResponse:
    limit = query_int(request, "limit", 20, Int(1, 100))
    store: JobStore = request.app[JOBS]
    jobs = [*store][::-1]
    if "after" in request.query:
        ids = [job.id for job in jobs]
        after = request.query["after"]
        jobs = jobs[ids.index(after) + 1:] if after in ids else []
    wanted = {key[len("metadata["):-1]: value for key, value in request.query.items()
              if key.startswith("metadata[") and key.endswith("]")}
    jobs = [job for job in jobs if all((job.metadata or {}).get(k) == v for k, v in wanted.items())]
    data = [_seen(request.app, job) for job in jobs[:limit]]
    return await answer(request, {"object": "list", "data": data, "has_more": len(jobs) > limit})


async def events(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    _seen(request.app, job)
    pace, phase = _pace(request.app)
    said = list(reversed(job.events(request.app[CLOCK].now(), pace, phase)))
    limit = query_int(request, "limit", 20, Int(1, 100))
    if "after" in request.query:
        ids = [event["id"] for event in said]
        after = request.query["after"]
        said = said[ids.index(after) + 1:] if after in ids else []
    return await answer(request, {"object": "list", "data": said[:limit], "has_more": len(said) > limit})


async def cancel(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    pace, phase = _pace(request.app)
    now = request.app[CLOCK].now()
    status = job.status(now, pace, phase)
    if status in ("succeeded", "failed"):
        raise invalid(f"Job {job.id} has already {'succeeded' if status == 'succeeded' else 'failed'} and cannot "
                      "be cancelled.", None, "invalid_job_state")
    if job.cancelled_at is None:
        job.cancelled_at = now
    return await answer(request, _settle(request.app, job))


def setup(app: web.Application) -> None:
    app[JOBS] = JobStore(app[SETTINGS].seed)

    def reset() -> None:
        app[JOBS].clear()
        app[CATALOGUE].reset()

    on_reset(app, reset)
    app.router.add_post("/v1/fine_tuning/jobs", endpoint(create))
    app.router.add_get("/v1/fine_tuning/jobs", list_jobs)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}", retrieve)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}/events", events)
    app.router.add_post("/v1/fine_tuning/jobs/{job_id}/cancel", cancel)

"""estimate: the worst case of a request before it goes upstream, for budgets and rate limits.

Prompt tokens are counted locally (messages, tools and images by OpenAI's rules where feasible, see
`proxy.wire.tokens`); the completion's worst case is the request's own cap (`max_completion_tokens`,
`max_tokens`, `max_output_tokens`) or, when it sets none, `limits.default_max_tokens`, which the
gateway then also sends upstream so the estimate is a true bound. The cap is multiplied by every
answer the request asks for (`n`, legacy `best_of`, each prompt of a legacy prompt list).

A Responses request's real prompt also holds what it builds on: a `previous_response_id` the gateway
has seen carries that response's prompt + output tokens (`chains`); one it has never seen, a
`conversation` or a stored `prompt` template is bounded by the model's context window.

On a request some budget applies to, every endpoint that costs money is either estimated here or
refused (400): a body that could not be read, or an endpoint priced by something other than tokens
(images, audio, fine-tuning, realtime...). Nothing is waved through unbudgeted. Counting is bounded:
it stops as soon as the prompt passes what the budget can still pay for (or the context window), so
a 50 MB prompt is refused after a few thousand tokens, not after tokenizing all of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ContextTooLong, Unestimable
from ..exchange import Estimate, Exchange
from ..wire.jsoncodec import dumps
from ..wire.pricing import PriceTable
from ..wire.tokens import PromptTooLong, count_request_prompt
from ..wire.tokens import ready as tokenizer_ready
from ..wire.usage import Usage
from ..wire.vision import unknown_slack
from . import Stage

if TYPE_CHECKING:
    from .fallback import Fallbacks

# larger bodies are tokenized in a thread, off the event loop; so is any body whose encoding is not
# loaded yet (the gateway loads them at start only when budgets or TPM limits count every prompt)
OFFLOAD_BYTES = 32 * 1024

# endpoint -> the field that caps completion tokens (None: the endpoint generates no tokens)
CAP_FIELDS: dict[str, tuple[str, ...] | None] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
    "/v1/responses/compact": (),  # no cap: bounded by its own input (a compaction never grows it)
    "/v1/embeddings": None,
}
# paths that cost money in a way tokens of the request cannot bound: refused on a budgeted request
REFUSED_PREFIXES = ("/v1/images/", "/v1/audio/", "/v1/fine_tuning/jobs", "/v1/realtime", "/v1/videos",
                    "/v1/containers", "/v1/threads/runs", "/v1/evals/")
_LEGACY_COMPLETIONS_DEFAULT = 16


EXACT_COUNT_BYTES = 8 * 1024 * 1024  # over-window prompts up to this size are counted whole for the message
# endpoints whose prompt and output share one context window, checked before any upstream call
WINDOW_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
# parts whose tokens the body's size does not bound (images, audio, files, stored items): always counted
_NOT_TEXT = (b"image", b"audio", b"file", b"item_reference")


def context_error(path: str, window: int, prompt: int, completion: int, exact: bool = True) -> ContextTooLong:
    """The 400 OpenAI answers for a request over the model's context window (its message and param for
    each endpoint). `exact` false: counting stopped at `prompt`, the real prompt is longer."""
    tokens = str(prompt) if exact else f"more than {prompt}"
    if path == "/v1/responses":
        return ContextTooLong("Your input exceeds the context window of this model. Please adjust your input and "
                              "try again.", param="input")
    if path == "/v1/completions":
        return ContextTooLong(
            f"This model's maximum context length is {window} tokens, however you requested "
            f"{prompt + completion if exact else tokens} tokens ({tokens} in your prompt; {completion} for the "
            "completion). Please reduce your prompt; or completion length.")
    if completion:
        return ContextTooLong(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt + completion if exact else tokens} tokens ({tokens} in the messages, {completion} in the "
            "completion). Please reduce the length of the messages or completion.", param="messages")
    return ContextTooLong(f"This model's maximum context length is {window} tokens. However, your messages "
                          f"resulted in {tokens} tokens. Please reduce the length of the messages.", param="messages")


def windowed(ex: Exchange) -> bool:
    """A request the context-window pre-check applies to: one prompt sharing a window with its output
    (a legacy completions prompt list is checked per prompt upstream: left to it)."""
    if ex.method != "POST" or ex.path not in WINDOW_PATHS or ex.json is None:
        return False
    return ex.path != "/v1/completions" or isinstance(ex.json.get("prompt"), str)


def requested_output(path: str, body: dict[str, Any]) -> int:
    """The output tokens a request asks room for itself (its own cap; 0 when it sets none)."""
    fields = CAP_FIELDS.get(path) or ()
    caps = [body[f] for f in fields if isinstance(body.get(f), int) and not isinstance(body.get(f), bool)
            and body[f] >= 0]
    return caps[0] if caps else 0


def refused_path(method: str, path: str) -> bool:
    """An endpoint that costs money but is not estimated (see the module's docstring)."""
    if path.startswith("/v1/realtime"):
        return True
    if method != "POST":
        return False
    if path.startswith("/v1/threads/") and "/runs" in path:
        return True
    if path.startswith("/v1/evals/"):
        return path.endswith("/runs")
    return path.startswith(REFUSED_PREFIXES)


class Estimator(Stage):
    """Sets `ex.estimate` for generation endpoints; `enabled` is false when no limit needs it.

    `budgeted(ex)` says whether a budget applies and, if so, the most prompt tokens it could still pay
    for (`(True, None)`: applies, no token bound)."""

    def __init__(self, default_max_tokens: int, enabled: bool = True, *, prices: PriceTable | None = None,
                 chains: Callable[[str], int | None] | None = None,
                 budgeted: Callable[[Exchange], tuple[bool, int | None]] | None = None,
                 check_window: bool = False) -> None:
        self.default_max_tokens, self.enabled, self.check_window = default_max_tokens, enabled, check_window
        self.fallbacks: Fallbacks | None = None  # `fallback.Fallbacks`: a model with a larger window
        self.prices = prices
        self.chains = chains or (lambda _: None)
        self.budgeted = budgeted or (lambda _: (False, None))

    def window(self, model: str | None) -> int | None:
        return self.prices.context_window(model) if self.prices is not None else None

    async def request(self, ex: Exchange) -> None:
        """Estimates (and pre-checks) `ex`; over its model's window, a `[[fallbacks]]` entry whose `on`
        names context_length_exceeded moves it to its next model first (nothing is admitted yet)."""
        while True:
            try:
                return await self._request(ex)
            except ContextTooLong:
                model = self.fallbacks.next_model(ex, "context_length_exceeded") if self.fallbacks else None
                if model is None:
                    raise
                self.fallbacks.rewrite(ex, model)  # type: ignore[union-attr]

    async def _request(self, ex: Exchange) -> None:
        if not self.enabled:
            if self.check_window and windowed(ex):
                await self._check_window(ex, self.window(ex.model), 0)
            return
        estimated = ex.method == "POST" and ex.path in CAP_FIELDS
        if not estimated and not refused_path(ex.method, ex.path):
            return
        applies, bound = self.budgeted(ex)
        if not estimated:
            if applies:
                raise Unestimable(
                    f"{ex.method} {ex.path} is not estimated by the gateway, so a budget cannot bound its cost: "
                    "it is refused on a budgeted key. Use a key with no budget for it.")
            return
        if ex.json is None:
            if applies:
                raise Unestimable(
                    "The request body could not be read as a JSON object (is the Content-Type right?), so its "
                    "cost cannot be estimated and the budget cannot be enforced.")
            return
        known, unknown = self._chained(ex.json, ex.model, applies)
        chained = known + unknown
        window = self.window(ex.model)
        # images of unknown size count their worst case (the budget's bound); the window refuses only on the least
        slack = await _slack(ex) if window is not None else 0
        limit = None
        if bound is not None:
            limit = max(bound - chained, 0)
        if window is not None and (limit is None or window - known + slack < limit):  # `unknown`: a bound
            limit = max(window - known + slack, 0)
        checked = self.check_window and windowed(ex)
        requested = requested_output(ex.path, ex.json)  # before `_completion` adds the gateway's default cap
        try:
            if len(ex.body) > OFFLOAD_BYTES or not tokenizer_ready(ex.model or ""):
                prompt = await asyncio.to_thread(count_request_prompt, ex.json, ex.model or "", limit)
            else:
                prompt = count_request_prompt(ex.json, ex.model or "", limit)
        except PromptTooLong as exc:
            if bound is not None and exc.counted + chained > bound:
                prompt = exc.counted  # more than the budget can pay for: the reservation refuses it (429)
            elif checked and window is not None:
                await self._check_window(ex, window, known)
                raise  # not reached: the whole prompt is over the window
            else:
                raise context_error(ex.path, window or 0, exc.counted - slack + known, 0, exact=False) from None
        if checked and window is not None and prompt - slack + known + requested > window:
            ex.cost_micros = 0
            raise context_error(ex.path, window, prompt - slack + known, requested)
        if slack and window is not None:  # the upstream charges no prompt over the window: it refuses it
            prompt = max(min(prompt, window - known), prompt - slack)
        prompt += chained
        completion = self._completion(ex, prompt)
        ex.estimate = Estimate(prompt, completion)

    async def _check_window(self, ex: Exchange, window: int | None, known: int) -> None:
        """The context-window pre-check alone: prompt (+ `known` chained tokens) + the request's own
        output cap against the model's window; raises OpenAI's 400 before any upstream call. Counting
        stops just past the window; an over-window prompt is then counted whole (off the event loop, up
        to EXACT_COUNT_BYTES) so the message states its size as OpenAI does."""
        if window is None or ex.json is None:
            return
        requested = requested_output(ex.path, ex.json)
        limit = max(window - known - requested, 0)
        if len(ex.body) <= limit and not any(part in ex.body for part in _NOT_TEXT):
            return  # a text token is at least one byte of the body: it fits without counting
        body, model = ex.json, ex.model or ""
        slack = await _slack(ex)
        limit += slack
        try:
            if len(ex.body) > OFFLOAD_BYTES or not tokenizer_ready(model):
                prompt = await asyncio.to_thread(count_request_prompt, body, model, limit)
            else:
                prompt = count_request_prompt(body, model, limit)
        except PromptTooLong as exc:
            ex.cost_micros = 0
            if len(ex.body) > EXACT_COUNT_BYTES:
                raise context_error(ex.path, window, exc.counted - slack + known, requested, exact=False) from None
            prompt = await asyncio.to_thread(count_request_prompt, body, model, None)
            raise context_error(ex.path, window, prompt - slack + known, requested) from None
        if prompt - slack + known + requested > window:
            ex.cost_micros = 0
            raise context_error(ex.path, window, prompt - slack + known, requested)

    def _chained(self, body: dict[str, Any], model: str | None, applies: bool) -> tuple[int, int]:
        """Tokens a Responses request carries besides its own body (see the module's docstring): those
        known, and the bound put on those whose size is unknown."""
        total = 0
        previous = body.get("previous_response_id")
        unknown = []
        if isinstance(previous, str) and previous:
            known = self.chains(previous)
            if known is not None:
                total += known
            else:
                unknown.append(f"previous_response_id '{previous}' (not made through this gateway)")
        if body.get("conversation") is not None:
            unknown.append("a conversation")
        if isinstance(body.get("prompt"), dict):
            unknown.append("a stored prompt template")
        opaque = opaque_parts(body)
        if opaque:
            unknown.append(opaque)
        if unknown and applies:
            window = self.window(model)
            if window is None:
                raise Unestimable(
                    f"The request builds on {', '.join(unknown)}, whose size the gateway cannot know, and no "
                    f"context window is known for model '{model}' to bound it: refused on a budgeted key.",
                    param="previous_response_id" if previous else None)
            return total, window * len(unknown)
        return total, 0

    def _completion(self, ex: Exchange, prompt: int) -> int:
        fields = CAP_FIELDS[ex.path]
        if fields is None:
            return 0
        body = ex.json or {}
        if not fields:  # compact
            return prompt
        caps = [body[f] for f in fields if isinstance(body.get(f), int) and body[f] >= 0]
        if caps:
            completion = caps[0]
        elif ex.path == "/v1/completions":
            completion = _LEGACY_COMPLETIONS_DEFAULT
        else:
            completion = self.default_max_tokens
            ex.json = {**body, fields[0]: completion}
            ex.body = dumps(ex.json)
        return completion * answers(ex.path, body)


async def _slack(ex: Exchange) -> int:
    """`unknown_slack` of the request's images (0 without any), off the event loop for a large body."""
    if ex.json is None or b"image" not in ex.body:
        return 0
    if len(ex.body) > OFFLOAD_BYTES:
        return await asyncio.to_thread(unknown_slack, ex.json, ex.model or "")
    return unknown_slack(ex.json, ex.model or "")


_OPAQUE_TYPES = frozenset({"item_reference", "input_file", "file"})


def opaque_parts(body: dict[str, Any]) -> str | None:
    """What in a request the upstream expands into tokens the gateway cannot count from the body: a
    Responses `item_reference` (a stored item), or a file part (`input_file` / chat `file`: a PDF by id,
    URL or inline data). Together they are bounded by the context window, like an unknown chain."""
    found: set[str] = set()
    for holder in (body.get("input"), body.get("messages")):
        if not isinstance(holder, list):
            continue
        for item in holder:
            if not isinstance(item, dict):
                continue
            parts = [item] + (item["content"] if isinstance(item.get("content"), list) else [])
            for part in parts:
                if isinstance(part, dict) and part.get("type") in _OPAQUE_TYPES:
                    found.add(str(part["type"]))
    return f"{' and '.join(sorted(found))} input" if found else None


def answers(path: str, body: dict[str, Any]) -> int:
    """How many completions a request generates (and is billed for): `n`, legacy `best_of`, and one
    set per prompt of a legacy prompt list."""
    def count(name: str) -> int:
        value = body.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 128 else 1

    choices = count("n")
    if path == "/v1/completions":
        choices = max(choices, count("best_of"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            choices *= len(prompt)
    return choices


def prompt_bound(prices: PriceTable, model: str | None, headroom: tuple[int | None, int | None]) -> int | None:
    """The most prompt tokens `headroom` (micro-dollars, tokens) could pay for; None if unbounded."""
    micros, tokens = headroom
    bounds = [] if tokens is None else [tokens]
    if micros is not None:
        per_mtok = prices.cost_micros(model, Usage(1_000_000, 0))
        if per_mtok:
            bounds.append(micros * 1_000_000 // per_mtok + 1)
    return min(bounds) if bounds else None

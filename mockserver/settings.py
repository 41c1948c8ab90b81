"""The mock server's settings: the `[mock]` section of config.toml and the `oaigate mock` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from proxy.wire.configfile import ConfigError

from .engine.catalogue import ModelSpec
from .engine.generation import REFUSAL_TRIGGER
from .engine.rules import Rule, load_file

ModerationCategory = Literal[
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
]

_FLAGGED_WORDS: dict[str, ModerationCategory] = {
    "kill": "violence",
    "murder": "violence",
    "bomb": "violence",
    "hate": "hate",
    "suicide": "self-harm",
    "nsfw": "sexual",
    "steal": "illicit",
    "harass": "harassment",
}


class MockSettings(BaseModel):
    """How the mock behaves. Every field has a default, so an empty `[mock]` section works."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(4142, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    allow_remote: bool = Field(
        False, description="Allow a host beyond loopback (the /_mock control API has no authentication).")
    seed: int = Field(0, description="Mixed into every generated response; change it to get other answers.")
    clock_start: int = Field(
        1_735_689_600,
        description="The virtual clock's start (Unix seconds) used for every `created` field.",
    )
    models: list[str | ModelSpec] = Field(
        default_factory=list,
        description="Models to add to (or override in) the catalogue: an id, or a table "
        "{id, kind, context_window, max_output_tokens, dimensions, reasoning}.",
    )
    accept_unknown_models: bool = Field(
        False, description="Answer any model name like its nearest family instead of 404 `model_not_found`.")
    flagged_words: dict[str, ModerationCategory] = Field(
        default_factory=lambda: dict(_FLAGGED_WORDS),
        description="Moderation word list: a word found in the input flags it under that category.",
    )
    rate_limit_requests: int | None = Field(
        None, gt=0, description="Emulate an upstream request limit: a bucket of this many requests (unset: off).")
    rate_limit_per_s: float | None = Field(
        None, gt=0, description="Refill of that bucket, requests per second (default: the bucket per minute).")
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    fixtures: str | None = Field(None, description="Folder of recorded fixtures to serve first.")
    journal_size: int = Field(1000, ge=0, description="Requests the `/_mock/journal` keeps; older ones are dropped.")
    max_files: int = Field(10_000, gt=0, description="Files kept in memory; the oldest are evicted beyond it.")
    max_file_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest upload accepted (OpenAI: 512 MB).")
    max_stored_bytes: int = Field(
        1024 * 1024 * 1024, gt=0, description="Total bytes of all files kept; the oldest are evicted beyond it.",
    )
    max_batches: int = Field(1000, gt=0, description="Batches kept; the oldest are evicted beyond it.")
    batch_pace: Literal["instant", "realistic"] = Field(
        "instant",
        description="`instant`: a batch completes at its first retrieve; `realistic`: its phases take virtual time.",
    )
    batch_phase_s: int = Field(60, ge=0, description="Realistic pace: virtual seconds of validating, finalizing "
                               "and cancelling.")
    batch_request_s: float = Field(1.0, ge=0, description="Realistic pace: virtual seconds per request in progress.")
    batch_expire: bool = Field(False, description="Stall every batch halfway so it expires after its 24h window.")
    background_pace: Literal["instant", "realistic"] = Field(
        "instant", description="Background responses: `instant` completes at the first retrieve; `realistic` "
        "spends `background_phase_s` virtual seconds queued and as many in progress.")
    background_phase_s: int = Field(5, ge=0, description="Realistic pace: virtual seconds per background phase.")
    fine_tuning_pace: Literal["instant", "realistic"] = Field(
        "instant", description="Fine-tuning jobs: `instant` succeeds at the first retrieve; `realistic` spends "
        "`fine_tuning_phase_s` virtual seconds validating, as many queued, and as many per epoch running.")
    fine_tuning_phase_s: int = Field(60, ge=0, description="Realistic pace: virtual seconds per phase and epoch.")
    prompt_caching: bool = Field(
        True, description="Report `cached_tokens` for a 1,024+ token prompt prefix sent again within minutes "
        "(virtual clock), in 128-token steps, as OpenAI does.")
    state_dir: str | None = Field(None, description="Folder to keep files and batches in across restarts.")
    refusal_trigger: str = Field(
        REFUSAL_TRIGGER, description="A last user message containing this gets a refusal; empty: never.")
    rules_file: str | None = Field(
        None, description="Scripted answers: a TOML, YAML or JSON file of rules (see `mockserver.engine.rules`).")
    rules: list[Rule] = Field(
        default_factory=list, description="Scripted answers in config.toml (`[[mock.rules]]`), after the file's.")

    @field_validator("fixtures")
    @classmethod
    def _fixtures_exist(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_dir():
            raise PydanticCustomError("fixtures", "no such folder: {path}", {"path": path})
        return path

    @field_validator("rules_file")
    @classmethod
    def _rules_load(cls, path: str | None) -> str | None:
        """Report a bad rules file when the config is read, not when the server starts."""
        if path is not None:
            try:
                load_file(path)
            except ConfigError as exc:
                raise PydanticCustomError("rules_file", "{problem}", {"problem": str(exc)}) from None
        return path

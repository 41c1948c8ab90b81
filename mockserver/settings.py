"""The mock server's settings: the `[mock]` section of config.toml and the `oaigate mock` flags."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ModerationCategory = Literal[
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
]


class MockSettings(BaseModel):
    """How the mock behaves. Every field has a default, so an empty `[mock]` section works."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(4142, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    seed: int = Field(0, description="Mixed into every generated response; change it to get other answers.")
    clock_start: int = Field(
        1_735_689_600,
        description="The virtual clock's start (Unix seconds) used for every `created` field.",
    )
    models: list[str] = Field(
        default_factory=list,
        description="Extra model ids to accept and list, beside the built-in catalogue.",
    )
    flagged_words: dict[str, ModerationCategory] = Field(
        default_factory=lambda: {
            "kill": "violence",
            "murder": "violence",
            "bomb": "violence",
            "hate": "hate",
            "suicide": "self-harm",
            "nsfw": "sexual",
            "steal": "illicit",
            "harass": "harassment",
        },
        description="Moderation word list: a word found in the input flags it under that category.",
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    fixtures: str | None = Field(None, description="Folder of recorded fixtures to serve first.")

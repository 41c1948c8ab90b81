"""Shared fixtures: a running mock server and SDK clients pointed at it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest
from hypothesis import settings

from mockserver.app import make_app
from mockserver.settings import MockSettings

from .servers import ServerThread

# CI explores the same examples every run, so a red build is reproducible; locally they vary.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Schema checks that could not run are said out loud, not passed in silence."""
    from .http import UNCHECKED
    from .openapi import SPEC_PATH

    if UNCHECKED:
        terminalreporter.write_sep("=", "OpenAPI schema checks NOT run", yellow=True, bold=True)
        terminalreporter.write_line(f"{len(UNCHECKED)} response(s) were not checked against OpenAI's OpenAPI "
                                    f"description: it is not at {SPEC_PATH} (set OAIGATE_OPENAPI_SPEC). Under "
                                    "CI=true this is a failure.")


@pytest.fixture(scope="session")
def mock_server() -> Iterator[ServerThread]:
    """One mock for the session (default settings, seed 0); tests must not depend on its history."""
    server = ServerThread(lambda: make_app(MockSettings())).start()
    yield server
    server.stop()


@pytest.fixture
def mock_url(mock_server: ServerThread) -> str:
    """The mock's `/v1` base URL."""
    return mock_server.url + "/v1"


@pytest.fixture
def client(mock_url: str) -> Iterator[openai.OpenAI]:
    """The real sync OpenAI SDK pointed at the mock, no retries so errors surface at once."""
    with openai.OpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as c:
        yield c

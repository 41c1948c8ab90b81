"""The pytest plugin (`proxy/pytest_plugin.py`), run as users run it: pytest in a subprocess, loading the
plugin through its `pytest11` entry point, against the mock, recording from an upstream we then stop,
replaying, and under pytest-xdist."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mockserver.app import make_app as make_mock
from mockserver.settings import MockSettings
from proxy import pytest_plugin
from proxy.background import BackgroundServer
from proxy.stages import fixtures as fixtures_stage

from .conftest import Gateway

pytest_plugins = ["pytester"]

SECRET = "sk-upstream-SECRET-plugin-0c1d"
STRICT = ("-p", "no:cacheprovider", "-W", "error", "--strict-markers")


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose runs see a clean environment: no key, no inherited pytest or xdist settings, and
    ResourceWarnings printed even at interpreter exit (so an unclosed socket shows up in stderr)."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER",
                 "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONWARNINGS", "always::ResourceWarning")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    result = pytester.runpytest_subprocess(*STRICT, *args, timeout=90)
    output = result.stdout.str() + result.stderr.str()
    assert "ResourceWarning" not in output and "Unclosed" not in output, output
    return result


def cassette_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


@pytest.fixture
def upstream() -> Iterator[BackgroundServer]:
    """A mock with another seed than the plugin's, standing in for the real API while recording."""
    server = BackgroundServer(lambda: make_mock(MockSettings(seed=7))).start()
    yield server
    server.stop()


# --- in this process: names, options --------------------------------------------------------------

def test_the_plugin_is_an_entry_point_and_its_names_match_the_gateway() -> None:
    points = importlib.metadata.entry_points(group="pytest11")
    assert any(p.name == "oaigate" and p.value == "proxy.pytest_plugin" for p in points)
    assert pytest_plugin.CASSETTE_NAME.pattern == fixtures_stage._NAME.pattern
    assert (pytest_plugin.MODE_HEADER, pytest_plugin.CASSETTE_HEADER) == (fixtures_stage.MODE_HEADER,
                                                                        fixtures_stage.CASSETTE_HEADER)


@pytest.mark.parametrize(("raw", "expected"), [
    ("test_chat.test_hello", "test_chat.test_hello"),
    ("tests.api.test_chat.TestChat.test_stream[gpt-4o mini/1]",
     "tests.api.test_chat.TestChat.test_stream_gpt-4o_mini_1"),
    ("[x]", "x"),
    ("???", "cassette"),
])
def test_safe_name(raw: str, expected: str) -> None:
    assert pytest_plugin.safe_name(raw) == expected


def test_a_long_name_is_cut_and_stays_unique() -> None:
    a, b = pytest_plugin.safe_name("t." + "x" * 200 + "[1]"), pytest_plugin.safe_name("t." + "x" * 200 + "[2]")
    assert a != b and len(a) <= 100 and pytest_plugin.CASSETTE_NAME.match(a)


def test_options_and_ini_resolve_the_fixtures_folder_and_upstream(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure()
    settings = pytest_plugin.Settings.from_config(config)
    assert settings == pytest_plugin.Settings(False, pytest_plugin.DEFAULT_UPSTREAM, pytester.path / "fixtures")
    assert settings.mode == "replay"

    pytester.makeini("[pytest]\noaigate_fixtures = tests/cassettes\noaigate_upstream = http://127.0.0.1:9/v1\n")
    settings = pytest_plugin.Settings.from_config(pytester.parseconfigure("--oaigate-record"))
    assert settings == pytest_plugin.Settings(True, "http://127.0.0.1:9/v1", pytester.path / "tests" / "cassettes")
    assert settings.mode == "record-missing"

    config = pytester.parseconfigure("--oaigate-fixtures", "elsewhere", "--oaigate-upstream", "mock")
    settings = pytest_plugin.Settings.from_config(config)
    assert (settings.fixtures, settings.upstream) == (pytester.path / "elsewhere", "mock")


# --- subprocess runs --------------------------------------------------------------------------------

MOCK_TESTS = """
import asyncio

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Explain photosynthesis"}]


def test_chat_and_stream(openai_client, oaigate_mock, oaigate_base_url):
    assert oaigate_base_url == oaigate_mock.base_url and oaigate_base_url.startswith("http://127.0.0.1:")
    reply = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    chunks = list(openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content


def test_async_client(async_openai_client):
    async def go():
        reply = await async_openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        stream = await async_openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                                   stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return reply.choices[0].message.content, text

    whole, streamed = asyncio.run(go())
    assert whole and whole == streamed


def test_no_marker_no_cassette_headers(oaigate_headers):
    assert oaigate_headers == {}


@pytest.mark.oaigate_cassette
def test_recording_needs_the_upstream_key(openai_client):
    pass


@pytest.mark.oaigate_cassette("../escape")
def test_bad_cassette_name(oaigate_headers):
    pass
"""


def test_clients_on_the_mock_and_recording_without_a_key(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_mock=MOCK_TESTS)
    result = run(inner, "--oaigate-record", "--oaigate-upstream", "https://api.example.test/v1")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines([
        "*--oaigate-record from https://api.example.test/v1 needs the upstream's key in $OPENAI_API_KEY*",
        "*invalid oaigate_cassette name '../escape': use up to 100 letters*",
    ], consecutive=False)
    assert not (inner.path / "fixtures").exists()


RECORDED_TESTS = """
import json
import os

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Explain photosynthesis"}]


def answer(client, request, messages=MESSAGES):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    phase = "record" if request.config.getoption("oaigate_record") else "replay"
    if phase == "replay":
        assert raw.headers["x-oaigate-fixture"] == "hit"
    return phase, raw.parse().choices[0].message.content, "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.oaigate_cassette
def test_recorded(openai_client, oaigate_cassette, oaigate_gateway, oaigate_base_url, request):
    assert oaigate_base_url == oaigate_gateway.base_url
    assert oaigate_cassette.name == "test_rec.test_recorded"
    phase, whole, streamed = answer(openai_client, request)
    assert whole == streamed
    files = sorted(os.listdir(oaigate_cassette)) if phase == "replay" else None
    (request.config.rootpath / f"{phase}.json").write_text(json.dumps([whole, files]))


@pytest.mark.oaigate_cassette
@pytest.mark.parametrize("word", ["a b"])
def test_param(openai_client, oaigate_cassette, word, request):
    assert oaigate_cassette.name == "test_rec.test_param_a_b"
    answer(openai_client, request, [{"role": "user", "content": word}])


@pytest.mark.oaigate_cassette("test_rec.test_recorded")
def test_changed_request(openai_client, request):
    if request.config.getoption("oaigate_record"):
        pytest.skip("replay only")
    with pytest.raises(openai.NotFoundError) as caught:
        answer(openai_client, request, [{"role": "user", "content": "Explain photosynthesis, briefly"}])
    assert caught.value.code == "fixture_not_found"
    assert "cassette 'test_rec.test_recorded'" in caught.value.message
    assert "Closest recorded" in caught.value.message and "messages" in caught.value.message


@pytest.mark.oaigate_cassette(name="nothing-here")
def test_missing_cassette(openai_client, request):
    if request.config.getoption("oaigate_record"):
        pytest.skip("replay only")
    answer(openai_client, request)
"""


def test_record_then_replay_with_the_upstream_gone(inner: pytest.Pytester, upstream: BackgroundServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    inner.makepyfile(test_rec=RECORDED_TESTS)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    recorded = run(inner, "--oaigate-record", "--oaigate-upstream", upstream.url + "/v1")
    recorded.assert_outcomes(passed=2, skipped=2)
    recorded.stdout.fnmatch_lines([f"oaigate: recording missing fixtures from {upstream.url}/v1 into *fixtures"])
    upstream.stop()
    monkeypatch.delenv("OPENAI_API_KEY")

    cassettes = inner.path / "fixtures"
    assert cassette_names(cassettes) == ["test_rec.test_param_a_b", "test_rec.test_recorded"]
    files = sorted(p.name for p in (cassettes / "test_rec.test_recorded").iterdir())
    assert len(files) == 2 and all(f.startswith("chat.completions-gpt-4o-mini-") for f in files)
    assert not any(SECRET in p.read_text() for p in cassettes.rglob("*.json"))

    replayed = run(inner)
    replayed.assert_outcomes(passed=3, failed=1)
    assert json.loads((inner.path / "replay.json").read_text()) == [
        json.loads((inner.path / "record.json").read_text())[0], files]
    replayed.stdout.fnmatch_lines([
        "*test_missing_cassette*",
        "*No fixture for POST /v1/chat/completions*in cassette 'nothing-here'. Nothing was recorded*",
        "*- oaigate -*",
        ("Cassette 'nothing-here' (*nothing-here) has no recording of this request. Record what is missing "
         "with `pytest --oaigate-record`*"),
    ])
    assert not (cassettes / "nothing-here").exists()


XDIST_TESTS = """
import os

import pytest


def ask(client, request, text):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    if not request.config.getoption("oaigate_record"):
        assert raw.headers["x-oaigate-fixture"] == "hit"
        (request.config.rootpath / f"{request.node.name}.worker").write_text(os.environ["PYTEST_XDIST_WORKER"])


@pytest.mark.oaigate_cassette
def test_one(openai_client, request):
    ask(openai_client, request, "one")


@pytest.mark.oaigate_cassette
def test_two(openai_client, request):
    ask(openai_client, request, "two")
"""


def test_replay_under_xdist(inner: pytest.Pytester, gateway: Callable[..., Gateway]) -> None:
    """Each worker runs its own gateway over the shared folder (recorded here, in this process, to save a run)."""
    pytest.importorskip("xdist")
    recorder = gateway("mock", ledger={"enabled": False}, fixtures={"dir": str(inner.path / "fixtures")})
    for text in ("one", "two"):
        headers = {"x-oaigate-fixtures": "record", "x-oaigate-cassette": f"test_par.test_{text}"}
        with recorder.client(default_headers=headers) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    recorder.settle()
    inner.makepyfile(test_par=XDIST_TESTS)
    run(inner, "-n", "2").assert_outcomes(passed=2)
    workers = {(inner.path / f"{name}.worker").read_text() for name in ("test_one", "test_two")}
    assert workers == {"gw0", "gw1"}

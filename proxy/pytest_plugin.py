"""oaigate's pytest plugin: a running mock, OpenAI SDK clients on it, and cassettes replayed through a gateway.

    def test_chat(openai_client): ...            # the session's deterministic mock: no network, no key

    @pytest.mark.oaigate_cassette                # replays <rootdir>/fixtures/<module>.<test>/ through a gateway
    def test_recorded(openai_client): ...        # a request with no recording fails with openai.NotFoundError

    pytest --oaigate-record                      # records what is missing, from the real API (OPENAI_API_KEY)

Loaded through the `pytest11` entry point wherever oaigate is installed (`-p no:oaigate` turns it off),
so importing it costs nothing: aiohttp, openai and the servers are imported by the fixtures that use
them. Servers are session-scoped, bind 127.0.0.1 on a free port and stop at the session's end; under
pytest-xdist each worker runs its own. One gateway serves every cassette: the clients name theirs in
the `x-oaigate-fixtures` and `x-oaigate-cassette` headers (`oaigate_headers`, for other clients).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import openai
    from pluggy import Result

    from .background import BackgroundServer

MARKER = "oaigate_cassette"
DEFAULT_UPSTREAM = "https://api.openai.com/v1"
API_KEY_ENV = "OPENAI_API_KEY"
TEST_KEY = "sk-oaigate-test"  # what the clients send; the gateway never forwards it upstream
MODE_HEADER = "x-oaigate-fixtures"  # proxy.wire.fixtures.MODE_HEADER (not imported: the plugin loads only pytest)
CASSETTE_HEADER = "x-oaigate-cassette"
CASSETTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the gateway's rule, proxy.stages.fixtures
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("oaigate", "oaigate: mock OpenAI server and recorded fixtures")
    group.addoption("--oaigate-record", action="store_true", default=False,
                    help="Tests marked oaigate_cassette replay what is recorded and record what is missing, "
                         "through a gateway to the real upstream. To re-record, delete the cassette's folder.")
    group.addoption("--oaigate-upstream", metavar="URL", default=None,
                    help=f"Where --oaigate-record records from: a /v1 base URL, or 'mock' for oaigate's mock "
                         f"(default: ini oaigate_upstream, else {DEFAULT_UPSTREAM}). "
                         f"The key comes from ${API_KEY_ENV}.")
    group.addoption("--oaigate-fixtures", metavar="DIR", default=None,
                    help="Folder of cassettes, one subfolder each (default: ini oaigate_fixtures, else "
                         "<rootdir>/fixtures).")
    parser.addini("oaigate_upstream", f"Where --oaigate-record records from (default {DEFAULT_UPSTREAM}).",
                  default=DEFAULT_UPSTREAM)
    parser.addini("oaigate_fixtures", "Folder of cassettes, relative to the ini file (default fixtures).",
                  default="fixtures")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(name=None): send this test's OpenAI requests through an oaigate gateway that replays the "
        "cassette `name` (default: <module>.<test>), or with --oaigate-record also records what is missing.",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    if not config.getoption("oaigate_record"):
        return None
    settings = Settings.from_config(config)
    return f"oaigate: recording missing fixtures from {settings.upstream} into {settings.fixtures}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None],
) -> Generator[None, Result[pytest.TestReport], None]:
    """A replay miss in a cassette test gets a short section saying how to record it."""
    outcome = yield
    if call.excinfo is None or item.get_closest_marker(MARKER) is None:
        return
    error = call.excinfo.value
    if getattr(error, "code", None) != "fixture_not_found" and "fixture_not_found" not in str(error):
        return
    settings = Settings.from_config(item.config)
    name = cassette_name(item)
    if settings.record:
        hint = f"Cassette '{name}' could not record this request: see the error above."
    else:
        hint = (f"Cassette '{name}' ({settings.fixtures / name}) has no recording of this request. Record what "
                f"is missing with `pytest --oaigate-record` (from {settings.upstream}, key in ${API_KEY_ENV}); "
                "to re-record the cassette, delete its folder first.")
    outcome.get_result().sections.append(("oaigate", hint))


@dataclass(frozen=True)
class Settings:
    """The plugin's options, resolved: recording or not, the upstream to record from, the fixtures folder."""

    record: bool
    upstream: str
    fixtures: Path

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Resolved once per run and kept in the config's stash."""
        found = config.stash.get(_SETTINGS, None)
        if found is None:
            found = config.stash[_SETTINGS] = cls._resolve(config)
        return found

    @classmethod
    def _resolve(cls, config: pytest.Config) -> Settings:
        upstream = config.getoption("oaigate_upstream") or config.getini("oaigate_upstream") or DEFAULT_UPSTREAM
        given = config.getoption("oaigate_fixtures")
        if given:
            fixtures = Path(config.invocation_params.dir, given)
        else:
            base = config.inipath.parent if config.inipath is not None else config.rootpath
            fixtures = base / (config.getini("oaigate_fixtures") or "fixtures")
        return cls(bool(config.getoption("oaigate_record")), str(upstream).strip(), fixtures.resolve())

    @property
    def mode(self) -> str:
        """The fixtures mode a cassette test's requests ask the gateway for."""
        return "record-missing" if self.record else "replay"


_SETTINGS = pytest.StashKey[Settings]()


def cassette_name(item: pytest.Item) -> str:
    """The marker's name, or one derived from the test: `<module>.<class>.<test>` made safe for a folder."""
    marker = item.get_closest_marker(MARKER)
    given = None if marker is None else (marker.args[0] if marker.args else marker.kwargs.get("name"))
    if given is not None:
        if not isinstance(given, str) or not CASSETTE_NAME.match(given):
            pytest.fail(f"invalid {MARKER} name {given!r}: use up to 100 letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit.", pytrace=False)
        return given
    module = getattr(getattr(item, "module", None), "__name__", None) or item.path.stem
    return safe_name(".".join([module, *item.nodeid.split("::")[1:]]))


def safe_name(raw: str) -> str:
    """`raw` as a valid cassette name; a long one is cut and given a hash of the whole to stay unique."""
    name = _UNSAFE.sub("_", raw).strip("._-") or "cassette"
    if len(name) > 100:
        name = name[:91].rstrip("._-") + "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return name


@dataclass(frozen=True)
class OaigateServer:
    """A server the plugin runs: `url` is its root (`/healthz`), `base_url` the `/v1` base for an SDK."""

    server: BackgroundServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"


@dataclass(frozen=True)
class OaigateGateway(OaigateServer):
    """The session's gateway: `upstream` it forwards to, `fixtures` its cassettes' folder."""

    upstream: str
    fixtures: Path
    record: bool

    def rewind(self, cassette: str) -> None:
        """Replay `cassette` from the start: a test sees its recordings in order, whatever ran before."""
        from .app import PIPELINE

        assert self.server.app is not None  # started: the app exists
        self.server.app[PIPELINE].fixtures.rewind(cassette)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the exchanges so far are finished, so their recordings are on disk."""
        import asyncio

        from .app import PIPELINE

        assert self.server.app is not None  # started: the app exists
        pipeline = self.server.app[PIPELINE]

        async def drained() -> None:
            for _ in range(3):  # a stream's handler may still be returning when its client has read the end
                await pipeline.drain()
                await asyncio.sleep(0)

        self.server.run(drained(), timeout)


@pytest.fixture(scope="session")
def oaigate_mock() -> Iterator[OaigateServer]:
    """The session's mock OpenAI server (default settings, seed 0), on a free loopback port."""
    from mockserver.app import make_app
    from mockserver.settings import MockSettings

    from .background import BackgroundServer

    server = BackgroundServer(lambda: make_app(MockSettings()), name="oaigate-mock").start()
    try:
        yield OaigateServer(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def oaigate_gateway(request: pytest.FixtureRequest) -> Iterator[OaigateGateway]:
    """The session's gateway over the fixtures folder, no ledger. Its upstream is its embedded mock, or
    when recording the real upstream (`--oaigate-upstream`, key from $OPENAI_API_KEY)."""
    settings = Settings.from_config(request.config)
    upstream = settings.upstream if settings.record else "mock"
    if upstream != "mock" and not os.environ.get(API_KEY_ENV):
        pytest.fail(f"--oaigate-record from {upstream} needs the upstream's key in ${API_KEY_ENV} "
                    "(any value, for an upstream that wants none).", pytrace=False)

    from .app import make_app
    from .background import BackgroundServer
    from .config import Config

    config = Config.model_validate({
        "upstream": {"base_url": upstream, "api_key_env": API_KEY_ENV},
        "ledger": {"enabled": False},
        "fixtures": {"mode": "live", "dir": str(settings.fixtures), "allow_client_override": True},  # per test
    })
    server = BackgroundServer(lambda: make_app(config), name="oaigate-gateway").start()
    try:
        yield OaigateGateway(server, upstream, settings.fixtures, settings.record)
    finally:
        server.stop()


@pytest.fixture
def oaigate_cassette(request: pytest.FixtureRequest) -> Path:
    """The folder of this test's cassette (it exists once something is recorded)."""
    if request.node.get_closest_marker(MARKER) is None:
        pytest.fail(f"the oaigate_cassette fixture needs @pytest.mark.{MARKER} on the test", pytrace=False)
    return Settings.from_config(request.config).fixtures / cassette_name(request.node)


@pytest.fixture
def oaigate_headers(request: pytest.FixtureRequest) -> dict[str, str]:
    """Headers that route a request to this test's cassette (empty for a test without the marker);
    give them to any other client as its default headers."""
    if request.node.get_closest_marker(MARKER) is None:
        return {}
    settings = Settings.from_config(request.config)
    return {MODE_HEADER: settings.mode, CASSETTE_HEADER: cassette_name(request.node)}


@pytest.fixture
def oaigate_base_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The `/v1` base URL for this test: the gateway's with the cassette marker, else the mock's."""
    if request.node.get_closest_marker(MARKER) is None:
        yield request.getfixturevalue("oaigate_mock").base_url
        return
    gateway: OaigateGateway = request.getfixturevalue("oaigate_gateway")
    gateway.rewind(cassette_name(request.node))
    yield gateway.base_url
    gateway.settle()


@pytest.fixture
def openai_client(oaigate_base_url: str, oaigate_headers: dict[str, str]) -> Iterator[openai.OpenAI]:
    """The real sync OpenAI SDK on `oaigate_base_url`, no retries; closed after the test."""
    openai = _openai()
    with openai.OpenAI(base_url=oaigate_base_url, api_key=TEST_KEY, max_retries=0, default_headers=oaigate_headers,
                       http_client=openai.DefaultHttpxClient(trust_env=False)) as client:
        yield client


@pytest.fixture
def async_openai_client(oaigate_base_url: str, oaigate_headers: dict[str, str]) -> Iterator[openai.AsyncOpenAI]:
    """The real async OpenAI SDK on `oaigate_base_url`, no retries; closed after the test.

    It keeps no idle connections, so it holds no socket of the test's event loop when that loop ends,
    and works under pytest-asyncio, anyio or a plain `asyncio.run` alike."""
    openai = _openai()
    limits = type(openai.DEFAULT_CONNECTION_LIMITS)(max_connections=100, max_keepalive_connections=0)
    client = openai.AsyncOpenAI(base_url=oaigate_base_url, api_key=TEST_KEY, max_retries=0,
                                default_headers=oaigate_headers,
                                http_client=openai.DefaultAsyncHttpxClient(limits=limits, trust_env=False))
    try:
        yield client
    finally:
        _close_async(client)


def _openai() -> Any:
    try:
        import openai
    except ImportError:
        pytest.fail("the openai_client fixtures need the openai package: pip install openai", pytrace=False)
    return openai


def _close_async(client: openai.AsyncOpenAI) -> None:
    """Close an async client from synchronous teardown, on a loop of its own."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(client.close())
        return
    closer = threading.Thread(target=lambda: asyncio.run(client.close()), name="oaigate-close")
    closer.start()
    closer.join(10)

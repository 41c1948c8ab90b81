"""authenticate: `[[keys]]` (plain, from an env var, or a SHA-256), 401s in OpenAI's envelope, anon principals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import openai
import pytest
from aiohttp import web
from pydantic import ValidationError

from proxy.app import make_app
from proxy.config import Config, KeyConfig
from proxy.wire.configfile import ConfigError
from tests.servers import ServerThread

from .conftest import UPSTREAM_KEY, Gateway, fetch

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
ALICE, BOB, CAROL = "sk-alice-1b2c3d", "sk-bob-4e5f6a", "sk-carol-7b8c9d"
KEYS = [
    {"name": "alice", "key": ALICE},
    {"name": "bob", "key_env": "OAIGATE_TEST_BOB_KEY"},
    {"name": "carol", "key_sha256": hashlib.sha256(CAROL.encode()).hexdigest()},
]


@pytest.fixture
def keyed(gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch,
          upstream: Callable[[web.Application], ServerThread]) -> tuple[Gateway, list[str]]:
    """A gateway with three keys in front of a mock that records which requests reached it."""
    monkeypatch.setenv("OAIGATE_TEST_BOB_KEY", BOB)
    reached: list[str] = []
    from mockserver.app import make_app as make_mock

    mock = make_mock()

    @web.middleware
    async def record(request: web.Request, handler: object) -> web.StreamResponse:
        reached.append(request.headers.get("Authorization", ""))
        return await handler(request)  # type: ignore[operator]

    mock.middlewares.insert(0, record)
    return gateway(upstream(mock).url + "/v1", keys=KEYS), reached


@pytest.mark.parametrize(("key", "name"), [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")])
def test_configured_keys_are_accepted_and_named(keyed: tuple[Gateway, list[str]], key: str, name: str) -> None:
    gw, reached = keyed
    with gw.client(key=key) as client:
        assert client.chat.completions.create(**CHAT).choices
    assert reached == [f"Bearer {UPSTREAM_KEY}"]  # the upstream saw the upstream key, not the client's
    (row,) = gw.rows(expect=1)
    assert (row["key_name"], row["status"]) == (name, 200)


def test_azure_style_api_key_header_is_accepted(keyed: tuple[Gateway, list[str]]) -> None:
    gw, reached = keyed
    reply = fetch("POST", gw.url + "/chat/completions", key=None, json=CHAT, headers={"api-key": ALICE})
    assert reply.status == 200
    assert reached == [f"Bearer {UPSTREAM_KEY}"]
    assert gw.rows(expect=1)[0]["key_name"] == "alice"


@pytest.mark.parametrize("wrong", ["sk-alice-1b2c3e", "x" + ALICE, "sk-" + "x" * 200, BOB.upper(),
                                   hashlib.sha256(CAROL.encode()).hexdigest()])
def test_wrong_key_is_a_401_that_does_not_echo_it(keyed: tuple[Gateway, list[str]], wrong: str) -> None:
    gw, reached = keyed
    reply = fetch("POST", gw.url + "/chat/completions", key=None, json=CHAT,
                  headers={"Authorization": f"Bearer {wrong}"})
    assert reply.status == 401
    body = json.loads(reply.body)
    assert set(body) == {"error"} and set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
    assert wrong.strip() not in reply.body.decode() and wrong.strip()[-6:] not in reply.body.decode()
    assert "x-oaigate-overhead-ms" in reply.headers
    assert reached == []  # nothing reached the upstream
    (row,) = gw.rows(expect=1)
    assert (row["status"], row["key_name"], row["error_type"], row["attempts"]) == (401, None, "invalid_api_key", 0)
    gw.stop()
    for path in gw.db.parent.glob(gw.db.name + "*"):
        data = path.read_bytes()
        assert wrong.strip().encode() not in data and ALICE.encode() not in data and BOB.encode() not in data


def test_wrong_key_with_the_sdk(keyed: tuple[Gateway, list[str]]) -> None:
    gw, _ = keyed
    with gw.client(key="sk-nobody-at-all") as client, pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(**CHAT)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    assert "sk-nobody-at-all" not in str(err.value)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic YWxpY2U6eA=="},
                                     {"Authorization": ALICE}])
def test_missing_key_is_a_401(keyed: tuple[Gateway, list[str]], headers: dict[str, str]) -> None:
    gw, reached = keyed
    reply = fetch("GET", gw.url + "/models", key=None, headers=headers)
    assert reply.status == 401
    error = json.loads(reply.body)["error"]
    assert error["code"] == "invalid_api_key" and "API key" in error["message"]
    assert ALICE not in reply.body.decode()
    assert reached == []


def test_health_needs_no_key_and_metrics_need_one(keyed: tuple[Gateway, list[str]]) -> None:
    gw, _ = keyed  # the details: tests/proxy/test_isolation.py
    assert fetch("GET", gw.root + "/healthz", key=None).status == 200
    assert fetch("GET", gw.root + "/metrics", key=None).status == 401
    assert fetch("GET", gw.root + "/metrics", key=ALICE).status == 200


def test_without_keys_any_token_is_attributed_by_a_short_hash(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    for token in ("sk-one", "sk-two", "sk-one"):
        assert fetch("GET", gw.url + "/models", key=token).status == 200
    assert fetch("GET", gw.url + "/models", key=None).status == 401  # a token is still required
    rows = gw.rows(expect=4)
    names = [r["key_name"] for r in rows if r["status"] == 200]
    expected = ["anon-" + hashlib.sha256(t.encode()).hexdigest()[:8] for t in ("sk-one", "sk-two", "sk-one")]
    assert names == expected and names[0] != names[1]
    assert all(len(n) == len("anon-") + 8 for n in names)


def test_missing_key_env_fails_at_startup(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OAIGATE_TEST_NOT_SET", raising=False)
    config = Config(keys=[KeyConfig(name="ci", key_env="OAIGATE_TEST_NOT_SET")])
    with pytest.raises(ConfigError) as err:
        make_app(config, config_file="my.toml")
    message = str(err.value)
    assert "my.toml" in message and "keys[ci].key_env" in message and "OAIGATE_TEST_NOT_SET" in message


@pytest.mark.parametrize("fields", [{}, {"key": "a", "key_env": "B"}, {"key_sha256": "nothex"},
                                    {"key": ""}])
def test_a_key_needs_exactly_one_valid_source(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        KeyConfig(name="x", **fields)


def test_the_admin_key_from_server_admin_key_env_sees_every_key(gateway: Callable[..., Gateway],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`[server] admin_key_env`: an operator's key, kept out of the config file, that sees every key's
    budgets (and dashboard rows); another key sees only its own; a wrong key stays a 401."""
    monkeypatch.setenv("OAIGATE_TEST_ADMIN_KEY", "sk-operator-77aa")
    gw = gateway(keys=[{"name": "alice", "key": ALICE, "budget_usd": 1},
                       {"name": "dave", "key": "sk-dave-5f5f", "budget_usd": 2}],
                 server={"admin_key_env": "OAIGATE_TEST_ADMIN_KEY"})
    admin = json.loads(fetch("GET", gw.root + "/oaigate/budgets", key="sk-operator-77aa").body)
    assert admin["key"] == "admin" and {b["scope"] for b in admin["budgets"]} == {"key:alice", "key:dave"}
    own = json.loads(fetch("GET", gw.root + "/oaigate/budgets", key=ALICE).body)
    assert {b["scope"] for b in own["budgets"]} == {"key:alice"}
    assert fetch("GET", gw.root + "/oaigate/budgets", key="sk-operator-77ab").status == 401
    with openai.OpenAI(base_url=gw.root + "/v1", api_key="sk-operator-77aa", max_retries=0) as client:
        assert client.models.list().data  # the admin key is a working key too


def test_an_unset_admin_key_env_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OAIGATE_TEST_NOT_SET", raising=False)
    config = Config.model_validate({"keys": [{"name": "ci", "key": ALICE}],
                                    "server": {"admin_key_env": "OAIGATE_TEST_NOT_SET"}})
    with pytest.raises(ConfigError) as err:
        make_app(config, config_file="my.toml")
    assert "server.admin_key_env" in str(err.value) and "OAIGATE_TEST_NOT_SET" in str(err.value)

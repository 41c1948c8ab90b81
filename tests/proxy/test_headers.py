"""Forwarded headers: a known list goes upstream, nothing else; the organization and project the
upstream key bills come from config, never from a client (unless `pass_through`).

What reached the upstream is read back from an upstream that echoes every header it received.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.config import Config
from tests.servers import ServerThread

from .conftest import CLIENT_KEY, UPSTREAM_KEY, Gateway, echo_app, echoed_headers, fetch

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
IDENTITY = {"OpenAI-Organization": "org-client-picked", "OpenAI-Project": "proj_client_picked"}


def _received(reply: Any) -> dict[str, str]:
    assert reply.status == 200, reply.body
    return echoed_headers(json.loads(reply.body))


def _sdk_received(gw: Gateway, **client_kwargs: Any) -> dict[str, str]:
    """What the upstream received for one chat request made with the real `openai` SDK."""
    with gw.client(**client_kwargs) as client:
        raw = client.chat.completions.with_raw_response.create(**CHAT)
        return echoed_headers(json.loads(raw.http_response.content))


def test_a_client_cannot_pick_the_organization_or_project(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo)
    headers = _received(fetch("POST", gw.url + "/chat/completions", json=CHAT, headers=IDENTITY))
    assert "openai-organization" not in headers and "openai-project" not in headers
    sdk = _sdk_received(gw, organization="org-client-picked", project="proj_client_picked")
    assert "openai-organization" not in sdk and "openai-project" not in sdk


def test_the_configured_organization_and_project_are_sent(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, upstream={"organization": "org-operator", "project": "proj_operator"})
    for headers in (_received(fetch("POST", gw.url + "/chat/completions", json=CHAT, headers=IDENTITY)),
                    _received(fetch("GET", gw.url + "/models")),
                    _sdk_received(gw, organization="org-client-picked", project="proj_client_picked")):
        assert headers["openai-organization"] == "org-operator"
        assert headers["openai-project"] == "proj_operator"
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_with_pass_through_the_client_brings_its_own_identity(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, upstream={"pass_through": True, "organization": "org-operator"})
    own = _received(fetch("POST", gw.url + "/chat/completions", json=CHAT, headers=IDENTITY))
    assert own["authorization"] == f"Bearer {CLIENT_KEY}"
    assert (own["openai-organization"], own["openai-project"]) == ("org-client-picked", "proj_client_picked")
    default = _received(fetch("GET", gw.url + "/models"))  # the client names none: the configured one
    assert default["openai-organization"] == "org-operator" and "openai-project" not in default


def test_only_known_headers_are_forwarded(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo)
    sent = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "OpenAI/Python 1.99.0",
        "X-Stainless-Lang": "python",
        "X-Stainless-Retry-Count": "0",
        "OpenAI-Beta": "assistants=v2",
        "Idempotency-Key": "stainless-python-retry-1",
        "X-Client-Request-Id": "my-trace-1",
        "x-mock-latency": "ttft_ms=0",
        "x-mock-fault": "500;times=0",
    }
    unknown = {
        "X-Forwarded-For": "10.0.0.7",
        "Forwarded": "for=10.0.0.7",
        "X-Real-IP": "10.0.0.7",
        "Origin": "https://evil.example",
        "Referer": "https://evil.example/page",
        "X-Custom-Team": "research",
        "Via": "1.1 some-proxy",
    }
    headers = _received(fetch("POST", gw.url + "/chat/completions", data=json.dumps(CHAT).encode(),
                              headers={**sent, **unknown}))
    for name, value in sent.items():
        assert headers.get(name.lower()) == value, name
    for name in unknown:
        assert name.lower() not in headers, name
    sdk = _sdk_received(gw)  # the SDK's own headers all arrive
    assert sdk["user-agent"].startswith("OpenAI/Python")
    assert {"x-stainless-lang", "x-stainless-package-version", "x-stainless-os"} <= set(sdk)


def test_forward_headers_config_adds_names_and_globs(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, upstream={"forward_headers": ["X-Trace-Id", "x-team-*"]})
    headers = _received(fetch("GET", gw.url + "/models", headers={
        "X-Trace-Id": "t-1", "X-Team-Name": "research", "X-Team-Cost-Center": "42", "X-Other": "no"}))
    assert (headers["x-trace-id"], headers["x-team-name"], headers["x-team-cost-center"]) == ("t-1", "research", "42")
    assert "x-other" not in headers
    assert "x-stainless-lang" in _received(fetch("GET", gw.url + "/models", headers={"X-Stainless-Lang": "py"}))


@pytest.mark.parametrize("name", ["Authorization", "api-key", "Cookie", "OpenAI-Organization", "openai-project",
                                  "Host", "Content-Length", "Connection", "x-oaigate-fixtures", "*", "x-*",
                                  "openai-*"])
def test_forward_headers_cannot_forward_credentials_or_identity(name: str) -> None:
    with pytest.raises(ValidationError, match="forward_headers"):
        Config.model_validate({"upstream": {"forward_headers": [name]}})


def test_a_route_to_another_host_gets_no_organization(gateway: Callable[..., Gateway], echo: str,
                                                      upstream: Callable[[web.Application], ServerThread]) -> None:
    other = upstream(echo_app()).url.replace("127.0.0.1", "localhost") + "/v1"  # another host name
    gw = gateway(echo, upstream={"organization": "org-operator", "project": "proj_operator"},
                 routes=[{"model": "llama*", "base_url": other}])
    to_default = _received(fetch("POST", gw.url + "/chat/completions", json=CHAT))
    to_other = _received(fetch("POST", gw.url + "/chat/completions", json={**CHAT, "model": "llama3"}))
    assert to_default["openai-organization"] == "org-operator"
    assert "openai-organization" not in to_other and "openai-project" not in to_other
    assert "authorization" not in to_other  # the upstream key stays on its own host too


NAMES = st.sampled_from(["Content-Type", "content-type", "Accept", "X-Stainless-Lang", "x-stainless-os", "Cookie",
                         "Authorization", "X-Custom-Trace", "x-custom-trace", "X-Oaigate-Cache", "OpenAI-Organization",
                         "Connection", "Keep-Alive", "X-Mock-Fault", "Idempotency-Key", "X-Other"])


@given(st.lists(st.tuples(NAMES, st.sampled_from(["a", "b"])), max_size=12),
       st.sampled_from([(), ("x-custom-*",), ("x-other",)]))
def test_upstream_headers_keep_exactly_what_the_rule_forwards(pairs: list[tuple[str, str]],
                                                              extra: tuple[str, ...]) -> None:
    """The per-name decisions the gateway remembers give what the rule itself gives, whatever was seen
    before (the memory is shared by every request), and a flood of new names never grows it unbounded."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.exchange import Exchange
    from proxy.stages import forward
    from proxy.upstream import Upstream

    ex = Exchange("POST", "/v1/chat/completions", "", CIMultiDictProxy(CIMultiDict(pairs)), b"")
    got = forward.upstream_headers(ex, Upstream("u", "http://x/v1", forward_headers=extra), False)
    expected = [(k, v) for k, v in pairs if forward._forwarded(k.lower(), extra)]
    own = {"authorization", "accept-encoding"}
    assert [(k, v) for k, v in got.items() if k.lower() not in own] == expected
    for i in range(forward._DECIDED_MAX + 10):
        forward._decisions(extra)[f"x-flood-{i}"] = False
    assert len(forward._decisions(extra)) <= forward._DECIDED_MAX + 1

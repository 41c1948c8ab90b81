"""`oaigate serve` as a real process: ready line, an SDK call, SIGTERM drains and flushes, exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from aiohttp import web

from tests.servers import ServerThread

from .conftest import UPSTREAM_KEY, fetch, read_rows
from .processes import CHAT, MOCK_CONFIG, READY, Serve, write_config


def test_serve_answers_then_sigterm_exits_0_with_the_row_flushed(serve: Callable[..., Serve], tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    process = serve("--port", "0", "--db", str(db), "--config", str(write_config(tmp_path, MOCK_CONFIG)))
    url = process.ready_url()
    with openai.OpenAI(base_url=url, api_key="sk-cli-test", max_retries=0, timeout=15) as client:
        completion = client.chat.completions.create(**CHAT)
    health = json.loads(fetch("GET", url.removesuffix("/v1") + "/healthz", key=None).body)
    assert health["status"] == "ok" and health["upstream"] == "mock"
    assert process.stop() == 0
    (row,) = read_rows(db)
    assert row["status"] == 200 and row["usage_source"] == "reported"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (completion.usage.prompt_tokens,
                                                                completion.usage.completion_tokens)
    assert UPSTREAM_KEY not in "".join(process.stderr)
    for path in tmp_path.glob("ledger.db*"):
        assert UPSTREAM_KEY.encode() not in path.read_bytes()


def test_sigterm_drains_an_in_flight_stream(serve: Callable[..., Serve], tmp_path: Path,
                                            upstream: Callable[[web.Application], ServerThread]) -> None:
    release = asyncio.Event()

    async def gated(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ("Hello", " there"):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await release.wait()  # the second chunk waits for the test
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", gated)
    server = upstream(app)
    db = tmp_path / "drain.db"
    process = serve("--port", "0", "--db", str(db), "--upstream", server.url + "/v1",
                    "--config", str(write_config(tmp_path, MOCK_CONFIG)))
    url = process.ready_url()
    try:
        with openai.OpenAI(base_url=url, api_key="sk-cli-test", max_retries=0, timeout=15) as client, \
                client.chat.completions.create(**CHAT, stream=True) as stream:
            chunks = iter(stream)
            assert next(chunks).choices[0].delta.content == "Hello"
            process.proc.send_signal(signal.SIGTERM)  # while the stream is in flight
            server.call(release.set)
            rest = [c.choices[0].delta.content for c in chunks]
        assert rest == [" there"]
    finally:
        server.call(release.set)
    assert process.stop() == 0
    (row,) = read_rows(db)
    assert row["status"] == 200 and row["error_type"] is None and row["stream"] == 1


def test_python_m_proxy_help() -> None:
    result = subprocess.run([sys.executable, "-m", "proxy", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--port", "--host", "--config", "--db", "--upstream", "--mode"):
        assert option in result.stdout, option
    assert "Traceback" not in result.stderr


def test_non_loopback_without_keys_is_refused(serve: Callable[..., Serve], tmp_path: Path) -> None:
    process = serve("--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "x.db"),
                    "--config", str(write_config(tmp_path, MOCK_CONFIG)))
    assert process.proc.wait(60) == 2
    process.stop()
    err = "".join(process.stderr)
    assert "0.0.0.0" in err and "[[keys]]" in err and "Traceback" not in err
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[upstream]\nmax_retries = \"lots\"\n", "upstream.max_retries", "integer"),
    ("[upstream]\nbse_url = \"mock\"\n", "upstream.bse_url", "unknown key"),
    ("[server]\nport = 70000\n", "server.port", "65535"),
    ("[[keys]]\nname = \"ci\"\n", "keys[0]", "exactly one of key, key_env, key_sha256"),
    ("[upstream\nbase_url = 1\n", None, ""),  # not TOML at all
], ids=["wrong-type", "unknown-key", "out-of-range", "key-without-source", "syntax"])
def test_bad_config_exits_2_with_file_key_and_reason(serve: Callable[..., Serve], tmp_path: Path, text: str,
                                                     key: str | None, reason: str) -> None:
    config = write_config(tmp_path, text)
    process = serve("--port", "0", "--db", str(tmp_path / "x.db"), "--config", str(config))
    assert process.proc.wait(60) == 2
    process.stop()
    err = "".join(process.stderr)
    assert str(config) in err or config.name in err, err
    if key is not None:
        assert key in err, err
    assert reason in err, err
    assert "Traceback" not in err and READY not in err


def test_unset_key_env_exits_2(serve: Callable[..., Serve], tmp_path: Path) -> None:
    config = write_config(tmp_path, MOCK_CONFIG + '\n[[keys]]\nname = "ci"\nkey_env = "OAIGATE_TEST_SURELY_UNSET"\n')
    process = serve("--port", "0", "--db", str(tmp_path / "x.db"), "--config", str(config))
    assert process.proc.wait(60) == 2
    process.stop()
    err = "".join(process.stderr)
    assert "keys[ci].key_env" in err and "OAIGATE_TEST_SURELY_UNSET" in err and "Traceback" not in err

"""The mock defends itself: it will not listen beyond loopback unless told to (its `/_mock` API has
no auth), absurd pacing and fault values are a 400 instead of a hang, and malformed uploads are a 4xx.

The bind rule is checked on the real command lines (`python -m mockserver`, `oaigate mock`) in a
subprocess that must exit without listening. Pacing runs on a recording `sleep`: nothing waits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.http import call, error_of, post
from tests.mockserver.engine.test_faults import Recorder, raw
from tests.servers import ServerThread

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Pace me."}], "max_tokens": 5}
AUTH = {"Authorization": "Bearer sk-test"}
MOCK = [sys.executable, "-m", "mockserver"]
OAIGATE_MOCK = [sys.executable, "-c", "from proxy.cli import main; main()", "mock"]


def run_cli(args: list[str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command line to its end (a refused bind exits at once; one that listens would time out)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# --- binding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [MOCK, OAIGATE_MOCK], ids=["python -m mockserver", "oaigate mock"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "mock.example"])
def test_a_non_loopback_bind_is_refused(tmp_path: Path, command: list[str], host: str) -> None:
    done = run_cli([*command, "--host", host, "--port", "0"], tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "--allow-remote" in done.stderr and host in done.stderr and "/_mock" in done.stderr, done.stderr
    assert "listening" not in done.stderr


@pytest.mark.parametrize("how", ["flag", "config"])
def test_allow_remote_lets_it_try(tmp_path: Path, how: str) -> None:
    """With the flag (or `[mock] allow_remote = true`) the bind is attempted: 192.0.2.1 (TEST-NET, on no
    interface here) then fails to bind, exit 1 — so nothing listens beyond loopback in this test either."""
    if how == "flag":
        args = [*MOCK, "--host", "192.0.2.1", "--port", "0", "--allow-remote"]
    else:
        (tmp_path / "mock.toml").write_text('[mock]\nhost = "192.0.2.1"\nport = 0\nallow_remote = true\n')
        args = [*OAIGATE_MOCK, "--config", str(tmp_path / "mock.toml")]
    done = run_cli(args, tmp_path)
    assert done.returncode == 1 and "cannot listen on 192.0.2.1" in done.stderr, (done.returncode, done.stderr)


def test_a_config_host_beyond_loopback_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[mock]\nhost = "0.0.0.0"\nport = 0\n')
    done = run_cli(MOCK, tmp_path)
    assert done.returncode == 2 and "--allow-remote" in done.stderr and "allow_remote" in done.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_needs_no_flag(tmp_path: Path, host: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([*MOCK, "--host", host, "--port", "0"], cwd=tmp_path, env=env,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "oaigate mock listening on http://" in line, line
    finally:
        process.terminate()
        process.communicate(timeout=30)


# --- pacing and fault bounds ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def paced() -> Iterator[tuple[ServerThread, Recorder]]:
    recorder = Recorder()
    server = ServerThread(lambda: make_app(MockSettings(), sleep=recorder)).start()
    yield server, recorder
    server.stop()


@pytest.mark.parametrize("value", [
    "ttft_ms=1000000000000", "ttft_ms=60001", "chunk_ms=60001", "ttft_ms=1e12", "ttft_ms=-1", "chunk_ms=-5",
    "ttft_ms=nan", "ttft_ms=NaN", "chunk_ms=inf", "ttft_ms=-inf", "ttft_ms=" + "9" * 5000, "ttft_ms=0x10",
    "ttft_ms=1_000", "ttft_ms=١٢", "ttft_ms=", "ttft_ms=10;ttft_ms=99999999",
])
def test_absurd_pacing_is_a_400_not_a_hang(paced: tuple[ServerThread, Recorder], value: str) -> None:
    server, recorder = paced
    before = len(recorder.delays)
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/chat/completions", {**CHAT, "stream": True}),
                       ("/v1/models", None)):
        reply = raw(server.url, "POST" if body else "GET", path, body, {"x-mock-latency": value})
        assert reply.status == 400, (value, reply.data[:300])
        error = reply.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "x-mock-latency",
                                                                  "invalid_header")
    assert len(recorder.delays) == before, "nothing slept"


def test_pacing_up_to_the_bound_is_honoured(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    before = len(recorder.delays)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as client:
        client.chat.completions.create(**CHAT, extra_headers={"x-mock-latency": "ttft_ms=60000;chunk_ms=60000"})
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**CHAT, extra_headers={"x-mock-latency": "ttft_ms=60001"})
    assert "60000" in refused.value.message
    assert recorder.delays[before:] and max(recorder.delays[before:]) >= 60.0
    assert all(d <= 60.0 * 20 for d in recorder.delays[before:])  # ttft + chunk_ms per chunk, nothing absurd


@pytest.mark.parametrize("value", [
    "429;retry_after_ms=3600001", "429;retry_after_ms=" + "9" * 40, "500;times=1000001", "503;times=" + "9" * 30,
    "429;id=" + "x" * 201, "429;retry_after_ms=nan", "500;times=inf",
])
def test_absurd_fault_values_are_a_400(paced: tuple[ServerThread, Recorder], value: str) -> None:
    server, _ = paced
    reply = raw(server.url, "POST", "/v1/chat/completions", CHAT, {"x-mock-fault": value})
    assert reply.status == 400, (value, reply.data[:300])
    assert reply.json()["error"]["param"] == "x-mock-fault"


def test_fault_values_at_the_bounds_work(paced: tuple[ServerThread, Recorder]) -> None:
    server, _ = paced
    limited = raw(server.url, "POST", "/v1/chat/completions", CHAT, {"x-mock-fault": "429;retry_after_ms=3600000"})
    assert limited.status == 429 and limited.headers["retry-after"] == "3600"
    fault = f"503;times=1000000;id={'i' * 200}"
    assert raw(server.url, "POST", "/v1/chat/completions", CHAT, {"x-mock-fault": fault}).status == 503


def test_rules_cannot_script_a_hang(paced: tuple[ServerThread, Recorder]) -> None:
    server, _ = paced
    for answer in ({"pacing": {"ttft_ms": 10**12}}, {"pacing": {"chunk_ms": 60001}},
                   {"error": {"status": 429, "retry_after_ms": 3600001}}):
        reply = call("POST", server.url + "/_mock/rules", {"match": {"model": "gpt-4o-mini"}, "answer": answer})
        error_of(reply, 400)
    rules = call("GET", server.url + "/_mock/rules").json()["data"]
    assert rules == [], rules


# --- malformed uploads ---------------------------------------------------------------------------

UPLOADS = {
    "non-UTF-8 field name": b'--x\r\nContent-Disposition: form-data; name="\xff\xfe"\r\n\r\nbatch\r\n--x--\r\n',
    "field name past the header line limit":
        b'--x\r\nContent-Disposition: form-data; name="' + b"a" * 100_000 + b'"\r\n\r\nbatch\r\n--x--\r\n',
    "part header without a colon": b"--x\r\nbroken header\r\n\r\nbatch\r\n--x--\r\n",
    "truncated part": b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbat',
    "truncated headers": b'--x\r\nContent-Disposition: form-data; name="purpose"',
    "empty body": b"",
}


@pytest.mark.parametrize("body", UPLOADS.values(), ids=UPLOADS.keys())
def test_malformed_multipart_is_a_400(mock_server: ServerThread, body: bytes) -> None:
    reply = post(mock_server.url + "/v1/files", raw=body,
                 headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"})
    error = error_of(reply, 400)
    assert error["type"] == "invalid_request_error" and error["message"]


def test_a_non_utf8_file_name_is_stored_readably(mock_server: ServerThread) -> None:
    body = (b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9.txt"\r\n\r\nhello\r\n--x--\r\n')
    reply = post(mock_server.url + "/v1/files", raw=body,
                 headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"})
    assert reply.status == 200, reply.body
    card = reply.json()
    assert card["filename"].startswith("caf") and card["filename"].endswith(".txt") and card["bytes"] == 5
    listed = call("GET", mock_server.url + "/v1/files", headers=AUTH)
    assert listed.status == 200 and card["id"] in json.dumps(listed.json())

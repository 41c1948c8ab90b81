"""When the tokenizers load: before serving when budgets or TPM limits count every prompt, else on
first use, in a thread (an idle gateway without them holds no tokenizer). Each case runs in a fresh
interpreter: what a process has loaded is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path
import aiohttp
from aiohttp.test_utils import TestServer
from proxy.app import make_app
from proxy.config import load_config
from proxy.wire import tokens

async def main():
    config = load_config(Path(sys.argv[1]))
    server = TestServer(make_app(config))
    await server.start_server()
    idle = sorted(tokens._loaded)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * 140_000}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/v1/chat/completions"), json=body,
                                headers={"Authorization": "Bearer sk-test"}) as response:
            answer = {"status": response.status, "code": (await response.json())["error"]["code"]}
    await server.close()
    print(json.dumps({"idle": idle, "after": sorted(tokens._loaded), "answer": answer}))

asyncio.run(main())
"""


def _run(tmp_path: Path, extra: str) -> dict:
    config = tmp_path / "oaigate.toml"
    # an upstream nobody listens on: the requests here are answered by the gateway itself
    config.write_text(f'[upstream]\nbase_url = "http://127.0.0.1:9/v1"\n'
                      f'[ledger]\npath = "{tmp_path / "l.db"}"\n{extra}')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(config)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_budgets_no_tokenizer_loads_until_a_prompt_needs_counting(tmp_path: Path) -> None:
    got = _run(tmp_path, "")
    assert got["idle"] == []
    # a prompt past the window is counted (its encoding loaded then, off the loop) and refused
    assert got["answer"] == {"status": 400, "code": "context_length_exceeded"}
    assert got["after"] == ["o200k_base"]


@pytest.mark.parametrize("extra", ["[limits]\nbudget_usd = 10\n", "[limits]\ntpm = 1000000\n"])
def test_with_budgets_or_tpm_limits_the_current_encoding_is_ready_before_serving(tmp_path: Path,
                                                                                 extra: str) -> None:
    got = _run(tmp_path, extra)
    assert "o200k_base" in got["idle"]
    assert got["answer"]["status"] in (400, 429)

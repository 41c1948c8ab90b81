"""Issue 15's figures against the bundled mock, each scenario on a key with a $0.001 budget:

    PYTHONPATH=. python benchmarks/budget_bypass.py

chained responses, a completions prompt list, JSON sent as multipart, a 500-line batch, GETs of
stored objects and a restart. Prints how many requests were admitted and the spend against the
budget (from the ledger)."""

import asyncio
import json
import os
import sqlite3
import tempfile
from pathlib import Path

import aiohttp
import openai

from proxy.app import make_app
from proxy.config import Config
from tests.servers import ServerThread

TINY, BIG = "sk-tiny-1", "sk-big-1"
os.environ["FIG_UP"] = "x"


def gateway(db, **extra):
    cfg = Config.model_validate(
        {
            "upstream": {"base_url": "mock", "api_key_env": "FIG_UP"},
            "ledger": {"path": str(db)},
            "keys": [{"name": "tiny", "key": TINY, "budget_usd": 0.001}, {"name": "big", "key": BIG}],
            **extra,
        }
    )
    return ServerThread(lambda: make_app(cfg)).start()


def rows(db):
    c = sqlite3.connect(db)
    c.row_factory = sqlite3.Row
    r = [dict(x) for x in c.execute("select * from requests")]
    c.close()
    return r


def spent(db, key="tiny"):
    return sum(r["cost_microusd"] or 0 for r in rows(db) if r["key_name"] == key)


def budget(url, key=TINY):
    import urllib.request

    req = urllib.request.Request(url + "/oaigate/budgets", headers={"Authorization": f"Bearer {key}"})
    return json.loads(urllib.request.urlopen(req).read())["budgets"][0]


def wait(gw):
    """Let the finish hooks write their rows."""
    import time

    time.sleep(0.6)


tmp = Path(tempfile.mkdtemp())
WORDS = "the river bends past the old mill and carries leaves toward the sea "
# 1. chain
db = tmp / "chain.db"
gw = gateway(db)
big = openai.OpenAI(base_url=gw.url + "/v1", api_key=BIG, max_retries=0)
tiny = openai.OpenAI(base_url=gw.url + "/v1", api_key=TINY, max_retries=0)
stored = big.responses.create(model="gpt-4o-mini", input=WORDS * 2000, max_output_tokens=20)
ok = 0
for _ in range(30):
    try:
        tiny.responses.create(
            model="gpt-4o-mini", input="and then?", max_output_tokens=16, previous_response_id=stored.id
        )
        ok += 1
    except openai.APIStatusError:
        pass
wait(gw)
print(f"chain: {ok}/30 admitted, spent {spent(db) / 1000:.1f}x the budget")
gw.stop()
# 2. completions list
db = tmp / "cmpl.db"
gw = gateway(db)
tiny = openai.OpenAI(base_url=gw.url + "/v1", api_key=TINY, max_retries=0)
ok = 0
for _ in range(5):
    try:
        tiny.completions.create(model="gpt-3.5-turbo-instruct", prompt=["Say something long"] * 100, max_tokens=50)
        ok += 1
    except openai.APIStatusError:
        pass
wait(gw)
print(f"completions list of 100: {ok}/5 admitted, spent {spent(db) / 1000:.1f}x the budget")
gw.stop()
# 3. multipart JSON
db = tmp / "mp.db"
gw = gateway(db)
body = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi " * 500}], "max_tokens": 400}
).encode()


async def mp():
    async with aiohttp.ClientSession() as s:
        n = 0
        for _ in range(100):
            async with s.post(
                gw.url + "/v1/chat/completions",
                data=body,
                headers={"Authorization": f"Bearer {TINY}", "Content-Type": "multipart/form-data; boundary=x"},
            ) as r:
                n += r.status == 200
        return n


ok = asyncio.run(mp())
wait(gw)
print(
    f"multipart JSON: {ok}/100 admitted, spent {spent(db) / 1000:.1f}x the budget, "
    f"live budget spent {budget(gw.url)['spent_usd']}"
)
gw.stop()
# 4. batch 500 lines
db = tmp / "batch.db"
gw = gateway(db)
tiny = openai.OpenAI(base_url=gw.url + "/v1", api_key=TINY, max_retries=0)
lines = b"".join(
    json.dumps(
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": f"Tell me about rivers {i}"}],
            },
        }
    ).encode()
    + b"\n"
    for i in range(500)
)
up = tiny.files.create(file=("in.jsonl", lines), purpose="batch")
try:
    b = tiny.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
    tiny.batches.retrieve(b.id)
    state = "admitted"
except openai.APIStatusError as e:
    state = f"refused {e.status_code}"
wait(gw)
print(f"batch of 500 lines: {state}, spent {spent(db) / 1000:.1f}x the budget")
gw.stop()
# 5. GETs and restart
db = tmp / "once.db"
gw = gateway(db)
tiny = openai.OpenAI(base_url=gw.url + "/v1", api_key=TINY, max_retries=0)
r = tiny.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=16)
c = tiny.chat.completions.create(
    model="gpt-4o-mini", store=True, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
)
up = tiny.files.create(file=("in.jsonl", lines[: lines.index(b"\n") + 1]), purpose="batch")
try:
    b = tiny.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
except openai.APIStatusError:
    b = None
for _ in range(10):
    tiny.responses.retrieve(r.id)
    tiny.chat.completions.retrieve(c.id)
    if b:
        tiny.batches.retrieve(b.id)
wait(gw)
charged = [x for x in rows(db) if x["cost_microusd"]]
live = budget(gw.url)
gw.stop()
gw2 = gateway(db)
rebuilt = budget(gw2.url)
gw2.stop()
print(
    f"10 GETs each of a response, a chat completion, a batch: {len(charged)} charged rows "
    f"({sorted({x['method'] + ' ' + x['endpoint'][:20] for x in charged})}); live spent {live['spent_usd']}, "
    f"rebuilt {rebuilt['spent_usd']} "
    f"({float(rebuilt['spent_usd']) / max(float(live['spent_usd']), 1e-9):.2f}x)"
)

"""Mistakes caught when `oaigate serve` starts: bad upstream URLs, an unset upstream key, a per-caller
budget with no `[[keys]]`, every config error at once, and paths in a config file resolved against its
folder."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config
from proxy.db.schema import SCHEMA_VERSION, connect

from .conftest import hold_ledger
from .processes import MOCK_CONFIG, READY, Serve, write_config

KEY_ENV = "OAIGATE_TEST_SURELY_UNSET_KEY"


def _refused(process: Serve) -> str:
    assert process.proc.wait(60) == 2
    process.stop()
    err = "".join(process.stderr)
    assert "Traceback" not in err and READY not in err, err
    return err


@pytest.mark.parametrize(("upstream", "hint"), [
    ("mok", 'did you mean "mock"'),
    ("MOCK", 'did you mean "mock"'),
    ("api.openai.com/v1", "https://api.openai.com/v1"),
    ("ftp://example.com/v1", "http(s)"),
    ("http:///v1", "host"),
])
def test_a_bad_upstream_flag_is_refused_with_a_hint(serve: Callable[..., Serve], tmp_path: Path, upstream: str,
                                                    hint: str) -> None:
    err = _refused(serve("--port", "0", "--db", str(tmp_path / "x.db"), "--upstream", upstream))
    assert "--upstream" in err and hint in err, err


def test_a_bad_upstream_base_url_in_the_config_is_refused(serve: Callable[..., Serve], tmp_path: Path) -> None:
    config = write_config(tmp_path, '[upstream]\nbase_url = "api.openai.com/v1"\n')
    err = _refused(serve("--port", "0", "--config", str(config)))
    assert "upstream.base_url" in err and "https://api.openai.com/v1" in err, err
    assert not (tmp_path / "oaigate.db").exists()


def test_a_real_upstream_without_its_key_warns_at_start(serve: Callable[..., Serve], tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[upstream]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "{KEY_ENV}"\n')
    process = serve("--port", "0", "--config", str(config))
    process.ready_url()
    assert process.stop() == 0
    err = "".join(process.stderr)
    assert KEY_ENV in err and "not set" in err, err


def test_require_key_makes_an_unset_key_an_error(serve: Callable[..., Serve], tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[upstream]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "{KEY_ENV}"\n'
                               'require_key = true\n')
    err = _refused(serve("--port", "0", "--config", str(config)))
    assert KEY_ENV in err and "require_key" in err, err


def test_an_upstream_url_without_the_api_version_warns(serve: Callable[..., Serve], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    process = serve("--port", "0", "--db", str(tmp_path / "x.db"), "--upstream", "http://127.0.0.1:9")
    process.ready_url()
    assert process.stop() == 0
    err = "".join(process.stderr)
    assert "/v1" in err and "127.0.0.1:9" in err, err


def test_every_config_error_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = 70000\n[upstream]\nmax_retries = "lots"\nbse_url = "mock"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    for key in ("server.port", "upstream.max_retries", "upstream.bse_url"):
        assert key in message, message
    assert caught.value.key == "server.port"  # the first one, for code that reads one


def test_relative_paths_in_a_config_file_resolve_against_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "team"
    folder.mkdir()
    path = folder / "oaigate.toml"
    path.write_text('[ledger]\npath = "spend.db"\n[fixtures]\ndir = "recorded"\n')
    config = load_config(path)
    assert Path(config.ledger.path) == folder / "spend.db"
    assert Path(config.fixtures.dir) == folder / "recorded"
    absolute = tmp_path / "elsewhere.db"
    path.write_text(f'[ledger]\npath = "{absolute}"\n')
    assert Path(load_config(path).ledger.path) == absolute


def test_start_summary_access_log_and_shutdown_line(serve: Callable[..., Serve], tmp_path: Path) -> None:
    import json

    from .conftest import UPSTREAM_KEY_ENV, fetch

    config = write_config(tmp_path, f'[upstream]\nbase_url = "mock"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
                               '[limits]\nbudget_usd = 5\nrpm = 100\n')
    process = serve("--port", "0", "--config", str(config), "--log-level", "info", "--log-format", "json")
    url = process.ready_url()
    reply = fetch("POST", f"{url}/chat/completions", key="sk-secret-client-key-123",
                  json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert reply.status == 200
    assert process.stop() == 0
    err = "".join(process.stderr)
    for part in ("upstreams: mock (embedded)", "fixtures: live", "budgets: 1; rate limits: 1"):
        assert part in err, err
    access = [json.loads(line) for line in process.stderr if line.startswith("{") and '"oaigate.access"' in line]
    assert len(access) == 1, err
    assert access[0]["path"] == "/v1/chat/completions" and access[0]["status"] == 200
    assert access[0]["key"].startswith("anon-") and access[0]["cost_microusd"] > 0
    assert "sk-secret-client-key-123" not in err and '"content"' not in err
    assert "oaigate stopped: drained 0 request(s) in flight, 1 ledger rows written" in err, err


def test_the_access_log_is_off_by_default(serve: Callable[..., Serve], tmp_path: Path) -> None:
    from .conftest import UPSTREAM_KEY_ENV, fetch

    config = write_config(tmp_path, f'[upstream]\nbase_url = "mock"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n')
    process = serve("--port", "0", "--config", str(config))
    url = process.ready_url()
    assert fetch("GET", f"{url}/models").status == 200
    assert process.stop() == 0
    err = "".join(process.stderr)
    assert "GET /v1/models" not in err and "oaigate stopped" in err, err


@pytest.mark.parametrize("section", ['[[budgets]]\nkey = "*"\nbudget_usd = 1\n',
                                     '[[rate_limits]]\nkey = "*"\nrpm = 10\n'])
def test_a_per_caller_limit_without_keys_warns_at_start(serve: Callable[..., Serve], tmp_path: Path,
                                                        section: str) -> None:
    """Without `[[keys]]` a caller is its bearer token: a client that changes it gets a fresh budget."""
    from .conftest import UPSTREAM_KEY_ENV

    config = write_config(tmp_path, f'[upstream]\nbase_url = "mock"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n{section}')
    process = serve("--port", "0", "--config", str(config))
    process.ready_url()
    assert process.stop() == 0
    err = "".join(process.stderr)
    assert 'warning: key = "*"' in err and "[[keys]]" in err and "bearer token" in err, err
    keyed = write_config(tmp_path, f'[upstream]\nbase_url = "mock"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n{section}'
                                   '[[keys]]\nname = "dev"\nkey = "sk-dev-1"\n')
    process = serve("--port", "0", "--config", str(keyed))
    process.ready_url()
    assert process.stop() == 0
    assert 'key = "*"' not in "".join(process.stderr)


def test_the_mocks_paths_in_a_config_file_resolve_against_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "team"
    (folder / "mockfx").mkdir(parents=True)
    (folder / "rules.toml").write_text('[[rules]]\nmatch = { last_user = "hi" }\nanswer.text = "hello"\n')
    path = folder / "oaigate.toml"
    path.write_text('[mock]\nfixtures = "mockfx"\nrules_file = "rules.toml"\nstate_dir = "state"\n')
    mock = load_config(path).mock  # the files exist only beside the config, not in the current folder
    assert (Path(mock.fixtures or ""), Path(mock.rules_file or ""), Path(mock.state_dir or "")) == \
        (folder / "mockfx", folder / "rules.toml", folder / "state")


@pytest.mark.parametrize(("ledger", "says"), [
    ("junk", "is not an oaigate ledger (file is not a database)"),
    ("newer", "is newer than this oaigate"),
    ("held", "cannot open the ledger"),
])
def test_a_ledger_that_cannot_be_opened_stops_the_start_with_its_reason(serve: Callable[..., Serve],
                                                                         tmp_path: Path, ledger: str,
                                                                         says: str) -> None:
    db = tmp_path / "spend.db"
    holder = None
    if ledger == "junk":
        db.write_bytes(b"not a database, whatever its name says " * 40)
    else:
        connect(str(db)).close()
    if ledger == "newer":
        newer = sqlite3.connect(db)
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        newer.close()
    if ledger == "held":
        holder = hold_ledger(db)
    try:
        process = serve("--port", "0", "--config", str(write_config(tmp_path, MOCK_CONFIG)), "--db", str(db))
        assert process.proc.wait(60) == 1
    finally:
        if holder is not None:
            holder.close()
    process.stop()
    err = "".join(process.stderr)
    assert "Traceback" not in err and READY not in err, err
    assert f"oaigate: {db}" in err or f"oaigate: cannot open the ledger {db}" in err, err
    assert says in err, err


def test_workers_refuse_a_ledger_that_cannot_be_opened_in_one_line(serve: Callable[..., Serve],
                                                                   tmp_path: Path) -> None:
    """`--workers` migrates the ledger once, before any worker starts: the same one-line refusal."""
    db = tmp_path / "spend.db"
    db.write_bytes(b"not a database, whatever its name says " * 40)
    process = serve("--port", "0", "--config", str(write_config(tmp_path, MOCK_CONFIG)), "--db", str(db),
                    "--workers", "2")
    assert process.proc.wait(60) == 1
    process.stop()
    err = "".join(process.stderr)
    assert "Traceback" not in err and READY not in err, err
    assert f"oaigate: {db} is not an oaigate ledger (file is not a database)" in err, err


@pytest.mark.parametrize("url", ["POSTGRESQL://alice:s3cret-pw@db.example/ledger", "mysql://alice:s3cret-pw@db/x"])
def test_a_url_that_is_not_postgresql_is_refused_and_never_shown(serve: Callable[..., Serve], tmp_path: Path,
                                                                 url: str) -> None:
    """Not a PostgreSQL URL (libpq knows only the lower-case schemes), and not a file name either: taken
    for one, it was printed back with its password in "no ledger at ..." or "cannot open ..."."""
    err = _refused(serve("--port", "0", "--config", str(write_config(tmp_path, MOCK_CONFIG)), "--db", url))
    assert "postgresql://USER@HOST:PORT/DB" in err and "s3cret-pw" not in err, err
    config = write_config(tmp_path, MOCK_CONFIG + f'[ledger]\npath = "{url}"\n')
    err = _refused(serve("--port", "0", "--config", str(config)))
    assert "ledger.path" in err and "s3cret-pw" not in err, err
    assert not list(tmp_path.glob("*alice*")) and not (tmp_path / "POSTGRESQL:").exists()

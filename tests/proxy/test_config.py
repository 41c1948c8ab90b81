from pathlib import Path

import pytest

from proxy.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_offline() -> None:
    config = load_config(ROOT / "config.toml")
    assert config.upstream.base_url == "mock"
    assert config.server.host == "127.0.0.1" and config.server.port == 4141
    assert config.mock.port == 4142


def test_missing_default_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config() == Config()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[server]\nprot = 1\n", "server.prot", "unknown key"),
        ("[server]\nport = 'x'\n", "server.port", "valid integer"),
        ("[server]\nport = 70000\n", "server.port", "less than or equal to 65535"),
        ("[[keys]]\nname = 'a'\n", "keys[0]", "exactly one of key, key_env, key_sha256"),
        ("[fixtures]\nmode = 'sometimes'\n", "fixtures.mode", "'live'"),
        ("[mock]\nseed = 1.5\n", "mock.seed", "valid integer"),
        ("[prices.m]\noutput_per_mtok = 1\n", "prices.m.input_per_mtok", "required"),
        ("surprise = true\n", "surprise", "unknown key"),
        ("[mock.flagged_words]\nspam = 'spam'\n", "mock.flagged_words.spam", "'violence'"),
    ],
)
def test_mistakes_name_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path)
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")

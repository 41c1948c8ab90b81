import pytest

from proxy.wire.jsoncodec import JSONDecodeError, canonical, digest, dumps, loads


def test_canonical_sorts_keys_and_normalizes_integral_floats() -> None:
    assert canonical({"b": 1.0, "a": [2.5, {"d": 1, "c": None}]}) == b'{"a":[2.5,{"c":null,"d":1}],"b":1}'


def test_digest_is_stable_and_separates_parts() -> None:
    assert digest({"a": 1}, "x") == digest({"a": 1.0}, "x")
    assert digest("ab", "c") != digest("a", "bc")
    assert digest({"a": 1}).hex() == digest({"a": 1}).hex()


@pytest.mark.parametrize("raw", [b"{", b"NaN", b'{"a": Infinity}', b"\xff"])
def test_loads_rejects_what_openai_rejects(raw: bytes) -> None:
    with pytest.raises(JSONDecodeError):
        loads(raw)


def test_dumps_is_compact_and_keeps_order() -> None:
    assert dumps({"z": 1, "a": "é"}) == '{"z":1,"a":"é"}'.encode()

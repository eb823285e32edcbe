"""recarga.core.protocol.wire: decoding, the field checks and the online flag every client shares."""
from __future__ import annotations

import json

import pytest

from recarga.core.protocol import wire as W


def _code(fn, *args) -> tuple[str, str | None]:
    with pytest.raises(W.ProtocolError) as e:
        fn(*args)
    return e.value.code, e.value.field


def test_decode_checks_size_json_object_and_version():
    assert W.decode(b'{"v":1,"x":[1,2]}', 64) == {"v": 1, "x": [1, 2]}
    assert _code(W.decode, b'{"v":1,"x":"' + b"a" * 60 + b'"}', 64) == (W.TOO_LARGE, None)
    assert _code(W.decode, b'{"v":1,', 64) == (W.BAD_JSON, None)
    assert _code(W.decode, b"\xff\xfe", 64) == (W.BAD_JSON, None)
    assert _code(W.decode, b"[1]", 64) == (W.BAD_JSON, None)
    assert _code(W.decode, b'{"x":1}', 64) == (W.MISSING_FIELD, "v")
    for v in (b"2", b"true", b"1.0", b'"1"'):
        assert _code(W.decode, b'{"v":' + v + b"}", 64) == (W.BAD_VERSION, "v")


def test_loads_reads_like_json_loads():
    for payload in (b'{"v":1}', b' {"v": 1} ', b'{"v":1}\n', '{"v":"ü"}'.encode(), '{"v":1}'.encode("utf-16"),
                    b'{"v":1} x', b'{"v":1}{"v":1}', b"", b"nul", b"1e400", b'"\\ud800"'):
        try:
            expected = json.loads(payload)
        except ValueError as e:
            with pytest.raises(type(e)):
                W.loads(payload)
        else:
            assert W.loads(payload) == expected


def test_online_flag():
    assert W.online_message(True) == b'{"v":1,"online":true}'
    assert W.decode(W.online_message(False), 64) == {"v": 1, "online": False}


def test_numbers_and_int_fields():
    spec = {"a": (W.NUMBER, 0.0, 10.0), "n": ((int,), 1, 3)}
    assert W.numbers({"a": 5, "n": 2}, spec) == {"a": 5.0, "n": 2.0}
    assert _code(W.numbers, {"a": float("nan"), "n": 2}, spec) == (W.OUT_OF_RANGE, "a")
    assert _code(W.numbers, {"a": 11, "n": 2}, spec) == (W.OUT_OF_RANGE, "a")
    assert _code(W.numbers, {"a": True, "n": 2}, spec) == (W.BAD_TYPE, "a")
    assert _code(W.numbers, {"a": 1, "n": 2.0}, spec) == (W.BAD_TYPE, "n")
    assert _code(W.numbers, {"a": 1, "n": 4}, spec) == (W.OUT_OF_RANGE, "n")
    with pytest.raises(W.ProtocolError, match="missing field 'n' in 'need'"):
        W.numbers({"a": 1}, spec, " in 'need'")


def test_need_rules_and_ids():
    need = {"soc": 0.2, "target_soc": 0.8, "max_ac_kw": 11.0, "max_dc_kw": 0.0}
    W.check_need(need)
    assert _code(W.check_need, {**need, "max_ac_kw": 0.0}) == (W.OUT_OF_RANGE, "max_ac_kw")
    assert _code(W.check_need, {**need, "target_soc": 0.2}) == (W.OUT_OF_RANGE, "target_soc")
    # a limit is 0 (none) or a real charger's power: 1e-9 kW would charge for millions of minutes
    assert _code(W.check_need, {**need, "max_ac_kw": 1e-9}) == (W.OUT_OF_RANGE, "max_ac_kw")
    assert _code(W.check_need, {**need, "max_dc_kw": 0.5}) == (W.OUT_OF_RANGE, "max_dc_kw")
    W.check_need({**need, "max_ac_kw": 1.0, "max_dc_kw": 50.0})
    assert W.check_id("car", "c-1_A") == "c-1_A"
    with pytest.raises(ValueError, match="bad car id"):
        W.check_id("car", "c/1")

"""codec.payload: Limits validation, every decode rejection path, deterministic encoding."""
import math

import cbor2
import pytest

from codec import DEFAULT_LIMITS, ErrorCode, Limits, PayloadError
from codec.payload import decode, encode

from . import frame_factory as ff


# ---- Limits --------------------------------------------------------------------------------------

def test_default_limits():
    assert DEFAULT_LIMITS == Limits()
    assert (DEFAULT_LIMITS.max_payload, DEFAULT_LIMITS.max_depth, DEFAULT_LIMITS.max_map_size,
            DEFAULT_LIMITS.max_array_len) == (1 << 20, 8, 64, 1024)


@pytest.mark.parametrize("name", ["max_payload", "max_depth", "max_map_size", "max_array_len"])
@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "8", None])
def test_limits_reject_non_positive_ints(name, bad):
    with pytest.raises(ValueError, match=name):
        Limits(**{name: bad})


def test_limits_max_payload_must_fit_u32():
    assert Limits(max_payload=0xFFFFFFFF).max_payload == 0xFFFFFFFF
    with pytest.raises(ValueError, match="u32"):
        Limits(max_payload=0x1_0000_0000)


def test_limits_are_frozen():
    with pytest.raises(Exception):
        DEFAULT_LIMITS.max_payload = 1  # type: ignore[misc]


# ---- decode: accepted ----------------------------------------------------------------------------

def test_decode_round_trip():
    payload = {"a": 1, "b": [1, 2, {"c": "d"}], "e": b"\x00\x01", "f": 1.5, "g": None,
               "h": True, "i": -7}
    assert decode(encode(payload)) == payload


def test_decode_accepts_bytes_bytearray_memoryview():
    raw = encode({"k": "v"})
    for view in (raw, bytearray(raw), memoryview(raw), memoryview(b"xx" + raw + b"yy")[2:-2]):
        assert decode(view) == {"k": "v"}


def test_decode_at_exact_limits():
    limits = Limits(max_depth=3, max_map_size=2)
    assert decode(encode({"a": {"b": [1]}, "c": 0}), limits) == {"a": {"b": [1]}, "c": 0}


# ---- decode: every rejection -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ff.BAD_CBOR))
def test_decode_rejects_bad_cbor(name):
    with pytest.raises(PayloadError) as info:
        decode(ff.BAD_CBOR[name])
    assert info.value.code is ErrorCode.MALFORMED_PAYLOAD
    assert not info.value.retryable


@pytest.mark.parametrize("top", [[], 1, "s", b"b", None, True, 1.5, -1])
def test_decode_rejects_non_map_top_level(top):
    with pytest.raises(PayloadError, match="must be a CBOR map"):
        decode(cbor2.dumps(top))


def test_decode_rejects_trailing_bytes_and_counts_them():
    with pytest.raises(PayloadError, match="3 trailing bytes"):
        decode(encode({"a": 1}) + b"\x00\x00\x00")


def test_decode_rejects_a_second_map():
    with pytest.raises(PayloadError, match="trailing"):
        decode(encode({"a": 1}) + encode({"b": 2}))


@pytest.mark.parametrize("raw", [
    b"\xbf\xff",                       # indefinite map
    b"\xa1\x61a\x9f\xff",              # indefinite array inside
    b"\xa1\x61a\x5f\x41x\xff",         # indefinite byte string
    b"\xa1\x61a\x7f\x61x\xff",         # indefinite text string
], ids=["map", "array", "bytes", "text"])
def test_decode_rejects_indefinite_lengths(raw):
    with pytest.raises(PayloadError, match="indefinite"):
        decode(raw)


@pytest.mark.parametrize("tag", [0, 1, 2, 3, 4, 5, 21, 24, 25, 28, 29, 30, 32, 35, 36, 37, 52, 54,
                                 100, 256, 258, 260, 261, 1004, 55799, 6, 99, 1000, 0xFFFF,
                                 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF])
def test_decode_rejects_every_tag(tag):
    # known tags go through the semantic-decoder table, unknown ones through tag_hook
    raw = b"\xa1\x61a" + cbor2.dumps(cbor2.CBORTag(tag, 0))
    with pytest.raises(PayloadError, match="tags are not allowed"):
        decode(raw)


def test_decode_rejects_top_level_tag():
    with pytest.raises(PayloadError, match="tags"):
        decode(b"\xd9\xd9\xf7" + encode({"a": 1}))   # self-described CBOR


def test_decode_rejects_shared_reference_cycles():
    # tags 28/29 would let a payload build a self-referencing structure
    with pytest.raises(PayloadError):
        decode(b"\xd8\x1c\xa1\x61a\xd8\x1d\x00")


def test_decode_rejects_duplicate_keys():
    with pytest.raises(PayloadError, match="[Dd]uplicate"):
        decode(b"\xa2\x61a\x01\x61a\x02")


def test_decode_rejects_nested_duplicate_keys():
    with pytest.raises(PayloadError, match="[Dd]uplicate"):
        decode(b"\xa1\x61x\xa2\x61a\x01\x61a\x02")


@pytest.mark.parametrize("key", [b"\x80", b"\xa0", b"\x01", b"\xf5", b"\xf6"],
                         ids=["array", "map", "int", "true", "null"])
def test_decode_rejects_non_string_keys(key):
    with pytest.raises(PayloadError):
        decode(b"\xa1" + key + b"\x00")


def test_decode_depth_limit_counts_the_top_map():
    limits = Limits(max_depth=3)
    ok = {"a": [[1]]}                   # map, array, array: depth 3
    assert decode(encode(ok), limits) == ok
    with pytest.raises(PayloadError, match="depth"):
        decode(encode({"a": [[[1]]]}), limits)


def test_decode_default_depth_limit():
    nested = 1
    for _ in range(DEFAULT_LIMITS.max_depth - 1):
        nested = [nested]
    assert decode(encode({"a": nested}))["a"] == nested
    with pytest.raises(PayloadError, match="depth"):
        decode(encode({"a": [nested]}))


@pytest.mark.parametrize("empty", [[], {}], ids=["array", "map"])
def test_decode_default_depth_limit_counts_an_empty_innermost_container(empty):
    # PROTOCOL.md §6.1 rule 8: at most 8 containers, the top-level map the first. An empty
    # container is a container: {"a": [[[[[[[]]]]]]]} is 8 deep, one more [] around it is 9.
    nested = empty
    for _ in range(DEFAULT_LIMITS.max_depth - 2):
        nested = [nested]
    assert decode(encode({"a": nested}))["a"] == nested
    with pytest.raises(PayloadError, match="depth"):
        decode(encode({"a": [nested]}))


def test_decode_deep_nesting_is_a_payload_error_not_recursion_error():
    raw = b"\xa1\x61a" + b"\x81" * 100_000 + b"\x00"
    with pytest.raises(PayloadError):
        decode(raw, Limits(max_payload=1 << 20))


def test_decode_top_level_map_size_limit():
    limits = Limits(max_map_size=3)
    assert len(decode(encode({"a": 1, "b": 2, "c": 3}), limits)) == 3
    with pytest.raises(PayloadError, match="4 entries, limit 3"):
        decode(encode({"a": 1, "b": 2, "c": 3, "d": 4}), limits)


@pytest.mark.parametrize("raw", [
    b"",                                    # nothing
    b"\xa1",                                # map header only
    b"\xa2\x61a\x01",                       # one of two entries
    b"\xa1\x61a\x5a\xff\xff\xff\xff",       # byte string claiming 4 GiB
    b"\xa1\x61a\x7b" + b"\xff" * 8,         # text string claiming 2^64-1 bytes
    b"\xa1\x61a\x9b" + b"\xff" * 8,         # array claiming 2^64-1 items
    b"\xbb" + b"\x7f" + b"\xff" * 7,        # map claiming 2^63-1 entries
    b"\xa1\x61a\x19\x01",                   # truncated uint16
], ids=["empty", "map_header", "short_map", "huge_bytes", "huge_text", "huge_array",
        "huge_map", "short_uint"])
def test_decode_rejects_truncated_input(raw):
    with pytest.raises(PayloadError):
        decode(raw)


@pytest.mark.parametrize("raw", [b"\xa1\x61a\x1c", b"\xa1\x61a\x3d", b"\xa1\x61a\xfe",
                                 b"\xa1\x61a\xf8\x00", b"\xa1\x61a\xff"],
                         ids=["ai28", "neg_ai29", "simple_ai30", "simple_below_32", "break"])
def test_decode_rejects_reserved_encodings(raw):
    with pytest.raises(PayloadError):
        decode(raw)


def test_decode_rejects_invalid_utf8():
    with pytest.raises(PayloadError):
        decode(b"\xa1\x61a\x62\xc3\x28")


def test_decode_only_ever_raises_payload_error_for_short_prefixes():
    raw = encode({"messages": [["user", "hé"]], "n": 2 ** 40, "f": 1.25, "b": b"xyz"})
    for cut in range(len(raw)):
        with pytest.raises(PayloadError):
            decode(raw[:cut])


# ---- encode ----------------------------------------------------------------------------------------

def test_encode_is_deterministic_regardless_of_insertion_order():
    a = {"b": 1, "a": 2, "aa": [1, {"y": 1, "x": 2}], "c": "z"}
    b = {"c": "z", "aa": [1, {"x": 2, "y": 1}], "a": 2, "b": 1}
    assert encode(a) == encode(b)


def test_encode_sorts_keys_shortest_first_then_bytewise():
    raw = encode({"bb": 0, "a": 0, "b": 0, "ab": 0})
    assert raw == bytes.fromhex("a4616100616200626162006262 62 00".replace(" ", ""))


def test_encode_uses_shortest_integer_forms():
    assert encode({"a": 23}) == bytes.fromhex("a1616117")
    assert encode({"a": 24}) == bytes.fromhex("a16161 1818".replace(" ", ""))
    assert encode({"a": 256}) == bytes.fromhex("a16161190100")
    assert encode({"a": 1 << 32}) == bytes.fromhex("a161611b0000000100000000")


def test_encode_uses_shortest_float_forms():
    assert encode({"a": 1.5}) == bytes.fromhex("a16161f93e00")        # half
    assert encode({"a": 0.1}) == bytes.fromhex("a16161fb3fb999999999999a")
    assert encode({"a": math.inf}) == bytes.fromhex("a16161f97c00")


def test_encode_matches_factory_reference():
    for payload in ff.PAYLOADS.values():
        assert encode(payload) == ff.encode_payload(payload)
        assert decode(encode(payload)) == payload

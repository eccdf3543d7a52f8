"""codec.frame: seal/open round trips, every header check with its wire code, and their order."""
import pytest

from codec import (AuthError, CodecError, ErrorCode, Flag, FrameError, FrameType, HEADER_SIZE,
                   Limits, PayloadError, TAG_SIZE, VERSION, check_shape, open_frame, peek_length,
                   seal)
from codec.frame import CONNECTION_TYPES, OVERHEAD, SCHEMAS

from . import frame_factory as ff

ALL_TYPES = list(FrameType)
NOW = ff.NOW


def _open(frame, keyring=None, limits=Limits(), now=NOW, offset=0):
    return open_frame(frame, offset, keyring or ff.keyring(), limits, now)


def _code(frame, **kw):
    with pytest.raises(CodecError) as info:
        _open(frame, **kw)
    return info.value.code


def test_constants_match_the_factory():
    assert (VERSION, HEADER_SIZE, TAG_SIZE, OVERHEAD) == (1, ff.HEADER_SIZE, ff.TAG_SIZE, 72)
    assert set(CONNECTION_TYPES) == set(ff.CONNECTION_TYPES)
    assert set(SCHEMAS) == set(FrameType) == set(ff.PAYLOADS)


# ---- round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ftype", ALL_TYPES, ids=lambda t: t.name)
def test_seal_open_round_trip_every_type(codec_backend, ftype):
    keyring = ff.keyring()
    sid = 0 if ftype in CONNECTION_TYPES else 5
    flags = int(Flag.RESPONDER | Flag.CONGESTION)
    wire = seal(keyring.signer, keyring.current_id, ftype, flags, sid, 42, NOW, ff.NONCE,
                ff.PAYLOADS[ftype])
    # the codec's bytes equal an independent encoding of the same frame
    assert wire == ff.build(ftype, flags=flags, stream_id=sid, sequence=42)
    frame, end = _open(wire, keyring)
    assert end == len(wire) == frame.size
    assert (frame.type, frame.flags, frame.key_id, frame.stream_id, frame.sequence,
            frame.timestamp_ms, frame.nonce) == (ftype, flags, ff.KEY_ID, sid, 42, NOW, ff.NONCE)
    assert frame.payload == ff.PAYLOADS[ftype]
    assert type(frame.type) is FrameType


def test_round_trip_extreme_header_values(codec_backend):
    keyring = ff.keyring()
    wire = seal(keyring.signer, ff.KEY_ID, FrameType.CHUNK, 0, 0xFFFFFFFF, 2**64 - 1, 2**64 - 1,
                b"\xff" * 8, {"i": 2**64 - 1, "text": ""})
    frame, _ = _open(wire, keyring)
    assert (frame.stream_id, frame.sequence, frame.timestamp_ms) == (0xFFFFFFFF, 2**64 - 1, 2**64 - 1)
    assert frame.payload["i"] == 2**64 - 1


def test_open_at_offset_and_back_to_back(codec_backend):
    frames = [ff.build(FrameType.PING, payload={"d": i}, sequence=i) for i in range(3)]
    buf = bytearray(b"junk" + b"".join(frames))
    keyring = ff.keyring()
    offset, seen = 4, []
    while offset < len(buf):
        frame, offset = _open(buf, keyring, offset=offset)
        seen.append(frame.payload["d"])
    assert seen == [0, 1, 2] and offset == len(buf)


def test_open_accepts_memoryview(codec_backend):
    wire = ff.build()
    frame, end = _open(memoryview(wire))
    assert frame.type is FrameType.HELLO and end == len(wire)


def test_unknown_payload_keys_are_ignored(codec_backend):
    frame, _ = _open(ff.build(FrameType.PING, payload={"d": 3, "future": [1, {"x": b""}]}))
    assert frame.payload["d"] == 3 and frame.payload["future"] == [1, {"x": b""}]


# ---- incomplete input -------------------------------------------------------------------------------

def test_incomplete_frames_return_none(codec_backend):
    wire = ff.build()
    keyring = ff.keyring()
    for cut in range(len(wire)):
        assert open_frame(wire[:cut], 0, keyring, Limits(), NOW) is None
        expected = None if cut < HEADER_SIZE else len(wire)
        assert peek_length(wire[:cut], 0) == expected


# ---- each header check and its code ------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 2, 0x81, 0xFF])
def test_bad_version(codec_backend, version):
    frame = ff.build(version=version)
    with pytest.raises(FrameError) as info:
        _open(frame)
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(FrameError) as info:
        peek_length(frame, 0)
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_length_over_limit(codec_backend):
    frame = ff.build(payload={"agent": "x" * 100})
    plen = len(ff.payload_bytes(frame))
    assert _open(frame, limits=Limits(max_payload=plen))[0].payload["agent"] == "x" * 100
    assert _code(frame, limits=Limits(max_payload=plen - 1)) is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(FrameError) as info:
        peek_length(frame, 0, Limits(max_payload=plen - 1))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_header_claiming_4gib_is_rejected_from_the_header_alone(codec_backend):
    header = ff.build(length=0xFFFFFFFF)[:HEADER_SIZE]
    assert _code(header) is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(FrameError):
        peek_length(header, 0)


def test_unknown_key_id(codec_backend):
    assert _code(ff.build(key_id=99)) is ErrorCode.UNKNOWN_KEY
    assert isinstance(pytest.raises(AuthError, _open, ff.build(key_id=99)).value, AuthError)


def test_wrong_key_is_bad_signature(codec_backend):
    assert _code(ff.build(key=ff.OTHER_KEY)) is ErrorCode.BAD_SIGNATURE


FLIP_EXPECT = {0: ErrorCode.FRAME_TOO_LARGE,        # length + 16 MiB: over the 1 MiB limit
               4: ErrorCode.UNSUPPORTED_VERSION, 8: ErrorCode.UNKNOWN_KEY}


@pytest.mark.parametrize("offset", [0, 4, 5, 6, 7, 8, 12, 16, 24, 32, 39, 40, -33, -1])
def test_any_flipped_byte_fails(codec_backend, offset):
    wire = bytearray(ff.build(FrameType.CHUNK))
    wire[offset] ^= 0x01
    assert _code(bytes(wire)) is FLIP_EXPECT.get(offset, ErrorCode.BAD_SIGNATURE)


def test_shorter_length_field_is_bad_signature(codec_backend):
    wire = ff.build(FrameType.CHUNK)
    plen = len(ff.payload_bytes(wire))
    assert _code(ff.set_length(wire, plen - 1)) is ErrorCode.BAD_SIGNATURE
    # longer, but the buffer holds too few bytes: incomplete, not an error
    assert _open(ff.set_length(wire, plen + 1)) is None


def test_reserved_byte(codec_backend):
    frame = ff.build(reserved=1)
    with pytest.raises(FrameError, match="reserved"):
        _open(frame)
    assert _code(frame) is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("flag", [0x02, 0x04, 0x08, 0x10, 0x20, 0x40])
def test_unknown_flag_bits(codec_backend, flag):
    with pytest.raises(FrameError, match="unknown flag"):
        _open(ff.build(flags=flag | 0x81))
    assert _code(ff.build(flags=flag)) is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("ftype", [0x00, 0x0B, 0x10, 0x7F, 0xFF])
def test_unknown_frame_type(codec_backend, ftype):
    assert _code(ff.build(ftype, raw_payload=ff.encode_payload({}), stream_id=0)) \
        is ErrorCode.UNKNOWN_FRAME_TYPE


@pytest.mark.parametrize("ftype", ALL_TYPES, ids=lambda t: t.name)
def test_stream_id_rule(codec_backend, ftype):
    wrong = 3 if ftype in CONNECTION_TYPES else 0
    with pytest.raises(FrameError, match="stream") as info:
        _open(ff.build(ftype, stream_id=wrong))
    assert info.value.code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("name", sorted(ff.BAD_CBOR))
def test_bad_cbor_after_valid_mac(codec_backend, name):
    frame = ff.with_raw_payload(ff.build(), ff.BAD_CBOR[name])
    with pytest.raises(PayloadError):
        _open(frame)
    assert _code(frame) is ErrorCode.MALFORMED_PAYLOAD


def test_payload_limits_apply_inside_frames(codec_backend):
    frame = ff.build(FrameType.PING, payload={"d": 1, "x": [[[[1]]]]})
    assert _code(frame, limits=Limits(max_depth=4)) is ErrorCode.MALFORMED_PAYLOAD
    assert _open(frame, limits=Limits(max_depth=5))[0].payload["d"] == 1


# ---- payload shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ftype", ALL_TYPES, ids=lambda t: t.name)
def test_missing_required_keys(codec_backend, ftype):
    required = [k for k, (_, req) in SCHEMAS[ftype].items() if req]
    for key in required:
        payload = {k: v for k, v in ff.PAYLOADS[ftype].items() if k != key}
        with pytest.raises(PayloadError, match=f"lacks required key '{key}'"):
            _open(ff.build(ftype, payload=payload))
    if not required:
        assert _open(ff.build(ftype, payload={}))[0].payload == {}


# wrong values per kind (bool is not an int; uint is u64; num: finite floats (PROTOCOL.md §6.2) and
# ints within ±2^53)
WRONG = {
    "uint": [-1, True, 1.0, "1", None, [1]],
    "str": [1, b"s", None, ["s"], True],
    "bool": [0, 1, "true", None],
    "num": [float("nan"), float("inf"), float("-inf"), "1", True, None, (1 << 53) + 1, [1.0]],
    "tier": ["slow", "", 1, None, "FAST"],
    "strs": ["a", [1], ["a", 2], [b"a"], {"a": "b"}],
    "messages": [[], [["user"]], [["user", "hi", "x"]], [["user", 1]], "user: hi", [[1, "hi"]], [{"role": "user"}]],
    "smap": [["a"], {"a": 1}, {"a": None}, "a=b"],
    "uint3": [[1, 2], [1, 2, 3, 4], [1, -2, 3], [1, True, 3], [1, 2, "3"], {"a": 1}],
}
RIGHT = {"uint": [0, 2**64 - 1], "str": ["", "é"], "bool": [True, False],
         "num": [0, -1.5, 1 << 53, -(1 << 53), 1e308], "tier": ["fast", "balanced", "high"],
         "strs": [[], ["a", "b"]], "messages": [[["user", "hi"]], [["a", ""], ["b", "c"]]],
         "smap": [{}, {"a": "b"}], "uint3": [[0, 0, 0], [1, 2**64 - 1, 3]]}

SHAPE_CASES = [(ftype, key, kind) for ftype, schema in SCHEMAS.items()
               for key, (kind, _) in schema.items()]


@pytest.mark.parametrize("ftype,key,kind", SHAPE_CASES, ids=[f"{t.name}-{k}" for t, k, _ in SHAPE_CASES])
def test_every_schema_key_checks_its_kind(ftype, key, kind):
    for value in RIGHT[kind]:
        check_shape(ftype, {**ff.PAYLOADS[ftype], key: value})
    for value in WRONG[kind]:
        with pytest.raises(PayloadError, match=repr(key)):
            check_shape(ftype, {**ff.PAYLOADS[ftype], key: value})


def test_sized_kinds_obey_limits():
    limits = Limits(max_array_len=2, max_map_size=2)
    check_shape(FrameType.REQUEST, {"messages": [["a", "b"]] * 2, "caps": ["x", "y"],
                                    "meta": {"a": "1", "b": "2"}}, limits)
    for key, value in (("messages", [["a", "b"]] * 3), ("caps", ["x"] * 3),
                       ("meta", {"a": "1", "b": "2", "c": "3"})):
        with pytest.raises(PayloadError, match=key):
            check_shape(FrameType.REQUEST, {"messages": [["a", "b"]], key: value}, limits)


def test_uint_above_u64_cannot_even_be_decoded(codec_backend):
    # 2**64 needs a bignum tag, and tags are refused before the shape check
    frame = ff.with_raw_payload(ff.build(FrameType.PING), b"\xa1\x61d\xc2\x49\x01" + b"\x00" * 8)
    with pytest.raises(PayloadError, match="tags"):
        _open(frame)


# ---- check order (docs: version, length, completeness, key id, MAC, reserved, flags, type,
#      stream rule, payload CBOR, shape) ----------------------------------------------------------------

def test_order_version_before_length(codec_backend):
    assert _code(ff.build(version=2, length=0xFFFFFFFF)) is ErrorCode.UNSUPPORTED_VERSION


def test_order_length_before_key(codec_backend):
    assert _code(ff.build(length=0xFFFFFFFF, key_id=99)) is ErrorCode.FRAME_TOO_LARGE


def test_order_completeness_before_key_and_mac(codec_backend):
    frame = ff.build(key_id=99, key=ff.OTHER_KEY)
    assert _open(frame[:-1]) is None
    assert _code(frame) is ErrorCode.UNKNOWN_KEY


def test_order_key_before_mac(codec_backend):
    assert _code(ff.build(key_id=99, tag=b"\x00" * 32)) is ErrorCode.UNKNOWN_KEY


def test_order_mac_before_every_content_check(codec_backend):
    hostile = ff.build(0x55, flags=0x7E, reserved=9, stream_id=4,
                       raw_payload=b"\xff\xff", tag=b"\x00" * 32)
    assert _code(hostile) is ErrorCode.BAD_SIGNATURE
    assert _code(ff.resign(hostile)) is ErrorCode.MALFORMED_FRAME   # reserved, now reachable


def test_order_reserved_before_flags(codec_backend):
    with pytest.raises(FrameError, match="reserved"):
        _open(ff.build(reserved=1, flags=0x40))


def test_order_flags_before_type(codec_backend):
    with pytest.raises(FrameError, match="flag") as info:
        _open(ff.build(0x55, flags=0x40, raw_payload=b"\xa0"))
    assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_order_type_before_payload(codec_backend):
    assert _code(ff.build(0x55, raw_payload=b"\xff")) is ErrorCode.UNKNOWN_FRAME_TYPE


def test_order_stream_rule_before_payload(codec_backend):
    with pytest.raises(FrameError, match="stream"):
        _open(ff.build(FrameType.HELLO, stream_id=1, raw_payload=b"\xff"))


def test_order_cbor_before_shape(codec_backend):
    with pytest.raises(PayloadError, match="trailing"):
        _open(ff.build(FrameType.PING, raw_payload=ff.encode_payload({}) + b"\x00"))
    with pytest.raises(PayloadError, match="lacks required key 'd'"):
        _open(ff.build(FrameType.PING, payload={}))


def test_expired_key_is_checked_at_now(codec_backend):
    keyring = ff.keyring()
    keyring.rotate(8, ff.OTHER_KEY, now_ms=NOW, grace_ms=1000)
    frame = ff.build()                       # signed with the old KEY_ID
    assert _open(frame, keyring, now=NOW + 1000)[0].key_id == ff.KEY_ID
    assert _code(frame, keyring=keyring, now=NOW + 1001) is ErrorCode.UNKNOWN_KEY


# ---- seal -----------------------------------------------------------------------------------------

def test_seal_signs_exactly_the_bytes_that_travel(codec_backend):
    keyring = ff.keyring()
    wire = seal(keyring.signer, ff.KEY_ID, FrameType.PING, 0, 0, 1, NOW, ff.NONCE, {"d": 9})
    assert wire[-TAG_SIZE:] == ff.sign(wire[:-TAG_SIZE])
    assert ff.header(wire)["length"] == len(wire) - OVERHEAD


@pytest.mark.parametrize("field,value,exc", [
    ("nonce", b"short", ValueError), ("nonce", "8 chars!", TypeError),
    ("stream_id", -1, ValueError), ("stream_id", 1 << 32, ValueError),
    ("sequence", 1 << 64, ValueError), ("flags", 256, ValueError), ("key_id", "7", TypeError),
])
def test_seal_rejects_bad_arguments(codec_backend, field, value, exc):
    keyring = ff.keyring()
    args = dict(key=keyring.signer, key_id=ff.KEY_ID, ftype=FrameType.PING, flags=0,
                stream_id=0, sequence=0, timestamp_ms=NOW, nonce=ff.NONCE, payload={"d": 1})
    args[field] = value
    with pytest.raises(exc):
        seal(**args)

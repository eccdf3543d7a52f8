"""Property-based fuzzing of the receive path: open_frame, Connection input, allocation bounds.

Example count per property (and per backend): ATP_FUZZ_EXAMPLES, default 300 (the CI profile).
A long run: `ATP_FUZZ_EXAMPLES=10000 nice -n 10 pytest tests/codec/test_fuzz.py` (docs/FUZZING.md).

What must hold for any input:
  (a, b) open_frame returns None, returns a frame, or raises a codec.CodecError subclass;
  (c) a Connection never raises out of receive_data/receive_frame; a failure ends it with one
      ConnectionTerminated carrying an ErrorCode, and its last output is a signed CLOSE with that
      code; targeted mutations get the code PROTOCOL.md §5 assigns to the first failing check;
  (d) decoding under Limits(max_payload=N) allocates at most ALLOC_FACTOR * N + ALLOC_SLACK bytes
      (tracemalloc peak), and a header claiming 4 GiB is refused before anything is buffered.
"""
import os
import struct
import tracemalloc

import cbor2
import pytest
from hypothesis import HealthCheck, event, given, note, settings, target
from hypothesis import strategies as st

from codec import (CodecError, CongestionChanged, Connection, ConnectionConfig,
                   ConnectionTerminated, ErrorCode, Flag, FrameType, Limits, NonceCache,
                   SessionStarted, check_shape, open_frame)
from codec.frame import CONNECTION_TYPES, SCHEMAS
from codec.payload import decode

from . import frame_factory as ff

EXAMPLES = int(os.environ.get("ATP_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
# The parametrized targeted properties (28 cases) each get a fifth: their spaces are small.
FUZZ_SMALL = settings(FUZZ, max_examples=max(25, EXAMPLES // 5))

# Allocation bound for decoding one frame under Limits(max_payload=N): ALLOC_FACTOR * N + ALLOC_SLACK.
# Why 128: a payload of nested empty containers, e.g. [{h'': {h'': {}}}, ...] (5 bytes each),
# becomes ~104 bytes of Python objects per input byte (two dicts, a bytes key, a list slot);
# 128 is that measured worst case rounded up. Why 256 KiB: cbor2 reads long strings through a
# 64 KiB chunk buffer, plus first-use caches; small inputs never get near it otherwise.
ALLOC_FACTOR = 128
ALLOC_SLACK = 256 * 1024

CODES = frozenset(int(c) for c in ErrorCode)
NOW = ff.NOW
ALL_TYPES = list(FrameType)

# ---- strategies ---------------------------------------------------------------------------------

u64 = st.integers(0, 2**64 - 1)
small_text = st.text(max_size=12)
KIND = {
    "uint": u64 | st.integers(0, 300),
    "str": small_text,
    "bool": st.booleans(),
    "num": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**53, 2**53),
    "tier": st.sampled_from(["fast", "balanced", "high"]),
    "strs": st.lists(small_text, max_size=4),
    "messages": st.lists(st.lists(small_text, min_size=2, max_size=2), min_size=1, max_size=3),
    "smap": st.dictionaries(small_text, small_text, max_size=3),
    "uint3": st.lists(u64, min_size=3, max_size=3),
}
cbor_leaf = (st.none() | st.booleans() | st.integers(-2**64 + 1, 2**64 - 1) | st.floats()
             | small_text | st.binary(max_size=8))


def _nested(depth):
    """Arbitrary CBOR-able values at most `depth` containers deep."""
    if depth == 0:
        return cbor_leaf
    inner = _nested(depth - 1)
    return cbor_leaf | st.lists(inner, max_size=3) | st.dictionaries(small_text, inner, max_size=3)


cbor_value = _nested(4)     # under a top-level map: depth <= 5, inside the default limit of 8


@st.composite
def valid_payloads(draw, ftype):
    """A payload that passes check_shape for `ftype`, with some unknown keys mixed in."""
    payload = {}
    for key, (kind, required) in SCHEMAS[ftype].items():
        if required or draw(st.booleans()):
            payload[key] = draw(KIND[kind])
    extra = draw(st.dictionaries(st.text(min_size=13, max_size=16), cbor_value, max_size=2))
    payload.update(extra)
    return payload


@st.composite
def valid_frames(draw, types=ALL_TYPES):
    ftype = draw(st.sampled_from(types))
    sid = 0 if ftype in CONNECTION_TYPES else draw(st.integers(1, 0xFFFFFFFF))
    return ff.build(ftype, payload=draw(valid_payloads(ftype)), stream_id=sid,
                    flags=draw(st.sampled_from([0, 1, 0x80, 0x81])),
                    sequence=draw(st.integers(0, 2**64 - 1)), timestamp_ms=draw(u64),
                    nonce=draw(st.binary(min_size=8, max_size=8)))


@st.composite
def mutations(draw, frame, other):
    """Apply 1-4 random mutations to `frame`; returns (bytes, resigned?)."""
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "truncate", "splice", "length", "byte", "byte",
                                   "insert", "delete", "field", "field", "payload", "payload",
                                   "extend"]))
        event(f"mutation: {op}")
        if op == "flip" and data:
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 0x80 >> (bit % 8)
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "splice":
            data = bytearray(data[:draw(st.integers(0, len(data)))]
                             + other[draw(st.integers(0, len(other))):])
        elif op == "length" and len(data) >= 4:
            plen = max(0, len(data) - 72)
            value = draw(st.sampled_from([0, 1, plen - 1, plen + 1, 0xFFFFFFFF, 1 << 20, (1 << 20) + 1])
                         | st.integers(0, 0xFFFFFFFF))
            struct.pack_into(">I", data, 0, max(0, value))
        elif op == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            at = draw(st.integers(0, len(data) - 1))
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "field" and len(data) >= 40:
            name = draw(st.sampled_from(sorted(ff.FIELDS)))
            offset, fmt = ff.FIELDS[name]
            size = struct.calcsize(fmt)
            data[offset:offset + size] = draw(st.binary(min_size=size, max_size=size))
        elif op == "payload" and len(data) >= 72:
            raw = draw(st.binary(max_size=64) | st.builds(
                lambda v: cbor2.dumps(v), cbor_value))
            data = bytearray(ff.with_raw_payload(bytes(data), raw, resign_it=False))
        elif op == "extend":
            data += draw(st.binary(max_size=16))
    resigned = len(data) >= 72 and draw(st.booleans())
    if resigned:
        data = bytearray(ff.resign(bytes(data)))
    return bytes(data), resigned


def _open_or_codec_error(data, offset=0, limits=Limits(), now=NOW):
    """open_frame's result, or the CodecError it raised; any other exception propagates (= bug)."""
    try:
        return open_frame(data, offset, ff.keyring(), limits, now)
    except CodecError as exc:
        assert exc.code in CODES
        return exc


def _check_opened(result, data, offset=0):
    if isinstance(result, CodecError):
        event(f"open_frame: {result.code.name}")
        return
    if result is None:
        event("open_frame: incomplete")
        return
    frame, end = result
    event(f"open_frame: ok {frame.type.name}")
    assert offset + frame.size == end <= len(data)
    assert type(frame.payload) is dict
    check_shape(frame.type, frame.payload)
    assert (frame.stream_id == 0) == (frame.type in CONNECTION_TYPES)
    assert data[end - 32:end] == ff.sign(bytes(data[offset:end - 32]))


# ---- (a) random bytes ---------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=512) | st.binary(min_size=40, max_size=512),   # half get a header
       offset=st.integers(0, 8))
def test_random_bytes_open_frame(codec_backend, data, offset):
    offset = min(offset, len(data))
    _check_opened(_open_or_codec_error(data, offset), data, offset)


@FUZZ
@given(length=st.none() | st.integers(0, 0xFFFFFFFF) | st.integers(0, 200),
       version=st.sampled_from([1, 1, 1, 0, 2]),
       key_id=st.sampled_from([ff.KEY_ID, ff.KEY_ID, 0, 0xFFFFFFFF]),
       rest=st.binary(min_size=64, max_size=300), resign=st.booleans())
def test_random_bytes_behind_a_plausible_header(codec_backend, length, version, key_id, rest, resign):
    # length None: the field matches the bytes, so a resigned frame reaches the content checks
    body = rest[3:]
    length = len(body) - 60 if length is None else length     # 28 header bytes + tag follow
    data = struct.pack(">IBBBBI", length, version, rest[0] % 12, rest[1] & 0x83, rest[2] % 2,
                       key_id) + body
    if resign:
        data = ff.resign(data)
    _check_opened(_open_or_codec_error(data), data)


# ---- (b) mutated valid frames -----------------------------------------------------------------

@FUZZ
@given(st.data())
def test_mutated_frames_open_frame(codec_backend, data):
    base = data.draw(valid_frames(), label="base")
    other = data.draw(valid_frames(), label="other")
    opened = _open_or_codec_error(base)
    assert isinstance(opened, tuple) and opened[0].size == len(base), opened   # base is valid
    mutated, resigned = data.draw(mutations(base, other), label="mutated")
    result = _open_or_codec_error(mutated)
    _check_opened(result, mutated)
    if not resigned and isinstance(result, tuple):
        # without the key, the only frames that can verify are the ones we signed
        assert mutated[:result[1]] in (base, other)


# ---- (c) a server Connection fed garbage and mutations ---------------------------------------------

def _drain(conn):
    events = []
    while (e := conn.next_event()) is not None:
        events.append(e)
    return events


def _check_connection_outcome(conn, events, out):
    """The invariants of a Connection after hostile input; returns the termination code or None."""
    terminations = [e for e in events if isinstance(e, ConnectionTerminated)]
    frames, offset = [], 0
    while offset < len(out):
        frame, offset = open_frame(out, offset, ff.keyring(), now_ms=NOW)   # must not raise
        assert frame.flags & Flag.RESPONDER
        frames.append(frame)
    if frames:   # consecutive sequence numbers, whatever happened
        first = frames[0].sequence
        assert [f.sequence for f in frames] == list(range(first, first + len(frames)))
    if not conn.closed:
        assert terminations == []
        return None
    assert len(terminations) == 1 and events[-1] is terminations[0]
    term = terminations[0]
    assert conn.close_code == term.code
    if term.by_peer:
        assert not frames or frames[-1].type is not FrameType.CLOSE
        event("closed by peer CLOSE")
        return term.code
    assert term.code in CODES
    event(f"terminated: {ErrorCode(term.code).name}")
    assert frames and frames[-1].type is FrameType.CLOSE
    assert frames[-1].payload["code"] == term.code and frames[-1].stream_id == 0
    assert all(f.type is not FrameType.CLOSE for f in frames[:-1])
    return term.code


def _server(**kw):
    return Connection("server", ff.keyring(), nonce_cache=NonceCache(), now_ms=NOW, **kw)


# The three ways bytes reach a Connection: a byte stream (QUIC), one frame per message
# (receive_frame), several whole frames per message (receive_frames, gRPC batches).
MODES = ["stream", "message", "batch"]


def feed(conn, data, mode):
    {"stream": conn.receive_data, "message": conn.receive_frame,
     "batch": conn.receive_frames}[mode](data, NOW)


@FUZZ
@given(garbage=st.binary(max_size=400), mode=st.sampled_from(MODES))
def test_server_fed_garbage(codec_backend, garbage, mode):
    server = _server()
    feed(server, garbage, mode)
    events = _drain(server)
    out = server.data_to_send()
    code = _check_connection_outcome(server, events, out)
    if mode == "message" or (mode == "batch" and garbage):
        assert code is not None          # a message can never hold a valid HELLO by chance
    elif code is None:
        assert events == [] and out == b""       # still waiting for the rest of a frame


@FUZZ
@given(st.data())
def test_server_fed_mutated_frames(codec_backend, data):
    hello = ff.build(payload=data.draw(valid_payloads(FrameType.HELLO)))
    other = data.draw(valid_frames(), label="other")
    mutated, _ = data.draw(mutations(hello, other), label="mutated")
    mode = data.draw(st.sampled_from(MODES), label="mode")
    server = _server()
    feed(server, mutated, mode)
    events = _drain(server)
    out = server.data_to_send()
    code = _check_connection_outcome(server, events, out)
    if code is None:   # still open: nothing happened yet, or a (resigned) HELLO was accepted
        assert events == [] or [type(e) for e in events if not isinstance(e, CongestionChanged)] \
            == [SessionStarted]
    # feeding more after a close changes nothing
    if server.closed:
        for again in MODES:
            feed(server, hello, again)
        assert _drain(server) == [] and server.data_to_send() == b""


# Targeted mutations of the client's opening HELLO, each with the code PROTOCOL.md §5 assigns.
# Each entry: (name, strategy of mutated bytes, expected code).
_HELLO = ff.build(payload={"agent": "fuzz"})
_PLEN = len(_HELLO) - 72
_COVERED_HEADER = [*ff.region("type"), *ff.region("flags"), *ff.region("reserved"),
                   *ff.region("stream_id"), *ff.region("sequence"), *ff.region("timestamp_ms"),
                   *ff.region("nonce")]


def expected_close_nonce(refused: bytes) -> bytes:
    """The nonce of a server's CLOSE refusing `refused` as the peer's opening frame.

    The codec (since 7e087ff) echoes the nonce of the refused frame's header whenever 40 header
    bytes were readable, so an honest client can verify the CLOSE and learn the code.
    PROTOCOL.md §5 (notes) and §10.2 say the same.
    """
    return ff.header(refused)["nonce"] if len(refused) >= 40 else bytes(8)


def _flip(frame, byte_range):
    return st.tuples(st.sampled_from(list(byte_range)), st.integers(0, 7)).map(
        lambda t: ff.flip_bit(frame, t[0] * 8 + t[1]))


def _resigned_field(name, values):
    return values.map(lambda v: ff.set_field(_HELLO, name, v, resign_it=True))


def _bad_cbor(raw):
    try:
        check_shape(FrameType.HELLO, decode(raw))
    except CodecError:
        return True
    return False


TARGETED = {
    "payload_bit_flip": (_flip(_HELLO, range(40, 40 + _PLEN)), ErrorCode.BAD_SIGNATURE),
    "tag_bit_flip": (_flip(_HELLO, range(len(_HELLO) - 32, len(_HELLO))), ErrorCode.BAD_SIGNATURE),
    "header_bit_flip": (_flip(_HELLO, _COVERED_HEADER), ErrorCode.BAD_SIGNATURE),
    "wrong_secret": (st.binary(min_size=16, max_size=64).filter(lambda k: k != ff.KEY).map(
        lambda k: ff.resign(_HELLO, k)), ErrorCode.BAD_SIGNATURE),
    "version": (st.integers(0, 255).filter(lambda v: v != 1).flatmap(
        lambda v: st.sampled_from([ff.set_field(_HELLO, "version", v),
                                   ff.set_field(_HELLO, "version", v, resign_it=True)])),
        ErrorCode.UNSUPPORTED_VERSION),
    "too_large": (st.integers((1 << 20) + 1, 0xFFFFFFFF).map(lambda n: ff.set_length(_HELLO, n)),
                  ErrorCode.FRAME_TOO_LARGE),
    "shorter_length": (st.integers(0, _PLEN - 1).map(lambda n: ff.set_length(_HELLO, n)),
                       ErrorCode.BAD_SIGNATURE),
    "unknown_key_id": (_resigned_field("key_id", st.integers(0, 0xFFFFFFFF).filter(
        lambda k: k != ff.KEY_ID)), ErrorCode.UNKNOWN_KEY),
    "reserved": (_resigned_field("reserved", st.integers(1, 255)), ErrorCode.MALFORMED_FRAME),
    "unknown_flags": (_resigned_field("flags", st.integers(0, 255).filter(lambda f: f & 0x7E)),
                      ErrorCode.MALFORMED_FRAME),
    "unknown_type": (_resigned_field("type", st.integers(0, 255).filter(lambda t: not 1 <= t <= 10)),
                     ErrorCode.UNKNOWN_FRAME_TYPE),
    "hello_on_a_stream": (_resigned_field("stream_id", st.integers(1, 0xFFFFFFFF)),
                          ErrorCode.MALFORMED_FRAME),
    "broken_cbor": (st.binary(max_size=80).filter(_bad_cbor).map(lambda raw: ff.with_raw_payload(
        _HELLO, raw)), ErrorCode.MALFORMED_PAYLOAD),
    "bad_shape": (st.sampled_from([{"agent": 1}, {"win": [1, 2]}, {"hb_ms": -1}, {"idle_ms": True},
                                   {"max_payload": "x"}, {"win": [1, 2, 3.0]}]).map(
        lambda p: ff.build(payload=p)), ErrorCode.MALFORMED_PAYLOAD),
    "responder_flag": (_resigned_field("flags", st.sampled_from([0x80, 0x81])),
                       ErrorCode.PROTOCOL_VIOLATION),
    "nonzero_sequence": (_resigned_field("sequence", st.integers(1, 2**64 - 1)),
                         ErrorCode.PROTOCOL_VIOLATION),
    "not_a_hello": (st.sampled_from(sorted(CONNECTION_TYPES - {FrameType.HELLO})).flatmap(
        lambda t: valid_payloads(t).map(lambda p: ff.build(t, payload=p))),
        ErrorCode.PROTOCOL_VIOLATION),
    "stale": (st.integers(30_001, 2**40).flatmap(lambda d: st.sampled_from([NOW - d, NOW + d])).map(
        lambda ts: ff.set_field(_HELLO, "timestamp_ms", ts, resign_it=True)),
        ErrorCode.STALE_TIMESTAMP),
    "zero_nonce": (st.just(ff.set_field(_HELLO, "nonce", bytes(8), resign_it=True)),
                   ErrorCode.PROTOCOL_VIOLATION),
}


@pytest.mark.parametrize("name", sorted(TARGETED))
@FUZZ_SMALL
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_targeted_mutation_gets_the_right_code(codec_backend, name, data, mode):
    strategy, expected = TARGETED[name]
    mutated = data.draw(strategy, label=name)
    server = _server()
    feed(server, mutated, mode)
    events = _drain(server)
    out = server.data_to_send()
    code = _check_connection_outcome(server, events, out)
    assert code == expected, events
    close, end = open_frame(out, 0, ff.keyring(), now_ms=NOW)
    assert end == len(out)
    # every transport echoes the refused frame's own nonce (regression: see below)
    assert close.nonce == expected_close_nonce(mutated)
    assert close.sequence == 0


@pytest.mark.parametrize("mode", ["stream", "batch"])
@pytest.mark.parametrize("follow", [b"", ff.build(FrameType.PING, nonce=b"\x09" * 8, sequence=2)],
                         ids=["alone", "followed"])
def test_refusal_nonce_does_not_depend_on_transport_or_following_bytes(codec_backend, follow, mode):
    refused = ff.build(sequence=1)                  # opening HELLO with sequence 1: step 14, 105
    by_message, by_stream = _server(), _server()
    by_message.receive_frame(refused, NOW)
    feed(by_stream, refused + follow, mode)
    assert by_message.close_code == by_stream.close_code == ErrorCode.PROTOCOL_VIOLATION
    nonce_message = open_frame(by_message.data_to_send(), 0, ff.keyring(), now_ms=NOW)[0].nonce
    nonce_stream = open_frame(by_stream.data_to_send(), 0, ff.keyring(), now_ms=NOW)[0].nonce
    assert nonce_stream != b"\x09" * 8                # never a later frame's nonce
    assert nonce_stream == nonce_message             # was 00..00 / 09..09 vs 01..08 (fixed)


@pytest.mark.parametrize("mode", MODES)
@FUZZ_SMALL
@given(cut=st.integers(0, len(_HELLO) - 1), extra=st.binary(min_size=1, max_size=100))
def test_truncated_or_padded_hello(codec_backend, mode, cut, extra):
    server = _server()
    if mode == "batch":
        server.receive_frames(_HELLO[:cut], NOW)       # a cut frame is not buffered
        code = _check_connection_outcome(server, _drain(server), server.data_to_send())
        assert code == (ErrorCode.MALFORMED_FRAME if cut else None)
        padded = _server()
        padded.receive_frames(_HELLO + extra, NOW)     # the HELLO counts, the tail fails
        events = _drain(padded)
        assert isinstance(events[0], SessionStarted)
        assert _check_connection_outcome(padded, events, padded.data_to_send()) is not None
    elif mode == "message":
        server.receive_frame(_HELLO[:cut], NOW)
        assert _check_connection_outcome(server, _drain(server), server.data_to_send()) \
            == ErrorCode.MALFORMED_FRAME
        padded = _server()
        padded.receive_frame(_HELLO + extra, NOW)
        assert _check_connection_outcome(padded, _drain(padded), padded.data_to_send()) \
            == ErrorCode.MALFORMED_FRAME
    else:
        server.receive_data(_HELLO[:cut], NOW)          # a stream transport just waits
        assert not server.closed and _drain(server) == [] and server.data_to_send() == b""
        server.receive_data(_HELLO[cut:], NOW)
        assert isinstance(_drain(server)[0], SessionStarted)


# After a valid opening: mutations of a follow-up frame, and their codes.
_NONCE2 = st.binary(min_size=8, max_size=8).filter(lambda n: n != ff.NONCE)
FOLLOW_UP = {
    "foreign_nonce": (_NONCE2.map(lambda n: ff.build(FrameType.PING, sequence=1, nonce=n)),
                      ErrorCode.REPLAYED_NONCE),
    "replayed_sequence": (st.just(ff.build(FrameType.PING, sequence=0)), ErrorCode.SEQUENCE_REPLAY),
    "reflected": (st.integers(1, 2**32).map(lambda s: ff.build(FrameType.PING, sequence=s,
                                                               flags=Flag.RESPONDER)),
                  ErrorCode.PROTOCOL_VIOLATION),
    "second_hello": (st.integers(1, 2**32).map(lambda s: ff.build(sequence=s)),
                     ErrorCode.PROTOCOL_VIOLATION),
    "unopened_stream": (st.tuples(st.sampled_from([FrameType.CHUNK, FrameType.END, FrameType.ERROR,
                                                   FrameType.CANCEL]), st.integers(1, 2**32 - 1))
                        .map(lambda t: ff.build(t[0], stream_id=t[1], sequence=1)),
                        ErrorCode.INVALID_STREAM),
    "payload_bit_flip": (_flip(ff.build(FrameType.PING, sequence=1), range(40, 43)),
                         ErrorCode.BAD_SIGNATURE),
}


@pytest.mark.parametrize("name", sorted(FOLLOW_UP))
@FUZZ_SMALL
@given(data=st.data())
def test_follow_up_mutation_gets_the_right_code(codec_backend, name, data):
    strategy, expected = FOLLOW_UP[name]
    server = _server()
    server.receive_data(_HELLO, NOW)
    server.receive_data(data.draw(strategy, label=name), NOW)
    events = _drain(server)
    assert isinstance(events[0], SessionStarted)
    assert _check_connection_outcome(server, events, server.data_to_send()) == expected
    assert server.close_code == expected


@st.composite
def client_scripts(draw):
    """A client's byte stream: a valid HELLO, then either an honest session with at most one
    hostile frame (so sessions get deep before anything fails) or a free-for-all."""
    frames = [_HELLO]
    seq, sid = 1, 0
    honest = draw(st.booleans())
    count = draw(st.integers(0, 12)) + (3 if honest else 0)
    # hypothesis favours small integers: count back from the end so spoiling happens late
    spoiled_at = count - 1 - draw(st.integers(0, count)) if honest else None   # -1: none
    event("honest script" if honest else "hostile script")
    for i in range(count):
        if honest:
            ftype = draw(st.sampled_from([FrameType.REQUEST, FrameType.PING, FrameType.CANCEL]))
            if ftype is FrameType.REQUEST or sid == 0:
                ftype, sid = FrameType.REQUEST, sid + 1
            stream = 0 if ftype is FrameType.PING else (sid if ftype is FrameType.REQUEST
                                                        else draw(st.integers(1, sid)))
            payload = draw(valid_payloads(ftype))
            for key in ("max_tokens", "max_cost"):     # mostly within the credit granted
                if key in payload:
                    payload[key] %= 5000
            frame = ff.build(ftype, payload=payload, stream_id=stream, sequence=seq,
                             flags=draw(st.sampled_from([0, 1])))
            if i == spoiled_at:
                frame, _ = draw(mutations(frame, _HELLO))
        else:
            ftype = draw(st.sampled_from(ALL_TYPES))
            if ftype is FrameType.REQUEST:
                sid += draw(st.sampled_from([1, 0, 5]))
            stream = 0 if ftype in CONNECTION_TYPES else max(1, sid + draw(st.sampled_from([0, -1, 1])))
            frame = ff.build(ftype, payload=draw(valid_payloads(ftype)), stream_id=stream,
                             sequence=seq + draw(st.sampled_from([0, -1, 64, 100])),
                             flags=draw(st.sampled_from([0, 1, 0x80])))
            if draw(st.booleans()) and draw(st.booleans()):
                frame, _ = draw(mutations(frame, _HELLO))
        seq += 1
        frames.append(frame)
    return b"".join(frames)


@FUZZ
@given(script=client_scripts(), cuts=st.lists(st.integers(0, 4000), max_size=6),
       max_open=st.sampled_from([1, 2, 1024]), window=st.sampled_from([(1, 10, 0), (64, 1 << 20, 10**8)]))
def test_server_session_fuzz(codec_backend, script, cuts, max_open, window):
    server = _server(config=ConnectionConfig(max_open_streams=max_open, initial_window=window))
    bounds = sorted({min(c, len(script)) for c in cuts} | {0, len(script)})
    for a, b in zip(bounds, bounds[1:]):
        server.receive_data(script[a:b], NOW)
    events = _drain(server)
    code = _check_connection_outcome(server, events, server.data_to_send())
    event("session survived" if code is None else "session ended")
    event(f"requests delivered: {min(3, sum(type(e).__name__ == 'RequestReceived' for e in events))}")
    # a mirror window never goes negative and live streams respect the cap
    assert min(server.window.available) >= 0
    assert len(server.streams) <= max_open


# ---- (d) allocation bounds ------------------------------------------------------------------------

def _peak(fn, *args):
    tracemalloc.start()
    try:
        fn(*args)
    except CodecError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@st.composite
def hostile_payloads(draw, n):
    """Raw payload bytes of at most n bytes, biased to expensive shapes (many small containers)."""
    unit = draw(st.sampled_from([b"\xa0", b"\x80", b"\xa1\x40\xa1\x40\xa0", b"\xa1\x40\xa0",
                                 b"\x81\xa0", b"\x41x", b"\x62ab", b"\xf9\x00\x00"])
                | st.binary(min_size=1, max_size=6))
    count = max(0, (n - 9) // len(unit))
    count = draw(st.integers(0, count))
    kind = draw(st.sampled_from(["array", "map_of_array", "random", "huge_claim"]))
    if kind == "array":
        raw = b"\x9a" + struct.pack(">I", count) + unit * count
    elif kind == "map_of_array":
        raw = b"\xa1\x61a\x9a" + struct.pack(">I", count) + unit * count
    elif kind == "huge_claim":
        raw = b"\xa1\x61a" + draw(st.sampled_from([b"\x5b", b"\x7b", b"\x9b", b"\xbb"])) \
            + draw(st.binary(min_size=8, max_size=8))
    else:
        raw = draw(st.binary(max_size=n))
    return raw[:n]


@FUZZ
@given(st.data())
def test_decoding_allocation_is_bounded_by_max_payload(codec_backend, data):
    n = data.draw(st.integers(16, 8192), label="max_payload")
    raw = data.draw(hostile_payloads(n), label="payload")
    frame = ff.with_raw_payload(_HELLO, raw)               # resigned: reaches the decoder
    limits = Limits(max_payload=n)
    peak = _peak(open_frame, frame, 0, ff.keyring(), limits, NOW)
    bound = ALLOC_FACTOR * n + ALLOC_SLACK
    target(peak / bound, label="fraction of the allocation bound used")
    note(f"peak={peak} n={n} len={len(raw)} bound={bound}")
    assert peak <= bound


@FUZZ
@given(length=st.integers((1 << 16) + 1, 0xFFFFFFFF), max_payload=st.integers(1, 1 << 16),
       mode=st.sampled_from(MODES))
def test_oversized_claim_is_refused_before_buffering(codec_backend, length, max_payload, mode):
    header = ff.build(length=length)[:40]
    server = _server(limits=Limits(max_payload=max_payload))
    peak = _peak(feed, server, header, mode)
    assert server.closed and server.close_code == ErrorCode.FRAME_TOO_LARGE
    assert peak < 64 * 1024                          # nothing close to `length` was reserved
    assert len(server._buffer) <= 40


def test_4gib_claim_is_refused_from_the_header_alone(codec_backend):
    server = _server(limits=Limits(max_payload=1 << 20))
    header = ff.build(length=0xFFFFFFFF)[:40]
    peak = _peak(server.receive_data, header, NOW)
    assert server.close_code == ErrorCode.FRAME_TOO_LARGE and peak < 64 * 1024
    close, _ = open_frame(server.data_to_send(), 0, ff.keyring(), now_ms=NOW)
    assert close.payload["code"] == ErrorCode.FRAME_TOO_LARGE


def test_known_worst_case_payload_stays_under_the_bound(codec_backend):
    n = 1 << 16
    unit = b"\xa1\x40\xa1\x40\xa0"                   # {h'': {h'': {}}}
    count = (n - 8) // len(unit)
    raw = b"\xa1\x61a\x9a" + struct.pack(">I", count) + unit * count
    frame = ff.with_raw_payload(_HELLO, raw)
    peak = _peak(open_frame, frame, 0, ff.keyring(), Limits(max_payload=n), NOW)
    assert 64 * n < peak <= ALLOC_FACTOR * n + ALLOC_SLACK   # the factor is real, and bounded

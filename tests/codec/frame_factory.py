"""Builds valid ATP frames and hostile variants of them, independently of codec.frame.

The encoder here is a second implementation (stdlib struct + hmac + cbor2 canonical), so a test
that compares it with codec.seal cross-checks the codec instead of trusting it. Every builder
returns plain bytes; mutators take bytes and return new bytes, and `resign` recomputes the tag so a
mutation can reach the checks that run after the MAC.
"""
import hashlib
import hmac
import struct

import cbor2

from codec import FrameType

KEY = bytes(range(32))
KEY_ID = 7
OTHER_KEY = b"\xa5" * 32
OTHER_KEY_ID = 9
NONCE = bytes.fromhex("0102030405060708")
NOW = 1_700_000_000_000            # a plausible wall-clock ms; tests pass it as `now_ms`

HEADER = struct.Struct(">IBBBBIIQQ8s")
HEADER_SIZE = HEADER.size           # 40
TAG_SIZE = 32

# field name -> (offset, struct format) inside the 40-byte header
FIELDS = {
    "length": (0, ">I"), "version": (4, ">B"), "type": (5, ">B"), "flags": (6, ">B"),
    "reserved": (7, ">B"), "key_id": (8, ">I"), "stream_id": (12, ">I"),
    "sequence": (16, ">Q"), "timestamp_ms": (24, ">Q"), "nonce": (32, ">8s"),
}

CONNECTION_TYPES = frozenset({FrameType.HELLO, FrameType.WINDOW_UPDATE, FrameType.PING,
                              FrameType.PONG, FrameType.CLOSE})

# A minimal valid payload for every frame type.
PAYLOADS = {
    FrameType.HELLO: {"agent": "factory"},
    FrameType.REQUEST: {"messages": [["user", "hello"]], "max_tokens": 16},
    FrameType.CHUNK: {"i": 0, "text": "hi"},
    FrameType.END: {"in": 3, "out": 2, "cost": 1},
    FrameType.ERROR: {"code": 500, "msg": "boom"},
    FrameType.WINDOW_UPDATE: {"req": 1, "tok": 16},
    FrameType.PING: {"d": 1},
    FrameType.PONG: {"d": 1},
    FrameType.CLOSE: {"code": 0, "msg": ""},
    FrameType.CANCEL: {"code": 505},
}


def keyring(**extra):
    """A codec Keyring holding KEY under KEY_ID (build it after the backend fixture switched)."""
    from codec import Keyring
    keys = {KEY_ID: KEY}
    keys.update(extra)
    return Keyring(keys, current_id=KEY_ID)


def encode_payload(payload) -> bytes:
    return cbor2.dumps(payload, canonical=True)


def sign(body: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def build(ftype=FrameType.HELLO, *, payload=None, raw_payload: bytes | None = None,
          version: int = 1, flags: int = 0, reserved: int = 0, key_id: int = KEY_ID,
          stream_id: int | None = None, sequence: int = 0, timestamp_ms: int = NOW,
          nonce: bytes = NONCE, length: int | None = None, key: bytes = KEY,
          tag: bytes | None = None) -> bytes:
    """One frame; every header field is overridable, even to values the codec must refuse.

    `stream_id` defaults to 0 for connection frames and 1 for stream frames. `length` overrides
    the length field without changing the body; `tag` replaces the computed HMAC.
    """
    ftype = int(ftype)
    if raw_payload is None:
        raw_payload = encode_payload(PAYLOADS.get(ftype, {}) if payload is None else payload)
    if stream_id is None:
        stream_id = 0 if ftype in {int(t) for t in CONNECTION_TYPES} else 1
    body = HEADER.pack(len(raw_payload) if length is None else length, version, ftype, flags,
                       reserved, key_id, stream_id, sequence, timestamp_ms, nonce) + raw_payload
    return body + (sign(body, key) if tag is None else tag)


def header(frame: bytes) -> dict:
    """The header fields of `frame` by name (no validation)."""
    values = HEADER.unpack_from(frame, 0)
    return dict(zip(FIELDS, values))


def payload_bytes(frame: bytes) -> bytes:
    return frame[HEADER_SIZE:-TAG_SIZE]


# ---- hostile variants --------------------------------------------------------------------------

def resign(frame: bytes, key: bytes = KEY) -> bytes:
    """Recompute the tag over everything before it: the MAC is valid whatever the content."""
    body = frame[:-TAG_SIZE]
    return body + sign(body, key)


def set_field(frame: bytes, name: str, value, *, resign_it: bool = False, key: bytes = KEY) -> bytes:
    """Overwrite one header field in place (the rest of the bytes are untouched)."""
    offset, fmt = FIELDS[name]
    out = bytearray(frame)
    struct.pack_into(fmt, out, offset, value)
    return resign(bytes(out), key) if resign_it else bytes(out)


def set_length(frame: bytes, length: int) -> bytes:
    """Lie in the length field; the body and tag stay as they were."""
    return set_field(frame, "length", length)


def with_raw_payload(frame: bytes, raw: bytes, *, resign_it: bool = True, key: bytes = KEY) -> bytes:
    """Replace the payload bytes (length field fixed up); resigned by default."""
    out = bytearray(frame[:HEADER_SIZE] + raw + frame[-TAG_SIZE:])
    struct.pack_into(">I", out, 0, len(raw))
    return resign(bytes(out), key) if resign_it else bytes(out)


def flip_bit(frame: bytes, bit: int) -> bytes:
    """Flip bit `bit` (0 = MSB of byte 0) of the frame."""
    out = bytearray(frame)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def truncate(frame: bytes, n: int) -> bytes:
    """The first `n` bytes."""
    return frame[:n]


def splice(a: bytes, b: bytes, at_a: int, at_b: int) -> bytes:
    """a[:at_a] + b[at_b:]: a header from one frame glued to the tail of another."""
    return a[:at_a] + b[at_b:]


def region(name: str) -> range:
    """Byte offsets of a header field."""
    offset, fmt = FIELDS[name]
    return range(offset, offset + struct.calcsize(fmt))


# Broken CBOR bodies (each is a complete frame payload) and what they break.
BAD_CBOR = {
    "empty": b"",
    "not_a_map": cbor2.dumps([1, 2]),
    "int_top": b"\x01",
    "truncated_map": b"\xa1\x61",
    "trailing": cbor2.dumps({"agent": "x"}) + b"\x00",
    "indefinite_map": b"\xbf\x61a\x01\xff",
    "duplicate_keys": b"\xa2\x61a\x01\x61a\x02",
    "tag": b"\xa1\x61a\xc1\x01",
    "bad_utf8": b"\xa1\x61a\x61\xff",
    "lone_break": b"\xff",
    "reserved_ai": b"\xbc",
    "too_deep": b"\xa1\x61a" + b"\x81" * 20 + b"\x00",
}

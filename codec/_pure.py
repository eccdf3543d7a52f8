"""Pure-Python reference for the codec's two hot primitives: fixed-header peek and keyed HMAC-SHA256.

codec._native (native/atp_native.c) is its C twin and must give identical results on the same
inputs; tests/codec/test_backend.py holds both to that. Nothing else in codec/ may know which
twin is in use: it goes through codec.backend.
"""
import hashlib
import hmac
import struct
from operator import index as _index

# payload_length, version, type, flags, reserved, key_id, stream_id, sequence, timestamp_ms, nonce
HEADER = struct.Struct(">IBBBBIIQQ8s")
HEADER_SIZE = HEADER.size  # 40
TAG_SIZE = 32
NAME = "pure"


def peek_frame(buf, offset=0):
    """Unpack the 40-byte header at buf[offset:], or None if fewer than 40 bytes are there.

    No validation: the caller checks version, type, flags and lengths (one place, codec.frame).
    ValueError if offset < 0 or offset > len(buf) (struct would read a negative offset from the end).
    """
    offset = _index(offset)
    n = len(buf)
    if offset < 0 or offset > n:
        raise ValueError("peek_frame offset out of range")
    if n - offset < HEADER_SIZE:
        return None
    return HEADER.unpack_from(buf, offset)


class HmacKey:
    """An HMAC-SHA256 key with its pads pre-absorbed, so each frame costs one copy, not a re-key."""

    __slots__ = ("_base",)

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
            raise ValueError("HMAC key must be non-empty bytes")
        self._base = hmac.new(bytes(key), digestmod=hashlib.sha256)

    def sign(self, data):
        """HMAC-SHA256 of a bytes-like object."""
        h = self._base.copy()
        h.update(data)
        return h.digest()

    def verify(self, buf, start, end):
        """True when buf[end-32:end] is the tag of buf[start:end-32] (constant-time compare)."""
        start = _index(start)
        end = _index(end)
        if start < 0 or end > len(buf) or end - start < TAG_SIZE:
            return False
        mv = memoryview(buf)
        h = self._base.copy()
        h.update(mv[start:end - TAG_SIZE])
        return hmac.compare_digest(h.digest(), mv[end - TAG_SIZE:end])

    def seal(self, ftype, flags, key_id, stream_id, sequence, timestamp_ms, nonce, payload):
        """Header + payload + tag, signed over exactly the bytes that will travel.

        TypeError for a non-integer field, non-bytes nonce or non-bytes-like payload; ValueError
        for a field outside its u8/u32/u64 range or a nonce that is not exactly 8 bytes.
        """
        try:
            if len(nonce) != 8:  # struct's "8s" would silently pad or truncate
                raise ValueError
            body = HEADER.pack(len(payload), 1, ftype, flags, 0, key_id, stream_id, sequence,
                               timestamp_ms, nonce) + payload
        except (struct.error, TypeError, ValueError):
            # slow path only: re-check in a fixed order so both twins raise the same type
            _check_seal_args(ftype, flags, key_id, stream_id, sequence, timestamp_ms, nonce, payload)
            raise
        h = self._base.copy()
        h.update(body)
        return body + h.digest()


_SEAL_FIELDS = (("ftype", 0xFF), ("flags", 0xFF), ("key_id", 0xFFFFFFFF),
                ("stream_id", 0xFFFFFFFF), ("sequence", 0xFFFFFFFFFFFFFFFF),
                ("timestamp_ms", 0xFFFFFFFFFFFFFFFF))


def _check_seal_args(ftype, flags, key_id, stream_id, sequence, timestamp_ms, nonce, payload):
    """Raise the canonical error for bad seal() arguments (the C twin checks in this same order)."""
    for (name, top), value in zip(_SEAL_FIELDS, (ftype, flags, key_id, stream_id, sequence,
                                                 timestamp_ms)):
        try:
            v = _index(value)
        except TypeError:
            raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
        if not 0 <= v <= top:
            raise ValueError(f"{name} out of range: {v} not in [0, {top}]")
    if not isinstance(nonce, (bytes, bytearray)):
        raise TypeError(f"nonce must be bytes, not {type(nonce).__name__}")
    if len(nonce) != 8:
        raise ValueError(f"nonce must be exactly 8 bytes, got {len(nonce)}")
    if len(payload) > 0xFFFFFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit the u32 length field")

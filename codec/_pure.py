"""Pure-Python reference for the codec's two hot primitives: fixed-header peek and keyed HMAC-SHA256.

codec._native (native/atp_native.c) is its C twin and must give identical results on the same
inputs; tests/codec/test_backend.py holds both to that. Nothing else in codec/ may know which
twin is in use: it goes through codec.backend.
"""
import hashlib
import hmac
import struct

# payload_length, version, type, flags, reserved, key_id, stream_id, sequence, timestamp_ms, nonce
HEADER = struct.Struct(">IBBBBIIQQ8s")
HEADER_SIZE = HEADER.size  # 40
TAG_SIZE = 32
NAME = "pure"


def peek_frame(buf, offset=0):
    """Unpack the 40-byte header at buf[offset:], or None if fewer than 40 bytes are there.

    No validation: the caller checks version, type, flags and lengths (one place, codec.frame).
    """
    if len(buf) - offset < HEADER_SIZE:
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
        if start < 0 or end > len(buf) or end - start < TAG_SIZE:
            return False
        mv = memoryview(buf)
        h = self._base.copy()
        h.update(mv[start:end - TAG_SIZE])
        return hmac.compare_digest(h.digest(), mv[end - TAG_SIZE:end])

    def seal(self, ftype, flags, key_id, stream_id, sequence, timestamp_ms, nonce, payload):
        """Header + payload + tag, signed over exactly the bytes that will travel."""
        body = HEADER.pack(len(payload), 1, ftype, flags, 0, key_id, stream_id, sequence,
                           timestamp_ms, nonce) + payload
        h = self._base.copy()
        h.update(body)
        return body + h.digest()

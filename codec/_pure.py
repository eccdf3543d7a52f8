"""Pure-Python reference for the codec's hot primitives: fixed-header peek, keyed HMAC-SHA256 and
strict CBOR decoding of one data item.

codec._native (native/atp_native.c) is its C twin and must give identical results on the same
inputs; tests/codec/test_native_twin.py and test_native_cbor.py hold both to that. Nothing else in
codec/ may know which twin is in use: it goes through codec.backend.
"""
import hashlib
import hmac
import io as _io
import struct
from operator import index as _index

import cbor2 as _cbor2

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


# ---- strict CBOR ---------------------------------------------------------------------------------
# cbor2 resolves these semantic tags into rich objects (datetime, Fraction, re.Pattern, shared
# references that can build cycles...) before tag_hook is consulted, so they are overridden here;
# every other tag reaches tag_hook. ATP payloads are plain data: every tag is rejected.
_KNOWN_TAGS = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 52, 54,
               100, 256, 258, 260, 261, 1004, 55799)
_TAG_MESSAGE = "CBOR tags are not allowed in ATP payloads"


class _TagRejected(ValueError):
    pass


def _reject_tag(*_):
    raise _TagRejected(_TAG_MESSAGE)


_NO_TAGS = {tag: _reject_tag for tag in _KNOWN_TAGS}


def decode_cbor(buf, start, end, max_depth):
    """Decode exactly one strict CBOR data item from the bytes buf[start:end] and return it.

    The item must use all of those bytes. ValueError for malformed or disallowed CBOR: tags,
    indefinite lengths, the break byte, reserved additional info, duplicate keys or keys that are
    not text/byte strings, invalid UTF-8, truncation, trailing bytes, or more than max_depth
    containers nested (the top-level item, if a container, is the first; an empty container
    counts like any other, so max_depth=0 allows only a scalar). Also ValueError
    for max_depth < 0 and unless 0 <= start <= end <= the buffer's size in bytes.
    """
    start = _index(start)
    end = _index(end)
    max_depth = _index(max_depth)
    if max_depth < 0:
        raise ValueError("max_depth must be >= 0")
    if type(buf) is not bytes:  # ranges count bytes, whatever the buffer's item format
        buf = memoryview(buf)
        if buf.ndim != 1 or buf.format != "B":
            buf = buf.cast("B")
    if start < 0 or end < start or end > len(buf):
        raise ValueError("decode_cbor range out of bounds")
    n = end - start
    stream = _io.BytesIO(buf[start:end])
    try:
        obj = _cbor2.CBORDecoder(
            # no item can be nested deeper than n; clamping keeps cbor2's u64 argument in range
            stream, max_depth=min(max_depth, n), allow_indefinite=False,
            allow_duplicate_keys=False, strict_hashable_types=True,
            semantic_decoders=_NO_TAGS, tag_hook=_reject_tag,
        ).decode()
    except _TagRejected:
        raise ValueError(_TAG_MESSAGE) from None
    except _cbor2.CBORDecodeError as exc:
        if isinstance(exc.__cause__ or exc.__context__, _TagRejected):
            raise ValueError(_TAG_MESSAGE) from None
        raise ValueError(f"malformed CBOR: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError, EOFError) as exc:
        raise ValueError(f"malformed CBOR: {type(exc).__name__}: {exc}") from None
    tail = n - stream.tell()
    if tail:
        raise ValueError(f"{tail} trailing bytes after the CBOR item")
    if _container_at(obj, min(max_depth, n)):   # n bytes hold at most n nested containers
        raise ValueError(f"malformed CBOR: maximum container nesting depth ({max_depth}) exceeded")
    return obj


def _container_at(obj, depth):
    """True if a container sits `depth` levels below obj (obj itself at 0).

    cbor2's max_depth bounds the depth of *items*, so a non-empty container at depth max_depth
    is already refused (its items would be one deeper) but an empty one is not: it has no items
    to trip the check. This walk finds it. It visits only containers shallower than `depth`,
    a level at a time, and stops at the first level without containers (for a REQUEST: the
    top map, `messages`, its pairs).
    """
    if type(obj) is not list and type(obj) is not dict:
        return False
    level = [obj]
    for _ in range(depth):
        below = []
        for c in level:
            for x in (c.values() if type(c) is dict else c):
                if type(x) is list or type(x) is dict:
                    below.append(x)
        if not below:
            return False
        level = below
    return True    # `level` holds only containers, and they sit at `depth`

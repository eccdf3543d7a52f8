"""Frame types, the frame record, payload shapes per type, and sealing/opening of single frames.

Opening checks, in order (docs/PROTOCOL.md §5): version, length limit, completeness, key id,
HMAC over the exact received bytes, reserved/flags/type, stream-0 rule, then payload CBOR and shape. Replay
checks are stateful and live in codec.replay; this module is stateless.
"""
from enum import IntEnum, IntFlag
from typing import NamedTuple

from . import backend
from .errors import AuthError, ErrorCode, FrameError, PayloadError
from .payload import DEFAULT_LIMITS, Limits, decode, decode_span, encode, encode_ordered

VERSION = 1
HEADER_SIZE = 40
TAG_SIZE = 32
OVERHEAD = HEADER_SIZE + TAG_SIZE
NONCE_SIZE = 8


class FrameType(IntEnum):
    HELLO = 0x01          # session opening (client) / acceptance (server), stream 0
    REQUEST = 0x02        # opens a stream: a completion request (the OPEN of the design)
    CHUNK = 0x03          # partial output on a stream
    END = 0x04            # successful end of a stream: usage and cost
    ERROR = 0x05          # stream error (stream > 0); the stream is closed
    WINDOW_UPDATE = 0x06  # credit increments, stream 0
    PING = 0x07           # heartbeat, stream 0
    PONG = 0x08           # heartbeat answer, stream 0
    CLOSE = 0x09          # connection close with a code, stream 0
    CANCEL = 0x0A         # client abandons a stream


class Flag(IntFlag):
    CONGESTION = 0x01     # ECN-style: the sender's queues are past their high watermark
    RESPONDER = 0x80      # sent by the session responder (server); blocks reflection attacks


# Plain ints for the per-frame path: IntFlag arithmetic allocates a new enum member every time.
CONGESTION = int(Flag.CONGESTION)
RESPONDER = int(Flag.RESPONDER)
KNOWN_FLAGS = CONGESTION | RESPONDER
CONNECTION_TYPES = frozenset({FrameType.HELLO, FrameType.WINDOW_UPDATE, FrameType.PING,
                              FrameType.PONG, FrameType.CLOSE})
# code -> (FrameType, is_connection_frame); a lookup instead of FrameType(code) per frame
_TYPE_INFO = {int(t): (t, t in CONNECTION_TYPES) for t in FrameType}


class Frame(NamedTuple):
    """One opened frame (immutable; a NamedTuple because it is built for every frame received)."""

    type: FrameType
    flags: int
    key_id: int
    stream_id: int
    sequence: int
    timestamp_ms: int
    nonce: bytes
    payload: dict
    size: int = 0         # bytes on the wire (header + payload + tag)


# ---- payload shapes --------------------------------------------------------------------------
# kind checkers; bool is an int in Python, so integers exclude it explicitly.

# Every checker takes (value, limits) so the shape loop makes one call per key.

def _uint(v, limits):
    return type(v) is int and 0 <= v <= 0xFFFFFFFFFFFFFFFF


def _str(v, limits):
    return type(v) is str


def _bool(v, limits):
    return type(v) is bool


def _num(v, limits):
    # finite floats only: inf - inf and nan - nan are nan, never 0.0
    return (type(v) is float and v - v == 0.0) or (type(v) is int and -(1 << 53) <= v <= 1 << 53)


# Plain loops, not all(<generator>): a generator frame per call costs more than the checks.

def _strs(v, limits):
    if type(v) is not list or len(v) > limits.max_array_len:
        return False
    for s in v:
        if type(s) is not str:
            return False
    return True


def _messages(v, limits):
    if type(v) is not list or not 0 < len(v) <= limits.max_array_len:
        return False
    for m in v:
        if type(m) is not list or len(m) != 2 or type(m[0]) is not str or type(m[1]) is not str:
            return False
    return True


def _smap(v, limits):
    if type(v) is not dict or len(v) > limits.max_map_size:
        return False
    for k, x in v.items():
        if type(k) is not str or type(x) is not str:
            return False
    return True


def _uint3(v, limits):
    return type(v) is list and len(v) == 3 and all(_uint(x, limits) for x in v)


def _tier(v, limits):
    return v in ("fast", "balanced", "high")


KINDS = {"uint": _uint, "str": _str, "bool": _bool, "num": _num, "tier": _tier, "strs": _strs,
         "messages": _messages, "smap": _smap, "uint3": _uint3}

# type -> {key: (kind, required)}; unknown keys are ignored (forward compatibility).
SCHEMAS = {
    FrameType.HELLO: {"agent": ("str", False), "win": ("uint3", False), "hb_ms": ("uint", False),
                      "idle_ms": ("uint", False), "max_payload": ("uint", False)},
    FrameType.REQUEST: {"messages": ("messages", True), "model": ("str", False),
                        "tier": ("tier", False), "max_tokens": ("uint", False),
                        "max_cost": ("uint", False), "slo_ms": ("uint", False),
                        "tenant": ("str", False), "caps": ("strs", False),
                        "temperature": ("num", False), "stream": ("bool", False),
                        "meta": ("smap", False), "rid": ("str", False)},
    FrameType.CHUNK: {"i": ("uint", True), "text": ("str", True), "tok": ("uint", False)},
    FrameType.END: {"in": ("uint", True), "out": ("uint", True), "cost": ("uint", True),
                    "model": ("str", False), "provider": ("str", False),
                    "finish": ("str", False), "overhead_us": ("uint", False),
                    "rid": ("str", False)},
    FrameType.ERROR: {"code": ("uint", True), "msg": ("str", False), "retry": ("bool", False),
                      "after_ms": ("uint", False)},
    FrameType.WINDOW_UPDATE: {"req": ("uint", False), "tok": ("uint", False),
                              "usd": ("uint", False)},
    FrameType.PING: {"d": ("uint", True)},
    FrameType.PONG: {"d": ("uint", True)},
    FrameType.CLOSE: {"code": ("uint", True), "msg": ("str", False)},
    FrameType.CANCEL: {"code": ("uint", False)},
}


# type -> ({key: (checker, kind name)}, required keys), compiled once from SCHEMAS
_COMPILED = {t: ({k: (KINDS[kind], kind) for k, (kind, _) in spec.items()},
                 frozenset(k for k, (_, req) in spec.items() if req))
             for t, spec in SCHEMAS.items()}


def check_shape(ftype: FrameType, payload: dict, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise PayloadError unless every known key of `payload` has its type and required keys exist."""
    checkers, required = _COMPILED[ftype]
    if not required <= payload.keys():
        missing = sorted(required - payload.keys())
        raise PayloadError(f"{ftype.name} payload lacks required key {missing[0]!r}")
    get = checkers.get
    for key, value in payload.items():
        spec = get(key)
        if spec is not None and not spec[0](value, limits):
            raise PayloadError(f"{ftype.name} payload key {key!r} must be {spec[1]}, "
                               f"got {type(value).__name__}")


# ---- sealing and opening ------------------------------------------------------------------------

def seal(key, key_id, ftype, flags, stream_id, sequence, timestamp_ms, nonce, payload,
         ordered: bool = False) -> bytes:
    """Encode `payload` (dict) deterministically and return the signed frame bytes.

    ordered=True: the caller built the payload in deterministic key order without floats
    (see payload.encode_ordered), so the cheaper encoder gives the same bytes.
    """
    return key.seal(int(ftype), flags, key_id, stream_id, sequence, timestamp_ms, nonce,
                    encode_ordered(payload) if ordered else encode(payload))


def peek_length(buf, offset: int, limits: Limits = DEFAULT_LIMITS):
    """Total frame length starting at buf[offset], or None if the header is incomplete.

    Validates what must be trusted before buffering the rest: version and size limit.
    """
    header = backend.impl.peek_frame(buf, offset)
    if header is None:
        return None
    if header[1] != VERSION:
        raise FrameError(f"unsupported protocol version {header[1]}", ErrorCode.UNSUPPORTED_VERSION)
    if header[0] > limits.max_payload:
        raise FrameError(f"payload of {header[0]} bytes exceeds limit {limits.max_payload}",
                         ErrorCode.FRAME_TOO_LARGE)
    return OVERHEAD + header[0]


def open_frame(buf, offset, keyring, limits: Limits = DEFAULT_LIMITS, now_ms: int = 0):
    """Verify and decode one frame at buf[offset:]. Returns (Frame, end) or None if incomplete."""
    header = backend.impl.peek_frame(buf, offset)
    if header is None:
        return None
    plen, version, ftype, flags, reserved, key_id, stream_id, seq, ts, nonce = header
    if version != VERSION:
        raise FrameError(f"unsupported protocol version {version}", ErrorCode.UNSUPPORTED_VERSION)
    if plen > limits.max_payload:
        raise FrameError(f"payload of {plen} bytes exceeds limit {limits.max_payload}",
                         ErrorCode.FRAME_TOO_LARGE)
    end = offset + OVERHEAD + plen
    if end > len(buf):
        return None
    key = keyring.verifier(key_id, now_ms)
    if not key.verify(buf, offset, end):
        raise AuthError(f"HMAC mismatch for key id {key_id}", ErrorCode.BAD_SIGNATURE)
    if reserved:
        raise FrameError(f"reserved header byte is {reserved}, must be 0")
    if flags & ~KNOWN_FLAGS:
        raise FrameError(f"unknown flag bits 0x{flags & ~KNOWN_FLAGS:02x}")
    info = _TYPE_INFO.get(ftype)
    if info is None:
        raise FrameError(f"unknown frame type 0x{ftype:02x}", ErrorCode.UNKNOWN_FRAME_TYPE)
    ftype, on_stream_zero = info
    if on_stream_zero != (stream_id == 0):
        raise FrameError(f"{ftype.name} on stream {stream_id}: connection frames use stream 0, "
                         "stream frames a non-zero id")
    payload = decode_span(buf, offset + HEADER_SIZE, end - TAG_SIZE, limits)
    check_shape(ftype, payload, limits)
    return Frame(ftype, flags, key_id, stream_id, seq, ts, nonce, payload, end - offset), end

"""Wire error codes and the codec's exception family: every failure carries the code it sends."""
from enum import IntEnum


class ErrorCode(IntEnum):
    """ATP wire error codes (docs/PROTOCOL.md §7). Values are stable; never renumber."""

    NO_ERROR = 0
    # 1xx frame / protocol: the peer is broken or hostile; never retryable.
    MALFORMED_FRAME = 100
    UNSUPPORTED_VERSION = 101
    UNKNOWN_FRAME_TYPE = 102
    FRAME_TOO_LARGE = 103
    MALFORMED_PAYLOAD = 104
    PROTOCOL_VIOLATION = 105
    INVALID_STREAM = 106
    # 2xx authentication / anti-replay.
    BAD_SIGNATURE = 200
    UNKNOWN_KEY = 201
    REPLAYED_NONCE = 202
    STALE_TIMESTAMP = 203
    SEQUENCE_REPLAY = 204
    UNAUTHENTICATED = 205
    FORBIDDEN = 206
    POLICY_DENIED = 207
    # 3xx admission / flow control: back off and retry (all but BUDGET_EXCEEDED).
    WINDOW_EXCEEDED = 300
    OVERLOADED = 301
    RATE_LIMITED = 302
    BUDGET_EXCEEDED = 303
    TIMEOUT = 304
    REPLAY_CACHE_FULL = 305
    # 4xx request / routing.
    INVALID_REQUEST = 400
    UNKNOWN_MODEL = 401
    NO_ROUTE = 402
    # 5xx server / upstream.
    INTERNAL = 500
    UPSTREAM_ERROR = 501
    UPSTREAM_TIMEOUT = 502
    UPSTREAM_CUT = 503
    UNAVAILABLE = 504
    CANCELLED = 505

    @property
    def retryable(self) -> bool:
        return self in RETRYABLE


RETRYABLE = frozenset({
    ErrorCode.WINDOW_EXCEEDED, ErrorCode.OVERLOADED, ErrorCode.RATE_LIMITED, ErrorCode.TIMEOUT,
    ErrorCode.REPLAY_CACHE_FULL, ErrorCode.UPSTREAM_ERROR, ErrorCode.UPSTREAM_TIMEOUT,
    ErrorCode.UPSTREAM_CUT, ErrorCode.UNAVAILABLE,
})


def code_name(code: int) -> str:
    """Symbolic name of a wire code; unknown codes (from newer peers) stay readable."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"CODE_{code}"


class CodecError(Exception):
    """Base of every error the codec raises on bad input; `.code` is the wire code to send."""

    code: ErrorCode = ErrorCode.PROTOCOL_VIOLATION

    def __init__(self, message: str, code: ErrorCode | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def __str__(self) -> str:
        return f"{self.code.name} ({int(self.code)}): {self.args[0]}"


class FrameError(CodecError):
    """The bytes are not a valid v1 frame (header, length, type, flags)."""

    code = ErrorCode.MALFORMED_FRAME


class PayloadError(CodecError):
    """The CBOR payload is malformed, over a limit, or has the wrong shape for its frame type."""

    code = ErrorCode.MALFORMED_PAYLOAD


class AuthError(CodecError):
    """Signature, key id, timestamp or replay check failed."""

    code = ErrorCode.BAD_SIGNATURE


class ProtocolError(CodecError):
    """A valid frame arrived where the state machine does not allow it."""

    code = ErrorCode.PROTOCOL_VIOLATION


class FlowControlError(CodecError):
    """A request exceeded the credit the peer granted."""

    code = ErrorCode.WINDOW_EXCEEDED

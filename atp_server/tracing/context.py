"""W3C trace context without OpenTelemetry: the client's traceparent onto the request, its trace id, the upstream header."""
import contextvars
import re

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
# The response header (HTTP) / trailing metadata (gRPC) naming the trace of the request's span.
TRACE_HEADER = "x-atp-trace-id"

# W3C Trace Context §3.2.2: version-trace_id-parent_id-flags in lowercase hex. A later version may
# append fields after a dash (§3.2.4: parse the first four, ignore the rest); version 00 may not.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z", re.S)
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


class UpstreamTrace:
    """The trace context an upstream call made inside an attempt carries: its traceparent and
    tracestate, and the same as the header block the shared HTTP client appends."""

    __slots__ = ("traceparent", "tracestate", "block")

    def __init__(self, traceparent: str, tracestate: str = ""):
        self.traceparent, self.tracestate = traceparent, tracestate
        block = f"{TRACEPARENT}: {traceparent}\r\n"
        if tracestate:
            block += f"{TRACESTATE}: {tracestate}\r\n"
        self.block = block.encode("latin-1")


# Set by the attempt (tracing/otel.py) around its call, read by the shared HTTP client
# (adapters/http_client.py) and by the federation's next-hop REQUEST (federation/forward.py). A
# context variable, so hedged attempts, each in its own task, carry their own span; None (the
# default) when tracing is off or outside an attempt.
UPSTREAM_TRACE: contextvars.ContextVar[UpstreamTrace | None] = contextvars.ContextVar(
    "atp_upstream_trace", default=None)


def trace_id(traceparent: str) -> str | None:
    """The trace id (32 lowercase hex) of a valid traceparent, else None: a malformed one starts
    a new trace, it is never an error."""
    m = _TRACEPARENT.match(traceparent)
    if m is None:
        return None
    version, tid, parent, _flags, rest = m.groups()
    if version == "ff" or tid == _ZERO_TRACE or parent == _ZERO_SPAN or (version == "00" and rest):
        return None
    return tid


def from_headers(request, headers) -> None:
    """An HTTP request's traceparent/tracestate headers onto the ChatRequest (names are
    case-insensitive in aiohttp's and grpc's header maps alike)."""
    parent = headers.get(TRACEPARENT)
    if parent is not None:
        request.traceparent = parent
        request.tracestate = headers.get(TRACESTATE) or ""


def from_pairs(request, pairs) -> None:
    """gRPC invocation metadata ((key, value) pairs, keys lower-case) onto the ChatRequest: the
    place OpenTelemetry's gRPC instrumentation puts traceparent."""
    for key, value in pairs or ():
        if key == TRACEPARENT:
            request.traceparent = value
        elif key == TRACESTATE:
            request.tracestate = value


def from_metadata(request) -> None:
    """Move traceparent/tracestate out of a frame's or typed gRPC request's `metadata` into the
    request's own fields: they are no routing or policy inputs (and a non-empty metadata map takes
    routing off its cached fast path, routing/choose.py)."""
    meta = request.metadata
    if meta and (TRACEPARENT in meta or TRACESTATE in meta):
        parent, state = meta.pop(TRACEPARENT, None), meta.pop(TRACESTATE, None)
        if isinstance(parent, str) and not request.traceparent:
            request.traceparent = parent
            request.tracestate = state if isinstance(state, str) else ""

"""W3C trace context without OpenTelemetry: which traceparents are valid, and where they are read from."""
import pytest

from atp_server.tracing.context import from_headers, from_metadata, from_pairs, trace_id
from atp_server.types import ChatRequest

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize("value,expected", [
    (PARENT, TRACE),
    (f"00-{TRACE}-00f067aa0ba902b7-00", TRACE),              # not sampled: still a valid context
    (f"01-{TRACE}-00f067aa0ba902b7-01-what-comes-later", TRACE),   # a later version may add fields
    ("", None), ("00", None), (PARENT + "-x", None), (PARENT.upper(), None),
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
    (f"00-{TRACE}-" + "0" * 16 + "-01", None),
    (f"00-{TRACE}-00f067aa0ba902b7-01\n", None),
    (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
])
def test_trace_id_of_a_traceparent(value, expected):
    assert trace_id(value) == expected


def test_http_headers_fill_the_request_fields():
    request = ChatRequest([("user", "x")])
    from_headers(request, {"traceparent": PARENT, "tracestate": "a=1"})
    assert (request.traceparent, request.tracestate) == (PARENT, "a=1")
    untouched = ChatRequest([("user", "x")])
    from_headers(untouched, {"tracestate": "a=1"})           # tracestate alone means nothing
    assert (untouched.traceparent, untouched.tracestate) == ("", "")


def test_frame_and_message_metadata_move_into_the_request_fields():
    request = ChatRequest([("user", "x")], metadata={"traceparent": PARENT, "tracestate": "a=1", "k": "v"})
    from_metadata(request)
    assert (request.traceparent, request.tracestate) == (PARENT, "a=1")
    assert request.metadata == {"k": "v"}                   # routing and policy never see them
    bare = ChatRequest([("user", "x")], metadata={"tracestate": "a=1"})
    from_metadata(bare)
    assert bare.metadata == {} and bare.traceparent == ""


def test_grpc_invocation_metadata_fills_the_request_fields():
    request = ChatRequest([("user", "x")])
    from_pairs(request, (("authorization", "Bearer k"), ("traceparent", PARENT), ("tracestate", "b=2")))
    assert (request.traceparent, request.tracestate) == (PARENT, "b=2")

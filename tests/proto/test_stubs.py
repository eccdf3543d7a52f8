"""The gRPC contract: stubs are fresh, the service shape is as documented, messages round-trip."""
import importlib.util
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from proto.atp.v1 import atp_pb2, atp_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "scripts" / "gen_proto.py"


def _load_gen():
    spec = importlib.util.spec_from_file_location("gen_proto", GEN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_stubs_match_fresh_generation():
    r = subprocess.run([sys.executable, str(GEN), "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"stubs drifted from proto:\n{r.stdout}\n{r.stderr}"


def test_stubs_import_from_repo_root_in_fresh_interpreter():
    r = subprocess.run([sys.executable, "-c", "from proto.atp.v1 import atp_pb2, atp_pb2_grpc; "
                        "print(atp_pb2_grpc.AtpStub.__name__)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "AtpStub"


def test_service_shape():
    svc = atp_pb2.DESCRIPTOR.services_by_name["Atp"]
    assert svc.full_name == "atp.v1.Atp"
    kinds = {m.name: (m.client_streaming, m.server_streaming) for m in svc.methods}
    assert kinds == {
        "Session": (True, True),
        "Complete": (False, False),
        "Stream": (False, True),
        "Route": (False, False),
        "Feedback": (False, False),
        "ListModels": (False, False),
    }
    io = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods}
    assert io == {
        "Session": ("atp.v1.Frame", "atp.v1.Frame"),
        "Complete": ("atp.v1.CompletionRequest", "atp.v1.CompletionResponse"),
        "Stream": ("atp.v1.CompletionRequest", "atp.v1.StreamEvent"),
        "Route": ("atp.v1.CompletionRequest", "atp.v1.RouteDecision"),
        "Feedback": ("atp.v1.FeedbackRequest", "atp.v1.FeedbackAck"),
        "ListModels": ("atp.v1.ListModelsRequest", "atp.v1.ListModelsResponse"),
    }


# Field numbers are the wire contract: pin them so a renumbering fails here, not in production.
FIELD_NUMBERS = {
    "Frame": {"data": 1},
    "ChatMessage": {"role": 1, "content": 2},
    "CompletionRequest": {"messages": 1, "tier": 2, "max_cost_usd": 3, "latency_slo_ms": 4,
                          "tenant": 5, "required_capabilities": 6, "model": 7, "max_tokens": 8,
                          "temperature": 9, "request_id": 10, "metadata": 11},
    "RouteDecision": {"provider": 1, "model": 2, "estimated_cost_usd": 3,
                      "estimated_latency_ms": 4, "confidence": 5, "reasons": 6, "fallbacks": 7},
    "Chunk": {"index": 1, "text": 2, "tokens": 3},
    "Usage": {"input_tokens": 1, "output_tokens": 2, "cost_usd": 3, "cost_usd_micros": 4},
    "CompletionResponse": {"request_id": 1, "text": 2, "finish_reason": 3, "usage": 4,
                           "route": 5, "gateway_overhead_us": 6},
    "Completion": {"finish_reason": 1, "usage": 2, "route": 3, "gateway_overhead_us": 4},
    "Error": {"code": 1, "name": 2, "message": 3, "retryable": 4, "retry_after_ms": 5},
    "StreamEvent": {"chunk": 1, "end": 2, "error": 3, "route": 4},
    "FeedbackRequest": {"request_id": 1, "score": 2, "comment": 3, "tenant": 4},
    "FeedbackAck": {"accepted": 1},
    "ListModelsRequest": {"tenant": 1},
    "ModelInfo": {"id": 1, "provider": 2, "capabilities": 3, "context_window": 4,
                  "price_in_per_mtok_usd": 5, "price_out_per_mtok_usd": 6, "quality": 7,
                  "healthy": 8},
    "ListModelsResponse": {"models": 1},
}


def test_field_numbers_are_stable():
    got = {name: {f.name: f.number for f in msg.fields}
           for name, msg in atp_pb2.DESCRIPTOR.message_types_by_name.items()}
    assert got == FIELD_NUMBERS


def test_optional_fields_and_oneof():
    req = atp_pb2.CompletionRequest.DESCRIPTOR.fields_by_name
    explicit = {n for n, f in req.items() if f.has_presence and f.message_type is None}
    assert explicit == {"max_cost_usd", "latency_slo_ms", "model", "max_tokens", "temperature"}
    assert atp_pb2.FeedbackRequest.DESCRIPTOR.fields_by_name["comment"].has_presence
    oneof = atp_pb2.StreamEvent.DESCRIPTOR.oneofs_by_name["event"]
    assert [f.name for f in oneof.fields] == ["chunk", "end", "error", "route"]
    assert dict(atp_pb2.QualityTier.items()) == {
        "QUALITY_TIER_UNSPECIFIED": 0, "QUALITY_TIER_FAST": 1,
        "QUALITY_TIER_BALANCED": 2, "QUALITY_TIER_HIGH": 3}


def test_completion_request_round_trip_every_field():
    req = atp_pb2.CompletionRequest(
        messages=[atp_pb2.ChatMessage(role="system", content="be brief"),
                  atp_pb2.ChatMessage(role="user", content="héllo ✓")],
        tier=atp_pb2.QUALITY_TIER_HIGH,
        max_cost_usd=0.0125,
        latency_slo_ms=1500,
        tenant="acme",
        required_capabilities=["tools", "json"],
        model="gpt-4o-mini",
        max_tokens=256,
        temperature=0.0,  # explicit zero must survive (presence, not default)
        request_id="req-123",
        metadata={"trace": "abc", "team": "search"},
    )
    # Every field is set (repeated/map non-empty; optional scalars have presence).
    for f in req.DESCRIPTOR.fields:
        if f.is_repeated:
            assert len(getattr(req, f.name)) > 0, f.name
        else:
            assert req.HasField(f.name) if f.has_presence else getattr(req, f.name), f.name
    wire = req.SerializeToString(deterministic=True)
    back = atp_pb2.CompletionRequest.FromString(wire)
    assert back == req
    assert back.HasField("temperature") and back.temperature == 0.0
    assert back.SerializeToString(deterministic=True) == wire
    assert atp_pb2.CompletionRequest().HasField("temperature") is False


def test_stream_event_oneof_round_trip():
    ev = atp_pb2.StreamEvent(error=atp_pb2.Error(code=7, name="UNKNOWN_MODEL", message="no such",
                                                retryable=False, retry_after_ms=0))
    back = atp_pb2.StreamEvent.FromString(ev.SerializeToString())
    assert back.WhichOneof("event") == "error" and back.error.name == "UNKNOWN_MODEL"
    back.end.CopyFrom(atp_pb2.Completion(finish_reason="stop",
                                         usage=atp_pb2.Usage(cost_usd_micros=2**40)))
    assert back.WhichOneof("event") == "end" and not back.HasField("error")
    assert atp_pb2.StreamEvent.FromString(back.SerializeToString()).end.usage.cost_usd_micros == 2**40


class _Echo(atp_pb2_grpc.AtpServicer):
    def Session(self, request_iterator, context):
        for frame in request_iterator:
            yield atp_pb2.Frame(data=frame.data[::-1])

    def Stream(self, request, context):
        yield atp_pb2.StreamEvent(route=atp_pb2.RouteDecision(model=request.model))
        yield atp_pb2.StreamEvent(chunk=atp_pb2.Chunk(index=0, text="hi", tokens=1))
        yield atp_pb2.StreamEvent(end=atp_pb2.Completion(finish_reason="stop"))

    def Route(self, request, context):
        return atp_pb2.RouteDecision(model=request.model, fallbacks=["b", "c"])


@pytest.fixture(scope="module")
def stub():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    atp_pb2_grpc.add_AtpServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield atp_pb2_grpc.AtpStub(channel)
    finally:
        channel.close()
        server.stop(None)


def test_stubs_work_over_the_wire(stub):
    req = atp_pb2.CompletionRequest(model="m1")
    assert list(stub.Route(req, timeout=10).fallbacks) == ["b", "c"]
    kinds = [e.WhichOneof("event") for e in stub.Stream(req, timeout=10)]
    assert kinds == ["route", "chunk", "end"]
    out = [f.data for f in stub.Session(iter([atp_pb2.Frame(data=b"\x01\x02"),
                                              atp_pb2.Frame(data=b"\x03")]), timeout=10)]
    assert out == [b"\x02\x01", b"\x03"]
    with pytest.raises(grpc.RpcError) as e:  # unimplemented servicer methods
        stub.Complete(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_cross_package_imports_are_made_relative():
    gen = _load_gen()
    generated = {"atp.v1.atp_pb2", "agp.v1.agp_pb2"}
    src = ("from atp.v1 import atp_pb2 as atp_dot_v1_dot_atp__pb2\n"
           "from agp.v1 import agp_pb2 as agp_dot_v1_dot_agp__pb2\n"
           "from google.protobuf import timestamp_pb2 as google_dot_protobuf_dot_timestamp__pb2\n")
    out = gen._relative_imports(src, ("agp", "v1"), generated)
    assert out.splitlines() == [
        "from ...atp.v1 import atp_pb2 as atp_dot_v1_dot_atp__pb2",
        "from . import agp_pb2 as agp_dot_v1_dot_agp__pb2",
        "from google.protobuf import timestamp_pb2 as google_dot_protobuf_dot_timestamp__pb2",
    ]

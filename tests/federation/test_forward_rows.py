"""Forwarding's routing rows, in memory (federation/forward.py): a remote model becomes a
"federation" row at the route's total price; a model served here is never replaced by a remote
one; a withdrawn model's row outlives its route by the grace period; next hops are ordered."""
import asyncio

from atp_server.federation.forward import FEDERATED, STALE_GRACE_S, Forwarding, incoming
from atp_server.federation.rib import Candidate
from atp_server.federation.routes import Hop, Route
from atp_server.routing.spec import ModelSpec
from atp_server.types import ChatRequest


class FakeRouter:
    def __init__(self, models):
        self.models = {m.id: m for m in models}
        self.swaps = 0

    def set_models(self, models):
        self.models = {m.id: m for m in models}
        self.swaps += 1


class FakeRib:
    def __init__(self):
        self.best, self.others = {}, {}

    def _candidates(self, model, now):
        return [c for c in [self.best.get(model), *self.others.get(model, [])] if c is not None]


class Cfg:
    router_id, forward = "A", ()


def route(model, origin, price, *hops):
    return Route(model, origin, ("chat", "tools"), price, price, 100.0,
                 hops=tuple(Hop(h, 0.5, 1.0) for h in hops))


def setup():
    now = [100.0]
    local = ModelSpec("here", "sim", "here")
    router = FakeRouter([local])
    fw = Forwarding(Cfg(), router, [local], lambda: now[0])
    fw.rib = FakeRib()
    return fw, router, now


def test_a_remote_route_becomes_a_row_at_its_total_price_with_the_path():
    async def main():
        fw, router, _ = setup()
        fw.rib.best["far"] = Candidate(route("far", "C", 1.0, "B"), "B", 120.0)
        fw.rib.best["here"] = Candidate(route("here", "C", 0.0), "C", 10.0)   # cheaper, but local
        fw.rebuild()
        return router, fw
    router, fw = asyncio.run(main())
    far = router.models["far"]
    assert far.provider == FEDERATED and far.price_in_per_mtok == 1.5 and far.latency_ms == 120.0
    assert far.capabilities == frozenset({"chat"})        # tools cannot travel in a REQUEST frame
    assert router.models["here"].provider == "sim"         # a model served here stays local
    assert fw.paths == {"far": "federation path A>B>C"}


def test_a_withdrawn_model_keeps_its_row_for_the_grace_period_then_goes():
    async def main():
        fw, router, now = setup()
        fw.rib.best["far"] = Candidate(route("far", "C", 1.0), "C", 100.0)
        fw.rebuild()
        del fw.rib.best["far"]
        fw.rebuild()
        kept = "far" in router.models
        now[0] += STALE_GRACE_S + 1
        fw.rebuild()
        await fw.aclose()
        return kept, "far" in router.models, router.swaps
    kept, still, swaps = asyncio.run(main())
    assert kept and not still and swaps == 2


def test_next_hops_best_first_then_the_others_by_rank_each_peer_once():
    fw, _, _ = setup()
    best = Candidate(route("m", "C", 2.0), "C", 100.0)
    fw.rib.best["m"] = best
    fw.rib.others["m"] = [Candidate(route("m", "E", 3.0, "D"), "D", 100.0),
                          Candidate(route("m", "F", 1.0, "B"), "B", 100.0),
                          Candidate(route("m", "G", 1.0, "C"), "C", 100.0)]
    assert fw.next_hops("m") == ["C", "B", "D"]
    assert fw.next_hops("nothing") == []


def test_inside_a_traced_attempt_the_next_hop_gets_its_traceparent_in_meta():
    from atp_server.tracing.context import UPSTREAM_TRACE, UpstreamTrace
    fw, _, _ = setup()
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    token = UPSTREAM_TRACE.set(UpstreamTrace(parent, "a=1"))
    try:
        traced = fw.payload("far", ChatRequest(messages=[("user", "x")]), stream=True)
    finally:
        UPSTREAM_TRACE.reset(token)
    assert traced["meta"] == {"atp-hops": "1", "atp-path": "A", "traceparent": parent, "tracestate": "a=1"}
    untraced = fw.payload("far", ChatRequest(messages=[("user", "x")]), stream=True)
    assert "traceparent" not in untraced["meta"]


def test_the_hop_counter_and_path_come_from_the_metadata():
    assert incoming(ChatRequest(messages=[("user", "x")])) == (0, ())
    assert incoming(ChatRequest(messages=[("user", "x")],
                                metadata={"atp-hops": "2", "atp-path": "A,B"})) == (2, ("A", "B"))


def test_the_forwarded_request_carries_the_hop_and_path_and_the_request_fields():
    fw, _, _ = setup()
    r = ChatRequest(messages=[("system", "s"), ("user", "u")], tier="fast", max_tokens=7,
                    temperature=0.5, latency_slo_ms=900, max_cost_usd=0.25, request_id="rid-1",
                    tenant="acme", metadata={"atp-hops": "1", "atp-path": "Z", "user": "u1"})
    p = fw.payload("far", r, stream=True)
    assert p == {"messages": [["system", "s"], ["user", "u"]], "stream": True, "model": "far",
                 "tier": "fast", "meta": {"atp-hops": "2", "atp-path": "Z,A"}, "rid": "rid-1",
                 "max_tokens": 7, "slo_ms": 900, "temperature": 0.5, "max_cost": 250000}

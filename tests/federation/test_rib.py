"""AGP routing between in-memory routers: propagation, withdrawal, dead peers, forged and tampered
routes, loops, hop limits, reflectors, hysteresis and flap damping."""
from dataclasses import replace

import pytest

from atp_server.federation import rib as rib_mod
from atp_server.federation.routes import Route, check, extend, originate
from atp_server.federation.session import Update

from .net import Net


def line(*names, **kw) -> Net:
    net = Net()
    for n in names:
        net.add(n, **kw)
    for a, b in zip(names, names[1:]):
        net.link(a, b)
    return net


# ---- propagation and withdrawal ---------------------------------------------------------------

def test_a_model_propagates_down_a_line_with_its_path_and_the_hops_overhead():
    net = Net()
    net.add("A")
    net.add("B", overhead=0.25, hop_latency_ms=5)
    net.add("C")
    net.link("A", "B")
    net.link("B", "C")
    net.serve("A", "llama", price=1.0, latency=100)
    r = net.best("C", "llama")
    assert r.path == ("B", "A") and r.origin == "A"
    assert r.total_price_in == pytest.approx(1.25) and r.total_latency_ms == pytest.approx(105)


def test_a_router_that_joins_later_gets_the_full_table():
    net = line("A", "B")
    net.serve("A", "m1")
    net.add("C")
    net.link("C", "B")
    assert net.best("C", "m1").path == ("B", "A")


def test_a_withdrawn_model_disappears_everywhere():
    net = line("A", "B", "C")
    net.serve("A", "m1")
    net.unserve("A", "m1")
    assert net.best("B", "m1") is None and net.best("C", "m1") is None


def test_the_cheapest_of_two_origins_wins():
    net = line("A", "B", "C")
    net.serve("A", "m1", price=2.0)
    net.serve("C", "m1", price=1.0)
    assert net.best("B", "m1").origin == "C"


# ---- failure ------------------------------------------------------------------------------------

def test_a_dead_router_is_withdrawn_within_the_hold_time_and_traffic_moves():
    net = Net()
    for n in "ABCD":
        net.add(n)
    net.link("A", "B")
    net.link("A", "C")
    net.link("B", "D")
    net.link("C", "D")
    net.serve("D", "m1")
    via = net.best("A", "m1").path[0]
    other = "C" if via == "B" else "B"
    net.kill(via)
    killed_at = net.now
    while net.best("A", "m1") is None or net.best("A", "m1").path[0] == via:
        net.advance(0.1)
        assert net.now - killed_at <= 3.0 + 0.1, "not converged within 3 × keepalive"
    assert net.best("A", "m1").path == (other, "D")
    assert any(e["peer"] == via for e in net.events("A", "peer_down"))


# ---- trust ---------------------------------------------------------------------------------------

def test_a_route_signed_by_a_key_not_its_origins_is_dropped_and_logged():
    net = line("A", "B")
    forger = net.keys["A"]   # B pretends to relay a route "from C", signed with the wrong key
    net.add("C")             # C is trusted, but its key is not the one that signed below
    fake = extend(net.keys["B"], originate(forger, Route("m1", "C", seq=1)), "B", 0, 0)
    net.inject("A", "B", Update((fake,)))
    assert net.best("A", "m1") is None
    (drop,) = net.events("A", "route_dropped")
    assert drop["origin"] == "C" and "origin signature" in drop["reason"]


def test_a_price_lowered_in_transit_breaks_the_origin_signature():
    net = line("A", "B")
    net.add("X")
    signed = originate(net.keys["X"], Route("m1", "X", price_in_per_mtok=5.0, seq=1))
    tampered = extend(net.keys["B"], replace(signed, price_in_per_mtok=0.01), "B", 0, 0)
    assert "origin signature" in check(tampered, "B", net.trust)


def test_a_hop_cannot_be_stripped_or_its_overhead_changed():
    net = Net()
    for n in "XBC":
        net.add(n)
    r = extend(net.keys["B"], originate(net.keys["X"], Route("m1", "X", seq=1)), "B", 0.5, 0)
    r = extend(net.keys["C"], r, "C", 0.0, 0)
    cheaper = replace(r, hops=(replace(r.hops[0], overhead_per_mtok=0.0), r.hops[1]))
    assert "hop B" in check(cheaper, "C", net.trust)
    stripped = replace(r, hops=(r.hops[1],))
    assert "hop C" in check(stripped, "C", net.trust)


def test_a_route_must_come_from_its_last_hop():
    net = line("A", "B")
    net.add("X")
    r = originate(net.keys["X"], Route("m1", "X", seq=1))
    assert "last hop is X" in check(r, "B", net.trust)


def test_an_untrusted_router_cannot_peer():
    net = Net()
    net.add("A")
    net.add("Mallory", trusted=False)
    net.link("Mallory", "A")
    assert not any(s.state.value == "established" for s in net.nodes["A"].sessions.values())
    assert net.events("A", "peer_up") == []


def test_a_router_claiming_anothers_id_fails_the_proof():
    net = Net()
    net.add("A")
    net.add("B")
    impostor_key = net.keys["A"]
    net.add("B2", key=impostor_key, trusted=False)   # holds A's key, claims nothing yet
    net.nodes["B2"].local.router_id = "B"            # ...and now claims to be B
    net.link("B2", "A")
    assert net.events("A", "peer_up") == []


# ---- loops, hop limit, reflectors ----------------------------------------------------------------

def test_a_ring_settles_and_no_route_contains_its_receiver():
    net = line("A", "B", "C", "D")
    net.link("D", "A")
    net.serve("A", "m1")
    for name in "BCD":
        r = net.best(name, "m1")
        assert r is not None and name not in r.path
    assert net.best("A", "m1") is None                   # its own model comes back to nobody


def test_routes_beyond_the_hop_limit_are_dropped(monkeypatch):
    names = [f"R{i}" for i in range(rib_mod.HOP_LIMIT + 2)]
    net = line(*names)
    net.serve(names[0], "m1")
    assert net.best(names[rib_mod.HOP_LIMIT], "m1") is not None
    assert net.best(names[-1], "m1") is None


def test_without_a_reflector_same_domain_routes_are_not_re_advertised():
    net = Net()
    for n in ("E1", "R", "E2"):
        net.add(n, domain="eu")
    net.link("E1", "R")
    net.link("E2", "R")
    net.serve("E1", "m1")
    assert net.best("R", "m1") is not None and net.best("E2", "m1") is None


def test_a_route_reflector_reflects_within_its_domain():
    net = Net()
    net.add("E1", domain="eu")
    net.add("R", domain="eu", reflector=True)
    net.add("E2", domain="eu")
    net.link("E1", "R")
    net.link("E2", "R")
    net.serve("E1", "m1")
    assert net.best("E2", "m1").path == ("R", "E1")


def test_routes_from_another_domain_cross_without_a_reflector():
    net = Net()
    net.add("U", domain="us")
    net.add("E1", domain="eu")
    net.add("E2", domain="eu")
    net.link("U", "E1")
    net.link("E1", "E2")
    net.serve("U", "m1")
    assert net.best("E2", "m1").path == ("E1", "U")


# ---- stability ------------------------------------------------------------------------------------

def test_nearly_equal_routes_do_not_trade_places():
    net = Net()
    for n in "ABC":
        net.add(n)
    net.link("A", "B")
    net.link("A", "C")
    net.serve("B", "m1", price=1.00, latency=100)
    net.serve("C", "m1", price=1.02, latency=100)
    assert net.best("A", "m1").origin == "B"
    net.serve("C", "m1", price=0.99, latency=100)     # 1% cheaper: inside the 5% margin
    assert net.best("A", "m1").origin == "B"
    net.serve("C", "m1", price=0.80, latency=100)     # 20% cheaper: a real improvement
    assert net.best("A", "m1").origin == "C"


def test_a_flapping_route_is_suppressed_then_reused_after_it_settles():
    net = line("A", "B")
    for _ in range(3):                                 # three withdrawals: penalty ~3000 > 2000
        net.serve("A", "m1")
        net.unserve("A", "m1")
    net.serve("A", "m1")
    assert net.best("B", "m1") is None                 # suppressed although announced
    assert any(c.suppressed for c, _ in net.nodes["B"].rib.routes(net.now))
    net.advance(rib_mod.HALF_LIFE_S * 3)               # decays below the reuse threshold
    assert net.best("B", "m1") is not None


def test_stale_updates_are_ignored():
    net = line("A", "B")
    net.serve("A", "m1", price=1.0)
    first = net.best("B", "m1")
    net.serve("A", "m1", price=2.0)
    net.inject("B", "A", Update((first,)))            # the older announcement arrives late
    assert net.best("B", "m1").price_in_per_mtok == 2.0


def test_a_shorter_path_replaces_an_equal_longer_one_learned_first():
    net = Net()
    for n in "OBC":
        net.add(n)
    net.link("B", "O")
    net.link("C", "B")
    net.serve("O", "m1")
    assert net.best("C", "m1").path == ("B", "O")
    net.link("C", "O")                                # a direct route, equal price and latency
    assert net.best("C", "m1").path == ("O",)

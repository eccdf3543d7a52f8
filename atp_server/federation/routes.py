"""AGP routes as values: what a route says, the bytes its origin and each hop sign, and checking them.

A route's origin signs its core (docs/FEDERATION.md §3):

    core = ["agp-route/1", model, origin, sorted(capabilities), price_in_per_mtok,
            price_out_per_mtok, latency_ms, health, capacity, seq, origin_time_ms]

as compact JSON (orjson). Each router that re-advertises the route appends a Hop and signs

    ["agp-hop/1", origin_signature_hex, [[id, overhead, latency, signature_hex] of earlier hops],
     own_id, own_overhead, own_latency]

so the attributes, the path and every hop's additions are bound to the keys of the routers that
set them. A receiver checks the origin and every hop against its trust store and that the last
hop (or, with no hops, the origin) is the peer it heard the route from.
"""
from dataclasses import dataclass, field, replace

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class Hop:
    router_id: str
    overhead_per_mtok: float = 0.0
    latency_ms: float = 0.0
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    origin: str
    capabilities: tuple[str, ...] = ("chat",)
    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0
    latency_ms: float = 0.0
    health: float = 1.0
    capacity: int = 0
    seq: int = 0
    origin_time_ms: int = 0
    signature: bytes = b""
    hops: tuple[Hop, ...] = field(default_factory=tuple)

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.origin

    @property
    def path(self) -> tuple[str, ...]:
        """Router ids from the nearest (who sent it to us) to the origin."""
        return tuple(h.router_id for h in reversed(self.hops)) + (self.origin,)

    @property
    def next_hop(self) -> str:
        return self.hops[-1].router_id if self.hops else self.origin

    @property
    def total_price_in(self) -> float:
        return self.price_in_per_mtok + sum(h.overhead_per_mtok for h in self.hops)

    @property
    def total_price_out(self) -> float:
        return self.price_out_per_mtok + sum(h.overhead_per_mtok for h in self.hops)

    @property
    def total_latency_ms(self) -> float:
        return self.latency_ms + sum(h.latency_ms for h in self.hops)


def core_bytes(r: Route) -> bytes:
    return orjson.dumps(["agp-route/1", r.model, r.origin, sorted(r.capabilities),
                         float(r.price_in_per_mtok), float(r.price_out_per_mtok),
                         float(r.latency_ms), float(r.health), int(r.capacity), int(r.seq),
                         int(r.origin_time_ms)])


def hop_bytes(r: Route, prior: tuple[Hop, ...], hop: Hop) -> bytes:
    return orjson.dumps(["agp-hop/1", r.signature.hex(),
                         [[h.router_id, float(h.overhead_per_mtok), float(h.latency_ms),
                           h.signature.hex()] for h in prior],
                         hop.router_id, float(hop.overhead_per_mtok), float(hop.latency_ms)])


def originate(key: Ed25519PrivateKey, route: Route) -> Route:
    """The route signed by its origin (hops cleared)."""
    r = replace(route, hops=(), signature=b"")
    return replace(r, signature=key.sign(core_bytes(r)))


def extend(key: Ed25519PrivateKey, route: Route, router_id: str, overhead_per_mtok: float,
           latency_ms: float) -> Route:
    """The route as `router_id` re-advertises it: its hop appended and signed."""
    hop = Hop(router_id, overhead_per_mtok, latency_ms)
    hop = replace(hop, signature=key.sign(hop_bytes(route, route.hops, hop)))
    return replace(route, hops=route.hops + (hop,))


def _ok(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def check(route: Route, sender: str, trust: dict[str, Ed25519PublicKey]) -> str | None:
    """Why `route`, heard from `sender`, must be dropped — or None when every signature holds."""
    if route.next_hop != sender:
        return f"sent by {sender} but its last hop is {route.next_hop}"
    origin_key = trust.get(route.origin)
    if origin_key is None:
        return f"origin {route.origin} is not in the trust store"
    if not _ok(origin_key, route.signature, core_bytes(route)):
        return f"the origin signature of {route.origin} does not verify"
    for i, hop in enumerate(route.hops):
        hop_key = trust.get(hop.router_id)
        if hop_key is None:
            return f"hop {hop.router_id} is not in the trust store"
        if not _ok(hop_key, hop.signature, hop_bytes(route, route.hops[:i], hop)):
            return f"the signature of hop {hop.router_id} does not verify"
    return None

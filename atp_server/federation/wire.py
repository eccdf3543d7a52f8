"""AGP messages between the session's dataclasses and agp.proto, with the bounds a peer must respect.

A message that breaks a bound or misses a field is Malformed: the link answers it with a
NOTIFICATION (MALFORMED) and closes the session — a peer cannot grow this router's memory by
sending more than the bounds below.
"""
from proto.agp.v1 import agp_pb2 as pb

from .routes import Hop, Route
from .session import Keepalive, Notification, Open, Update, Withdraw

# One UPDATE carries at most this many routes (a router with thousands of models sends several);
# a route crosses at most 32 hops on the wire (the RIB's own limit is lower) and names at most 16
# capabilities; ids and model names fit in 256 characters. With gRPC's 4 MiB message cap these
# keep one message's decoded size bounded to a few MiB.
MAX_ROUTES = 4096
MAX_HOPS = 32
MAX_CAPABILITIES = 16
MAX_NAME = 256


class Malformed(ValueError):
    pass


def _name(value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME:
        raise Malformed(f"{what} must be 1..{MAX_NAME} characters")
    return value


def route_pb(r: Route) -> pb.Route:
    return pb.Route(model=r.model, origin=r.origin, capabilities=list(r.capabilities),
                    price_in_per_mtok=r.price_in_per_mtok, price_out_per_mtok=r.price_out_per_mtok,
                    latency_ms=r.latency_ms, health=r.health, capacity=r.capacity, seq=r.seq,
                    origin_time_ms=r.origin_time_ms, signature=r.signature,
                    hops=[pb.Hop(router_id=h.router_id, overhead_per_mtok=h.overhead_per_mtok,
                                 latency_ms=h.latency_ms, signature=h.signature) for h in r.hops])


def route_from(m: pb.Route) -> Route:
    if len(m.hops) > MAX_HOPS or len(m.capabilities) > MAX_CAPABILITIES:
        raise Malformed(f"a route has at most {MAX_HOPS} hops and {MAX_CAPABILITIES} capabilities")
    for value in (m.price_in_per_mtok, m.price_out_per_mtok, m.latency_ms):
        if not 0 <= value < 1e9:
            raise Malformed("prices and latency must be finite and >= 0")
    if not 0 <= m.health <= 1:
        raise Malformed("health must be in [0, 1]")
    return Route(_name(m.model, "model"), _name(m.origin, "origin"),
                 tuple(_name(c, "capability") for c in m.capabilities), m.price_in_per_mtok,
                 m.price_out_per_mtok, m.latency_ms, m.health, m.capacity, m.seq, m.origin_time_ms,
                 bytes(m.signature),
                 tuple(Hop(_name(h.router_id, "hop"), h.overhead_per_mtok, h.latency_ms,
                           bytes(h.signature)) for h in m.hops))


def to_pb(msg) -> pb.AgpMessage:
    t = type(msg)
    if t is Open:
        return pb.AgpMessage(open=pb.Open(
            version=msg.version, router_id=msg.router_id, domain=msg.domain,
            capabilities=list(msg.capabilities), public_key=msg.public_key,
            hold_time_ms=msg.hold_time_ms, keepalive_ms=msg.keepalive_ms, nonce=msg.nonce,
            proof=msg.proof))
    if t is Update:
        return pb.AgpMessage(update=pb.Update(routes=[route_pb(r) for r in msg.routes]))
    if t is Withdraw:
        return pb.AgpMessage(withdraw=pb.Withdraw(
            routes=[pb.RouteKey(model=m, origin=o) for m, o in msg.keys]))
    if t is Keepalive:
        return pb.AgpMessage(keepalive=pb.Keepalive())
    if t is Notification:
        return pb.AgpMessage(notification=pb.Notification(code=msg.code, message=msg.message))
    raise TypeError(f"not an AGP message: {t.__name__}")


def from_pb(m: pb.AgpMessage):
    kind = m.WhichOneof("body")
    if kind == "open":
        o = m.open
        if len(o.capabilities) > MAX_CAPABILITIES or len(o.nonce) > 64 or len(o.proof) > 64:
            raise Malformed("OPEN fields over their bounds")
        return Open(_name(o.router_id, "router_id"), o.domain[:MAX_NAME], bytes(o.public_key),
                    o.hold_time_ms, o.keepalive_ms, bytes(o.nonce), bytes(o.proof),
                    tuple(o.capabilities), o.version)
    if kind == "update":
        if len(m.update.routes) > MAX_ROUTES:
            raise Malformed(f"an UPDATE carries at most {MAX_ROUTES} routes")
        return Update(tuple(route_from(r) for r in m.update.routes))
    if kind == "withdraw":
        if len(m.withdraw.routes) > MAX_ROUTES:
            raise Malformed(f"a WITHDRAW carries at most {MAX_ROUTES} routes")
        return Withdraw(tuple((_name(k.model, "model"), _name(k.origin, "origin"))
                              for k in m.withdraw.routes))
    if kind == "keepalive":
        return Keepalive()
    if kind == "notification":
        return Notification(m.notification.code, m.notification.message[:1024])
    raise Malformed("an AGP message must carry one of open, update, withdraw, keepalive, notification")

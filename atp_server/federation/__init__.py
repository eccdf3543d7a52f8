"""AGP, the router federation: signed path-vector routes between ATP routers (docs/FEDERATION.md).

routes.py (values and signatures) → rib.py (selection, damping, export rules) → session.py (one
peering, sans-I/O) → node.py (the router's control plane) → link.py (gRPC) ; config.py ([federation]).
"""


async def start(cfg, key, models):
    """Start this router's AGP listener and dial its peers; advertise `models` (ModelSpecs).
    Returns (link, bound port)."""
    from .link import FederationLink
    from .node import Node
    from .routes import Route
    from .session import Local

    f = cfg
    trust = dict(f.trust)
    local = Local(f.router_id, f.domain, key, f.hold_time_ms, f.keepalive_ms, f.reflector)
    link = FederationLink(Node(local, trust, overhead_per_mtok=f.overhead_per_mtok,
                               hop_latency_ms=f.hop_latency_ms))
    host, _, port = f.listen.rpartition(":")
    bound = await link.start(host, int(port))
    offered = set(f.advertise) if f.advertise is not None else None
    for m in models:
        if offered is None or m.id in offered:
            link.serve(Route(m.id, f.router_id, tuple(sorted(m.capabilities)), m.price_in_per_mtok,
                             m.price_out_per_mtok, m.latency_ms, 1.0, 0))
    for p in f.peers:
        link.dial(p.address, p.router_id)
    return link, bound

"""An AGP router's control plane, still sans-I/O: its RIB and its peering sessions, and the fan-out
that re-advertises whatever an input changed to every established peer.

The asyncio link (link.py) owns connections; it calls `connected` / `receive` / `tick` /
`disconnected` with a connection id and sends back whatever list of messages each returns for
each connection (a dict conn -> [messages]).
"""
import os
from dataclasses import dataclass

from .rib import Rib
from .routes import Route
from .session import Local, PeerSession, State


@dataclass(frozen=True, slots=True)
class Event:
    """Something an operator should see in the log: a session up or down, a route dropped."""
    kind: str          # peer_up | peer_down | route_dropped | best_changed
    detail: dict


class Node:
    def __init__(self, local: Local, trust: dict, *, overhead_per_mtok: float = 0.0,
                 hop_latency_ms: float = 0.0, nonce=os.urandom):
        self.local, self.trust, self._nonce = local, trust, nonce
        self.rib = Rib(local.router_id, local.domain, local.key, trust, reflector=local.reflector,
                       overhead_per_mtok=overhead_per_mtok, hop_latency_ms=hop_latency_ms)
        self.sessions: dict[object, PeerSession] = {}
        self.events: list[Event] = []       # drained by the link into the log

    # ---- local models ----------------------------------------------------------------------------

    def serve(self, route: Route, now: float) -> dict:
        """Advertise a model this router serves (or its new price/latency/health)."""
        return self._fan_out(self.rib.originate(route, int(now * 1000)).changed, now)

    def unserve(self, model: str, now: float) -> dict:
        return self._fan_out(self.rib.unoriginate(model).changed, now)

    # ---- connections -------------------------------------------------------------------------------

    def connected(self, conn, now: float, *, dialler: bool, expect: str | None = None) -> dict:
        s = PeerSession(self.local, self.rib, self.trust, dialler=dialler, nonce=self._nonce(16),
                        expect=expect)
        self.sessions[conn] = s
        return {conn: s.start(now)}

    def receive(self, conn, msg, now: float) -> dict:
        s = self.sessions.get(conn)
        if s is None:
            return {}
        was = s.state
        out = {conn: s.receive(msg, now)}
        return self._after(conn, s, was, out, now)

    def tick(self, now: float) -> dict:
        out: dict = {}
        for conn, s in list(self.sessions.items()):
            was = s.state
            msgs = s.tick(now)
            if msgs:
                out.setdefault(conn, []).extend(msgs)
            out = self._after(conn, s, was, out, now)
        for model in self.rib.reevaluate(now).changed:   # damping released a route
            self._merge(out, self._fan_out({model}, now))
        return out

    def disconnected(self, conn, now: float, reason: str = "connection lost") -> dict:
        s = self.sessions.pop(conn, None)
        if s is None or s.state is State.CLOSED:
            return {}
        was = s.state
        s._down(reason, now)
        return self._after(conn, s, was, {}, now, forget=False)

    def shutdown(self, now: float) -> dict:
        return {conn: s.close(now) for conn, s in self.sessions.items()}

    def next_deadline(self) -> float:
        return min((s.next_deadline() for s in self.sessions.values()), default=float("inf"))

    # ---- fan-out -----------------------------------------------------------------------------------

    def _after(self, conn, s: PeerSession, was: State, out: dict, now: float, forget: bool = True) -> dict:
        if s.state is State.ESTABLISHED and was is not State.ESTABLISHED:
            self.events.append(Event("peer_up", {"peer": s.peer.router_id, "domain": s.peer.domain}))
        changes, s.changes = s.changes, type(s.changes)()
        for model, origin, reason in changes.dropped:
            self.events.append(Event("route_dropped", {"peer": s.peer.router_id if s.peer else None,
                                                       "model": model, "origin": origin,
                                                       "reason": reason}))
        if s.state is State.CLOSED:
            if was is State.ESTABLISHED or was is not State.CLOSED:
                self.events.append(Event("peer_down", {"peer": s.peer.router_id if s.peer else None,
                                                       "reason": s.closed_reason}))
            if forget:
                self.sessions.pop(conn, None)
        if changes.changed:
            self._merge(out, self._fan_out(changes.changed, now))
        return out

    def _fan_out(self, models, now: float) -> dict:
        if not models:
            return {}
        for model in models:
            best = self.rib.best.get(model)
            self.events.append(Event("best_changed", {
                "model": model, "via": best.peer if best else None,
                "path": list(best.route.path) if best else []}))
        return {conn: msgs for conn, s in self.sessions.items()
                if (msgs := s.advertise(models, now))}

    @staticmethod
    def _merge(into: dict, more: dict) -> None:
        for conn, msgs in more.items():
            into.setdefault(conn, []).extend(msgs)

    # ---- reading -----------------------------------------------------------------------------------

    def status(self, now: float) -> dict:
        peers = [{"router_id": s.peer.router_id if s.peer else None,
                  "domain": s.peer.domain if s.peer else None, "state": s.state.value,
                  "last_heard_ms_ago": int((now - s.last_heard) * 1000),
                  "routes_received": s.received} for s in self.sessions.values()]
        routes = [{"model": c.route.model, "origin": c.route.origin, "path": list(c.route.path),
                   "price_in_per_mtok": c.route.total_price_in,
                   "price_out_per_mtok": c.route.total_price_out,
                   "latency_ms": c.latency_ms, "health": c.route.health, "best": best,
                   "suppressed": c.suppressed} for c, best in self.rib.routes(now)]
        local = [{"model": r.model, "origin": r.origin, "path": [r.origin],
                  "price_in_per_mtok": r.price_in_per_mtok, "price_out_per_mtok": r.price_out_per_mtok,
                  "latency_ms": r.latency_ms, "health": r.health, "best": True, "suppressed": False}
                 for r in self.rib.local.values()]
        return {"router_id": self.local.router_id, "domain": self.local.domain, "peers": peers,
                "routes": local + sorted(routes, key=lambda x: (x["model"], not x["best"]))}

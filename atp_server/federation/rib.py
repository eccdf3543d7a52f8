"""The routing information base of one AGP router: what each peer advertised, the best route per
model, and what to advertise to whom. Pure: time comes in as `now` (seconds), nothing does I/O.

Selection (docs/FEDERATION.md §4), per model, among the candidates that are not suppressed:
healthy before unhealthy, then the lower total price (origin price + every hop's overhead), then
the lower smoothed latency, then the shorter path, then the origin id. A current best is kept
unless a challenger beats it by the hysteresis margins below — so two nearly equal routes do not
trade places on every update.

Export: every local model, and the best learned route per model, re-signed with this router's hop,
except (split horizon) back to the peer it came from, to a peer already on its path, or — within
one domain — a route learned from a same-domain peer, unless this router is a route reflector.
"""
import math
from dataclasses import dataclass, field

from .routes import Route, check, extend, originate

# A route whose origin reports health below this is used only when nothing healthy is left: the
# origin's breaker is half-open or errors are frequent (health is 1 - recent error rate, 0 when open).
HEALTHY_MIN = 0.5
# Hysteresis: a challenger replaces the current best only if it is at least 5% cheaper, or (at a
# price within 5%) at least 20% faster, or (within both) has a shorter path. Measured latency EWMAs on loopback move by ~10% between
# updates; 20% keeps equal routes from flapping while a real improvement still wins.
PRICE_MARGIN = 0.05
LATENCY_MARGIN = 0.20
# EWMA weight of a new latency report: 0.3 averages over roughly the last three updates.
LATENCY_ALPHA = 0.3
# Flap damping after RFC 2439's defaults (penalty 1000 per withdrawal, 500 per attribute change,
# suppress above 2000, reuse below 750), with a half-life of 30 s instead of 15 min: model routes
# change with load, and a suppressed route should be back within a minute of settling.
PENALTY_WITHDRAW = 1000.0
PENALTY_CHANGE = 500.0
SUPPRESS_ABOVE = 2000.0
REUSE_BELOW = 750.0
HALF_LIFE_S = 30.0
# A route that crossed more routers than this is dropped: a loop the path check missed (a router
# restarted under a new id) dies out instead of circulating.
HOP_LIMIT = 8


@dataclass(slots=True)
class Candidate:
    route: Route
    peer: str
    latency_ms: float                  # smoothed, including the hops
    penalty: float = 0.0
    penalty_at: float = 0.0
    suppressed: bool = False

    def decayed(self, now: float) -> float:
        return self.penalty * math.pow(0.5, (now - self.penalty_at) / HALF_LIFE_S)

    def healthy(self) -> bool:
        return self.route.health >= HEALTHY_MIN

    def price(self) -> float:
        return self.route.total_price_in + self.route.total_price_out


@dataclass(slots=True)
class PeerInfo:
    router_id: str
    domain: str
    reflector: bool = False


@dataclass(slots=True)
class Change:
    """What one input did: the models whose best route changed (re-advertise them)."""
    changed: set = field(default_factory=set)
    dropped: list = field(default_factory=list)    # (model, origin, reason) refused


def _better(c: Candidate, best: Candidate) -> bool:
    """Does challenger `c` beat the current best by enough to replace it?"""
    if c.healthy() != best.healthy():
        return c.healthy()
    cp, bp = c.price(), best.price()
    if cp < bp * (1 - PRICE_MARGIN):
        return True
    if cp > bp * (1 + PRICE_MARGIN):
        return False
    if c.latency_ms < best.latency_ms * (1 - LATENCY_MARGIN):
        return True
    if c.latency_ms > best.latency_ms * (1 + LATENCY_MARGIN):
        return False
    # equal within both margins: fewer routers in the way (fewer places to fail, less overhead)
    return len(c.route.path) < len(best.route.path)


def _rank(c: Candidate) -> tuple:
    return (not c.healthy(), c.price(), c.latency_ms, len(c.route.path), c.route.origin, c.peer)


class Rib:
    def __init__(self, router_id: str, domain: str, key, trust: dict, *, reflector: bool = False,
                 overhead_per_mtok: float = 0.0, hop_latency_ms: float = 0.0,
                 hop_limit: int = HOP_LIMIT):
        self.router_id, self.domain, self.key, self.trust = router_id, domain, key, trust
        self.reflector = reflector
        self.overhead_per_mtok, self.hop_latency_ms = overhead_per_mtok, hop_latency_ms
        self.hop_limit = hop_limit
        self.local: dict[str, Route] = {}                  # model -> our own signed route
        self.peers: dict[str, PeerInfo] = {}
        self.adj_in: dict[str, dict[tuple, Candidate]] = {}   # peer -> (model, origin) -> cand
        self.best: dict[str, Candidate] = {}               # model -> selected learned route
        # (peer, (model, origin)) -> (penalty, at) of a withdrawn route: a re-announcement starts
        # from it, which is what makes a flapping route's penalty grow. Pruned once decayed.
        self._tombstones: dict[tuple, tuple[float, float]] = {}
        self._seq = 0

    # ---- local models ----------------------------------------------------------------------------

    def originate(self, route: Route, now_ms: int) -> Change:
        """Advertise (or update) a model this router serves itself."""
        self._seq += 1
        self.local[route.model] = originate(self.key, Route(
            route.model, self.router_id, tuple(route.capabilities), route.price_in_per_mtok,
            route.price_out_per_mtok, route.latency_ms, route.health, route.capacity,
            self._seq, now_ms))
        return Change({route.model})

    def unoriginate(self, model: str) -> Change:
        return Change({model}) if self.local.pop(model, None) is not None else Change()

    # ---- peers -----------------------------------------------------------------------------------

    def peer_up(self, peer: PeerInfo) -> None:
        self.peers[peer.router_id] = peer
        self.adj_in.setdefault(peer.router_id, {})

    def peer_down(self, peer_id: str, now: float) -> Change:
        """Forget everything the peer advertised (hold time expired, session closed)."""
        self.peers.pop(peer_id, None)
        gone = self.adj_in.pop(peer_id, {})
        return self._reselect({model for model, _ in gone}, now)

    # ---- input from a peer -----------------------------------------------------------------------

    def learn(self, peer_id: str, routes, now: float) -> Change:
        change = Change()
        table = self.adj_in.get(peer_id)
        if table is None:
            change.dropped += [(r.model, r.origin, "no session with this peer") for r in routes]
            return change
        touched = set()
        for r in routes:
            reason = self._refuse(peer_id, r)
            if reason is not None:
                change.dropped.append((r.model, r.origin, reason))
                continue
            old = table.get(r.key)
            if old is not None and r.seq <= old.route.seq:
                continue                                      # stale or repeated
            latency = r.total_latency_ms
            if old is None:
                cand = table[r.key] = Candidate(r, peer_id, latency)
                stone = self._tombstones.pop((peer_id, r.key), None)
                if stone is not None:   # back after a withdrawal: it keeps its flap penalty
                    cand.penalty, cand.penalty_at = stone
            else:
                old.latency_ms = LATENCY_ALPHA * latency + (1 - LATENCY_ALPHA) * old.latency_ms
                if self._changed(old.route, r):
                    self._penalise(old, PENALTY_CHANGE, now)
                old.route = r
            touched.add(r.model)
        sel = self._reselect(touched, now)
        change.changed |= sel.changed
        return change

    def withdraw(self, peer_id: str, keys, now: float) -> Change:
        table = self.adj_in.get(peer_id, {})
        touched = set()
        for key in keys:
            cand = table.pop(tuple(key), None)
            if cand is not None:
                touched.add(cand.route.model)
                self._tombstones[(peer_id, cand.route.key)] = (
                    cand.decayed(now) + PENALTY_WITHDRAW, now)
        return self._reselect(touched, now)

    def _refuse(self, peer_id: str, r: Route) -> str | None:
        if r.origin == self.router_id or self.router_id in r.path:
            return "loop: this router is already on the path"
        if len(r.path) > self.hop_limit:
            return f"over the hop limit ({self.hop_limit})"
        return check(r, peer_id, self.trust)

    @staticmethod
    def _changed(old: Route, new: Route) -> bool:
        return (old.health != new.health or old.price_in_per_mtok != new.price_in_per_mtok
                or old.price_out_per_mtok != new.price_out_per_mtok or old.hops != new.hops)

    def _penalise(self, c: Candidate, amount: float, now: float) -> None:
        c.penalty, c.penalty_at = c.decayed(now) + amount, now

    # ---- selection -------------------------------------------------------------------------------

    def _candidates(self, model: str, now: float) -> list[Candidate]:
        out = []
        for peer_id, table in self.adj_in.items():
            for (m, origin), c in table.items():
                if m == model and not self._suppress(c, now):
                    out.append(c)
        return out

    @staticmethod
    def _suppress(c: Candidate, now: float) -> bool:
        """Damping with two thresholds: suppressed above SUPPRESS_ABOVE, until below REUSE_BELOW."""
        p = c.decayed(now)
        c.suppressed = p > SUPPRESS_ABOVE or (c.suppressed and p > REUSE_BELOW)
        return c.suppressed

    def _reselect(self, models, now: float) -> Change:
        change = Change()
        for model in models:
            cands = self._candidates(model, now)
            current = self.best.get(model)
            if current is not None and current not in cands:
                current = None                                 # withdrawn or suppressed
            top = min(cands, key=_rank) if cands else None
            if current is None:
                chosen = top
            elif top is not None and top is not current and _better(top, current):
                chosen = top
            else:
                chosen = current
            if chosen is None:
                if self.best.pop(model, None) is not None:
                    change.changed.add(model)
            else:
                # a new best, or the same one with new attributes: re-advertise either way
                self.best[model] = chosen
                change.changed.add(model)
        return change

    def reevaluate(self, now: float) -> Change:
        """Let decayed penalties release suppressed routes (call every few seconds)."""
        for k, (penalty, at) in list(self._tombstones.items()):
            if penalty * math.pow(0.5, (now - at) / HALF_LIFE_S) < 1.0:
                del self._tombstones[k]
        models = {m for table in self.adj_in.values() for (m, _) in table}
        return self._reselect(models, now)

    # ---- output to a peer ------------------------------------------------------------------------

    def export_for(self, peer_id: str, models=None) -> tuple[list[Route], list[str]]:
        """(routes to advertise, models with nothing to advertise) for `peer_id`, over `models`
        (all when None). What the peer last heard — hence what to withdraw — the session keeps."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return [], []
        names = set(self.local) | set(self.best) if models is None else set(models)
        routes, withdraw = [], []
        for model in sorted(names):
            local = self.local.get(model)
            if local is not None:
                routes.append(local)
                continue
            c = self.best.get(model)
            if c is None or not self._may_send(c, peer):
                withdraw.append(model)
                continue
            routes.append(extend(self.key, c.route, self.router_id, self.overhead_per_mtok,
                                 self.hop_latency_ms))
        return routes, withdraw

    def _may_send(self, c: Candidate, peer: PeerInfo) -> bool:
        if c.peer == peer.router_id or peer.router_id in c.route.path:
            return False                                   # split horizon, loop
        learned_from = self.peers.get(c.peer)
        same_domain_source = learned_from is not None and learned_from.domain == self.domain
        if same_domain_source and peer.domain == self.domain and not self.reflector:
            return False                                   # iBGP rule: only reflectors reflect
        return len(c.route.path) + 1 <= self.hop_limit

    # ---- reading -----------------------------------------------------------------------------------

    def routes(self, now: float) -> list[tuple[Candidate, bool]]:
        """Every learned candidate with whether it is the best for its model."""
        return [(c, (self._suppress(c, now), self.best.get(c.route.model) is c)[1])
                for table in self.adj_in.values() for c in table.values()]

"""Forwarding (docs/FEDERATION.md §8): models only a remote router serves become routing rows of
the "federation" adapter, which carries each request to the route's next hop over an ATP session.

The edge router's whole stage chain runs as for a local model — authentication, policy, limits and
budget reservation before, redaction, settlement and audit after — because the remote model is an
ordinary row of the table whose adapter happens to be another router. What this module adds:

- rows: on every change of the RIB's best routes, a ModelSpec per remote model (the route's price
  with every hop's overhead, its smoothed latency, its capabilities) joins the configured models;
  a model that loses its last route stays a row for STALE_GRACE_S (requests routed to it just
  before answer UNAVAILABLE, not an internal error) and is then dropped;
- next hops: the best route's peer first, then every other usable route's peer (best ranked
  first) — a hop whose session fails before the first item is skipped for the next one, so a
  dead router costs no client an error while another route exists;
- the hop limit and loop check: a forwarded request carries `atp-hops` (routers that forwarded
  it) and `atp-path` (their ids, comma-separated) in its metadata; a router refuses to forward one
  whose path holds itself or that would cross more than HOP_LIMIT routers (NO_ROUTE);
- the path in the decision's reasons: "federation path A>B>C" (this router first, the origin last).
"""
import asyncio
import logging
import time
from contextlib import aclosing

from codec.errors import ErrorCode

from ..routing.spec import ModelSpec
from ..tracing.context import TRACEPARENT, TRACESTATE, UPSTREAM_TRACE
from ..types import AtpError, ChatRequest, Finish, TextDelta
from .hop import HopClient
from .rib import HOP_LIMIT, _rank

log = logging.getLogger("atp.federation")

FEDERATED = "federation"          # the provider name of every remote row (reserved)
HOPS_KEY, PATH_KEY = "atp-hops", "atp-path"
# A withdrawn model's row outlives its last route by this long, so a request routed to it in the
# instant before still finds the row (and a clear UNAVAILABLE); re-learned within it, nothing moved.
STALE_GRACE_S = 30.0
# What a frame REQUEST can carry (docs/PROTOCOL.md §6): chat and streaming. A request needing
# tools, a JSON schema or images is never routed to a remote row rather than silently stripped.
FORWARDABLE = frozenset({"chat", "streaming", "long_context"})
# Routes advertise no context window: a remote row admits up to this many tokens and the origin
# router, which knows its model, refuses what does not fit with a precise code.
REMOTE_CONTEXT = 1 << 20
# Routes advertise no quality: a remote row starts at the neutral prior, and the bandit learns
# its quality from the answers and feedback like any other row's.
REMOTE_QUALITY = 0.5


def incoming(request: ChatRequest) -> tuple[int, tuple[str, ...]]:
    """(routers that forwarded `request` so far, their ids) from its metadata."""
    meta = request.metadata
    raw = meta.get(HOPS_KEY) if meta else None
    if raw is None:
        return 0, ()
    if not raw.isdigit() or len(raw) > 3:
        raise AtpError(ErrorCode.INVALID_REQUEST, f"metadata.{HOPS_KEY}: must be a small "
                       f"non-negative integer, got {raw[:20]!r}")
    path = tuple(p for p in meta.get(PATH_KEY, "").split(",") if p)
    return int(raw), path


class FederatedAdapter:
    """The adapter of every remote row: forwards to a next hop, trying the next on failure."""

    name = FEDERATED
    capabilities = frozenset({"chat", "streaming"})

    def __init__(self, forwarding: "Forwarding"):
        self.forwarding = forwarding

    async def stream(self, model: ModelSpec, request: ChatRequest):
        async with aclosing(self.forwarding.forward(model.id, request, True)) as items:
            async for item in items:
                yield item

    async def complete(self, model: ModelSpec, request: ChatRequest):
        parts, finish = [], None
        async with aclosing(self.forwarding.forward(model.id, request, False)) as items:
            async for item in items:
                if type(item) is TextDelta:
                    parts.append(item.text)
                else:
                    finish = item
        return "".join(parts), finish

    async def aclose(self) -> None:
        await self.forwarding.aclose()


class Forwarding:
    """This router's data plane of the federation: remote rows, next hops, the hop sessions."""

    def __init__(self, cfg, router, local_models, clock):
        self.router_id = cfg.router_id
        self.router = router
        self.clock = clock
        self.local = list(local_models)
        self._local_ids = {m.id for m in self.local}
        self.clients = {f.router_id: HopClient(f.router_id, f.address, f.key_id, f.secret)
                        for f in cfg.forward}
        self.rib = None
        self.remote: dict[str, ModelSpec] = {}     # the remote rows in the table now
        self.gone: dict[str, float] = {}           # model -> when its last route went
        self.paths: dict[str, str] = {}            # model -> "federation path A>B>C"
        self.adapter = FederatedAdapter(self)
        self._timer = None
        # Per next hop (router ids: bounded by the trust store): when a request last went to it
        # first, and how many requests moved on from it to another hop before their first item.
        self.first_tried_at: dict[str, float] = {}
        self.failovers: dict[str, int] = {}

    # ---- the control plane's side --------------------------------------------------------------

    def attach(self, link) -> None:
        """Follow the link's RIB: rebuild the remote rows whenever a best route changes."""
        self.rib = link.node.rib
        link.listeners.append(self._on_event)
        self.rebuild()

    def _on_event(self, e) -> None:
        if e.kind == "best_changed":
            self.rebuild()

    def rebuild(self) -> None:
        now = self.clock()
        rows, paths = {}, {}
        for model, c in self.rib.best.items():
            if model in self._local_ids:
                continue                 # a model served here is served here (see FEDERATION §8)
            r = c.route
            rows[model] = ModelSpec(model, FEDERATED, model, r.total_price_in, r.total_price_out,
                                    REMOTE_CONTEXT, frozenset(r.capabilities) & FORWARDABLE | {"chat"},
                                    REMOTE_QUALITY, c.latency_ms)
            paths[model] = "federation path " + ">".join((self.router_id,) + r.path)
        for model, spec in self.remote.items():
            if model not in rows:
                at = self.gone.setdefault(model, now)
                if now - at < STALE_GRACE_S:
                    rows[model] = spec
                    paths[model] = self.paths.get(model, "federation path (withdrawn)")
        for model in list(self.gone):
            if model not in rows or model in self.rib.best:
                del self.gone[model]
        self.paths.clear()
        self.paths.update(paths)         # in place: annotate()'s closure reads this dict
        if rows != self.remote:
            self.remote = rows
            self.router.set_models(self.local + [rows[m] for m in sorted(rows)])
        self._arm()

    def _arm(self) -> None:
        """Drop stale rows when their grace ends even if no route event comes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.gone:
            due = min(self.gone.values()) + STALE_GRACE_S - self.clock()
            self._timer = asyncio.get_running_loop().call_later(max(0.0, due) + 0.01, self.rebuild)

    def annotate(self, choose):
        """Wrap Router.choose: a decision for a remote row gets its path as a reason (one dict
        lookup per request; not installed at all without [federation])."""
        paths = self.paths

        def choose_with_path(request, now):
            d = choose(request, now)
            reason = paths.get(d.model)
            if reason is not None:
                d = d._replace(reasons=d.reasons + (reason,))
            return d
        return choose_with_path

    def _moved_note(self, model: str, hop: str, tried: list) -> str:
        """The reason an answer from a later next hop carries: the routing decision named the
        best route's path, this says which one answered and why."""
        path = next((c.route.path for c in self.rib._candidates(model, self.clock())
                     if c.peer == hop), (hop,)) if self.rib is not None else (hop,)
        failed = ", ".join(t.split(":", 1)[0] for t in tried)
        return (f"federation: answered through {hop} (path {'>'.join((self.router_id,) + tuple(path))}); "
                f"{failed} failed before the first byte")

    def next_hops(self, model: str) -> list[str]:
        """Peers to try for `model`: the best route's first, then the others by rank."""
        if self.rib is None:
            return []
        best = self.rib.best.get(model)
        others = sorted((c for c in self.rib._candidates(model, self.clock()) if c is not best),
                        key=_rank)
        hops = []
        for c in ([best] if best is not None else []) + others:
            if c.peer not in hops:
                hops.append(c.peer)
        return hops

    # ---- the data plane ----------------------------------------------------------------------------

    def payload(self, model: str, request: ChatRequest, stream: bool) -> dict:
        """The REQUEST for the next hop; NO_ROUTE when forwarding would loop or pass the hop limit."""
        hops, path = incoming(request)
        if self.router_id in path:
            raise AtpError(ErrorCode.NO_ROUTE, f"{model}: forwarding loop, router {self.router_id} "
                           f"is already on the path {'>'.join(path)}")
        if hops + 1 > HOP_LIMIT:
            raise AtpError(ErrorCode.NO_ROUTE, f"{model}: hop limit reached ({hops} routers "
                           f"forwarded it, at most {HOP_LIMIT})")
        p = {"messages": [[role, text] for role, text in request.messages], "stream": stream,
             "model": model, "tier": request.tier,
             "meta": {HOPS_KEY: str(hops + 1), PATH_KEY: ",".join(path + (self.router_id,))}}
        if request.request_id:
            p["rid"] = request.request_id       # one id across the routers' audit logs
        trace = UPSTREAM_TRACE.get()            # tracing on: the next hop continues this attempt's trace
        if trace is not None:
            p["meta"][TRACEPARENT] = trace.traceparent
            if trace.tracestate:
                p["meta"][TRACESTATE] = trace.tracestate
        for key, value in (("max_tokens", request.max_tokens), ("slo_ms", request.latency_slo_ms),
                           ("temperature", request.temperature)):
            if value is not None:
                p[key] = value
        if request.max_cost_usd is not None:
            p["max_cost"] = int(round(request.max_cost_usd * 1e6))
        return p

    async def forward(self, model: str, request: ChatRequest, stream: bool):
        """Async generator: TextDelta..., one Finish, from the first next hop that answers."""
        payload = self.payload(model, request, stream)
        tried = []
        hops = self.next_hops(model)
        if hops:
            self.first_tried_at[hops[0]] = self.clock()
        for hop in hops:
            client = self.clients.get(hop)
            if client is None:
                tried.append(f"{hop}: no [[federation.forward]] entry")
                continue
            async with aclosing(client.items(payload)) as items:
                try:
                    first = await items.__anext__()
                except AtpError as exc:
                    if not exc.retryable:
                        raise
                    tried.append(f"{hop}: {exc.name}: {exc.message[:200]}")
                    self.failovers[hop] = self.failovers.get(hop, 0) + 1
                    log.info("forward %s: %s failed before the first byte (%s), next hop",
                             request.request_id, hop, exc)
                    continue
                note = self._moved_note(model, hop, tried) if tried else None
                if type(first) is Finish:
                    yield first._replace(route_note=note) if note else first
                    return
                yield first
                async for item in items:
                    yield item._replace(route_note=note) if note and type(item) is Finish else item
                return
        raise AtpError(ErrorCode.UNAVAILABLE, f"{model}: no next hop answered"
                       + (f" ({'; '.join(tried)})" if tried else " (no route left)"),
                       retry_after_ms=1000)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await asyncio.gather(*(c.aclose() for c in self.clients.values()), return_exceptions=True)


def install(cfg, router, adapters: dict) -> Forwarding:
    """Wire forwarding into a server being built (App, before its pipeline): the "federation"
    adapter joins `adapters`, Router.choose gains the path reason. Nothing of it exists without
    [federation]."""
    if FEDERATED in adapters:
        from ..config import ConfigError
        raise ConfigError(f"providers: the name {FEDERATED!r} is reserved for forwarding when "
                          "[federation] is enabled")
    fw = Forwarding(cfg, router, router.models.values(), time.monotonic)
    adapters[FEDERATED] = fw.adapter
    router.choose = fw.annotate(router.choose)
    return fw

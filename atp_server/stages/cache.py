"""Answer a request from the response cache (atp_server/cache.py), or store its answer afterwards.

Last of the befores (after policy, redaction, admission and routing: a hit is still authenticated,
rate-limited, policy-checked and counted against the tenant's slot like any request). Only a
request for which caching applies gets a ticket (`ctx.cache`): `[cache] default = "on"`, or the
request asks (HTTP header `x-atp-cache: on`, frame/gRPC metadata `cache = "on"`); `off` opts out.
Policy decides above both (policy/rules.py CACHE_EFFECTS): a matching `cache` rule opts the
request in (the request's own `off` still opts out), a `no_cache` rule keeps it out whatever was
asked; in dry-run the policy's cache effects are not applied.
On a hit the decision names the cached model with provider `cache` (what the HTTP headers, the
gRPC response and the audit row show), the pipeline answers from the entry instead of dispatching,
the usage keeps the entry's tokens at cost 0, and what it would have cost is the saving (metrics,
the audit row's `cache` field, `atp costs`). A hit on a model this request may not use (policy,
key scope) or no longer configured is a miss.

Streams: a hit is replayed as a stream (the answer in one delta, then the finish). A streamed miss
is not stored — assembling every delta would cost each streamed request on the per-delta path;
the whole (non-streamed) answer of the same request fills the entry, and both then hit it.
"""
import orjson

from ..cache import entry_bytes, request_key
from ..types import Finish, TextDelta, ToolCall
from .base import RequestContext, Stage


class Ticket:
    """A cacheable request's state between before and after."""

    __slots__ = ("tenant", "key", "routed", "entry", "answer", "saved_micros")

    def __init__(self, tenant: str, key: str, routed: str):
        self.tenant, self.key, self.routed = tenant, key, routed
        self.entry = None           # the decoded hit, or None (a miss)
        self.answer = None          # (text, finish, tokens) of a miss, for the store
        self.saved_micros = 0       # a hit: what the same tokens cost upstream now

    def whole(self):
        """(model id, (text, finish, tokens)) of the hit, as a dispatch would return it."""
        e = self.entry
        return e["model"], (e["text"], _finish(e), e["tokens"])

    async def first(self, vault):
        """(model id, (attempt, first item)) of the hit replayed as a stream."""
        from ..redaction import restoring
        up = _replay(self.entry)
        attempt = _Replay(restoring(up, vault) if vault is not None else up)
        return self.entry["model"], (attempt, await attempt.up.__anext__())

    def audit(self) -> dict:
        return {"hit": self.entry is not None, "saved_micros": self.saved_micros}


def _finish(e: dict) -> Finish:
    calls = tuple(ToolCall(*c) for c in e["tool_calls"])
    return Finish(e["reason"], e["in"], e["out"], tool_calls=calls)


async def _replay(e: dict):
    if e["text"]:
        yield TextDelta(e["text"], e["tokens"])
    yield _finish(e)


class _Replay:
    """What the pipeline's stream loop needs of an attempt: `up` and `close(exc)`."""

    __slots__ = ("up",)

    def __init__(self, up):
        self.up = up

    async def close(self, exc) -> None:
        await self.up.aclose()


class CacheStage(Stage):
    name = "cache"

    def __init__(self, config, store, counters, models):
        self.default_on = config.default == "on"
        self.store, self.counters, self.models = store, counters, models

    def before(self, ctx: RequestContext):
        request = ctx.request
        asked = request.metadata.get("cache") if request.metadata else None
        policy = ctx.policy
        says = policy.cache if policy is not None and not policy.dry_run else None
        if says is not None:    # a policy obligation: no_cache beats any ask, an opt-out beats cache
            if says == "off" or asked == "off":
                return None
        elif not (self.default_on if asked is None else asked == "on"):
            return None
        tenant = ctx.principal.tenant
        ticket = ctx.cache = Ticket(tenant, request_key(tenant, request), ctx.decision.model)
        found = self.store.get(tenant, ticket.key)
        if self.store.shared:
            return self._lookup(ctx, found)
        self._hit(ctx, found)
        return None

    async def _lookup(self, ctx: RequestContext, pending) -> None:
        self._hit(ctx, await pending)

    def _hit(self, ctx: RequestContext, raw: bytes | None) -> None:
        if raw is None:
            return
        entry = orjson.loads(raw)
        model = entry["model"]
        policy, allowed = ctx.policy, ctx.principal.models
        if (model not in self.models or (allowed is not None and model not in allowed)
                or (policy is not None and policy.models is not None and not policy.dry_run
                    and model not in policy.models)):
            return
        ctx.cache.entry = entry
        spec, d = self.models[model], ctx.decision
        ctx.decision = d._replace(provider="cache", model=model, fallbacks=(),
                                  estimated_cost_usd=0.0, estimated_latency_ms=0.0,
                                  reasons=d.reasons + (f"cache hit (answered by {spec.id})",))

    def after(self, ctx: RequestContext, outcome: str) -> None:
        ticket, c = ctx.cache, self.counters
        if ticket is None:
            return
        if ticket.entry is not None:
            c.hits += 1
            c.saved_micros += ticket.saved_micros
            return
        c.misses += 1
        if ctx.code == 0 and ticket.answer is not None:
            text, finish, tokens = ticket.answer
            if self.store.put(ticket.tenant, ticket.key,
                              entry_bytes(ctx.decision.model, text, finish, tokens)):
                c.stored += 1


def hit_usage(ticket: Ticket, usage):
    """A hit's usage: the entry's tokens at cost 0; what they cost now is the saving."""
    ticket.saved_micros = usage.cost_usd_micros
    return usage._replace(cost_usd_micros=0)

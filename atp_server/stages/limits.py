"""Rate limits, concurrency caps and USD budgets per tenant, key and model: take before, settle after.

`before` takes one request from every requests/min bucket that applies, the request's most
possible tokens from every tokens/min bucket, a slot of every concurrency gauge, and reserves the
request's most possible cost from every daily/monthly budget — all or nothing, in the state store
(atp_server/state/: memory, or Redis shared by workers). `after` runs whatever the outcome: it
refunds the tokens not used, releases the slots and settles each budget with the actual cost (0
after an error or a cancel, which releases the reservation). Since every request holds its most
possible cost while it runs, concurrent requests — coroutines, workers, hosts — cannot together
spend past a budget.

The most possible cost bounds the prompt by its UTF-8 length (a token covers at least one byte,
byte-fallback tokenizers included) plus chat-template tokens, and the answer by max_tokens (or
the model's max_output_tokens), priced at the priciest model the request could be routed to.
That over-reserves input about 4x for English; input is the cheaper side of most price lists, and
a bound that can be exceeded would let concurrent requests overspend.
"""
import logging
import time
from calendar import monthrange
from dataclasses import dataclass

from codec.errors import ErrorCode

from ..routing.spec import estimate_tokens
from ..state import Bucket, Gauge, Hold
from ..types import AtpError
from .base import RequestContext, Stage

log = logging.getLogger("atp.limits")

# Chat templates wrap each message in role markers (~4-6 tokens in common templates) and the
# conversation in a few more (BOS, generation prompt); generous, since the bound must hold.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS = 16
# A concurrency slot frees when some request ends; a short completion takes about this long.
CONCURRENCY_RETRY_MS = 250
# Budget keys outlive their period by this much, so a request still running when the day ends
# settles on the key it reserved on rather than on a recreated one.
PERIOD_GRACE_S = 3600
# Plans are cached per (tenant, key, model); all three come from credentials and configuration,
# the bound is a guard should a future credential source (JWT) bring many distinct subjects.
PLAN_CACHE = 4096
_DAY_S = 86400


@dataclass(frozen=True, slots=True)
class LimitEvent:
    """A limit passed its soft threshold, or refused a request (hard). Logged once per window
    per (rule, limit, subject) and handed to the stage's listeners; counted every time."""

    rule: str
    limit: str          # one of limits_config.LIMIT_KINDS
    scope: str          # tenant | key | model
    subject: str        # the tenant, key name or model id
    level: str          # soft | hard
    used: float         # requests, tokens, or USD, as the limit counts
    allowed: float


@dataclass(frozen=True, slots=True)
class _Item:
    """One limit of one rule for one subject (what a LimitEvent names)."""

    rule: str
    limit: str
    scope: str
    subject: str
    allowed: float
    soft: float


class _Plan:
    """The limits that apply to one (tenant, key, model): built once, reused per request."""

    __slots__ = ("rpm", "rpm_items", "tpm", "tpm_items", "gauges", "gauge_items", "budgets",
                 "budget_items", "empty", "buckets", "rate_items", "rpm_costs", "holds")

    def __init__(self):
        self.rpm, self.rpm_items = [], []          # Buckets, 1 per request
        self.tpm, self.tpm_items = [], []          # Buckets, the request's token bound
        self.gauges, self.gauge_items = [], []
        self.budgets, self.budget_items = [], []   # (key prefix, "day"|"month", limit micros)
        self.holds = (None, (), ())                # (day number, Holds, period ends) of that day

    def freeze(self) -> "_Plan":
        for name in self.__slots__[:8]:
            setattr(self, name, tuple(getattr(self, name)))
        self.empty = not (self.rpm or self.tpm or self.gauges or self.budgets)
        self.buckets, self.rate_items = self.rpm + self.tpm, self.rpm_items + self.tpm_items
        self.rpm_costs = (1,) * len(self.rpm)
        return self


def _byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())   # isascii is O(1) in CPython


class LimitsStage(Stage):
    name = "limits"

    def __init__(self, rules, stores, models: dict, clock=time.time):
        self.rules = tuple(rules)
        self.stores = stores
        self.counters, self.budgets = stores.counters, stores.budgets
        self._plans: dict[tuple, _Plan] = {}
        # budget _Item -> USD left after the last admission on it (reservations in flight count
        # as spent); bounded like the plans, cleared past PLAN_CACHE items
        self.remaining: dict[_Item, float] = {}
        self.set_models(models)
        self.wall_clock = clock                         # wall, not monotonic: shared, and periods are dates
        self._held: dict[RequestContext, tuple] = {}    # at most one per in-flight request
        self._quiet_until: dict[tuple, float] = {}      # log/listener de-duplication
        self._period = (None, None)                     # (day number, (day id, end, month id, end))
        self.listeners: list = []                       # fn(LimitEvent), for alerts and tests
        self.counts: dict[tuple, int] = {}              # (rule, limit, level) -> events
        self.overshoot_micros = 0                       # actual cost beyond what was reserved

    def set_rules(self, rules) -> None:
        """Put new [[limits]] in force (a reload, the admin API): the plans cached per (tenant,
        key, model) are rebuilt from them; counters and reservations already held stay."""
        self.rules = tuple(rules)
        self._plans.clear()

    # ---- the plan for a request -----------------------------------------------------------------

    def _plan(self, tenant: str, key: str, model: str | None) -> _Plan:
        plan = _Plan()
        subjects = {"tenant": tenant, "key": key, "model": model}
        for r in self.rules:
            subject = subjects[r.scope]
            if subject is None or (r.match and r.match != subject):
                continue
            tag = f"{r.name}:{subject}"
            item = lambda limit, allowed: _Item(r.name, limit, r.scope, subject, allowed, r.soft)
            if r.requests_per_min:
                plan.rpm.append(Bucket(f"rpm:{tag}", r.requests_per_min, r.requests_per_min / 60))
                plan.rpm_items.append(item("requests_per_min", r.requests_per_min))
            if r.tokens_per_min:
                plan.tpm.append(Bucket(f"tpm:{tag}", r.tokens_per_min, r.tokens_per_min / 60))
                plan.tpm_items.append(item("tokens_per_min", r.tokens_per_min))
            if r.concurrent:
                plan.gauges.append(Gauge(f"conc:{tag}", r.concurrent))
                plan.gauge_items.append(item("concurrent", r.concurrent))
            for period, usd in (("day", r.usd_per_day), ("month", r.usd_per_month)):
                if usd:
                    plan.budgets.append((f"usd:{tag}:", period, round(usd * 1e6)))
                    plan.budget_items.append(item(f"usd_per_{period}", usd))
        return plan.freeze()

    def _periods(self, now: float) -> tuple:
        """(day id, day end, month id, month end) in UTC, recomputed once a day."""
        day = int(now // _DAY_S)
        if self._period[0] != day:
            t = time.gmtime(day * _DAY_S)
            month_end = (day + monthrange(t.tm_year, t.tm_mon)[1] - t.tm_mday + 1) * _DAY_S
            self._period = (day, (f"{t.tm_year}-{t.tm_mon:02}-{t.tm_mday:02}", (day + 1) * _DAY_S,
                                  f"{t.tm_year}-{t.tm_mon:02}", month_end))
        return self._period[1]

    def _holds(self, plan: _Plan, now: float) -> tuple:
        """The plan's budget Holds for today, and when each one's period ends (cached per day)."""
        day = int(now // _DAY_S)
        if plan.holds[0] != day:
            day_id, day_end, month_id, month_end = self._periods(now)
            holds, ends = [], []
            for prefix, period, limit in plan.budgets:
                end = day_end if period == "day" else month_end
                # the TTL runs from the first reservation: up to a day late at most, harmless
                holds.append(Hold(prefix + (day_id if period == "day" else month_id), limit,
                                  int(end - day * _DAY_S) + PERIOD_GRACE_S))
                ends.append(end)
            plan.holds = (day, tuple(holds), tuple(ends))
        return plan.holds[1], plan.holds[2]

    def set_models(self, models: dict) -> None:
        """The models a request can go to (id -> ModelSpec), at start and whenever the router's
        table changes (Router.on_models: admin API, federation rows): bounds price them all."""
        self.models = models
        self._all_models = tuple(models.values())
        # (price in, price out, max output) per model, and all of them: read per request
        self._prices = {m.id: ((m.price_in_per_mtok, m.price_out_per_mtok, m.max_output_tokens),)
                        for m in self._all_models}
        self._all_prices = tuple(p for (p,) in self._prices.values())
        self._plans.clear()                             # a plan names its model's limits

    def max_cost_micros(self, request) -> int:
        """The most this request can cost on any model it could be routed to (module docstring)."""
        prompt_bound = (sum(_byte_len(c) for _, c in request.messages)
                        + TEMPLATE_TOKENS_PER_MESSAGE * len(request.messages) + TEMPLATE_TOKENS)
        cap = request.max_tokens
        most = 0.0
        for price_in, price_out, max_out in self._prices.get(request.model, self._all_prices):
            cost = prompt_bound * price_in + (min(cap, max_out) if cap else max_out) * price_out
            if cost > most:
                most = cost
        return round(most)      # as ModelSpec.cost_micros rounds: the bound and the actual agree

    # ---- before / after -------------------------------------------------------------------------

    def before(self, ctx: RequestContext):
        p, request = ctx.principal, ctx.request
        model = request.model if request.model in self.models else None
        plan_key = (p.tenant, p.name, model)
        plan = self._plans.get(plan_key)
        if plan is None:
            if len(self._plans) >= PLAN_CACHE:
                self._plans.clear()
            plan = self._plans[plan_key] = self._plan(p.tenant, p.name, model)
        if plan.empty:
            return None
        return self._enter(ctx, plan)

    async def _enter(self, ctx: RequestContext, plan: _Plan) -> None:
        request, now = ctx.request, self.wall_clock()
        buckets, costs, tokens = plan.buckets, plan.rpm_costs, 0
        if plan.tpm:
            model = self.models.get(request.model) if request.model else None
            out = request.max_tokens or max(m.max_output_tokens for m in
                                            ((model,) if model else self._all_models))
            tokens = estimate_tokens(request.prompt_chars()) + out
            for bucket, item in zip(plan.tpm, plan.tpm_items):
                if tokens > bucket.capacity:
                    raise AtpError(ErrorCode.INVALID_REQUEST, f"limits.{item.rule}: the request may "
                                   f"use {tokens} tokens, more than tokens_per_min "
                                   f"{bucket.capacity} allows at all; lower max_tokens or shorten "
                                   "the prompt")
            costs += (tokens,) * len(plan.tpm)
        holds, ends, cost = (), (), 0
        if plan.budgets:
            cost = self.max_cost_micros(request)
            if request.max_tokens is None and request.model in self.models:
                # Pinned: make the bound binding upstream too (an adapter may send no cap otherwise).
                request.max_tokens = self.models[request.model].max_output_tokens
            holds, ends = self._holds(plan, now)
        got = await self.stores.admit(buckets, costs, now, plan.gauges, holds, cost)
        if got.refused is not None:
            self._refuse(plan, got, cost, ends, now)
        if got.levels is not None:
            self._soft_rates(plan, got.levels, now)
        if got.totals is None:    # the store failed open: nothing reserved, nothing to settle
            holds, cost = (), 0
        else:
            remaining = self.remaining
            if len(remaining) >= PLAN_CACHE:
                remaining.clear()
            for item, total, end in zip(plan.budget_items, got.totals, ends):
                remaining[item] = item.allowed - total / 1e6
                if total / 1e6 > item.allowed * item.soft:
                    self._event(item, "soft", total / 1e6, now, end - now)
        self._held[ctx] = (plan.tpm if got.levels is not None else (), tokens,
                           plan.gauges if got.held else (), holds, cost)

    def _refuse(self, plan: _Plan, got, cost: int, ends, now: float):
        """Raise the refusal `admit` reported, counted and (once a window) logged."""
        index = got.denial.index
        if got.refused == "rate":
            item = plan.rate_items[index]
            self._event(item, "hard", item.allowed, now, 60)
            raise AtpError(ErrorCode.RATE_LIMITED, f"{item.scope} {item.subject!r}: {item.limit} "
                           f"{item.allowed:g} reached (limits.{item.rule})",
                           got.denial.retry_after_ms)
        if got.refused == "gauge":
            item = plan.gauge_items[index]
            self._event(item, "hard", item.allowed, now, 60)
            raise AtpError(ErrorCode.RATE_LIMITED, f"{item.scope} {item.subject!r}: "
                           f"{item.allowed:g} concurrent requests already running "
                           f"(limits.{item.rule})", CONCURRENCY_RETRY_MS)
        item, end = plan.budget_items[index], ends[index]
        self._event(item, "hard", item.allowed, now, end - now)
        raise AtpError(ErrorCode.BUDGET_EXCEEDED, f"{item.scope} {item.subject!r}: "
                       f"{item.limit} ${item.allowed:g} would be exceeded by this request "
                       f"(up to ${cost / 1e6:.6f}; limits.{item.rule})",
                       max(1, int((end - now) * 1000)))

    def after(self, ctx: RequestContext, outcome: str) -> None:
        held = self._held.pop(ctx, None)
        if held is None:
            return
        tpm, tokens, gauges, holds, cost = held
        usage = ctx.usage
        refund, amounts = (), ()
        if tpm:
            used = usage.input_tokens + usage.output_tokens if usage is not None else 0
            if tokens > used:
                refund, amounts = tpm, (tokens - used,) * len(tpm)
        actual = 0
        if holds:
            actual = usage.cost_usd_micros if usage is not None else 0
            if actual > cost:     # the provider went past the cap it was given: recorded anyway
                self.overshoot_micros += actual - cost
                log.warning("limits: request %s cost %d micros, %d more than reserved",
                            ctx.request.request_id, actual, actual - cost)
        if refund or gauges or holds:     # all of it in one store call (one script on Redis)
            self.stores.finish(refund, amounts, gauges, holds, cost, actual)

    # ---- alerts ---------------------------------------------------------------------------------

    def _soft_rates(self, plan: _Plan, levels, now: float) -> None:
        for item, bucket, left in zip(plan.rate_items, plan.buckets, levels):
            used = bucket.capacity - left
            if used > bucket.capacity * item.soft:
                self._event(item, "soft", used, now, 60)

    def _event(self, item: _Item, level: str, used: float, now: float, quiet_s: float) -> None:
        """Count it; log it and tell the listeners unless it was told within `quiet_s`."""
        count_key = (item.rule, item.limit, level)
        self.counts[count_key] = self.counts.get(count_key, 0) + 1
        quiet_key = (item, level)
        if self._quiet_until.get(quiet_key, 0.0) > now:
            return
        self._quiet_until[quiet_key] = now + quiet_s
        event = LimitEvent(item.rule, item.limit, item.scope, item.subject, level, used, item.allowed)
        log.warning("limit %s: %s %r at %g of %s %g (limits.%s)", level, item.scope, item.subject,
                    used, item.limit, item.allowed, item.rule)
        for listener in self.listeners:
            listener(event)


class LimitsCollector:
    """Prometheus families for the stage (labels: configured rule names and fixed words; the
    budget's subject — a tenant, key or model — only when /metrics needs a scrape token)."""

    def __init__(self, stage: LimitsStage, per_subject: bool = False, max_subjects: int = 1000):
        self.stage = stage
        self.per_subject = per_subject
        self.max_subjects = max_subjects     # [metrics] max_label_values

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        events = CounterMetricFamily("atp_limit_events", "Soft-limit alerts and hard-limit "
                                     "refusals by rule and limit", labels=["rule", "limit", "level"])
        for labels, value in list(self.stage.counts.items()):
            events.add_metric(list(labels), value)
        yield events
        left = GaugeMetricFamily("atp_budget_remaining_usd", "USD left in a budget period as of "
                                 "its last admission (reservations in flight count as spent); "
                                 "subject \"\" = the tightest of the rule's subjects not shown by name",
                                 labels=["rule", "limit", "scope", "subject"])
        tightest: dict[tuple, float] = {}
        # the tightest budgets keep their subject (the least left: what needs watching); past
        # the cap, each rule's tightest of the rest is shown without one
        items = sorted(self.stage.remaining.items(), key=lambda kv: kv[1])
        for n, (item, usd) in enumerate(items):
            if self.per_subject and n < self.max_subjects:
                left.add_metric([item.rule, item.limit, item.scope, item.subject], usd)
                continue
            key = (item.rule, item.limit, item.scope)    # an open /metrics shows no tenant's spend
            tightest[key] = min(usd, tightest.get(key, usd))
        for (rule, limit, scope), usd in tightest.items():
            left.add_metric([rule, limit, scope, ""], usd)
        yield left
        yield CounterMetricFamily("atp_budget_overshoot_usd_micros", "Actual cost beyond the "
                                  "reservation (a provider ignored its max_tokens)",
                                  value=self.stage.overshoot_micros)
        failures = GaugeMetricFamily("atp_state_store_failures", "Calls to the shared state store "
                                     "that failed or were skipped while it was down",
                                     labels=["store"])
        for name, store in (("limits", self.stage.counters), ("budgets", self.stage.budgets)):
            guard = getattr(store, "guard", None)
            failures.add_metric([name], guard.failures if guard is not None else 0)
        yield failures

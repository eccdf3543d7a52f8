"""The in-process event bus: what happened (a model failed, a breaker opened, a budget ran out), for the dashboard and webhooks.

Publishers call `publish(name, **fields)`; with no subscriber that is one truth test. Subscribers
are plain functions fn(name, fields) run synchronously and must be cheap (append to a bounded
queue): the webhook dispatcher and the live statistics' recent-events list are the two.

The events and where they come from:

| event                    | published by                                                          |
|--------------------------|-----------------------------------------------------------------------|
| model.selected           | live.LiveStats.record: the first routed request of each second, with  |
|                          | the previous second's request count (sampled, see below)              |
| model.failed             | logs.event("failover"): an attempt failed and the request moved on    |
| breaker.opened / .closed | logs.event("circuit"): the health board's transitions                 |
| policy.denied            | policy.PolicyHolder.enforce, on a denial it enforces                  |
| budget.exhausted         | the limits stage's listeners: a usd_per_day/month limit refused       |
| cost.threshold_exceeded  | a budget passing its soft threshold, or [events] cost_per_hour_usd    |
|                          | crossed by the live cost per hour (checked once a second)             |
| resource.pressure_high   | source "admission": admission pressure (slots + queue fill) crossing  |
|                          | [events] pressure; source "memory": resources.py, host memory (PSI,   |
|                          | MemAvailable) steering routing away from local models                 |
| router.promoted / .rolled_back | the router's champion/challenger verdicts                       |

model.selected is sampled, one a second: per request it would be an HTTP delivery per request,
thousands a second, that the bounded webhook queue would mostly drop anyway; the per-request
record is the access log and the audit log. Any other logs.event() (drain, reload, refusal) is
published under its own name for the dashboard; webhooks subscribe to names from NAMES only.

There is one bus per process (logs.event is module-level); an App subscribes when it starts and
unsubscribes when it stops.
"""
import logging
from dataclasses import dataclass

log = logging.getLogger("atp.events")

NAMES = ("model.selected", "model.failed", "breaker.opened", "breaker.closed",
         "resource.pressure_high", "cost.threshold_exceeded", "budget.exhausted", "policy.denied",
         "router.promoted", "router.rolled_back")


@dataclass(frozen=True, slots=True)
class EventsConfig:
    cost_per_hour_usd: float = 0.0    # cost.threshold_exceeded when the live cost/hour crosses it; 0 = off
    pressure: float = 0.9             # resource.pressure_high when admission fill crosses it


def parse_events(table: dict, fail) -> EventsConfig:
    if not isinstance(table, dict):
        fail("events", "must be a table")
    for key, value in table.items():
        if key not in ("cost_per_hour_usd", "pressure"):
            fail(f"events.{key}", "unknown key (known: cost_per_hour_usd, pressure)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"events.{key}", f"must be a number, got {value!r}")
    cfg = EventsConfig(**{k: float(v) for k, v in table.items()})
    if cfg.cost_per_hour_usd < 0:
        fail("events.cost_per_hour_usd", f"must be >= 0, got {cfg.cost_per_hour_usd}")
    if not 0 < cfg.pressure <= 1:
        fail("events.pressure", f"must be in (0, 1], got {cfg.pressure}")
    return cfg


class Bus:
    def __init__(self):
        self.subscribers: list = []

    def subscribe(self, fn):
        """Add fn(name, fields); returns the function that removes it."""
        self.subscribers.append(fn)
        return lambda: self.subscribers.remove(fn) if fn in self.subscribers else None

    def publish(self, name: str, fields: dict) -> None:
        for fn in list(self.subscribers):
            try:
                fn(name, fields)
            except Exception:     # a subscriber's bug must not fail the request that published
                log.exception("events: subscriber %r failed on %s", fn, name)


BUS = Bus()


def publish(name: str, **fields) -> None:
    if BUS.subscribers:
        BUS.publish(name, fields)


def from_log(name: str, fields: dict) -> None:
    """logs.event(name, **fields) as a bus event: failover and circuit get their event names."""
    if name == "failover":
        BUS.publish("model.failed", {"model": fields.get("failed"), "code": fields.get("code"),
                                     "request_id": fields.get("request_id"),
                                     "tenant": fields.get("tenant")})
    elif name == "circuit":
        state = fields.get("state")
        if state in ("open", "closed"):
            BUS.publish("breaker.opened" if state == "open" else "breaker.closed",
                        {"model": fields.get("model"), "was": fields.get("was")})
    else:
        BUS.publish(name, {k: v for k, v in fields.items() if k != "event"})


class Thresholds:
    """Edge-triggered checks run once a second: an event when a value crosses its threshold
    upward, again only after it fell back below (no event per second while it stays high)."""

    def __init__(self, cfg: EventsConfig, pressure, cost_per_hour):
        self.cfg = cfg
        self.pressure, self.cost_per_hour = pressure, cost_per_hour   # () -> float each
        self.high = {"pressure": False, "cost": False}

    def check(self) -> None:
        self._edge("pressure", self.pressure(), self.cfg.pressure, "resource.pressure_high")
        if self.cfg.cost_per_hour_usd:
            self._edge("cost", self.cost_per_hour(), self.cfg.cost_per_hour_usd, "cost.threshold_exceeded")

    def _edge(self, key: str, value: float, threshold: float, name: str) -> None:
        above = value >= threshold
        if above and not self.high[key]:
            if key == "pressure":   # source: resources.py raises the same name for host memory
                publish(name, source="admission", admission_pressure=round(value, 6),
                        threshold=threshold)
            else:
                publish(name, cost_per_hour_usd=round(value, 6), threshold=threshold)
        self.high[key] = above


def install(app):
    """Wire an App's sources into the bus (router verdicts, limits alerts) and its subscribers
    (live statistics, webhooks). Returns the Wiring the App starts and stops."""
    return Wiring(app)


class Wiring:
    def __init__(self, app):
        self.app = app
        self._unsubscribe: list = []
        self._task = None
        router = app.router
        earlier = router.on_verdict

        def on_verdict(verdict) -> None:
            if earlier is not None:
                earlier(verdict)
            if verdict.action in ("promote", "rollback"):
                publish("router.promoted" if verdict.action == "promote" else "router.rolled_back",
                        challenger=verdict.challenger, rewards=verdict.rewards,
                        challenger_mean=verdict.challenger_mean, champion_mean=verdict.champion_mean,
                        reason=verdict.reason)
        router.on_verdict = on_verdict
        if app.limit_stage is not None:
            app.limit_stage.listeners.append(_limit_event)
        live = app.live
        self.thresholds = Thresholds(
            app.config.events, app.admission.pressure,
            lambda: live.cost_per_hour() if live is not None else 0.0)

    async def start(self) -> None:
        import asyncio
        if self.app.live is not None:
            self._unsubscribe.append(BUS.subscribe(self.app.live.add_event))
        if self.app.webhooks is not None:
            await self.app.webhooks.start()
            self._unsubscribe.append(BUS.subscribe(self.app.webhooks.offer))
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        import asyncio
        while True:
            await asyncio.sleep(1.0)     # once a second: what "live" means on the dashboard
            try:
                self.thresholds.check()
            except Exception:
                log.exception("events: threshold check failed")

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.app.webhooks is not None:
            await self.app.webhooks.stop()


def _limit_event(e) -> None:
    """A limits-stage alert: a refused money limit is budget.exhausted, a soft one a cost threshold."""
    if not e.limit.startswith("usd_"):
        return
    fields = {"rule": e.rule, "limit": e.limit, "scope": e.scope, "subject": e.subject,
              "used_usd": e.used, "allowed_usd": e.allowed}
    publish("budget.exhausted" if e.level == "hard" else "cost.threshold_exceeded", **fields)

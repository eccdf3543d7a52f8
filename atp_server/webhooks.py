"""Webhooks: bus events POSTed to configured URLs, HMAC-signed, retried with backoff, never in a request's way.

Each `[[webhooks]]` entry (url, events, secret) gets its own bounded queue and its own delivery
task. `offer()` — called by the bus, on the request path — only appends to that queue (dropping
the oldest event when it is full, counted), so an endpoint that is slow or dead delays nothing but
its own deliveries. A delivery is retried with exponential backoff and full jitter up to
max_attempts; each attempt is written to a bounded delivery log (the dashboard shows it; metrics
count deliveries, failures and drops).

Signature, so a receiver can check a delivery came from this ATP and was not replayed:

    X-ATP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Verify by recomputing the HMAC over the timestamp, a dot and the raw body bytes, comparing in
constant time, and refusing timestamps older than a few minutes (`verify()` below does exactly
this). X-ATP-Event names the event, X-ATP-Delivery is a unique id (the same on every retry of
one event: receivers deduplicate on it). The body is JSON: {"id", "event", "time", "data"}.
"""
import asyncio
import hashlib
import hmac
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import orjson

from .events import NAMES

log = logging.getLogger("atp.webhooks")

# 1,000 events per endpoint: minutes of breaker/budget events, seconds of a flood; beyond it the
# oldest go (counted) — a receiver that fell that far behind wants the newest.
QUEUE = 1000
# The last 100 attempts over all endpoints: what the dashboard lists.
LOG = 100
# Backoff: 0.5 s doubling to at most 30 s, full jitter (a random wait in [0, that]): retries from
# many ATPs to one recovering receiver spread out instead of arriving in waves.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# Five minutes: how old a signature timestamp verify() accepts (clock skew plus retries in flight).
TOLERANCE_S = 300


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False, default="")
    timeout_s: float = 5.0          # one attempt: connect + answer
    max_attempts: int = 5


def parse_webhooks(entries, fail) -> tuple[WebhookConfig, ...]:
    """The [[webhooks]] array of tables (config.py's fail(key, problem) raises the ConfigError)."""
    if not isinstance(entries, list):
        fail("webhooks", "must be an array of tables: write [[webhooks]] (one per endpoint)")
    out = []
    for i, t in enumerate(entries):
        key = f"webhooks[{i}]"
        if not isinstance(t, dict):
            fail(key, "must be a table")
        known = ("url", "events", "secret", "secret_env", "timeout_s", "max_attempts")
        for k in t:
            if k not in known:
                fail(f"{key}.{k}", f"unknown key (known: {', '.join(known)})")
        url = t.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or "://" == url[-3:]:
            fail(f"{key}.url", f"must be an http:// or https:// URL, got {url!r}")
        events = t.get("events")
        if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
            fail(f"{key}.events", f"must be a non-empty list of event names ({', '.join(NAMES)} or \"*\")")
        for e in events:
            if e != "*" and e not in NAMES:
                fail(f"{key}.events", f"unknown event {e!r} (known: {', '.join(NAMES)}, or \"*\")")
        if ("secret" in t) == ("secret_env" in t):
            fail(key, "give exactly one of secret, secret_env")
        secret = t.get("secret")
        if "secret_env" in t:
            secret = os.environ.get(str(t["secret_env"]))
            if secret is None:
                fail(f"{key}.secret_env", f"environment variable {t['secret_env']} is not set")
        if not isinstance(secret, str) or len(secret) < 16:
            fail(f"{key}.{'secret' if 'secret' in t else 'secret_env'}", "must be at least 16 characters")
        timeout = t.get("timeout_s", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            fail(f"{key}.timeout_s", f"must be a number > 0, got {timeout!r}")
        attempts = t.get("max_attempts", 5)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
            fail(f"{key}.max_attempts", f"must be an integer in [1, 20], got {attempts!r}")
        out.append(WebhookConfig(url, tuple(NAMES if "*" in events else events), secret,
                                 float(timeout), attempts))
    return tuple(out)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-ATP-Signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """What a receiver does: True when `header` signs `body` with `secret` recently enough."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).split("v1=", 1)[1], given)


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Full jitter: a wait in [0, min(cap, base * 2^(attempt-1))]."""
    return rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


def shown(url: str) -> str:
    """The URL as the dashboard and metrics show it: no credentials, no query (tokens live there)."""
    from yarl import URL
    u = URL(url)
    return str(u.with_user(None).with_query(None).with_fragment(None))


class _Hook:
    __slots__ = ("cfg", "names", "url", "queue", "wake", "dropped", "delivered", "failed", "task")

    def __init__(self, cfg: WebhookConfig):
        self.cfg, self.names, self.url = cfg, frozenset(cfg.events), shown(cfg.url)
        self.queue: deque = deque()
        self.wake = asyncio.Event()
        self.dropped = self.delivered = self.failed = 0
        self.task = None


class Dispatcher:
    def __init__(self, hooks, *, sleep=asyncio.sleep, rng: random.Random | None = None,
                 clock=time.time):
        self.hooks = [_Hook(cfg) for cfg in hooks]
        self.sleep, self.rng, self.clock = sleep, rng or random.Random(), clock
        self.log: deque = deque(maxlen=LOG)
        self._session = None
        self._loop = None
        self._thread = None
        self.on_attempt = None      # fn(log entry | None when given up, hook): tests wait on it

    # ---- the request path: bounded appends only ----------------------------------------------

    def offer(self, name: str, fields: dict) -> None:
        """A bus subscriber: queue the event for every endpoint that wants it."""
        event = None
        for hook in self.hooks:
            if name not in hook.names:
                continue
            if event is None:
                event = {"id": uuid.uuid4().hex, "event": name, "time": self.clock(), "data": fields}
            if len(hook.queue) >= QUEUE:
                hook.queue.popleft()
                hook.dropped += 1
            hook.queue.append(event)
            if self._loop is None:
                continue
            if threading.get_ident() == self._thread:
                hook.wake.set()
            else:            # logs.event() may run on another thread (the audit writer)
                self._loop.call_soon_threadsafe(hook.wake.set)

    # ---- delivery tasks -----------------------------------------------------------------------

    async def start(self) -> None:
        import aiohttp
        self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()
        self._session = aiohttp.ClientSession(headers={"User-Agent": "atp-webhooks/1",
                                                       "Content-Type": "application/json"})
        for hook in self.hooks:
            hook.wake = asyncio.Event()
            if hook.queue:
                hook.wake.set()
            hook.task = self._loop.create_task(self._run(hook))

    async def stop(self) -> None:
        for hook in self.hooks:
            if hook.task is not None:
                hook.task.cancel()
        await asyncio.gather(*(h.task for h in self.hooks if h.task is not None), return_exceptions=True)
        for hook in self.hooks:
            hook.task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._loop = None

    async def _run(self, hook: _Hook) -> None:
        while True:
            await hook.wake.wait()
            hook.wake.clear()
            while hook.queue:
                await self._deliver(hook, hook.queue.popleft())

    async def _deliver(self, hook: _Hook, event: dict) -> None:
        import aiohttp
        body = orjson.dumps(event, default=str)
        cfg = hook.cfg
        for attempt in range(1, cfg.max_attempts + 1):
            headers = {"X-ATP-Signature": sign(cfg.secret, int(self.clock()), body),
                       "X-ATP-Event": event["event"], "X-ATP-Delivery": event["id"]}
            status, error = 0, ""
            try:
                async with self._session.post(cfg.url, data=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as r:
                    status = r.status
                    await r.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
            ok = 200 <= status < 300
            entry = {"time": self.clock(), "url": hook.url, "event": event["event"], "id": event["id"],
                     "attempt": attempt, "status": status, "ok": ok, "error": error}
            self.log.append(entry)
            if ok:
                hook.delivered += 1
            if self.on_attempt is not None:
                self.on_attempt(entry, hook)
            if ok:
                return
            if attempt < cfg.max_attempts:
                await self.sleep(backoff_s(attempt, self.rng))
        hook.failed += 1
        if self.on_attempt is not None:
            self.on_attempt(None, hook)
        log.warning("webhook %s: %s %s not delivered after %d attempts", hook.url, event["event"],
                    event["id"], cfg.max_attempts)

    # ---- what the dashboard and metrics read ------------------------------------------------

    def stats(self) -> dict:
        return {"endpoints": [{"url": h.url, "queued": len(h.queue), "delivered": h.delivered,
                               "failed": h.failed, "dropped": h.dropped} for h in self.hooks],
                "deliveries": list(self.log)[::-1][:20]}


class WebhookCollector:
    """Prometheus: deliveries, failures and drops per configured URL (labels from config only)."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        done = CounterMetricFamily("atp_webhook_deliveries", "Webhook events by final result",
                                   labels=["url", "result"])
        queued = GaugeMetricFamily("atp_webhook_queue_depth", "Events waiting for delivery", labels=["url"])
        for h in self.dispatcher.hooks:
            done.add_metric([h.url, "delivered"], h.delivered)
            done.add_metric([h.url, "failed"], h.failed)
            done.add_metric([h.url, "dropped"], h.dropped)
            queued.add_metric([h.url], len(h.queue))
        yield done
        yield queued

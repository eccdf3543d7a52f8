"""Admission: dispatch slots handed out in weighted fair order across tenants and QoS tiers, queue bounded.

The asyncio shell around the pure fair queue (routing/fairq.py). A request takes a slot at once
when one is free and nobody waits; otherwise it waits in its tenant's flow until `release()` hands
it a slot in weighted-fair order. The number of slots is `capacity()`: server.max_inflight, or less
when the providers' AIMD windows (routing/aimd.py) say they cannot take that many right now, so an
overloaded provider turns into fair queueing here instead of errors at dispatch.

Refusals are retryable and carry Retry-After (docs/PROTOCOL.md §7):
  * OVERLOADED (301, "server queues full") when the queue is full and the arrival's tenant is the
    one most over its weighted share — or when a queued request of such a tenant is shed to make room;
  * TIMEOUT (304, "request deadline passed") when a request waited its queue deadline
    (scheduling.queue_timeout_ms, or its own latency SLO when shorter) without a slot.
Not RATE_LIMITED (a tenant's own rate limit, not server load) nor UNAVAILABLE (shutting down or no
provider up: clients fail over to another server, where OVERLOADED says "back off and retry").
A request cancelled while queued leaves the queue at once and holds nothing.
"""
import asyncio

from codec.errors import ErrorCode

from .routing.fairq import FairQueue, QueueFull
from .scheduling import SchedulingConfig
from .types import AtpError


class _Waiter:
    __slots__ = ("future", "timer")

    def __init__(self, future):
        self.future = future
        self.timer = None


class Admission:
    def __init__(self, max_inflight: int, max_queue: int, retry_after_ms: int | None = None,
                 scheduling: SchedulingConfig | None = None, high_watermark: float = 0.8):
        self.scheduling = s = scheduling or SchedulingConfig()
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.retry_after_ms = retry_after_ms if retry_after_ms is not None else s.retry_after_ms
        self.high_watermark, self.low_watermark = high_watermark, s.low_watermark
        self.inflight = 0
        self.capacity = lambda: max_inflight   # replaced by App: min(max_inflight, Σ AIMD windows)
        self.queue = FairQueue(max_queue, min(s.max_tenants, max_queue + 1))
        self._congested = False
        self.shed = 0                          # queued requests refused to make room (a counter)
        self.expired = 0                       # queued requests whose deadline passed
        self.gate = None   # fn() raising a retryable AtpError to refuse new work (audit log full)
        self.throttled: frozenset = frozenset()   # QoS tiers refused now (slo.py: budget burning)
        self._throttle_why, self._throttle_retry_ms = "", 0

    def throttle(self, tiers: frozenset, reason: str, retry_after_ms: int) -> None:
        """Refuse arrivals of these tiers (OVERLOADED, retryable) until called with others."""
        self.throttled, self._throttle_why, self._throttle_retry_ms = tiers, reason, retry_after_ms

    @property
    def queued(self) -> int:
        return self.queue.queued

    def pressure(self) -> float:
        """Fill level 0..1 of slots + queue."""
        return (self.inflight + self.queue.queued) / (self.max_inflight + self.max_queue)

    def congested(self) -> bool:
        """The CONGESTION flag: set at the high watermark, cleared below the low one (hysteresis)."""
        p = self.pressure()
        if p >= self.high_watermark:
            self._congested = True
        elif p < self.low_watermark:
            self._congested = False
        return self._congested

    async def acquire(self, tenant: str = "default", slo_ms: float | None = None) -> None:
        """Take a slot for `tenant` (the authenticated one, never a name the client sends),
        waiting in fair order; raises a retryable AtpError when refused (see the module doc)."""
        if self.gate is not None:
            self.gate()
        if self.throttled and self.scheduling.tier_of(tenant) in self.throttled:
            raise AtpError(ErrorCode.OVERLOADED, f"QoS tier {self.scheduling.tier_of(tenant)} "
                           f"throttled to protect an SLO: {self._throttle_why}",
                           self._throttle_retry_ms)
        q = self.queue
        if self.inflight < self.capacity() and not q.queued:
            self.inflight += 1      # nobody waits: no fair order to keep (fairq.push explains)
            return
        fid = q.flow(tenant, self.scheduling.weight_of(tenant))
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        try:
            if fid is None:
                raise QueueFull(tenant)
            evicted = q.push(fid, waiter)
        except QueueFull:
            raise AtpError(ErrorCode.OVERLOADED, f"server busy: {self.inflight} in flight and "
                           f"{q.queued} queued", self.retry_after_ms) from None
        if evicted is not None:
            self.shed += 1
            self._refuse(evicted, AtpError(
                ErrorCode.OVERLOADED, "server busy: shed from the queue for a tenant under its "
                "fair share", self.retry_after_ms))
        timeout_ms = self.scheduling.queue_timeout_ms
        if slo_ms is not None and 0 < slo_ms < timeout_ms:
            timeout_ms = slo_ms
        waiter.timer = asyncio.get_running_loop().call_later(timeout_ms / 1000, self._expire, fid,
                                                             waiter, timeout_ms)
        try:
            await waiter.future     # _grant() hands us its slot: inflight already counts us
        except asyncio.CancelledError:
            f = waiter.future
            if f.done() and not f.cancelled() and f.exception() is None:
                self.release()      # we were handed a slot just as we were cancelled
            elif q.remove(fid, waiter):
                waiter.timer.cancel()
            raise

    def release(self) -> None:
        self.inflight -= 1
        if self.queue.queued:
            self._grant()

    def _grant(self) -> None:
        """Hand free slots to the queue's next waiters in fair order."""
        q, capacity = self.queue, self.capacity()
        while self.inflight < capacity:
            waiter = q.pop()
            if waiter is None:
                return
            waiter.timer.cancel()
            if not waiter.future.done():   # done = its task was cancelled and not yet resumed
                self.inflight += 1
                waiter.future.set_result(None)

    def _expire(self, fid: int, waiter: _Waiter, timeout_ms: float) -> None:
        if self.queue.remove(fid, waiter):
            self.expired += 1
            self._refuse(waiter, AtpError(ErrorCode.TIMEOUT, f"no dispatch slot within "
                                          f"{timeout_ms:g} ms (queue deadline)", self.retry_after_ms))

    @staticmethod
    def _refuse(waiter: _Waiter, error: AtpError) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        if not waiter.future.done():
            waiter.future.set_exception(error)


class SchedulingCollector:
    """Prometheus families for admission and the AIMD windows, built at scrape time from plain
    counters (labels: configured provider names and tier names only)."""

    def __init__(self, admission: Admission, windows):
        self.admission, self.windows = admission, windows

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        a, w = self.admission, self.windows
        window = GaugeMetricFamily("atp_provider_window", "AIMD concurrency window per provider",
                                   labels=["provider"])
        inflight = GaugeMetricFamily("atp_provider_inflight", "Calls in flight per provider",
                                     labels=["provider"])
        for name in w.names:
            window.add_metric([name], w.window(name))
            inflight.add_metric([name], w.inflight(name))
        yield window
        yield inflight
        yield CounterMetricFamily("atp_provider_window_refusals", "Dispatches refused by a full "
                                  "window (failed over down the chain)", value=w.refused)
        yield CounterMetricFamily("atp_admission_shed", "Queued requests shed (OVERLOADED) for a "
                                  "tenant under its fair share", value=a.shed)
        yield CounterMetricFamily("atp_admission_expired", "Queued requests past their deadline "
                                  "(TIMEOUT)", value=a.expired)
        by_tier = dict.fromkeys(a.scheduling.tiers, 0)
        q = a.queue
        for key, fid in list(q._keys.items()):
            by_tier[a.scheduling.tier_of(key)] += q.depth(fid)
        tiers = GaugeMetricFamily("atp_queued_by_tier", "Requests waiting, by QoS tier",
                                  labels=["tier"])
        for tier, n in by_tier.items():
            tiers.add_metric([tier], n)
        yield tiers

"""Sustained overload through the real pipeline (in process, simulated provider): fairness and backpressure hold."""
import asyncio

from atp_server.adapters.simulated import SimulatedAdapter
from atp_server.app import App
from atp_server.auth import Principal
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

from .helpers import make_config

SCHED = """
[scheduling.tenants]
gold-co = "gold"
silver-co = "silver"
bronze-co = "bronze"
[scheduling.providers.sim]
max_concurrency = 32
latency_slo_ms = 25
"""
TENANTS = ("gold-co", "silver-co", "bronze-co")


class SaturatingProvider(SimulatedAdapter):
    """A provider that slows down past `capacity` concurrent calls, as a GPU server does:
    latency = base x max(1, in flight / capacity). Records its peak concurrency."""

    def __init__(self, capacity: int, base_s: float):
        super().__init__("sim")
        self.capacity, self.base_s = capacity, base_s
        self.inflight = self.peak = 0

    async def complete(self, model, request):
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(self.base_s * max(1.0, self.inflight / self.capacity))
            return "ok", self._finish(request, 4)
        finally:
            self.inflight -= 1


def _app(tmp_path, server: str) -> App:
    return App(make_config(tmp_path, server=server + "\n" + SCHED.replace("[scheduling", "\n[scheduling")))


def test_tiers_share_a_saturated_provider_by_weight_and_aimd_finds_its_capacity(tmp_path):
    async def main():
        app = _app(tmp_path, "max_inflight = 64\nmax_queue = 64")
        provider = SaturatingProvider(capacity=4, base_s=0.01)
        app.adapters["sim"] = provider
        done = asyncio.Event()
        served = {t: 0 for t in TENANTS}
        errors = []

        async def client(tenant):
            principal = Principal(tenant, tenant, "api_key")
            while not done.is_set():
                try:
                    await app.pipeline.complete(ChatRequest([("user", "hi")], stream=False),
                                                principal, "test")
                except AtpError as exc:
                    errors.append(exc.code)
                    continue
                served[tenant] += 1
                if sum(served.values()) >= 840:
                    done.set()

        tasks = [asyncio.create_task(client(t)) for t in TENANTS for _ in range(12)]
        await done.wait()
        window = app.windows.window("sim")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state = (app.admission.inflight, app.admission.queued, app.windows.inflight("sim"))
        await app.stop(0)
        return served, errors, window, provider.peak, state
    served, errors, window, peak, state = asyncio.run(main())
    total = sum(served.values())
    share = {t: served[t] / total for t in TENANTS}
    # 36 closed-loop clients, every tenant backlogged: shares follow the weights 16 : 4 : 1.
    assert abs(share["gold-co"] - 16 / 21) < 0.06, served
    assert abs(share["silver-co"] - 4 / 21) < 0.05, served
    assert 0.5 * (1 / 21) < share["bronze-co"] < 2 * (1 / 21), served   # not starved
    assert errors == []                    # overload became queueing, not errors
    assert window <= 12 and peak <= 40     # AIMD shrank 32 toward what meets the 25 ms SLO
    assert state == (0, 0, 0)              # cancelled clients left nothing behind


def test_a_burst_past_the_queue_is_refused_retryably_and_memory_stays_bounded(tmp_path):
    async def main():
        app = _app(tmp_path, "max_inflight = 4\nmax_queue = 16")
        provider = SaturatingProvider(capacity=4, base_s=0.2)   # nothing finishes before the scrape
        app.adapters["sim"] = provider
        principal = Principal("bronze-co", "b", "api_key")
        tasks = [asyncio.create_task(app.pipeline.complete(ChatRequest([("user", "x")], stream=False),
                                                           principal, "test")) for _ in range(300)]
        for _ in range(5):
            await asyncio.sleep(0)
        peak = (app.admission.inflight, app.admission.queued)
        during = app.service.render_metrics().decode()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        state = (app.admission.inflight, app.admission.queued, app.windows.inflight("sim"))
        await app.stop(0)
        return peak, results, state, during
    (inflight, queued), results, state, metrics = asyncio.run(main())
    # The scrape taken at the same instant as `queued`: what waited, by tier; calls per provider.
    assert f'atp_queued_by_tier{{tier="bronze"}} {float(queued)}' in metrics and queued > 0
    assert 'atp_queued_by_tier{tier="gold"} 0.0' in metrics
    assert 'atp_provider_inflight{provider="sim"} 4.0' in metrics
    assert 'atp_provider_window{provider="sim"}' in metrics
    assert inflight <= 4 and queued <= 16
    refused = [r for r in results if isinstance(r, AtpError)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert len(ok) == 4 + 16 and len(refused) == 300 - 20
    assert all(r.code == ErrorCode.OVERLOADED and r.retryable and r.retry_after_ms > 0 for r in refused)
    assert state == (0, 0, 0)

"""Admission: weighted fair slots across tenants/tiers, bounded queue, shedding, deadlines, cancels, watermarks."""
import asyncio

import pytest

from atp_server import config
from atp_server.admission import Admission
from atp_server.scheduling import SchedulingConfig
from atp_server.types import AtpError
from codec.errors import ErrorCode

TIERS = SchedulingConfig(tenants={"g": "gold", "s": "silver", "b": "bronze"})


def run(coro):
    return asyncio.run(coro)


async def _settle():
    """Let every ready task run once (each waiter reaches its await)."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_free_slot_is_taken_at_once_and_a_waiter_gets_the_released_one():
    async def main():
        a = Admission(1, 4)
        await a.acquire("x")
        waiter = asyncio.create_task(a.acquire("y"))
        await _settle()
        state = (a.inflight, a.queued, waiter.done())
        a.release()
        await waiter
        return state, (a.inflight, a.queued)
    assert run(main()) == ((1, 1, False), (1, 0))


def test_sustained_overload_serves_tiers_by_weight_and_bronze_is_not_starved():
    """Each tenant keeps 30 requests waiting at all times; 2100 slots are handed out."""
    async def main():
        a = Admission(1, 200, scheduling=TIERS)
        await a.acquire("g")                          # the one slot is busy
        served = []

        async def one(tenant):
            await a.acquire(tenant)
            served.append(tenant)
            asyncio.get_running_loop().call_soon(refill, tenant)

        def refill(tenant):
            tasks.append(asyncio.create_task(one(tenant)))

        tasks = [asyncio.create_task(one(t)) for t in ("g", "s", "b") for _ in range(30)]
        await _settle()
        for _ in range(2100):
            a.release()                               # hand the slot to the next in fair order
            await _settle()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return served, a
    served, a = run(main())
    counts = {t: served.count(t) for t in "gsb"}
    total = 16 + 4 + 1
    assert abs(counts["g"] - 2100 * 16 / total) <= 5, counts
    assert abs(counts["s"] - 2100 * 4 / total) <= 5, counts
    assert abs(counts["b"] - 2100 * 1 / total) <= 5 and counts["b"] >= 95, counts
    assert a.queued == 0                              # the cancelled waiters left the queue


def test_a_full_queue_refuses_with_a_retryable_overloaded_and_retry_after():
    async def main():
        a = Admission(1, 2, scheduling=TIERS)
        await a.acquire("b")
        waiting = [asyncio.create_task(a.acquire("b")) for _ in range(2)]
        await _settle()
        with pytest.raises(AtpError) as info:
            await a.acquire("b")
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return info.value, a.queued
    err, queued = run(main())
    assert err.code == ErrorCode.OVERLOADED and err.retryable and err.retry_after_ms == 200
    assert queued == 0


def test_a_tenant_flooding_the_queue_is_shed_for_one_under_its_share():
    async def main():
        a = Admission(1, 3, scheduling=TIERS)
        await a.acquire("b")
        flood = [asyncio.create_task(a.acquire("b")) for _ in range(3)]
        await _settle()
        gold = asyncio.create_task(a.acquire("g"))
        await _settle()
        shed = [t for t in flood if t.done()]
        a.release()
        await gold                                    # gold's request got the next slot
        for t in flood:
            t.cancel()
        results = await asyncio.gather(*flood, return_exceptions=True)
        return shed, results, a
    shed, results, a = run(main())
    assert len(shed) == 1 and a.shed == 1
    err = shed[0].exception()
    assert err.code == ErrorCode.OVERLOADED and err.retryable and err.retry_after_ms > 0
    assert results[2] is err                          # the newest of the flood was dropped
    assert a.queued == 0


def test_a_queue_deadline_refuses_with_timeout_and_the_request_slo_can_shorten_it():
    sched = SchedulingConfig(queue_timeout_ms=10_000)

    async def main():
        a = Admission(1, 4, scheduling=sched)
        await a.acquire("x")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(AtpError) as info:
            await a.acquire("x", slo_ms=30)           # its own 30 ms objective, not 10 s
        waited = loop.time() - t0
        return info.value, waited, a
    err, waited, a = run(main())
    assert err.code == ErrorCode.TIMEOUT and err.retryable and err.retry_after_ms > 0
    assert 0.02 <= waited < 5 and a.expired == 1 and a.queued == 0 and a.inflight == 1


def test_cancelling_a_queued_request_takes_it_out_and_holds_nothing():
    async def main():
        a = Admission(1, 4)
        await a.acquire("x")
        waiter = asyncio.create_task(a.acquire("x"))
        await _settle()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        queued = a.queued
        a.release()
        return queued, a.inflight, a.queued
    assert run(main()) == (0, 0, 0)


def test_a_slot_handed_over_just_as_the_waiter_is_cancelled_is_given_back():
    async def main():
        a = Admission(1, 4)
        await a.acquire("x")
        waiter = asyncio.create_task(a.acquire("x"))
        other = asyncio.create_task(a.acquire("y"))
        await _settle()
        a.release()                 # hands the slot to `waiter`...
        waiter.cancel()             # ...which is cancelled before it resumes
        await asyncio.gather(waiter, return_exceptions=True)
        await other                 # the slot went on to the next waiter
        return a.inflight, a.queued
    assert run(main()) == (1, 0)


def test_memory_stays_bounded_under_a_flood_from_many_tenants():
    sched = SchedulingConfig(max_tenants=16)

    async def main():
        a = Admission(4, 64, scheduling=sched)
        tasks = [asyncio.create_task(a.acquire(f"tenant-{i % 5000}")) for i in range(20_000)]
        await _settle()
        peak = (a.queued, len(a.queue._key_of), len(a.queue._keys))
        refused = sum(1 for t in tasks if t.done() and t.exception() is not None)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return peak, refused, a
    (queued, records, keys), refused, a = run(main())
    assert queued <= 64 and records <= 16 and keys <= 16
    assert refused >= 20_000 - 4 - 64
    assert a.queued == 0 and a.queue._n_active == 0


def test_capacity_follows_the_aimd_windows():
    async def main():
        a = Admission(8, 8)
        limit = [2]
        a.capacity = lambda: limit[0]
        await a.acquire("x")
        await a.acquire("x")
        third = asyncio.create_task(a.acquire("x"))
        await _settle()
        queued = a.queued                     # 2 of 8 slots while the windows say 2
        limit[0] = 3                          # a window grew (on a completion) ...
        a.release()                           # ... and that completion hands out two slots
        await third
        fourth = asyncio.create_task(a.acquire("x"))
        await fourth
        return queued, a.inflight
    assert run(main()) == (1, 3)


def test_the_congestion_flag_has_hysteresis_between_the_watermarks():
    async def main():
        a = Admission(5, 5, high_watermark=0.8, scheduling=SchedulingConfig(low_watermark=0.5))
        flags = []
        for _ in range(8):
            await a.acquire("x") if a.inflight < 5 else None
            if a.inflight == 5:
                break
        tasks = [asyncio.create_task(a.acquire("x")) for _ in range(3)]
        await _settle()
        flags.append(a.congested())           # 8 of 10: set
        for _ in range(2):
            a.release()
            await _settle()
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        flags.append(a.congested())           # 6 of 10: between the marks, stays set
        tasks[1].cancel()
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        a.release()
        flags.append(a.congested())           # 4 of 10: below the low mark, cleared
        return flags
    assert run(main()) == [True, True, False]


@pytest.mark.parametrize("section, error", [
    ('[scheduling]\nqueue_timeout_ms = 0', "scheduling.queue_timeout_ms: must be > 0"),
    ('[scheduling]\nlow_watermark = 0.9', "scheduling.low_watermark: must be below server.congestion_watermark"),
    ('[scheduling]\ndefault_tier = "platinum"', "scheduling.default_tier: unknown tier 'platinum'"),
    ('[scheduling]\nbogus = 1', "scheduling.bogus: unknown key"),
    ('[scheduling.tiers]\ngold = 0', "scheduling.tiers.gold: must be > 0"),
    ('[scheduling.tiers]\ngold = "high"', "scheduling.tiers.gold: must be a number"),
    ('[scheduling.tenants]\nacme = "diamond"', "scheduling.tenants.acme: unknown tier 'diamond'"),
    ('[scheduling]\naimd_decrease = 1.0', "scheduling.aimd_decrease: must be in (0, 1)"),
    ('[scheduling.providers.nope]\nmax_concurrency = 4', "scheduling.providers.nope: no provider named"),
    ('[scheduling.providers.sim]\nmin_window = 0', "scheduling.providers.sim.min_window: must be >= 1"),
    ('[scheduling.providers.sim]\nmax_concurrency = 2\nmin_window = 3',
     "scheduling.providers.sim.min_window: must be <= max_concurrency"),
    ('[scheduling.providers.sim]\nwindow = 3', "scheduling.providers.sim.window: unknown key"),
])
def test_invalid_scheduling_values_name_the_key(tmp_path, section, error):
    text = f'[server]\nstate_dir = "{tmp_path}"\n{config.dev_auth_toml("dev")}\n' \
           '[[providers]]\nname = "sim"\ntype = "simulated"\n[[models]]\nid = "m"\nprovider = "sim"\n' + section
    with pytest.raises(config.ConfigError) as info:
        config.loads(text)
    assert str(info.value).startswith(error)


def test_a_valid_scheduling_section_maps_tenants_to_tier_weights(tmp_path):
    cfg = config.loads(f'[server]\nstate_dir = "{tmp_path}"\n{config.dev_auth_toml("dev")}\n'
                       '[[providers]]\nname = "sim"\ntype = "simulated"\n[[models]]\nid = "m"\n'
                       'provider = "sim"\n[scheduling]\ndefault_tier = "bronze"\n'
                       '[scheduling.tiers]\ngold = 10\nbronze = 1\n[scheduling.tenants]\nacme = "gold"\n')
    s = cfg.scheduling
    assert (s.weight_of("acme"), s.weight_of("someone"), s.tier_of("someone")) == (10.0, 1.0, "bronze")

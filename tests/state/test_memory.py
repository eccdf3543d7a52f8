"""What only the in-memory stores promise: bounded memory (old periods, nonce capacity)."""
import asyncio

from atp_server.state import Hold
from atp_server.state.memory import MemoryBudgets, MemoryNonces


def test_expired_budget_periods_are_swept_when_a_new_one_appears():
    now = [0.0]
    budgets = MemoryBudgets(clock=lambda: now[0])

    async def go():
        await budgets.reserve((Hold("day1", 10, 100),), 1)
        budgets.settle((Hold("day1", 10, 100),), 1, 1)
        now[0] = 200.0
        await budgets.reserve((Hold("day2", 10, 100),), 1)
        return set(budgets._entries)
    assert asyncio.run(go()) == {"day2"}


def test_a_held_reservation_is_never_swept():
    now = [0.0]
    budgets = MemoryBudgets(clock=lambda: now[0])

    async def go():
        await budgets.reserve((Hold("day1", 10, 100),), 1)
        now[0] = 200.0
        await budgets.reserve((Hold("day2", 10, 100),), 1)
        return set(budgets._entries)
    assert asyncio.run(go()) == {"day1", "day2"}


def test_nonces_stay_within_capacity_and_expire():
    nonces = MemoryNonces(capacity=3)

    async def go():
        for i in range(10):
            assert await nonces.add(bytes([i]), 5.0, float(i))
        assert len(nonces._seen) <= 3
        assert await nonces.add(bytes([9]), 5.0, 9.5) is False
        assert await nonces.add(bytes([9]), 5.0, 20.0) is True     # expired: new again
    asyncio.run(go())

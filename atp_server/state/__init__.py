"""Shared state behind store interfaces (DESIGN §1, §5): in memory by default, Redis when configured.

`open_stores(state_config)` is the one place that picks the implementation; nothing else imports
redis.py, so no other module can talk to Redis.
"""
from .base import (FAIL_CLOSED, FAIL_MODES, FAIL_OPEN, Admitted, BelowFloor, Bucket, BudgetStore,
                   CounterStore, Denial, Gauge, Hold, NonceStore, Stores, StoreUnavailable)
from .memory import memory_stores

__all__ = ["FAIL_CLOSED", "FAIL_MODES", "FAIL_OPEN", "Admitted", "BelowFloor", "Bucket", "BudgetStore",
           "CounterStore", "Denial", "Gauge", "Hold", "NonceStore", "Stores", "StoreUnavailable", "open_stores"]


def open_stores(state) -> Stores:
    """The stores for a config.StateConfig: Redis when `redis_url` is set, else in memory."""
    if not state.redis_url:
        return memory_stores()
    from .redis import redis_stores   # imported only when configured: redis-py stays optional
    return redis_stores(state.redis_url, timeout_s=state.timeout_ms / 1000, prefix=state.prefix,
                        fail={"limits": state.limits_on_error, "budgets": state.budgets_on_error,
                              "nonces": state.nonces_on_error})

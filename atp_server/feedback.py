"""Feedback on answers (explicit scores), kept bounded in memory; each first rating teaches the router."""
import time
from collections import OrderedDict


class FeedbackLog:
    """One score per (tenant, request id); the oldest entries fall out past `capacity`."""

    def __init__(self, capacity: int = 10_000, on_score=None):
        self.capacity = capacity
        # on_score(tenant, request_id, score): the router learns from each first rating
        self.on_score = on_score
        self._items: OrderedDict[tuple[str, str], dict] = OrderedDict()

    def add(self, tenant: str, request_id: str, score: float, comment: str | None = None,
            principal: str = "") -> bool:
        """Record a score; False if this request was already rated (the first rating stands)."""
        key = (tenant, request_id)
        if key in self._items:
            return False
        self._items[key] = {"request_id": request_id, "tenant": tenant, "score": score,
                            "comment": comment, "principal": principal, "ts": time.time()}
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        if self.on_score is not None:
            self.on_score(tenant, request_id, score)
        return True

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items.values())

"""Admission: a bounded dispatch slot pool with a bounded FIFO queue; full means a retryable refusal."""
import asyncio
from collections import deque

from codec.errors import ErrorCode

from .types import AtpError


class Admission:
    def __init__(self, max_inflight: int, max_queue: int, retry_after_ms: int = 200):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.retry_after_ms = retry_after_ms
        self.inflight = 0
        self._waiters: deque[asyncio.Future] = deque()
        self.gate = None   # fn() raising a retryable AtpError to refuse new work (audit log full)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def pressure(self) -> float:
        """Fill level 0..1 of slots + queue (drives the CONGESTION flag)."""
        return (self.inflight + len(self._waiters)) / (self.max_inflight + self.max_queue)

    async def acquire(self) -> None:
        if self.gate is not None:
            self.gate()
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise AtpError(ErrorCode.OVERLOADED, f"server busy: {self.inflight} in flight and "
                           f"{len(self._waiters)} queued", self.retry_after_ms)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut          # release() hands us its slot: inflight already counts us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot just as we were cancelled
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.inflight -= 1

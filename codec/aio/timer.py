"""Drives a codec.Connection's single timer on an asyncio loop (server sessions and SDK clients)."""
import time


def now_ms() -> int:
    """Wall-clock Unix milliseconds: frame timestamps are checked against the peer's clock."""
    return int(time.time() * 1000)


class ConnectionTimer:
    """Keeps one loop wake-up armed at `conn.get_timer()`; `fired()` runs after handle_timer().

    Re-arming only when the deadline moves earlier keeps the per-frame cost to a comparison: a
    later deadline is found when the earlier wake-up fires and re-arms.
    """

    __slots__ = ("_loop", "_conn", "_fired", "_handle", "_at")

    def __init__(self, loop, conn, fired):
        self._loop, self._conn, self._fired = loop, conn, fired
        self._handle = self._at = None

    def arm(self) -> None:
        deadline = self._conn.get_timer()
        if deadline is None or (self._at is not None and self._at <= deadline):
            return   # an earlier (or equal) wake-up is already armed
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        self._handle = self._loop.call_later(max(0.0, (deadline - now_ms()) / 1000), self._fire)

    def _fire(self) -> None:
        self._handle = self._at = None
        self._conn.handle_timer(now_ms())
        self._fired()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None

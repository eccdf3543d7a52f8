"""Per-session credit pacing: returns closed streams' reservations, the request credit sized by AIMD capacity.

The codec, left to itself, gives every closed stream's reservation back (auto_replenish), so a
frame client always holds its initial request credit, however slow the providers became. The
server's sessions run with auto_replenish off and this pacer in its place (docs/PROTOCOL.md §8.4):

  * tokens and USD micros go back in full when a stream closes, as before;
  * the request dimension is topped up only to `target()` — the dispatch capacity right now,
    admission's min(server.max_inflight, Σ provider AIMD windows), at most the HELLO's grant:
    when providers shrink their windows a client is granted fewer parallel requests, and when
    they grow again the credit comes back (there are no negative increments: credit shrinks only
    by being consumed and not returned).

Grants are coalesced by the codec into at most one WINDOW_UPDATE per transmission.
"""
from codec.flow import reservation


class CreditPacer:
    """Driven by the session: `opened` at each accepted REQUEST, `closed` when its stream ended
    (END, ERROR or CANCEL), `top_up` before each transmission."""

    __slots__ = ("conn", "active", "target", "ceiling", "_reserved")

    def __init__(self, conn, target, ceiling: int):
        self.conn = conn
        self.active = not conn.config.auto_replenish   # else the codec returns credit itself
        self.target = target          # () -> parallel requests a session may hold now
        self.ceiling = ceiling        # the HELLO's request grant: never more than that
        self._reserved: dict[int, tuple] = {}   # stream id -> its (requests, tokens, usd) reservation

    def _wanted(self) -> int:
        return max(1, min(self.ceiling, self.target()))

    def _held(self) -> int:
        """Request credit the client has or has in use (live streams not yet returned)."""
        return self.conn.window.requests + len(self._reserved)

    def opened(self, stream_id: int, request: dict) -> None:
        if self.active:
            self._reserved[stream_id] = reservation(request)

    def closed(self, stream_id: int) -> None:
        need = self._reserved.pop(stream_id, None)
        if need is None or self.conn.closed:
            return
        requests = need[0] if self._held() < self._wanted() else 0
        self.conn.grant(requests, need[1], need[2])

    def top_up(self) -> None:
        if not self.active or self.conn.closed:
            return
        missing = self._wanted() - self._held()
        if missing > 0:
            self.conn.grant(missing, 0, 0)

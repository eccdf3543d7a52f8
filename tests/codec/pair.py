"""An in-memory client/server Connection pair with an explicit clock: the codec's test harness.

Nothing here sleeps or reads a clock: `now` only moves when a test calls `advance()` or when
`pump(hop_ms=...)` charges a latency per delivery. Events are collected per side, in order.
"""
from codec import Connection, ConnectionConfig, DEFAULT_LIMITS, Keyring, NonceCache

from . import frame_factory as ff

START_MS = ff.NOW


class ConnectionPair:
    """client + server sharing one key configuration.

    transport="stream" moves `data_to_send()` through `receive_data()` (QUIC/TCP-like);
    transport="frames" moves `frames_to_send()` one message at a time through `receive_frame()`;
    transport="batches" moves all queued frames as one message through `receive_frames()` (gRPC
    Session batching). `wire[side]` keeps every chunk of bytes each side emitted, for replays.
    """

    def __init__(self, *, client_config: ConnectionConfig = ConnectionConfig(),
                 server_config: ConnectionConfig = ConnectionConfig(),
                 limits=DEFAULT_LIMITS, nonce_cache: NonceCache | None = None,
                 keys: dict | None = None, nonce: bytes = ff.NONCE, now_ms: int = START_MS,
                 transport: str = "stream"):
        if transport not in ("stream", "frames", "batches"):
            raise ValueError(transport)
        keys = keys or {ff.KEY_ID: ff.KEY}
        self.now = now_ms
        self.nonce = nonce
        self.transport = transport
        self.nonce_cache = nonce_cache if nonce_cache is not None else NonceCache()
        self.client = Connection("client", Keyring(dict(keys)), limits=limits,
                                 config=client_config, now_ms=now_ms)
        self.server = Connection("server", Keyring(dict(keys)), limits=limits,
                                 config=server_config, nonce_cache=self.nonce_cache, now_ms=now_ms)
        self.events = {"client": [], "server": []}
        self.wire = {"client": [], "server": []}

    # ---- clock -----------------------------------------------------------------------------------

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now

    # ---- plumbing --------------------------------------------------------------------------------

    def side(self, name: str) -> Connection:
        return self.client if name == "client" else self.server

    def open(self, hop_ms: int = 0) -> "ConnectionPair":
        """Client HELLO -> server HELLO; both sides established."""
        self.client.initiate(self.nonce, self.now)
        self.pump(hop_ms)
        return self

    def _collect(self) -> None:
        for name in ("client", "server"):
            conn = self.side(name)
            while (event := conn.next_event()) is not None:
                self.events[name].append(event)

    def transfer(self, src: str, hop_ms: int = 0) -> bool:
        """Move whatever `src` queued to its peer (after `hop_ms` of latency); True if anything moved."""
        sender = self.side(src)
        receiver = self.side("server" if src == "client" else "client")
        if self.transport == "frames":
            messages = sender.frames_to_send()
        else:
            data = sender.data_to_send()
            messages = [data] if data else []
        if not messages:
            return False
        self.advance(hop_ms)
        for message in messages:
            self.wire[src].append(message)
            if self.transport == "stream":
                receiver.receive_data(message, self.now)
            elif self.transport == "frames":
                receiver.receive_frame(message, self.now)
            else:
                receiver.receive_frames(message, self.now)
        self._collect()
        return True

    def pump(self, hop_ms: int = 0, max_rounds: int = 1000) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(max_rounds):
            moved = self.transfer("client", hop_ms)
            moved = self.transfer("server", hop_ms) or moved
            if not moved:
                self._collect()
                return
        raise AssertionError(f"pair still chatting after {max_rounds} rounds")

    def fire_timers(self) -> None:
        """Call handle_timer on every side whose timer is due at `now`."""
        for conn in (self.client, self.server):
            deadline = conn.get_timer()
            if deadline is not None and deadline <= self.now:
                conn.handle_timer(self.now)
        self._collect()

    def run_until(self, until_ms: int, hop_ms: int = 0) -> None:
        """Jump from timer to timer (pumping in between) until `until_ms` or both sides are closed."""
        while True:
            deadlines = [t for t in (self.client.get_timer(), self.server.get_timer())
                         if t is not None]
            if not deadlines or min(deadlines) > until_ms:
                self.now = max(self.now, until_ms)
                return
            self.now = max(self.now, min(deadlines))
            self.fire_timers()
            self.pump(hop_ms)

    # ---- event helpers ---------------------------------------------------------------------------

    def take(self, side: str) -> list:
        """Events collected for `side` since the last take (and forget them)."""
        self._collect()
        out, self.events[side] = self.events[side], []
        return out

    def of_type(self, side: str, cls) -> list:
        self._collect()
        return [e for e in self.events[side] if isinstance(e, cls)]

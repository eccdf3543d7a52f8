"""Anti-replay: bounded nonce cache for session-opening frames, sliding sequence window inside one."""
from dataclasses import dataclass

from .errors import AuthError, ErrorCode
from .frame import RESPONDER, FrameType

DEFAULT_SKEW_MS = 30_000
DEFAULT_WINDOW = 64


@dataclass(frozen=True, slots=True)
class NonceSnapshot:
    """What a NonceCache must carry across a restart (PROTOCOL.md §10.1): its live nonces with the
    timestamps that recorded them, and its floor. Plain data; storing it is the caller's job."""

    floor_ms: int
    nonces: tuple[tuple[bytes, int], ...]     # (nonce, timestamp_ms), oldest expiry first


class NonceCache:
    """Remembers opening nonces until their timestamps fall out of the skew window.

    Memory is bounded by `capacity`: when full of still-live nonces it refuses new sessions with
    the retryable REPLAY_CACHE_FULL (failing closed; forgetting a live nonce would allow a replay).
    Shared by every session a server accepts.

    `floor_ms`: timestamps below it are refused as STALE_TIMESTAMP too. A cache that starts
    without its predecessor's nonces (first start, crash, unreadable snapshot) sets it to the
    start time: whatever the previous process accepted, and forgot, carries an older timestamp.
    (The server also raises it when a shared store it relies on lost its nonces.)
    """

    __slots__ = ("capacity", "skew_ms", "floor_ms", "_expiry")

    def __init__(self, capacity: int = 100_000, skew_ms: int = DEFAULT_SKEW_MS):
        if capacity < 1 or skew_ms < 0:
            raise ValueError("NonceCache needs capacity >= 1 and skew_ms >= 0")
        self.capacity = capacity
        self.skew_ms = skew_ms
        self.floor_ms = 0
        self._expiry: dict[bytes, int] = {}   # insertion-ordered: roughly oldest first

    def check_and_add(self, nonce: bytes, timestamp_ms: int, now_ms: int) -> None:
        if abs(timestamp_ms - now_ms) > self.skew_ms:
            raise AuthError(f"timestamp {timestamp_ms} is {timestamp_ms - now_ms:+d} ms from now, "
                            f"allowed ±{self.skew_ms}", ErrorCode.STALE_TIMESTAMP)
        if timestamp_ms < self.floor_ms:
            raise AuthError(f"timestamp {timestamp_ms} is before {self.floor_ms}, since when this "
                            "server's nonces are known (it started without its predecessor's, or "
                            "its shared store lost its data); retry with a new timestamp (check "
                            "the clock)", ErrorCode.STALE_TIMESTAMP)
        expiry = self._expiry
        if nonce in expiry and expiry[nonce] >= now_ms:
            raise AuthError(f"nonce {nonce.hex()} was already used", ErrorCode.REPLAYED_NONCE)
        self._purge(now_ms)
        if len(expiry) >= self.capacity:
            raise AuthError("replay cache is full of live nonces; retry shortly",
                            ErrorCode.REPLAY_CACHE_FULL)
        # A nonce is replayable while some `now` sees its timestamp within the skew.
        expiry[nonce] = timestamp_ms + self.skew_ms

    def _purge(self, now_ms: int) -> None:
        expiry = self._expiry
        while expiry:
            oldest = next(iter(expiry))
            if expiry[oldest] >= now_ms:
                if len(expiry) < self.capacity:
                    return
                # Full: out-of-order expiries may hide dead entries behind a live head.
                dead = [n for n, t in expiry.items() if t < now_ms]
                for n in dead:
                    del expiry[n]
                return
            del expiry[oldest]

    def __len__(self) -> int:
        return len(self._expiry)

    # ---- across a restart (the caller stores and loads; nothing here touches a file) ----------

    def snapshot(self, now_ms: int) -> NonceSnapshot:
        """The nonces still live at `now_ms` (a replay of their HELLO could still pass the
        timestamp check), with their timestamps, and the floor."""
        skew = self.skew_ms
        live = sorted((t, n) for n, t in self._expiry.items() if t >= now_ms)
        return NonceSnapshot(self.floor_ms, tuple((n, t - skew) for t, n in live))

    def restore(self, snapshot: NonceSnapshot, now_ms: int) -> None:
        """Take over a predecessor's snapshot: its live nonces and its floor (the higher floor
        wins). Nonces are judged with this cache's skew. If more are live than fit, the ones
        expiring first are dropped and the floor rises above their timestamps: their HELLOs are
        then refused as stale, never accepted twice."""
        self.floor_ms = max(self.floor_ms, snapshot.floor_ms)
        expiry = self._expiry
        live = sorted((ts + self.skew_ms, n) for n, ts in snapshot.nonces
                      if ts + self.skew_ms >= now_ms)
        for t, n in live:
            if t > expiry.get(n, -1):
                expiry.pop(n, None)     # re-insert: insertion order stays roughly by expiry
                expiry[n] = t
        if len(expiry) > self.capacity:
            ordered = sorted(expiry.items(), key=lambda item: item[1])
            cut = len(ordered) - self.capacity
            self.floor_ms = max(self.floor_ms, ordered[cut - 1][1] - self.skew_ms + 1)
            self._expiry = dict(ordered[cut:])


class SequenceWindow:
    """IPsec/DTLS-style anti-replay window over one direction of a session: O(1) memory.

    Accepts a sequence number above the highest seen, or one inside the last `size` numbers
    that has not been seen; rejects the rest as SEQUENCE_REPLAY.
    """

    __slots__ = ("size", "highest", "_bitmap", "_mask")

    def __init__(self, size: int = DEFAULT_WINDOW):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.highest = -1
        self._bitmap = 0          # bit i set = sequence (highest - i) seen
        self._mask = (1 << size) - 1

    def check_and_add(self, seq: int) -> None:
        if seq > self.highest:
            shift = seq - self.highest
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.highest = seq
            return
        back = self.highest - seq
        if back >= self.size:
            raise AuthError(f"sequence {seq} is older than the window (highest {self.highest})",
                            ErrorCode.SEQUENCE_REPLAY)
        bit = 1 << back
        if self._bitmap & bit:
            raise AuthError(f"sequence {seq} was already received", ErrorCode.SEQUENCE_REPLAY)
        self._bitmap |= bit


class SessionGuard:
    """Per-session inbound checks after the MAC: direction, opening rules, nonce binding, sequence.

    The initiator's first frame (HELLO, sequence 0) must carry a fresh nonce and a timestamp within
    the skew; that nonce then binds the session: every later frame, in both directions, must carry
    it. The responder's first frame (HELLO, or CLOSE if it refuses) must echo it.
    """

    __slots__ = ("is_responder", "nonce_cache", "session_nonce", "window")

    def __init__(self, *, is_responder: bool, nonce_cache: NonceCache | None = None,
                 session_nonce: bytes | None = None, window: int = DEFAULT_WINDOW):
        if is_responder and nonce_cache is None:
            raise ValueError("a responder needs a NonceCache to check opening nonces")
        self.is_responder = is_responder
        self.nonce_cache = nonce_cache
        self.session_nonce = session_nonce   # initiator: its own nonce; responder: learnt
        self.window = SequenceWindow(window)

    def check(self, frame, now_ms: int) -> None:
        if bool(frame.flags & RESPONDER) == self.is_responder:
            raise AuthError("frame carries our own direction flag (reflected?)",
                            ErrorCode.PROTOCOL_VIOLATION)
        if self.window.highest < 0:   # the peer's opening frame
            if frame.sequence != 0:
                raise AuthError(f"opening frame has sequence {frame.sequence}, must be 0",
                                ErrorCode.PROTOCOL_VIOLATION)
            if self.is_responder:
                if frame.type is not FrameType.HELLO:
                    raise AuthError(f"session must open with HELLO, got {frame.type.name}",
                                    ErrorCode.PROTOCOL_VIOLATION)
                if frame.nonce == bytes(len(frame.nonce)):
                    raise AuthError("the all-zero nonce cannot open a session",
                                    ErrorCode.PROTOCOL_VIOLATION)
                # Bind first: a refusal (CLOSE) then echoes the nonce so the client can verify it.
                self.session_nonce = frame.nonce
                self.nonce_cache.check_and_add(frame.nonce, frame.timestamp_ms, now_ms)
            else:
                if frame.type not in (FrameType.HELLO, FrameType.CLOSE):
                    raise AuthError(f"responder must answer with HELLO or CLOSE, got "
                                    f"{frame.type.name}", ErrorCode.PROTOCOL_VIOLATION)
                if frame.nonce != self.session_nonce:
                    raise AuthError("responder HELLO does not echo our session nonce",
                                    ErrorCode.REPLAYED_NONCE)
        elif frame.nonce != self.session_nonce:
            raise AuthError("frame nonce does not match this session", ErrorCode.REPLAYED_NONCE)
        self.window.check_and_add(frame.sequence)

"""Events a Connection emits: one frozen, slotted dataclass per thing that can happen."""
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class SessionStarted(Event):
    """The peer's HELLO arrived: the session is authenticated and bound to its nonce."""
    agent: str
    window: tuple[int, int, int]     # server's grant (requests, tokens, usd micros); (0,0,0) from a client
    heartbeat_ms: int
    key_id: int = 0                  # the key the peer's HELLO was signed with (identifies the tenant)
    # The HELLO's nonce and timestamp: what a server's I/O shell needs to check the nonce in a
    # store shared with other processes (PROTOCOL.md §10.1). Not compared: equality is about the
    # session's terms, and a test cannot know the timestamp.
    nonce: bytes = field(default=b"", compare=False)
    timestamp_ms: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """Server side: a REQUEST opened a stream."""
    stream_id: int
    request: dict
    size: int = 0                    # wire bytes of the frame


@dataclass(frozen=True, slots=True)
class ChunkReceived(Event):
    stream_id: int
    index: int
    text: str
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """END arrived: usage has in/out tokens, cost (USD micros), model, provider, finish, overhead_us."""
    stream_id: int
    usage: dict = field(hash=False)


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """An ERROR frame closed the stream."""
    stream_id: int
    code: int
    message: str
    retryable: bool
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class StreamCancelled(Event):
    """Server side: the client abandoned the stream; stop the upstream work."""
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """Client side: credit granted; `available` is the window after applying it."""
    increment: tuple[int, int, int]
    available: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    data: int


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    data: int
    rtt_ms: int


@dataclass(frozen=True, slots=True)
class CongestionChanged(Event):
    """The peer set or cleared the CONGESTION flag (ECN-style back-off signal)."""
    congested: bool


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """The session is over: by the peer's CLOSE, or by us after a protocol/auth error or timeout."""
    code: int
    message: str
    by_peer: bool

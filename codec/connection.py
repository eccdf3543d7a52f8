"""A sans-I/O ATP session: bytes and `now` in, events and bytes out, timers polled by the caller.

The same class drives the server (role "server", the responder) and clients (role "client", the
initiator). It never reads a clock or a random source: `now_ms` and the opening nonce are passed
in. A protocol or authentication error never raises out of `receive_data`; it queues a CLOSE with
the wire code, emits ConnectionTerminated, and the connection ignores further input.
"""
from collections import deque
from dataclasses import dataclass

from . import events as ev
from .errors import CodecError, ErrorCode, FlowControlError, ProtocolError, RETRYABLE
from .flow import DEFAULT_INITIAL, CreditWindow, reservation
from . import backend
from .frame import (CONGESTION, NONCE_SIZE, RESPONDER, FrameType, check_shape, open_frame,
                    peek_length, seal)
from .payload import DEFAULT_LIMITS, Limits
from .replay import DEFAULT_WINDOW, NonceCache, SessionGuard
from .stream import CANCELLING, CLOSED, IDLE, OPEN, TABLES, transition


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    agent: str = "atp"
    initial_window: tuple[int, int, int] = (64, 1 << 20, 100_000_000)  # what a server grants
    auto_replenish: bool = True      # server: return a stream's reservation when it closes
    heartbeat_ms: int = 15_000       # send PING after this long without sending anything (0: never)
    idle_timeout_ms: int = 60_000    # close with TIMEOUT after this long without receiving (0: never)
    replay_window: int = DEFAULT_WINDOW
    max_open_streams: int = 1024     # hard cap on live streams regardless of credit


_ZERO_NONCE = bytes(NONCE_SIZE)
# END keys in deterministic CBOR order (shorter first, then bytewise): lets send_end use the
# cheap encoder (payload.encode_ordered) whenever the caller sticks to the schema.
_END_ORDER = ("in", "out", "rid", "cost", "model", "finish", "provider", "overhead_us")
_END_KEYS = frozenset(_END_ORDER)


class Connection:
    def __init__(self, role: str, keyring, *, limits: Limits = DEFAULT_LIMITS,
                 config: ConnectionConfig = ConnectionConfig(),
                 nonce_cache: NonceCache | None = None, now_ms: int = 0):
        if role not in TABLES:
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        self.role = role
        self.is_server = role == "server"
        self.keyring = keyring
        self.limits = limits
        self.config = config
        self._table = TABLES[role]
        self._guard = SessionGuard(is_responder=self.is_server, nonce_cache=nonce_cache,
                                   window=config.replay_window)
        self._flags = RESPONDER if self.is_server else 0
        self._buffer = bytearray()
        self._events: deque = deque()
        self._outbox: list[bytes] = []
        self._send_seq = 0
        self._now = now_ms
        self._last_sent = now_ms
        self._last_received = now_ms   # idle timeout counts from creation
        self._ping_data = 0
        self._pings: dict[int, int] = {}
        self.streams: dict = {}                 # stream id -> StreamState (live streams only)
        self._reserved: dict[int, tuple] = {}   # stream id -> reservation (server: to replenish)
        self._chunk_index: dict[int, int] = {}
        self._last_stream_id = 0
        self._pending_grant = [0, 0, 0]
        # Client: what the server lets us send. Server: mirror of what we granted.
        self.window = CreditWindow(*(config.initial_window if self.is_server else DEFAULT_INITIAL))
        self._consumed = [0, 0, 0]              # client: consumed before the server's HELLO
        self.established = False
        self.closed = False
        self.close_code: int | None = None
        self.congested = False                  # server: set to flag outgoing frames
        # Server: answer with the key the peer's HELLO was signed with, not the ring's current
        # one — each key belongs to one tenant, and a tenant holds only its own secrets.
        self._sign_key = self._sign_id = None
        self.peer_congested = False

    # ---- opening ---------------------------------------------------------------------------------

    def initiate(self, nonce: bytes, now_ms: int) -> None:
        """Client: queue the HELLO that opens the session; `nonce` must be 8 fresh random bytes."""
        if self.is_server:
            raise ProtocolError("only a client initiates")
        if len(nonce) != NONCE_SIZE or nonce == _ZERO_NONCE:
            raise ValueError("the session nonce must be 8 random bytes")
        self._now = self._last_received = now_ms
        self._guard.session_nonce = bytes(nonce)
        self._send(FrameType.HELLO, 0, {"agent": self.config.agent})

    # ---- input -----------------------------------------------------------------------------------

    def receive_data(self, data, now_ms: int) -> None:
        """Feed bytes from a byte stream (QUIC stream, TCP); complete frames are processed now."""
        if self.closed:
            return
        self._now = now_ms
        self._buffer += data
        buf = self._buffer
        offset = start = 0      # start: the frame being processed, whose nonce a refusal echoes
        try:
            while not self.closed:
                start = offset
                total = peek_length(buf, offset, self.limits)
                if total is None or offset + total > len(buf):
                    break
                frame, offset = open_frame(buf, offset, self.keyring, self.limits, now_ms)
                self._on_frame(frame, now_ms)
        except CodecError as exc:
            self._fail(exc, buf, start)
        del buf[:offset]

    def receive_frames(self, data, now_ms: int) -> None:
        """Feed one message holding one or more whole frames back to back (a gRPC Session
        message); a frame cut at the end of the message is MALFORMED_FRAME, not buffered."""
        if self.closed:
            return
        self._now = now_ms
        offset, end = 0, len(data)
        try:
            if end > self.limits.max_message:
                # §2.2: checked before any frame in it is processed (the refusal still echoes
                # the first frame's nonce, so the client can verify it)
                raise ProtocolError(f"a {end}-byte message is over the limit of "
                                    f"{self.limits.max_message}", ErrorCode.MALFORMED_FRAME)
            while offset < end and not self.closed:
                opened = open_frame(data, offset, self.keyring, self.limits, now_ms)
                if opened is None:
                    raise ProtocolError(f"message ends inside a frame ({end - offset} bytes left)",
                                        ErrorCode.MALFORMED_FRAME)
                frame, next_offset = opened
                self._on_frame(frame, now_ms)
                offset = next_offset
        except CodecError as exc:
            self._fail(exc, data, offset)

    def receive_frame(self, data, now_ms: int) -> None:
        """Feed exactly one whole frame (a gRPC Session message); partial or extra bytes are errors."""
        if self.closed:
            return
        self._now = now_ms
        try:
            opened = open_frame(data, 0, self.keyring, self.limits, now_ms)
            if opened is None:
                raise ProtocolError("message holds a truncated frame", ErrorCode.MALFORMED_FRAME)
            frame, end = opened
            if end != len(data):
                raise ProtocolError(f"{len(data) - end} bytes after the frame in one message",
                                    ErrorCode.MALFORMED_FRAME)
            self._on_frame(frame, now_ms)
        except CodecError as exc:
            self._fail(exc, data, 0)

    def _on_frame(self, frame, now_ms: int) -> None:
        self._guard.check(frame, now_ms)
        self._last_received = now_ms
        congested = bool(frame.flags & CONGESTION)
        if congested != self.peer_congested:
            self.peer_congested = congested
            self._events.append(ev.CongestionChanged(congested))
        handler = _HANDLERS[frame.type]
        handler(self, frame)

    # per-type handlers (dispatch table below)

    def _on_hello(self, frame) -> None:
        if self.established:
            raise ProtocolError("second HELLO on an open session")
        self.established = True
        p = frame.payload
        if self.is_server:
            self._sign_key = self.keyring.verifier(frame.key_id, self._now)   # verified it already
            self._sign_id = frame.key_id
            self._send(FrameType.HELLO, 0, {
                "win": list(self.config.initial_window), "agent": self.config.agent,
                "hb_ms": self.config.heartbeat_ms, "idle_ms": self.config.idle_timeout_ms,
                "max_payload": self.limits.max_payload})
            window = (0, 0, 0)
        else:
            granted = p.get("win", list(DEFAULT_INITIAL))
            self.window = CreditWindow(*(g - c for g, c in zip(granted, self._consumed)))
            window = tuple(granted)
        self._events.append(ev.SessionStarted(p.get("agent", ""), window, p.get("hb_ms", 0),
                                              frame.key_id, frame.nonce, frame.timestamp_ms))

    def _require_established(self, frame) -> None:
        if not self.established:
            raise ProtocolError(f"{frame.type.name} before HELLO")

    def _on_request(self, frame) -> None:
        self._require_established(frame)
        if not self.is_server:
            raise ProtocolError("a server may not open streams")
        sid = frame.stream_id
        if sid <= self._last_stream_id:
            raise ProtocolError(f"stream id {sid} is not above the last opened "
                                f"({self._last_stream_id})", ErrorCode.INVALID_STREAM)
        self._last_stream_id = sid
        self.streams[sid] = transition(self._table, IDLE, sid, "recv_request")
        need = reservation(frame.payload)
        why = self.window.shortfall(*need)
        if why is None and len(self.streams) > self.config.max_open_streams:
            why = f"more than {self.config.max_open_streams} open streams"

        if why is not None:
            # A stream-level refusal: the session stays up, the client may retry after credit.
            self._send_stream_close(sid, "send_error", FrameType.ERROR, {
                "code": int(ErrorCode.WINDOW_EXCEEDED), "msg": f"window exceeded ({why})",
                "retry": True})
            return
        self.window.consume(*need)
        self._reserved[sid] = need
        self._events.append(ev.RequestReceived(sid, frame.payload, frame.size))

    def _stream_input(self, frame, event: str):
        sid = frame.stream_id
        state = self.streams.get(sid)
        if state is None:
            if sid > self._last_stream_id:
                raise ProtocolError(f"{frame.type.name} on stream {sid} that was never opened",
                                    ErrorCode.INVALID_STREAM)
            return None   # a stream we already forgot (closed): late frames are dropped
        new = transition(self._table, state, sid, event)
        if new is CLOSED:
            del self.streams[sid]
            self._chunk_index.pop(sid, None)
        else:
            self.streams[sid] = new
        return state

    def _on_chunk(self, frame) -> None:
        self._require_established(frame)
        if self._stream_input(frame, "recv_chunk") is OPEN:
            p = frame.payload
            self._events.append(ev.ChunkReceived(frame.stream_id, p["i"], p["text"], p.get("tok", 0)))

    def _on_end(self, frame) -> None:
        self._require_established(frame)
        # Also after our CANCEL: the END raced it, and its usage/cost still matter to the caller.
        if self._stream_input(frame, "recv_end") is not None:
            self._reserved.pop(frame.stream_id, None)
            self._events.append(ev.StreamEnded(frame.stream_id, frame.payload))

    def _on_error(self, frame) -> None:
        self._require_established(frame)
        if self._stream_input(frame, "recv_error") is not None:
            p = frame.payload
            code = p["code"]
            need = self._reserved.pop(frame.stream_id, None)
            if code == ErrorCode.WINDOW_EXCEEDED and need is not None:
                # A refused REQUEST consumed nothing at the server: take our reservation back.
                self.window.grant(*need)
            self._events.append(ev.StreamReset(frame.stream_id, code, p.get("msg", ""),
                                               p.get("retry", code in RETRYABLE),
                                               p.get("after_ms", 0)))

    def _on_cancel(self, frame) -> None:
        self._require_established(frame)
        if not self.is_server:
            raise ProtocolError("CANCEL is sent by clients only")
        if self._stream_input(frame, "recv_cancel") is OPEN:
            sid = frame.stream_id
            code = frame.payload.get("code", int(ErrorCode.CANCELLED))
            self._events.append(ev.StreamCancelled(sid, code))
            self._release(sid)
            self._send(FrameType.ERROR, sid, {"msg": "cancelled by client",
                                              "code": int(ErrorCode.CANCELLED), "retry": False})

    def _on_window_update(self, frame) -> None:
        self._require_established(frame)
        if self.is_server:
            raise ProtocolError("WINDOW_UPDATE is sent by the server only")
        p = frame.payload
        inc = (p.get("req", 0), p.get("tok", 0), p.get("usd", 0))
        self.window.grant(*inc)
        self._events.append(ev.WindowUpdated(inc, self.window.available))

    def _on_ping(self, frame) -> None:
        self._send(FrameType.PONG, 0, {"d": frame.payload["d"]})
        self._events.append(ev.PingReceived(frame.payload["d"]))

    def _on_pong(self, frame) -> None:
        data = frame.payload["d"]
        sent = self._pings.pop(data, None)
        if sent is None:
            raise ProtocolError(f"PONG {data} answers no PING")
        self._events.append(ev.PongReceived(data, self._now - sent))

    def _on_close(self, frame) -> None:
        p = frame.payload
        self._outbox.clear()     # the peer has gone: nothing queued can matter to it now
        self.closed = True
        self.close_code = p["code"]
        self.streams.clear()
        self._events.append(ev.ConnectionTerminated(p["code"], p.get("msg", ""), by_peer=True))

    # ---- output ----------------------------------------------------------------------------------

    def _send(self, ftype: FrameType, stream_id: int, payload: dict, ordered: bool = True) -> None:
        """Queue a frame. Payloads built here are in deterministic key order without floats
        (ordered=True, the cheap encoder); anything a caller supplied uses the canonical one."""
        flags = self._flags | (CONGESTION if self.congested else 0)
        key = self._sign_key
        if key is None:
            key, key_id = self.keyring.signer, self.keyring.current_id
        else:
            key_id = self._sign_id
        self._outbox.append(seal(key, key_id, ftype, flags,
                                 stream_id, self._send_seq, self._now,
                                 self._guard.session_nonce or _ZERO_NONCE, payload, ordered))
        self._send_seq += 1
        self._last_sent = self._now

    def _check_open(self, now_ms) -> None:
        if self.closed:
            raise ProtocolError("connection is closed", ErrorCode.UNAVAILABLE)
        if now_ms is not None:
            self._now = now_ms

    def send_request(self, request: dict, now_ms: int | None = None) -> int:
        """Client: open a stream with a REQUEST; raises FlowControlError if the window is short."""
        self._check_open(now_ms)
        if self.is_server:
            raise ProtocolError("only clients send REQUEST")
        check_shape(FrameType.REQUEST, request, self.limits)
        sid = self._last_stream_id + 1
        if sid > 0xFFFFFFFF:
            raise ProtocolError("stream ids exhausted: open a new session", ErrorCode.INVALID_STREAM)
        need = reservation(request)
        self.window.consume(*need)
        if not self.established:
            self._consumed = [c + n for c, n in zip(self._consumed, need)]
        self._reserved[sid] = need
        self._last_stream_id = sid
        self.streams[sid] = transition(self._table, IDLE, sid, "send_request")
        self._send(FrameType.REQUEST, sid, request, ordered=False)
        return sid

    def send_cancel(self, stream_id: int, now_ms: int | None = None) -> None:
        self._check_open(now_ms)
        state = self.streams.get(stream_id)
        if state is None:
            return   # already finished: nothing to cancel
        self.streams[stream_id] = transition(self._table, state, stream_id, "send_cancel")
        if state is OPEN:
            self._send(FrameType.CANCEL, stream_id, {"code": int(ErrorCode.CANCELLED)})

    def send_chunk(self, stream_id: int, text: str, tokens: int = 0,
                   now_ms: int | None = None) -> None:
        self._check_open(now_ms)
        self._stream_output(stream_id, "send_chunk")
        index = self._chunk_index.get(stream_id, 0)
        self._chunk_index[stream_id] = index + 1
        payload = {"i": index, "tok": tokens, "text": text} if tokens else {"i": index, "text": text}
        self._send(FrameType.CHUNK, stream_id, payload)

    def send_end(self, stream_id: int, usage: dict, now_ms: int | None = None) -> None:
        """usage: in, out, cost (USD micros) required; model, provider, finish, overhead_us optional."""
        self._check_open(now_ms)
        if usage.keys() <= _END_KEYS:
            self._send_stream_close(stream_id, "send_end", FrameType.END,
                                    {k: usage[k] for k in _END_ORDER if k in usage})
        else:   # keys this version does not know: let the canonical encoder order them
            self._send_stream_close(stream_id, "send_end", FrameType.END, usage, ordered=False)

    def send_error(self, stream_id: int, code: int, message: str = "",
                   retry_after_ms: int = 0, now_ms: int | None = None) -> None:
        self._check_open(now_ms)
        payload = {"msg": message, "code": int(code), "retry": code in RETRYABLE}
        if retry_after_ms:
            payload["after_ms"] = int(retry_after_ms)
        self._send_stream_close(stream_id, "send_error", FrameType.ERROR, payload)

    def _stream_output(self, stream_id: int, event: str):
        state = self.streams.get(stream_id)
        if state is None:
            raise ProtocolError(f"stream {stream_id} is not open", ErrorCode.INVALID_STREAM)
        new = transition(self._table, state, stream_id, event)
        self.streams[stream_id] = new
        return new

    def _send_stream_close(self, stream_id, event, ftype, payload, ordered: bool = True) -> None:
        self._stream_output(stream_id, event)
        del self.streams[stream_id]
        self._chunk_index.pop(stream_id, None)
        self._release(stream_id)
        self._send(ftype, stream_id, payload, ordered)

    def _release(self, stream_id: int) -> None:
        """Server: a closed stream's reservation returns to the client (unless the owner meters)."""
        need = self._reserved.pop(stream_id, None)
        if need is not None and self.config.auto_replenish:
            self.grant(*need)

    def grant(self, requests: int = 0, tokens: int = 0, usd_micros: int = 0) -> None:
        """Server: extend the client's credit; coalesced into one WINDOW_UPDATE per flush."""
        if not self.is_server:
            raise ProtocolError("only the server grants credit")
        self.window.grant(requests, tokens, usd_micros)
        g = self._pending_grant
        g[0] += requests
        g[1] += tokens
        g[2] += usd_micros

    def send_ping(self, now_ms: int | None = None) -> int:
        self._check_open(now_ms)
        self._ping_data += 1
        self._pings[self._ping_data] = self._now
        self._send(FrameType.PING, 0, {"d": self._ping_data})
        return self._ping_data

    def close(self, code: int = ErrorCode.NO_ERROR, message: str = "",
              now_ms: int | None = None) -> None:
        """Queue CLOSE and stop; every live stream is abandoned."""
        if self.closed:
            return
        if now_ms is not None:
            self._now = now_ms
        self._flush_grant()
        self._send(FrameType.CLOSE, 0, {"msg": message, "code": int(code)})
        self.closed = True
        self.close_code = int(code)
        self.streams.clear()
        self._events.append(ev.ConnectionTerminated(int(code), message, by_peer=False))

    def _fail(self, exc: CodecError, buf=b"", offset: int = 0) -> None:
        if self._guard.session_nonce is None:
            # Refused before the session was bound: echo the offending frame's nonce (if its
            # header is readable) so an honest client can verify our CLOSE and learn the code.
            header = backend.impl.peek_frame(buf, offset) if len(buf) >= offset else None
            self._guard.session_nonce = header[9] if header else _ZERO_NONCE
        self.close(exc.code, str(exc.args[0]))

    def _flush_grant(self) -> None:
        g = self._pending_grant
        if g != [0, 0, 0] and self.established:
            payload = {k: v for k, v in zip(("req", "tok", "usd"), g) if v}
            self._pending_grant = [0, 0, 0]
            self._send(FrameType.WINDOW_UPDATE, 0, payload)

    def frames_to_send(self) -> list[bytes]:
        """Frames queued since the last call, one bytes object each (for message transports)."""
        if not self.closed:
            self._flush_grant()
        out, self._outbox = self._outbox, []
        return out

    def data_to_send(self) -> bytes:
        """Everything queued since the last call as one byte string (for stream transports)."""
        return b"".join(self.frames_to_send())

    def next_event(self):
        """The next event, or None when there is nothing more to process."""
        return self._events.popleft() if self._events else None

    # ---- timers ----------------------------------------------------------------------------------

    def get_timer(self) -> int | None:
        """Absolute ms at which handle_timer() must be called, or None."""
        if self.closed:
            return None
        deadlines = []
        if self.config.idle_timeout_ms:
            deadlines.append(self._last_received + self.config.idle_timeout_ms)
        if self.config.heartbeat_ms and self.established:
            deadlines.append(self._last_sent + self.config.heartbeat_ms)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now_ms: int) -> None:
        if self.closed:
            return
        self._now = now_ms
        if self.config.idle_timeout_ms and now_ms >= self._last_received + self.config.idle_timeout_ms:
            self.close(ErrorCode.TIMEOUT, f"nothing received for {now_ms - self._last_received} ms")
            return
        if (self.config.heartbeat_ms and self.established
                and now_ms >= self._last_sent + self.config.heartbeat_ms):
            self.send_ping()


_HANDLERS = {
    FrameType.HELLO: Connection._on_hello,
    FrameType.REQUEST: Connection._on_request,
    FrameType.CHUNK: Connection._on_chunk,
    FrameType.END: Connection._on_end,
    FrameType.ERROR: Connection._on_error,
    FrameType.WINDOW_UPDATE: Connection._on_window_update,
    FrameType.PING: Connection._on_ping,
    FrameType.PONG: Connection._on_pong,
    FrameType.CLOSE: Connection._on_close,
    FrameType.CANCEL: Connection._on_cancel,
}

__all__ = ["Connection", "ConnectionConfig", "FlowControlError"]

"""Client side of an ATP frame session, transport-agnostic: requests in, Chunks and Results out.

A transport (gRPC Session call, QUIC stream) gives FrameClient a `send(frames)` callable and
calls `feed()` / `feed_frames()` / `feed_frame()` with what arrives and `peer_closed()` when it
ends. Driving the Connection (timer, flush once per loop pass) is codec.aio.FrameDriver's job.
"""
import asyncio
import os

from codec import Connection, ConnectionConfig, Keyring
from codec import events as ev
from codec.aio import FrameDriver, now_ms
from codec.errors import ErrorCode, FlowControlError

from .errors import AtpClientError
from .types import Chunk, Result

_END = object()


def build_request(prompt=None, *, messages=None, tier=None, model=None, max_tokens=None,
                  max_cost_usd=None, slo_ms=None, tenant=None, capabilities=None,
                  temperature=None, request_id=None, metadata=None, stream=True) -> dict:
    """Friendly arguments -> a REQUEST payload (docs/PROTOCOL.md §6)."""
    if messages is None:
        if prompt is None:
            raise ValueError("give a prompt or messages")
        messages = [("user", prompt)]
    msgs = []
    for m in messages:
        if isinstance(m, dict):
            msgs.append([m["role"], m["content"]])
        else:
            role, content = m
            msgs.append([role, content])
    p = {"messages": msgs, "stream": bool(stream)}
    optional = {"tier": tier, "model": model, "max_tokens": max_tokens, "slo_ms": slo_ms,
                "tenant": tenant, "temperature": temperature, "rid": request_id, "meta": metadata}
    p.update({k: v for k, v in optional.items() if v is not None})
    if capabilities:
        p["caps"] = list(capabilities)
    if max_cost_usd is not None:
        p["max_cost"] = int(round(max_cost_usd * 1e6))
    return p


def keyring_for(key_id: int, secret: bytes) -> Keyring:
    return Keyring({key_id: secret}, current_id=key_id)


class FrameClient(FrameDriver):
    def __init__(self, keyring: Keyring, send, *, agent: str = "atp-python",
                 config: ConnectionConfig | None = None, on_closed=None):
        super().__init__(Connection("client", keyring, config=config or ConnectionConfig(
            agent=agent, heartbeat_ms=15_000, idle_timeout_ms=0), now_ms=now_ms()), send)
        self._on_closed = on_closed          # called once when the session ends either way
        self._queues: dict[int, asyncio.Queue] = {}
        self._window_open = asyncio.Event()
        self._window_open.set()
        self.started = asyncio.Event()
        self.terminated: AtpClientError | None = None
        self.conn.initiate(os.urandom(8), now_ms())
        self.flush()    # HELLO leaves now: a transport may hand-craft frames right after

    # ---- inbound ---------------------------------------------------------------------------------

    def peer_closed(self, message: str = "transport closed") -> None:
        if self.terminated is None:
            self.terminated = AtpClientError(ErrorCode.UNAVAILABLE, message)
        self._fail_all(self.terminated)
        self.finish()

    def _dispatch(self) -> None:
        while (e := self.conn.next_event()) is not None:
            kind = type(e)
            if kind is ev.ChunkReceived:
                q = self._queues.get(e.stream_id)
                if q is not None:
                    q.put_nowait(Chunk(e.index, e.text, e.tokens))
            elif kind is ev.StreamEnded:
                q = self._queues.get(e.stream_id)
                if q is not None:
                    q.put_nowait((_END, e.usage))
            elif kind is ev.StreamReset:
                q = self._queues.get(e.stream_id)
                if q is not None:
                    q.put_nowait(AtpClientError(e.code, e.message, e.retryable, e.retry_after_ms))
            elif kind is ev.WindowUpdated or kind is ev.SessionStarted:
                self._window_open.set()
                if kind is ev.SessionStarted:
                    self.started.set()
            elif kind is ev.ConnectionTerminated:
                if e.code == ErrorCode.NO_ERROR:   # a graceful close still strands open requests
                    self.terminated = AtpClientError(ErrorCode.UNAVAILABLE,
                                                     e.message or "session closed", True)
                else:
                    self.terminated = AtpClientError(e.code, e.message or "session closed")
                self._fail_all(self.terminated)

    def _closed(self) -> None:
        if self._on_closed is not None:
            self._on_closed()

    def _fail_all(self, error: AtpClientError) -> None:
        for q in self._queues.values():
            q.put_nowait(error)
        self._window_open.set()
        self.started.set()

    # ---- outbound --------------------------------------------------------------------------------

    async def _open_stream(self, payload: dict) -> int:
        while True:
            if self.terminated is not None:
                raise self.terminated
            try:
                sid = self.conn.send_request(payload, now_ms())
                break
            except FlowControlError:
                self._window_open.clear()       # wait for the server's WINDOW_UPDATE
                await self._window_open.wait()
        self._queues[sid] = asyncio.Queue()
        self.schedule_flush()   # requests opened in the same pass leave together
        return sid

    async def stream(self, payload: dict):
        """Async generator of Chunk, then one final Result; errors raise AtpClientError."""
        sid = await self._open_stream(payload)
        q = self._queues[sid]
        parts = []
        finished = False
        try:
            while True:
                item = await q.get()
                if type(item) is Chunk:
                    parts.append(item.text)
                    yield item
                elif isinstance(item, AtpClientError):
                    finished = True
                    raise item
                else:
                    usage = item[1]
                    finished = True
                    yield Result("".join(parts), usage.get("model", ""), usage.get("provider", ""),
                                 usage.get("finish", ""), usage["in"], usage["out"], usage["cost"],
                                 usage.get("overhead_us", 0), usage.get("rid") or payload.get("rid", ""))
                    return
        finally:
            self._queues.pop(sid, None)
            if not finished and not self.conn.closed:
                self.conn.send_cancel(sid, now_ms())   # the caller walked away: stop upstream
                self.flush()     # now: the loop may be closing (a sync client's shutdown)

    async def complete(self, payload: dict) -> Result:
        result = None
        async for item in self.stream(payload):
            if type(item) is Result:
                result = item
        return result

    def close(self) -> None:
        """CLOSE the session; the frame is handed to `send` before this returns."""
        if not self.conn.closed:
            self.conn.close(ErrorCode.NO_ERROR, "client closing", now_ms())
        self.flush()
        self.finish()

"""One ATP frame session to a next-hop router: a codec.Connection driven through codec/aio/ over
the hop's gRPC `Session` call, carrying every request this router forwards there (docs/FEDERATION.md §8).

The server never imports the client SDK (DESIGN §1): this is the server's own small client side
of the protocol, built on the same FrameDriver the SDK and the server's FrameSession use.
A session that ends (the hop died, its listener closed, a protocol error) fails every stream it
carried with a retryable UNAVAILABLE — before a first item that is what lets the forwarder try
the next hop — and the next request opens a fresh one.
"""
import asyncio
import os
from contextlib import suppress

import grpc

from codec import Connection, ConnectionConfig, Keyring
from codec import events as ev
from codec.aio import FrameDriver, now_ms
from codec.errors import ErrorCode, FlowControlError
from proto.atp.v1 import atp_pb2 as pb

from ..types import AtpError, Finish, TextDelta

SESSION_RPC = "/atp.v1.Atp/Session"
# A hop that stops answering (hung, or its host gone without a reset) is noticed within the AGP
# hold time's order: a PING after 1 s of silence from us, the session dropped after 3 s without
# anything from the hop. A killed process resets the TCP connection and is noticed at once.
HOP_CONNECTION = ConnectionConfig(agent="atp-forward/1", heartbeat_ms=1000, idle_timeout_ms=3000)


def _error(code: int, message: str, retry_after_ms: int = 0) -> AtpError:
    if code not in ErrorCode._value2member_map_:     # a newer hop's code: an upstream failure here
        code = ErrorCode.UPSTREAM_ERROR
    return AtpError(code, message, retry_after_ms)


class _HopSession(FrameDriver):
    """The frames of one session; each stream's items land in its queue."""

    def __init__(self, keyring: Keyring, send, hop: str):
        super().__init__(Connection("client", keyring, config=HOP_CONNECTION, now_ms=now_ms()), send)
        self.hop = hop
        self.queues: dict[int, asyncio.Queue] = {}
        self.credit = asyncio.Event()
        self.credit.set()
        self.failure: AtpError | None = None
        self.conn.initiate(os.urandom(8), now_ms())
        self.flush()

    def _dispatch(self) -> None:
        while (e := self.conn.next_event()) is not None:
            kind = type(e)
            if kind is ev.ChunkReceived:
                self._put(e.stream_id, TextDelta(e.text, e.tokens))
            elif kind is ev.StreamEnded:
                u = e.usage
                self._put(e.stream_id, Finish(u.get("finish") or "stop", u.get("in"), u.get("out")))
            elif kind is ev.StreamReset:
                self._put(e.stream_id, _error(e.code, f"via {self.hop}: {e.message}", e.retry_after_ms))
            elif kind is ev.WindowUpdated or kind is ev.SessionStarted:
                self.credit.set()
            elif kind is ev.ConnectionTerminated:
                self.lost(f"session to {self.hop} closed: {e.message or code_text(e.code)}")

    def _put(self, sid: int, item) -> None:
        q = self.queues.get(sid)
        if q is not None:
            q.put_nowait(item)

    def lost(self, why: str) -> None:
        """The session is over: every open stream fails retryably (another hop may serve it)."""
        if self.failure is None:
            self.failure = AtpError(ErrorCode.UNAVAILABLE, why, retry_after_ms=1000)
        for q in self.queues.values():
            q.put_nowait(self.failure)
        self.credit.set()
        self.finish()

    async def open(self, payload: dict) -> int:
        while True:
            if self.failure is not None:
                raise self.failure
            try:
                sid = self.conn.send_request(payload, now_ms())
                break
            except FlowControlError:       # out of credit: the hop's WINDOW_UPDATE reopens it
                self.credit.clear()
                await self.credit.wait()
        self.queues[sid] = asyncio.Queue()
        self.schedule_flush()
        return sid


def code_text(code: int) -> str:
    return ErrorCode(code).name if code in ErrorCode._value2member_map_ else f"code {code}"


class HopClient:
    """The session to one next hop, opened on first use and again after it ends."""

    def __init__(self, router_id: str, address: str, key_id: int, secret: bytes):
        self.router_id, self.address = router_id, address
        self.keyring = Keyring({key_id: secret}, current_id=key_id)
        self._session: _HopSession | None = None
        self._channel = None
        self._tasks: set[asyncio.Task] = set()

    def _live(self) -> _HopSession:
        s = self._session
        if s is not None and s.failure is None and not s.finished:
            return s
        if self._channel is not None:            # the previous session's channel: close it
            self._spawn(self._channel.close())
        self._channel = channel = grpc.aio.insecure_channel(self.address)
        call = channel.stream_stream(SESSION_RPC, request_serializer=pb.Frame.SerializeToString,
                                     response_deserializer=pb.Frame.FromString)()
        out: asyncio.Queue = asyncio.Queue()
        self._session = s = _HopSession(self.keyring, out.put_nowait, self.router_id)
        writer = self._spawn(self._write(call, out))
        self._spawn(self._read(call, s, writer))
        return s

    async def _write(self, call, out: asyncio.Queue) -> None:
        with suppress(grpc.RpcError, asyncio.InvalidStateError):
            while True:
                batch = list(await out.get())
                while not out.empty():      # everything queued this pass leaves as one message
                    batch.extend(out.get_nowait())
                await call.write(pb.Frame(data=b"".join(batch)))

    async def _read(self, call, s: _HopSession, writer: asyncio.Task) -> None:
        why = f"{self.router_id} ended the session call"
        try:
            while (msg := await call.read()) is not grpc.aio.EOF:
                s.feed_frames(msg.data)
        except grpc.RpcError as exc:
            why = f"{self.router_id} ({self.address}) unreachable: {exc.code().name}"
        except asyncio.CancelledError:
            why = "forwarding stopped"
        finally:
            s.lost(why)
            writer.cancel()

    async def items(self, payload: dict):
        """Async generator: TextDelta..., then one Finish; failures raise AtpError."""
        s = self._live()
        sid = await s.open(payload)
        q = s.queues[sid]
        done = False
        try:
            while True:
                item = await q.get()
                if type(item) is TextDelta:
                    yield item
                    continue
                done = True
                if isinstance(item, AtpError):
                    raise item
                yield item
                return
        finally:
            s.queues.pop(sid, None)
            if not done and not s.conn.closed:
                s.conn.send_cancel(sid, now_ms())    # the client went away: stop the hop too
                s.flush()

    async def aclose(self) -> None:
        if self._session is not None and not self._session.conn.closed:
            self._session.conn.close(ErrorCode.NO_ERROR, "router shutting down", now_ms())
            self._session.flush()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

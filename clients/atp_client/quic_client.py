"""ATP over QUIC for Python: ALPN atp/1, long-lived sessions on bidirectional streams, coalesced sends."""
import asyncio
import ssl
from contextlib import AsyncExitStack, aclosing

from aioquic.asyncio.client import connect as quic_connect
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration

from codec.errors import ErrorCode

from .errors import AtpClientError
from .frames import FrameClient, build_request, keyring_for
from .quic_protocol import CoalescingQuicProtocol
from .types import Chunk, Result

ALPN = "atp/1"
# The embedded default server's development credentials (atp_server.config; loopback only).
DEV_HMAC_KEY_ID = 1
DEV_HMAC_SECRET = b"atp-dev-hmac-secret-change-me!!!"


class QuicClientProtocol(CoalescingQuicProtocol):
    """A client QUIC connection whose streams are routed to handlers (feed / peer_closed).

    Like the server, it transmits once per event-loop pass instead of after every datagram and
    write: 32 requests started in one pass leave in as few datagrams as fit them.
    """

    def __init__(self, quic, stream_handler=None):
        super().__init__(quic, stream_handler)
        self.handlers: dict[int, object] = {}
        self.terminated: qe.ConnectionTerminated | None = None

    def new_stream_id(self) -> int:
        return self._quic.get_next_available_stream_id()

    def send(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        if self.terminated is not None:
            return
        try:
            self._quic.send_stream_data(sid, data, end_stream)
        except (ValueError, RuntimeError):
            return   # the server reset or stopped the stream: nothing more can go there
        self._transmit_soon()

    def datagram_received(self, data, addr) -> None:
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        self._process_events()
        if self._quic._close_event is not None and self.terminated is None:
            # aioquic emits ConnectionTerminated only after the 3-PTO draining period: fail the
            # sessions (and let the client reconnect) as soon as the server's close arrives.
            self._connection_lost(self._quic._close_event)
        self._transmit_soon()

    def quic_event_received(self, event) -> None:
        kind = type(event)
        if kind is qe.StreamDataReceived:
            handler = self.handlers.get(event.stream_id)
            if handler is None:
                return
            if event.data:
                handler.feed(event.data)
            if event.end_stream:
                del self.handlers[event.stream_id]
                handler.peer_closed("the server finished the stream")
        elif kind is qe.StreamReset or kind is qe.StopSendingReceived:
            handler = self.handlers.pop(event.stream_id, None)
            if handler is not None:
                handler.peer_closed(f"the server reset the stream ({event.error_code})")
        elif kind is qe.ConnectionTerminated and self.terminated is None:
            self._connection_lost(event)

    def _connection_lost(self, event: qe.ConnectionTerminated) -> None:
        self.terminated = event
        handlers, self.handlers = list(self.handlers.values()), {}
        for handler in handlers:
            handler.peer_closed(f"QUIC connection closed: {event.reason_phrase or 'no reason'}"
                                f" (0x{event.error_code:x})")


class QuicSession:
    """One ATP session on one QUIC bidirectional stream (a FrameClient plus the stream's ending)."""

    def __init__(self, protocol: QuicClientProtocol, keyring):
        self.protocol = protocol
        self.stream_id = protocol.new_stream_id()
        self.ended = False              # we finished our side of the stream
        self.fc = None
        protocol.handlers[self.stream_id] = self
        self.fc = FrameClient(keyring, self._send, agent="atp-python-quic")   # sends HELLO

    @property
    def alive(self) -> bool:
        return not self.ended and self.fc.terminated is None and not self.fc.conn.closed

    def _send(self, frames: list) -> None:
        if self.ended:
            return
        # After CLOSE nothing more may follow (PROTOCOL.md §2.1): the FIN rides with it.
        closing = self.fc is not None and self.fc.conn.closed
        self.protocol.send(self.stream_id, b"".join(frames), closing)
        self.ended = closing

    def feed(self, data: bytes) -> None:
        self.fc.feed(data)
        if self.fc.conn.closed:
            self._finish()

    def peer_closed(self, message: str) -> None:
        self.fc.peer_closed(message)
        self._finish()
        self.protocol.handlers.pop(self.stream_id, None)

    def _finish(self) -> None:
        if not self.ended:
            self.ended = True
            self.protocol.send(self.stream_id, b"", True)

    def close(self) -> None:
        self.fc.close()          # CLOSE, with the FIN (see _send)
        self._finish()


class AsyncQuicClient:
    """ATP client over QUIC. Requests are multiplexed on `streams` long-lived sessions (round robin).

    verify=False accepts the server's self-signed development certificate; a str is a CA file
    (e.g. the server's generated quic-cert.pem); True uses the system trust store.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8472, key_id: int = DEV_HMAC_KEY_ID,
                 secret: bytes = DEV_HMAC_SECRET, *, verify: bool | str = False, streams: int = 1,
                 server_name: str | None = None, connect_timeout: float = 10.0,
                 idle_timeout: float = 60.0):
        if streams < 1:
            raise ValueError("streams must be >= 1")
        self.host, self.port = host, port
        self.verify = verify
        self.server_name = server_name
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.streams = streams
        self._keyring = keyring_for(key_id, secret)
        self._stack: AsyncExitStack | None = None
        self.protocol: QuicClientProtocol | None = None
        self.sessions: list[QuicSession] = []
        self._next = 0
        self._closed = False
        self._connecting: asyncio.Future | None = None

    def _configuration(self) -> QuicConfiguration:
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                   idle_timeout=self.idle_timeout,
                                   server_name=self.server_name or self.host)
        if self.verify is False:
            config.verify_mode = ssl.CERT_NONE
        elif isinstance(self.verify, str):
            config.load_verify_locations(cafile=self.verify)
        return config

    async def connect(self) -> None:
        """Handshake and open the sessions; a failure raises AtpClientError(UNAVAILABLE)."""
        if self._closed:
            raise AtpClientError(ErrorCode.UNAVAILABLE, "client is closed")
        if self.protocol is not None and self.protocol.terminated is None:
            return
        if self._connecting is not None:          # concurrent callers share one handshake
            return await asyncio.shield(self._connecting)
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            await self._teardown()
            stack = AsyncExitStack()
            made: list[QuicClientProtocol] = []

            def create_protocol(*args, **kwargs):
                made.append(QuicClientProtocol(*args, **kwargs))
                return made[-1]
            try:
                self.protocol = await asyncio.wait_for(stack.enter_async_context(quic_connect(
                    self.host, self.port, configuration=self._configuration(),
                    create_protocol=create_protocol)), self.connect_timeout)
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                await stack.aclose()
                closed = made[0].terminated if made else None
                why = (f"{closed.reason_phrase or 'closed'} (QUIC error 0x{closed.error_code:x})"
                       if closed is not None else str(exc) or type(exc).__name__)
                raise AtpClientError(ErrorCode.UNAVAILABLE, f"QUIC connection to {self.host}:"
                                     f"{self.port} failed: {why}") from exc
            self._stack = stack
            self.sessions = [QuicSession(self.protocol, self._keyring)
                             for _ in range(self.streams)]
            self._connecting.set_result(None)
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()          # retrieved: no "never retrieved" warning
            raise
        finally:
            self._connecting = None

    async def _frame_client(self) -> FrameClient:
        if self.protocol is None or self.protocol.terminated is not None:
            await self.connect()
        i = self._next
        self._next = (i + 1) % self.streams
        session = self.sessions[i]
        if not session.alive:      # the server closed that session: open a fresh stream
            session = self.sessions[i] = QuicSession(self.protocol, self._keyring)
        return session.fc

    async def stream(self, prompt=None, *, messages=None, tier=None, model=None, max_tokens=None,
                     max_cost_usd=None, slo_ms=None, tenant=None, capabilities=None,
                     temperature=None, request_id=None, metadata=None):
        """Async iterator of Chunk, then one final Result; leaving early cancels upstream."""
        payload = build_request(prompt, messages=messages, tier=tier, model=model,
                                max_tokens=max_tokens, max_cost_usd=max_cost_usd, slo_ms=slo_ms,
                                tenant=tenant, capabilities=capabilities, temperature=temperature,
                                request_id=request_id, metadata=metadata, stream=True)
        fc = await self._frame_client()
        async with aclosing(fc.stream(payload)) as items:
            async for item in items:
                yield item

    async def complete(self, prompt=None, *, messages=None, tier=None, model=None,
                       max_tokens=None, max_cost_usd=None, slo_ms=None, tenant=None,
                       capabilities=None, temperature=None, request_id=None,
                       metadata=None) -> Result:
        payload = build_request(prompt, messages=messages, tier=tier, model=model,
                                max_tokens=max_tokens, max_cost_usd=max_cost_usd, slo_ms=slo_ms,
                                tenant=tenant, capabilities=capabilities, temperature=temperature,
                                request_id=request_id, metadata=metadata, stream=False)
        fc = await self._frame_client()
        return await fc.complete(payload)

    async def _teardown(self) -> None:
        protocol, stack = self.protocol, self._stack
        self.protocol, self._stack = None, None
        if protocol is not None and protocol.terminated is None:
            for session in self.sessions:
                session.close()
            protocol.transmit()   # the CLOSE frames must leave before CONNECTION_CLOSE
        self.sessions = []
        if stack is not None:
            await stack.aclose()  # QUIC close, wait for the closing period, release the socket

    async def close(self) -> None:
        """CLOSE every session, finish the streams, close the QUIC connection."""
        self._closed = True
        await self._teardown()

    async def __aenter__(self) -> "AsyncQuicClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


__all__ = ["AsyncQuicClient", "QuicClientProtocol", "QuicSession", "Chunk", "Result", "ALPN"]

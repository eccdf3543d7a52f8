"""ATP over QUIC for Python: ALPN atp/1, long-lived sessions on bidirectional streams, coalesced sends."""
import asyncio
import ssl
from contextlib import aclosing

from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from codec.aio.quic import CoalescingQuicProtocol
from codec.errors import ErrorCode

from .credentials import hmac_from
from .errors import AtpClientError
from .frames import FrameClient, build_request, keyring_for
from .types import Chunk, Result

ALPN = "atp/1"
# aioquic resends a lost Initial after 0.2 s, then 0.4, 0.8, 1.6 s (PTO from its 100 ms initial
# RTT, doubling): 5 s lets a handshake survive four lost Initials in a row; waiting longer mostly
# means waiting for a server that is not there.
CONNECT_TIMEOUT_S = 5.0


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()   # read, so an unawaited failure logs no "never retrieved"


class QuicClientProtocol(CoalescingQuicProtocol):
    """A client QUIC connection whose streams are routed to handlers (feed / peer_closed).

    Like the server, it transmits once per event-loop pass instead of after every datagram and
    write: 32 requests started in one pass leave in as few datagrams as fit them.
    """

    def __init__(self, quic, stream_handler=None):
        super().__init__(quic, stream_handler)
        self.handlers: dict[int, object] = {}
        self.terminated: qe.ConnectionTerminated | None = None
        # Resolved by HandshakeCompleted, failed by a close or an ICMP error; always retrieved.
        self.handshake: asyncio.Future = self._loop.create_future()
        self.handshake.add_done_callback(_retrieve)

    def error_received(self, exc: OSError) -> None:
        # On a connected UDP socket the kernel reports ICMP port-unreachable as
        # ConnectionRefusedError: nothing listens there, so the handshake fails now, not at
        # the timeout. Later errors are transient as far as QUIC is concerned (idle timeout).
        if not self.handshake.done():
            self.handshake.set_exception(exc)

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
        elif kind is qe.HandshakeCompleted:
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif kind is qe.ConnectionTerminated and self.terminated is None:
            self._connection_lost(event)

    def _connection_lost(self, event: qe.ConnectionTerminated) -> None:
        self.terminated = event
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(
                f"{event.reason_phrase or 'closed'} (QUIC error 0x{event.error_code:x})"))
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

    The server certificate is verified: against `ca_file` when given (e.g. a dev server's
    generated <state_dir>/quic-cert.pem, which pins that certificate), else the system trust
    store. `insecure=True` skips verification, explicitly. Frames are signed with `key_id` and
    `secret`, or $ATP_KEY_ID and $ATP_HMAC_SECRET; there is no built-in default.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8472, key_id: int | None = None,
                 secret: bytes | str | None = None, *, ca_file: str | None = None,
                 insecure: bool = False, streams: int = 1, server_name: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, idle_timeout: float = 60.0):
        if streams < 1:
            raise ValueError("streams must be >= 1")
        if insecure and ca_file is not None:
            raise ValueError("give ca_file (verify against it) or insecure=True, not both")
        self.host, self.port = host, port
        self.ca_file = ca_file
        self.insecure = insecure
        self.server_name = server_name
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.streams = streams
        self._keyring = keyring_for(*hmac_from(key_id, secret))
        self.protocol: QuicClientProtocol | None = None
        self._transport = None
        self.sessions: list[QuicSession] = []
        self._next = 0
        self._closed = False
        self._connecting: asyncio.Future | None = None

    def _configuration(self) -> QuicConfiguration:
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                   idle_timeout=self.idle_timeout,
                                   server_name=self.server_name or self.host)
        # Stated, not left to aioquic's None-means-required: verification is the default here.
        config.verify_mode = ssl.CERT_NONE if self.insecure else ssl.CERT_REQUIRED
        if self.ca_file is not None:
            config.load_verify_locations(cafile=self.ca_file)
        return config

    async def _open(self) -> None:
        """One QUIC connection on a connected UDP socket, handshake done within connect_timeout."""
        loop = asyncio.get_running_loop()
        quic = QuicConnection(configuration=self._configuration())
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: QuicClientProtocol(quic), remote_addr=(self.host, self.port))
        try:
            protocol.connect(transport.get_extra_info("peername"))
            await asyncio.wait_for(asyncio.shield(protocol.handshake), self.connect_timeout)
        except BaseException:
            transport.close()   # no handshake: no peer state to close politely
            raise
        self.protocol, self._transport = protocol, transport

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
            where = f"QUIC connection to {self.host}:{self.port} failed"
            try:
                await self._open()
            except asyncio.TimeoutError:
                raise AtpClientError(ErrorCode.UNAVAILABLE, f"{where}: no answer within "
                                     f"{self.connect_timeout:g} s") from None
            except ConnectionRefusedError:
                raise AtpClientError(ErrorCode.UNAVAILABLE, f"{where}: connection refused "
                                     "(nothing listens on that UDP port)") from None
            except (ConnectionError, OSError) as exc:
                raise AtpClientError(ErrorCode.UNAVAILABLE,
                                     f"{where}: {exc or type(exc).__name__}") from exc
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
        protocol, transport = self.protocol, self._transport
        self.protocol = self._transport = None
        self.sessions, sessions = [], self.sessions
        if protocol is None:
            return
        try:
            if protocol.terminated is None:
                for session in sessions:
                    session.close()
                protocol.transmit()   # the CLOSE frames must leave before CONNECTION_CLOSE
            protocol.close()          # QUIC close (a no-op if the connection already ended)
            await protocol.wait_closed()   # aioquic ends the closing period (3 PTO) by itself
        finally:
            transport.close()         # release the socket

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

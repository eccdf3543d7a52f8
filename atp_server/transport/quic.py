"""QUIC transport: ALPN atp/1, one ATP FrameSession per client bidirectional stream, coalesced transmit."""
import asyncio
import logging
from functools import partial

from aioquic.asyncio import serve
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from codec.aio.quic import CoalescingQuicProtocol
from codec.errors import ErrorCode

from ..session import FrameSession

ALPN = "atp/1"
log = logging.getLogger("atp.quic")


class AtpQuicProtocol(CoalescingQuicProtocol):
    """One QUIC connection. It carries no ATP state: each client bidi stream is its own session.

    aioquic transmits after every datagram and every write; here a receive or a write only marks
    the connection dirty and one transmit() runs per event-loop pass, so all the frames the
    sessions produced in that pass (and the ACKs) share datagrams.
    """

    def __init__(self, quic, stream_handler=None, *, owner: "QuicTransport"):
        super().__init__(quic, stream_handler)
        self._owner = owner
        self.sessions: dict[int, FrameSession] = {}
        self._refuse = owner.draining      # created while draining: refuse the handshake
        self._gone = False
        owner.protocols.add(self)

    # ---- receive -----------------------------------------------------------------------------

    def datagram_received(self, data, addr) -> None:
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        if self._refuse:
            self._refuse = False
            self._owner.service.refused("quic", reason="draining")
            self._quic.close(error_code=QuicErrorCode.CONNECTION_REFUSED,
                             frame_type=QuicFrameType.PADDING, reason_phrase="server draining")
        self._process_events()
        if self._quic._close_event is not None and not self._gone:
            # aioquic reports ConnectionTerminated only after the 3-PTO draining period; the
            # sessions' upstream calls are cancelled as soon as the close is known.
            self._connection_lost()
        self._transmit_soon()

    def quic_event_received(self, event) -> None:
        kind = type(event)
        if kind is qe.StreamDataReceived:
            sid = event.stream_id
            session = self.sessions.get(sid)
            fresh = session is None
            if fresh:
                if sid & 3 or self._gone:   # not a client bidi stream (nowhere to answer), or dead
                    return
                session = self.sessions[sid] = FrameSession(
                    self._owner.service, "quic", partial(self._write, sid),
                    partial(self._send, sid, b"", True), message_mode=False)
            if event.data:
                session.feed(event.data)
            if fresh and self._owner.draining:   # after the feed, so the refusal echoes the nonce
                session.close(ErrorCode.UNAVAILABLE, "server draining")
                self._owner.service.refused("quic", reason="draining")
            if event.end_stream:     # the transport ended without (or after) CLOSE: §11.6
                self.sessions.pop(sid, None)
                session.peer_gone()
        elif kind is qe.StreamReset or kind is qe.StopSendingReceived:
            session = self.sessions.pop(event.stream_id, None)
            if session is not None:
                session.peer_gone()
        elif kind is qe.ConnectionTerminated:
            self._connection_lost()

    def _connection_lost(self) -> None:
        self._gone = True
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session.peer_gone()
        self._owner.protocols.discard(self)
        self._owner.check_drained()

    # ---- send --------------------------------------------------------------------------------

    def _write(self, sid: int, frames: list) -> None:
        self._send(sid, frames[0] if len(frames) == 1 else b"".join(frames), False)
        if self._owner.draining:
            self._owner.check_drained()

    def _send(self, sid: int, data: bytes, end_stream: bool) -> None:
        if self._gone:
            return
        try:
            self._quic.send_stream_data(sid, data, end_stream)
        except (ValueError, RuntimeError):
            return   # the peer reset/stopped the stream, or it is already finished: drop
        self._transmit_soon()

    def _sent(self, datagrams: int) -> None:
        super()._sent(datagrams)
        self._owner.transmits += 1
        self._owner.datagrams += datagrams

    # ---- shutdown ----------------------------------------------------------------------------

    def close_sessions(self) -> None:
        """Server shutdown: CLOSE every session (UNAVAILABLE if it still had work, else NO_ERROR)."""
        for session in list(self.sessions.values()):
            if session.tasks:
                session.close(ErrorCode.UNAVAILABLE, "server shutting down")
            else:
                session.close(ErrorCode.NO_ERROR, "server shutting down")

    def busy(self) -> bool:
        return any(s.tasks for s in self.sessions.values())


class QuicTransport:
    """The QUIC listener. `transmits`/`datagrams` count what left, to show the coalescing.

    `certificate` is (cert file, key file): the composition root resolves it (tls.tls_paths).
    """

    def __init__(self, service, certificate: tuple, *, idle_timeout_s: float = 60.0):
        self.service = service
        self.certificate = certificate
        self.idle_timeout_s = idle_timeout_s
        self.protocols: set[AtpQuicProtocol] = set()
        self.draining = False
        self.transmits = 0
        self.datagrams = 0
        self._server = None
        self._drained = asyncio.Event()

    def configuration(self) -> QuicConfiguration:
        cert, key = self.certificate
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                   idle_timeout=self.idle_timeout_s)
        config.load_cert_chain(cert, key)
        return config

    async def start(self, host: str, port: int) -> int:
        """Listen on UDP host:port (0 = any free port); returns the bound port."""
        self._server = await serve(host, port, configuration=self.configuration(),
                                   create_protocol=partial(AtpQuicProtocol, owner=self))
        return self._server._transport.get_extra_info("sockname")[1]

    def check_drained(self) -> None:
        if not any(p.busy() for p in self.protocols):
            self._drained.set()

    async def stop(self, grace_s: float) -> None:
        """Refuse new connections and sessions, let running requests finish for up to `grace_s`,
        then CLOSE every session, finish its stream and close each QUIC connection."""
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        self.draining = True
        deadline = loop.time() + grace_s
        self._drained.clear()
        self.check_drained()
        while not self._drained.is_set() and (left := deadline - loop.time()) > 0:
            try:   # woken by the last write of the last request; the bound keeps it safe anyway
                await asyncio.wait_for(self._drained.wait(), min(left, 0.1))
            except asyncio.TimeoutError:
                self.check_drained()
        protocols = list(self.protocols)
        for protocol in protocols:
            protocol.close_sessions()
        # Two loop passes: the sessions flush their CLOSE frames, the streams get their FIN.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for protocol in protocols:
            protocol.transmit()         # stream data must leave before CONNECTION_CLOSE
            protocol.close(QuicErrorCode.NO_ERROR, "server shutting down")
        self._server.close()
        self._server = None
        log.info("QUIC transport stopped (%d connections closed)", len(protocols))

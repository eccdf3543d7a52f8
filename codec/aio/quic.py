"""A QuicConnectionProtocol that transmits once per event-loop pass: the SDK's and the server's base.

aioquic's protocol transmits after every received datagram and every write; at one frame per
write that is 4-5x the CPU per request (docs/ARCHITECTURE.md, measured costs). Subclasses call
`_transmit_soon()` (aioquic's own deferral to the next loop pass) after receiving or writing;
`transmit()` then sends every datagram pending and re-arms the connection timer once.

This reaches into aioquic's QuicConnectionProtocol internals (listed in AIOQUIC_INTERNALS), so
pyproject.toml pins aioquic to the minor version they were read from and
tests/codec/test_aio.py fails loudly when an upgrade renames one.
"""
from aioquic.asyncio.protocol import QuicConnectionProtocol

# What this module and its subclasses (atp_server/transport/quic.py, atp_client/quic_client.py)
# use of aioquic beyond its public API: protocol attributes, then QuicConnection attributes.
AIOQUIC_INTERNALS = {
    "QuicConnectionProtocol": ("_transmit_task", "_timer", "_timer_at", "_quic", "_transport",
                               "_loop", "_process_events", "_handle_timer", "_transmit_soon"),
    # datagram_received overrides read it: aioquic reports ConnectionTerminated only after the
    # 3-PTO draining period, and the sessions must learn of a close at once.
    "QuicConnection": ("_close_event",),
}


class CoalescingQuicProtocol(QuicConnectionProtocol):
    def __init__(self, quic, stream_handler=None):
        super().__init__(quic, stream_handler)
        self.transmits = 0      # transmit() calls that sent something
        self.datagrams = 0      # datagrams they sent

    def _sent(self, datagrams: int) -> None:
        """Count a transmission (subclasses may also count elsewhere)."""
        self.transmits += 1
        self.datagrams += datagrams

    def transmit(self) -> None:
        handle, self._transmit_task = self._transmit_task, None
        if handle is not None:
            handle.cancel()      # a direct call (close, timer) supersedes the deferred one
        sent = 0
        transport = self._transport
        if not transport.is_closing():
            for data, addr in self._quic.datagrams_to_send(now=self._loop.time()):
                transport.sendto(data, addr)
                sent += 1
        if sent:
            self._sent(sent)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

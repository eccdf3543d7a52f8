"""codec/aio: the aioquic internals the coalescing protocol relies on exist, and the driver's contract."""
import asyncio
import importlib.metadata

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from codec import Connection, Keyring
from codec.aio import FrameDriver, now_ms
from codec.aio.quic import AIOQUIC_INTERNALS, CoalescingQuicProtocol

PINNED_MINOR = "1.7"    # pyproject.toml: aioquic>=1.7,<1.8


def test_installed_aioquic_is_the_pinned_minor():
    assert importlib.metadata.version("aioquic").startswith(PINNED_MINOR + ".")


def test_pyproject_pins_that_minor():
    import pathlib
    text = (pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"aioquic>={PINNED_MINOR},<1.8"' in text


def test_the_private_aioquic_attributes_we_use_exist():
    """An aioquic upgrade that renames one of these must fail here, not in production."""
    assert set(AIOQUIC_INTERNALS["QuicConnectionProtocol"]) >= {
        "_transmit_task", "_timer", "_timer_at", "_quic", "_transport", "_loop",
        "_process_events", "_handle_timer", "_transmit_soon"}
    assert AIOQUIC_INTERNALS["QuicConnection"] == ("_close_event",)

    async def main():
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
        protocol = QuicConnectionProtocol(quic)
        missing = [a for a in AIOQUIC_INTERNALS["QuicConnectionProtocol"]
                   if not hasattr(protocol, a)]
        missing += [f"QuicConnection.{a}" for a in AIOQUIC_INTERNALS["QuicConnection"]
                    if not hasattr(quic, a)]
        assert missing == [], f"aioquic changed: {missing} are gone"
        assert protocol._quic is quic and protocol._transmit_task is None
        for method in ("_process_events", "_handle_timer", "_transmit_soon"):
            assert callable(getattr(protocol, method))
        assert quic._close_event is None       # set by close / a received CONNECTION_CLOSE
        quic.close()
        assert quic._close_event is not None
        assert issubclass(CoalescingQuicProtocol, QuicConnectionProtocol)
    asyncio.run(main())


class Recorder(FrameDriver):
    """A FrameDriver that records what it dispatched and sent."""

    def __init__(self, conn):
        self.sent, self.events, self.closed_calls = [], [], 0
        super().__init__(conn, self.sent.append)

    def _dispatch(self):
        while (e := self.conn.next_event()) is not None:
            self.events.append(type(e).__name__)

    def _closed(self):
        self.closed_calls += 1


def keyring():
    return Keyring({1: b"k" * 32}, current_id=1)


def test_driver_flushes_once_per_loop_pass_and_finishes_once():
    async def main():
        client = Recorder(Connection("client", keyring(), now_ms=now_ms()))
        client.conn.initiate(b"\x01" * 8, now_ms())
        client.schedule_flush()
        client.schedule_flush()               # one flush for the pass, however many asks
        assert client.sent == []
        await asyncio.sleep(0)                # let the loop pass end (no timing involved)
        assert len(client.sent) == 1 and len(client.sent[0]) == 1   # the HELLO
        client.conn.close(0, "bye", now_ms())
        client.flush()
        client.flush()
        assert client.finished and client.closed_calls == 1
        client.schedule_flush()               # finished: nothing more is scheduled
        assert not client._flush_pending
    asyncio.run(main())

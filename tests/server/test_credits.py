"""Session credit pacing: closed streams return their reservation; request credit follows AIMD capacity."""
import asyncio
import itertools

import pytest

from atp_client import build_request
from atp_server.app import App
from atp_server.types import AtpError
from codec.errors import ErrorCode

from .helpers import make_config
from .test_session import Wire

INITIAL = (64, 1 << 20, 100_000_000)     # the server's HELLO grant (codec ConnectionConfig default)


def _app(tmp_path):
    cfg = make_config(tmp_path, server="max_inflight = 64", sim_options="output_tokens = 3")
    return App(cfg)


async def _hang_up(wire, app):
    wire.client.close()
    await wire.closed.wait()
    await app.stop(0)


def _shrink(app, provider="sim"):
    """One 429 from the provider: its AIMD window halves."""
    with pytest.raises(AtpError):
        with app.windows.slot(provider):
            raise AtpError(ErrorCode.RATE_LIMITED, "429 from upstream")


def test_with_room_to_spare_every_closed_stream_gives_its_whole_reservation_back(tmp_path):
    async def main():
        app = _app(tmp_path)
        wire = Wire(app)
        await asyncio.gather(*(wire.client.complete(build_request(f"q{i}", max_tokens=50))
                               for i in range(20)))
        credit = wire.client.conn.window.available
        await _hang_up(wire, app)
        return credit
    assert run(main()) == INITIAL


def test_request_credit_shrinks_with_the_providers_windows_and_grows_back(tmp_path):
    async def main():
        app = _app(tmp_path)
        app.windows.clock = itertools.count().__next__   # a second per reading: each 429 is its own episode
        wire = Wire(app)
        await wire.client.complete(build_request("warm up"))
        before = wire.client.conn.window.requests
        for _ in range(5):
            _shrink(app)                      # 64 -> 32 -> 16 -> 8 -> 4 -> 2
        # Credit shrinks only by being consumed and not given back (no negative increments):
        # 80 requests use up the excess; what comes back is what the providers can take now.
        await asyncio.gather(*(wire.client.complete(build_request(f"q{i}")) for i in range(80)))
        shrunk = (wire.client.conn.window.requests, app.admission.capacity())
        tokens = wire.client.conn.window.tokens
        s = app.windows.state                 # the provider recovered (as successes make it)
        s.window[0], s.whole[0], app.windows.total = 40.0, 40, 40
        await wire.client.complete(build_request("recovered"))
        grown = wire.client.conn.window.requests
        await _hang_up(wire, app)
        return before, shrunk, tokens, grown
    before, (shrunk, capacity), tokens, grown = run(main())
    assert before == 64
    assert shrunk == capacity and 2 <= capacity < 20   # 80 successes grew 2 by +1/w each
    assert tokens == INITIAL[1]               # tokens still come back in full
    assert grown == 40                        # a WINDOW_UPDATE granted the growth


def test_a_refused_request_returns_its_credit_too(tmp_path):
    async def main():
        app = _app(tmp_path)
        wire = Wire(app)
        app.draining = True
        with pytest.raises(Exception):
            await wire.client.complete(build_request("refused while draining"))
        credit = wire.client.conn.window.available
        app.draining = False
        await _hang_up(wire, app)
        return credit
    assert run(main()) == INITIAL


def run(coro):
    return asyncio.run(coro)

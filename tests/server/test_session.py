"""FrameSession in memory: the SDK's FrameClient wired straight to the server's session glue."""
import asyncio

import pytest

from atp_client import AtpClientError, FrameClient, build_request, keyring_for
from atp_client.types import Chunk, Result
from atp_server import config
from atp_server.app import App
from atp_server.session import FrameSession
from codec.errors import ErrorCode

from .helpers import make_config


class Wire:
    """Client and server joined by two callbacks; `message_mode` mimics gRPC (frame per message)."""

    def __init__(self, app, message_mode=True, secret=config.DEV_HMAC_SECRET):
        self.closed = asyncio.Event()
        self.message_mode = message_mode
        self.to_server: list[bytes] = []
        self.server = FrameSession(app.service, "mem", self._to_client, self.closed.set,
                                   message_mode=message_mode)
        self.client = FrameClient(keyring_for(config.DEV_HMAC_KEY_ID, secret), self._to_server)

    def _to_server(self, frames):
        self.to_server.extend(frames)
        loop = asyncio.get_running_loop()
        for f in frames:
            loop.call_soon(self.server.feed, f)

    def _to_client(self, frames):
        feed = self.client.feed_frame if self.message_mode else self.client.feed
        for f in frames:
            feed(f)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("message_mode", [True, False])
def test_concurrent_requests_on_one_session(tmp_path, message_mode):
    async def main():
        app = App(make_config(tmp_path, sim_options="output_tokens = 6"))
        wire = Wire(app, message_mode)
        results = await asyncio.gather(*(wire.client.complete(build_request(f"q{i}", tier="fast"))
                                         for i in range(20)))
        wire.client.close()
        await wire.closed.wait()
        await app.stop(0)
        return results, app
    results, app = run(main())
    assert all(isinstance(r, Result) and r.output_tokens == 6 and r.model == "cheap" for r in results)
    assert app.accountant.by_tenant["default"].requests == 20


def test_stream_chunks_in_order_then_result(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="output_tokens = 4"))
        wire = Wire(app)
        items = [i async for i in wire.client.stream(build_request("hi", model="smart"))]
        await app.stop(0)
        return items
    items = run(main())
    assert [c.index for c in items[:-1] if isinstance(c, Chunk)] == [0, 1, 2, 3]
    assert isinstance(items[-1], Result) and items[-1].model == "smart"
    assert items[-1].text == "".join(c.text for c in items[:-1])


def test_pipeline_errors_become_stream_errors_and_session_survives(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        wire = Wire(app)
        with pytest.raises(AtpClientError) as info:
            await wire.client.complete(build_request("x", model="ghost"))
        ok = await wire.client.complete(build_request("x"))
        await app.stop(0)
        return info.value, ok
    err, ok = run(main())
    assert err.code == ErrorCode.UNKNOWN_MODEL and not err.retryable
    assert ok.output_tokens > 0


def test_client_abandoning_a_stream_cancels_the_upstream(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="tokens_per_s = 50\noutput_tokens = 100"))
        wire = Wire(app)
        recorded = asyncio.Event()    # set when the pipeline has recorded the request's outcome
        app.pipeline.observers.append(
            lambda rid, transport, outcome, code: rid == "abandon" and recorded.set())
        gen = wire.client.stream(build_request("x", request_id="abandon"))
        async for item in gen:
            break
        await gen.aclose()            # sends CANCEL
        await recorded.wait()
        app.audit.flush()
        rows = app.audit._db.execute("SELECT outcome FROM audit WHERE request_id='abandon'").fetchall()
        await app.stop(0)
        return rows
    assert run(main()) == [("CANCELLED",)]


def test_wrong_key_closes_the_session_with_bad_signature(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        wire = Wire(app, secret=b"not-the-server-secret-at-all!!")
        with pytest.raises(AtpClientError):
            await wire.client.complete(build_request("x"))
        await wire.closed.wait()
        code = wire.server.conn.close_code
        calls = app.adapters["sim"].calls
        await app.stop(0)
        return code, calls
    code, calls = run(main())
    assert code == ErrorCode.BAD_SIGNATURE
    assert calls == 0            # nothing reached a provider


def test_replayed_hello_is_refused_by_a_second_session(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        first = Wire(app)
        await first.client.complete(build_request("x"))
        hello = first.to_server[0]
        closed = asyncio.Event()
        out = []
        replay = FrameSession(app.service, "mem", out.extend, closed.set, message_mode=True)
        replay.feed(hello)
        await closed.wait()
        await app.stop(0)
        return replay.conn.close_code, out
    code, out = run(main())
    assert code == ErrorCode.REPLAYED_NONCE
    assert len(out) == 1          # exactly one CLOSE went back


def test_an_unknown_role_fails_the_stream_not_the_session(tmp_path):
    # PROTOCOL.md §6.2: roles are system, user, assistant, tool; another role is well-formed on the
    # wire (the codec accepts it) and refused by the server as INVALID_REQUEST (400), a stream error.
    async def main():
        app = App(make_config(tmp_path, sim_options="output_tokens = 2"))
        wire = Wire(app)
        with pytest.raises(AtpClientError) as info:
            await wire.client.complete(build_request(messages=[("wizard", "hi")]))
        after = await wire.client.complete(build_request(messages=[("system", "terse"),
                                                                   ("tool", "{}"), ("user", "hi")]))
        wire.client.close()
        await wire.closed.wait()
        await app.stop(0)
        return info.value, after
    refused, after = run(main())
    assert refused.code == ErrorCode.INVALID_REQUEST and "wizard" in str(refused)
    assert isinstance(after, Result)


def test_a_max_cost_no_model_can_meet_is_no_route(tmp_path):
    # PROTOCOL.md §6.2/§7: max_cost is a routing constraint; with no eligible model left the stream
    # fails with NO_ROUTE (402), not BUDGET_EXCEEDED (303, the tenant's budget), session intact.
    async def main():
        app = App(make_config(tmp_path, sim_options="output_tokens = 2"))
        wire = Wire(app)
        with pytest.raises(AtpClientError) as info:
            await wire.client.complete({**build_request("hi", max_tokens=1000), "max_cost": 0})
        after = await wire.client.complete(build_request("hi", max_tokens=2))
        wire.client.close()
        await wire.closed.wait()
        await app.stop(0)
        return info.value, after
    refused, after = run(main())
    assert refused.code == ErrorCode.NO_ROUTE and "max_cost" in str(refused)
    assert isinstance(after, Result)


def test_a_request_refused_while_draining_is_counted(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        wire = Wire(app)
        app.draining = True
        with pytest.raises(AtpClientError) as err:
            await wire.client.complete(build_request("refused while draining"))
        app.draining = False
        wire.client.close()
        await wire.closed.wait()
        await app.stop(0)
        return err.value, app
    err, app = run(main())
    assert err.code == ErrorCode.UNAVAILABLE and err.retryable
    assert app.metrics.refusals == {("mem", "draining"): 1}

"""Usage that ATP counted itself is marked estimated end to end (Done, END frame, audit row, metrics),
and a stream cut mid-answer is billed for what it delivered."""
import asyncio

import orjson

from atp_client import FrameClient, build_request, keyring_for
from atp_server import config
from atp_server.app import App
from atp_server.session import FrameSession
from atp_server.types import AtpError, ChatRequest, Done, ErrorCode, Finish, TextDelta

from .helpers import PRINCIPAL, make_config


class NoUsageAdapter:
    """A provider that streams three tokens and reports no usage (a server without include_usage)."""

    name, capabilities = "sim", frozenset({"chat"})

    async def stream(self, model, request):
        for word in ("a", " b", " c"):
            yield TextDelta(word)
        yield Finish("stop")

    async def aclose(self):
        return None


class CutAdapter(NoUsageAdapter):
    async def stream(self, model, request):
        for word in ("a", " b"):
            yield TextDelta(word)
        raise AtpError(ErrorCode.UPSTREAM_CUT, "connection reset")


def _app(tmp_path, adapter) -> App:
    app = App(make_config(tmp_path))
    app.adapters["sim"] = adapter          # the pipeline shares this dict
    return app


def _audit_detail(app, request_id: str) -> dict:
    app.audit.flush()
    (detail,) = app.audit._db.execute("SELECT record FROM audit WHERE request_id=?", (request_id,)).fetchone()
    return orjson.loads(detail)


def test_counted_usage_is_estimated_in_done_audit_and_metrics(tmp_path):
    async def main():
        app = _app(tmp_path, NoUsageAdapter())
        items = [i async for i in app.pipeline.stream(ChatRequest([("user", "x" * 40)], model="cheap",
                                                                  request_id="r1"), PRINCIPAL, "test")]
        detail = _audit_detail(app, "r1")
        metrics = app.service.render_metrics().decode()
        await app.stop(0)
        return items[-1], detail, metrics
    done, detail, metrics = asyncio.run(main())
    assert type(done) is Done and done.usage.estimated and done.usage.output_tokens == 3
    assert done.usage.input_tokens == 10 and done.usage.cost_usd_micros == round(10 * 0.1 + 3 * 0.2)
    assert detail["estimated"] is True and detail["out"] == 3
    assert 'atp_usage_estimated_requests_total{model="cheap"} 1.0' in metrics


def test_a_cut_stream_is_billed_for_what_it_delivered(tmp_path):
    async def main():
        app = _app(tmp_path, CutAdapter())
        got = []
        try:
            async for item in app.pipeline.stream(ChatRequest([("user", "x" * 40)], model="cheap",
                                                              request_id="r2"), PRINCIPAL, "test"):
                got.append(item)
        except AtpError as exc:
            got.append(exc)
        detail = _audit_detail(app, "r2")
        totals = app.accountant.by_model["cheap"]
        await app.stop(0)
        return got[-1], detail, totals
    err, detail, totals = asyncio.run(main())
    assert err.code == ErrorCode.UPSTREAM_CUT
    assert (totals.requests, totals.output_tokens, totals.estimated) == (1, 2, 1)
    assert detail["out"] == 2 and detail["estimated"] is True and detail["cost_micros"] == round(10 * 0.1 + 2 * 0.2)


def test_the_end_frame_says_est_when_usage_was_counted(tmp_path):
    async def main():
        app = _app(tmp_path, NoUsageAdapter())
        closed, ends = asyncio.Event(), []
        client = None

        def to_client(frames):
            for f in frames:
                client.feed_frame(f)

        server = FrameSession(app.service, "mem", to_client, closed.set, message_mode=True)
        send_end = server.conn.send_end
        server.conn.send_end = lambda sid, payload, **kw: (ends.append(payload), send_end(sid, payload, **kw))[1]
        client = FrameClient(keyring_for(config.DEV_HMAC_KEY_ID, config.DEV_HMAC_SECRET),
                             lambda frames: [asyncio.get_running_loop().call_soon(server.feed, f) for f in frames])
        await client.complete(build_request("hello", model="cheap"))
        client.close()
        await closed.wait()
        await app.stop(0)
        return ends
    (end,) = asyncio.run(main())
    assert end["est"] is True and end["out"] == 3

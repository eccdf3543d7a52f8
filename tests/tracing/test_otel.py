"""The spans through the pipeline, read from the SDK's InMemorySpanExporter: the tree (request →
stages → attempts) of a complete, a stream, a cancelled stream, a failover and a refusal; the
client's traceparent as parent; a malformed one starting a new trace; the access log's trace id;
the traceparent an upstream receives; an OTLP/HTTP export to a real local receiver."""
import asyncio
import logging

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind, StatusCode

from atp_server.app import App
from atp_server.types import AtpError, ChatRequest, Delta, Done

from tests.adapters._servers import serve_app
from tests.helpers.toml_models import BROKEN_MODEL
from tests.server.helpers import PRINCIPAL, make_config

TRACED = '\n[tracing]\nenabled = true\nexporter = "memory"\n'
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
# sim-broken (quality 0.9, free) ranked first on every request, so each one fails over from it.
FAILOVER = BROKEN_MODEL + '\n[[models]]\nid = "good"\nprovider = "sim"\nquality = 0.5\n'
GREEDY = '\n[routing]\nbandit = "greedy"\n'


def traced_app(tmp_path, extra: str = "", models: str | None = None) -> App:
    return App(make_config(tmp_path, models=models, extra=TRACED + extra))


def ask(**kw) -> ChatRequest:
    return ChatRequest([("user", "hello there")], **kw)


def spans_of(app: App) -> dict:
    """name -> [spans], each list in start order."""
    out: dict = {}
    for span in sorted(app.tracer.finished_spans(), key=lambda s: s.start_time):
        out.setdefault(span.name, []).append(span)
    return out


def the_request(spans: dict):
    (request,) = spans["atp.request"]
    return request


def children(spans: dict, parent) -> list:
    return sorted((s for group in spans.values() for s in group
                   if s.parent is not None and s.parent.span_id == parent.context.span_id),
                  key=lambda s: s.start_time)


async def drain(app: App, request: ChatRequest) -> list:
    return [item async for item in app.pipeline.stream(request, PRINCIPAL, "t")]


def test_a_complete_is_a_request_span_over_its_stages_and_one_attempt(tmp_path):
    async def main():
        app = traced_app(tmp_path)
        request = ask(model="cheap")
        c = await app.pipeline.complete(request, PRINCIPAL, "t")
        await app.stop(0)
        return app, request, c
    app, request, c = asyncio.run(main())
    spans = spans_of(app)
    root = the_request(spans)
    assert root.parent is None and root.kind is SpanKind.SERVER
    assert request.trace_id == format(root.context.trace_id, "032x")   # what the transport returns
    names = [s.name for s in children(spans, root)]
    befores = [n for n in names if n.startswith("atp.before.")]
    afters = [n for n in names if n.startswith("atp.after.")]
    assert befores[:2] == ["atp.before.validate", "atp.before.policy"]
    assert {"atp.before.admission", "atp.before.route"} <= set(befores)
    assert {"atp.after.account", "atp.after.access_log", "atp.after.admission"} <= set(afters)
    # in time order: every before, then the one attempt, then every after
    assert names == befores + ["atp.attempt"] + afters
    (attempt,) = spans["atp.attempt"]
    assert attempt.kind is SpanKind.CLIENT and attempt.attributes["atp.model"] == "cheap"
    assert attempt.attributes["gen_ai.system"] == "atp.simulated"
    assert attempt.attributes["atp.outcome"] == "ok" and attempt.status.status_code is StatusCode.UNSET
    a = root.attributes
    assert (a["atp.tenant"], a["atp.transport"], a["atp.outcome"], a["atp.code"]) == ("default", "t", "ok", 0)
    assert a["gen_ai.request.model"] == "cheap" and a["gen_ai.response.model"] == "cheap"
    assert a["gen_ai.usage.input_tokens"] == c.usage.input_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == c.usage.output_tokens > 0
    assert a["atp.cost_usd"] == c.usage.cost_usd and a["atp.provider"] == "sim"
    assert root.end_time >= max(s.end_time for s in children(spans, root))


def test_a_stream_span_ends_when_the_stream_ends(tmp_path):
    async def main():
        app = traced_app(tmp_path)
        gen = app.pipeline.stream(ask(model="cheap"), PRINCIPAL, "t")
        items = [await gen.__anext__(), await gen.__anext__()]       # Routed, the first delta
        open_while_streaming = [s.name for s in app.tracer.finished_spans()]
        items += [item async for item in gen]
        await app.stop(0)
        return app, items, open_while_streaming
    app, items, mid = asyncio.run(main())
    assert type(items[1]) is Delta and type(items[-1]) is Done
    assert "atp.request" not in mid and "atp.attempt" not in mid   # both still open mid-stream
    spans = spans_of(app)
    root = the_request(spans)
    (attempt,) = spans["atp.attempt"]
    assert attempt.parent.span_id == root.context.span_id and attempt.attributes["atp.outcome"] == "ok"
    assert root.attributes["atp.outcome"] == "ok"
    assert root.attributes["gen_ai.usage.output_tokens"] == items[-1].usage.output_tokens


def test_a_cancelled_stream_ends_its_spans_as_cancelled(tmp_path):
    async def main():
        app = traced_app(tmp_path)
        gen = app.pipeline.stream(ask(model="cheap"), PRINCIPAL, "t")
        await gen.__anext__()
        await gen.__anext__()
        await gen.aclose()                           # the client left mid-stream
        await app.stop(0)
        return app
    spans = spans_of(asyncio.run(main()))
    root = the_request(spans)
    (attempt,) = spans["atp.attempt"]
    assert root.attributes["atp.outcome"] == "CANCELLED" and root.status.status_code is StatusCode.ERROR
    assert attempt.attributes["atp.outcome"] == "CANCELLED"
    assert attempt.status.status_code is StatusCode.UNSET     # a cancel is no upstream error


@pytest.mark.parametrize("streamed", [False, True])
def test_a_failover_makes_an_attempt_span_per_call_and_the_failed_one_records_its_error(tmp_path, streamed):
    async def main():
        app = traced_app(tmp_path, GREEDY, models=FAILOVER)
        if streamed:
            await drain(app, ask())
        else:
            await app.pipeline.complete(ask(), PRINCIPAL, "t")
        await app.stop(0)
        return app
    spans = spans_of(asyncio.run(main()))
    root = the_request(spans)
    failed, answered = spans["atp.attempt"]
    assert [s.parent.span_id for s in (failed, answered)] == [root.context.span_id] * 2
    assert (failed.attributes["atp.model"], failed.attributes["atp.attempt"]) == ("sim-broken", 1)
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == failed.attributes["atp.outcome"] != "ok"
    assert [e.name for e in failed.events] == ["exception"]
    assert (answered.attributes["atp.model"], answered.attributes["atp.attempt"]) == ("good", 2)
    assert answered.attributes["atp.outcome"] == "ok"
    assert root.attributes["atp.failovers"] == 1 and root.attributes["gen_ai.response.model"] == "good"
    assert root.attributes["atp.outcome"] == "ok"


def test_a_policy_refusal_ends_in_the_policy_stage_span_with_no_attempt(tmp_path):
    rules = tmp_path / "deny.toml"
    rules.write_text('[[rules]]\nid = "no-default"\neffect = "deny"\nwhen.tenant = ["default"]\n')

    async def main():
        app = traced_app(tmp_path, f'\n[policy]\nfiles = ["{rules}"]\n')
        with pytest.raises(AtpError) as info:
            await app.pipeline.complete(ask(), PRINCIPAL, "t")
        await app.stop(0)
        return app, info.value
    app, err = asyncio.run(main())
    spans = spans_of(app)
    root = the_request(spans)
    assert "atp.attempt" not in spans and "atp.before.admission" not in spans   # refused before
    (policy,) = spans["atp.before.policy"]
    assert policy.status.status_code is StatusCode.ERROR and policy.attributes["error.type"] == err.name
    assert root.status.status_code is StatusCode.ERROR
    assert (root.attributes["atp.outcome"], root.attributes["atp.code"]) == (err.name, int(err.code))
    assert "atp.after.access_log" in spans          # the afters of the stages entered still ran


def test_a_client_traceparent_makes_the_request_span_its_child(tmp_path):
    async def main():
        app = traced_app(tmp_path)
        await app.pipeline.complete(ask(traceparent=CLIENT_PARENT, tracestate="vendor=abc"), PRINCIPAL, "t")
        await app.stop(0)
        return app
    spans = spans_of(asyncio.run(main()))
    root = the_request(spans)
    assert format(root.context.trace_id, "032x") == CLIENT_TRACE
    assert format(root.parent.span_id, "016x") == CLIENT_SPAN and root.parent.is_remote
    assert root.context.trace_state.get("vendor") == "abc"
    assert {s.context.trace_id for group in spans.values() for s in group} == {root.context.trace_id}


@pytest.mark.parametrize("bad", [
    "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",           # all-zero trace id
    f"00-{CLIENT_TRACE}-0000000000000000-01",                        # all-zero parent id
    f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",                           # the forbidden version
    f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",                   # upper-case hex
    f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra",                     # version 00 has four fields
])
def test_a_malformed_traceparent_starts_a_new_trace(tmp_path, bad):
    async def main():
        app = traced_app(tmp_path)
        c = await app.pipeline.complete(ask(traceparent=bad), PRINCIPAL, "t")
        await app.stop(0)
        return app, c
    app, c = asyncio.run(main())
    root = the_request(spans_of(app))
    assert c.finish_reason                           # the request itself is served
    assert root.parent is None and format(root.context.trace_id, "032x") != CLIENT_TRACE


def test_the_access_log_line_carries_the_trace_id(tmp_path, caplog):
    caplog.set_level(logging.INFO, "atp.access")

    async def main():
        app = traced_app(tmp_path)
        request = ask()
        await app.pipeline.complete(request, PRINCIPAL, "t")
        await app.stop(0)
        return app, request
    app, request = asyncio.run(main())
    (fields,) = [r.fields for r in caplog.records if r.name == "atp.access"]
    assert fields["trace_id"] == request.trace_id == format(the_request(spans_of(app)).context.trace_id, "032x")


def test_a_sampled_out_request_exports_nothing_but_keeps_its_trace_id(tmp_path):
    async def main():
        app = App(make_config(tmp_path, extra=TRACED + "sample_ratio = 0\n"))
        request = ask()
        await app.pipeline.complete(request, PRINCIPAL, "t")
        await app.stop(0)
        return app, request
    app, request = asyncio.run(main())
    assert app.tracer.finished_spans() == ()
    assert len(request.trace_id) == 32 and request.trace_id != "0" * 32


# ---- the provider receives the attempt's traceparent ---------------------------------------------

UPSTREAM_ANSWER = {"id": "x", "object": "chat.completion", "model": "up-model",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
SSE_ANSWER = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
              b'"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n')


def _remote(url: str) -> str:
    return f"""
[[providers]]
name = "up"
type = "openai_compat"
base_url = "{url}/v1"

[[models]]
id = "remote"
provider = "up"
upstream = "up-model"
"""


@pytest.mark.parametrize("streamed", [False, True])
def test_the_provider_receives_the_attempt_spans_traceparent(tmp_path, streamed):
    async def main():
        seen = []

        async def handler(request):
            seen.append(dict(request.headers))
            body = await request.json()
            if body.get("stream"):
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(SSE_ANSWER)
                await resp.write_eof()
                return resp
            return web.json_response(UPSTREAM_ANSWER)

        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", handler)
        async with serve_app(upstream) as url:
            app = traced_app(tmp_path, models=_remote(url))
            request = ask(model="remote", traceparent=CLIENT_PARENT)
            if streamed:
                await drain(app, request)
            else:
                await app.pipeline.complete(request, PRINCIPAL, "t")
            await app.stop(0)
        return app, seen
    app, seen = asyncio.run(main())
    (headers,) = seen
    (attempt,) = spans_of(app)["atp.attempt"]
    assert attempt.attributes["gen_ai.request.model"] == "up-model"
    assert attempt.attributes["gen_ai.system"] == "openai"
    assert headers["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.context.span_id:016x}-01"


def test_without_tracing_no_traceparent_goes_upstream_and_the_log_keeps_the_clients_trace(tmp_path, caplog):
    caplog.set_level(logging.INFO, "atp.access")

    async def main():
        seen = []

        async def handler(request):
            seen.append(dict(request.headers))
            return web.json_response(UPSTREAM_ANSWER)

        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", handler)
        async with serve_app(upstream) as url:
            app = App(make_config(tmp_path, models=_remote(url)))
            request = ask(model="remote", traceparent=CLIENT_PARENT)
            await app.pipeline.complete(request, PRINCIPAL, "t")
            await app.pipeline.complete(ask(model="remote"), PRINCIPAL, "t")
            await app.stop(0)
        return app, request, seen
    app, request, seen = asyncio.run(main())
    assert app.tracer is None and app.pipeline.tracer is None
    assert all("traceparent" not in h for h in seen)     # we only forward a context we are part of
    assert request.trace_id == ""                        # no x-atp-trace-id: no span of ours
    with_parent, without = [r.fields for r in caplog.records if r.name == "atp.access"]
    assert with_parent["trace_id"] == CLIENT_TRACE and "trace_id" not in without


# ---- OTLP/HTTP to a real local receiver ------------------------------------------------------------

def test_spans_are_exported_over_otlp_http_to_the_configured_endpoint(tmp_path):
    async def main():
        received = []
        got = asyncio.Event()

        async def traces(request):
            assert request.headers["Content-Type"] == "application/x-protobuf"
            received.append(ExportTraceServiceRequest.FromString(await request.read()))
            got.set()
            return web.Response(body=b"", content_type="application/x-protobuf")

        receiver = web.Application()
        receiver.router.add_post("/v1/traces", traces)
        async with serve_app(receiver) as url:
            app = App(make_config(tmp_path, extra=f'\n[tracing]\nenabled = true\nexporter = "otlp"\n'
                                                  f'endpoint = "{url}/v1/traces"\nservice_name = "atp-test"\n'))
            c = await app.pipeline.complete(ask(model="cheap", traceparent=CLIENT_PARENT), PRINCIPAL, "t")
            await app.stop(0)                  # shutdown exports what the batch still holds
            async with asyncio.timeout(10):
                await got.wait()
        return received, c
    received, c = asyncio.run(main())
    spans, services = [], set()
    for export in received:
        for rs in export.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            for ss in rs.scope_spans:
                spans += list(ss.spans)
    assert services == {"atp-test"}
    names = [s.name for s in spans]
    assert names.count("atp.request") == 1 and names.count("atp.attempt") == 1
    assert "atp.before.route" in names
    assert {s.trace_id.hex() for s in spans} == {CLIENT_TRACE}
    (root,) = [s for s in spans if s.name == "atp.request"]
    assert root.parent_span_id.hex() == CLIENT_SPAN
    attrs = {a.key: a.value for a in root.attributes}
    assert attrs["gen_ai.response.model"].string_value == "cheap"
    assert attrs["gen_ai.usage.output_tokens"].int_value == c.usage.output_tokens



def test_hedged_attempts_each_send_their_own_traceparent_and_the_loser_ends_cancelled(tmp_path):
    from tests.server.test_dispatch import Sleep
    hedge_s = 0.05

    async def main():
        seen, arrived, release = {}, asyncio.Event(), asyncio.Event()

        async def handler(request):
            body = await request.json()
            seen[body["model"]] = request.headers["traceparent"]
            if body["model"] == "slow-up":          # the first choice hangs: the hedge must win
                arrived.set()
                await release.wait()
            return web.json_response({**UPSTREAM_ANSWER, "model": body["model"]})

        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", handler)
        async with serve_app(upstream) as url:
            models = f"""
[[providers]]
name = "up"
type = "openai_compat"
base_url = "{url}/v1"

[[models]]
id = "slow"
provider = "up"
upstream = "slow-up"

[[models]]
id = "fast"
provider = "up"
upstream = "fast-up"
"""
            app = traced_app(tmp_path, f'\n[routing]\nhedge_after_ms = {hedge_s * 1000}\n'
                                       '[[aliases]]\nname = "pair"\nmodels = ["slow", "fast"]\nmode = "ordered"\n',
                             models=models)
            app.pipeline.sleep = sleep = Sleep(hedge_s)
            task = asyncio.ensure_future(app.pipeline.complete(ask(model="pair", tier="fast"), PRINCIPAL, "t"))
            await arrived.wait()                     # the first attempt is out, no answer yet
            sleep.fire.set()                         # the hedge timer fires: the second starts
            c = await task
            release.set()
            await app.stop(0)
        return app, seen, c
    app, seen, c = asyncio.run(main())
    assert c.decision.model == "fast"
    spans = spans_of(app)
    root = the_request(spans)
    attempts = {s.attributes["atp.model"]: s for s in spans["atp.attempt"]}
    assert set(attempts) == {"slow", "fast"}
    for model, upstream_model in (("slow", "slow-up"), ("fast", "fast-up")):
        span = attempts[model]
        assert span.parent.span_id == root.context.span_id
        flags = int(span.context.trace_flags)    # sampled (+ W3C level 2's random-id bit)
        assert flags & 1
        assert seen[upstream_model] == f"00-{root.context.trace_id:032x}-{span.context.span_id:016x}-{flags:02x}"
    assert attempts["slow"].attributes["atp.outcome"] == "CANCELLED"
    assert attempts["fast"].attributes["atp.outcome"] == "ok"


def test_the_console_exporter_prints_one_json_span_per_line(tmp_path, capsys):
    import json

    async def main():
        app = App(make_config(tmp_path, extra='\n[tracing]\nenabled = true\nexporter = "console"\n'))
        await app.pipeline.complete(ask(model="cheap"), PRINCIPAL, "t")
        await app.stop(0)                  # the batch is written at shutdown at the latest
    asyncio.run(main())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    spans = [json.loads(line) for line in lines]
    assert [s["name"] for s in spans].count("atp.request") == 1
    assert {"atp.attempt", "atp.before.validate"} <= {s["name"] for s in spans}


def test_the_memory_exporter_keeps_only_the_newest_spans(tmp_path, monkeypatch):
    from atp_server.tracing.otel import RecentSpans
    monkeypatch.setattr(RecentSpans, "MAX_SPANS", 20)

    async def main():
        app = traced_app(tmp_path)
        ids = []
        for _ in range(3):                           # 3 x 14 spans > 20
            request = ask(model="cheap")
            await app.pipeline.complete(request, PRINCIPAL, "t")
            ids.append(request.trace_id)
        await app.stop(0)
        return app, ids
    app, ids = asyncio.run(main())
    spans = app.tracer.finished_spans()
    assert len(spans) == 20
    assert format(spans[-1].context.trace_id, "032x") == ids[-1]   # the newest request's are kept
    assert ids[0] not in {format(s.context.trace_id, "032x") for s in spans}

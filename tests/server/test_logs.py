"""Logs: one access-log line per request with its fields, events for failovers and circuit
changes, JSON and text formats."""
import asyncio
import io
import json
import logging

import pytest
from hypothesis import given, strategies as st

from atp_server import logs
from atp_server.app import App
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config


def fields_of(caplog, logger: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == logger]


def run(app, coro):
    async def main():
        try:
            return await coro
        finally:
            await app.stop(0)
    return asyncio.run(main())


def test_each_request_gets_one_access_line_with_its_fields(tmp_path, caplog):
    caplog.set_level(logging.INFO, "atp.access")
    app = App(make_config(tmp_path))
    run(app, app.pipeline.complete(ChatRequest([("user", "hi")], model="cheap"), PRINCIPAL, "http"))
    (line,) = fields_of(caplog, "atp.access")
    assert line["model"] == "cheap" and line["outcome"] == "ok" and line["code"] == 0
    assert line["tenant"] == "default" and line["transport"] == "http"
    assert line["tokens_out"] > 0 and line["cost_usd"] > 0 and line["overhead_us"] >= 0
    assert "reasons" not in line                 # only at debug


def test_a_refused_request_is_logged_with_its_code_and_a_fixed_model_label(tmp_path, caplog):
    caplog.set_level(logging.INFO, "atp.access")
    app = App(make_config(tmp_path))
    with pytest.raises(AtpError):
        run(app, app.pipeline.complete(ChatRequest([("user", "hi")], model="made-up-model"),
                                       PRINCIPAL, "http"))
    (line,) = fields_of(caplog, "atp.access")
    assert line["outcome"] == "UNKNOWN_MODEL" and line["code"] == int(ErrorCode.UNKNOWN_MODEL)
    assert line["model"] != "made-up-model"      # never a client's string


def test_debug_adds_the_routing_reasons(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, "atp.access")
    app = App(make_config(tmp_path))
    run(app, app.pipeline.complete(ChatRequest([("user", "hi")]), PRINCIPAL, "http"))
    (line,) = fields_of(caplog, "atp.access")
    assert line["reasons"] and all(isinstance(r, str) for r in line["reasons"])


def test_failover_and_circuit_changes_are_events(tmp_path, caplog):
    caplog.set_level(logging.INFO, "atp.events")
    app = App(make_config(tmp_path, sim_options="failure_rate = 1.0"))

    async def main():
        for _ in range(app.router.health.threshold + 1):
            with pytest.raises(AtpError):
                await app.pipeline.complete(ChatRequest([("user", "x")]), PRINCIPAL, "http")
    run(app, main())
    events = fields_of(caplog, "atp.events")
    assert any(e["event"] == "failover" and e["failed"] and e["code"] for e in events)
    opened = [e for e in events if e["event"] == "circuit" and e["state"] == "open"]
    assert opened and opened[0]["was"] == "closed"


def test_json_lines_parse_and_carry_the_fields():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("atp.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("failover", extra={"fields": {"event": "failover", "failed": "a b"}})
    doc = json.loads(out.getvalue())
    assert doc["level"] == "warning" and doc["msg"] == "failover" and doc["failed"] == "a b"
    assert doc["time"].endswith("+00:00")


def test_text_lines_quote_values_with_spaces():
    record = logging.LogRecord("atp.events", logging.WARNING, "", 0, "circuit", (), None)
    record.fields = {"event": "circuit", "model": "m1", "why": "two words"}
    line = logs.TextFormatter().format(record)
    assert line.endswith('circuit model=m1 why="two words"')


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format"):
        logs.setup("info", "xml")


def test_the_server_handler_batches_access_lines_and_keeps_the_format(tmp_path):
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.setup("info", "json", stream=out)
        app = App(make_config(tmp_path))
        run(app, app.pipeline.complete(ChatRequest([("user", "hi")], model="cheap"), PRINCIPAL, "http"))
        logs.EVENTS.warning("after")            # an event: written at once, after the batch
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        logs.ACCESS_SINK = None
    access = [x for x in lines if x["logger"] == "atp.access"]
    assert len(access) == 1 and access[0]["model"] == "cheap" and access[0]["outcome"] == "ok"
    assert access[0]["time"].endswith("+00:00") and lines.index(access[0]) < len(lines) - 1


_NAMES = st.one_of(st.none(), st.text(max_size=12))
_NUMS = st.one_of(st.integers(-5, 10**9), st.floats(allow_nan=False, allow_infinity=False))


@given(st.fixed_dictionaries({
    "request_id": _NAMES, "tenant": _NAMES, "key": _NAMES, "transport": st.sampled_from(["http", "grpc"]),
    "model": _NAMES, "provider": _NAMES, "outcome": st.sampled_from(["ok", "UNAVAILABLE"]),
    "code": st.integers(0, 600), "tokens_in": _NUMS, "tokens_out": _NUMS, "cost_usd": _NUMS,
    "overhead_us": _NUMS, "upstream_ms": _NUMS, "elapsed_ms": _NUMS}),
    st.lists(st.text(min_size=1, max_size=8), max_size=2))
def test_the_access_line_template_renders_like_the_generic_loop(fields, failovers):
    fields = {k: fields[k] for k in logs.ACCESS_KEYS}   # in the stage's order
    if failovers:
        fields["failovers"] = failovers
    generic = " ".join(f"{k}={logs._text(v)}" for k, v in fields.items())
    assert logs._access_text(fields) == generic


def test_the_access_stage_builds_the_template_keys_in_order(caplog, tmp_path):
    caplog.set_level(logging.INFO, "atp.access")
    app = App(make_config(tmp_path))
    run(app, app.pipeline.complete(ChatRequest([("user", "hi")]), PRINCIPAL, "http"))
    (fields,) = fields_of(caplog, "atp.access")
    assert tuple(fields)[:len(logs.ACCESS_KEYS)] == logs.ACCESS_KEYS

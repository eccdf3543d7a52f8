"""The Anthropic front door on ATP's HTTP port: POST /v1/messages, JSON or SSE; the JSON is dialects/anthropic.py's."""
import asyncio
import logging
import time
from contextlib import aclosing, suppress

import orjson
from aiohttp import web

from codec.errors import ErrorCode

from ..dialects import anthropic as dialect
from ..routing.spec import estimate_tokens
from ..tracing.context import TRACE_HEADER, from_headers as trace_from_headers
from ..types import AtpError, Delta, Done, Routed, ToolCallDelta

log = logging.getLogger("atp.http")

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(exc: AtpError, request_id: str = "", status: int = 0, trace_id: str = "") -> web.Response:
    """An Anthropic-shaped error ({"type": "error", "error": {type, message}}) with its HTTP status."""
    status = status or dialect.STATUS[exc.code][0]
    headers = {"Content-Type": _JSON}
    if status in (429, 503, 529) or exc.retry_after_ms:
        headers["Retry-After"] = str(max(1, -(-exc.retry_after_ms // 1000)))
    if request_id:
        headers["request-id"] = headers["x-request-id"] = request_id
    if trace_id:      # the pipeline traced the request before refusing it (tracing/)
        headers[TRACE_HEADER] = trace_id
    return web.Response(status=status, body=orjson.dumps(dialect.error_json(exc)), headers=headers)


def _authorization(headers) -> str | None:
    """The Anthropic SDK sends the key as x-api-key; ATP's keys check a Bearer authorization."""
    if (key := headers.get("x-api-key")) is not None:
        return "Bearer " + key
    return headers.get("Authorization")


def add_routes(transport) -> None:
    """Register POST /v1/messages on an HttpTransport (its auth, service and drain bookkeeping)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return await messages(transport, request)
    transport.web.add_routes([web.post("/v1/messages", handler)])


async def messages(t, request: web.Request) -> web.StreamResponse:
    t0 = time.perf_counter_ns()
    if t.draining or t.service.draining:
        t.refused("http", reason="draining")
        return error_response(AtpError(ErrorCode.UNAVAILABLE, "server is draining"))
    task = asyncio.current_task()
    t._tasks.add(task)
    chat = None
    try:
        headers = request.headers
        principal = t._authenticate(_authorization(headers))
        if (request.content_length or 0) > t.web._client_max_size:
            t.refused("http", reason="too_large")
            return error_response(dialect.bad("request body too large"), status=413)
        body = await request.read()
        if t._require_signature or t._signature_present(headers):
            shared = t._check_signature(headers, request.method, request.path, body,
                                        time.time_ns() // 1_000_000, principal)   # key of its tenant
            if shared is not None:      # [state] redis_url: the nonce checked across workers too
                await shared
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise dialect.bad(f"malformed JSON: {exc}") from None
        chat, stream = dialect.parse_messages(data)
        if (rid := headers.get("X-Request-Id")) and len(rid) <= 128:
            chat.request_id = rid
        trace_from_headers(chat, headers)   # W3C traceparent/tracestate (tracing/)
        if stream:
            return await _stream(t, request, chat, principal, t0)
        c = await t._complete(chat, principal, "http", t0)
        d = c.decision
        out = {"Content-Type": _JSON, "x-atp-overhead-us": str(c.overhead_us), "x-atp-model": d.model,
               "x-atp-provider": d.provider, "x-atp-cost-usd": f"{c.usage.cost_usd:.6f}",
               "x-atp-usage-estimated": "true" if c.usage.estimated else "false",
               "request-id": c.request_id}
        if chat.trace_id:
            out[TRACE_HEADER] = chat.trace_id
        return web.Response(body=orjson.dumps(dialect.message_json(c)), headers=out)
    except AtpError as exc:
        t.refused("http", exc.code)
        return error_response(exc, chat.request_id if chat else "", trace_id=chat.trace_id if chat else "")
    except web.HTTPRequestEntityTooLarge:
        t.refused("http", reason="too_large")
        return error_response(dialect.bad("request body too large"), status=413)
    except asyncio.CancelledError:
        raise                 # the client hung up (or shutdown: the transport ends every request)
    except Exception:     # a bug costs one request, with a proper error, never the server
        log.exception("http: messages request failed")
        return error_response(AtpError(ErrorCode.INTERNAL, "internal error"))
    finally:
        t._tasks.discard(task)
        if not t._tasks and t.draining:
            t._idle.set()


async def _stream(t, request, chat, principal, t0: int):
    """SSE. The response starts at the first output, so anything failing before it (auth, routing,
    admission, an upstream failing before its first token) is still a plain HTTP error."""
    resp = decision = None
    enc = dialect.StreamEncoder()
    try:
        async with aclosing(t._stream_events(chat, principal, "http", t0)) as events:
            async for item in events:
                kind = type(item)
                if kind is Routed:             # again after a failover: the last one answers
                    decision = item.decision
                    continue
                out = b""
                if resp is None:
                    resp = web.StreamResponse(headers={
                        **_SSE_HEADERS, "x-atp-model": decision.model, "x-atp-provider": decision.provider,
                        "request-id": chat.request_id})
                    if chat.trace_id:
                        resp.headers[TRACE_HEADER] = chat.trace_id
                    await resp.prepare(request)
                    out = enc.start(chat.request_id, decision.model, estimate_tokens(chat.prompt_chars()))
                if kind is Delta:
                    await resp.write(out + enc.text(item.text))
                elif kind is ToolCallDelta:
                    await resp.write(out + enc.tool(item))
                elif kind is Done:
                    await resp.write_eof(out + enc.done(item))
    except ConnectionResetError:
        return resp
    except Exception as exc:       # cancellation (client gone) propagates: nobody to answer
        err = exc if isinstance(exc, AtpError) else AtpError(ErrorCode.INTERNAL, "internal error")
        if not isinstance(exc, AtpError):
            log.exception("http: messages stream failed")
        if resp is None:
            t.refused("http", err.code)
            return error_response(err, chat.request_id, trace_id=chat.trace_id)
        with suppress(ConnectionResetError, RuntimeError):   # an error event and no message_stop
            await resp.write(enc.error(err))
            await resp.write_eof()
    return resp

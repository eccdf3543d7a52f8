"""OpenAI-compatible HTTP transport (aiohttp): chat completions as JSON or SSE, models, health, metrics."""
import asyncio
import logging
import time
from contextlib import aclosing, suppress

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from codec.errors import ErrorCode

from ..types import AtpError, ChatRequest, Delta, Done, Routed

log = logging.getLogger("atp.http")

MAX_BODY = 4 * 1024 * 1024
# `model` values that mean "route for me": auto keeps atp.tier (default balanced), the others set it.
TIER_ALIASES = {"auto": None, "atp-fast": "fast", "atp-balanced": "balanced", "atp-high": "high"}

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"
_SHUTDOWN = "atp-http-shutdown"   # cancel() message: the drain grace is over
_EMPTY: dict = {}
_NUM = (int, float)
_E = ErrorCode
STATUS = {code: (401, "authentication_error") if 200 <= code <= 205 else
          (400, "invalid_request_error") if 100 <= code < 200 else (500, "server_error")
          for code in ErrorCode}                        # code -> (HTTP status, OpenAI error type)
STATUS.update({_E.FORBIDDEN: (403, "permission_error"), _E.POLICY_DENIED: (403, "permission_error"),
               _E.BUDGET_EXCEEDED: (402, "insufficient_quota"),
               _E.INVALID_REQUEST: (400, "invalid_request_error"), _E.UNKNOWN_MODEL: (404, "not_found_error"),
               _E.NO_ROUTE: (422, "invalid_request_error"), _E.UNAVAILABLE: (503, "service_unavailable"),
               _E.UPSTREAM_ERROR: (502, "upstream_error"), _E.UPSTREAM_CUT: (502, "upstream_error"),
               _E.UPSTREAM_TIMEOUT: (504, "timeout_error"), _E.TIMEOUT: (504, "timeout_error")})
STATUS.update(dict.fromkeys((_E.RATE_LIMITED, _E.OVERLOADED, _E.WINDOW_EXCEEDED, _E.REPLAY_CACHE_FULL),
                            (429, "rate_limit_error")))


def error_body(exc: AtpError) -> bytes:
    return orjson.dumps({"error": {
        "message": exc.message, "type": STATUS[exc.code][1], "param": None, "code": exc.name,
        "atp_code": int(exc.code), "retryable": exc.retryable, "retry_after_ms": exc.retry_after_ms}})


def error_response(exc: AtpError, request_id: str = "", status: int = 0, close: bool = False) -> web.Response:
    status = status or STATUS[exc.code][0]
    headers = {"Content-Type": _JSON, "Connection": "close"} if close else {"Content-Type": _JSON}
    if status in (429, 503) or exc.retry_after_ms:
        headers["Retry-After"] = str(max(1, -(-exc.retry_after_ms // 1000)))
    if request_id:
        headers["x-request-id"] = request_id
    return web.Response(status=status, body=error_body(exc), headers=headers)


def _bad(message: str) -> AtpError:
    return AtpError(ErrorCode.INVALID_REQUEST, message)


def _get(d: dict, key: str, types, what: str, prefix: str = ""):
    if (v := d.get(key)) is None or type(v) in types:    # type(): a JSON true is not an integer
        return v
    raise _bad(f"{prefix}{key} must be {what}")


def _content(content, i: int) -> str:
    """Content given as a list of parts: the text parts joined by newlines; nothing else yet."""
    if content is None:
        return ""
    if type(content) is not list:
        raise _bad(f"messages[{i}].content must be a string or a list of text parts")
    for j, part in enumerate(content):
        if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
            raise _bad(f"messages[{i}].content[{j}]: only text parts are supported")
    return "\n".join(part["text"] for part in content)


def parse_chat(data) -> tuple[ChatRequest, bool, bool]:
    """An OpenAI chat.completions body -> (ChatRequest, stream, include_usage); AtpError if invalid."""
    if type(data) is not dict:
        raise _bad("the request body must be a JSON object")
    msgs = data.get("messages")
    if type(msgs) is not list or not msgs:
        raise _bad("messages must be a non-empty array")
    messages = []
    for i, m in enumerate(msgs):
        if type(m) is not dict or type(m.get("role")) is not str:
            raise _bad(f"messages[{i}] must be an object with a string role")
        content = m.get("content")
        messages.append((m["role"], content if type(content) is str else _content(content, i)))
    ext = _get(data, "atp", (dict,), "an object") or _EMPTY
    tier = _get(ext, "tier", (str,), "one of fast, balanced, high", "atp.")
    model = _get(data, "model", (str,), "a string") or "auto"
    if model in TIER_ALIASES:
        alias = TIER_ALIASES[model]
        if alias and tier and tier != alias:
            raise _bad(f"model {model!r} conflicts with atp.tier {tier!r}")
        tier, model = tier or alias or "balanced", None
    if data.get("n") not in (None, 1):
        raise _bad("n must be 1")
    if data.get("tools") or data.get("functions"):
        raise _bad("tools/functions are not supported by this gateway")
    caps = ext.get("capabilities") or ()
    if caps and (type(caps) is not list or not all(type(c) is str for c in caps)):
        raise _bad("atp.capabilities must be a list of strings")
    max_tokens = _get(data, "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens",
                      (int,), "an integer")
    stream = _get(data, "stream", (bool,), "true or false") or False
    opts = _get(data, "stream_options", (dict,), "an object") or _EMPTY
    return ChatRequest(
        messages, tier=tier or "balanced", model=model, max_tokens=max_tokens,
        max_cost_usd=_get(ext, "max_cost_usd", _NUM, "a number", "atp."),
        latency_slo_ms=_get(ext, "latency_slo_ms", (int,), "an integer", "atp."),
        tenant=_get(ext, "tenant", (str,), "a string", "atp.") or "", capabilities=tuple(caps),
        temperature=_get(data, "temperature", _NUM, "a number"), stream=stream,
        metadata={"user": user} if (user := _get(data, "user", (str,), "a string")) else {}
    ), stream, opts.get("include_usage") is True


def _usage(u) -> dict:
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens}


def _atp(decision, usage, overhead_us: int) -> dict:
    return {"provider": decision.provider, "model": decision.model, "cost_usd": usage.cost_usd,
            "overhead_us": overhead_us, "route_reasons": list(decision.reasons)}


def _model(row) -> dict:
    m = row.spec
    return {"id": m.id, "object": "model", "created": 0, "owned_by": m.provider, "atp": {
        "price": {"input_per_mtok": m.price_in_per_mtok, "output_per_mtok": m.price_out_per_mtok},
        "quality": m.quality, "capabilities": sorted(m.capabilities),
        "context_window": m.context_window, "latency_ms": m.latency_ms, "healthy": row.healthy}}


class HttpTransport:
    def __init__(self, service):
        self.service = service
        # Bound once: the chat hot path pays no extra lookups for going through the facade.
        self._authenticate = service.authenticate
        self._check_signature = service.check_signature
        self._require_signature = service.require_signature
        self._signature_present = service.signature_present
        self._complete = service.complete
        self._stream_events = service.stream
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()    # chat requests in flight
        self._idle = asyncio.Event()              # set when the last of them ends while draining
        self.draining = False
        self.web = web.Application(client_max_size=MAX_BODY)
        self.web.add_routes([web.post("/v1/chat/completions", self.chat), web.get("/v1/models", self.models),
                             web.get("/healthz", self.healthz), web.get("/metrics", self.metrics)])

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        # handler_cancellation: a client that hangs up cancels its request, and so the upstream call.
        self._runner = web.AppRunner(self.web, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_port=reuse_port or None).start()
        return self._runner.addresses[0][1]

    async def stop(self, grace_s: float) -> None:
        """Refuse new requests (503), let in-flight ones finish for up to grace_s, then close."""
        self.draining = True
        for wait_s in (grace_s, 1.0):
            if not self._tasks:
                break
            try:
                await asyncio.wait_for(self._idle.wait(), wait_s)
            except TimeoutError:   # past the grace: each request ends with UNAVAILABLE, not a cut
                log.warning("http: ending %d request(s) still running after %.1fs", len(self._tasks), wait_s)
                for task in self._tasks:
                    task.cancel(_SHUTDOWN)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        if self.draining or self.service.draining:
            return web.Response(status=503, body=b'{"status":"draining"}', content_type=_JSON)
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.service.metrics_allowed(request.headers.get("Authorization")):
            return error_response(AtpError(ErrorCode.UNAUTHENTICATED, "/metrics needs "
                                           "'Authorization: Bearer <[metrics] scrape_token>'"))
        return web.Response(body=self.service.render_metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        try:
            principal = self._authenticate(request.headers.get("Authorization"))
        except AtpError as exc:
            return error_response(exc)
        data = [_model(row) for row in self.service.models(principal)]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter_ns()
        if self.draining or self.service.draining:
            return error_response(AtpError(ErrorCode.UNAVAILABLE, "server is draining"), close=True)
        task = asyncio.current_task()
        self._tasks.add(task)
        chat = None
        try:
            headers = request.headers
            principal = self._authenticate(headers.get("Authorization"))
            if (request.content_length or 0) > MAX_BODY:
                raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
            body = await request.read()
            if self._require_signature or self._signature_present(headers):
                self._check_signature(headers, request.method, request.path, body,
                                      time.time_ns() // 1_000_000, principal)
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise _bad(f"malformed JSON: {exc}") from None
            chat, stream, include_usage = parse_chat(data)
            if (rid := headers.get("X-Request-Id")) and len(rid) <= 128:   # the caller's id, if sane
                chat.request_id = rid
            if stream:
                return await self._stream(request, chat, principal, include_usage, t0)
            c = await self._complete(chat, principal, "http", t0)
            d = c.decision
            return web.Response(body=orjson.dumps({
                "id": "chatcmpl-" + c.request_id, "object": "chat.completion",
                "created": int(time.time()), "model": d.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "logprobs": None, "finish_reason": c.finish_reason}],
                "usage": _usage(c.usage), "atp": _atp(d, c.usage, c.overhead_us)}), headers={
                "Content-Type": _JSON, "x-atp-overhead-us": str(c.overhead_us),
                "x-atp-model": d.model, "x-atp-provider": d.provider, "x-request-id": c.request_id})
        except AtpError as exc:
            return error_response(exc, chat.request_id if chat else "")
        except web.HTTPRequestEntityTooLarge:
            return error_response(_bad(f"request body over {MAX_BODY} bytes"), status=413, close=True)
        except asyncio.CancelledError as exc:
            if exc.args != (_SHUTDOWN,):
                raise              # the client hung up: nobody to answer
            task.uncancel()
            return error_response(AtpError(ErrorCode.UNAVAILABLE, "server shutting down"), close=True)
        except Exception:     # a bug costs one request, with a proper error, never the server
            log.exception("http: chat request failed")
            return error_response(AtpError(ErrorCode.INTERNAL, "internal error"))
        finally:
            self._tasks.discard(task)
            if not self._tasks and self.draining:
                self._idle.set()

    async def _stream(self, request, chat, principal, include_usage: bool, t0: int):
        """SSE. The response starts at the first output, so anything failing before it (auth,
        routing, admission, upstream before its first token) is still a plain HTTP error."""
        resp = decision = routed_ns = None
        try:
            async with aclosing(self._stream_events(chat, principal, "http", t0)) as events:
                async for item in events:
                    kind = type(item)
                    if kind is Routed:             # again after a failover: the last one answers
                        decision = item.decision
                        routed_ns = routed_ns or time.perf_counter_ns()
                        continue
                    out = b""
                    if resp is None:
                        resp = web.StreamResponse(headers={
                            **_SSE_HEADERS, "x-atp-overhead-us": str((routed_ns - t0) // 1000),
                            "x-atp-model": decision.model, "x-atp-provider": decision.provider,
                            "x-request-id": chat.request_id})
                        await resp.prepare(request)     # headers leave with the first write
                        prefix = (b'data: {"id":"chatcmpl-' + chat.request_id.encode()
                                  + b'","object":"chat.completion.chunk","created":'
                                  + str(int(time.time())).encode() + b',"model":'
                                  + orjson.dumps(decision.model) + b',"choices":[{"index":0,"delta":')
                        out = prefix + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
                    if kind is Delta:        # one write (one syscall) per delta, the first with the head
                        await resp.write(out + prefix + b'{"content":' + orjson.dumps(item.text)
                                         + b'},"finish_reason":null}]}\n\n')
                    elif kind is Done:
                        out += (prefix + b'{},"finish_reason":' + orjson.dumps(item.finish_reason)
                                + b'}],"atp":' + orjson.dumps(_atp(item.decision, item.usage,
                                                                    item.overhead_us)) + b'}\n\n')
                        if include_usage:
                            out += (prefix[:prefix.index(b'"choices"')] + b'"choices":[],"usage":'
                                    + orjson.dumps(_usage(item.usage)) + b'}\n\n')
                        await resp.write_eof(out + _DONE)
        except ConnectionResetError:
            return resp           # the client left; aclosing() has closed the pipeline (CANCELLED)
        except (Exception, asyncio.CancelledError) as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            if cancelled and (resp is None or exc.args != (_SHUTDOWN,)):
                raise              # client gone, or chat() answers the shutdown with a plain 503
            if isinstance(exc, AtpError):
                err = exc
            elif cancelled:
                asyncio.current_task().uncancel()
                err = AtpError(ErrorCode.UNAVAILABLE, "server shutting down")
            else:
                log.exception("http: stream failed")
                err = AtpError(ErrorCode.INTERNAL, "internal error")
            if resp is None:
                return error_response(err, chat.request_id)
            # A stream that dies is an error event and no [DONE], never a silent success.
            await self._write_quietly(resp, b"data: " + error_body(err) + b"\n\n")
        await self._write_quietly(resp, None)
        return resp

    @staticmethod
    async def _write_quietly(resp: web.StreamResponse, data: bytes | None) -> None:
        with suppress(ConnectionResetError, RuntimeError):     # the peer may be gone already
            await (resp.write_eof() if data is None else resp.write(data))

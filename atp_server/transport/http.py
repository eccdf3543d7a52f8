"""OpenAI-compatible HTTP transport (aiohttp): the routes, bodies in and out; the JSON is dialects/openai.py's."""
import asyncio
import logging
import time
from contextlib import aclosing, suppress

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from codec.errors import ErrorCode

from ..dialects import openai as dialect
from ..dialects.openai import STATUS, TIER_ALIASES, bad as _bad, error_body   # noqa: F401 (re-exported)
from ..tracing.context import TRACE_HEADER, from_headers as trace_from_headers
from ..types import AtpError, Delta, Done, Routed, ToolCallDelta
from . import http_admin, http_anthropic, http_api, http_dashboard

log = logging.getLogger("atp.http")

MAX_BODY = 4 * 1024 * 1024
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SHUTDOWN = "atp-http-shutdown"   # cancel() message: the drain grace is over
# path -> the methods it serves: what the catch-all route answers 405 (with Allow) rather than 404.
_ROUTES = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/embeddings": "POST",
           "/v1/models": "GET", "/healthz": "GET", "/metrics": "GET", "/v1/messages": "POST",
           **http_api.ROUTES}


def error_response(exc: AtpError, request_id: str = "", status: int = 0, close: bool = False,
                   headers: dict | None = None) -> web.Response:
    status = status or STATUS[exc.code][0]
    headers = {**(headers or {}), "Content-Type": _JSON}
    if close:
        headers["Connection"] = "close"
    if status in (429, 503) or exc.retry_after_ms:
        headers["Retry-After"] = str(max(1, -(-exc.retry_after_ms // 1000)))
    if request_id:
        headers["x-request-id"] = request_id
    return web.Response(status=status, body=error_body(exc), headers=headers)


def trace_header(chat) -> dict | None:
    """{x-atp-trace-id: ...} when tracing gave the request a trace, else None."""
    return {TRACE_HEADER: chat.trace_id} if chat is not None and chat.trace_id else None


def route_headers(d) -> dict:
    """Why this model: the routing reasons (one header, "; "-separated) and the confidence. Reasons
    are built from configured model ids and numbers only; anything outside printable ASCII is
    replaced so a header can never break (aiohttp refuses CR/LF and non-Latin-1 values)."""
    text = "; ".join(d.reasons)
    if not text.isascii() or not text.isprintable():
        text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    if d.provider == "cache":      # answered from the response cache (atp_server/cache.py)
        return {"x-atp-route-reasons": text, "x-atp-confidence": f"{d.confidence:.3f}",
                "x-atp-cache": "hit"}
    return {"x-atp-route-reasons": text, "x-atp-confidence": f"{d.confidence:.3f}"}


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
        self.refused = service.refused            # (transport, code|None, reason|None): atp_refusals
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()    # chat requests in flight
        self._idle = asyncio.Event()              # set when the last of them ends while draining
        self.draining = False
        self.web = web.Application(client_max_size=MAX_BODY)
        self._embed = service.embed or _no_embeddings
        http_anthropic.add_routes(self)   # POST /v1/messages: the Anthropic dialect (before the catch-all)
        http_api.add_routes(self)         # /api/v1/...: the PRD's REST API
        http_admin.add_routes(self)       # /admin/v1/...: the admin API (admin keys and roles)
        http_dashboard.add_routes(self)   # GET /dashboard (+ /ws, /snapshot) when [dashboard] is enabled
        self.web.add_routes([web.post("/v1/chat/completions", self.chat), web.get("/v1/models", self.models),
                             web.post("/v1/completions", self.completions),
                             web.post("/v1/embeddings", self.embeddings),
                             web.get("/v1/models/{model_id}", self.model),
                             web.get("/healthz", self.healthz), web.get("/metrics", self.metrics),
                             web.route("*", "/{tail:.*}", self.not_found)])   # last: what nothing else matched

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
            self.refused("http", reason="auth")
            return error_response(AtpError(ErrorCode.UNAUTHENTICATED, "/metrics needs "
                                           "'Authorization: Bearer <[metrics] scrape_token>'"))
        return web.Response(body=await self.service.scrape_metrics(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        try:
            principal = self._authenticate(request.headers.get("Authorization"))
        except AtpError as exc:
            self.refused("http", exc.code)
            return error_response(exc)
        data = [dialect.model_body(row) for row in self.service.models(principal)]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def model(self, request: web.Request) -> web.Response:
        try:
            principal = self._authenticate(request.headers.get("Authorization"))
            wanted = request.match_info["model_id"]
            row = next((r for r in self.service.models(principal) if r.spec.id == wanted), None)
            if row is None:
                raise AtpError(ErrorCode.UNKNOWN_MODEL, f"the model {wanted!r} does not exist")
        except AtpError as exc:
            self.refused("http", exc.code)
            return error_response(exc)
        return web.Response(body=orjson.dumps(dialect.model_body(row)), content_type=_JSON)

    async def not_found(self, request: web.Request) -> web.Response:
        """Every path and method not served above: an OpenAI-shaped 404, or 405 naming what is allowed."""
        allowed = _ROUTES.get(request.path) or ("GET" if request.path.startswith("/v1/models/") else None)
        if allowed:
            self.refused("http", reason="method_not_allowed")
            return error_response(_bad(f"{request.method} is not allowed on {request.path}; use {allowed}"),
                                  status=405, headers={"Allow": allowed})
        self.refused("http", reason="not_found")
        return error_response(AtpError(ErrorCode.INVALID_REQUEST, f"no route for {request.method} {request.path}"),
                              status=404)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, dialect.parse_chat, False)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, dialect.parse_completion, True)

    async def _read(self, request: web.Request):
        """(principal, decoded JSON body): authenticated, size-checked, signature-checked."""
        headers = request.headers
        principal = self._authenticate(headers.get("Authorization"))
        if (request.content_length or 0) > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
        body = await request.read()
        if self._require_signature or self._signature_present(headers):
            shared = self._check_signature(headers, request.method, request.path, body,
                                           time.time_ns() // 1_000_000, principal)   # key of its tenant
            if shared is not None:      # [state] redis_url: the nonce checked across workers too
                await shared
        try:
            return principal, orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"malformed JSON: {exc}") from None

    async def embeddings(self, request: web.Request) -> web.Response:
        if self.draining or self.service.draining:
            return self._draining()
        try:
            principal, data = await self._read(request)
            emb, encoding = dialect.parse_embeddings(data)
            result, model_id, usage = await self._embed(emb, principal)
        except AtpError as exc:
            self.refused("http", exc.code)
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            self.refused("http", reason="too_large")
            return error_response(_bad(f"request body over {MAX_BODY} bytes"), status=413, close=True)
        except Exception:     # a bug costs one request, with a proper error, never the server
            log.exception("http: embeddings request failed")
            return error_response(AtpError(ErrorCode.INTERNAL, "internal error"))
        return web.Response(body=dialect.embeddings_body(result, model_id, encoding), headers={
            "Content-Type": _JSON, "x-atp-model": model_id, "x-atp-cost-usd": f"{usage.cost_usd:.6f}"})

    def _draining(self) -> web.Response:
        """A new request while the server drains: refused, counted, the connection closed."""
        self.refused("http", reason="draining")
        return error_response(AtpError(ErrorCode.UNAVAILABLE, "server is draining"), close=True)

    async def _generate(self, request: web.Request, parse, legacy: bool) -> web.StreamResponse:
        t0 = time.perf_counter_ns()
        if self.draining or self.service.draining:
            return self._draining()
        task = asyncio.current_task()
        self._tasks.add(task)
        chat = None
        try:
            principal, data = await self._read(request)
            chat, stream, include_usage = parse(data)
            if (rid := request.headers.get("X-Request-Id")) and len(rid) <= 128:   # the caller's id, if sane
                chat.request_id = rid
            if (cache := request.headers.get("x-atp-cache")) is not None:   # opt in/out: cache.py
                chat.metadata["cache"] = cache
            trace_from_headers(chat, request.headers)   # W3C traceparent/tracestate (tracing/)
            if stream:
                return await self._stream(request, chat, principal, include_usage, t0, legacy)
            c = await self._complete(chat, principal, "http", t0)
            d = c.decision
            body = dialect.text_completion_body(c) if legacy else dialect.completion_body(c)
            headers = {
                "Content-Type": _JSON, "x-atp-overhead-us": str(c.overhead_us),
                "x-atp-model": d.model, "x-atp-provider": d.provider, "x-request-id": c.request_id,
                "x-atp-cost-usd": f"{c.usage.cost_usd:.6f}",
                "x-atp-usage-estimated": "true" if c.usage.estimated else "false",
                **route_headers(d)}
            if chat.trace_id:
                headers[TRACE_HEADER] = chat.trace_id
            return web.Response(body=body, headers=headers)
        except AtpError as exc:
            self.refused("http", exc.code)
            return error_response(exc, chat.request_id if chat else "",
                                  headers=trace_header(chat))
        except web.HTTPRequestEntityTooLarge:
            self.refused("http", reason="too_large")
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

    async def _stream(self, request, chat, principal, include_usage: bool, t0: int, legacy: bool):
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
                            "x-request-id": chat.request_id, **route_headers(decision)})
                        if chat.trace_id:
                            resp.headers[TRACE_HEADER] = chat.trace_id
                        await resp.prepare(request)     # headers leave with the first write
                        enc = dialect.ChunkEncoder(chat.request_id, decision.model, legacy)
                        out = enc.head()
                    if kind is Delta:        # one write (one syscall) per delta, the first with the head
                        await resp.write(out + enc.text(item.text))
                    elif kind is ToolCallDelta:
                        await resp.write(out + enc.tool_call(item))
                    elif kind is Done:
                        await resp.write_eof(out + enc.done(item, include_usage))
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
                self.refused("http", err.code)
                return error_response(err, chat.request_id, headers=trace_header(chat))
            # A stream that dies is an error event and no [DONE], never a silent success.
            await self._write_quietly(resp, b"data: " + error_body(err) + b"\n\n")
        await self._write_quietly(resp, None)
        return resp

    @staticmethod
    async def _write_quietly(resp: web.StreamResponse, data: bytes | None) -> None:
        with suppress(ConnectionResetError, RuntimeError):     # the peer may be gone already
            await (resp.write_eof() if data is None else resp.write(data))


async def _no_embeddings(request, principal):
    raise AtpError(ErrorCode.NO_ROUTE, "no configured model serves embeddings")

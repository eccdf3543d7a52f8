"""The PRD's REST API on the HTTP port (/api/v1/...): routing decisions, routed requests, model status, host resources, health."""
import asyncio
import logging
import os
import time

import orjson
from aiohttp import web

from codec.errors import ErrorCode

from ..dialects import openai as dialect
from ..tracing.context import TRACE_HEADER, from_headers as trace_from_headers
from ..types import AtpError

log = logging.getLogger("atp.http")

PREFIX = "/api/v1"
_JSON = "application/json"
_STARTED = time.monotonic()
# (path, method) of every route here: http.py's catch-all answers 405 with these, openapi.py checks them.
ROUTES = {f"{PREFIX}/ai/select-model": "POST", f"{PREFIX}/ai/route-request": "POST",
          f"{PREFIX}/ai/models/status": "GET", f"{PREFIX}/ai/resources/metrics": "GET",
          f"{PREFIX}/health": "GET", "/openapi.json": "GET"}


def _json(doc, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type=_JSON)


def decision_json(d) -> dict:
    """A RouteDecision as the REST API shows it: the model, the whole failover chain, why."""
    return {"model": d.model, "provider": d.provider, "chain": [d.model, *d.fallbacks],
            "reasons": list(d.reasons), "confidence": round(float(d.confidence), 6),
            "estimated_cost_usd": float(d.estimated_cost_usd),
            "estimated_latency_ms": float(d.estimated_latency_ms), "max_attempts": d.max_attempts}


def host_resources() -> dict:
    """Host memory and load from /proc (Linux); keys absent where /proc does not say."""
    out = {"source": "proc"}
    try:
        with open("/proc/meminfo", "rb") as f:
            info = {k.decode(): int(v.split()[0]) for k, _, v in
                    (line.partition(b":") for line in f) if v.split()}
        total, avail = info.get("MemTotal"), info.get("MemAvailable")
        if total:
            out["memory"] = {"total_bytes": total * 1024, "available_bytes": (avail or 0) * 1024,
                             "used_fraction": round(1 - (avail or 0) / total, 6)}
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/loadavg", "rb") as f:
            one, five, fifteen = (float(x) for x in f.read().split()[:3])
        out["cpu"] = {"load_1m": one, "load_5m": five, "load_15m": fifteen, "cores": os.cpu_count() or 1}
    except (OSError, ValueError):
        pass
    return out


def resources_snapshot(service) -> dict:
    """The ResourceMonitor's snapshot when the service has one (h-res), else what /proc says."""
    monitor = getattr(service, "resources", None)
    if monitor is not None:
        snap = monitor.snapshot()
        return snap if isinstance(snap, dict) else dict(getattr(snap, "_asdict", lambda: vars(snap))())
    return host_resources()


def add_routes(transport) -> None:
    """Register the /api/v1 routes on an HttpTransport (its auth, service, drain bookkeeping)."""
    api = _RestApi(transport)
    transport.web.add_routes([
        web.post(f"{PREFIX}/ai/select-model", api.select_model),
        web.post(f"{PREFIX}/ai/route-request", api.route_request),
        web.get(f"{PREFIX}/ai/models/status", api.models_status),
        web.get(f"{PREFIX}/ai/resources/metrics", api.resources),
        web.get(f"{PREFIX}/health", api.health), web.get("/openapi.json", api.openapi)])


class _RestApi:
    def __init__(self, transport):
        self.t = transport
        self.service = transport.service
        self._openapi: bytes | None = None

    def _refuse(self, exc: AtpError, status: int = 0, reason: str | None = None) -> web.Response:
        from .http import error_response   # http.py imports this module
        self.t.refused("http", exc.code, reason)
        return error_response(exc, status=status)

    async def _chat(self, request: web.Request):
        """(principal, ChatRequest) from an OpenAI chat body, authenticated like /v1/chat/completions."""
        principal, data = await self.t._read(request)
        chat, stream, _ = dialect.parse_chat(data)
        if stream:
            raise dialect.bad("stream is not supported here; use /v1/chat/completions for SSE", "stream")
        if (rid := request.headers.get("X-Request-Id")) and len(rid) <= 128:
            chat.request_id = rid
        trace_from_headers(chat, request.headers)   # W3C traceparent/tracestate (tracing/)
        return principal, chat

    async def select_model(self, request: web.Request) -> web.Response:
        """The routing decision for a request, without calling any provider."""
        try:
            principal, chat = await self._chat(request)
            d = self.service.route(chat, principal)
        except AtpError as exc:
            return self._refuse(exc)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(dialect.bad("request body too large"), status=413)
        return _json({"decision": decision_json(d)})

    async def route_request(self, request: web.Request) -> web.Response:
        """Route and execute: the completion (OpenAI chat.completion JSON) and the decision."""
        t, t0 = self.t, time.perf_counter_ns()
        if t.draining or self.service.draining:
            return self._refuse(AtpError(ErrorCode.UNAVAILABLE, "server is draining"), reason="draining")
        task = asyncio.current_task()
        t._tasks.add(task)
        try:
            principal, chat = await self._chat(request)
            c = await self.service.complete(chat, principal, "http", t0)
            resp = _json({"decision": decision_json(c.decision),
                          "completion": orjson.loads(dialect.completion_body(c)),
                          "overhead_us": c.overhead_us})
            if chat.trace_id:
                resp.headers[TRACE_HEADER] = chat.trace_id
            return resp
        except AtpError as exc:
            return self._refuse(exc)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(dialect.bad("request body too large"), status=413)
        except Exception:     # a bug costs one request, with a proper error, never the server
            log.exception("http: route-request failed")
            return self._refuse(AtpError(ErrorCode.INTERNAL, "internal error"))
        finally:
            t._tasks.discard(task)
            if not t._tasks and t.draining:
                t._idle.set()

    async def models_status(self, request: web.Request) -> web.Response:
        """Per model the caller may use: health, breaker, latency p50/p95, error rate, in flight, window."""
        try:
            principal = self.t._authenticate(request.headers.get("Authorization"))
        except AtpError as exc:
            return self._refuse(exc)
        return _json({"models": self.service.model_status(principal)})

    async def resources(self, request: web.Request) -> web.Response:
        try:
            self.t._authenticate(request.headers.get("Authorization"))
        except AtpError as exc:
            return self._refuse(exc)
        return _json(resources_snapshot(self.service))

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of every route on this port (built once, on first ask)."""
        if self._openapi is None:
            from ..openapi import document
            self._openapi = orjson.dumps(document(
                dashboard=getattr(self.service, "live", None) is not None))
        return web.Response(body=self._openapi, content_type=_JSON)

    async def health(self, request: web.Request) -> web.Response:
        """Unauthenticated (probes): up or draining, and how many models have a closed circuit."""
        rows = self.service.model_health()
        doc = {"status": "draining" if self.t.draining or self.service.draining else "ok",
               "uptime_s": round(time.monotonic() - _STARTED, 3),
               "models_total": len(rows), "models_healthy": sum(rows)}
        return _json(doc, 503 if doc["status"] == "draining" else 200)


_DECISION = {"type": "object", "required": ["model", "provider", "chain", "reasons", "confidence",
                                            "estimated_cost_usd", "estimated_latency_ms"],
             "properties": {"model": {"type": "string"}, "provider": {"type": "string"},
                            "chain": {"type": "array", "items": {"type": "string"}},
                            "reasons": {"type": "array", "items": {"type": "string"}},
                            "confidence": {"type": "number"}, "estimated_cost_usd": {"type": "number"},
                            "estimated_latency_ms": {"type": "number"},
                            "max_attempts": {"type": "integer"}}}
_ERRORS = {"default": {"$ref": "#/components/responses/Error400"}}   # every error has the Error shape
_CHAT_BODY = {"required": True, "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ChatRequest"}}}}
_AUTH = [{"bearer": []}]

# The OpenAPI 3.1 path items of the routes above (openapi.py merges them into /openapi.json).
OPENAPI_PATHS = {
    f"{PREFIX}/ai/select-model": {"post": {
        "summary": "The routing decision for a request (no provider is called)", "tags": ["rest"],
        "security": _AUTH, "requestBody": _CHAT_BODY,
        "responses": {"200": {"description": "the decision", "content": {_JSON: {"schema": {
            "type": "object", "required": ["decision"], "properties": {"decision": _DECISION}}}}},
            **_ERRORS}}},
    f"{PREFIX}/ai/route-request": {"post": {
        "summary": "Route and execute: the completion and the decision", "tags": ["rest"],
        "security": _AUTH, "requestBody": _CHAT_BODY,
        "responses": {"200": {"description": "the completion and the decision", "content": {_JSON: {
            "schema": {"type": "object", "required": ["decision", "completion"], "properties": {
                "decision": _DECISION, "completion": {"type": "object"},
                "overhead_us": {"type": "integer"}}}}}},
            **_ERRORS}}},
    f"{PREFIX}/ai/models/status": {"get": {
        "summary": "Per-model health, breaker state, latency, error rate, in flight, window",
        "tags": ["rest"], "security": _AUTH,
        "responses": {"200": {"description": "the models the caller may use", "content": {_JSON: {
            "schema": {"type": "object", "required": ["models"], "properties": {"models": {
                "type": "array", "items": {"type": "object", "required": [
                    "id", "healthy", "breaker", "latency_p50_ms", "latency_p95_ms", "error_rate",
                    "in_flight", "window"], "properties": {
                    "id": {"type": "string"}, "provider": {"type": "string"},
                    "healthy": {"type": "boolean"},
                    "breaker": {"enum": ["closed", "open", "half_open", "probing"]},
                    "latency_p50_ms": {"type": "number"}, "latency_p95_ms": {"type": "number"},
                    "error_rate": {"type": "number"}, "in_flight": {"type": "integer"},
                    "answers": {"type": "integer"},
                    "window": {"type": ["number", "null"]}}}}}}}}},
            **_ERRORS}}},
    f"{PREFIX}/ai/resources/metrics": {"get": {
        "summary": "Host CPU load and memory (the resource monitor's view)", "tags": ["rest"],
        "security": _AUTH,
        "responses": {"200": {"description": "host resources", "content": {_JSON: {"schema": {
            "type": "object"}}}}, **_ERRORS}}},
    f"{PREFIX}/health": {"get": {
        "summary": "Liveness and model health counts (no credentials)", "tags": ["rest"],
        "security": [],
        "responses": {s: {"description": d, "content": {_JSON: {"schema": {
            "type": "object", "required": ["status", "models_total", "models_healthy"],
            "properties": {"status": {"enum": ["ok", "draining"]}, "uptime_s": {"type": "number"},
                           "models_total": {"type": "integer"},
                           "models_healthy": {"type": "integer"}}}}}}
            for s, d in (("200", "serving"), ("503", "draining"))}}},
}

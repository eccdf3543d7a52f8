"""gRPC transport: atp.v1.Atp (typed RPCs + the bidi frame Session), grpc.health.v1 and reflection.

Thin: authenticate at the door, convert protobuf <-> types, call the pipeline, map AtpError to a
gRPC status plus atp-error-* trailers. Typed requests keep the bytes received, so the HMAC request
signature covers exactly what travelled. Runs as is on uvloop (docs/TRANSPORTS.md).
"""
import asyncio
import logging
import operator
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from codec.errors import ErrorCode
from proto.atp.v1 import atp_pb2 as pb

from ..session import FrameSession
from ..tracing.context import TRACE_HEADER, from_metadata, from_pairs
from ..types import AtpError, ChatRequest, Delta, Done, RouteDecision, Routed

log = logging.getLogger("atp.grpc")

SERVICE = "atp.v1.Atp"
TIERS = {pb.QUALITY_TIER_UNSPECIFIED: "balanced", pb.QUALITY_TIER_FAST: "fast",
         pb.QUALITY_TIER_BALANCED: "balanced", pb.QUALITY_TIER_HIGH: "high"}
_S = grpc.StatusCode
_STATUS = {206: _S.PERMISSION_DENIED, 207: _S.PERMISSION_DENIED, 400: _S.INVALID_ARGUMENT, 401: _S.NOT_FOUND,
           402: _S.FAILED_PRECONDITION, 304: _S.DEADLINE_EXCEEDED, 502: _S.DEADLINE_EXCEEDED,
           505: _S.CANCELLED, **{c: _S.RESOURCE_EXHAUSTED for c in (300, 301, 302, 303, 305)},
           **{c: _S.UNAVAILABLE for c in (501, 503, 504)}}   # other 2xx: UNAUTHENTICATED
_WAKE = object()          # Session queue item: re-check whether the session may close now
_ser = operator.methodcaller("SerializeToString")


def batches(frames: list, limit: int):
    """Whole frames joined into messages of at most `limit` bytes (a larger frame goes alone)."""
    if sum(map(len, frames)) <= limit:     # nearly always: one message
        yield b"".join(frames)
        return
    batch, size = [], 0
    for f in frames:
        if batch and size + len(f) > limit:
            yield b"".join(batch)
            batch, size = [], 0
        batch.append(f)
        size += len(f)
    if batch:
        yield b"".join(batch)


def grpc_status(code: int) -> grpc.StatusCode:
    return _STATUS.get(code) or (_S.UNAUTHENTICATED if 200 <= code < 300 else _S.INTERNAL)


def error_metadata(exc: AtpError) -> tuple:
    """Trailing metadata that lets any client rebuild the exact ATP wire error."""
    return (("atp-error-code", str(int(exc.code))), ("atp-error-name", exc.name),
            ("atp-retryable", "true" if exc.retryable else "false"),
            ("atp-retry-after-ms", str(exc.retry_after_ms)))


def to_chat_request(m: pb.CompletionRequest, context=None) -> ChatRequest:
    """The neutral request; W3C trace context from the call's metadata (`context`), else from the
    message's metadata map."""
    tier = TIERS.get(m.tier)
    if tier is None:
        raise AtpError(ErrorCode.INVALID_REQUEST, f"unknown quality tier {m.tier}")
    request = _chat_request(m, tier)
    from_metadata(request)
    if context is not None:
        from_pairs(request, context.invocation_metadata())
    return request


def _chat_request(m: pb.CompletionRequest, tier: str) -> ChatRequest:
    return ChatRequest(
        messages=[(x.role, x.content) for x in m.messages], tier=tier,
        model=(m.model or None) if m.HasField("model") else None,
        max_tokens=m.max_tokens if m.HasField("max_tokens") else None,
        max_cost_usd=m.max_cost_usd if m.HasField("max_cost_usd") else None,
        latency_slo_ms=m.latency_slo_ms if m.HasField("latency_slo_ms") else None,
        tenant=m.tenant,
        capabilities=tuple(m.required_capabilities) if m.required_capabilities else (),
        temperature=m.temperature if m.HasField("temperature") else None,
        request_id=m.request_id, metadata=dict(m.metadata) if m.metadata else {})


def route_pb(d: RouteDecision) -> pb.RouteDecision:
    return pb.RouteDecision(
        provider=d.provider, model=d.model, estimated_cost_usd=d.estimated_cost_usd,
        estimated_latency_ms=d.estimated_latency_ms, confidence=d.confidence, reasons=d.reasons,
        fallbacks=d.fallbacks)


def model_pb(row) -> pb.ModelInfo:
    s = row.spec
    return pb.ModelInfo(id=s.id, provider=s.provider, capabilities=sorted(s.capabilities),
                        context_window=s.context_window, price_in_per_mtok_usd=s.price_in_per_mtok,
                        price_out_per_mtok_usd=s.price_out_per_mtok, quality=s.quality,
                        healthy=row.healthy)


def usage_pb(u) -> pb.Usage:
    return pb.Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                    cost_usd=u.cost_usd, cost_usd_micros=u.cost_usd_micros)


def _with_raw(cls):
    """Deserializer keeping the received bytes beside the message (the signature covers them)."""
    return lambda raw: (cls.FromString(raw), raw)


class _SessionCall:
    """One Session RPC: frames out through a queue the handler drains; closes once idle if asked."""

    __slots__ = ("session", "queue", "half_closed", "transport")

    def __init__(self, transport):
        self.transport = transport
        self.queue: asyncio.Queue = asyncio.Queue()
        self.half_closed = False
        self.session = FrameSession(transport.service, "grpc", self.queue.put_nowait,
                                    lambda: self.queue.put_nowait(None), message_mode=True)

    def close_if_idle(self) -> None:
        # After a half-close or during a drain, CLOSE once no stream runs (never from `write`).
        s = self.session
        if (self.half_closed or self.transport.draining) and not s.tasks and not s.conn.closed:
            s.close(ErrorCode.NO_ERROR, "server draining" if self.transport.draining
                    else "client finished sending")

    async def read(self, request_iterator) -> None:
        try:
            async for msg in request_iterator:
                self.session.feed(msg.data)
        except Exception as exc:   # the call broke: treat as the peer going away
            log.debug("session read ended: %r", exc)
            self.session.peer_gone()
            return
        self.half_closed = True
        self.queue.put_nowait(_WAKE)


class GrpcTransport:
    def __init__(self, service):
        self.service = service
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.draining = False
        self._calls: set[_SessionCall] = set()

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        # Twice the documented Session message maximum (PROTOCOL.md §2.2), plus protobuf framing:
        # a message up to there reaches the codec and is refused in-band (CLOSE 100); only one
        # beyond it meets grpc's own RESOURCE_EXHAUSTED.
        cap = 2 * self.service.limits.max_message + 1024
        server = self.server = grpc.aio.server(options=[
            ("grpc.so_reuseport", int(reuse_port)), ("grpc.max_receive_message_length", cap),
            ("grpc.max_send_message_length", cap)])
        table = {
            "Session": grpc.stream_stream_rpc_method_handler(
                self.Session, pb.Frame.FromString, _ser),
            "Stream": grpc.unary_stream_rpc_method_handler(
                self.Stream, _with_raw(pb.CompletionRequest), _ser)}
        for name, cls in (("Complete", pb.CompletionRequest), ("Route", pb.CompletionRequest),
                          ("Feedback", pb.FeedbackRequest), ("ListModels", pb.ListModelsRequest)):
            table[name] = grpc.unary_unary_rpc_method_handler(getattr(self, name),
                                                              _with_raw(cls), _ser)
        # Registered (not generic) handlers: grpc matches them in C; with the health and
        # reflection services present, a generic handler cost ~20 µs more per call here.
        server.add_registered_method_handlers(SERVICE, table)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        addr = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(addr)
        except RuntimeError:   # how grpc reports a port it cannot bind (it has logged why)
            bound = 0
        if not bound:
            raise OSError(f"gRPC: cannot bind {addr}")
        await server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return bound

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING and refuse new calls; in-flight work gets `grace_s`, then sessions still
        busy get CLOSE UNAVAILABLE (retryable) and whatever is left is cancelled."""
        self.draining = True
        await self.health.enter_graceful_shutdown()
        for call in list(self._calls):
            call.queue.put_nowait(_WAKE)
        timer = asyncio.get_running_loop().call_later(grace_s, self._close_sessions)
        try:
            if self.server is not None:
                await self.server.stop(grace_s + 0.2)   # the CLOSEs leave before grpc cancels
        finally:
            timer.cancel()
        for call in list(self._calls):
            call.session.peer_gone()

    def _close_sessions(self) -> None:
        for call in list(self._calls):
            call.session.close(ErrorCode.UNAVAILABLE, "server shutting down")

    # ---- helpers --------------------------------------------------------------------------------

    async def _authenticate(self, context, method: str, raw: bytes):
        md = {k: v for k, v in context.invocation_metadata() if not k.endswith("-bin")}
        principal = self.service.authenticate(md.get("authorization"))
        shared = self.service.check_signature(md, "POST", f"/{SERVICE}/{method}", raw,
                                              int(time.time() * 1000), principal)
        if shared is not None:      # [state] redis_url: the nonce checked across workers too
            await shared
        return principal

    async def _abort(self, context, exc: AtpError, t0: int):
        self.service.refused("grpc", exc.code)      # counted when the code is a refusal's
        overhead = (time.perf_counter_ns() - t0) // 1000
        await context.abort(grpc_status(exc.code), exc.message,
                            error_metadata(exc) + (("atp-overhead-us", str(overhead)),))

    def _unary(fn):
        """Typed unary handler: authenticate, run, report overhead; AtpError -> gRPC status. A
        handler may return (response, more trailing metadata)."""
        name = fn.__name__

        async def handler(self, req, context):
            t0 = time.perf_counter_ns()
            extra = ()
            try:
                response = await fn(self, req[0], await self._authenticate(context, name, req[1]), t0,
                                    context)
                if type(response) is tuple:
                    response, extra = response
            except AtpError as exc:
                await self._abort(context, exc, t0)
            except Exception:   # a bug costs this call, with a wire code, not an opaque UNKNOWN
                log.exception("gRPC %s failed", name)
                await self._abort(context, AtpError(ErrorCode.INTERNAL, "internal error"), t0)
            overhead = getattr(response, "gateway_overhead_us", None)  # Complete: minus upstream
            if overhead is None:
                overhead = (time.perf_counter_ns() - t0) // 1000
            context.set_trailing_metadata((("atp-overhead-us", str(overhead)),) + extra)
            return response
        handler.__name__ = name
        return handler

    # ---- typed RPCs -----------------------------------------------------------------------------

    @_unary
    async def Complete(self, m, principal, t0, context):
        request = to_chat_request(m, context)
        c = await self.service.complete(request, principal, "grpc", t0)
        response = pb.CompletionResponse(
            request_id=c.request_id, text=c.text, finish_reason=c.finish_reason,
            usage=usage_pb(c.usage), route=route_pb(c.decision), gateway_overhead_us=c.overhead_us)
        return (response, ((TRACE_HEADER, request.trace_id),)) if request.trace_id else response

    @_unary
    async def Route(self, m, principal, t0, context):
        return route_pb(self.service.route(to_chat_request(m), principal))

    @_unary
    async def Feedback(self, m, principal, t0, context):
        # m.tenant is not used: the tenant is the credentials' (service.feedback)
        return pb.FeedbackAck(accepted=self.service.feedback(
            principal, m.request_id, m.score, m.comment if m.HasField("comment") else None))

    @_unary
    async def ListModels(self, m, principal, t0, context):
        # m.tenant is not used: a caller sees its own tenant's models (service.models)
        return pb.ListModelsResponse(models=[model_pb(row)
                                             for row in self.service.models(principal)])

    del _unary

    async def Stream(self, req, context):
        t0 = time.perf_counter_ns()
        try:
            principal = await self._authenticate(context, "Stream", req[1])
            request = to_chat_request(req[0], context)
        except AtpError as exc:
            await self._abort(context, exc, t0)
        events = self.service.stream(request, principal, "grpc", t0)
        sent = False
        try:
            async for item in events:
                kind = type(item)
                if kind is Delta:
                    yield pb.StreamEvent(chunk=pb.Chunk(index=item.index, text=item.text,
                                                        tokens=item.tokens))
                elif kind is Routed:
                    if sent:    # a failover re-route: the contract has one; end.route is final
                        continue
                    yield pb.StreamEvent(route=route_pb(item.decision))
                elif kind is Done:
                    trailing = (("atp-overhead-us", str(item.overhead_us)),
                                ("atp-request-id", request.request_id))
                    if request.trace_id:
                        trailing += ((TRACE_HEADER, request.trace_id),)
                    context.set_trailing_metadata(trailing)
                    yield pb.StreamEvent(end=pb.Completion(
                        finish_reason=item.finish_reason, usage=usage_pb(item.usage),
                        route=route_pb(item.decision), gateway_overhead_us=item.overhead_us))
                sent = True
        except Exception as exc:
            if not isinstance(exc, AtpError):   # a bug: this call fails with a wire code
                log.exception("gRPC Stream failed")
                exc = AtpError(ErrorCode.INTERNAL, "internal error")
            if not sent:     # nothing on the wire yet: a plain gRPC status is the clearest answer
                await self._abort(context, exc, t0)
            context.set_trailing_metadata(error_metadata(exc))
            yield pb.StreamEvent(error=pb.Error(code=int(exc.code), name=exc.name,
                                                message=exc.message, retryable=exc.retryable,
                                                retry_after_ms=exc.retry_after_ms))
        finally:
            await events.aclose()   # client gone (cancelled) or done: the upstream call ends too

    # ---- the frame session ----------------------------------------------------------------------

    async def Session(self, request_iterator, context):
        call = _SessionCall(self)
        self._calls.add(call)
        reader = asyncio.get_running_loop().create_task(call.read(request_iterator))
        try:
            call.close_if_idle()     # a session opened while draining closes at once
            while (item := await call.queue.get()) is not None:    # None: ended, CLOSE was sent
                if item is not _WAKE:
                    # One message per flush (each gRPC message costs ~75 µs, a frame ~3 µs),
                    # split only where it would pass the documented maximum.
                    for data in batches(item, self.service.limits.max_message):
                        try:
                            await context.write(pb.Frame(data=data))
                        except grpc.aio.InternalError as exc:
                            # The peer reset the call while we wrote (grpc's ExecuteBatchError).
                            # Raised from here grpc would log it with a traceback whenever it
                            # had not yet seen the cancellation itself; it is one.
                            log.debug("session write failed: %r", exc)
                            raise asyncio.CancelledError("peer reset the Session call") from exc
                call.close_if_idle()
        finally:
            reader.cancel()
            call.session.peer_gone()   # client gone or call cancelled: stop every upstream call
            self._calls.discard(call)

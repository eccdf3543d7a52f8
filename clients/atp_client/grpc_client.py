"""Async Python SDK over gRPC: the typed atp.v1.Atp RPCs, and ATP frame sessions over `Session`.

AsyncGrpcClient sends pre-serialized request bytes, so an optional HMAC request signature covers
exactly the bytes that travel. gRPC failures become AtpClientError with the wire code the server
put in the trailing metadata (atp-error-code), or one derived from the gRPC status otherwise.
A client binds to the event loop it is first used on.
"""
import asyncio
import hashlib
import hmac
import os
import time
from contextlib import aclosing

import grpc
from grpc_health.v1 import health_pb2

from codec.errors import ErrorCode
from proto.atp.v1 import atp_pb2 as pb

from .credentials import api_key_from, hmac_from, missing_api_key
from .errors import AtpClientError
from .frames import FrameClient, build_request, keyring_for
from .types import Chunk, Result

DEFAULT_TARGET = "127.0.0.1:8471"

SERVICE = "/atp.v1.Atp/"
TIERS = {None: pb.QUALITY_TIER_UNSPECIFIED, "fast": pb.QUALITY_TIER_FAST,
         "balanced": pb.QUALITY_TIER_BALANCED, "high": pb.QUALITY_TIER_HIGH}
_S = grpc.StatusCode
_STATUS_CODES = {   # gRPC status -> ATP code, when the server sent no atp-error-code
    _S.UNAUTHENTICATED: ErrorCode.UNAUTHENTICATED, _S.PERMISSION_DENIED: ErrorCode.FORBIDDEN,
    _S.RESOURCE_EXHAUSTED: ErrorCode.OVERLOADED, _S.INVALID_ARGUMENT: ErrorCode.INVALID_REQUEST,
    _S.NOT_FOUND: ErrorCode.UNKNOWN_MODEL, _S.FAILED_PRECONDITION: ErrorCode.NO_ROUTE,
    _S.UNAVAILABLE: ErrorCode.UNAVAILABLE, _S.DEADLINE_EXCEEDED: ErrorCode.TIMEOUT,
    _S.CANCELLED: ErrorCode.CANCELLED,
}


def _identity(b: bytes) -> bytes:
    return b


def sign_metadata(key_id: int, secret: bytes, path: str, body: bytes, *,
                  now_ms: int | None = None, nonce_hex: str | None = None) -> tuple:
    """x-atp-* request-signature metadata (same input as the server's auth.signing_input)."""
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    nonce = (nonce_hex or os.urandom(8).hex()).lower()
    msg = b"\n".join((b"POST", path.encode(), str(ts).encode(), nonce.encode(),
                      hashlib.sha256(body).hexdigest().encode()))
    return (("x-atp-key-id", str(key_id)), ("x-atp-timestamp", str(ts)), ("x-atp-nonce", nonce),
            ("x-atp-signature", hmac.new(secret, msg, hashlib.sha256).hexdigest()))


def error_from_rpc(exc: grpc.RpcError) -> AtpClientError:
    """A failed call -> AtpClientError carrying the exact ATP wire code."""
    md = {k: v for k, v in (exc.trailing_metadata() or ())}
    details = exc.details() or exc.code().name
    if "atp-error-code" in md:
        return AtpClientError(int(md["atp-error-code"]), details,
                              md.get("atp-retryable") == "true",
                              int(md.get("atp-retry-after-ms", "0") or 0))
    return AtpClientError(_STATUS_CODES.get(exc.code(), ErrorCode.INTERNAL), details)


def request_message(prompt=None, *, messages=None, tier=None, model=None, max_tokens=None,
                    max_cost_usd=None, slo_ms=None, tenant=None, capabilities=None,
                    temperature=None, request_id=None, metadata=None) -> pb.CompletionRequest:
    """Friendly arguments (as frames.build_request) -> a CompletionRequest message."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of fast, balanced, high, not {tier!r}")
    p = build_request(prompt, messages=messages)
    m = pb.CompletionRequest(
        messages=[pb.ChatMessage(role=r, content=c) for r, c in p["messages"]], tier=TIERS[tier],
        tenant=tenant or "", required_capabilities=list(capabilities or ()),
        request_id=request_id or "", metadata=metadata or {})
    for name, value in (("model", model), ("max_tokens", max_tokens), ("temperature", temperature),
                        ("max_cost_usd", max_cost_usd), ("latency_slo_ms", slo_ms)):
        if value is not None:
            setattr(m, name, value)
    return m


def route_dict(r: pb.RouteDecision) -> dict:
    return {"provider": r.provider, "model": r.model, "estimated_cost_usd": r.estimated_cost_usd,
            "estimated_latency_ms": r.estimated_latency_ms, "confidence": r.confidence,
            "reasons": list(r.reasons), "fallbacks": list(r.fallbacks)}


class AsyncGrpcClient:
    """The typed RPCs: complete, stream, route, feedback, list_models, plus the health check.

    `api_key` is the caller's, else $ATP_API_KEY; without one, every call but health() raises
    AtpClientError(UNAUTHENTICATED) before anything is sent. api_key="" sends no key at all.
    """

    def __init__(self, target: str = DEFAULT_TARGET, api_key: str | None = None, *,
                 sign_with: tuple[int, bytes] | None = None, timeout: float | None = None,
                 options: list | None = None):
        self.target = target
        self.api_key = api_key_from(api_key)
        self.sign_with = sign_with
        self.timeout = timeout
        self._options = options
        self._channel = None
        self._rpcs: dict = {}

    def _rpc(self, name: str, response, streaming: bool = False, path: str | None = None):
        """A cached multicallable taking request bytes (created on first use, on this loop)."""
        rpc = self._rpcs.get(name)
        if rpc is None:
            if self._channel is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            make = self._channel.unary_stream if streaming else self._channel.unary_unary
            rpc = self._rpcs[name] = make(path or SERVICE + name, request_serializer=_identity,
                                          response_deserializer=response.FromString)
        return rpc

    def metadata(self, method: str, body: bytes) -> tuple:
        if self.api_key is None:
            raise missing_api_key()
        md = (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()
        if self.sign_with is not None:
            md += sign_metadata(*self.sign_with, SERVICE + method, body)
        return md

    async def _unary(self, name: str, message, response):
        body = message.SerializeToString()
        try:
            return await self._rpc(name, response)(body, metadata=self.metadata(name, body),
                                                   timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def complete(self, prompt=None, **kwargs) -> Result:
        r = await self._unary("Complete", request_message(prompt, **kwargs), pb.CompletionResponse)
        u = r.usage
        return Result(r.text, r.route.model, r.route.provider, r.finish_reason, u.input_tokens,
                      u.output_tokens, u.cost_usd_micros, r.gateway_overhead_us, r.request_id,
                      {"route": route_dict(r.route)})

    async def stream(self, prompt=None, **kwargs):
        """Async generator: Chunk..., then one Result; failures raise AtpClientError."""
        body = request_message(prompt, **kwargs).SerializeToString()
        call = self._rpc("Stream", pb.StreamEvent, streaming=True)(
            body, metadata=self.metadata("Stream", body), timeout=self.timeout)
        parts, first_route, done = [], None, False
        try:
            async for ev in call:
                which = ev.WhichOneof("event")
                if which == "chunk":
                    c = ev.chunk
                    parts.append(c.text)
                    yield Chunk(c.index, c.text, c.tokens)
                elif which == "route":
                    first_route = route_dict(ev.route)
                elif which == "end":
                    done = True
                    e, u = ev.end, ev.end.usage
                    md = {k: v for k, v in (await call.trailing_metadata() or ())}
                    yield Result("".join(parts), e.route.model, e.route.provider, e.finish_reason,
                                 u.input_tokens, u.output_tokens, u.cost_usd_micros,
                                 e.gateway_overhead_us,
                                 md.get("atp-request-id", kwargs.get("request_id") or ""),
                                 {"route": first_route, "final_route": route_dict(e.route)})
                    return
                elif which == "error":
                    done = True
                    e = ev.error
                    raise AtpClientError(e.code, e.message, e.retryable, e.retry_after_ms)
            done = True
            raise AtpClientError(ErrorCode.UPSTREAM_CUT, "stream ended without a terminal event")
        except grpc.RpcError as exc:
            done = True
            raise error_from_rpc(exc) from None
        finally:
            if not done:
                call.cancel()    # the caller walked away: the server cancels the upstream call

    async def route(self, prompt=None, **kwargs) -> dict:
        return route_dict(await self._unary("Route", request_message(prompt, **kwargs),
                                            pb.RouteDecision))

    async def feedback(self, request_id: str, score: float, comment: str | None = None, *,
                       tenant: str = "") -> bool:
        m = pb.FeedbackRequest(request_id=request_id, score=score, tenant=tenant)
        if comment is not None:
            m.comment = comment
        return (await self._unary("Feedback", m, pb.FeedbackAck)).accepted

    async def list_models(self, tenant: str = "") -> list[dict]:
        r = await self._unary("ListModels", pb.ListModelsRequest(tenant=tenant),
                              pb.ListModelsResponse)
        return [{"id": m.id, "provider": m.provider, "capabilities": list(m.capabilities),
                 "context_window": m.context_window,
                 "price_in_per_mtok_usd": m.price_in_per_mtok_usd,
                 "price_out_per_mtok_usd": m.price_out_per_mtok_usd, "quality": m.quality,
                 "healthy": m.healthy} for m in r.models]

    async def health(self, service: str = "atp.v1.Atp") -> str:
        """The standard grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        check = self._rpc("health", health_pb2.HealthCheckResponse,
                          path="/grpc.health.v1.Health/Check")
        body = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        try:
            r = await check(body, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._rpcs.clear()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


class AsyncSessionClient:
    """One bidi Session call = one signed ATP session carrying many concurrent requests.

    Frames are signed with `key_id` and `secret`, else $ATP_KEY_ID and $ATP_HMAC_SECRET.
    """

    def __init__(self, target: str = DEFAULT_TARGET, key_id: int | None = None,
                 secret: bytes | str | None = None, *, agent: str = "atp-python-grpc",
                 options: list | None = None):
        self.target = target
        self.key_id, self.secret = hmac_from(key_id, secret)
        self.agent = agent
        self._options = options
        self.frames: FrameClient | None = None
        self._channel = self._call = self._reader = self._writer = None

    def connect(self) -> FrameClient:
        """Open the Session call and send HELLO (idempotent; the first request does it too)."""
        if self.frames is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._call = self._channel.stream_stream(
                SERVICE + "Session", request_serializer=pb.Frame.SerializeToString,
                response_deserializer=pb.Frame.FromString)()
            self._out: asyncio.Queue = asyncio.Queue()
            self.frames = FrameClient(keyring_for(self.key_id, self.secret), self._out.put_nowait,
                                      agent=self.agent)
            loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_loop())
            self._reader = loop.create_task(self._read_loop())
        return self.frames

    async def _write_loop(self) -> None:
        call, out = self._call, self._out
        try:
            while (frames := await out.get()) is not None:
                batch = list(frames)
                ended = False
                while not out.empty():      # coalesce everything already queued into one message
                    more = out.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.extend(more)
                await call.write(pb.Frame(data=b"".join(batch)))
                if ended:
                    break
            await call.done_writing()
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass    # the call ended; the reader reports why

    async def _read_loop(self) -> None:
        fc, why = self.frames, "server ended the session call"
        try:
            while (msg := await self._call.read()) is not grpc.aio.EOF:
                fc.feed_frames(msg.data)
        except grpc.RpcError as exc:
            why = f"session call failed: {exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:   # grpc.aio raises this for a locally cancelled call;
            why = "session call cancelled"   # a private leaf task: ending quietly is fine
        finally:
            fc.peer_closed(why)     # keeps the server's CLOSE code if one arrived

    @property
    def terminated(self) -> AtpClientError | None:
        """Why the session ended (e.g. the server's CLOSE code), or None while it is open."""
        return self.frames.terminated if self.frames is not None else None

    async def stream(self, prompt=None, **kwargs):
        """Async generator: Chunk..., then one Result; failures raise AtpClientError."""
        fc = self.connect()
        async with aclosing(fc.stream(build_request(prompt, **kwargs))) as items:
            async for item in items:    # closing early sends CANCEL: the server stops upstream
                yield item

    async def complete(self, prompt=None, **kwargs) -> Result:
        return await self.connect().complete(build_request(prompt, stream=False, **kwargs))

    async def close(self) -> None:
        """CLOSE the session, half-close the call, and wait (briefly) for the server to end it."""
        if self.frames is None:
            return
        self.frames.close()
        self._out.put_nowait(None)
        _, pending = await asyncio.wait({self._reader}, timeout=5.0)
        if pending:
            self._call.cancel()
        self._writer.cancel()
        self._reader.cancel()
        await self._channel.close()
        self._channel = None

    async def __aenter__(self):
        self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()

"""Per-target request drivers: open clients, hand each worker an async `call()`, close them.

`call()` sends one request, checks the answer, and returns (gateway_overhead_us | None,
first_output_time | None) — the second only for streams (time.perf_counter() of the first chunk).
Any failure raises; `error_name()` turns it into the ATP code name the run counts it under.

gRPC / Session / QUIC go through the SDK clients (clients/atp_client); `connections` spreads the
workers over K clients (worker i uses client i % K). grpc channels to one target share one TCP
connection through grpc's global subchannel pool, so K > 1 sets grpc.use_local_subchannel_pool.
HTTP uses the project's lean keep-alive client (atp_server/adapters/http_client.py) with one pooled
connection per concurrent request (HTTP/1.1), or aiohttp (--http-client aiohttp).
"""
from __future__ import annotations

import abc
import asyncio
import time
from collections import deque

import grpc

from atp_client import AsyncGrpcClient, AsyncQuicClient, AsyncSessionClient, AtpClientError, Result
from atp_server.config import DEV_API_KEY, DEV_HMAC_KEY_ID, DEV_HMAC_SECRET

PROMPT = "Say hello in one word."
_now = time.perf_counter


class BadAnswer(Exception):
    """A 'successful' answer that is not the expected one (empty text, missing marker)."""


class HttpError(Exception):
    def __init__(self, status: int, body: bytes):
        self.status = status
        self.code_name = f"HTTP_{status}"
        try:
            import orjson
            err = orjson.loads(body).get("error", {})
            self.code_name = err.get("code") or self.code_name
        except Exception:
            pass
        super().__init__(f"HTTP {status}: {body[:200]!r}")


def error_name(exc: BaseException) -> str:
    if isinstance(exc, AtpClientError):
        return exc.name
    if isinstance(exc, HttpError):
        return exc.code_name
    if isinstance(exc, BadAnswer):
        return "BAD_ANSWER"
    if isinstance(exc, grpc.RpcError):
        return f"GRPC_{exc.code().name}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "TIMEOUT"
    return type(exc).__name__


class Driver(abc.ABC):
    has_overhead = True

    def __init__(self, host: str, port: int, *, connections: int = 1, stream: bool = False,
                 model: str | None = None, expect: str | None = None, timeout: float = 30.0,
                 concurrency: int = 64, quic_streams: int = 1, http_client: str = "lean"):
        self.host, self.port = host, port
        self.target = f"{host}:{port}"
        self.connections = max(1, connections)
        self.stream = stream
        self.model = model
        self.expect = expect
        self.timeout = timeout
        self.concurrency = concurrency
        self.quic_streams = quic_streams
        self.http_client = http_client
        self.clients: list = []

    def _grpc_options(self) -> list | None:
        return [("grpc.use_local_subchannel_pool", 1)] if self.connections > 1 else None

    def _check(self, text: str) -> None:
        if not text or (self.expect is not None and self.expect not in text):
            raise BadAnswer(f"unexpected answer {text[:120]!r}")

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect the clients (one per --connections)."""

    @abc.abstractmethod
    def caller(self, i: int):
        """The coroutine function worker `i` calls once per request."""

    async def close(self) -> None:
        for c in self.clients:
            try:
                await asyncio.wait_for(c.close(), 10)
            except Exception:
                pass
        self.clients = []


class _SdkDriver(Driver):
    """The three SDK clients share complete()/stream() signatures."""

    def caller(self, i: int):
        client = self.clients[i % len(self.clients)]
        model, check = self.model, self._check
        if not self.stream:
            async def call():
                r = await client.complete(PROMPT, model=model)
                check(r.text)
                return r.gateway_overhead_us, None
        else:
            async def call():
                first = result = None
                async for item in client.stream(PROMPT, model=model):
                    if first is None:
                        first = _now()
                    if type(item) is Result:
                        result = item
                if result is None:
                    raise BadAnswer("stream ended without a result")
                check(result.text)
                return result.gateway_overhead_us, first
        return call


class GrpcDriver(_SdkDriver):
    async def open(self) -> None:
        self.clients = [AsyncGrpcClient(self.target, DEV_API_KEY, timeout=self.timeout,
                                        options=self._grpc_options()) for _ in range(self.connections)]


class SessionDriver(_SdkDriver):
    async def open(self) -> None:
        self.clients = [AsyncSessionClient(self.target, DEV_HMAC_KEY_ID, DEV_HMAC_SECRET,
                                           options=self._grpc_options())
                        for _ in range(self.connections)]
        for c in self.clients:
            c.connect()


class QuicDriver(_SdkDriver):
    async def open(self) -> None:
        # The bench's gateway runs the dev credentials with a generated self-signed certificate
        # on loopback: verification is skipped, explicitly.
        self.clients = [AsyncQuicClient(self.host, self.port, DEV_HMAC_KEY_ID, DEV_HMAC_SECRET,
                                        insecure=True, streams=self.quic_streams, connect_timeout=5.0)
                        for _ in range(self.connections)]
        for c in self.clients:
            await c.connect()


class GrpcEchoDriver(GrpcDriver):
    """The typed SDK client against bench/grpc_echo.py (same code path as the `grpc` target)."""
    has_overhead = False

    def caller(self, i: int):
        inner = super().caller(i)

        async def call():
            await inner()
            return None, None
        return call


class _RawBidi:
    """One raw Session call: each request is one Frame message, answered by one echoed message
    (in order), so a FIFO of futures pairs answers with callers. One writer task serializes writes."""

    FRAME = b"\n\xf0\x01" + bytes(range(240))      # a pb.Frame with 240 bytes of data, pre-serialized

    def __init__(self, target: str, options):
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.call = self.channel.stream_stream("/atp.v1.Atp/Session", request_serializer=None,
                                               response_deserializer=None)()
        self.waiters: deque[asyncio.Future] = deque()
        self.out: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write())
        self.reader = loop.create_task(self._read())
        self.failed: BaseException | None = None

    async def _write(self) -> None:
        call, out = self.call, self.out
        try:
            while (data := await out.get()) is not None:
                await call.write(data)
            await call.done_writing()
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            self._fail(exc)

    async def _read(self) -> None:
        try:
            while (msg := await self.call.read()) is not grpc.aio.EOF:
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_result(msg)
            self._fail(ConnectionError("session-echo call ended"))
        except grpc.RpcError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(ConnectionError("session-echo call cancelled"))

    def _fail(self, exc: BaseException) -> None:
        self.failed = self.failed or exc
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(self.failed)

    async def request(self) -> None:
        if self.failed is not None:
            raise self.failed
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.out.put_nowait(self.FRAME)
        msg = await fut
        if msg != self.FRAME:
            raise BadAnswer("echo differs from what was sent")

    async def close(self) -> None:
        self.out.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self.reader), 5)
        except (asyncio.TimeoutError, Exception):
            self.call.cancel()
        self.writer.cancel()
        self.reader.cancel()
        await self.channel.close()


class SessionEchoDriver(Driver):
    has_overhead = False

    async def open(self) -> None:
        if self.stream:
            raise ValueError("session-echo has no streaming variant")
        self.clients = [_RawBidi(self.target, self._grpc_options()) for _ in range(self.connections)]

    def caller(self, i: int):
        bidi = self.clients[i % len(self.clients)]

        async def call():
            await bidi.request()
            return None, None
        return call


class HttpDriver(Driver):
    def _body(self) -> bytes:
        import orjson
        return orjson.dumps({"model": self.model or "auto", "stream": self.stream,
                             "messages": [{"role": "user", "content": PROMPT}]})

    async def open(self) -> None:
        self.url = f"http://{self.target}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {DEV_API_KEY}", "Content-Type": "application/json"}
        if self.http_client == "aiohttp":
            import aiohttp
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout))
            self.clients = []
        else:
            from atp_server.adapters.http_client import HttpClient
            self.http = HttpClient(max_connections=self.concurrency, max_waiters=max(1024, self.concurrency * 4),
                                   read_timeout_s=self.timeout, pool_timeout_s=self.timeout)

    async def close(self) -> None:
        if self.http_client == "aiohttp":
            await self.session.close()
        else:
            await self.http.aclose()

    def _check_body(self, body: bytes) -> None:
        if b'"content"' not in body or (self.expect is not None and self.expect.encode() not in body):
            raise BadAnswer(f"unexpected answer {body[:120]!r}")

    def caller(self, i: int):
        url, headers, body, check = self.url, self.headers, self._body(), self._check_body
        if self.http_client == "aiohttp":
            session = self.session

            async def call():
                first = None
                async with session.post(url, data=body, headers=headers) as resp:
                    if self.stream and resp.status == 200:
                        parts = []
                        async for chunk in resp.content.iter_any():
                            if first is None:
                                first = _now()
                            parts.append(chunk)
                        data = b"".join(parts)
                    else:
                        data = await resp.read()
                    if resp.status != 200:
                        raise HttpError(resp.status, data)
                    ov = resp.headers.get("x-atp-overhead-us")
                _check_sse(data) if self.stream else check(data)
                return (int(ov) if ov else None), first
            return call
        http = self.http
        if not self.stream:
            async def call():
                r = await http.request("POST", url, headers=headers, body=body)
                if r.status != 200:
                    raise HttpError(r.status, r.body)
                check(r.body)
                ov = r.headers.get("x-atp-overhead-us")
                return (int(ov) if ov else None), None
        else:
            async def call():
                first = None
                async with http.stream("POST", url, headers=headers, body=body) as resp:
                    parts = []
                    async for chunk in resp:
                        if first is None:
                            first = _now()
                        parts.append(chunk)
                    data = b"".join(parts)
                    if resp.status != 200:
                        raise HttpError(resp.status, data)
                    ov = resp.headers.get("x-atp-overhead-us")
                _check_sse(data)
                return (int(ov) if ov else None), first
        return call


def _check_sse(data: bytes) -> None:
    if b'data: {"error"' in data:
        start = data.index(b'data: {"error"') + 6
        raise HttpError(200, data[start:data.index(b"\n", start) if b"\n" in data[start:] else len(data)])
    if not data.rstrip().endswith(b"data: [DONE]"):
        raise BadAnswer(f"stream ended without [DONE]: {data[-120:]!r}")


DRIVERS = {"grpc": GrpcDriver, "session": SessionDriver, "quic": QuicDriver, "http": HttpDriver,
           "grpc-echo": GrpcEchoDriver, "session-echo": SessionEchoDriver}

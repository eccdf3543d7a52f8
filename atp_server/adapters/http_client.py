"""A lean keep-alive HTTP/1.1 client (asyncio transports + httptools) for talking to upstream model APIs."""
# Why not aiohttp.ClientSession: on the proxy path its client side costs ~3x our whole server side
# (DESIGN.md §8). This keeps only what an OpenAI-compatible upstream needs: pooled keep-alive
# connections, a fixed request shape, whole-body or streamed responses. No redirects, cookies,
# proxies, compression, pipelining or HEAD.
from __future__ import annotations

import asyncio
import ssl as _ssl
from collections import deque
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from ..tracing.context import UPSTREAM_TRACE

_HIGH_WATER = 256 * 1024  # unread streamed bytes at which we stop reading the socket (backpressure)


class HttpClientError(Exception): """Base of every failure this client raises."""
class ConnectError(HttpClientError): """Could not connect: refused, unresolvable, TLS handshake failed."""
class ProtocolError(HttpClientError): """The peer sent something that is not a valid HTTP/1.1 response."""
class HttpTimeout(HttpClientError, TimeoutError): """Base of the timeouts."""
class ConnectTimeout(HttpTimeout): """Connecting (TCP + TLS handshake) took longer than connect_timeout_s."""
class ReadTimeout(HttpTimeout): """The peer sent nothing for read_timeout_s (before headers or mid-body)."""
class PoolTimeout(HttpTimeout): """No pooled connection came free in time, or too many were waiting."""
class TotalTimeout(HttpTimeout): """The whole exchange (headers and body) took longer than total_timeout_s."""


class PeerClosedError(HttpClientError):
    """The peer closed the connection before the response was complete."""

    def __init__(self, message: str, headers_received: bool = False):
        super().__init__(message)
        self.headers_received = headers_received


@lru_cache(maxsize=256)  # adapters hit the same few URLs; urlsplit is ~2 µs
def _split_url(url: str) -> tuple[tuple[str, str, int], str, str]:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"unsupported URL {url!r}: need http:// or https:// with a host")
    port = u.port or (443 if u.scheme == "https" else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    if any(c in path for c in " \r\n"):
        raise ValueError(f"URL path must be percent-encoded: {url!r}")
    return (u.scheme, u.hostname, port), u.netloc.rpartition("@")[2], path


class _Conn(asyncio.Protocol):
    """One TCP(+TLS) connection; carries at most one request/response exchange at a time."""

    def __init__(self, pool: _Pool):
        self._pool, self._loop = pool, pool.loop
        self._parser = httptools.HttpResponseParser(self)  # llhttp handles consecutive messages
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future | None = None
        self.closed = self.active = self.paused = False
        self.idle_since = 0.0

    # ---- exchange state --------------------------------------------------------------------------
    def send(self, data: bytes, streaming: bool) -> None:
        self.status = self.buffered = 0
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.headers_done = self.complete = self.keep_alive = self.until_eof = self.got_bytes = False
        self.exc: HttpClientError | None = None
        self.streaming, self.active = streaming, True
        if self.closed:  # the peer hung up between release and reuse; nothing will wake us
            self.exc = PeerClosedError("peer closed the idle connection")
            return
        self._transport.write(data)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.exc is None and not self.closed

    # ---- httptools callbacks ---------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        k, v, h = name.decode("latin-1").lower(), value.decode("latin-1"), self.headers
        h[k] = f"{h[k]}, {v}" if k in h else v

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # interim 1xx: llhttp parses it as a message of its own; forget it
            self.headers = {}
            return
        self.status, self.headers_done, h = status, True, self.headers
        # No length and not chunked: the body runs to EOF, which httptools cannot signal (no finish()).
        self.until_eof = ("content-length" not in h and "chunked" not in h.get("transfer-encoding", "").lower()
                          and status not in (204, 304))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.status:  # the end of an interim 1xx leaves status at 0
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive()

    # ---- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:  # bytes nobody asked for: a 408-then-close or garbage
            self.keep_alive = False
            self.close()
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as e:
            self._fail(ProtocolError(f"malformed HTTP response: {e}"))
        if self.streaming and self.buffered > _HIGH_WATER and not self.paused:
            self.paused = True
            self._transport.pause_reading()
        self._wake()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.active and not self.complete and self.exc is None:
            if self.headers_done and self.until_eof:
                self.complete = True  # EOF is this body's terminator; keep_alive stays False
            else:
                where = "mid-body" if self.headers_done else "before the response headers"
                self.exc = PeerClosedError(f"peer closed the connection {where}", self.headers_done)
        self._wake()
        self._pool.forget(self)

    # ---- waiting ---------------------------------------------------------------------------------
    def _fail(self, exc: HttpClientError) -> None:
        if self.exc is None:
            self.exc = exc
        self.close()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, timeout: float | None, deadline: float | None = None) -> None:
        # One future + one timer per wait, re-armed per read: cheaper than asyncio.wait_for, and the
        # timeout means "silence for this long" (time to headers, or a stall between stream chunks).
        # A deadline (total_timeout_s) bounds the whole exchange: whichever comes first fires.
        exc_type = ReadTimeout
        if deadline is not None:
            left = deadline - self._loop.time()
            if left <= 0:
                raise TotalTimeout("exchange not complete within its total timeout")
            if timeout is None or left < timeout:
                timeout, exc_type = left, TotalTimeout
        w = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _expire, w, exc_type, timeout) if timeout else None
        try:
            await w
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def read_headers(self, timeout: float | None, deadline: float | None = None) -> None:
        while not self.headers_done:
            if self.exc is not None:
                raise self.exc
            await self._wait(timeout, deadline)

    async def next_chunk(self, timeout: float | None, deadline: float | None = None) -> bytes | None:
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < _HIGH_WATER // 4 and not self.closed:
                    self.paused = False
                    self._transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.exc is not None:
                raise self.exc
            await self._wait(timeout, deadline)

    async def read_all(self, timeout: float | None, deadline: float | None = None,
                       limit: int | None = None) -> bytes:
        self.streaming = False  # the caller wants it all: backpressure would only deadlock us
        if self.paused:
            self.paused = False
            self._transport.resume_reading()
        while not self.complete:
            if self.exc is not None:
                raise self.exc
            if limit is not None and self.buffered > limit:
                break  # enough: the rest is dropped with the connection (never reused half-read)
            await self._wait(timeout, deadline)
        body = b"".join(self.chunks)
        self.chunks.clear()
        return body if limit is None else body[:limit]

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            # abort, not close: a half-read or idle socket has nothing worth flushing, and a TLS
            # close would wait for the peer's close_notify.
            self._transport.abort()
        self.closed = True
        self._pool.forget(self)  # frees the slot now, not when connection_lost runs


def _expire(fut: asyncio.Future, exc_type: type, after_s: float) -> None:
    if not fut.done():
        what = {PoolTimeout: "no connection free", TotalTimeout: "response not complete"}.get(
            exc_type, "no response bytes")
        fut.set_exception(exc_type(f"{what} within {after_s:g} s"))


class _Pool:
    """Keep-alive connections to one (scheme, host, port), at most `max_connections` open at once."""

    def __init__(self, client: HttpClient, key: tuple[str, str, int]):
        self.client, self.key, self.loop = client, key, asyncio.get_running_loop()
        self.idle: list[_Conn] = []  # LIFO: the warmest socket is the least likely to be stale
        self.conns: set[_Conn] = set()
        self.size = 0  # open + connecting + slots promised to waiters
        self.waiters: deque[asyncio.Future] = deque()
        self._sweep: asyncio.TimerHandle | None = None

    async def acquire(self) -> tuple[_Conn, bool]:
        """A connection ready for one exchange, and whether it was reused (may be stale)."""
        c, now = self.client, self.loop.time()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < c.idle_timeout_s:
                return conn, True
            conn.close()
        if self.size < c.max_connections:
            self.size += 1
        else:
            got = await self._wait_turn()
            if got is not None:
                return got, True
        # A slot is reserved for us (size counts it); give it back if the connect fails.
        conn = _Conn(self)
        scheme, host, port = self.key
        ctx = c.ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(c.connect_timeout_s):
                await self.loop.create_connection(lambda: conn, host, port, ssl=ctx,
                                                  server_hostname=host if ctx else None)
        except BaseException as e:
            conn.close()
            self._give_back_slot()
            if isinstance(e, TimeoutError):
                raise ConnectTimeout(f"connect to {host}:{port} timed out") from None
            if isinstance(e, OSError):
                raise ConnectError(f"connect to {host}:{port} failed: {e}") from e
            raise
        if conn.closed:  # peer hung up before we even got the connection back
            self._give_back_slot()
            raise ConnectError(f"connect to {host}:{port}: closed immediately")
        self.conns.add(conn)
        return conn, False

    async def _wait_turn(self) -> _Conn | None:
        """Wait for a released connection (returned) or a freed slot (None, already counted)."""
        c = self.client
        if len(self.waiters) >= c.max_waiters:
            raise PoolTimeout(f"pool for {self.key[1]}:{self.key[2]} exhausted and {c.max_waiters} waiting")
        w = self.loop.create_future()
        self.waiters.append(w)
        timer = self.loop.call_later(c.pool_timeout_s, _expire, w, PoolTimeout, c.pool_timeout_s)
        try:
            return await w
        except BaseException:
            if w.done() and not w.cancelled() and w.exception() is None:
                got = w.result()  # handed to us just as we were cancelled: pass it on
                self.release(got) if got is not None else self._give_back_slot()
            try:
                self.waiters.remove(w)
            except ValueError:
                pass
            raise
        finally:
            timer.cancel()

    def release(self, conn: _Conn) -> None:
        if not conn.reusable or self.client.closed:
            conn.close()
            return
        conn.active = False
        if conn.paused:
            conn.paused = False
            conn._transport.resume_reading()
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.client.idle_timeout_s, self._sweep_idle)

    def forget(self, conn: _Conn) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            if conn in self.idle:
                self.idle.remove(conn)
            self._give_back_slot()

    def _give_back_slot(self) -> None:
        self.size -= 1
        while self.waiters and self.size < self.client.max_connections:
            w = self.waiters.popleft()
            if not w.done():
                self.size += 1
                w.set_result(None)
                return

    def _sweep_idle(self) -> None:
        # One timer per pool (not per connection) closes sockets idle longer than idle_timeout_s.
        self._sweep = None
        cutoff = self.loop.time() - self.client.idle_timeout_s
        for conn in [c for c in self.idle if c.idle_since <= cutoff]:
            conn.close()
        if self.idle:
            self._sweep = self.loop.call_later(self.client.idle_timeout_s, self._sweep_idle)

    def close_all(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        while self.waiters:  # before closing: a freed slot must not be handed to a waiter
            w = self.waiters.popleft()
            if not w.done():
                w.set_exception(HttpClientError("client closed"))
        for conn in list(self.conns):
            conn.close()


class Response:
    """Status and headers (lower-cased names); the body via `body` (after read) or `async for`."""

    __slots__ = ("status", "headers", "_conn", "_pool", "_timeout", "_deadline", "_body")

    def __init__(self, conn: _Conn, pool: _Pool, timeout: float | None, deadline: float | None = None):
        self.status, self.headers = conn.status, conn.headers
        self._conn, self._pool, self._timeout, self._body = conn, pool, timeout, None
        self._deadline = deadline       # loop time by which the whole body must be in (or None)

    @property
    def body(self) -> bytes:
        if self._body is None:
            raise RuntimeError("body not read: use client.request(), or await response.read()")
        return self._body

    @property
    def complete(self) -> bool:
        """The whole body has arrived (or the response is closed): nothing left to wait for."""
        return self._conn is None or self._conn.complete

    async def read(self, limit: int | None = None) -> bytes:
        """The body; with `limit`, at most that many bytes (an error body, say), and a connection
        left with more unread is closed rather than pooled."""
        if self._body is None:
            if self._conn is None:
                raise RuntimeError("response already closed")
            try:
                self._body = await self._conn.read_all(self._timeout, self._deadline, limit)
            finally:
                self.close()
        return self._body

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            chunk = await conn.next_chunk(self._timeout, self._deadline)
        except BaseException:
            self.close()  # timeout, peer error or cancellation: the connection is dirty
            raise
        if chunk is None:
            self.close()
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        """Hand the connection back if the response completed cleanly, else close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


class _StreamContext:
    __slots__ = ("_open", "_resp")

    def __init__(self, open_):
        self._open, self._resp = open_, None

    async def __aenter__(self) -> Response:
        self._resp = await self._open()
        return self._resp

    async def __aexit__(self, *exc) -> None:
        self._resp.close()


class HttpClient:
    """Pooled HTTP/1.1 client. Use `request()` for whole bodies, `async with stream()` for chunks."""

    def __init__(self, *, max_connections: int = 64, max_waiters: int = 1024, idle_timeout_s: float = 15.0,
                 connect_timeout_s: float = 5.0, read_timeout_s: float | None = 60.0,
                 pool_timeout_s: float = 10.0, total_timeout_s: float | None = None,
                 ssl_context: _ssl.SSLContext | None = None):
        self.max_connections, self.max_waiters = max_connections, max_waiters
        self.total_timeout_s = total_timeout_s   # whole exchange, from sending to the body's end
        self.idle_timeout_s, self.connect_timeout_s = idle_timeout_s, connect_timeout_s
        self.read_timeout_s, self.pool_timeout_s = read_timeout_s, pool_timeout_s
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._heads: dict[tuple, tuple[tuple, bytes]] = {}   # (method, url, headers) -> _head()
        self.closed = False

    def ssl_context(self) -> _ssl.SSLContext:
        if self._ssl is None:
            self._ssl = _ssl.create_default_context()  # lazily: it loads the CA bundle (~ms)
        return self._ssl

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      body: bytes = b"", read_timeout_s: float | None = None,
                      total_timeout_s: float | None = None) -> Response:
        """Send and read the whole response; the connection is back in the pool on return."""
        resp = await self._open(method, url, headers, body, read_timeout_s, False, total_timeout_s)
        await resp.read()
        return resp

    def stream(self, method: str, url: str, *, headers: dict[str, str] | None = None,
               body: bytes = b"", read_timeout_s: float | None = None,
               total_timeout_s: float | None = None) -> _StreamContext:
        """`async with client.stream(...) as resp: async for chunk in resp` — leaving early closes."""
        return _StreamContext(lambda: self._open(method, url, headers, body, read_timeout_s, True,
                                                 total_timeout_s))

    @staticmethod
    def _head(method: str, url: str, headers: dict | None) -> tuple[tuple, bytes]:
        """(pool key, request line + Host + headers, without Content-Length and the blank line)."""
        key, host, path = _split_url(url)
        head = [f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"]
        for k, v in (headers or {}).items():
            if "\n" in k or "\r" in k or "\n" in v or "\r" in v:
                raise ValueError(f"header {k!r} contains a line break")
            head.append(f"{k}: {v}\r\n")
        return key, "".join(head).encode("latin-1")

    async def _open(self, method, url, headers, body, read_timeout_s, streaming,
                    total_timeout_s=None) -> Response:
        if self.closed:
            raise HttpClientError("client closed")
        if method == "HEAD":
            raise ValueError("HEAD is not supported")  # httptools cannot be told to expect no body
        cache_key = (method, url, tuple(headers.items()) if headers else ())
        cached = self._heads.get(cache_key)
        if cached is None:   # an adapter sends the same URL and headers every time: build once
            cached = self._head(method, url, headers)
            if len(self._heads) >= 256:
                self._heads.clear()
            self._heads[cache_key] = cached
        key, head = cached
        trace = UPSTREAM_TRACE.get()
        if trace is not None:   # inside a traced attempt: its traceparent (tracing/context.py)
            head += trace.block
        if body or method in ("POST", "PUT", "PATCH"):
            data = b"".join((head, b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        else:
            data = head + b"\r\n"
        timeout = self.read_timeout_s if read_timeout_s is None else read_timeout_s
        total = self.total_timeout_s if total_timeout_s is None else total_timeout_s
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self, key)
        deadline = pool.loop.time() + total if total else None
        for attempt in (0, 1):
            conn, reused = await pool.acquire()
            conn.send(data, streaming)
            try:
                await conn.read_headers(timeout, deadline)
            except PeerClosedError:
                conn.close()
                # No response byte on a reused socket: almost surely the server's keep-alive timer
                # closed it as our request arrived. One retry on a fresh socket (as urllib3 does).
                if reused and not conn.got_bytes and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return Response(conn, pool, timeout, deadline)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed = True
        for pool in self._pools.values():
            pool.close_all()
        self._pools.clear()

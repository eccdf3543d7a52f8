"""http_client against real local servers: keep-alive, framing, streaming, pool limits, failures."""
import asyncio
import datetime
import ipaddress
import ssl

import pytest
from aiohttp import web

from atp_server.adapters.http_client import (
    ConnectError, ConnectTimeout, HttpClient, HttpClientError, HttpTimeout, PeerClosedError, PoolTimeout,
    ProtocolError, ReadTimeout, TotalTimeout,
)

from ._servers import RawServer, peer_port, read_request, serve_app, until_eof


def _pool(client: HttpClient):
    (pool,) = client._pools.values()
    return pool


def _app(ports: list, gates: dict | None = None) -> web.Application:
    async def echo(request):
        ports.append(peer_port(request))
        return web.Response(body=b"echo:" + await request.read(), headers={"X-Multi": "a"})

    async def chunked(request):
        ports.append(peer_port(request))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"part%d;" % i)
        await resp.write_eof()
        return resp

    async def gated(request):
        # Chunk i+1 is only written after the client has acknowledged chunk i, so the test
        # deadlocks (and times out) unless the client really delivers chunks incrementally.
        ports.append(peer_port(request))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"g%d" % i)
            await gates[i].wait()
        await resp.write_eof()
        return resp

    async def big(request):
        ports.append(peer_port(request))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"x" * 32768)
        await resp.write_eof()
        return resp

    async def no_content(request):
        ports.append(peer_port(request))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/gated", gated)
    app.router.add_get("/big", big)
    app.router.add_get("/204", no_content)
    return app


def test_keepalive_reuses_one_connection(run):
    async def main():
        ports = []
        async with serve_app(_app(ports)) as url:
            client = HttpClient()
            for i in range(20):
                resp = await client.request("POST", url + "/echo", body=b"%d" % i,
                                            headers={"Content-Type": "text/plain"})
                assert (resp.status, resp.body) == (200, b"echo:%d" % i)
                assert resp.headers["content-length"] == str(len(resp.body))
                assert resp.headers["x-multi"] == "a"
            assert len(ports) == 20 and len(set(ports)) == 1
            assert _pool(client).size == 1 and len(_pool(client).idle) == 1
            await client.aclose()
    run(main)


def test_a_traced_attempts_header_block_goes_on_its_own_request_only(run):
    # tracing/context.UPSTREAM_TRACE: set by a traced attempt around its call; the cached
    # request head must not keep it for the next request on the same URL.
    from atp_server.tracing.context import UPSTREAM_TRACE, UpstreamTrace
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def main():
        seen = []

        async def record(request):
            seen.append((request.headers.get("traceparent"), request.headers.get("tracestate")))
            return web.Response(body=b"ok")

        app = web.Application()
        app.router.add_post("/t", record)
        async with serve_app(app) as url:
            client = HttpClient()
            await client.request("POST", url + "/t", body=b"1")
            token = UPSTREAM_TRACE.set(UpstreamTrace(parent, "a=1"))
            try:
                await client.request("POST", url + "/t", body=b"2")
            finally:
                UPSTREAM_TRACE.reset(token)
            await client.request("POST", url + "/t", body=b"3")
            await client.aclose()
        return seen
    assert run(main) == [(None, None), (parent, "a=1"), (None, None)]


def test_chunked_and_no_content_bodies(run):
    async def main():
        ports = []
        async with serve_app(_app(ports)) as url:
            client = HttpClient()
            for _ in range(2):
                resp = await client.request("GET", url + "/chunked")
                assert resp.headers["transfer-encoding"] == "chunked"
                assert resp.body == b"part0;part1;part2;"
            resp = await client.request("GET", url + "/204")
            assert (resp.status, resp.body) == (204, b"")
            assert len(set(ports)) == 1
            await client.aclose()
    run(main)


def test_streaming_is_incremental_and_reuses_connection(run):
    async def main():
        ports, gates = [], {i: asyncio.Event() for i in range(3)}
        async with serve_app(_app(ports, gates)) as url:
            client = HttpClient()
            got = []
            async with client.stream("GET", url + "/gated") as resp:
                assert resp.status == 200
                async for chunk in resp:
                    got.append(chunk)
                    gates[len(got) - 1].set()
            assert got == [b"g0", b"g1", b"g2"]
            assert len(_pool(client).idle) == 1  # completed cleanly -> back in the pool
            resp = await client.request("GET", url + "/chunked")
            assert len(set(ports)) == 1
            await client.aclose()
    run(main)


def test_large_stream_with_backpressure(run):
    async def main():
        ports = []
        async with serve_app(_app(ports)) as url:
            client = HttpClient()
            total = 0
            async with client.stream("GET", url + "/big") as resp:
                conn = resp._conn
                while not conn.paused:  # not consuming: the client must stop reading the socket
                    await asyncio.sleep(0)
                assert 256 * 1024 < conn.buffered < 64 * 32768
                async for chunk in resp:
                    total += len(chunk)
            assert total == 64 * 32768
            assert (await client.request("GET", url + "/big")).body == b"x" * (64 * 32768)
            assert len(set(ports)) == 1
            await client.aclose()
    run(main)


async def _one_chunk_then_hang(reader, writer, index):
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await writer.drain()
    await until_eof(reader)  # returns when the client closes the connection


def test_leaving_a_stream_early_closes_the_connection(run):
    async def main():
        async with RawServer(_one_chunk_then_hang) as server:
            client = HttpClient()
            async with client.stream("GET", server.url + "/") as resp:
                async for chunk in resp:
                    assert chunk == b"first"
                    break
            await server.closed[0].wait()  # the server saw our close
            assert _pool(client).size == 0 and not _pool(client).idle
            await client.aclose()
    run(main)


def test_cancelling_a_streaming_task_closes_the_connection(run):
    async def main():
        async with RawServer(_one_chunk_then_hang) as server:
            client = HttpClient()
            first = asyncio.Event()

            async def consume():
                async with client.stream("GET", server.url + "/") as resp:
                    async for _ in resp:
                        first.set()

            task = asyncio.create_task(consume())
            await first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await server.closed[0].wait()
            assert _pool(client).size == 0
            await client.aclose()
    run(main)


def test_pool_limit_makes_a_waiter_that_gets_the_released_connection(run):
    async def main():
        ports, gates = [], {i: asyncio.Event() for i in range(3)}
        async with serve_app(_app(ports, gates)) as url:
            client = HttpClient(max_connections=1)
            async with client.stream("GET", url + "/gated") as resp:
                chunks = [await resp.__anext__()]
                waiter = asyncio.create_task(client.request("POST", url + "/echo", body=b"w"))
                while not _pool(client).waiters:
                    await asyncio.sleep(0)  # yield until the second request is queued
                assert not waiter.done()
                for i in range(3):
                    gates[i].set()
                chunks += [c async for c in resp]
            assert chunks == [b"g0", b"g1", b"g2"]
            assert (await waiter).body == b"echo:w"
            assert len(set(ports)) == 1 and _pool(client).size == 1
            await client.aclose()
    run(main)


def test_pool_timeout_and_bounded_waiters(run):
    async def main():
        ports, gates = [], {i: asyncio.Event() for i in range(3)}
        async with serve_app(_app(ports, gates)) as url:
            client = HttpClient(max_connections=1, max_waiters=1, pool_timeout_s=0.2)
            async with client.stream("GET", url + "/gated") as resp:
                await resp.__anext__()
                slow = asyncio.create_task(client.request("POST", url + "/echo"))
                while not _pool(client).waiters:
                    await asyncio.sleep(0)
                with pytest.raises(PoolTimeout, match="exhausted"):  # queue full: fails at once
                    await client.request("POST", url + "/echo")
                with pytest.raises(PoolTimeout):
                    await slow
                for i in range(3):
                    gates[i].set()
                assert [c async for c in resp] == [b"g1", b"g2"]
            pool = _pool(client)
            assert (pool.size, len(pool.idle), len(pool.waiters)) == (1, 1, 0)
            assert (await client.request("POST", url + "/echo", body=b"ok")).body == b"echo:ok"
            await client.aclose()
    run(main)


def test_cancelled_waiter_does_not_leak_its_slot(run):
    async def main():
        ports, gates = [], {i: asyncio.Event() for i in range(3)}
        async with serve_app(_app(ports, gates)) as url:
            client = HttpClient(max_connections=1)
            async with client.stream("GET", url + "/gated") as resp:
                await resp.__anext__()
                waiter = asyncio.create_task(client.request("POST", url + "/echo"))
                while not _pool(client).waiters:
                    await asyncio.sleep(0)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            # the stream was abandoned mid-body: its connection is closed, its slot free again
            assert _pool(client).size == 0 and not _pool(client).waiters
            assert (await client.request("POST", url + "/echo", body=b"x")).body == b"echo:x"
            await client.aclose()
            for gate in gates.values():
                gate.set()  # let the abandoned handler finish, or the server's cleanup waits for it
    run(main)


def _mid_body_close(response_head: bytes, partial: bytes):
    async def script(reader, writer, index):
        await read_request(reader)
        writer.write(response_head + partial)
        await writer.drain()
        writer.close()
    return script


@pytest.mark.parametrize("head,partial", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"only ten.."),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n"),
])
def test_peer_closing_mid_body_is_a_clear_error(run, head, partial):
    async def main():
        async with RawServer(_mid_body_close(head, partial)) as server:
            client = HttpClient()
            with pytest.raises(PeerClosedError, match="mid-body") as info:
                await client.request("GET", server.url + "/")
            assert info.value.headers_received
            got = []
            with pytest.raises(PeerClosedError):
                async with client.stream("GET", server.url + "/") as resp:
                    async for chunk in resp:
                        got.append(chunk)
            assert b"".join(got) == partial if b"chunked" not in head else got == [b"hello"]
            assert _pool(client).size == 0
            await client.aclose()
    run(main)


def test_peer_closing_before_headers(run):
    async def main():
        async def script(reader, writer, index):
            await read_request(reader)  # read the request, answer nothing, hang up

        async with RawServer(script) as server:
            client = HttpClient()
            with pytest.raises(PeerClosedError, match="before the response headers") as info:
                await client.request("POST", server.url + "/", body=b"{}")
            assert not info.value.headers_received
            await client.aclose()
    run(main)


def test_read_timeouts_before_headers_and_between_chunks(run):
    async def main():
        async def silent(reader, writer, index):
            await read_request(reader)
            await until_eof(reader)

        async with RawServer(silent) as server:
            client = HttpClient(read_timeout_s=0.1)
            with pytest.raises(ReadTimeout):
                await client.request("GET", server.url + "/")
            await server.closed[0].wait()  # the timed-out connection was closed, not pooled
            assert _pool(client).size == 0
            await client.aclose()

        async with RawServer(_one_chunk_then_hang) as server:
            client = HttpClient(read_timeout_s=0.1)
            with pytest.raises(ReadTimeout):
                async with client.stream("GET", server.url + "/") as resp:
                    assert await resp.__anext__() == b"first"
                    await resp.__anext__()
            await server.closed[0].wait()
            await client.aclose()
    run(main)


def test_connect_refused_and_connect_timeout(run):
    async def main():
        async def never_speaks(reader, writer, index):
            await until_eof(reader)

        async with RawServer(never_speaks) as server:
            port = server.port
            # TLS to a plain TCP server that never answers: the handshake hangs -> connect timeout
            client = HttpClient(connect_timeout_s=0.1)
            with pytest.raises(ConnectTimeout):
                await client.request("GET", f"https://127.0.0.1:{port}/")
            assert _pool(client).size == 0
            await client.aclose()
        await asyncio.sleep(0)
        client = HttpClient()
        with pytest.raises(ConnectError, match="failed"):
            await client.request("GET", f"http://127.0.0.1:{port}/")  # server gone: refused
        await client.aclose()
    run(main)


def test_connection_close_and_read_until_eof_are_not_reused(run):
    async def main():
        async def script(reader, writer, index):
            await read_request(reader)
            if index == 0:  # says close but leaves the socket open: the client must close it
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                await until_eof(reader)
            else:  # no length, not chunked: the body runs until the server closes
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-eof body")
                await writer.drain()

        async with RawServer(script) as server:
            client = HttpClient()
            assert (await client.request("GET", server.url + "/")).body == b"ok"
            await server.closed[0].wait()
            assert (await client.request("GET", server.url + "/")).body == b"until-eof body"
            assert server.connections == 2 and _pool(client).size == 0
            await client.aclose()
    run(main)


def test_stale_keepalive_connection_is_retried_once(run):
    async def main():
        async def script(reader, writer, index):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % index)
            await writer.drain()
            if index == 0:  # like a server whose keep-alive timer fired as the next request arrived
                await read_request(reader)

        async with RawServer(script) as server:
            client = HttpClient()
            assert (await client.request("POST", server.url + "/", body=b"a")).body == b"0"
            assert (await client.request("POST", server.url + "/", body=b"b")).body == b"1"
            assert server.connections == 2
            await client.aclose()
    run(main)


def test_garbage_is_a_protocol_error_and_interim_1xx_is_skipped(run):
    async def main():
        async def script(reader, writer, index):
            await read_request(reader)
            if index == 0:
                writer.write(b"SPDY/9 nonsense\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
            await writer.drain()
            await until_eof(reader)

        async with RawServer(script) as server:
            client = HttpClient()
            with pytest.raises(ProtocolError):
                await client.request("GET", server.url + "/")
            resp = await client.request("GET", server.url + "/")
            assert (resp.status, resp.body) == (200, b"final") and "link" not in resp.headers
            await client.aclose()
    run(main)


def test_idle_connections_expire(run):
    async def main():
        async def script(reader, writer, index):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await until_eof(reader)

        async with RawServer(script) as server:
            client = HttpClient(idle_timeout_s=0.05)
            await client.request("GET", server.url + "/")
            await server.closed[0].wait()  # the idle sweep closed it
            assert _pool(client).size == 0
            await client.aclose()
    run(main)


def test_aclose_fails_waiters_and_rejects_new_requests(run):
    async def main():
        async with RawServer(_one_chunk_then_hang) as server:
            client = HttpClient(max_connections=1)
            async with client.stream("GET", server.url + "/") as resp:
                await resp.__anext__()
                waiter = asyncio.create_task(client.request("GET", server.url + "/"))
                while not _pool(client).waiters:
                    await asyncio.sleep(0)
                await client.aclose()
                with pytest.raises(HttpClientError, match="client closed"):
                    await waiter
                with pytest.raises(PeerClosedError):
                    await resp.__anext__()
            with pytest.raises(HttpClientError, match="client closed"):
                await client.request("GET", server.url + "/")
    run(main)


def test_rejects_header_injection_and_bad_urls(run):
    async def main():
        client = HttpClient()
        with pytest.raises(ValueError):
            await client.request("GET", "http://127.0.0.1:1/", headers={"X": "a\r\nEvil: 1"})
        with pytest.raises(ValueError):
            await client.request("GET", "ftp://example.com/")
        with pytest.raises(ValueError):
            await client.request("GET", "http://127.0.0.1:1/a b HTTP/1.1\r\nX: y")
        await client.aclose()
    run(main)


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atp-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_verification_and_reuse(run, tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main():
        ports = []
        async with serve_app(_app(ports), ssl_context=server_ctx) as url:
            assert url.startswith("https://")
            with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await HttpClient().request("GET", url + "/chunked")  # system CAs don't know it
            client = HttpClient(ssl_context=client_ctx)
            for _ in range(3):
                assert (await client.request("GET", url + "/chunked")).body == b"part0;part1;part2;"
            async with client.stream("GET", url + "/chunked") as resp:
                assert b"".join([c async for c in resp]) == b"part0;part1;part2;"
            assert len(set(ports)) == 1
            await client.aclose()
    run(main)


# ---- total timeout: a deadline over the whole exchange --------------------------------------------

def _trickle(gap_s: float):
    """A server that never finishes: a chunk every `gap_s` (pacing the fake upstream, well inside
    any read timeout), so only a total timeout can end the exchange."""
    async def script(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(gap_s)
    return script


def test_total_timeout_ends_a_stream_that_keeps_trickling(run):
    async def main():
        async with RawServer(_trickle(0.01)) as server:
            client = HttpClient(read_timeout_s=5.0, total_timeout_s=0.3)
            loop = asyncio.get_running_loop()
            started, chunks = loop.time(), 0
            with pytest.raises(TotalTimeout) as info:
                async with client.stream("GET", server.url + "/") as resp:
                    async for _ in resp:
                        chunks += 1
            elapsed = loop.time() - started
            await server.closed[0].wait()        # the unfinished connection was closed, not pooled
            assert _pool(client).size == 0
            await client.aclose()
            return info.value, chunks, elapsed
    err, chunks, elapsed = run(main)
    assert isinstance(err, HttpTimeout) and "not complete" in str(err)
    assert chunks > 1                             # bytes kept coming: the read timeout never fired
    assert 0.25 <= elapsed < 3.0


def test_total_timeout_bounds_whole_body_reads_and_a_per_call_override(run):
    async def main():
        async with RawServer(_trickle(0.01)) as server:
            client = HttpClient(read_timeout_s=5.0)   # no total by default
            with pytest.raises(TotalTimeout):
                await client.request("GET", server.url + "/", total_timeout_s=0.2)
            await client.aclose()
    run(main)



# ---- provider settings reach the pool ------------------------------------------------------------

def test_provider_timeout_and_pool_keys_reach_the_http_client():
    from atp_server.app import build_adapter

    adapter = build_adapter("up", "openai_compat", {
        "base_url": "http://127.0.0.1:9/v1", "timeout_s": 7.0, "connect_timeout_s": 1.5,
        "total_timeout_s": 120.0, "max_connections": 4, "pool_timeout_s": 2.0, "keepalive_s": 30.0,
        "max_concurrency": 3})
    http = adapter._http
    assert (http.read_timeout_s, http.connect_timeout_s, http.total_timeout_s) == (7.0, 1.5, 120.0)
    assert (http.max_connections, http.pool_timeout_s, http.idle_timeout_s) == (4, 2.0, 30.0)
    assert adapter.max_concurrency == 3
    unbounded = build_adapter("up", "openai_compat", {"base_url": "http://127.0.0.1:9/v1"})
    assert unbounded._http.total_timeout_s is None and unbounded.max_concurrency == 0


@pytest.mark.parametrize("option,value", [("pool_timeout_s", 0), ("keepalive_s", -1), ("total_timeout_s", -5),
                                          ("max_concurrency", -1), ("max_concurrency", "2")])
def test_bad_provider_pool_keys_name_the_key(option, value):
    from atp_server.app import build_adapter
    from atp_server.config import ConfigError

    with pytest.raises(ConfigError) as info:
        build_adapter("up", "openai_compat", {"base_url": "http://127.0.0.1:9/v1", option: value})
    assert str(info.value).startswith(f"providers[up].{option}:")


def test_a_read_with_a_limit_stops_early_and_drops_the_connection(run):
    async def main():
        async def endless_error(reader, writer, index):
            await read_request(reader)
            writer.write(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:                          # an error page that never ends
                writer.write(b"4000\r\n" + b"e" * 0x4000 + b"\r\n")
                await writer.drain()

        async with RawServer(endless_error) as server:
            client = HttpClient(read_timeout_s=5.0)
            async with client.stream("POST", server.url + "/", body=b"{}") as resp:
                body = await resp.read(limit=50_000)
            await server.closed[0].wait()         # closed, not pooled half-read
            assert resp.status == 500 and body == b"e" * 50_000 and _pool(client).size == 0
            await client.aclose()
    run(main)

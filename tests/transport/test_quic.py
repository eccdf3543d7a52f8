"""QUIC transport and QUIC SDK over real loopback UDP, the server App on uvloop in the test's loop."""
import asyncio
import contextlib
import dataclasses
import gc
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import uvloop
from aioquic.asyncio.client import connect as quic_connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode

from atp_client import AsyncQuicClient, AtpClientError, Chunk, Result, build_request
from atp_client.quic_client import QuicClientProtocol
from atp_server import config as C
from atp_server.config import DEV_HMAC_KEY_ID, DEV_HMAC_SECRET
from atp_server.app import App
from codec import Connection, FrameType, NonceCache
from codec.errors import ErrorCode
from codec.frame import open_frame

TIMEOUT_S = 30
NO_APPLICATION_PROTOCOL = QuicErrorCode.CRYPTO_ERROR + 120   # TLS alert no_application_protocol


def run(coro):
    """Run one test body on a fresh uvloop loop (pytest-asyncio is not a dependency)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, TIMEOUT_S))


def make_config(state_dir, **sim) -> C.Config:
    base = C.load()
    opts = {"latency_ms": 0, "tokens_per_s": 0, "output_tokens": 4, **sim}
    return dataclasses.replace(
        base, server=dataclasses.replace(base.server, quic_port=0, state_dir=str(state_dir)),
        providers=(C.ProviderConfig("sim", "simulated", opts),))


@contextlib.asynccontextmanager
async def quic_app(state_dir, **sim):
    """The full App with only the QUIC transport, on a free port; stopped on exit."""
    app = App(make_config(state_dir, **sim))
    await app.start(http=False, grpc=False, quic=True)
    app.quic = app.transports[0]
    try:
        yield app
    finally:
        if app.transports:
            await app.stop(0)


def quic_client(app, **options) -> AsyncQuicClient:
    """The SDK for `app`: dev credentials given explicitly, its generated certificate pinned."""
    cert = Path(app.config.server.state_dir) / "quic-cert.pem"
    return AsyncQuicClient("127.0.0.1", app.ports.quic, DEV_HMAC_KEY_ID, DEV_HMAC_SECRET,
                           ca_file=str(cert), **options)


def audit_rows(app) -> list[tuple]:
    app.audit.flush()
    with sqlite3.connect(app.audit.path) as db:
        return db.execute("SELECT transport, outcome, code FROM audit ORDER BY seq").fetchall()


def on_audit(app) -> asyncio.Event:
    """An event set whenever the pipeline writes an audit record (instead of polling for it)."""
    event = asyncio.Event()
    record = app.audit.record

    def wrapped(*args, **kwargs):
        record(*args, **kwargs)
        event.set()
    app.audit.record = wrapped
    return event


def on_admitted(app) -> asyncio.Event:
    """An event set once a request holds a dispatch slot (instead of polling admission.inflight)."""
    event = asyncio.Event()
    acquire = app.admission.acquire

    async def wrapped(*args):      # (tenant, slo_ms) from the admission stage
        await acquire(*args)
        event.set()
    app.admission.acquire = wrapped
    return event


def on_draining(quic) -> asyncio.Event:
    """An event set once the QUIC transport's stop has begun (it checks for idleness at once)."""
    event = asyncio.Event()
    check = quic.check_drained

    def wrapped():
        check()
        if quic.draining:
            event.set()
    quic.check_drained = wrapped
    return event


class RawStream:
    """A hand-driven stream on a client QUIC connection: raw bytes out, a codec Connection in."""

    def __init__(self, protocol: QuicClientProtocol, conn: Connection):
        self.protocol = protocol
        self.conn = conn
        self.sid = protocol.new_stream_id()
        self.events = []
        self.received = bytearray()
        self.ended = False
        self._changed = asyncio.Event()
        protocol.handlers[self.sid] = self

    def send(self, data: bytes) -> None:
        self.protocol.send(self.sid, data)

    def feed(self, data: bytes) -> None:
        self.received += data
        self.conn.receive_data(data, int(time.time() * 1000))
        while (e := self.conn.next_event()) is not None:
            self.events.append(e)
        self._changed.set()

    def peer_closed(self, message: str) -> None:
        self.ended = True
        self._changed.set()

    async def until(self, predicate) -> None:
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def event(self, name: str):
        return next((e for e in self.events if type(e).__name__ == name), None)


def client_conn(nonce: bytes | None = None) -> Connection:
    conn = Connection("client", keyring(), now_ms=int(time.time() * 1000))
    conn.initiate(nonce or os.urandom(8), int(time.time() * 1000))
    return conn


def keyring():
    from atp_client import keyring_for
    return keyring_for(DEV_HMAC_KEY_ID, DEV_HMAC_SECRET)


# ---- basics --------------------------------------------------------------------------------------

def test_complete_and_stream(tmp_path):
    async def body():
        async with quic_app(tmp_path) as app, quic_client(app) as client:
            result = await client.complete("hello over quic", request_id="r-1")
            assert isinstance(result, Result)
            assert result.output_tokens == 4 and result.text and result.model.startswith("sim-")
            assert result.provider == "sim" and result.request_id == "r-1"

            items = [item async for item in client.stream(messages=[("user", "stream it")])]
            chunks, final = items[:-1], items[-1]
            assert [type(c) for c in chunks] == [Chunk] * 4 and isinstance(final, Result)
            assert "".join(c.text for c in chunks) == final.text
            assert [c.index for c in chunks] == [0, 1, 2, 3]
        assert [r[:2] for r in audit_rows(app)] == [("quic", "ok"), ("quic", "ok")]
    run(body())


def test_request_error_carries_the_wire_code(tmp_path):
    async def body():
        async with quic_app(tmp_path) as app, quic_client(app) as client:
            with pytest.raises(AtpClientError) as info:
                await client.complete("hi", model="no-such-model")
            assert info.value.code == ErrorCode.UNKNOWN_MODEL
            assert (await client.complete("still fine")).output_tokens == 4   # session survives
    run(body())


def test_fifty_concurrent_requests_on_one_session(tmp_path):
    async def body():
        async with quic_app(tmp_path) as app, quic_client(app) as client:
            results = await asyncio.gather(*(client.complete(f"question {i}", request_id=f"q{i}")
                                             for i in range(50)))
            assert sorted(r.request_id for r in results) == sorted(f"q{i}" for i in range(50))
            assert all(r.output_tokens == 4 for r in results)
            (server_conn,) = app.quic.protocols
            assert len(server_conn.sessions) == 1      # all 50 on one stream, one session
        assert len(audit_rows(app)) == 50
    run(body())


def test_several_sessions_share_one_connection(tmp_path):
    async def body():
        async with quic_app(tmp_path) as app, \
                quic_client(app, streams=3) as client:
            results = await asyncio.gather(*(client.complete(f"q{i}") for i in range(30)))
            assert len(results) == 30
            (server_conn,) = app.quic.protocols
            assert sorted(server_conn.sessions) == sorted(s.stream_id for s in client.sessions)
            assert len(server_conn.sessions) == 3
            # round robin: every session carried ten requests
            assert [s.fc.conn._last_stream_id for s in client.sessions] == [10, 10, 10]
    run(body())


# ---- hostile input -------------------------------------------------------------------------------

def test_bad_signature_closes_that_session_only(tmp_path):
    async def body():
        async with quic_app(tmp_path, latency_ms=300) as app, \
                quic_client(app, streams=2) as client:
            victim, healthy = client.sessions
            pending = asyncio.ensure_future(victim.fc.complete(build_request("slow one")))
            victim.fc.conn.send_ping()                 # a valid frame from the session...
            (frame,) = victim.fc.conn.frames_to_send()
            bad = frame[:-1] + bytes([frame[-1] ^ 0x01])   # ...with one bit of its tag flipped
            client.protocol.send(victim.stream_id, bad)
            with pytest.raises(AtpClientError) as info:
                await pending                          # the server's CLOSE fails the request
            assert info.value.code == ErrorCode.BAD_SIGNATURE
            assert victim.fc.terminated.code == ErrorCode.BAD_SIGNATURE
            result = await healthy.fc.complete(build_request("unaffected"))
            assert result.output_tokens == 4
            # the client replaces the dead session with a new stream on the same connection
            again = await asyncio.gather(client.complete("a"), client.complete("b"))
            assert len(again) == 2 and len(app.quic.protocols) == 1
        assert app.metrics.protocol_errors.labels("quic", str(int(ErrorCode.BAD_SIGNATURE))) \
            ._value.get() == 1
    run(body())


def test_garbage_bytes_get_a_close_with_the_codec_code(tmp_path):
    async def body():
        garbage = b"\x00" * 120
        probe = Connection("server", keyring(), nonce_cache=NonceCache())
        probe.receive_data(garbage, int(time.time() * 1000))
        expected = probe.close_code
        assert 100 <= expected < 200
        async with quic_app(tmp_path) as app, quic_client(app) as client:
            raw = RawStream(client.protocol, client_conn())
            raw.send(garbage)
            await raw.until(lambda: raw.ended)        # the server finished the stream after CLOSE
            # The refusal is signed; its nonce is all-zero (no HELLO bound one), so open it statelessly.
            frame, end = open_frame(bytes(raw.received), 0, keyring(),
                                    now_ms=int(time.time() * 1000))
            assert end == len(raw.received)           # CLOSE is the only frame
            assert frame.type is FrameType.CLOSE and frame.payload["code"] == expected
            assert (await client.complete("others unaffected")).output_tokens == 4
    run(body())


def test_replayed_hello_is_refused(tmp_path):
    async def body():
        async with quic_app(tmp_path) as app, quic_client(app) as client:
            nonce = os.urandom(8)
            first = client_conn(nonce)
            hello = first.data_to_send()
            a = RawStream(client.protocol, first)
            a.send(hello)
            await a.until(lambda: a.event("SessionStarted"))
            b = RawStream(client.protocol, client_conn(nonce))   # expects the same nonce echoed
            b.send(hello)                                        # the very same bytes again
            await b.until(lambda: b.event("ConnectionTerminated") and b.ended)
            closed = b.event("ConnectionTerminated")
            assert closed.by_peer and closed.code == ErrorCode.REPLAYED_NONCE
            assert not a.ended and a.event("ConnectionTerminated") is None
    run(body())


# ---- lifecycle -----------------------------------------------------------------------------------

def test_client_gone_mid_stream_cancels_the_pipeline_call(tmp_path):
    async def body():
        async with quic_app(tmp_path, tokens_per_s=20, output_tokens=200) as app:
            audited = on_audit(app)
            client = quic_client(app)
            await client.connect()
            items = client.stream("a long answer")
            first = await anext(items)
            assert type(first) is Chunk
            assert app.admission.inflight == 1
            client.protocol.close()                # QUIC CONNECTION_CLOSE, no ATP CLOSE/CANCEL
            await audited.wait()
            assert audit_rows(app) == [("quic", "CANCELLED", int(ErrorCode.CANCELLED))]
            assert app.admission.inflight == 0
            await items.aclose()
            await client.close()
    run(body())


def test_cancelling_a_complete_call_cancels_upstream(tmp_path):
    async def body():
        async with quic_app(tmp_path, latency_ms=10_000) as app, \
                quic_client(app) as client:
            audited, admitted = on_audit(app), on_admitted(app)
            call = asyncio.ensure_future(client.complete("too slow"))
            await admitted.wait()
            call.cancel()                          # e.g. the caller's asyncio.wait_for expired
            await audited.wait()
            assert audit_rows(app) == [("quic", "CANCELLED", int(ErrorCode.CANCELLED))]
            assert len(app.quic.protocols) == 1 and client.sessions[0].alive
    run(body())


def test_wrong_or_missing_alpn_is_refused(tmp_path):
    async def attempt(port, alpn):
        made = []

        def factory(*args, **kwargs):
            made.append(QuicClientProtocol(*args, **kwargs))
            return made[-1]
        config = QuicConfiguration(is_client=True, alpn_protocols=alpn)
        config.verify_mode = 0
        with pytest.raises(ConnectionError):
            async with quic_connect("127.0.0.1", port, configuration=config,
                                    create_protocol=factory):
                pass
        return made[0].terminated

    async def body():
        async with quic_app(tmp_path) as app:
            for alpn in (["h3"], None):
                terminated = await attempt(app.ports.quic, alpn)
                assert terminated.error_code == NO_APPLICATION_PROTOCOL
            assert not app.quic.protocols or all(not p.sessions for p in app.quic.protocols)
            async with quic_client(app) as client:   # atp/1 still works
                assert (await client.complete("ok")).output_tokens == 4
    run(body())


def test_certificate_generated_into_state_dir(tmp_path):
    async def body():
        state = tmp_path / "state"
        assert not state.exists()
        async with quic_app(state) as app:
            cert, key = state / "quic-cert.pem", state / "quic-key.pem"
            assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
            assert key.stat().st_mode & 0o777 == 0o600
            async with AsyncQuicClient(port=app.ports.quic, key_id=DEV_HMAC_KEY_ID,
                                       secret=DEV_HMAC_SECRET, ca_file=str(cert)) as client:
                assert (await client.complete("verified")).output_tokens == 4
            first = cert.read_bytes()
        async with quic_app(state):                 # second start reuses it
            assert cert.read_bytes() == first
        other = tmp_path / "other"
        async with quic_app(other) as app:          # a different certificate: verification fails
            with pytest.raises(AtpClientError) as info:
                async with AsyncQuicClient(port=app.ports.quic, key_id=DEV_HMAC_KEY_ID,
                                           secret=DEV_HMAC_SECRET, ca_file=str(cert)):
                    pass
            assert info.value.code == ErrorCode.UNAVAILABLE
    run(body())


def test_certificate_is_verified_by_default(tmp_path):
    async def body():
        async with quic_app(tmp_path) as app:
            # no ca_file, no insecure: the system store, which does not know a self-signed cert
            with pytest.raises(AtpClientError) as info:
                async with AsyncQuicClient(port=app.ports.quic, key_id=DEV_HMAC_KEY_ID,
                                           secret=DEV_HMAC_SECRET):
                    pass
            assert info.value.code == ErrorCode.UNAVAILABLE
            assert "QUIC error 0x12a" in info.value.message    # TLS alert bad_certificate
            async with AsyncQuicClient(port=app.ports.quic, key_id=DEV_HMAC_KEY_ID,
                                       secret=DEV_HMAC_SECRET, insecure=True) as client:
                assert (await client.complete("unverified, on purpose")).output_tokens == 4
    run(body())


def _unretrieved_future_reports(caplog, loop_errors) -> list:
    gc.collect()       # a failed, unretrieved future reports when it is collected
    logged = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    return logged + [c["message"] for c in loop_errors if "never retrieved" in c["message"]]


async def _connect_failure(port: int, timeout: float) -> tuple[AtpClientError, list]:
    loop = asyncio.get_running_loop()
    loop_errors = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    client = AsyncQuicClient(port=port, key_id=DEV_HMAC_KEY_ID, secret=DEV_HMAC_SECRET,
                             insecure=True, connect_timeout=timeout)
    with pytest.raises(AtpClientError) as info:
        await client.connect()
    await client.close()
    gc.collect()
    await asyncio.sleep(0)      # one loop pass for any exception-handler call to arrive
    return info.value, loop_errors


def test_connecting_to_a_closed_port_fails_at_once_and_quietly(caplog):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The timeout is far beyond what the test takes: the kernel's port-unreachable answers it.
    error, loop_errors = run(_connect_failure(port, timeout=TIMEOUT_S))
    assert error.code == ErrorCode.UNAVAILABLE and error.retryable
    assert f"127.0.0.1:{port}" in error.message and "connection refused" in error.message
    assert _unretrieved_future_reports(caplog, loop_errors) == []


def test_connecting_to_a_silent_port_fails_at_the_connect_timeout(caplog):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:   # bound, never answers
        silent.bind(("127.0.0.1", 0))
        error, loop_errors = run(_connect_failure(silent.getsockname()[1], timeout=0.3))
        assert silent.recv(2048)               # the client's Initial did arrive
    assert error.code == ErrorCode.UNAVAILABLE and "no answer within 0.3 s" in error.message
    assert _unretrieved_future_reports(caplog, loop_errors) == []


def test_transmission_is_coalesced(tmp_path):
    n = 64

    async def body():
        async with quic_app(tmp_path) as app, quic_client(app) as client:
            await client.complete("warm up")
            server, proto = app.quic, client.protocol
            s0, c0 = (server.transmits, server.datagrams), (proto.transmits, proto.datagrams)
            results = await asyncio.gather(*(client.complete(f"burst {i}") for i in range(n)))
            assert len(results) == n
            s_tx, s_dg = server.transmits - s0[0], server.datagrams - s0[1]
            c_tx = proto.transmits - c0[0]
            # Each request made 6+ server frames (4 CHUNK, END, WINDOW_UPDATE share): per-frame
            # transmission would be >= 6n transmits; coalesced it is a handful of passes.
            assert s_tx < n and c_tx < n, (s_tx, s_dg, c_tx)
            assert s_dg < 2 * n, (s_tx, s_dg)
    run(body())


def test_stop_lets_inflight_finish_and_refuses_new_work(tmp_path):
    async def body():
        async with quic_app(tmp_path, latency_ms=300) as app, \
                quic_client(app) as client:
            admitted, draining = on_admitted(app), on_draining(app.quic)
            slow = asyncio.ensure_future(client.complete("finish me"))
            await admitted.wait()                       # the request reached the pipeline
            stopping = asyncio.ensure_future(app.stop(grace_s=10))
            await draining.wait()
            # a new session on the live connection is answered with CLOSE UNAVAILABLE
            fresh = RawStream(client.protocol, client_conn())
            fresh.send(fresh.conn.data_to_send())
            # a new connection is refused at the QUIC level
            with pytest.raises(AtpClientError) as refused:
                async with quic_client(app, connect_timeout=5):
                    pass
            assert refused.value.code == ErrorCode.UNAVAILABLE
            assert "server draining (QUIC error 0x2)" in refused.value.message   # CONNECTION_REFUSED
            await fresh.until(lambda: fresh.event("ConnectionTerminated"))
            assert fresh.event("ConnectionTerminated").code == ErrorCode.UNAVAILABLE
            # both refusals counted: the session on the live connection, the new connection
            assert app.metrics.refusals == {("quic", "draining"): 2}
            result = await slow                        # in flight: it finished normally
            assert result.output_tokens == 4
            await stopping
            assert not app.transports
            with pytest.raises(AtpClientError) as after:
                await client.sessions[0].fc.complete(build_request("too late"))
            assert "server shutting down" in after.value.message
    run(body())


def test_stop_after_grace_cuts_streams_with_unavailable(tmp_path):
    async def body():
        async with quic_app(tmp_path, latency_ms=10_000) as app, \
                quic_client(app) as client:
            audited, admitted = on_audit(app), on_admitted(app)
            slow = asyncio.ensure_future(client.complete("never finishes"))
            await admitted.wait()
            await app.stop(grace_s=0.05)
            with pytest.raises(AtpClientError) as info:
                await slow
            assert info.value.code == ErrorCode.UNAVAILABLE
            assert "server shutting down" in info.value.message   # the CLOSE beat the QUIC close
            assert audited.is_set()
        assert audit_rows(app)[-1][1] == "CANCELLED"
    run(body())


def test_client_reconnects_after_the_server_restarts(tmp_path):
    async def body():
        async with quic_app(tmp_path / "a") as first, \
                quic_client(first) as client:
            port = first.ports.quic
            assert (await client.complete("before")).output_tokens == 4
            old = client.protocol
            await first.stop(0)
            await old.wait_closed()              # the server's CONNECTION_CLOSE was processed
            config = make_config(tmp_path / "a")   # same state dir: the same (pinned) certificate
            second = App(dataclasses.replace(config, server=dataclasses.replace(
                config.server, quic_port=port)))
            await second.start(http=False, grpc=False, quic=True)
            try:
                assert (await client.complete("after")).output_tokens == 4
                assert client.protocol is not old
            finally:
                await second.stop(0)
    run(body())


def test_quic_against_the_shared_threaded_server(atp_server):
    """The SDK on its own loop against the full App (every transport) on the server's thread."""

    async def body():
        async with quic_client(atp_server.app, streams=2) as client:
            results = await asyncio.gather(*(client.complete(f"shared {i}") for i in range(8)))
            assert all(r.text and r.output_tokens for r in results)
            items = client.stream("a long answer", model="sim-slow", request_id="quic-walk-away")
            assert type(await anext(items)) is Chunk
            await items.aclose()                 # leaving early sends CANCEL on the session
            assert (await client.complete("after the cancel")).output_tokens
    run(body())
    assert atp_server.outcome("quic-walk-away") == ("quic", "CANCELLED", int(ErrorCode.CANCELLED))

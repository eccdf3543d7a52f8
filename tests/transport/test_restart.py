"""Anti-replay across a server restart (PROTOCOL.md §10.1): captured HELLOs and signed HTTP requests.

A graceful stop saves the nonce cache into the state dir and the next start restores it; a start
without that snapshot (first start, crash, unreadable file) refuses opening timestamps older than
its start time instead. Each test runs its own servers on a temporary state dir.
"""
import asyncio
import logging
import os
import time

import aiohttp
import grpc
import orjson

from atp_server import config as atp_config
from atp_server.auth import (NONCE_SNAPSHOT, SIG_KEY_ID, SIG_NONCE, SIG_SIGNATURE, SIG_TIMESTAMP,
                             sign_request)
from codec import Connection, FrameType, Keyring, open_frame
from codec.errors import ErrorCode
from proto.atp.v1 import atp_pb2 as pb

from .conftest import ServerHarness, server_config

KEYS = {atp_config.DEV_HMAC_KEY_ID: atp_config.DEV_HMAC_SECRET}
CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 2})


def now_ms() -> int:
    return int(time.time() * 1000)


def hello(ts: int) -> bytes:
    """A client HELLO with a fresh nonce, timestamped `ts`: the bytes an attacker captures."""
    conn = Connection("client", Keyring(dict(KEYS), current_id=atp_config.DEV_HMAC_KEY_ID),
                      now_ms=ts)
    conn.initiate(os.urandom(8), ts)
    (frame,) = conn.frames_to_send()
    return frame


def open_session(h: ServerHarness, frame: bytes) -> tuple[FrameType, int | None]:
    """Send one HELLO on a new Session call: (type of the server's first frame, CLOSE code)."""
    async def go():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{h.ports.grpc}") as channel:
            call = channel.stream_stream("/atp.v1.Atp/Session",
                                         request_serializer=pb.Frame.SerializeToString,
                                         response_deserializer=pb.Frame.FromString)()
            await call.write(pb.Frame(data=frame))
            first = await call.read()
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:   # the server ends the call
                pass
        opened, _ = open_frame(first.data, 0, Keyring(dict(KEYS)), now_ms=now_ms())
        return opened.type, opened.payload.get("code")
    return asyncio.run(asyncio.wait_for(go(), 30))


def signed_headers(ts: int) -> dict:
    nonce = os.urandom(8).hex()
    return {"Authorization": f"Bearer {atp_config.DEV_API_KEY}",
            "Content-Type": "application/json", SIG_KEY_ID: str(atp_config.DEV_HMAC_KEY_ID),
            SIG_TIMESTAMP: str(ts), SIG_NONCE: nonce,
            SIG_SIGNATURE: sign_request(atp_config.DEV_HMAC_SECRET, "POST", CHAT, ts, nonce, BODY)}


def post(h: ServerHarness, headers: dict) -> tuple[int, str | None]:
    """POST the signed chat request: (HTTP status, error code name or None)."""
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{h.ports.http}{CHAT}", data=BODY,
                              headers=headers) as r:
                body = await r.read()
                return r.status, (orjson.loads(body)["error"]["code"] if r.status != 200 else None)
    return asyncio.run(asyncio.wait_for(go(), 30))


def harness(state_dir) -> ServerHarness:
    return ServerHarness(server_config(state_dir), str(state_dir / "audit.sqlite"))


def test_replays_after_a_graceful_restart_are_refused(tmp_path):
    h = harness(tmp_path).start(quic=False)
    try:
        captured_hello, captured_http = hello(now_ms()), signed_headers(now_ms())
        assert open_session(h, captured_hello) == (FrameType.HELLO, None)
        assert post(h, captured_http) == (200, None)
        first_floor = h.app.auth.nonce_cache.floor_ms     # the first start had no snapshot
        h.stop()
        assert (tmp_path / NONCE_SNAPSHOT).exists()
        lagging = now_ms() - 1       # older than the restart, newer than the first start
        assert lagging >= first_floor
        h.start(quic=False)
        assert not (tmp_path / NONCE_SNAPSHOT).exists()      # good for one start only
        assert open_session(h, captured_hello) == (FrameType.CLOSE, ErrorCode.REPLAYED_NONCE)
        assert post(h, captured_http) == (401, "REPLAYED_NONCE")
        # The snapshot, not a new floor, guards this restart: a timestamp older than the restart
        # (a client whose clock lags) is still served.
        assert open_session(h, hello(lagging)) == (FrameType.HELLO, None)
        assert post(h, signed_headers(lagging)) == (200, None)
    finally:
        h.stop()
        h.close()


def test_after_a_crash_old_timestamps_are_refused_and_fresh_ones_accepted(tmp_path):
    crashed = harness(tmp_path).start(quic=False)
    restarted = None
    try:
        t = now_ms() - 1          # before the restart below, by at least 1 ms
        captured_hello, captured_http = hello(t), signed_headers(t)
        assert open_session(crashed, captured_hello) == (FrameType.HELLO, None)
        assert post(crashed, captured_http) == (200, None)
        # A crash saves nothing: the next server starts on the same state dir without a snapshot.
        restarted = harness(tmp_path).start(quic=False)
        assert open_session(restarted, captured_hello) == (FrameType.CLOSE,
                                                           ErrorCode.STALE_TIMESTAMP)
        assert post(restarted, captured_http) == (401, "STALE_TIMESTAMP")
        assert open_session(restarted, hello(now_ms())) == (FrameType.HELLO, None)
        assert post(restarted, signed_headers(now_ms())) == (200, None)
    finally:
        for h in (restarted, crashed):
            if h is not None:
                h.stop()
                h.close()


def test_a_corrupt_snapshot_is_logged_and_the_start_time_floor_applies(tmp_path, caplog):
    (tmp_path / NONCE_SNAPSHOT).write_bytes(b'{"format": 1, "nonces": [["zz", ')
    caplog.set_level(logging.WARNING, logger="atp.auth")
    h = harness(tmp_path).start(quic=False)
    try:
        assert h.ports.grpc and h.ports.http            # the server started regardless
        (record,) = [r for r in caplog.records if r.name == "atp.auth"]
        assert "unreadable" in record.getMessage() and "STALE_TIMESTAMP" in record.getMessage()
        assert not (tmp_path / NONCE_SNAPSHOT).exists()
        assert open_session(h, hello(now_ms() - 5000)) == (FrameType.CLOSE,
                                                           ErrorCode.STALE_TIMESTAMP)
        assert open_session(h, hello(now_ms())) == (FrameType.HELLO, None)
    finally:
        h.stop()
        h.close()

"""codec.connection through an in-memory ConnectionPair: sessions, streams, credit, timers, failures."""
import pytest

from codec import (ChunkReceived, CodecError, CongestionChanged, Connection, ConnectionConfig,
                   ConnectionTerminated, ErrorCode, Flag, FlowControlError, FrameType,
                   NonceCache, PingReceived, PongReceived, ProtocolError, RequestReceived,
                   SessionStarted, StreamCancelled, StreamEnded, StreamReset, WindowUpdated,
                   Limits, open_frame)

from . import frame_factory as ff
from .pair import ConnectionPair

REQ = {"messages": [["user", "hello"]], "max_tokens": 100, "max_cost": 50}
USAGE = {"in": 5, "out": 7, "cost": 42, "model": "m", "finish": "stop"}


def decode_all(data, keyring=None, now=None):
    """Every frame in `data` (signed by the pair's key), in order."""
    keyring = keyring or ff.keyring()
    frames, offset = [], 0
    while offset < len(data):
        frame, offset = open_frame(data, offset, keyring, now_ms=now or ff.NOW)
        frames.append(frame)
    return frames


def only(events, cls):
    found = [e for e in events if isinstance(e, cls)]
    assert len(found) == 1, events
    return found[0]


def terminated(events):
    return only(events, ConnectionTerminated)


# ---- opening --------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["stream", "frames", "batches"])
def test_hello_exchange(codec_backend, transport):
    server_config = ConnectionConfig(agent="srv", initial_window=(3, 4000, 5000), heartbeat_ms=700)
    pair = ConnectionPair(server_config=server_config, client_config=ConnectionConfig(agent="cli"),
                          transport=transport).open()
    assert pair.client.established and pair.server.established
    assert pair.take("client") == [SessionStarted("srv", (3, 4000, 5000), 700, ff.KEY_ID)]
    assert pair.take("server") == [SessionStarted("cli", (0, 0, 0), 0, ff.KEY_ID)]
    assert pair.client.window.available == (3, 4000, 5000)
    client_hello, server_hello = pair.wire["client"][0], pair.wire["server"][0]
    (ch,), (sh,) = decode_all(client_hello), decode_all(server_hello)
    assert ch.type is sh.type is FrameType.HELLO
    assert (ch.flags, sh.flags) == (0, Flag.RESPONDER)
    assert ch.nonce == sh.nonce == ff.NONCE and ch.sequence == sh.sequence == 0
    assert sh.payload == {"agent": "srv", "win": [3, 4000, 5000], "hb_ms": 700,
                          "idle_ms": 60_000, "max_payload": 1 << 20}


def test_initiate_validation(codec_backend):
    client = Connection("client", ff.keyring())
    for nonce in (b"", b"\x01" * 7, b"\x01" * 9, bytes(8)):
        with pytest.raises(ValueError):
            client.initiate(nonce, ff.NOW)
    assert client.data_to_send() == b""
    with pytest.raises(ProtocolError):
        Connection("server", ff.keyring(), nonce_cache=NonceCache()).initiate(ff.NONCE, ff.NOW)
    with pytest.raises(ValueError):
        Connection("proxy", ff.keyring())
    with pytest.raises(ValueError):
        Connection("server", ff.keyring())          # a server needs a NonceCache


# ---- full exchange -------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["stream", "frames", "batches"])
def test_request_chunks_end_and_window_replenishment(codec_backend, transport):
    pair = ConnectionPair(transport=transport).open()
    pair.take("client"), pair.take("server")
    start = pair.client.window.available
    sid = pair.client.send_request(REQ)
    assert sid == 1 and pair.client.window.available == (start[0] - 1, start[1] - 100, start[2] - 50)
    pair.pump()
    request = only(pair.take("server"), RequestReceived)
    assert (request.stream_id, request.request) == (1, REQ) and request.size > 72
    assert pair.server.window.available == pair.client.window.available
    for text in ("Hel", "lo", "!"):
        pair.server.send_chunk(sid, text, tokens=2)
    pair.server.send_end(sid, USAGE)
    pair.pump()
    events = pair.take("client")
    assert [e for e in events if isinstance(e, ChunkReceived)] == [
        ChunkReceived(1, 0, "Hel", 2), ChunkReceived(1, 1, "lo", 2), ChunkReceived(1, 2, "!", 2)]
    assert only(events, StreamEnded) == StreamEnded(1, USAGE)
    assert only(events, WindowUpdated) == WindowUpdated((1, 100, 50), start)
    assert pair.client.window.available == pair.server.window.available == start
    assert pair.client.streams == {} and pair.server.streams == {}
    # the order on the wire: chunks, END, then the coalesced WINDOW_UPDATE
    types = [f.type for f in decode_all(b"".join(pair.wire["server"][1:]))]
    assert types == [FrameType.CHUNK] * 3 + [FrameType.END, FrameType.WINDOW_UPDATE]


def test_many_streams_interleaved(codec_backend):
    pair = ConnectionPair().open()
    sids = [pair.client.send_request(REQ) for _ in range(5)]
    pair.pump()
    assert [e.stream_id for e in pair.of_type("server", RequestReceived)] == sids == [1, 2, 3, 4, 5]
    for sid in reversed(sids):
        pair.server.send_chunk(sid, f"s{sid}")
    for sid in sids:
        pair.server.send_end(sid, USAGE)
    pair.pump()
    assert [e.stream_id for e in pair.of_type("client", StreamEnded)] == sids
    assert [(e.stream_id, e.index) for e in pair.of_type("client", ChunkReceived)] == \
        [(s, 0) for s in reversed(sids)]


def test_stream_error_from_server(codec_backend):
    pair = ConnectionPair().open()
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.server.send_error(sid, ErrorCode.UPSTREAM_TIMEOUT, "slow", retry_after_ms=250)
    pair.pump()
    reset = only(pair.take("client"), StreamReset)
    assert reset == StreamReset(sid, ErrorCode.UPSTREAM_TIMEOUT, "slow", True, 250)
    assert pair.client.window.available == pair.server.window.available


def test_requests_before_server_hello_are_accounted(codec_backend):
    pair = ConnectionPair()
    pair.client.initiate(pair.nonce, pair.now)
    pair.client.send_request(REQ)
    pair.client.send_request({"messages": [["u", "x"]]})      # reserves DEFAULT_REQUEST_TOKENS
    pair.pump()
    assert len(pair.of_type("server", RequestReceived)) == 2
    assert pair.client.window.available == pair.server.window.available


def test_no_auto_replenish_means_manual_grants(codec_backend):
    pair = ConnectionPair(server_config=ConnectionConfig(auto_replenish=False)).open()
    before = pair.client.window.available
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.server.send_end(sid, USAGE)
    pair.pump()
    assert pair.of_type("client", WindowUpdated) == []
    pair.server.grant(1, 10)
    pair.server.grant(0, 90, 50)           # coalesced with the previous grant
    pair.pump()
    assert pair.of_type("client", WindowUpdated) == [WindowUpdated((1, 100, 50), before)]
    assert len(pair.wire["server"]) == 3   # HELLO, END, one WINDOW_UPDATE


def test_zero_grant_sends_nothing(codec_backend):
    pair = ConnectionPair().open()
    pair.server.grant(0, 0, 0)
    assert pair.server.data_to_send() == b""


def test_grant_before_hello_waits_for_the_session(codec_backend):
    server = _fresh_server()
    server.grant(1, 1, 1)
    assert server.data_to_send() == b""                  # never before the server's HELLO
    server.receive_data(ff.build(), ff.NOW)
    frames = decode_all(server.data_to_send())
    assert [f.type for f in frames] == [FrameType.HELLO, FrameType.WINDOW_UPDATE]
    assert frames[1].payload == {"req": 1, "tok": 1, "usd": 1}


def test_grant_is_server_only(codec_backend):
    pair = ConnectionPair().open()
    with pytest.raises(ProtocolError):
        pair.client.grant(1, 1, 1)


# ---- credit windows ------------------------------------------------------------------------------

def test_client_refuses_to_exceed_its_window_locally(codec_backend):
    pair = ConnectionPair(server_config=ConnectionConfig(initial_window=(1, 500, 100))).open()
    with pytest.raises(FlowControlError):
        pair.client.send_request({**REQ, "max_tokens": 501})
    pair.client.send_request(REQ)
    with pytest.raises(FlowControlError):
        pair.client.send_request(REQ)
    assert pair.client.streams.keys() == {1}
    pair.pump()
    assert len(pair.of_type("server", RequestReceived)) == 1


def test_exceeding_the_window_gives_a_stream_error_and_the_session_stays_up(codec_backend):
    pair = ConnectionPair(server_config=ConnectionConfig(initial_window=(2, 150, 100))).open()
    pair.take("server")
    pair.client.window.grant(5, 10_000, 10_000)   # a client that ignores what it was granted
    first = pair.client.send_request(REQ)
    greedy = pair.client.send_request({**REQ, "max_tokens": 51})   # 100 + 51 > 150
    pair.pump()
    assert [e.stream_id for e in pair.take("server")] == [first]
    reset = only(pair.take("client"), StreamReset)
    assert (reset.stream_id, reset.code, reset.retryable) == (greedy, ErrorCode.WINDOW_EXCEEDED, True)
    assert not pair.client.closed and not pair.server.closed
    assert greedy not in pair.client.streams and greedy not in pair.server.streams
    # the refused request consumed nothing on the server; the session keeps working
    assert pair.server.window.available == (1, 50, 50)
    pair.server.send_end(first, USAGE)
    ok = pair.client.send_request({**REQ, "max_tokens": 150})
    pair.pump()
    assert only(pair.take("server"), RequestReceived).stream_id == ok


def test_refused_early_requests_do_not_leak_client_credit(codec_backend):
    pair = ConnectionPair(server_config=ConnectionConfig(initial_window=(2, 2048, 10**6)))
    pair.client.initiate(pair.nonce, pair.now)
    for _ in range(4):                                      # DEFAULT_INITIAL allows 4
        pair.client.send_request({"messages": [["u", "x"]]})
    pair.pump()
    accepted = pair.of_type("server", RequestReceived)
    assert len(accepted) == 2 and len(pair.of_type("client", StreamReset)) == 2
    for request in accepted:
        pair.server.send_end(request.stream_id, USAGE)
    pair.pump()
    assert pair.server.window.available == (2, 2048, 10**6)
    # Regression: the refused reservations used to stay consumed on the client, leaving it at
    # (0, 0, 10**6) forever (a credit deadlock). A refusal now refunds them.
    assert pair.client.window.available == pair.server.window.available
    pair.client.send_request({"messages": [["u", "x"]]})


def test_too_many_open_streams_is_a_stream_error(codec_backend):
    # The live-stream cap refuses the stream, not the session (PROTOCOL.md §8.3, §12).
    pair = ConnectionPair(server_config=ConnectionConfig(max_open_streams=2)).open()
    start = pair.client.window.available
    sids = [pair.client.send_request(REQ) for _ in range(3)]
    pair.pump()
    assert [e.stream_id for e in pair.of_type("server", RequestReceived)] == sids[:2]
    reset = only(pair.take("client"), StreamReset)
    assert (reset.stream_id, reset.code, reset.retryable) == (sids[2], ErrorCode.WINDOW_EXCEEDED, True)
    assert not pair.server.closed and not pair.client.closed
    assert pair.client.window.available == pair.server.window.available
    for sid in sids[:2]:
        pair.server.send_end(sid, USAGE)
    pair.pump()
    assert pair.client.window.available == pair.server.window.available == start


def test_window_update_grants_to_a_client_with_nothing_left(codec_backend):
    pair = ConnectionPair(server_config=ConnectionConfig(initial_window=(1, 100, 0))).open()
    sid = pair.client.send_request({**REQ, "max_cost": 0})
    with pytest.raises(FlowControlError):
        pair.client.send_request({**REQ, "max_cost": 0})
    pair.pump()
    pair.server.send_end(sid, USAGE)
    pair.pump()
    assert pair.client.window.available == (1, 100, 0)
    pair.client.send_request({**REQ, "max_cost": 0})


def test_stream_id_exhaustion_leaves_the_client_consistent(codec_backend):
    pair = ConnectionPair().open()
    pair.client._last_stream_id = 2**32 - 1            # as if 4 billion requests had been sent
    before = pair.client.window.available
    # Regression: this used to raise a bare ValueError from seal() after consuming credit and
    # registering a phantom stream 2**32 (PROTOCOL.md §11.2: open a new session instead).
    with pytest.raises(CodecError) as info:
        pair.client.send_request(REQ)
    assert info.value.code is ErrorCode.INVALID_STREAM
    assert pair.client.window.available == before and pair.client.streams == {}
    assert pair.client.data_to_send() == b""


# ---- cancel ------------------------------------------------------------------------------------

def test_cancel(codec_backend):
    pair = ConnectionPair().open()
    start = pair.client.window.available
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.server.send_chunk(sid, "partial")
    pair.transfer("server")
    pair.client.send_cancel(sid)
    pair.client.send_cancel(sid)                    # CANCELLING -> CANCELLING, nothing sent twice
    pair.pump()
    assert only(pair.take("server"), StreamCancelled) == StreamCancelled(sid, ErrorCode.CANCELLED)
    events = pair.take("client")
    assert only(events, StreamReset) == StreamReset(sid, ErrorCode.CANCELLED, "cancelled by client",
                                                    False, 0)
    assert [f.type for f in decode_all(b"".join(pair.wire["client"]))].count(FrameType.CANCEL) == 1
    assert pair.client.window.available == pair.server.window.available == start
    assert pair.client.streams == {} and pair.server.streams == {}
    with pytest.raises(ProtocolError) as info:
        pair.server.send_chunk(sid, "too late")
    assert info.value.code is ErrorCode.INVALID_STREAM


def test_chunks_in_flight_after_cancel_are_swallowed(codec_backend):
    pair = ConnectionPair().open()
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.client.send_cancel(sid)
    pair.server.send_chunk(sid, "in flight")          # crosses the CANCEL on the wire
    pair.transfer("server")
    assert pair.of_type("client", ChunkReceived) == []
    pair.pump()
    assert only(pair.take("client"), StreamReset).code == ErrorCode.CANCELLED


def test_cancel_racing_end_keeps_the_session_up(codec_backend):
    pair = ConnectionPair().open()
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.client.send_cancel(sid)
    pair.server.send_end(sid, USAGE)
    pair.pump()
    assert pair.of_type("server", StreamCancelled) == []   # the server had already finished
    assert not pair.client.closed and not pair.server.closed
    assert pair.client.streams == {} and pair.server.streams == {}
    assert pair.client.window.available == pair.server.window.available


def test_cancel_of_unknown_stream_is_a_noop(codec_backend):
    pair = ConnectionPair().open()
    pair.client.send_cancel(99)
    assert pair.client.data_to_send() == b""


# ---- ping / heartbeat / idle --------------------------------------------------------------------

def test_ping_pong_rtt(codec_backend):
    pair = ConnectionPair().open()
    data = pair.client.send_ping(pair.now)
    pair.pump(hop_ms=12)
    assert pair.of_type("server", PingReceived) == [PingReceived(data)]
    assert pair.of_type("client", PongReceived) == [PongReceived(data, 24)]
    second = pair.server.send_ping(pair.now)
    pair.pump(hop_ms=5)
    assert pair.of_type("server", PongReceived) == [PongReceived(second, 10)]


def test_unsolicited_pong_is_a_protocol_violation(codec_backend):
    pair = ConnectionPair().open()
    pair.client.send_ping(pair.now)
    pair.pump()
    pair.client.receive_data(b"", pair.now)            # no bytes: no effect
    assert not pair.client.closed
    replayed_pong = ff.build(FrameType.PONG, payload={"d": 77}, flags=Flag.RESPONDER, sequence=5)
    pair.client.receive_data(replayed_pong, pair.now)
    assert terminated(pair.take("client")).code == ErrorCode.PROTOCOL_VIOLATION


def test_heartbeat_through_the_timer(codec_backend):
    pair = ConnectionPair(client_config=ConnectionConfig(heartbeat_ms=1000, idle_timeout_ms=0),
                          server_config=ConnectionConfig(heartbeat_ms=0, idle_timeout_ms=0)).open()
    opened = pair.now
    assert pair.client.get_timer() == opened + 1000
    assert pair.server.get_timer() is None
    pair.advance(999)
    pair.client.handle_timer(pair.now)                 # early: nothing to do
    assert pair.client.data_to_send() == b""
    pair.advance(1)
    pair.fire_timers()
    assert pair.client.get_timer() == pair.now + 1000  # sending re-arms the heartbeat
    pair.pump(hop_ms=4)
    (ping,) = decode_all(pair.wire["client"][-1], now=pair.now)
    assert (ping.type, ping.payload, ping.timestamp_ms) == (FrameType.PING, {"d": 1}, opened + 1000)
    assert pair.of_type("server", PingReceived) == [PingReceived(1)]
    assert pair.of_type("client", PongReceived) == [PongReceived(1, 8)]


def test_heartbeats_keep_an_idle_session_alive(codec_backend):
    config = ConnectionConfig(heartbeat_ms=1000, idle_timeout_ms=3000)
    pair = ConnectionPair(client_config=config, server_config=config).open()
    start = pair.now
    pair.run_until(start + 60_000, hop_ms=3)
    assert not pair.client.closed and not pair.server.closed
    pongs = pair.of_type("client", PongReceived) + pair.of_type("server", PongReceived)
    assert len(pongs) >= 55 and all(6 <= p.rtt_ms <= 9 for p in pongs)   # 2-3 hops of 3 ms
    assert pair.of_type("client", ConnectionTerminated) == []


def test_idle_timeout_closes_with_timeout(codec_backend):
    pair = ConnectionPair(server_config=ConnectionConfig(heartbeat_ms=0, idle_timeout_ms=5000),
                          client_config=ConnectionConfig(heartbeat_ms=0, idle_timeout_ms=0)).open()
    opened = pair.now
    assert pair.client.get_timer() is None
    assert pair.server.get_timer() == opened + 5000
    pair.advance(4999)
    pair.fire_timers()
    assert not pair.server.closed
    pair.advance(1)
    pair.fire_timers()
    pair.pump()
    mine = terminated(pair.take("server"))
    assert (mine.code, mine.by_peer) == (ErrorCode.TIMEOUT, False) and "5000 ms" in mine.message
    theirs = terminated(pair.take("client"))
    assert (theirs.code, theirs.by_peer) == (ErrorCode.TIMEOUT, True)
    assert pair.server.get_timer() is None and pair.client.closed


def test_idle_timeout_counts_from_creation_before_any_hello(codec_backend):
    server = Connection("server", ff.keyring(), nonce_cache=NonceCache(),
                        config=ConnectionConfig(idle_timeout_ms=100), now_ms=ff.NOW)
    assert server.get_timer() == ff.NOW + 100      # no heartbeat before the session exists
    server.handle_timer(ff.NOW + 100)
    assert server.next_event().code == ErrorCode.TIMEOUT
    (close,) = decode_all(server.data_to_send())
    assert close.type is FrameType.CLOSE and close.payload["code"] == ErrorCode.TIMEOUT


def test_receiving_resets_the_idle_deadline(codec_backend):
    quiet = ConnectionConfig(heartbeat_ms=0, idle_timeout_ms=1000)
    pair = ConnectionPair(client_config=quiet, server_config=quiet).open()
    pair.advance(900)
    pair.client.send_ping(pair.now)
    pair.pump()
    assert pair.server.get_timer() == pair.now + 1000


# ---- close ----------------------------------------------------------------------------------------

def test_close_from_peer(codec_backend):
    pair = ConnectionPair().open()
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.client.close(ErrorCode.NO_ERROR, "bye")
    pair.pump()
    assert terminated(pair.take("client")) == ConnectionTerminated(0, "bye", by_peer=False)
    assert terminated(pair.take("server")) == ConnectionTerminated(0, "bye", by_peer=True)
    assert pair.server.closed and pair.server.close_code == 0 and pair.server.streams == {}
    assert pair.server.data_to_send() == b""             # no CLOSE echoed back
    with pytest.raises(ProtocolError) as info:
        pair.server.send_chunk(sid, "x")
    assert info.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(ProtocolError):
        pair.client.send_request(REQ)
    pair.server.receive_data(ff.build(FrameType.PING), pair.now)   # ignored, even if hostile
    pair.server.receive_frame(b"garbage", pair.now)
    assert pair.take("server") == [] and pair.server.get_timer() is None
    pair.client.close()                                 # idempotent
    assert pair.client.data_to_send() == b""


def test_server_close_with_code_reaches_the_client(codec_backend):
    pair = ConnectionPair().open()
    pair.server.close(ErrorCode.OVERLOADED, "shedding")
    pair.pump()
    assert terminated(pair.take("client")) == ConnectionTerminated(
        ErrorCode.OVERLOADED, "shedding", by_peer=True)


def test_close_flushes_pending_grants_first(codec_backend):
    pair = ConnectionPair().open()
    pair.server.grant(1, 2, 3)
    pair.server.close(ErrorCode.NO_ERROR)
    frames = decode_all(pair.server.data_to_send(), now=pair.now)
    assert [f.type for f in frames] == [FrameType.WINDOW_UPDATE, FrameType.CLOSE]


# ---- congestion ----------------------------------------------------------------------------------

def test_congestion_flag(codec_backend):
    pair = ConnectionPair().open()
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.server.congested = True
    pair.server.send_chunk(sid, "a")
    pair.server.send_chunk(sid, "b")
    pair.pump()
    assert pair.of_type("client", CongestionChanged) == [CongestionChanged(True)]
    assert pair.client.peer_congested
    flagged = decode_all(b"".join(pair.wire["server"][1:]), now=pair.now)
    assert all(f.flags == Flag.RESPONDER | Flag.CONGESTION for f in flagged)
    pair.server.congested = False
    pair.server.send_end(sid, USAGE)
    pair.pump()
    assert pair.of_type("client", CongestionChanged) == [CongestionChanged(True),
                                                         CongestionChanged(False)]
    assert not pair.client.peer_congested


# ---- message transport: receive_frame ----------------------------------------------------------

def _fresh_server():
    return Connection("server", ff.keyring(), nonce_cache=NonceCache(), now_ms=ff.NOW)


@pytest.mark.parametrize("mangle,detail", [
    (lambda f: f[:-1], "truncated"), (lambda f: f[:39], "truncated"),
    (lambda f: b"", "truncated"), (lambda f: f + b"\x00", "1 bytes after"),
    (lambda f: f + ff.build(FrameType.PING, sequence=1), "bytes after"),
])
def test_receive_frame_rejects_partial_and_extra_bytes(codec_backend, mangle, detail):
    server = _fresh_server()
    server.receive_frame(mangle(ff.build()), ff.NOW)
    event = server.next_event()
    assert event.code == ErrorCode.MALFORMED_FRAME and detail in event.message
    (close,) = decode_all(server.data_to_send())
    assert close.type is FrameType.CLOSE and close.payload["code"] == ErrorCode.MALFORMED_FRAME


def test_receive_frame_accepts_exactly_one_frame(codec_backend):
    server = _fresh_server()
    server.receive_frame(bytearray(ff.build()), ff.NOW)
    assert isinstance(server.next_event(), SessionStarted)
    assert len(server.frames_to_send()) == 1


def test_receive_frames_takes_several_whole_frames(codec_backend):
    server = _fresh_server()
    batch = ff.build() + ff.build(FrameType.REQUEST, sequence=1) + ff.build(FrameType.PING, sequence=2)
    server.receive_frames(batch, ff.NOW)
    assert [type(server.next_event()) for _ in range(3)] == [SessionStarted, RequestReceived,
                                                            PingReceived]
    assert [f.type for f in decode_all(server.data_to_send())] == [FrameType.HELLO, FrameType.PONG]
    server.receive_frames(b"", ff.NOW)                      # an empty message: nothing happens
    assert server.next_event() is None and not server.closed


@pytest.mark.parametrize("cut", [1, 39, 40, 60])
def test_receive_frames_refuses_a_cut_frame_instead_of_buffering(codec_backend, cut):
    server = _fresh_server()
    ping = ff.build(FrameType.PING, sequence=1)
    server.receive_frames(ff.build() + ping[:cut], ff.NOW)
    assert isinstance(server.next_event(), SessionStarted)
    event = server.next_event()
    assert event.code == ErrorCode.MALFORMED_FRAME and "inside a frame" in event.message
    frames = decode_all(server.data_to_send())
    assert [f.type for f in frames] == [FrameType.HELLO, FrameType.CLOSE]
    server.receive_frames(ping[cut:], ff.NOW)               # the rest never completes it
    assert server.next_event() is None


def test_receive_data_buffers_partial_frames(codec_backend):
    server = _fresh_server()
    hello = ff.build()
    server.receive_data(hello[:50], ff.NOW)
    assert server.next_event() is None and not server.closed
    server.receive_data(hello[50:] + ff.build(FrameType.PING, sequence=1)[:10], ff.NOW)
    assert isinstance(server.next_event(), SessionStarted)
    server.receive_data(ff.build(FrameType.PING, sequence=1)[10:], ff.NOW)
    assert server.next_event() == PingReceived(1)


# ---- byte-boundary independence -----------------------------------------------------------------

def _server_script(pair):
    """Everything a server sends for one stream, as one blob (HELLO first)."""
    sid = pair.client.send_request(REQ)
    pair.transfer("client")
    pair.server.send_chunk(sid, "héllo", tokens=1)
    pair.server.send_chunk(sid, "", tokens=0)
    pair.server.congested = True
    pair.server.send_ping(pair.now)
    pair.server.send_end(sid, USAGE)
    return pair.wire["server"][0] + pair.server.data_to_send()


def _client_fed(pieces, now):
    client = Connection("client", ff.keyring(), now_ms=now)
    client.initiate(ff.NONCE, now)
    client.send_request(REQ)
    client.data_to_send()
    for piece in pieces:
        client.receive_data(piece, now)
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    return events, client.data_to_send()


def test_server_bytes_split_at_every_boundary_arrive_identically(codec_backend):
    pair = ConnectionPair().open()
    blob = _server_script(pair)
    reference = _client_fed([blob], pair.now)
    assert [type(e).__name__ for e in reference[0]] == [
        "SessionStarted", "ChunkReceived", "ChunkReceived", "CongestionChanged", "PingReceived",
        "StreamEnded", "WindowUpdated"]
    for cut in range(len(blob) + 1):
        assert _client_fed([blob[:cut], blob[cut:]], pair.now) == reference, cut
    assert _client_fed([blob[i:i + 1] for i in range(len(blob))], pair.now) == reference


def test_client_bytes_split_at_every_boundary_arrive_identically(codec_backend):
    client = Connection("client", ff.keyring(), now_ms=ff.NOW)
    client.initiate(ff.NONCE, ff.NOW)
    sid = client.send_request(REQ)
    client.send_ping(ff.NOW)
    client.send_cancel(sid)
    blob = client.data_to_send()

    def fed(pieces):
        server = _fresh_server()
        for piece in pieces:
            server.receive_data(piece, ff.NOW)
        events = []
        while (event := server.next_event()) is not None:
            events.append(event)
        return events, server.data_to_send()

    reference = fed([blob])
    assert [type(e).__name__ for e in reference[0]] == [
        "SessionStarted", "RequestReceived", "PingReceived", "StreamCancelled"]
    for cut in range(len(blob) + 1):
        assert fed([blob[:cut], blob[cut:]]) == reference, cut


# ---- anti-replay across connections and inside one ----------------------------------------------

def test_replayed_hello_on_a_second_server_is_refused(codec_backend):
    cache = NonceCache()
    first = ConnectionPair(nonce_cache=cache).open()
    assert first.server.established
    hello = first.wire["client"][0]
    second = Connection("server", ff.keyring(), nonce_cache=cache, now_ms=first.now)
    second.receive_data(hello, first.now + 10)
    event = second.next_event()
    assert (event.code, event.by_peer) == (ErrorCode.REPLAYED_NONCE, False)
    (close,) = decode_all(second.data_to_send(), now=first.now)
    assert (close.type, close.nonce, close.sequence) == (FrameType.CLOSE, ff.NONCE, 0)
    assert close.payload["code"] == ErrorCode.REPLAYED_NONCE


def test_client_reusing_a_nonce_sees_the_servers_close_code(codec_backend):
    cache = NonceCache()
    ConnectionPair(nonce_cache=cache).open()
    again = ConnectionPair(nonce_cache=cache, nonce=ff.NONCE, now_ms=ff.NOW + 1000).open()
    assert terminated(again.take("client")) == ConnectionTerminated(
        ErrorCode.REPLAYED_NONCE, f"nonce {ff.NONCE.hex()} was already used", by_peer=True)
    assert again.server.close_code == ErrorCode.REPLAYED_NONCE
    # a different nonce is fine on the same cache
    ok = ConnectionPair(nonce_cache=cache, nonce=b"\x09" * 8, now_ms=ff.NOW + 1000).open()
    assert ok.server.established and ok.client.established


def test_stale_hello_is_refused_with_stale_timestamp(codec_backend):
    pair = ConnectionPair(nonce_cache=NonceCache(skew_ms=1000))
    pair.client.initiate(pair.nonce, pair.now)
    hello = pair.client.data_to_send()
    pair.server.receive_data(hello, pair.now + 1001)
    assert pair.server.next_event().code == ErrorCode.STALE_TIMESTAMP
    pair.client.receive_data(pair.server.data_to_send(), pair.now + 1001)
    assert terminated(pair.take("client")).code == ErrorCode.STALE_TIMESTAMP


def test_frame_replayed_inside_a_session_is_sequence_replay(codec_backend):
    pair = ConnectionPair().open()
    pair.client.send_ping(pair.now)
    pair.pump()
    ping = pair.wire["client"][-1]
    pair.server.receive_data(ping, pair.now)
    assert terminated(pair.take("server")).code == ErrorCode.SEQUENCE_REPLAY


def test_reflected_frame_is_a_protocol_violation(codec_backend):
    pair = ConnectionPair().open()
    pair.server.send_ping(pair.now)
    ping = pair.server.data_to_send()
    pair.server.receive_data(ping, pair.now)           # its own frame comes back
    assert terminated(pair.take("server")).code == ErrorCode.PROTOCOL_VIOLATION


def test_frame_from_another_session_is_refused(codec_backend):
    pair = ConnectionPair().open()
    other = ConnectionPair(nonce=b"\x0a" * 8).open()
    other.client.send_ping(other.now)
    foreign = other.client.data_to_send()
    pair.server.receive_data(foreign, pair.now)
    assert terminated(pair.take("server")).code == ErrorCode.REPLAYED_NONCE


def test_client_does_not_trust_a_close_without_its_nonce(codec_backend):
    # PROTOCOL.md §10.2: a first server frame that does not echo the session nonce (here the
    # all-zero nonce of an unbound refusal) cannot be told from a forgery: REPLAYED_NONCE.
    pair = ConnectionPair()
    pair.client.initiate(pair.nonce, pair.now)
    unbound = ff.build(FrameType.CLOSE, payload={"code": int(ErrorCode.BAD_SIGNATURE)},
                       flags=Flag.RESPONDER, nonce=bytes(8))
    pair.client.receive_data(unbound, pair.now)
    event = terminated(pair.take("client"))
    assert (event.code, event.by_peer) == (ErrorCode.REPLAYED_NONCE, False)


def test_early_refusal_close_echoes_the_offending_nonce(codec_backend):
    # The server refuses a corrupted HELLO before any check bound the session nonce; its CLOSE
    # echoes the nonce read from the refused header, so the honest client learns the real code.
    # (PROTOCOL.md §5 notes, §10.2.)
    pair = ConnectionPair()
    pair.client.initiate(pair.nonce, pair.now)
    hello = pair.client.data_to_send()
    pair.server.receive_data(ff.flip_bit(hello, 8 * 45), pair.now)
    assert pair.server.next_event().code == ErrorCode.BAD_SIGNATURE
    close = pair.server.data_to_send()
    (decoded,) = decode_all(close, now=pair.now)
    assert decoded.nonce == pair.nonce and decoded.payload["code"] == ErrorCode.BAD_SIGNATURE
    pair.client.receive_data(close, pair.now)
    event = terminated(pair.take("client"))
    assert (event.code, event.by_peer) == (ErrorCode.BAD_SIGNATURE, True)


def test_refusal_of_a_headerless_message_uses_the_zero_nonce(codec_backend):
    server = _fresh_server()
    server.receive_frame(b"\x00" * 39, ff.NOW)
    (close,) = decode_all(server.data_to_send())
    assert close.nonce == bytes(8) and close.payload["code"] == ErrorCode.MALFORMED_FRAME


# ---- protocol violations close the session with the right code ------------------------------------

def _established_server():
    server = _fresh_server()
    server.receive_data(ff.build(), ff.NOW)
    server.next_event()
    server.data_to_send()
    return server


@pytest.mark.parametrize("frame,code", [
    (lambda: ff.build(FrameType.HELLO, sequence=1), ErrorCode.PROTOCOL_VIOLATION),   # 2nd HELLO
    (lambda: ff.build(FrameType.CHUNK, stream_id=5, sequence=1), ErrorCode.INVALID_STREAM),
    (lambda: ff.build(FrameType.CANCEL, stream_id=5, sequence=1), ErrorCode.INVALID_STREAM),
    (lambda: ff.build(FrameType.WINDOW_UPDATE, sequence=1), ErrorCode.PROTOCOL_VIOLATION),
    (lambda: ff.build(FrameType.PONG, sequence=1), ErrorCode.PROTOCOL_VIOLATION),
    (lambda: ff.build(FrameType.PING, sequence=1, flags=Flag.RESPONDER), ErrorCode.PROTOCOL_VIOLATION),
    (lambda: ff.build(FrameType.PING, sequence=1, nonce=b"\x07" * 8), ErrorCode.REPLAYED_NONCE),
    (lambda: ff.build(FrameType.PING, sequence=0), ErrorCode.SEQUENCE_REPLAY),
    (lambda: ff.build(FrameType.PING, sequence=1, key_id=1), ErrorCode.UNKNOWN_KEY),
    (lambda: ff.build(FrameType.PING, sequence=1, reserved=3), ErrorCode.MALFORMED_FRAME),
    (lambda: ff.build(FrameType.PING, sequence=1, payload={}), ErrorCode.MALFORMED_PAYLOAD),
    (lambda: ff.build(0x42, sequence=1, stream_id=0), ErrorCode.UNKNOWN_FRAME_TYPE),
    (lambda: ff.build(FrameType.PING, sequence=1, version=9), ErrorCode.UNSUPPORTED_VERSION),
    (lambda: ff.build(FrameType.PING, sequence=1, length=1 << 21), ErrorCode.FRAME_TOO_LARGE),
    (lambda: ff.build(FrameType.PING, sequence=1, key=ff.OTHER_KEY), ErrorCode.BAD_SIGNATURE),
], ids=["hello_again", "chunk_unopened", "cancel_unopened", "window_update_to_server",
        "pong_without_ping", "reflected_flag", "foreign_nonce", "old_sequence", "unknown_key",
        "reserved", "bad_shape", "unknown_type", "version", "too_large", "bad_mac"])
def test_violation_on_an_established_session(codec_backend, frame, code):
    server = _established_server()
    server.receive_data(frame(), ff.NOW)
    event = server.next_event()
    assert isinstance(event, ConnectionTerminated) and event.code == code and not event.by_peer
    assert server.closed and server.close_code == code
    (close,) = decode_all(server.data_to_send())
    assert close.type is FrameType.CLOSE and close.payload["code"] == code
    assert (close.sequence, close.nonce, close.flags) == (1, ff.NONCE, Flag.RESPONDER)
    server.receive_data(ff.build(FrameType.PING, sequence=2), ff.NOW)
    assert server.next_event() is None and server.data_to_send() == b""


@pytest.mark.parametrize("ftype", [FrameType.REQUEST, FrameType.PING, FrameType.CLOSE])
def test_server_requires_hello_first(codec_backend, ftype):
    server = _fresh_server()
    server.receive_data(ff.build(ftype), ff.NOW)
    assert server.next_event().code == ErrorCode.PROTOCOL_VIOLATION
    (close,) = decode_all(server.data_to_send())
    assert close.nonce == ff.NONCE and close.payload["code"] == ErrorCode.PROTOCOL_VIOLATION


def test_stream_ids_must_increase(codec_backend):
    server = _established_server()
    server.receive_data(ff.build(FrameType.REQUEST, stream_id=4, sequence=1), ff.NOW)
    assert isinstance(server.next_event(), RequestReceived)
    server.receive_data(ff.build(FrameType.REQUEST, stream_id=4, sequence=2), ff.NOW)
    assert server.next_event().code == ErrorCode.INVALID_STREAM


def test_late_cancel_on_a_forgotten_stream_is_dropped(codec_backend):
    server = _established_server()
    server.receive_data(ff.build(FrameType.REQUEST, stream_id=1, sequence=1), ff.NOW)
    server.next_event()
    server.send_end(1, USAGE)
    server.receive_data(ff.build(FrameType.CANCEL, stream_id=1, sequence=2), ff.NOW)
    assert server.next_event() is None and not server.closed


@pytest.mark.parametrize("ftype,sid", [(FrameType.REQUEST, 1), (FrameType.CANCEL, 1)])
def test_client_refuses_client_only_frames(codec_backend, ftype, sid):
    pair = ConnectionPair().open()
    pair.client.send_request(REQ)
    hostile = ff.build(ftype, stream_id=sid, flags=Flag.RESPONDER, sequence=1)
    pair.client.receive_data(hostile, pair.now)
    assert terminated(pair.take("client")).code == ErrorCode.PROTOCOL_VIOLATION


def test_late_frames_before_the_next_cut_are_processed_then_input_stops(codec_backend):
    server = _fresh_server()
    good = ff.build() + ff.build(FrameType.PING, sequence=1)
    bad = ff.build(FrameType.PING, sequence=2, key=ff.OTHER_KEY)
    after = ff.build(FrameType.PING, payload={"d": 2}, sequence=3)
    server.receive_data(good + bad + after, ff.NOW)
    events = [server.next_event() for _ in range(3)]
    assert [type(e) for e in events] == [SessionStarted, PingReceived, ConnectionTerminated]
    assert events[2].code == ErrorCode.BAD_SIGNATURE and server.next_event() is None
    types = [f.type for f in decode_all(server.data_to_send())]
    assert types == [FrameType.HELLO, FrameType.PONG, FrameType.CLOSE]


# ---- key rotation mid-session ---------------------------------------------------------------------

def test_key_rotation_mid_session(codec_backend):
    pair = ConnectionPair().open()
    sid = pair.client.send_request(REQ)
    pair.pump()
    pair.server.keyring.add(8, ff.OTHER_KEY)              # the server learns the new key first
    pair.client.keyring.rotate(8, ff.OTHER_KEY, now_ms=pair.now, grace_ms=1000)
    pair.server.send_chunk(sid, "old key")                # still signed with key 7
    pair.client.send_ping(pair.now)                       # signed with key 8
    pair.pump()
    assert pair.of_type("client", ChunkReceived)[0].text == "old key"
    assert ff.header(pair.wire["client"][-1])["key_id"] == 8
    pair.advance(1001)
    pair.server.send_end(sid, USAGE)                      # key 7 now expired for the client
    pair.pump()
    assert terminated(pair.take("client")).code == ErrorCode.UNKNOWN_KEY


def test_receive_frames_refuses_an_over_long_message_before_any_frame_in_it(codec_backend):
    # PROTOCOL.md §2.2: a Session message holds at most Limits.max_message bytes. Over it, the
    # whole message is refused with CLOSE 100 before its first frame (here the HELLO) is opened;
    # the CLOSE still echoes that frame's nonce, so the client can verify it.
    limits = Limits(max_message=200)
    server = Connection("server", ff.keyring(), limits=limits, nonce_cache=NonceCache(),
                        now_ms=ff.NOW)
    hello, ping = ff.build(), ff.build(FrameType.PING, sequence=1)
    assert len(hello + ping) <= 200 < len(hello + ping + ping)
    server.receive_frames(hello + ping + ff.build(FrameType.PING, sequence=2), ff.NOW)
    event = server.next_event()
    assert (event.code, event.by_peer) == (ErrorCode.MALFORMED_FRAME, False)
    assert server.next_event() is None                  # no SessionStarted: nothing was opened
    (close,) = decode_all(server.data_to_send())
    assert close.type == FrameType.CLOSE and close.nonce == ff.NONCE
    assert close.payload["code"] == ErrorCode.MALFORMED_FRAME
    exact = Connection("server", ff.keyring(), limits=limits, nonce_cache=NonceCache(),
                       now_ms=ff.NOW)
    exact.receive_frames(hello + ping, ff.NOW)          # at the limit: fine
    assert isinstance(exact.next_event(), SessionStarted) and not exact.closed

"""Hostile gRPC Session peers: over-long messages, garbage, calls reset mid-flush.

Every refusal must be an in-band ATP CLOSE (PROTOCOL.md §2.2), and a peer that vanishes while the
server writes must cost nothing but that call: no traceback from grpc's core in the server log.
"""
import asyncio
import inspect
import os
import time

import grpc
from grpc._cython import cygrpc

from atp_server.config import DEV_HMAC_KEY_ID, DEV_HMAC_SECRET
from atp_server.transport.grpc import batches
from codec import Connection, DEFAULT_LIMITS, FrameType, Keyring, open_frame, peek_length
from codec.errors import ErrorCode
from proto.atp.v1 import atp_pb2 as pb

KEYS = {DEV_HMAC_KEY_ID: DEV_HMAC_SECRET}


def now_ms() -> int:
    return int(time.time() * 1000)


def client() -> Connection:
    conn = Connection("client", Keyring(dict(KEYS), current_id=DEV_HMAC_KEY_ID), now_ms=now_ms())
    conn.initiate(os.urandom(8), now_ms())
    return conn


def session_call(channel):
    return channel.stream_stream("/atp.v1.Atp/Session",
                                 request_serializer=pb.Frame.SerializeToString,
                                 response_deserializer=pb.Frame.FromString)()


def frames_in(data: bytes) -> list:
    out, offset = [], 0
    while offset < len(data):
        end = offset + peek_length(data, offset)
        out.append(open_frame(data[:end], offset, Keyring(dict(KEYS)), now_ms=now_ms())[0])
        offset = end
    return out


def test_an_over_long_message_is_answered_with_an_in_band_close(atp_server):
    # A HELLO and five valid PINGs of ~1 MiB each in one 5 MiB message: over the documented
    # maximum (4 MiB - 1 KiB). grpc used to end the call itself (RESOURCE_EXHAUSTED, "larger
    # than max (5243075 vs. 4194304)") with no CLOSE at all.
    conn = client()
    pad = "x" * (DEFAULT_LIMITS.max_payload - 64)
    for i in range(5):
        conn.send_ping(now_ms())
        conn._send(FrameType.PING, 0, {"d": 100 + i, "pad": pad}, ordered=False)
    message = b"".join(conn.frames_to_send())
    assert DEFAULT_LIMITS.max_message < len(message) < 2 * DEFAULT_LIMITS.max_message

    async def go():
        async with grpc.aio.insecure_channel(atp_server.grpc_target) as channel:
            call = session_call(channel)
            await call.write(pb.Frame(data=message))
            received = []
            while (msg := await call.read()) is not grpc.aio.EOF:
                received += frames_in(msg.data)
            return received, await call.code()
    received, status = asyncio.run(asyncio.wait_for(go(), 60))
    assert [f.type for f in received] == [FrameType.CLOSE]      # not even a HELLO: refused whole
    assert received[0].payload["code"] == ErrorCode.MALFORMED_FRAME
    assert received[0].nonce == conn._guard.session_nonce       # echoed: the client can verify it
    assert status == grpc.StatusCode.OK


def test_batches_split_only_past_the_limit():
    assert list(batches([b"a" * 3, b"b" * 3], 6)) == [b"aaabbb"]
    assert list(batches([b"a" * 3, b"b" * 3, b"c" * 2], 6)) == [b"aaabbb", b"cc"]
    assert list(batches([b"a" * 9, b"b"], 6)) == [b"a" * 9, b"b"]    # a big frame goes alone
    assert list(batches([b"a", b"b" * 9, b"c"], 6)) == [b"a", b"b" * 9, b"c"]



class ResetMidWrite:
    """A servicer context whose call the peer resets while the server writes its second message:
    grpc's core then fails the write with ExecuteBatchError (what `context.write` raises)."""

    def __init__(self):
        self.written = []

    async def write(self, message):
        if self.written:
            raise cygrpc.ExecuteBatchError("Failed 'execute_batch': (SendMessageOperation,)")
        self.written.append(message)


async def drive(handler, request_iterator, context):
    """Run a stream-stream handler the way grpc.aio's server does
    (_finish_handler_with_stream_responses): a coroutine handler writes through the context
    itself; an async generator's items are written by grpc, outside the handler."""
    if inspect.iscoroutinefunction(handler):
        await handler(request_iterator, context)
    else:
        async for message in handler(request_iterator, context):
            await context.write(message)


def test_a_call_reset_mid_write_ends_as_a_cancellation_not_a_core_error(atp_server):
    # grpc logs "ExecuteBatchError raised in core by servicer method [/atp.v1.Atp/Session]" with
    # a traceback when the failed write surfaces before it noticed the client's reset (a race:
    # one hostile run in five). A CancelledError from the handler is what grpc itself uses for
    # a cancelled call: logged at debug, no status sent on the dead call.
    conn = client()
    conn.send_request({"messages": [["user", "hi"]], "max_tokens": 50}, now_ms())
    opening = b"".join(conn.frames_to_send())
    done_reading = asyncio.Event()

    async def requests():
        yield pb.Frame(data=opening)
        await done_reading.wait()          # the client never half-closes: it resets

    async def go():
        transport = atp_server.app.transports[[type(t).__name__ for t in
                                               atp_server.app.transports].index("GrpcTransport")]
        context = ResetMidWrite()
        try:
            await drive(transport.Session, requests(), context)
        except asyncio.CancelledError:
            outcome = "cancelled"
        except cygrpc.ExecuteBatchError:
            outcome = "core error"
        finally:
            done_reading.set()
        return outcome, context.written, transport._calls
    outcome, written, calls = atp_server.run(go())
    assert outcome == "cancelled"
    assert frames_in(written[0].data)[0].type == FrameType.HELLO
    assert not calls                      # the session was torn down (its streams cancelled)

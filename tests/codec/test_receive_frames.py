"""Connection.receive_frames: a message of whole frames back to back (the gRPC Session carriage)."""
from codec import Connection, ConnectionConfig, Keyring, NonceCache, events as ev
from codec.errors import ErrorCode

KEY = bytes(range(32))
NONCE = bytes.fromhex("1122334455667788")


def pair():
    client = Connection("client", Keyring({1: KEY}), now_ms=1000)
    server = Connection("server", Keyring({1: KEY}), nonce_cache=NonceCache(), now_ms=1000,
                        config=ConnectionConfig())
    client.initiate(NONCE, 1000)
    return client, server


def drain(conn):
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def test_several_frames_in_one_message(codec_backend):
    client, server = pair()
    for i in range(3):
        client.send_request({"messages": [["user", f"q{i}"]]}, 1000)
    message = client.data_to_send()               # HELLO + 3 REQUESTs in one message
    server.receive_frames(message, 1001)
    events = drain(server)
    assert [type(e) for e in events] == [ev.SessionStarted] + [ev.RequestReceived] * 3
    assert not server.closed


def test_message_ending_inside_a_frame_is_malformed(codec_backend):
    client, server = pair()
    client.send_request({"messages": [["user", "q"]]}, 1000)
    message = client.data_to_send()
    server.receive_frames(message[:-5], 1001)     # the REQUEST lost its last 5 bytes
    events = drain(server)
    assert isinstance(events[0], ev.SessionStarted)
    assert isinstance(events[-1], ev.ConnectionTerminated)
    assert events[-1].code == ErrorCode.MALFORMED_FRAME and server.closed
    assert not any(isinstance(e, ev.RequestReceived) for e in events)


def test_empty_message_is_harmless(codec_backend):
    client, server = pair()
    server.receive_frames(b"", 1001)
    assert drain(server) == [] and not server.closed

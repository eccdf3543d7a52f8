"""Every frame a Connection emits carries deterministic CBOR, even via the cheap ordered encoder."""
from hypothesis import HealthCheck, given, settings, strategies as st

from codec import Connection, ConnectionConfig, Keyring, NonceCache
from codec.frame import HEADER_SIZE, TAG_SIZE, peek_length
from codec.payload import decode, encode

KEY = bytes(range(32))
texts = st.text(max_size=40)
uints = st.integers(min_value=0, max_value=2**64 - 1)


def split(data: bytes):
    offset = 0
    while offset < len(data):
        size = peek_length(data, offset)
        yield data[offset:offset + size]
        offset += size


def assert_deterministic(data: bytes) -> int:
    count = 0
    for frame in split(data):
        payload = frame[HEADER_SIZE:-TAG_SIZE]
        assert encode(decode(payload)) == payload, payload.hex()
        count += 1
    return count


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, tokens=st.integers(0, 2**32), usage=st.fixed_dictionaries(
    {"in": uints, "out": uints, "cost": uints},
    optional={"model": texts, "provider": texts, "finish": texts, "overhead_us": uints,
              "rid": texts}),
    code=st.integers(0, 999), message=texts, retry_after=st.integers(0, 2**31))
def test_emitted_frames_are_canonical(codec_backend, text, tokens, usage, code, message, retry_after):
    client = Connection("client", Keyring({1: KEY}), now_ms=1000)
    server = Connection("server", Keyring({1: KEY}), nonce_cache=NonceCache(), now_ms=1000,
                        config=ConnectionConfig(agent=text or "x"))
    client.initiate(bytes(range(1, 9)), 1000)
    sids = [client.send_request({"messages": [["user", text]], "temperature": 0.5}, 1000)
            for _ in range(3)]
    client.send_ping(1000)
    frames = client.data_to_send()
    emitted = assert_deterministic(frames)
    server.receive_data(frames, 1001)
    server.send_chunk(sids[0], text, tokens)
    server.send_end(sids[0], usage)
    server.send_error(sids[1], code, message, retry_after)
    out = server.data_to_send()                     # HELLO, PONG, CHUNK, END, ERROR, WINDOW_UPDATE
    emitted += assert_deterministic(out)
    client.receive_data(out, 1002)
    client.send_cancel(sids[2], 1003)
    emitted += assert_deterministic(client.data_to_send())
    server.receive_data(b"", 1004)
    server.close(7, message)
    emitted += assert_deterministic(server.data_to_send())
    assert emitted >= 12

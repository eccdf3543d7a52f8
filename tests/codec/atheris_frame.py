#!/usr/bin/env python
"""Coverage-guided fuzzing (atheris/libFuzzer) of the codec receive path. Not collected by pytest.

    pip install atheris
    python tests/codec/atheris_frame.py -max_total_time=60 [-jobs=1] [corpus_dir]
    ATP_FUZZ_BACKEND=native python tests/codec/atheris_frame.py -runs=1000000

The first input byte picks a mode; the rest is the frame bytes:
  0: open_frame on the raw bytes
  1: the bytes with their length field fixed and their tag recomputed (the MAC always passes, so
     libFuzzer explores the reserved/flags/type/stream/CBOR/shape checks)
  2: a server Connection.receive_data on the raw bytes
  3: a server Connection.receive_frame on the fixed-and-resigned bytes
Anything but a codec.CodecError out of open_frame, any exception out of a Connection, or a
Connection that ends without a signed CLOSE carrying its code, is a crash.
"""
import os
import pathlib
import struct
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import cbor2  # noqa: F401
    import codec
    from codec import (CodecError, Connection, ConnectionTerminated, ErrorCode, FrameType,
                       NonceCache, backend, open_frame)

from tests.codec import frame_factory as ff  # noqa: E402

backend.use(os.environ.get("ATP_FUZZ_BACKEND", "pure"))
KEYRING = ff.keyring()
CODES = frozenset(int(c) for c in ErrorCode)


def _fixed_and_resigned(body: bytes) -> bytes:
    if len(body) < 72:
        return body
    fixed = bytearray(body)
    struct.pack_into(">I", fixed, 0, len(body) - 72)
    return ff.resign(bytes(fixed))


def _check_open(data: bytes) -> None:
    try:
        result = open_frame(data, 0, KEYRING, codec.DEFAULT_LIMITS, ff.NOW)
    except CodecError as exc:
        assert int(exc.code) in CODES
        return
    if result is not None:
        frame, end = result
        assert frame.size == end <= len(data) and type(frame.payload) is dict


def _check_connection(data: bytes, as_message: bool) -> None:
    server = Connection("server", KEYRING, nonce_cache=NonceCache(), now_ms=ff.NOW)
    if as_message:
        server.receive_frame(data, ff.NOW)
    else:
        server.receive_data(data, ff.NOW)
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    out = server.data_to_send()
    frames, offset = [], 0
    while offset < len(out):
        frame, offset = open_frame(out, offset, KEYRING, codec.DEFAULT_LIMITS, ff.NOW)
        frames.append(frame)
    ends = [e for e in events if isinstance(e, ConnectionTerminated)]
    if server.closed and not ends[0].by_peer:
        assert len(ends) == 1 and ends[0].code in CODES
        assert frames[-1].type is FrameType.CLOSE and frames[-1].payload["code"] == ends[0].code
    elif not server.closed:
        assert ends == []


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == 0:
        _check_open(body)
    elif mode == 1:
        _check_open(_fixed_and_resigned(body))
    elif mode == 2:
        _check_connection(body, as_message=False)
    else:
        _check_connection(_fixed_and_resigned(body), as_message=True)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

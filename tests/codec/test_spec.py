"""docs/PROTOCOL.md against the codec: what an implementer reads in the tables is what the code does.

Only rules that a table or a sentence states in a fixed form are parsed here; the byte-level
rules are held to the code by the vectors (tests/vectors/frames.json).
"""
import re
from pathlib import Path

from codec import (Connection, ConnectionConfig, ErrorCode, Flag, FrameType, NonceCache,
                   StreamReset, open_frame)

from . import frame_factory as ff
from .pair import ConnectionPair

SPEC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
REQ = {"messages": [["user", "hello"]], "max_tokens": 100}


def section(number: str) -> str:
    """The text of `## <number>.` or `### <number>` up to the next heading of that level or above."""
    level = "##" if "." not in number else "###"
    m = re.search(rf"^{level} {re.escape(number)}\.? .*?$(.*?)(?=^#{{2,{len(level)}}} )", SPEC,
                  re.M | re.S)
    assert m, f"PROTOCOL.md has no section {number}"
    return m.group(1)


def table(text: str) -> list[list[str]]:
    """Rows (cells stripped) of the first markdown table in `text`, header and rule excluded."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def scopes() -> dict[int, set[str]]:
    """§7: code -> the scopes (C, S) it is documented for."""
    return {int(r[0]): {s.strip() for s in r[3].split(",")} for r in table(section("7"))}


def violations() -> dict[str, str]:
    """§12: limit name -> its "On violation" cell."""
    return {r[0]: r[3] for r in table(section("12"))}


def test_live_stream_cap_is_documented_as_the_stream_error_the_codec_sends(codec_backend):
    pair = ConnectionPair(server_config=ConnectionConfig(max_open_streams=1)).open()
    sids = [pair.client.send_request(REQ) for _ in range(2)]
    pair.pump()
    resets = [e for e in pair.take("client") if isinstance(e, StreamReset)]
    assert [(r.stream_id, r.code) for r in resets] == [(sids[1], ErrorCode.WINDOW_EXCEEDED)]
    assert not pair.server.closed          # what the codec does: a stream error, retryable

    assert violations()["Live streams per session"].startswith("S 300")
    cap = re.search(r"hard cap of live streams.*?(?:\n\n|$)", section("8.3"), re.S).group(0)
    assert "stream error" in cap and "connection error" not in cap, cap
    step17 = section("5")
    assert re.search(r"max open streams \(1024\) would be live: \*\*stream\*\* error", step17)


def test_every_limit_violation_uses_a_code_in_its_documented_scope():
    documented = scopes()
    for limit, cell in violations().items():
        for scope, code in re.findall(r"\b([CS]) (\d{3})\b", cell):
            assert scope in documented[int(code)], (limit, cell, documented[int(code)])


# ---- §5 step 14: refusals before the nonce is bound echo the refused frame's nonce ---------------

def _refusal(frame):
    server = Connection("server", ff.keyring(), nonce_cache=NonceCache(), now_ms=ff.NOW)
    server.receive_data(frame, ff.NOW)
    close, _ = open_frame(server.data_to_send(), 0, ff.keyring(), now_ms=ff.NOW)
    return close.payload["code"], close.nonce


def test_step_14_refusals_before_binding_echo_the_nonce(codec_backend):
    other = b"\x42" * 8
    assert _refusal(ff.build(sequence=1, nonce=other)) == (ErrorCode.PROTOCOL_VIOLATION, other)
    assert _refusal(ff.build(FrameType.REQUEST, nonce=other)) == (ErrorCode.PROTOCOL_VIOLATION,
                                                                  other)
    # the all-zero nonce: 105 even though the timestamp is stale too (it is checked first)
    zero = ff.build(nonce=bytes(8), timestamp_ms=ff.NOW - 10**6)
    assert _refusal(zero) == (ErrorCode.PROTOCOL_VIOLATION, bytes(8))
    assert "all-zero opening nonce" in dict((r[1], r[5]) for r in table(section("7")))[
        "PROTOCOL_VIOLATION"]


# ---- §4.1 / §5 step 17: the code for a frame type sent by the wrong role --------------------------

def test_wrong_role_codes_are_the_ones_4_1_names(codec_backend):
    wrong = {}
    for ftype in (FrameType.CHUNK, FrameType.END, FrameType.ERROR):       # to a server
        pair = ConnectionPair().open()
        sid = pair.client.send_request(REQ)
        pair.pump()
        pair.server.receive_data(ff.build(ftype, stream_id=sid, sequence=2), pair.now)
        wrong[("server", ftype.name)] = pair.server.close_code
    pair = ConnectionPair().open()
    pair.server.receive_data(ff.build(FrameType.WINDOW_UPDATE, sequence=1), pair.now)
    wrong[("server", "WINDOW_UPDATE")] = pair.server.close_code
    for ftype in (FrameType.REQUEST, FrameType.CANCEL):                    # to a client
        pair = ConnectionPair().open()
        sid = pair.client.send_request(REQ)
        pair.pump()
        pair.client.receive_data(ff.build(ftype, stream_id=sid + 1, sequence=1,
                                          flags=Flag.RESPONDER), pair.now)
        wrong[("client", ftype.name)] = pair.client.close_code
    assert wrong == {("server", "CHUNK"): 106, ("server", "END"): 106, ("server", "ERROR"): 106,
                     ("server", "WINDOW_UPDATE"): 105, ("client", "REQUEST"): 105,
                     ("client", "CANCEL"): 105}
    text = " ".join(section("4.1").split())
    assert "`PROTOCOL_VIOLATION` (105) for REQUEST or CANCEL received by a client and " \
           "WINDOW_UPDATE received by a server" in text
    assert "`INVALID_STREAM` (106) on a never-opened or live stream" in text

"""Deterministic generator of the ATP cross-implementation test vectors (tests/vectors/frames.json).

Everything is fixed: keys, nonces, timestamps, payloads. Running it twice gives byte-identical
output, and tests/codec/test_vectors.py holds the committed frames.json to that. The format is
described in tests/vectors/README.md.

    python tests/vectors/generate.py            # rewrite frames.json next to this script
    python tests/vectors/generate.py --check    # exit 1 if frames.json is not the current output
    python tests/vectors/generate.py -o PATH    # write somewhere else

Good frames are built with codec.frame.seal; deliberately broken frames are assembled by hand and
signed with codec._pure.HmacKey over exactly the bytes that travel. Before writing, every case is
replayed through codec.frame.open_frame + codec.replay.SessionGuard and the generator stops if the
Python codec disagrees with what the vector claims (so the file never records a surprise).
"""
import argparse
import hashlib
import json
import math
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codec import Keyring  # noqa: E402
from codec._pure import HmacKey  # noqa: E402
from codec.errors import CodecError, ErrorCode  # noqa: E402
from codec.frame import HEADER_SIZE, Flag, FrameType, open_frame, seal  # noqa: E402
from codec.payload import DEFAULT_LIMITS, decode, encode  # noqa: E402
from codec.replay import DEFAULT_SKEW_MS, DEFAULT_WINDOW, NonceCache, SessionGuard  # noqa: E402

OUTPUT = Path(__file__).resolve().parent / "frames.json"
FORMAT = 1
HEADER = struct.Struct(">IBBBBIIQQ8s")

# ---- fixed material -----------------------------------------------------------------------------

T0 = 1_767_225_600_000                      # 2026-01-01T00:00:00Z, the clock of most cases
OLD_KEY_ID = 1                              # rotated out: verifies until OLD_KEY_EXPIRY
KEY_ID = 2                                  # the current key
UNKNOWN_KEY_ID = 99
OLD_KEY_EXPIRY = T0 + 3_600_000
SECRETS = {
    OLD_KEY_ID: hashlib.sha256(b"ATP test vectors: key 1 (rotated out)").digest(),
    KEY_ID: hashlib.sha256(b"ATP test vectors: key 2 (current)").digest(),
}
SKEW = DEFAULT_SKEW_MS
WINDOW = DEFAULT_WINDOW
LIMITS = DEFAULT_LIMITS
R = int(Flag.RESPONDER)
C = int(Flag.CONGESTION)

HELLO, REQUEST, CHUNK, END, ERROR = (FrameType.HELLO, FrameType.REQUEST, FrameType.CHUNK,
                                     FrameType.END, FrameType.ERROR)
WINDOW_UPDATE, PING, PONG, CLOSE, CANCEL = (FrameType.WINDOW_UPDATE, FrameType.PING,
                                            FrameType.PONG, FrameType.CLOSE, FrameType.CANCEL)


def nonce_for(label: str) -> bytes:
    return hashlib.sha256(b"ATP test vectors: nonce " + label.encode()).digest()[:8]


def keyring() -> Keyring:
    ring = Keyring()
    ring.add(OLD_KEY_ID, SECRETS[OLD_KEY_ID], expires_ms=OLD_KEY_EXPIRY)
    ring.add(KEY_ID, SECRETS[KEY_ID])
    ring.set_current(KEY_ID)
    return ring


# ---- frame builders -----------------------------------------------------------------------------

def good(ftype, payload, *, seq, ts, nonce, stream=0, flags=0, key_id=KEY_ID):
    """A well-formed frame from codec.frame.seal, plus the fields a receiver must decode."""
    signer = Keyring({key_id: SECRETS[key_id]}).signer
    raw = seal(signer, key_id, ftype, flags, stream, seq, ts, nonce, payload)
    body = encode(payload)
    assert raw == raw_frame(ftype, body, seq=seq, ts=ts, nonce=nonce, stream=stream,
                            flags=flags, key_id=key_id), "seal and the hand-built frame disagree"
    fields = {"type": ftype.name, "type_id": int(ftype), "flags": flags, "key_id": key_id,
              "stream_id": stream, "sequence": seq, "timestamp_ms": ts, "nonce": nonce.hex(),
              "payload": to_json(decode(body)), "payload_hex": body.hex()}
    return raw, fields


def raw_frame(ftype, body: bytes, *, seq, ts, nonce, stream=0, flags=0, key_id=KEY_ID,
              version=1, reserved=0, length=None, sign_with=None, tag=None):
    """Header + body + tag, assembled by hand; signed with `sign_with` (a key id) or key_id."""
    header = HEADER.pack(len(body) if length is None else length, version, int(ftype), flags,
                         reserved, key_id, stream, seq, ts, nonce)
    if tag is None:
        secret = SECRETS[sign_with if sign_with is not None else
                         (key_id if key_id in SECRETS else KEY_ID)]
        tag = HmacKey(secret).sign(header + body)
    return header + body + tag


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


# ---- JSON form of payloads ----------------------------------------------------------------------

def to_json(value):
    """CBOR data model (as decoded by codec.payload) -> the vectors' JSON form."""
    if value is None or type(value) in (bool, str, int):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError("the JSON form has no NaN/Infinity: keep them out of good vectors")
        return value
    if type(value) is bytes:
        return {"$bytes": value.hex()}
    if type(value) is list:
        return [to_json(v) for v in value]
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise ValueError("the JSON form only has text map keys")
            out[k] = to_json(v)
        if len(out) == 1 and "$bytes" in out:
            raise ValueError("a map whose only key is $bytes would read back as a byte string")
        return out
    raise TypeError(f"no JSON form for {type(value).__name__}")


# ---- cases --------------------------------------------------------------------------------------

class Case:
    def __init__(self, name, description, receiver="server", session_nonce=None):
        assert receiver in ("server", "client")
        assert (receiver == "client") == (session_nonce is not None)
        self.name = name
        self.description = description
        self.receiver = receiver
        self.session_nonce = session_nonce
        self.frames = []
        self.seq = 0

    def ok(self, raw_and_fields, now, *, new_session=False, note=None):
        raw, fields = raw_and_fields
        self._add(raw, now, new_session, note, {"ok": True, **fields})
        return raw

    def bad(self, raw, now, code, *, new_session=False, note=None):
        code = ErrorCode(code)
        self._add(raw, now, new_session, note, {"ok": False, "code": int(code), "error": code.name})
        return raw

    def _add(self, raw, now, new_session, note, expect):
        if self.frames and not self.frames[-1]["expect"]["ok"] and not new_session:
            raise AssertionError(f"{self.name}: a failed frame ends its session")
        frame = {"hex": raw.hex(), "now_ms": now, "new_session": new_session}
        if note:
            frame["note"] = note
        frame["expect"] = expect
        self.frames.append(frame)

    def to_json(self):
        out = {"name": self.name, "description": self.description, "receiver": self.receiver}
        if self.session_nonce is not None:
            out["session_nonce"] = self.session_nonce.hex()
        out["frames"] = self.frames
        return out


AGENT = {"agent": "atp-vectors/1"}
SERVER_HELLO = {"agent": "atp-gateway/1", "win": [64, 1 << 20, 100_000_000], "hb_ms": 15_000,
                "idle_ms": 60_000, "max_payload": 1 << 20}
MESSAGES = [["user", "Say hi"]]
HELLO_CBOR = encode(AGENT)


def server_case(name, description):
    """A case whose receiver is a server; returns (case, nonce, a sealed client HELLO at T0)."""
    case = Case(name, description)
    nonce = nonce_for(name)
    return case, nonce, good(HELLO, AGENT, seq=0, ts=T0, nonce=nonce)


def client_case(name, description):
    """A case whose receiver is a client that opened the session with nonce_for(name)."""
    nonce = nonce_for(name)
    return Case(name, description, "client", nonce), nonce


def build_cases():
    cases = []
    add = cases.append

    # ---------------------------------------------------------------- good: every frame type
    c, n, hello = server_case("hello_from_client", "A client opens a session: HELLO with agent, "
                              "sequence 0, stream 0, a fresh nonce and the current time.")
    c.ok(hello, T0)
    add(c)

    c, n = client_case("hello_from_server", "The server accepts the session: HELLO with the "
                       "RESPONDER flag, echoing the client's nonce, granting its window "
                       "(requests, tokens, USD micros), heartbeat and idle timeout and its "
                       "payload limit.")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    add(c)

    c, n, hello = server_case("request_all_fields", "A REQUEST using every field its schema "
                              "knows, with a float temperature, a meta map and non-ASCII text.")
    c.ok(hello, T0)
    c.ok(good(REQUEST, {
        "messages": [["system", "You are terse."], ["user", "Dis bonjour \u2014 \u00abvite\u00bb "
                                                     "\U0001F44B"]],
        "model": "gpt-x-mini", "tier": "balanced", "max_tokens": 256, "max_cost": 5000,
        "slo_ms": 2000, "tenant": "acme", "caps": ["tools", "json"], "temperature": 0.7,
        "stream": True, "meta": {"trace": "4bf92f3577b34da6", "env": "test"}, "rid": "req-0001",
    }, seq=1, ts=T0 + 10, nonce=n, stream=1), T0 + 10)
    add(c)

    c, n, hello = server_case("request_minimal_and_integer_temperature",
                              "REQUESTs with only the required key, then with an integer "
                              "temperature (num accepts integers within +-2^53) and tier "
                              "fast/high.")
    c.ok(hello, T0)
    c.ok(good(REQUEST, {"messages": MESSAGES}, seq=1, ts=T0 + 10, nonce=n, stream=1), T0 + 10)
    c.ok(good(REQUEST, {"messages": MESSAGES, "temperature": 1, "tier": "fast"}, seq=2,
              ts=T0 + 20, nonce=n, stream=3), T0 + 20)
    c.ok(good(REQUEST, {"messages": MESSAGES, "temperature": -(1 << 53), "tier": "high"}, seq=3,
              ts=T0 + 30, nonce=n, stream=5), T0 + 30)
    add(c)

    c, n, hello = server_case("unknown_keys_ignored",
                              "Keys a schema does not know are ignored (forward compatibility), "
                              "whatever they hold: byte strings, null, negative and 64-bit "
                              "integers, floats of every width, nested maps. Encoders: floats use "
                              "the shortest IEEE form that is exact (f16/f32/f64, -0.0 stays a "
                              "float), map keys sort by their encoded bytes (shorter first).")
    c.ok(hello, T0)
    c.ok(good(REQUEST, {
        "messages": MESSAGES,
        "x_bytes": b"\x00\xffATP", "x_null": None, "x_neg": -1, "x_u64_max": (1 << 64) - 1,
        "x_neg_min": -(1 << 64), "x_ints": [0, 23, 24, 255, 256, 65535, 65536, 4294967295,
                                              4294967296, -24, -25, -256, -257],
        "x_floats": [0.5, 1.5, 100000.0, 1.1, -0.0, 0.0, 65504.0, 5.960464477539063e-08,
                     1.401298464324817e-45, 1e300, 3.4028234663852886e38],
        "x_map": {"b": 1, "aa": [True, False], "a": {}, "": "empty key"},
        "x_empty": [], "x_text": "", "x_a_key_longer_than_twenty_three_bytes": "long key",
    }, seq=1, ts=T0 + 10, nonce=n, stream=1), T0 + 10)
    add(c)

    c, n, hello = server_case("nesting_at_depth_limit",
                              "A payload nested exactly max_depth (8) containers deep, the "
                              "top-level map counting as 1: accepted.")
    c.ok(good(HELLO, {"agent": "deep", "x": [[[[[[["bottom"]]]]]]]}, seq=0, ts=T0, nonce=n), T0)
    add(c)

    c = Case("nesting_empty_innermost_at_depth_limit",
             "Exactly max_depth (8) containers whose innermost one is empty: an empty array, "
             "then (second session) an empty map. Accepted: an empty container is a level like "
             "any other, neither free nor extra.")
    c.ok(good(HELLO, {"agent": "deep", "x": [[[[[[[]]]]]]]}, seq=0, ts=T0,
              nonce=nonce_for(c.name + "/array")), T0)
    c.ok(good(HELLO, {"agent": "deep", "x": [[[[[[{}]]]]]]}, seq=0, ts=T0,
              nonce=nonce_for(c.name + "/map")), T0, new_session=True)
    add(c)

    c, n, hello = server_case("limits_apply_to_interpreted_containers",
                              "max_map_size and max_array_len bound the top-level map and the "
                              "containers a schema interprets (messages, caps, meta); a map or "
                              "array under an unknown key is bounded only by max_payload and "
                              "max_depth.")
    c.ok(good(HELLO, {"agent": "big", "x_map": {f"k{i:02d}": i for i in range(65)},
                      "x_list": list(range(1025))}, seq=0, ts=T0, nonce=n), T0)
    add(c)

    c, n = client_case("stream_chunks_and_end", "Server side of a stream: HELLO, two CHUNKs "
                       "(one with a token count, UTF-8 text) and the END with usage.")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    c.ok(good(CHUNK, {"i": 0, "text": "Bon", "tok": 1}, seq=1, ts=T0 + 40, nonce=n, stream=1,
              flags=R), T0 + 45)
    c.ok(good(CHUNK, {"i": 1, "text": "jour \U0001F44B"}, seq=2, ts=T0 + 50, nonce=n, stream=1,
              flags=R), T0 + 55)
    c.ok(good(END, {"in": 12, "out": 3, "cost": 42, "model": "gpt-x-mini", "provider": "openai",
                    "finish": "stop", "overhead_us": 850}, seq=3, ts=T0 + 60, nonce=n, stream=1,
              flags=R), T0 + 65)
    add(c)

    c, n = client_case("end_with_rid", "END echoing the REQUEST's rid (a client request id, "
                       "text), beside the usage keys; an END of a REQUEST without rid carries "
                       "rid \"\".")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    c.ok(good(END, {"in": 3, "out": 1, "cost": 7, "rid": "req-0001"}, seq=1, ts=T0 + 40, nonce=n,
              stream=1, flags=R), T0 + 45)
    c.ok(good(END, {"in": 3, "out": 1, "cost": 7, "rid": ""}, seq=2, ts=T0 + 50, nonce=n,
              stream=3, flags=R), T0 + 55)
    add(c)

    c, n = client_case("stream_error", "A stream ends in ERROR: code, message, retry hint.")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    c.ok(good(ERROR, {"code": 301, "msg": "overloaded", "retry": True, "after_ms": 500}, seq=1,
              ts=T0 + 40, nonce=n, stream=1, flags=R), T0 + 45)
    add(c)

    c, n = client_case("window_update", "The server grants credit: WINDOW_UPDATE with all three "
                       "increments, then one with none (every key is optional).")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    c.ok(good(WINDOW_UPDATE, {"req": 1, "tok": 256, "usd": 5000}, seq=1, ts=T0 + 40, nonce=n,
              flags=R), T0 + 45)
    c.ok(good(WINDOW_UPDATE, {}, seq=2, ts=T0 + 50, nonce=n, flags=R), T0 + 55)
    add(c)

    c, n, hello = server_case("ping_from_client", "A client heartbeat: PING on stream 0.")
    c.ok(hello, T0)
    c.ok(good(PING, {"d": 1}, seq=1, ts=T0 + 10, nonce=n), T0 + 10)
    add(c)

    c, n = client_case("pong_and_ping_from_server", "The server answers the client's PING with "
                       "PONG, then sends its own PING.")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    c.ok(good(PONG, {"d": 1}, seq=1, ts=T0 + 40, nonce=n, flags=R), T0 + 45)
    c.ok(good(PING, {"d": 7}, seq=2, ts=T0 + 50, nonce=n, flags=R), T0 + 55)
    add(c)

    c, n, hello = server_case("close_from_client", "The client closes the session: CLOSE with "
                              "code 0 (NO_ERROR) and a message.")
    c.ok(hello, T0)
    c.ok(good(CLOSE, {"code": 0, "msg": "bye"}, seq=1, ts=T0 + 10, nonce=n), T0 + 10)
    add(c)

    c, n, hello = server_case("cancel_stream", "The client opens a stream, then abandons it "
                              "with CANCEL (code 505 CANCELLED).")
    c.ok(hello, T0)
    c.ok(good(REQUEST, {"messages": MESSAGES, "max_tokens": 64}, seq=1, ts=T0 + 10, nonce=n,
              stream=1), T0 + 10)
    c.ok(good(CANCEL, {"code": 505}, seq=2, ts=T0 + 20, nonce=n, stream=1), T0 + 20)
    add(c)

    c, n = client_case("server_refuses_with_close", "The server refuses the session: its first "
                       "frame is CLOSE (not HELLO), echoing the client's nonce.")
    c.ok(good(CLOSE, {"code": 206, "msg": "tenant not allowed"}, seq=0, ts=T0 + 20, nonce=n,
              flags=R), T0 + 25)
    add(c)

    c, n = client_case("congestion_flag", "The CONGESTION flag (0x01) may ride on any frame, "
                       "together with RESPONDER.")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    c.ok(good(CHUNK, {"i": 0, "text": "slow"}, seq=1, ts=T0 + 40, nonce=n, stream=1,
              flags=R | C), T0 + 45)
    add(c)

    c, n, hello = server_case("congestion_flag_from_client", "A client may set CONGESTION too.")
    c.ok(hello, T0)
    c.ok(good(PING, {"d": 2}, seq=1, ts=T0 + 10, nonce=n, flags=C), T0 + 10)
    add(c)

    # ---------------------------------------------------------------- good: keys, time, window
    c = Case("key_rotation_grace", f"Key {OLD_KEY_ID} was rotated out and verifies until "
             f"{OLD_KEY_EXPIRY} ms (inclusive); frames under it are still accepted until then, "
             f"mixed with frames under the new key {KEY_ID}.")
    n = nonce_for(c.name)
    t = OLD_KEY_EXPIRY - 1000
    c.ok(good(HELLO, AGENT, seq=0, ts=t, nonce=n, key_id=OLD_KEY_ID), t)
    c.ok(good(PING, {"d": 1}, seq=1, ts=t + 10, nonce=n, key_id=KEY_ID), t + 10)
    c.ok(good(PING, {"d": 2}, seq=2, ts=OLD_KEY_EXPIRY, nonce=n, key_id=OLD_KEY_ID),
         OLD_KEY_EXPIRY, note="now == the key's expiry: still inside the grace period")
    add(c)

    c, n, _ = server_case("sequence_out_of_order_in_window", "Sequence numbers may arrive out of "
                          "order (datagram transports): 0, 2, 1, 3 are all accepted once.")
    for i, seq in enumerate((0, 2, 1, 3)):
        ftype, payload = (HELLO, AGENT) if seq == 0 else (PING, {"d": seq})
        c.ok(good(ftype, payload, seq=seq, ts=T0 + i, nonce=n), T0 + i)
    add(c)

    c, n, hello = server_case("sequence_window_edge", f"After sequence 64 the window ({WINDOW} "
                              "wide) still holds 1 (64 - 1 = 63 back): accepted.")
    c.ok(hello, T0)
    c.ok(good(PING, {"d": 64}, seq=64, ts=T0 + 1, nonce=n), T0 + 1)
    c.ok(good(PING, {"d": 1}, seq=1, ts=T0 + 2, nonce=n), T0 + 2)
    add(c)

    c = Case("timestamp_skew_edges", f"An opening HELLO may be up to {SKEW} ms behind or ahead "
             "of the receiver's clock (inclusive). Two sessions, two nonces.")
    c.ok(good(HELLO, AGENT, seq=0, ts=T0 - SKEW, nonce=nonce_for(c.name + "/past"), ), T0,
         note=f"timestamp = now - {SKEW}")
    c.ok(good(HELLO, AGENT, seq=0, ts=T0 + SKEW, nonce=nonce_for(c.name + "/future")), T0,
         new_session=True, note=f"timestamp = now + {SKEW}")
    add(c)

    c = Case("later_frames_timestamps_unchecked", "Only the opening HELLO's timestamp is checked "
             "against the clock; later frames are bound by the session nonce and the sequence "
             "window, so their timestamps are not compared with now.")
    n = nonce_for(c.name)
    c.ok(good(HELLO, AGENT, seq=0, ts=T0, nonce=n), T0)
    c.ok(good(PING, {"d": 1}, seq=1, ts=T0 - 10 * SKEW, nonce=n), T0 + 10)
    add(c)

    # ---------------------------------------------------------------- bad: framing
    c, n, hello = server_case("truncated_frame", "A frame whose bytes end early (the tag is cut "
                              "short). After the last frame of a case the input ends, so an "
                              "incomplete frame is MALFORMED_FRAME.")
    c.bad(hello[0][:-10], T0, ErrorCode.MALFORMED_FRAME, note="incomplete at end of input")
    add(c)

    c, n, hello = server_case("truncated_header", "Only 20 bytes of a 40-byte header: incomplete "
                              "at end of input.")
    c.bad(hello[0][:20], T0, ErrorCode.MALFORMED_FRAME, note="incomplete at end of input")
    add(c)

    c, n, hello = server_case("truncated_after_good_frame", "A good HELLO, then a PING cut inside "
                              "its payload.")
    c.ok(hello, T0)
    ping = good(PING, {"d": 1}, seq=1, ts=T0 + 10, nonce=n)[0]
    c.bad(ping[:HEADER_SIZE + 2], T0 + 10, ErrorCode.MALFORMED_FRAME,
          note="incomplete at end of input")
    add(c)

    c, n, _ = server_case("payload_length_over_limit", f"A header announcing "
                          f"{LIMITS.max_payload + 1} payload bytes (limit {LIMITS.max_payload}): "
                          "refused as soon as the header is read, before buffering the rest, so "
                          "the vector is the 40-byte header alone.")
    c.bad(HEADER.pack(LIMITS.max_payload + 1, 1, HELLO, 0, 0, KEY_ID, 0, 0, T0, n), T0,
          ErrorCode.FRAME_TOO_LARGE, note="length is checked before completeness")
    add(c)

    c, n, _ = server_case("unsupported_version", "Header version 2 (correctly signed).")
    c.bad(raw_frame(HELLO, HELLO_CBOR, seq=0, ts=T0, nonce=n, version=2), T0,
          ErrorCode.UNSUPPORTED_VERSION)
    add(c)

    c, n, _ = server_case("order_version_before_length", "Version 0 and an oversized length: the "
                          "version is checked first.")
    c.bad(HEADER.pack(0xFFFFFFFF, 0, HELLO, 0, 0, KEY_ID, 0, 0, T0, n), T0,
          ErrorCode.UNSUPPORTED_VERSION)
    add(c)

    c, n, hello = server_case("bad_mac_payload_bit", "One bit flipped in the payload after "
                              "signing.")
    c.bad(flip_bit(hello[0], HEADER_SIZE + 3, 1), T0, ErrorCode.BAD_SIGNATURE)
    add(c)

    c, n, hello = server_case("bad_mac_tag_bit", "One bit flipped in the HMAC tag.")
    c.bad(flip_bit(hello[0], len(hello[0]) - 1, 7), T0, ErrorCode.BAD_SIGNATURE)
    add(c)

    c, n, hello = server_case("bad_mac_header_bit", "One bit flipped in the header's reserved "
                              "byte after signing: the MAC is checked before the reserved byte, "
                              "so this is BAD_SIGNATURE, not MALFORMED_FRAME.")
    c.bad(flip_bit(hello[0], 7, 0), T0, ErrorCode.BAD_SIGNATURE)
    add(c)

    c, n, hello = server_case("bad_mac_timestamp_bit", "One bit flipped in the header's "
                              "timestamp after signing.")
    c.bad(flip_bit(hello[0], 31, 0), T0, ErrorCode.BAD_SIGNATURE)
    add(c)

    c, n, _ = server_case("signed_with_other_key", f"The header names key {KEY_ID} but the tag "
                          f"was made with key {OLD_KEY_ID}'s secret.")
    c.bad(raw_frame(HELLO, HELLO_CBOR, seq=0, ts=T0, nonce=n, sign_with=OLD_KEY_ID), T0,
          ErrorCode.BAD_SIGNATURE)
    add(c)

    c, n, _ = server_case("unknown_key_id", f"Key id {UNKNOWN_KEY_ID} is not in the key ring "
                          "(checked before the MAC).")
    c.bad(raw_frame(HELLO, HELLO_CBOR, seq=0, ts=T0, nonce=n, key_id=UNKNOWN_KEY_ID), T0,
          ErrorCode.UNKNOWN_KEY)
    add(c)

    c = Case("expired_key", f"A frame under key {OLD_KEY_ID} 1 ms after its grace period ended "
             f"({OLD_KEY_EXPIRY}); a rotated-out key is refused as UNKNOWN_KEY.")
    n = nonce_for(c.name)
    t = OLD_KEY_EXPIRY - 1000
    c.ok(good(HELLO, AGENT, seq=0, ts=t, nonce=n), t)
    c.bad(good(PING, {"d": 1}, seq=1, ts=OLD_KEY_EXPIRY + 1, nonce=n, key_id=OLD_KEY_ID)[0],
          OLD_KEY_EXPIRY + 1, ErrorCode.UNKNOWN_KEY, note="now == expiry + 1")
    add(c)

    c, n, _ = server_case("reserved_byte_set", "Header reserved byte 0x01, correctly signed.")
    c.bad(raw_frame(HELLO, HELLO_CBOR, seq=0, ts=T0, nonce=n, reserved=1), T0,
          ErrorCode.MALFORMED_FRAME)
    add(c)

    c, n, _ = server_case("unknown_flag_bit", "Flag bit 0x02 is not defined (only 0x01 "
                          "CONGESTION and 0x80 RESPONDER are), correctly signed.")
    c.bad(raw_frame(HELLO, HELLO_CBOR, seq=0, ts=T0, nonce=n, flags=0x02), T0,
          ErrorCode.MALFORMED_FRAME)
    add(c)

    c, n, _ = server_case("unknown_frame_type", "Frame type 0x0B, correctly signed.")
    c.bad(raw_frame(0x0B, b"\xa0", seq=0, ts=T0, nonce=n), T0, ErrorCode.UNKNOWN_FRAME_TYPE)
    add(c)

    c, n, _ = server_case("frame_type_zero", "Frame type 0x00, correctly signed.")
    c.bad(raw_frame(0x00, b"\xa0", seq=0, ts=T0, nonce=n), T0, ErrorCode.UNKNOWN_FRAME_TYPE)
    add(c)

    c, n, _ = server_case("order_flags_before_type", "An unknown flag bit and an unknown type: "
                          "flags are checked first.")
    c.bad(raw_frame(0x0B, b"\xa0", seq=0, ts=T0, nonce=n, flags=0x40), T0,
          ErrorCode.MALFORMED_FRAME)
    add(c)

    c, n, _ = server_case("connection_frame_on_stream", "HELLO (a connection frame) on stream 1.")
    c.bad(good(HELLO, AGENT, seq=0, ts=T0, nonce=n, stream=1)[0], T0, ErrorCode.MALFORMED_FRAME)
    add(c)

    c, n, hello = server_case("ping_on_stream", "PING (a connection frame) on stream 5 inside a "
                              "session.")
    c.ok(hello, T0)
    c.bad(good(PING, {"d": 1}, seq=1, ts=T0 + 10, nonce=n, stream=5)[0], T0 + 10,
          ErrorCode.MALFORMED_FRAME)
    add(c)

    c, n, hello = server_case("stream_frame_on_stream_zero", "REQUEST (a stream frame) on "
                              "stream 0.")
    c.ok(hello, T0)
    c.bad(good(REQUEST, {"messages": MESSAGES}, seq=1, ts=T0 + 10, nonce=n)[0], T0 + 10,
          ErrorCode.MALFORMED_FRAME)
    add(c)

    c, n, _ = server_case("order_stream_before_payload", "PING on stream 3 whose payload is not "
                          "CBOR: the stream-id rule is checked before the payload.")
    c.bad(raw_frame(PING, b"\xff\xff", seq=0, ts=T0, nonce=n, stream=3), T0,
          ErrorCode.MALFORMED_FRAME)
    add(c)

    # ---------------------------------------------------------------- bad: CBOR
    def bad_hello_payload(name, description, body, ftype=HELLO, note=None):
        c, n, _ = server_case(name, description)
        c.bad(raw_frame(ftype, body, seq=0, ts=T0, nonce=n), T0, ErrorCode.MALFORMED_PAYLOAD,
              note=note)
        add(c)

    agent = bytes.fromhex("656167656e74")   # text "agent"
    bad_hello_payload("cbor_truncated", "The CBOR map ends inside the agent string (the frame "
                      "itself is complete and correctly signed).", b"\xa1" + agent + b"\x6a" +
                      b"atp")
    bad_hello_payload("cbor_empty_payload", "A zero-length payload: no map at all.", b"")
    bad_hello_payload("cbor_top_level_not_map", "The payload is a CBOR array.",
                      bytes.fromhex("8261616162"))
    bad_hello_payload("cbor_trailing_bytes", "A complete map followed by one more byte.",
                      encode(AGENT) + b"\x00")
    bad_hello_payload("cbor_two_maps", "Two complete maps back to back.", b"\xa0\xa0")
    bad_hello_payload("cbor_tag", "A tagged value (tag 1, epoch time) under an unknown key: tags "
                      "are refused anywhere.", b"\xa2" + agent + b"\x61a" + b"\x61t" +
                      bytes.fromhex("c11a6955b900"))
    bad_hello_payload("cbor_self_describe_tag", "The whole payload wrapped in tag 55799 "
                      "(self-described CBOR).", bytes.fromhex("d9d9f7") + encode(AGENT))
    bad_hello_payload("cbor_bignum_tag", "A bignum (tag 2) under an unknown key.",
                      b"\xa2" + agent + b"\x61a" + b"\x61n" + bytes.fromhex("c24101"))
    bad_hello_payload("cbor_indefinite_map", "An indefinite-length top-level map.",
                      b"\xbf" + agent + b"\x61a" + b"\xff")
    bad_hello_payload("cbor_indefinite_string", "An indefinite-length text string value.",
                      b"\xa1" + agent + b"\x7f\x61a\x61b\xff")
    bad_hello_payload("cbor_indefinite_array", "An indefinite-length array under an unknown key.",
                      b"\xa2" + agent + b"\x61a" + b"\x61x" + b"\x9f\x01\xff")
    bad_hello_payload("cbor_nesting_too_deep", "Nine nested containers (the top-level map and "
                      "eight arrays) around a value: over max_depth 8.",
                      b"\xa2" + agent + b"\x61a" + b"\x61x" + b"\x81" * 8 + b"\x01")
    bad_hello_payload("cbor_nesting_too_deep_empty_array", "Nine nested containers whose "
                      "innermost is an empty array (the top-level map, seven arrays, then []): "
                      "over max_depth 8. An empty container counts as a level even though "
                      "nothing inside it is ever decoded.",
                      b"\xa2" + agent + b"\x61a" + b"\x61x" + b"\x81" * 7 + b"\x80")
    bad_hello_payload("cbor_nesting_too_deep_empty_map", "Nine nested containers whose "
                      "innermost is an empty map: over max_depth 8.",
                      b"\xa2" + agent + b"\x61a" + b"\x61x" + b"\x81" * 7 + b"\xa0")
    bad_hello_payload("cbor_duplicate_key", "The key agent appears twice.",
                      b"\xa2" + agent + b"\x61a" + agent + b"\x61b")
    bad_hello_payload("cbor_duplicate_key_non_shortest", "The key agent appears twice, once in "
                      "a non-shortest length encoding (0x78 0x05): keys are compared by value, "
                      "not by their encoded bytes.",
                      b"\xa2" + agent + b"\x61a" + b"\x78\x05agent" + b"\x61b")
    bad_hello_payload("cbor_duplicate_key_nested", "A duplicate key in a nested map under an "
                      "unknown key: duplicates are refused at every level.",
                      b"\xa2" + agent + b"\x61a" + b"\x61m" + b"\xa2\x61k\x01\x61k\x02")
    bad_hello_payload("cbor_integer_key", "A map key that is an integer (only text and byte "
                      "string keys are allowed).", b"\xa2" + agent + b"\x61a" + b"\x01\x02")
    bad_hello_payload("cbor_invalid_utf8", "A text string that is not valid UTF-8.",
                      b"\xa1" + agent + b"\x62\xc3\x28")
    bad_hello_payload("cbor_reserved_additional_info", "Additional information 28 (reserved) "
                      "in a value.", b"\xa2" + agent + b"\x61a" + b"\x61x" + b"\x1c")
    bad_hello_payload("cbor_simple_value_two_byte_form", "Simple value 5 written in the 2-byte "
                      "form (0xf8 0x05): not well-formed.",
                      b"\xa2" + agent + b"\x61a" + b"\x61x" + b"\xf8\x05")
    bad_hello_payload("cbor_break_outside_indefinite", "A break byte (0xff) where a value must "
                      "be.", b"\xa2" + agent + b"\x61a" + b"\x61x" + b"\xff")
    bad_hello_payload("top_level_map_over_limit", f"A top-level map with "
                      f"{LIMITS.max_map_size + 1} entries (limit {LIMITS.max_map_size}).",
                      encode({"agent": "a",
                              **{f"x{i:02d}": i for i in range(LIMITS.max_map_size)}}))

    # ---------------------------------------------------------------- bad: shapes
    def bad_shape(name, description, ftype, payload, receiver="server", stream=None):
        stream = (0 if ftype in (HELLO, WINDOW_UPDATE, PING, PONG, CLOSE) else 1) \
            if stream is None else stream
        if receiver == "server":
            c, n, hello = server_case(name, description)
            c.ok(hello, T0)
            c.bad(raw_frame(ftype, encode(payload), seq=1, ts=T0 + 10, nonce=n, stream=stream),
                  T0 + 10, ErrorCode.MALFORMED_PAYLOAD)
        else:
            c, n = client_case(name, description)
            c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
            c.bad(raw_frame(ftype, encode(payload), seq=1, ts=T0 + 40, nonce=n, stream=stream,
                            flags=R), T0 + 45, ErrorCode.MALFORMED_PAYLOAD)
        add(c)

    bad_shape("request_messages_string", "messages must be an array of [role, text] pairs, not "
              "a string.", REQUEST, {"messages": "Say hi"})
    bad_shape("request_messages_empty", "messages must not be empty.", REQUEST, {"messages": []})
    bad_shape("request_message_not_pair", "Each message is exactly [role, text].", REQUEST,
              {"messages": [["user", "Say hi", "extra"]]})
    bad_shape("request_missing_messages", "REQUEST lacks its required key messages.", REQUEST,
              {"model": "gpt-x-mini"})
    bad_shape("request_tier_invalid", "tier must be one of fast, balanced, high.", REQUEST,
              {"messages": MESSAGES, "tier": "turbo"})
    bad_shape("request_temperature_nan", "temperature must be a number, and NaN is not one.",
              REQUEST, {"messages": MESSAGES, "temperature": float("nan")})
    bad_shape("request_temperature_int_over_2_53", "An integer temperature must lie within "
              "+-2^53.", REQUEST, {"messages": MESSAGES, "temperature": (1 << 53) + 1})
    bad_shape("request_temperature_string", "temperature as a string.", REQUEST,
              {"messages": MESSAGES, "temperature": "0.7"})
    bad_shape("request_max_tokens_negative", "max_tokens is an unsigned integer.", REQUEST,
              {"messages": MESSAGES, "max_tokens": -1})
    bad_shape("request_stream_int", "stream is a boolean, not 1.", REQUEST,
              {"messages": MESSAGES, "stream": 1})
    bad_shape("request_meta_non_string_value", "meta maps text to text.", REQUEST,
              {"messages": MESSAGES, "meta": {"k": 1}})
    bad_shape("request_meta_over_map_limit", f"meta with {LIMITS.max_map_size + 1} entries.",
              REQUEST, {"messages": MESSAGES,
                        "meta": {f"k{i:02d}": "v" for i in range(LIMITS.max_map_size + 1)}})
    bad_shape("request_caps_non_string", "caps is an array of text.", REQUEST,
              {"messages": MESSAGES, "caps": ["tools", 1]})
    bad_shape("request_messages_over_array_limit", f"messages with "
              f"{LIMITS.max_array_len + 1} entries (limit {LIMITS.max_array_len}).", REQUEST,
              {"messages": [["user", "x"]] * (LIMITS.max_array_len + 1)})
    bad_shape("hello_win_two_items", "win is exactly three unsigned integers.", HELLO,
              {"agent": "a", "win": [1, 2]}, receiver="client")
    bad_shape("hello_agent_bytes", "agent is text, not a byte string.", HELLO,
              {"agent": b"atp"}, receiver="client")
    bad_shape("chunk_index_negative", "CHUNK i is an unsigned integer: -1 is refused.", CHUNK,
              {"i": -1, "text": "x"}, receiver="client")
    bad_shape("chunk_index_bool", "CHUNK i is an integer, and true is not one.", CHUNK,
              {"i": True, "text": "x"}, receiver="client")
    bad_shape("chunk_index_float", "CHUNK i is an integer: the float 1.0 (f93c00) is refused "
              "even though it equals 1.", CHUNK, {"i": 1.0, "text": "x"}, receiver="client")
    bad_shape("chunk_missing_text", "CHUNK lacks its required key text.", CHUNK, {"i": 0},
              receiver="client")
    bad_shape("end_missing_cost", "END requires in, out and cost.", END, {"in": 1, "out": 2},
              receiver="client")
    bad_shape("error_code_string", "ERROR code is an unsigned integer.", ERROR,
              {"code": "301"}, receiver="client")
    bad_shape("ping_missing_d", "PING requires d.", PING, {})
    bad_shape("close_code_negative", "CLOSE code is an unsigned integer.", CLOSE, {"code": -5})

    c, n, _ = server_case("order_payload_before_session", "A first frame that is not HELLO "
                          "(a session error) and has a bad payload: the payload is checked "
                          "first, by the stateless frame decoder.")
    c.bad(raw_frame(REQUEST, encode({"messages": "x"}), seq=0, ts=T0, nonce=n, stream=1), T0,
          ErrorCode.MALFORMED_PAYLOAD)
    add(c)

    # ---------------------------------------------------------------- bad: session
    c, n, hello = server_case("replayed_hello", "The same HELLO bytes replayed 1 s later in a "
                              "new session (same receiver, same nonce cache).")
    c.ok(hello, T0)
    c.bad(hello[0], T0 + 1000, ErrorCode.REPLAYED_NONCE, new_session=True)
    add(c)

    c, n, hello = server_case("nonce_reused_by_new_hello", "A different, freshly timed HELLO "
                              "that reuses an earlier session's nonce.")
    c.ok(hello, T0)
    c.bad(good(HELLO, {"agent": "other"}, seq=0, ts=T0 + 5000, nonce=n)[0], T0 + 5000,
          ErrorCode.REPLAYED_NONCE, new_session=True)
    add(c)

    c, n, hello = server_case("order_stale_before_replay", "A replayed HELLO that is also out of "
                              "the skew: the timestamp is checked before the nonce cache.")
    c.ok(hello, T0)
    c.bad(hello[0], T0 + SKEW + 1, ErrorCode.STALE_TIMESTAMP, new_session=True)
    add(c)

    c, n, _ = server_case("stale_timestamp", f"An opening HELLO {SKEW + 1} ms old.")
    c.bad(good(HELLO, AGENT, seq=0, ts=T0 - SKEW - 1, nonce=n)[0], T0, ErrorCode.STALE_TIMESTAMP)
    add(c)

    c, n, _ = server_case("future_timestamp", f"An opening HELLO {SKEW + 1} ms in the future.")
    c.bad(good(HELLO, AGENT, seq=0, ts=T0 + SKEW + 1, nonce=n)[0], T0, ErrorCode.STALE_TIMESTAMP)
    add(c)

    c, n, hello = server_case("sequence_duplicate", "Sequence 2 arrives twice (a rewind).")
    c.ok(hello, T0)
    c.ok(good(PING, {"d": 1}, seq=1, ts=T0 + 1, nonce=n), T0 + 1)
    c.ok(good(PING, {"d": 2}, seq=2, ts=T0 + 2, nonce=n), T0 + 2)
    c.bad(good(PING, {"d": 3}, seq=2, ts=T0 + 3, nonce=n)[0], T0 + 3, ErrorCode.SEQUENCE_REPLAY)
    add(c)

    c, n, hello = server_case("sequence_replayed_hello_in_session", "The session's own HELLO "
                              "(sequence 0) arrives again inside the session.")
    c.ok(hello, T0)
    c.ok(good(PING, {"d": 1}, seq=1, ts=T0 + 1, nonce=n), T0 + 1)
    c.bad(hello[0], T0 + 2, ErrorCode.SEQUENCE_REPLAY)
    add(c)

    c, n, hello = server_case("sequence_older_than_window", f"After sequence 65, sequence 1 is "
                              f"64 back: outside the {WINDOW}-wide window, even though it was "
                              "never seen.")
    c.ok(hello, T0)
    c.ok(good(PING, {"d": 65}, seq=65, ts=T0 + 1, nonce=n), T0 + 1)
    c.bad(good(PING, {"d": 1}, seq=1, ts=T0 + 2, nonce=n)[0], T0 + 2, ErrorCode.SEQUENCE_REPLAY)
    add(c)

    c, n, _ = server_case("reflected_server_frame", "A frame carrying the RESPONDER flag sent to "
                          "a server (a reflected server HELLO).")
    c.bad(good(HELLO, SERVER_HELLO, seq=0, ts=T0, nonce=n, flags=R)[0], T0,
          ErrorCode.PROTOCOL_VIOLATION)
    add(c)

    c, n, _ = server_case("first_frame_not_hello", "A session that opens with REQUEST.")
    c.bad(good(REQUEST, {"messages": MESSAGES}, seq=0, ts=T0, nonce=n, stream=1)[0], T0,
          ErrorCode.PROTOCOL_VIOLATION)
    add(c)

    c = Case("hello_zero_nonce", "An opening HELLO whose nonce is 8 zero bytes (reserved): "
             "PROTOCOL_VIOLATION, checked before the timestamp and the nonce cache (this HELLO is "
             "also stale).")
    c.bad(good(HELLO, AGENT, seq=0, ts=T0 - SKEW - 1, nonce=bytes(8))[0], T0,
          ErrorCode.PROTOCOL_VIOLATION)
    add(c)

    c, n, _ = server_case("first_frame_sequence_not_zero", "An opening HELLO with sequence 1.")
    c.bad(good(HELLO, AGENT, seq=1, ts=T0, nonce=n)[0], T0, ErrorCode.PROTOCOL_VIOLATION)
    add(c)

    c, n, hello = server_case("foreign_session_nonce", "A frame inside a session carrying "
                              "another session's nonce.")
    c.ok(hello, T0)
    c.bad(good(PING, {"d": 1}, seq=1, ts=T0 + 10, nonce=nonce_for("some other session"))[0],
          T0 + 10, ErrorCode.REPLAYED_NONCE)
    add(c)

    c, n = client_case("server_hello_wrong_nonce", "The server's HELLO does not echo the "
                       "client's session nonce.")
    c.bad(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=nonce_for("elsewhere"), flags=R)[0],
          T0 + 25, ErrorCode.REPLAYED_NONCE)
    add(c)

    c, n = client_case("server_frame_without_responder_flag", "A frame to a client without the "
                       "RESPONDER flag (a reflected client frame).")
    c.bad(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n)[0], T0 + 25,
          ErrorCode.PROTOCOL_VIOLATION)
    add(c)

    c, n = client_case("server_answers_with_ping", "The server's first frame must be HELLO or "
                       "CLOSE; PING is refused.")
    c.bad(good(PING, {"d": 1}, seq=0, ts=T0 + 20, nonce=n, flags=R)[0], T0 + 25,
          ErrorCode.PROTOCOL_VIOLATION)
    add(c)

    c, n = client_case("server_foreign_nonce_later", "A later server frame with a nonce that is "
                       "not the session's.")
    c.ok(good(HELLO, SERVER_HELLO, seq=0, ts=T0 + 20, nonce=n, flags=R), T0 + 25)
    c.bad(good(CHUNK, {"i": 0, "text": "x"}, seq=1, ts=T0 + 40, nonce=nonce_for("elsewhere"),
               stream=1, flags=R)[0], T0 + 45, ErrorCode.REPLAYED_NONCE)
    add(c)

    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


# ---- self-check against the Python codec --------------------------------------------------------

def python_verdicts(case: dict, ring=None, *, skew=None, window=None, limits=None):
    """Replay one case (JSON form) through open_frame + SessionGuard: [(ok, code or Frame)].

    The parameters default to this generator's constants; tests pass the document's own."""
    ring = keyring() if ring is None else ring
    skew = SKEW if skew is None else skew
    window = WINDOW if window is None else window
    limits = LIMITS if limits is None else limits
    cache = NonceCache(skew_ms=skew)
    server = case["receiver"] == "server"
    nonce = None if server else bytes.fromhex(case["session_nonce"])

    def new_guard():
        return SessionGuard(is_responder=server, nonce_cache=cache if server else None,
                            session_nonce=nonce, window=window)

    guard = new_guard()
    out = []
    for f in case["frames"]:
        if f["new_session"]:
            guard = new_guard()
        data = bytes.fromhex(f["hex"])
        try:
            opened = open_frame(data, 0, ring, limits, f["now_ms"])
            if opened is None:
                raise CodecError("incomplete at end of input", ErrorCode.MALFORMED_FRAME)
            frame, end = opened
            if end != len(data):
                raise CodecError("bytes after the frame", ErrorCode.MALFORMED_FRAME)
            guard.check(frame, f["now_ms"])
        except CodecError as exc:
            out.append((False, int(exc.code)))
        else:
            out.append((True, frame))
    return out


def self_check(doc):
    for case in doc["cases"]:
        for f, (ok, got) in zip(case["frames"], python_verdicts(case)):
            want = f["expect"]
            if ok != want["ok"] or (not ok and got != want["code"]):
                raise AssertionError(f"{case['name']}: the Python codec says "
                                     f"{'ok' if ok else got}, the vector says {want}")


# ---- document -----------------------------------------------------------------------------------

def build_document():
    cases = build_cases()
    doc = {
        "format": FORMAT,
        "description": (
            "ATP v1 cross-implementation test vectors: whole frames (40-byte header, "
            "deterministic CBOR payload, HMAC-SHA256 tag) with what a receiver must make of "
            "them. Generated by tests/vectors/generate.py; see tests/vectors/README.md."),
        "keys": {str(k): SECRETS[k].hex() for k in sorted(SECRETS)},
        "expired_keys": {str(OLD_KEY_ID): OLD_KEY_EXPIRY},
        "limits": {"max_payload": LIMITS.max_payload, "max_depth": LIMITS.max_depth,
                   "max_map_size": LIMITS.max_map_size, "max_array_len": LIMITS.max_array_len},
        "replay": {"skew_ms": SKEW, "window": WINDOW},
        "cases": [c.to_json() for c in cases],
    }
    self_check(doc)
    return doc


def render() -> str:
    return json.dumps(build_document(), indent=1, ensure_ascii=True, allow_nan=False) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the output file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(f"{args.output} is stale: run python tests/vectors/generate.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    n = json.loads(text)["cases"]
    print(f"wrote {args.output}: {len(n)} cases, {sum(len(c['frames']) for c in n)} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cross-implementation vectors (tests/vectors/frames.json) against the Python codec.

(a) frames.json is exactly what tests/vectors/generate.py produces;
(b) every case replays through open_frame + SessionGuard with every expectation met, on each
    backend (pure and native twins), and every good payload re-encodes to payload_hex;
(c) server-receiver cases also run through a real codec.Connection, fed one frame per message
    (receive_frame) and as a byte stream (receive_data);
(d) the independent Node.js checker (clients/node/check_vectors.mjs) agrees, when node exists.
"""
import importlib.util
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from codec import Connection, ConnectionTerminated, Keyring, Limits, NonceCache
from codec.errors import ErrorCode
from codec.frame import HEADER_SIZE, OVERHEAD, TAG_SIZE, FrameType, open_frame
from codec.payload import encode

ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = ROOT / "tests" / "vectors"
FRAMES = VECTORS_DIR / "frames.json"
NODE_DIR = ROOT / "clients" / "node"

DOC = json.loads(FRAMES.read_text(encoding="utf-8"))
CASES = DOC["cases"]
SERVER_CASES = [c for c in CASES if c["receiver"] == "server"]


def _load_generator():
    spec = importlib.util.spec_from_file_location("atp_vectors_generate",
                                                  VECTORS_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- helpers ------------------------------------------------------------------------------------

GENERATOR = _load_generator()


def make_keyring() -> Keyring:
    """The vectors' key ring, built from the document (call after the backend fixture ran)."""
    ring = Keyring()
    expired = {int(k): v for k, v in DOC.get("expired_keys", {}).items()}
    for key_id, secret in DOC["keys"].items():
        ring.add(int(key_id), bytes.fromhex(secret), expires_ms=expired.get(int(key_id)))
    current = [int(k) for k in DOC["keys"] if int(k) not in expired]
    ring.set_current(max(current))
    return ring


LIMITS = Limits(**DOC["limits"])


def json_to_python(value):
    """The vectors' JSON form -> the CBOR data model as codec.payload decodes it."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bytes"), str):
            return bytes.fromhex(value["$bytes"])
        return {k: json_to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_to_python(v) for v in value]
    return value


def same(a, b) -> bool:
    """Equality that keeps 1, 1.0 and True apart and tells -0.0 from 0.0."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                      math.copysign(1, b))
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def is_incomplete(data: bytes) -> bool:
    """True when the bytes hold less than the frame their header announces."""
    if len(data) < HEADER_SIZE:
        return True
    return len(data) < OVERHEAD + int.from_bytes(data[:4], "big")


def replay(case):
    """open_frame + SessionGuard over one case, with the document's keys and parameters (the
    generator's own replay, fed from the JSON): [(frame dict, (Frame, None) | (None, code))]."""
    verdicts = GENERATOR.python_verdicts(case, make_keyring(), skew=DOC["replay"]["skew_ms"],
                                         window=DOC["replay"]["window"], limits=LIMITS)
    return [(f, (got, None) if ok else (None, got)) for f, (ok, got) in zip(case["frames"], verdicts)]


# ---- (a) the committed file is the generator's output ------------------------------------------

def test_frames_json_is_generator_output(codec_backend):
    assert GENERATOR.render() == FRAMES.read_text(encoding="utf-8"), (
        "tests/vectors/frames.json is stale: run python tests/vectors/generate.py")


def test_vector_document_shape():
    assert DOC["format"] == 1
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    bad = [c for c in CASES if not all(f["expect"]["ok"] for f in c["frames"])]
    assert len(bad) >= 20
    good_types = {f["expect"]["type"] for c in CASES for f in c["frames"] if f["expect"]["ok"]}
    assert good_types == {t.name for t in FrameType}
    for case in CASES:
        for i, f in enumerate(case["frames"]):
            exp = f["expect"]
            if not exp["ok"]:
                assert ErrorCode(exp["code"]).name == exp["error"]
                nxt = case["frames"][i + 1:i + 2]
                assert not nxt or nxt[0]["new_session"], f"{case['name']}: error must end a session"


# ---- (b) open_frame + SessionGuard on each backend ----------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_replays(codec_backend, case):
    for index, (f, (frame, code)) in enumerate(replay(case)):
        exp = f["expect"]
        where = f"{case['name']} frame {index}"
        if not exp["ok"]:
            assert frame is None, f"{where}: expected {exp['error']}, the frame was accepted"
            assert code == exp["code"], \
                f"{where}: expected {exp['error']}, got {ErrorCode(code).name}"
            continue
        assert frame is not None, f"{where}: expected ok, got {ErrorCode(code).name}"
        data = bytes.fromhex(f["hex"])
        assert frame.type.name == exp["type"] and int(frame.type) == exp["type_id"], where
        assert (frame.flags, frame.key_id, frame.stream_id, frame.sequence, frame.timestamp_ms) \
            == (exp["flags"], exp["key_id"], exp["stream_id"], exp["sequence"],
                exp["timestamp_ms"]), where
        assert frame.nonce.hex() == exp["nonce"], where
        assert frame.size == len(data), where
        expected_payload = json_to_python(exp["payload"])
        assert same(frame.payload, expected_payload), f"{where}: {frame.payload!r}"
        payload_bytes = bytes.fromhex(exp["payload_hex"])
        assert data[HEADER_SIZE:len(data) - TAG_SIZE] == payload_bytes, where
        assert encode(expected_payload) == payload_bytes, f"{where}: encoder output differs"


# ---- (c) through a real Connection --------------------------------------------------------------
# Only server-receiver cases: a client Connection would first need send_request() for every
# stream the server's frames use and initiate() to set its nonce, i.e. state the vectors do not
# describe. Every server-receiver case matches Connection semantics (the good ones are valid
# session traffic: increasing stream ids, PINGs, a CANCEL of an open stream, credit inside the
# default window), with one difference: fed as a byte stream (receive_data) an incomplete frame
# is not an error but a wait for more bytes, so those frames are checked as "still open, nothing
# consumed" there; fed as one message (receive_frame) they are MALFORMED_FRAME like the vectors.

def _drain(conn):
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("mode", ["message", "stream"])
@pytest.mark.parametrize("case", SERVER_CASES, ids=[c["name"] for c in SERVER_CASES])
def test_case_through_connection(codec_backend, case, mode):
    ring = make_keyring()
    cache = NonceCache(skew_ms=DOC["replay"]["skew_ms"])

    def new_connection(now):
        return Connection("server", ring, limits=LIMITS, nonce_cache=cache, now_ms=now)

    conn = None
    for index, f in enumerate(case["frames"]):
        where = f"{case['name']} frame {index} ({mode})"
        now = f["now_ms"]
        if conn is None or f["new_session"]:
            conn = new_connection(now)
        assert not conn.closed, f"{where}: the vectors never send to a closed session"
        data = bytes.fromhex(f["hex"])
        if mode == "message":
            conn.receive_frame(data, now)
        else:   # a byte stream, cut in two to exercise buffering
            half = len(data) // 2
            conn.receive_data(data[:half], now)
            conn.receive_data(data[half:], now)
        events = _drain(conn)
        ends = [e for e in events if isinstance(e, ConnectionTerminated)]
        exp = f["expect"]
        if exp["ok"]:
            if exp["type"] == "CLOSE":
                want = [(exp["payload"]["code"], True)]
                assert [(e.code, e.by_peer) for e in ends] == want, where
            else:
                assert not ends and not conn.closed, f"{where}: closed with {ends}"
        elif mode == "stream" and exp["code"] == ErrorCode.MALFORMED_FRAME and is_incomplete(data):
            assert not ends and not conn.closed, f"{where}: a partial frame must wait for more"
        else:
            assert [(e.code, e.by_peer) for e in ends] == [(exp["code"], False)], where
            assert conn.closed and conn.close_code == exp["code"], where
            assert conn.data_to_send(), f"{where}: a CLOSE must be queued for the peer"


# ---- (d) the independent Node.js checker --------------------------------------------------------

_NETWORK_ERRORS = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|"
                             r"EHOSTUNREACH|network|proxy|registry", re.IGNORECASE)


def _ensure_node_modules():
    if (NODE_DIR / "node_modules" / "cbor2").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("node is installed but npm is not: cannot install the checker's dependencies")
    command = [npm, "ci"] if (NODE_DIR / "package-lock.json").exists() else [npm, "install"]
    try:
        run = subprocess.run(command + ["--no-audit", "--no-fund"], cwd=NODE_DIR,
                             capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{' '.join(command)} timed out: is the npm registry reachable?")
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip()[-800:]
        if _NETWORK_ERRORS.search(tail):
            pytest.skip(f"npm could not reach the registry to install cbor2: {tail}")
        pytest.fail(f"{' '.join(command)} failed in {NODE_DIR}:\n{tail}")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")
def test_node_checker_agrees():
    _ensure_node_modules()
    run = subprocess.run([shutil.which("node"), str(NODE_DIR / "check_vectors.mjs"), str(FRAMES)],
                         capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    failures = [line for line in lines if line.startswith("FAIL ")]
    assert run.returncode == 0, "\n".join(failures) or run.stderr
    assert lines and lines[-1] == f"{len(CASES)} passed, 0 failed", lines[-1:]
    assert sorted(line[3:] for line in lines if line.startswith("ok ")) == \
        sorted(c["name"] for c in CASES)

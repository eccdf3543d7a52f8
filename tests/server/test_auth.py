"""Authentication: hashed API keys, request signatures with replay protection."""
import hashlib

import pytest

from atp_server.auth import (SIG_KEY_ID, SIG_NONCE, SIG_SIGNATURE, SIG_TIMESTAMP, Authenticator,
                             sign_request)
from atp_server.config import ApiKey, AuthConfig, HmacKeyConfig
from atp_server.types import AtpError
from codec.errors import ErrorCode

SECRET = b"0123456789abcdef0123456789abcdef"


def make(require_signature=False):
    return Authenticator(AuthConfig(
        api_keys=(ApiKey("k", hashlib.sha256(b"sk-good").hexdigest(), "acme"),),
        hmac_keys=(HmacKeyConfig(7, SECRET, "acme"),), require_signature=require_signature))


def signed(body=b"{}", ts=1_000_000, nonce="0011223344556677", path="/v1/chat/completions"):
    return {SIG_KEY_ID: "7", SIG_TIMESTAMP: str(ts), SIG_NONCE: nonce,
            SIG_SIGNATURE: sign_request(SECRET, "POST", path, ts, nonce, body)}


def test_api_key_accepts_the_right_key_only():
    auth = make()
    assert auth.api_key("Bearer sk-good").tenant == "acme"
    for header in (None, "", "Bearer", "Basic sk-good", "Bearer sk-bad"):
        with pytest.raises(AtpError) as info:
            auth.api_key(header)
        assert info.value.code == ErrorCode.UNAUTHENTICATED


def test_signature_good_then_replayed():
    auth = make()
    auth.check_signature(signed(), "POST", "/v1/chat/completions", b"{}", 1_000_500)
    with pytest.raises(AtpError) as info:
        auth.check_signature(signed(), "POST", "/v1/chat/completions", b"{}", 1_000_600)
    assert info.value.code == ErrorCode.REPLAYED_NONCE


@pytest.mark.parametrize("mutate,code", [
    (lambda h: {**h, SIG_SIGNATURE: "00" * 32}, ErrorCode.BAD_SIGNATURE),
    (lambda h: {**h, SIG_KEY_ID: "9"}, ErrorCode.UNKNOWN_KEY),
    (lambda h: {**h, SIG_NONCE: "xyz"}, ErrorCode.BAD_SIGNATURE),
])
def test_signature_failures(mutate, code):
    with pytest.raises(AtpError) as info:
        make().check_signature(mutate(signed()), "POST", "/v1/chat/completions", b"{}", 1_000_000)
    assert info.value.code == code


def test_signature_covers_body_and_path_and_time():
    auth = make()
    with pytest.raises(AtpError) as info:
        auth.check_signature(signed(b"{}"), "POST", "/v1/chat/completions", b'{"x":1}', 1_000_000)
    assert info.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(AtpError) as info:
        auth.check_signature(signed(), "POST", "/v1/models", b"{}", 1_000_000)
    assert info.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(AtpError) as info:
        auth.check_signature({**signed(), SIG_TIMESTAMP: "1000001"}, "POST", "/v1/chat/completions",
                             b"{}", 1_000_000)
    assert info.value.code == ErrorCode.BAD_SIGNATURE   # timestamp is signed too


def test_stale_signature_is_refused():
    with pytest.raises(AtpError) as info:
        make().check_signature(signed(ts=1_000_000), "POST", "/v1/chat/completions", b"{}", 1_000_000 + 60_000)
    assert info.value.code == ErrorCode.STALE_TIMESTAMP


def test_required_signature():
    with pytest.raises(AtpError) as info:
        make(require_signature=True).check_signature({}, "POST", "/x", b"", 0)
    assert info.value.code == ErrorCode.UNAUTHENTICATED
    make().check_signature({}, "POST", "/x", b"", 0)   # optional: absent is fine


def test_session_principal_maps_key_id_to_tenant():
    p = make().session_principal(7)
    assert (p.tenant, p.method) == ("acme", "hmac")


# ---- the nonce cache across a restart ----------------------------------------------------------------

def test_nonce_snapshot_round_trip_refuses_the_replay(tmp_path):
    path = tmp_path / "nonces.json"
    before = make()
    assert before.load_nonces(path, 990_000) is False          # first start: floor
    assert before.nonce_cache.floor_ms == 990_000
    before.check_signature(signed(), "POST", "/v1/chat/completions", b"{}", 1_000_500)
    before.save_nonces(path, 1_001_000)
    after = make()
    assert after.load_nonces(path, 1_002_000) is True and not path.exists()
    with pytest.raises(AtpError) as info:
        after.check_signature(signed(), "POST", "/v1/chat/completions", b"{}", 1_002_000)
    assert info.value.code == ErrorCode.REPLAYED_NONCE
    assert after.nonce_cache.floor_ms == 990_000               # carried: it still guards run 0


def test_a_server_that_never_loaded_saves_nothing(tmp_path):
    # Otherwise a crash, then a start that fails before loading, would leave a "clean" snapshot
    # that vouches for nonces nobody guarded and lifts the floor of the next start.
    path = tmp_path / "nonces.json"
    make().save_nonces(path, 1_000_000)
    assert not path.exists()


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"format": 2}',
                                     b'{"format": 1, "floor_ms": 0, "nonces": [["00", 5]]}',
                                     b'{"format": 1, "floor_ms": -1, "nonces": []}',
                                     b'{"format": 1, "floor_ms": 0, "nonces": [["0011223344556677", "5"]]}',
                                     b"\xff\xfe"])
def test_an_unreadable_snapshot_falls_back_to_the_floor(tmp_path, caplog, content):
    path = tmp_path / "nonces.json"
    path.write_bytes(content)
    auth = make()
    assert auth.load_nonces(path, 1_000_000) is False
    assert auth.nonce_cache.floor_ms == 1_000_000 and not path.exists()
    assert any("unreadable" in r.getMessage() for r in caplog.records if r.name == "atp.auth")
    with pytest.raises(AtpError) as info:
        auth.check_signature(signed(ts=999_999), "POST", "/v1/chat/completions", b"{}", 1_000_001)
    assert info.value.code == ErrorCode.STALE_TIMESTAMP


def test_workers_sharing_a_state_dir_merge_their_snapshots(tmp_path):
    path = tmp_path / "nonces.json"
    a, b = make(), make()
    a.load_nonces(path, 1_000_000)
    b.load_nonces(path, 1_000_000)
    a.check_signature(signed(nonce="00000000000000aa"), "POST", "/v1/chat/completions", b"{}",
                      1_000_100)
    b.check_signature(signed(nonce="00000000000000bb"), "POST", "/v1/chat/completions", b"{}",
                      1_000_100)
    a.save_nonces(path, 1_000_200)
    b.save_nonces(path, 1_000_300)
    c = make()
    c.load_nonces(path, 1_000_400)
    for nonce in ("00000000000000aa", "00000000000000bb"):
        with pytest.raises(AtpError) as info:
            c.check_signature(signed(nonce=nonce), "POST", "/v1/chat/completions", b"{}", 1_000_400)
        assert info.value.code == ErrorCode.REPLAYED_NONCE


def test_a_snapshot_that_cannot_be_written_is_logged_not_raised(tmp_path, caplog):
    auth = make()
    auth.load_nonces(tmp_path / "nonces.json", 1_000_000)
    auth.save_nonces(tmp_path / "missing-dir" / "nonces.json", 1_000_100)
    assert any("cannot write" in r.getMessage() for r in caplog.records if r.name == "atp.auth")


# ---- the request signature as PROTOCOL.md §9.4 defines it --------------------------------------------

def _code_of(headers, now=1_000_500, auth=None, path="/v1/chat/completions", body=b"{}"):
    try:
        (auth or make()).check_signature(headers, "POST", path, body, now)
    except AtpError as exc:
        return exc.code
    return None


@pytest.mark.parametrize("missing", [(SIG_KEY_ID,), (SIG_TIMESTAMP,), (SIG_NONCE,),
                                     (SIG_SIGNATURE,), (SIG_KEY_ID, SIG_NONCE),
                                     (SIG_KEY_ID, SIG_TIMESTAMP, SIG_NONCE)])
def test_a_partial_header_set_is_a_bad_signature(missing):
    # Also without x-atp-signature: a request carrying some x-atp-* headers is not "unsigned".
    headers = {k: v for k, v in signed().items() if k not in missing}
    assert _code_of(headers) == ErrorCode.BAD_SIGNATURE
    assert _code_of(headers, auth=make(require_signature=True)) == ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize("header,value", [
    (SIG_KEY_ID, ""), (SIG_KEY_ID, "+7"), (SIG_KEY_ID, " 7"), (SIG_KEY_ID, "7 "), (SIG_KEY_ID, "7_0"),
    (SIG_KEY_ID, "\u0667"), (SIG_KEY_ID, "4294967296"), (SIG_KEY_ID, "-1"), (SIG_KEY_ID, "0x7"),
    (SIG_TIMESTAMP, ""), (SIG_TIMESTAMP, "+1000000"), (SIG_TIMESTAMP, "1_000_000"),
    (SIG_TIMESTAMP, "1000000.0"), (SIG_TIMESTAMP, " 1000000"), (SIG_TIMESTAMP, "1e6"),
    (SIG_TIMESTAMP, "\u0661000000"), (SIG_TIMESTAMP, "1" * 20),
    (SIG_NONCE, ""), (SIG_NONCE, "00112233445566"), (SIG_NONCE, "001122334455667788"),
    (SIG_NONCE, "0011 2233 4455 6677"[:16]), (SIG_NONCE, "00 11 22 33 44 55 66 77"),
    (SIG_NONCE, "0g11223344556677"), (SIG_NONCE, "0x11223344556677"),
    (SIG_SIGNATURE, ""), (SIG_SIGNATURE, "ab" * 31), (SIG_SIGNATURE, "ab" * 33),
    (SIG_SIGNATURE, "zz" * 32), (SIG_SIGNATURE, " " + "ab" * 31 + "a"),
])
def test_a_malformed_value_is_a_bad_signature(header, value):
    # Each value is checked for its exact syntax before the key, the MAC or the nonce cache:
    # no int()/fromhex() leniency (signs, spaces, underscores, non-ASCII digits).
    assert _code_of({**signed(), header: value}) == ErrorCode.BAD_SIGNATURE


def test_hex_is_accepted_in_either_case_and_the_nonce_is_signed_in_lower_case():
    headers = signed(nonce="00aabbccddeeff11")
    upper = {**headers, SIG_NONCE: "00AABBCCDDEEFF11", SIG_SIGNATURE: headers[SIG_SIGNATURE].upper()}
    assert _code_of(upper) is None
    # the same nonce in another case is the same nonce: a replay
    assert _code_of(upper, auth=None) is None
    auth = make()
    assert _code_of(upper, auth=auth) is None
    assert _code_of(headers, auth=auth) == ErrorCode.REPLAYED_NONCE


def test_the_timestamp_is_signed_as_sent():
    # Leading zeros are allowed; the signature covers the header's text, not a re-encoding.
    ts = "0001000000"
    sig = sign_request(SECRET, "POST", "/v1/chat/completions", ts, "0011223344556677", b"{}")
    headers = {SIG_KEY_ID: "7", SIG_TIMESTAMP: ts, SIG_NONCE: "0011223344556677", SIG_SIGNATURE: sig}
    assert _code_of(headers) is None
    canonical = {**headers, SIG_SIGNATURE: signed()[SIG_SIGNATURE]}   # signed over "1000000"
    assert _code_of(canonical) == ErrorCode.BAD_SIGNATURE


def test_check_order_key_then_mac_then_timestamp_then_nonce():
    assert _code_of({**signed(), SIG_KEY_ID: "8"}) == ErrorCode.UNKNOWN_KEY
    stale_and_forged = {**signed(ts=1), SIG_SIGNATURE: "00" * 32}
    assert _code_of(stale_and_forged) == ErrorCode.BAD_SIGNATURE       # MAC before timestamp
    assert _code_of(signed(ts=1)) == ErrorCode.STALE_TIMESTAMP


def test_the_worked_example_in_the_spec_verifies():
    # PROTOCOL.md §9.4 prints one signed request; it must verify here, byte for byte.
    import re
    from pathlib import Path
    spec = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text("utf-8")
    block = spec[spec.index("### 9.4"):]
    field = {k: v for k, v in re.findall(r"^\| `([a-z_-]+)` \| `([^`]*)` \|", block, re.M)}
    secret = bytes.fromhex(field["secret"])
    body = field["body"].encode()
    expected = sign_request(secret, field["method"], field["path"], field["x-atp-timestamp"],
                            field["x-atp-nonce"], body)
    assert expected == field["x-atp-signature"]
    auth = Authenticator(AuthConfig(hmac_keys=(HmacKeyConfig(int(field["x-atp-key-id"]), secret,
                                                             "acme"),)))
    headers = {k: field[k] for k in (SIG_KEY_ID, SIG_TIMESTAMP, SIG_NONCE, SIG_SIGNATURE)}
    auth.check_signature(headers, field["method"], field["path"], body,
                         int(field["x-atp-timestamp"]))


def test_a_signature_key_of_another_tenant_is_forbidden_and_burns_no_nonce():
    auth = Authenticator(AuthConfig(
        api_keys=(ApiKey("k", hashlib.sha256(b"sk-good").hexdigest(), "acme"),),
        hmac_keys=(HmacKeyConfig(7, SECRET, "globex"),)))
    acme = auth.api_key("Bearer sk-good")
    with pytest.raises(AtpError) as info:
        auth.check_signature(signed(), "POST", "/v1/chat/completions", b"{}", 1_000_000, acme)
    assert info.value.code == ErrorCode.FORBIDDEN and "globex" not in info.value.message
    # the refused request did not consume its nonce: a signature check without a principal
    # (frame sessions bind the tenant by key id instead) still accepts it once
    auth.check_signature(signed(), "POST", "/v1/chat/completions", b"{}", 1_000_000)

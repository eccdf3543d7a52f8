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

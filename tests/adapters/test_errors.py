"""adapters/errors.py: each upstream status class, body dialect and transport fault -> its wire code,
retryable or not, counted against the provider's health or not; messages surfaced and bounded."""
import orjson
import pytest

from atp_server.adapters.errors import (MAX_DETAIL, in_band_error, retry_after_ms, status_error,
                                        transport_error)
from atp_server.adapters.http_client import (ConnectError, ConnectTimeout, PeerClosedError, PoolTimeout,
                                             ProtocolError, ReadTimeout)
from atp_server.routing.health import UPSTREAM_FAULTS
from codec.errors import ErrorCode


def body(message: str, type_: str = "", code: str = "") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code}})


# (status, body, headers) -> (code, retryable, counted against the provider, retry_after_ms)
CASES = [
    (429, body("slow down", "rate_limit_error"), {"retry-after": "2"}, ErrorCode.RATE_LIMITED, True, True, 2000),
    (429, body("quota", "insufficient_quota", "insufficient_quota"), {}, ErrorCode.UPSTREAM_ERROR, True, True, 0),
    (500, b"internal failure", {}, ErrorCode.UPSTREAM_ERROR, True, True, 0),
    (502, b"<html>bad gateway</html>", {}, ErrorCode.UPSTREAM_ERROR, True, True, 0),
    (503, body("overloaded"), {"retry-after-ms": "750"}, ErrorCode.UPSTREAM_ERROR, True, True, 750),
    (529, orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
     {}, ErrorCode.UPSTREAM_ERROR, True, True, 0),
    (504, b"gateway timeout", {}, ErrorCode.UPSTREAM_TIMEOUT, True, True, 0),
    (408, b"", {}, ErrorCode.UPSTREAM_TIMEOUT, True, True, 0),
    (402, body("payment required"), {}, ErrorCode.UPSTREAM_ERROR, True, True, 0),
    (400, body("messages: field required", "invalid_request_error"), {}, ErrorCode.INVALID_REQUEST, False, False, 0),
    (413, b"too large", {}, ErrorCode.INVALID_REQUEST, False, False, 0),
    (422, body("temperature: must be <= 2"), {}, ErrorCode.INVALID_REQUEST, False, False, 0),
    (400, body("Your request was rejected", "invalid_request_error", "content_policy_violation"), {},
     ErrorCode.INVALID_REQUEST, False, False, 0),
    (401, body("Incorrect API key provided", "invalid_request_error", "invalid_api_key"), {},
     ErrorCode.FORBIDDEN, False, False, 0),
    (403, body("not allowed", "permission_error"), {}, ErrorCode.FORBIDDEN, False, False, 0),
    (404, body("The model `x` does not exist", code="model_not_found"), {}, ErrorCode.UNKNOWN_MODEL, False, False, 0),
    (404, b"404: Not Found", {}, ErrorCode.INTERNAL, False, False, 0),
]


@pytest.mark.parametrize("status,raw,headers,code,retryable,fault,wait", CASES,
                         ids=[f"{c[0]}-{c[3].name}-{i}" for i, c in enumerate(CASES)])
def test_each_status_class_maps_to_its_code(status, raw, headers, code, retryable, fault, wait):
    err = status_error("prov", status, headers, raw)
    assert err.code == code
    assert err.retryable is retryable
    assert (err.code in UPSTREAM_FAULTS) is fault     # what the breaker will count
    assert err.retry_after_ms == wait
    assert err.message.startswith("prov: ") and f"HTTP {status}" in err.message


def test_the_providers_message_is_surfaced_and_bounded():
    err = status_error("prov", 400, {}, body("context length is 8192 tokens, you asked 9000"))
    assert "context length is 8192 tokens, you asked 9000" in err.message
    huge = status_error("prov", 500, {}, body("x" * 1_000_000))
    assert len(huge.message) < MAX_DETAIL + 40 and huge.message.endswith("…")
    raw = status_error("prov", 502, {}, b"line one\r\nline two\n" + b"y" * 100_000)
    assert "line one line two" in raw.message and "\n" not in raw.message
    assert len(raw.message) < MAX_DETAIL + 40
    binary = status_error("prov", 500, {}, b"\xff\xfe\x00garbage")
    assert binary.code == ErrorCode.UPSTREAM_ERROR      # undecodable bytes never crash the mapping


@pytest.mark.parametrize("headers,expected", [
    ({"retry-after": "3"}, 3000), ({"retry-after": "0.5"}, 500), ({"retry-after-ms": "120"}, 120),
    ({"retry-after": "-4"}, 0), ({"retry-after": "soon"}, 0), ({"retry-after": "nan"}, 0),
    ({"retry-after": "1e12"}, 86_400_000), ({}, 0),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10_000),
])
def test_retry_after_forms(headers, expected):
    from email.utils import parsedate_to_datetime
    now = parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert retry_after_ms(headers, now) == expected


@pytest.mark.parametrize("obj,code", [
    ({"error": {"message": "model crashed"}}, ErrorCode.UPSTREAM_ERROR),
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, ErrorCode.UPSTREAM_ERROR),
    ({"error": {"type": "rate_limit_error", "message": "slow"}}, ErrorCode.RATE_LIMITED),
    ({"error": {"type": "invalid_request_error", "message": "bad"}}, ErrorCode.INVALID_REQUEST),
    ({"error": "plain text error"}, ErrorCode.UPSTREAM_ERROR),
])
def test_errors_inside_a_200_stream(obj, code):
    err = in_band_error("prov", obj)
    assert err.code == code and err.message.startswith("prov: ")


@pytest.mark.parametrize("exc,code", [
    (ReadTimeout("no response bytes within 1 s"), ErrorCode.UPSTREAM_TIMEOUT),
    (ConnectTimeout("connect timed out"), ErrorCode.UPSTREAM_TIMEOUT),
    (PoolTimeout("no connection free"), ErrorCode.UPSTREAM_TIMEOUT),
    (ConnectError("connection refused"), ErrorCode.UPSTREAM_ERROR),
    (ProtocolError("malformed HTTP response"), ErrorCode.UPSTREAM_ERROR),
    (PeerClosedError("reset before the response headers", False), ErrorCode.UPSTREAM_ERROR),
    (PeerClosedError("reset mid-body", True), ErrorCode.UPSTREAM_CUT),
])
def test_transport_faults_are_retryable_upstream_faults(exc, code):
    err = transport_error("prov", exc)
    assert err.code == code and err.retryable and err.code in UPSTREAM_FAULTS

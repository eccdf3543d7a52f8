"""The request signature of PROTOCOL.md §9.4 at the HTTP door: a partial header set is refused."""

from atp_server.auth import SIG_SIGNATURE, SIG_TIMESTAMP

from .test_restart import now_ms, post, signed_headers


def test_http_refuses_a_partial_signature_header_set(atp_server):
    # Without x-atp-signature the request used to pass as unsigned, the other three ignored.
    headers = {k: v for k, v in signed_headers(now_ms()).items() if k != SIG_SIGNATURE}
    assert post(atp_server, headers) == (401, "BAD_SIGNATURE")
    lenient = {**signed_headers(now_ms()), SIG_TIMESTAMP: f"+{now_ms()}"}   # int() took it
    assert post(atp_server, lenient) == (401, "BAD_SIGNATURE")
    assert post(atp_server, signed_headers(now_ms())) == (200, None)

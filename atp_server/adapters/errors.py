"""Upstream failures as wire codes: HTTP statuses, error bodies and transport faults -> AtpError.

The code decides two things downstream: whether dispatch may try again (codec.errors.RETRYABLE:
rate limits, 5xx, timeouts, resets, cut streams) and whether the breaker counts it against the
provider (routing.health.UPSTREAM_FAULTS). A request the upstream refuses because of the request
itself (400/413/422, content policy, an unknown model) or because of who is asking (401/403) is
neither: another try cannot succeed, and one client's bad request must not evict a model for all.
The provider's own message reaches the client, bounded: an error body is upstream input.
"""
import time
from email.utils import parsedate_to_datetime

import orjson

from codec.errors import ErrorCode

from ..types import AtpError
from .http_client import HttpClientError, HttpTimeout, PeerClosedError, PoolTimeout

__all__ = ["MAX_DETAIL", "MAX_ERROR_BODY", "in_band_error", "retry_after_ms", "status_error", "transport_error"]

# The provider's message is kept to this many characters: enough for any real explanation
# ("This model's maximum context length is 8192 tokens, however you requested 9000 ..."), while a
# misbehaving upstream cannot make us relay (and log, and audit) megabytes.
MAX_DETAIL = 300
# How much of an error body is read: far more than any real error object (a few hundred bytes),
# small enough that an upstream answering 500 with a megabyte of HTML costs us nothing.
MAX_ERROR_BODY = 64 * 1024
# A Retry-After beyond a day is a broken header, not advice; clamped so arithmetic stays sane.
_MAX_RETRY_AFTER_MS = 86_400_000

# Error `type`/`code` words in OpenAI, Anthropic, vLLM and TGI bodies that name a content-policy
# refusal (OpenAI: content_policy_violation, content_filter; Azure: ResponsibleAIPolicyViolation).
_POLICY_WORDS = ("content_policy", "content_filter", "responsibleaipolicy", "safety")
# 429 bodies that mean "your account is out of credit": waiting does not help (OpenAI's code).
_QUOTA_WORDS = ("insufficient_quota", "billing")


def _bounded(text: str) -> str:
    text = " ".join(text.split())              # no raw newlines/control runs in a one-line message
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 1] + "…"


def error_detail(obj) -> tuple[str, str]:
    """(message, `type`/`code` words, lower-cased) of an error body in any common dialect:
    {"error": {"message", "type", "code"}} (OpenAI, Anthropic's inner error), {"error": "text"}
    (TGI, Ollama), {"message": ...}, or anything else as its text."""
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or err.get("code") or err
        kinds = " ".join(str(err.get(k) or "") for k in ("type", "code", "status"))
        if isinstance(obj, dict) and obj.get("type") and obj is not err:   # Anthropic: top-level type
            kinds += " " + str(obj["type"])
        return _bounded(str(message)), kinds.lower()
    return _bounded(str(err)), ""


def retry_after_ms(headers: dict[str, str], now: float | None = None) -> int:
    """Retry-After (seconds or an HTTP date) or retry-after-ms, in ms; 0 when absent or garbled."""
    try:
        if "retry-after-ms" in headers:
            ms = float(headers["retry-after-ms"])
        else:
            value = headers.get("retry-after")
            if value is None:
                return 0
            try:
                ms = float(value) * 1000
            except ValueError:                     # the HTTP-date form
                ms = (parsedate_to_datetime(value).timestamp() - (now or time.time())) * 1000
        if ms != ms:                               # NaN
            return 0
        return int(min(max(ms, 0), _MAX_RETRY_AFTER_MS))
    except (ValueError, TypeError, OverflowError):
        return 0


def status_error(name: str, status: int, headers: dict[str, str], body: bytes) -> AtpError:
    """A non-2xx upstream answer as the AtpError the client gets; `name` is the provider."""
    try:
        message, kinds = error_detail(orjson.loads(body))
    except orjson.JSONDecodeError:
        message, kinds = _bounded(body[:MAX_DETAIL * 4].decode("utf-8", "replace")), ""
    text = f"{name}: upstream HTTP {status}: {message}"
    low = message.lower()
    wait = retry_after_ms(headers)
    if status == 429:
        if any(w in kinds for w in _QUOTA_WORDS):
            # Out of credit: no Retry-After will fix it, but another provider can answer.
            return AtpError(ErrorCode.UPSTREAM_ERROR, text)
        return AtpError(ErrorCode.RATE_LIMITED, text, wait)
    if status in (408, 504):
        return AtpError(ErrorCode.UPSTREAM_TIMEOUT, text, wait)
    if status >= 500 or status in (402, 409, 425):
        # 5xx (529 is Anthropic's "overloaded"): the provider's fault. 402: the provider account
        # cannot pay for anyone's request. 409/425: the upstream asks for the same request again.
        return AtpError(ErrorCode.UPSTREAM_ERROR, text, wait)
    if any(w in kinds or w in low for w in _POLICY_WORDS):
        return AtpError(ErrorCode.INVALID_REQUEST, f"{name}: refused by the provider's content "
                                                   f"policy (HTTP {status}): {message}")
    model_missing = "model_not_found" in kinds or ("model" in low and ("not found" in low
                                                                      or "does not exist" in low))
    if model_missing and status in (400, 404):
        return AtpError(ErrorCode.UNKNOWN_MODEL, text)
    if status in (401, 403):
        # The provider refused ATP's credentials (or this key's access to the model): retrying or
        # counting it against the model's health cannot help; the operator must fix the key.
        return AtpError(ErrorCode.FORBIDDEN, f"{name}: upstream refused the gateway's credentials "
                                             f"(HTTP {status}): {message}")
    if status == 404:
        return AtpError(ErrorCode.INTERNAL, f"{name}: upstream has no such endpoint (HTTP 404; "
                                            f"check the provider's base_url): {message}")
    return AtpError(ErrorCode.INVALID_REQUEST, text)   # 400, 413, 422 and the other 4xx


def in_band_error(name: str, obj) -> AtpError:
    """An error object sent inside a 200 stream (OpenAI-compatible servers, Anthropic's `error`
    event): classified by its type words, else an upstream error."""
    message, kinds = error_detail(obj)
    text = f"{name}: {message}"
    if "rate_limit" in kinds:
        return AtpError(ErrorCode.RATE_LIMITED, text)
    if "invalid_request" in kinds or any(w in kinds for w in _POLICY_WORDS):
        return AtpError(ErrorCode.INVALID_REQUEST, text)
    return AtpError(ErrorCode.UPSTREAM_ERROR, text)   # overloaded_error, api_error, server_error...


def transport_error(name: str, e: HttpClientError) -> AtpError:
    """No (complete) HTTP answer: timeouts, refused or reset connections, broken HTTP. All are
    the upstream's (or the network's) fault and may succeed elsewhere or later."""
    if isinstance(e, PeerClosedError):
        # A reset after the headers cut an answer under way; before them nothing was answered.
        code = ErrorCode.UPSTREAM_CUT if e.headers_received else ErrorCode.UPSTREAM_ERROR
        return AtpError(code, f"{name}: {e}")
    if isinstance(e, PoolTimeout):
        # Every pooled connection is busy: the provider is not keeping up with what we send it.
        return AtpError(ErrorCode.UPSTREAM_TIMEOUT, f"{name}: {type(e).__name__}: {e}")
    code = ErrorCode.UPSTREAM_TIMEOUT if isinstance(e, HttpTimeout) else ErrorCode.UPSTREAM_ERROR
    return AtpError(code, f"{name}: {type(e).__name__}: {e}")

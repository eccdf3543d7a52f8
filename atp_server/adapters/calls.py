"""Upstream HTTP calls shared by the HTTP adapters: one whole-body call with its failures as wire
codes (adapters/errors.py), and draining a finished stream's response so its socket is reused."""
import asyncio

import orjson

from codec.errors import ErrorCode

from ..types import AtpError
from .errors import transport_error
from .http_client import HttpClient, HttpClientError

DRAIN_S = 1.0  # how long to wait for the HTTP end after a stream's last event so the socket can be reused


async def call(http: HttpClient, name: str, method: str, url: str, headers: dict, body: bytes,
               status_error) -> bytes:
    """The 200 body of one exchange; a transport failure, or another status via
    `status_error(name, status, headers, body)`, raises AtpError."""
    try:
        resp = await http.request(method, url, headers=headers, body=body)
    except HttpClientError as e:   # a reset after the headers is UPSTREAM_CUT there, as before
        raise transport_error(name, e) from None
    if resp.status != 200:
        raise status_error(name, resp.status, resp.headers, resp.body)
    return resp.body


async def call_json(http: HttpClient, name: str, method: str, url: str, headers: dict, body: bytes,
                    status_error):
    """call(), its body parsed as JSON (a body that is not JSON is the upstream's fault)."""
    raw = await call(http, name, method, url, headers, body, status_error)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{name}: malformed JSON body") from None


async def answers(probe) -> bool:
    """A health probe: True when the awaited call succeeds, False when it fails with an AtpError."""
    try:
        await probe
    except AtpError:
        return False
    return True


async def drain(resp) -> None:
    """After a stream's end marker only the chunked terminator should remain: wait briefly for it
    so the socket goes back to the pool, but never let a sloppy upstream turn a finished answer
    into an error."""
    try:
        async with asyncio.timeout(DRAIN_S):
            await resp.read()
    except (TimeoutError, HttpClientError):
        resp.close()

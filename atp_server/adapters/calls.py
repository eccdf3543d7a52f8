"""One whole-body upstream HTTP call with its failures as wire codes, shared by the HTTP adapters."""
import orjson

from codec.errors import ErrorCode

from ..types import AtpError
from .http_client import HttpClient, HttpClientError, PeerClosedError
from .openai_compat import _transport_error


async def call(http: HttpClient, name: str, method: str, url: str, headers: dict, body: bytes,
               status_error) -> bytes:
    """The 200 body of one exchange; a transport failure, or another status via
    `status_error(name, status, headers, body)`, raises AtpError."""
    try:
        resp = await http.request(method, url, headers=headers, body=body)
    except PeerClosedError as e:
        code = ErrorCode.UPSTREAM_CUT if e.headers_received else ErrorCode.UPSTREAM_ERROR
        raise AtpError(code, f"{name}: {e}") from None
    except HttpClientError as e:
        raise _transport_error(name, e) from None
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

"""Adapter for Anthropic's Messages API (/v1/messages): request mapping, a sans-I/O SSE event parser, errors."""
from __future__ import annotations

from typing import NamedTuple

import orjson

from codec.errors import ErrorCode

from ..types import AtpError, ChatRequest, Finish, ImagePart, TextDelta, ToolCall, ToolCallDelta
from .base import ModelSpec
from .calls import answers, call_json, drain as _drain
from .http_client import HttpClient, HttpClientError, PeerClosedError
from .errors import retry_after_ms as _retry_after_ms
from .errors import transport_error as _transport_error

# ---- the wire events the parser yields (private to this module and its dialect twin) -------------


class MessageStart(NamedTuple):
    id: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None


class BlockStart(NamedTuple):
    index: int
    block_type: str               # text | tool_use | thinking | redacted_thinking | server_tool_use ...
    block: dict                   # the content_block as sent (tool_use carries id and name)


class TextChunk(NamedTuple):
    index: int
    text: str


class ToolInputChunk(NamedTuple):
    index: int
    partial_json: str


class ThinkingChunk(NamedTuple):
    index: int
    thinking: str


class SignatureChunk(NamedTuple):
    index: int
    signature: str


class BlockStop(NamedTuple):
    index: int


class MessageDelta(NamedTuple):
    stop_reason: str | None
    stop_sequence: str | None
    output_tokens: int | None
    input_tokens: int | None      # newer API versions repeat the running input count here


class MessageStop(NamedTuple):
    pass


class Ping(NamedTuple):
    pass


class StreamError(NamedTuple):
    error_type: str               # overloaded_error, api_error, invalid_request_error, ...
    message: str


# Stream states and the events allowed in each: (state, event type) -> next state. A pair that is
# missing is a protocol violation by the upstream (h11-style table, DESIGN §7.3). ping and error may
# come at any time and are handled before the table.
_BEFORE, _OPEN, _IN_BLOCK, _DELTA_SEEN, _STOPPED = "before", "open", "in_block", "delta_seen", "stopped"
_TRANSITIONS = {
    (_BEFORE, "message_start"): _OPEN,
    (_OPEN, "content_block_start"): _IN_BLOCK,
    (_IN_BLOCK, "content_block_delta"): _IN_BLOCK,
    (_IN_BLOCK, "content_block_stop"): _OPEN,
    (_OPEN, "message_delta"): _DELTA_SEEN,
    (_DELTA_SEEN, "message_delta"): _DELTA_SEEN,
    (_DELTA_SEEN, "message_stop"): _STOPPED,
    (_OPEN, "message_stop"): _STOPPED,
}
_WHERE = {_BEFORE: "before message_start", _OPEN: "between content blocks", _IN_BLOCK: "inside a content block",
          _DELTA_SEEN: "after message_delta", _STOPPED: "after message_stop"}
_KNOWN = frozenset(t for _, t in _TRANSITIONS) | {"ping", "error"}
_MAX_EVENT_BYTES = 1 << 20   # one SSE event larger than this is not a Messages stream: refuse, bounded


def _protocol(message: str) -> AtpError:
    return AtpError(ErrorCode.UPSTREAM_ERROR, message)


class SSEParser:
    """Anthropic SSE bytes -> wire events. Sans-I/O: `feed(bytes) -> [event]`, then `end()`.

    The `type` inside each data object decides the event (it always repeats the `event:` line);
    event types this parser does not know are skipped, as Anthropic's versioning policy asks.
    """

    __slots__ = ("_tail", "_data", "state")

    def __init__(self):
        self._tail = b""
        self._data: list[bytes] = []
        self.state = _BEFORE

    def feed(self, chunk: bytes) -> list:
        buf = self._tail + chunk if self._tail else chunk
        lines = buf.split(b"\n")
        self._tail = lines.pop()      # an incomplete line waits for the next chunk
        if len(self._tail) > _MAX_EVENT_BYTES:
            raise _protocol("SSE line over 1 MiB")
        out = []
        data = self._data
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if data:
                    event = self._event(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
                    if event is not None:
                        out.append(event)
            elif line[:5] == b"data:":
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            # event:, id:, retry: and comments (":") carry nothing the data object does not
        return out

    def end(self) -> None:
        """The body ended: anything but a finished message is a cut stream."""
        if self.state is not _STOPPED:
            where = "before message_start" if self.state is _BEFORE else "without message_stop"
            raise AtpError(ErrorCode.UPSTREAM_CUT, f"stream ended {where}")

    def _event(self, raw: bytes):
        try:
            obj = orjson.loads(raw)
            kind = obj["type"]
            if type(kind) is not str:
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise _protocol(f"malformed SSE data: {raw[:80]!r}") from None
        if kind not in _KNOWN:
            return None
        try:
            if kind == "ping":
                return Ping()
            if kind == "error":
                err = obj.get("error") or {}
                return StreamError(str(err.get("type") or "api_error"), str(err.get("message") or "")[:300])
            nxt = _TRANSITIONS.get((self.state, kind))
            if nxt is None:
                raise _protocol(f"{kind} not allowed {_WHERE[self.state]}")
            self.state = nxt
            if kind == "content_block_delta":
                d = obj["delta"]
                dtype, i = d["type"], obj["index"]
                if dtype == "text_delta":
                    return TextChunk(i, d["text"])
                if dtype == "input_json_delta":
                    return ToolInputChunk(i, d["partial_json"])
                if dtype == "thinking_delta":
                    return ThinkingChunk(i, d["thinking"])
                if dtype == "signature_delta":
                    return SignatureChunk(i, d["signature"])
                return None    # citations_delta and future kinds: no neutral meaning yet
            if kind == "content_block_start":
                block = obj["content_block"]
                return BlockStart(obj["index"], block["type"], block)
            if kind == "content_block_stop":
                return BlockStop(obj["index"])
            if kind == "message_delta":
                u = obj.get("usage") or {}
                d = obj.get("delta") or {}
                return MessageDelta(d.get("stop_reason"), d.get("stop_sequence"),
                                    u.get("output_tokens"), u.get("input_tokens"))
            if kind == "message_start":
                m = obj["message"]
                u = m.get("usage") or {}
                return MessageStart(m.get("id", ""), m.get("model", ""), u.get("input_tokens"),
                                    u.get("output_tokens"), u.get("cache_read_input_tokens"))
            return MessageStop()
        except (KeyError, TypeError, AttributeError):
            raise _protocol(f"malformed {kind} event") from None


# ---- neutral <-> Anthropic mapping -----------------------------------------------------------------

# Anthropic stop_reason -> the neutral (OpenAI-style) finish reason the other dialects speak.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter"}

# error.type -> wire code. Overload and server faults are the provider's, so retryable; a request
# Anthropic refuses would be refused by any replica, so it is not retried.
ERROR_CODES = {
    "invalid_request_error": ErrorCode.INVALID_REQUEST, "request_too_large": ErrorCode.INVALID_REQUEST,
    "not_found_error": ErrorCode.UNKNOWN_MODEL, "rate_limit_error": ErrorCode.RATE_LIMITED,
    "overloaded_error": ErrorCode.UPSTREAM_ERROR, "api_error": ErrorCode.UPSTREAM_ERROR,
    "timeout_error": ErrorCode.UPSTREAM_TIMEOUT,
    # The provider refused the gateway's credentials: as errors.status_error does for every other
    # provider's 401/403 — not retried, not counted against the model's health; the operator fixes
    # the key. Out of credit: another provider can answer, so an upstream error (like a quota 429).
    "authentication_error": ErrorCode.FORBIDDEN, "permission_error": ErrorCode.FORBIDDEN,
    "billing_error": ErrorCode.UPSTREAM_ERROR,
}
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


def error_for(name: str, error_type: str, message: str, retry_after_ms: int = 0) -> AtpError:
    code = ERROR_CODES.get(error_type, ErrorCode.UPSTREAM_ERROR)
    return AtpError(code, f"{name}: {error_type}: {message}", retry_after_ms)


def status_error(name: str, status: int, headers: dict[str, str], body: bytes) -> AtpError:
    """A non-200 answer: {"type": "error", "error": {"type", "message"}} or anything else."""
    try:
        err = orjson.loads(body)["error"]
        etype, message = str(err["type"]), str(err.get("message") or "")[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        etype = _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        message = body[:300].decode("utf-8", "replace")
    if etype == "not_found_error" and "model" not in message.lower():
        etype = "api_error"     # a wrong base_url, not an unknown model: our misconfiguration
    retry = _retry_after_ms(headers) if status in (429, 529) or etype in ("overloaded_error",
                                                                          "rate_limit_error") else 0
    return error_for(name, etype, f"HTTP {status}: {message}", retry)


def _image(part: ImagePart) -> dict:
    """An image part as an Anthropic image block: base64 data from a data: URL, else a URL source."""
    url = part.url
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0]
        if not head.endswith(";base64") or not media:
            raise AtpError(ErrorCode.INVALID_REQUEST, "image data: URLs must be data:<type>;base64,...")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content(text: str, detail) -> str | list:
    """One message's content: its text, or its blocks when it has images or tool calls."""
    if detail is None:
        return text
    blocks = [{"type": "text", "text": p} if type(p) is str else _image(p) for p in detail.parts if p != ""]
    if not detail.parts and text:
        blocks.append({"type": "text", "text": text})
    for call in detail.tool_calls:
        try:
            args = orjson.loads(call.arguments) if call.arguments else {}
        except orjson.JSONDecodeError:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"tool call {call.id}: arguments are not JSON") from None
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
    return blocks if blocks and (detail.tool_calls or any(type(p) is not str for p in detail.parts)) else text


# Neutral parameters with no Anthropic counterpart: refused by name, never dropped (issue 9).
# temperature and top_p are forwarded: models that no longer take them answer with their own 400.
_UNSUPPORTED = ("seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs")


def messages_payload(model: ModelSpec, request: ChatRequest, stream: bool) -> dict:
    """The neutral request as a Messages body: system turns lifted to `system`, tool results as
    user tool_result blocks, images as image blocks, max_tokens always set (Anthropic requires it)."""
    system, messages = [], []
    details = request.details or (None,) * len(request.messages)
    for (role, text), detail in zip(request.messages, details):
        if role in ("system", "developer"):
            system.append(text)
        elif role == "tool":
            call_id = detail.tool_call_id if detail is not None else None
            if not call_id:
                raise AtpError(ErrorCode.INVALID_REQUEST, "a tool message needs the tool_call_id it answers")
            block = {"type": "tool_result", "tool_use_id": call_id, "content": text}
            if messages and messages[-1]["role"] == "user" and type(messages[-1]["content"]) is list:
                messages[-1]["content"].append(block)   # parallel calls' results share one user turn
            else:
                messages.append({"role": "user", "content": [block]})
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": _content(text, detail)})
        else:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"role {role!r} has no Anthropic equivalent")
    if not messages:
        raise AtpError(ErrorCode.INVALID_REQUEST, "Anthropic needs at least one user or assistant message")
    body = {"model": model.upstream, "messages": messages,
            "max_tokens": request.max_tokens or model.max_output_tokens}
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        if request.temperature > 1:   # Anthropic's range is [0, 1]; rescaling would change meaning
            raise AtpError(ErrorCode.INVALID_REQUEST, "temperature above 1 is not accepted by Anthropic models")
        body["temperature"] = request.temperature
    for name in _UNSUPPORTED:
        if getattr(request, name) not in (None, False):
            raise AtpError(ErrorCode.INVALID_REQUEST, f"{name} is not supported by Anthropic models")
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":   # structured outputs: a JSON object needs no schema of its own
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema else {"type": "object"}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        body["tools"] = [{"name": t.name, "input_schema": t.parameters or {"type": "object", "properties": {}},
                          **({"description": t.description} if t.description else {})} for t in request.tools]
    choice = request.tool_choice
    if choice is not None:
        tc = ({"type": "tool", "name": choice.name} if choice.mode == "function" else
              {"type": {"required": "any"}.get(choice.mode, choice.mode)})
        if request.parallel_tool_calls is False and choice.mode != "none":
            tc["disable_parallel_tool_use"] = True
        body["tool_choice"] = tc
    elif request.parallel_tool_calls is False and request.tools:
        body["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
    if stream:
        body["stream"] = True
    return body


def _named(name: str, e: AtpError) -> AtpError:
    """A parser error (which knows no provider) as this provider's."""
    return AtpError(e.code, f"{name}: {e.message}", e.retry_after_ms)


class AnthropicAdapter:
    """POST {base_url}/v1/messages with x-api-key and anthropic-version; SSE or one JSON answer."""

    def __init__(self, name: str, settings):
        self.name = name
        self.settings = settings
        self.capabilities = frozenset(settings.capabilities)
        self._url = settings.base_url.rstrip("/") + "/v1/messages"
        self._models_url = settings.base_url.rstrip("/") + "/v1/models"
        headers = {"Content-Type": "application/json", "anthropic-version": settings.anthropic_version}
        if settings.api_key:
            headers["x-api-key"] = settings.api_key
        headers.update(settings.extra_headers)
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._json_headers = {**headers, "Accept": "application/json"}
        self._http = HttpClient(max_connections=settings.max_connections,
                                connect_timeout_s=settings.connect_timeout_s, read_timeout_s=settings.timeout_s)

    async def stream(self, model: ModelSpec, request: ChatRequest):
        body = orjson.dumps(messages_payload(model, request, True))
        name = self.name
        in_tok = out_tok = reason = cached = None
        tools: dict[int, int] = {}      # Anthropic block index -> tool call ordinal (OpenAI's index)
        parser = SSEParser()
        try:
            async with self._http.stream("POST", self._url, headers=self._stream_headers, body=body) as resp:
                if resp.status != 200:
                    raise status_error(name, resp.status, resp.headers, await resp.read())
                async for chunk in resp:
                    try:
                        events = parser.feed(chunk)
                    except AtpError as e:
                        raise _named(name, e) from None
                    for ev in events:
                        kind = type(ev)
                        if kind is TextChunk:
                            if ev.text:
                                yield TextDelta(ev.text, 1)
                        elif kind is ToolInputChunk:
                            if ev.partial_json and ev.index in tools:
                                yield ToolCallDelta(tools[ev.index], None, None, ev.partial_json)
                        elif kind is BlockStart:
                            if ev.block_type == "tool_use":
                                tools[ev.index] = n = len(tools)
                                yield ToolCallDelta(n, ev.block.get("id", ""), ev.block.get("name", ""), "")
                        elif kind is MessageDelta:
                            reason = ev.stop_reason or reason
                            out_tok = ev.output_tokens if ev.output_tokens is not None else out_tok
                            in_tok = ev.input_tokens if ev.input_tokens is not None else in_tok
                        elif kind is MessageStart:
                            in_tok, out_tok, cached = ev.input_tokens, ev.output_tokens, ev.cache_read_tokens
                        elif kind is StreamError:
                            raise error_for(name, ev.error_type, ev.message)
                    if parser.state is _STOPPED:
                        break
                if parser.state is _STOPPED and not resp.complete:
                    await _drain(resp)
        except PeerClosedError as e:
            if parser.state is not _STOPPED:
                code = ErrorCode.UPSTREAM_CUT if e.headers_received else ErrorCode.UPSTREAM_ERROR
                raise AtpError(code, f"{name}: {e}") from None
        except HttpClientError as e:
            raise _transport_error(name, e) from None
        try:
            parser.end()
        except AtpError as e:
            raise _named(name, e) from None
        yield Finish(FINISH.get(reason, "stop"), in_tok, out_tok, (), cached)

    async def complete(self, model: ModelSpec, request: ChatRequest) -> tuple[str, Finish]:
        obj = await call_json(self._http, self.name, "POST", self._url, self._json_headers,
                              orjson.dumps(messages_payload(model, request, False)), status_error)
        try:
            if obj.get("type") == "error":
                err = obj["error"]
                raise error_for(self.name, str(err.get("type")), str(err.get("message"))[:300])
            blocks = obj["content"]
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
            calls = tuple(ToolCall(b["id"], b["name"], orjson.dumps(b.get("input") or {}).decode())
                          for b in blocks if b.get("type") == "tool_use")
            usage = obj.get("usage") or {}
        except (KeyError, TypeError, AttributeError):
            raise _protocol(f"{self.name}: malformed Messages body") from None
        return text, Finish(FINISH.get(obj.get("stop_reason"), "stop"), usage.get("input_tokens"),
                            usage.get("output_tokens"), calls, usage.get("cache_read_input_tokens"))

    async def list_models(self) -> list[str]:
        """The model ids the key may use (GET /v1/models, first page): discovery."""
        obj = await call_json(self._http, self.name, "GET", self._models_url, self._json_headers, b"", status_error)
        try:
            return [m["id"] for m in obj["data"]]
        except (KeyError, TypeError):
            raise _protocol(f"{self.name}: malformed /v1/models body") from None

    async def health(self) -> bool:
        """The API answers with our key: a model listing, not a (billed) completion."""
        return await answers(self.list_models())

    async def aclose(self) -> None:
        await self._http.aclose()

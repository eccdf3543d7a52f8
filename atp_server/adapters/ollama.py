"""Adapter for Ollama's native API: /api/chat (NDJSON stream), /api/embed, /api/tags, /api/ps."""
from __future__ import annotations

from typing import NamedTuple

import orjson

from codec.errors import ErrorCode

from ..types import AtpError, ChatRequest, EmbeddingRequest, Embeddings, Finish, TextDelta, ToolCall, ToolCallDelta
from .base import ModelSpec
from .calls import answers, call_json, drain as _drain
from .http_client import HttpClient, HttpClientError, PeerClosedError
from .errors import retry_after_ms as _retry_after_ms
from .errors import transport_error as _transport_error

_MAX_LINE_BYTES = 1 << 20   # one NDJSON line larger than this is not an Ollama chunk: refuse, bounded
# done_reason -> neutral finish reason ("load"/"unload" answer a request with no messages)
FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}
# neutral options -> Ollama's `options` names
_OPTIONS = (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
            ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"))


class LoadedModel(NamedTuple):
    """One model Ollama holds in memory now (/api/ps): what resource-aware routing can read."""
    name: str
    size_bytes: int
    vram_bytes: int
    expires_at: str
    context_length: int | None


class NDJSONParser:
    """Ollama's NDJSON bytes -> one dict per line. Sans-I/O: `feed(bytes) -> [dict]`."""

    __slots__ = ("_tail",)

    def __init__(self):
        self._tail = b""

    def feed(self, chunk: bytes) -> list[dict]:
        lines = (self._tail + chunk if self._tail else chunk).split(b"\n")
        self._tail = lines.pop()      # an incomplete line waits for the next chunk
        if len(self._tail) > _MAX_LINE_BYTES:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, "NDJSON line over 1 MiB")
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise AtpError(ErrorCode.UPSTREAM_ERROR, f"malformed NDJSON line: {line[:80]!r}") from None
            if type(obj) is not dict:
                raise AtpError(ErrorCode.UPSTREAM_ERROR, f"NDJSON line is not an object: {line[:80]!r}")
            out.append(obj)
        return out


def _images(detail) -> list[str]:
    """Ollama takes images as bare base64: data: URLs unwrap; remote URLs it cannot fetch are refused."""
    out = []
    for p in detail.parts:
        if type(p) is str:
            continue
        head, _, data = p.url.partition(",")
        if not (head.startswith("data:") and head.endswith(";base64")):
            raise AtpError(ErrorCode.INVALID_REQUEST, "Ollama takes images as base64 data: URLs, not remote URLs")
        out.append(data)
    return out


def chat_payload(model: ModelSpec, request: ChatRequest, stream: bool, keep_alive: str = "") -> dict:
    """The neutral request as an /api/chat body; what Ollama cannot do is refused by name."""
    if request.logit_bias or request.logprobs or request.top_logprobs:
        name = "logit_bias" if request.logit_bias else "logprobs"
        raise AtpError(ErrorCode.INVALID_REQUEST, f"{name} is not supported by Ollama models")
    choice = request.tool_choice
    if choice is not None and choice.mode in ("required", "function"):
        raise AtpError(ErrorCode.INVALID_REQUEST, f"tool_choice {choice.mode} is not supported by Ollama models")
    details = request.details or (None,) * len(request.messages)
    call_names: dict[str, str] = {}    # tool call id -> function name: Ollama names results by tool
    messages = []
    for (role, text), detail in zip(request.messages, details):
        m = {"role": "system" if role == "developer" else role, "content": text}
        if detail is not None:
            if imgs := _images(detail):
                m["images"] = imgs
            if detail.tool_calls:
                calls = []
                for c in detail.tool_calls:
                    call_names[c.id] = c.name
                    try:
                        args = orjson.loads(c.arguments) if c.arguments else {}
                    except orjson.JSONDecodeError:
                        raise AtpError(ErrorCode.INVALID_REQUEST, f"tool call {c.id}: arguments are not JSON") from None
                    calls.append({"function": {"name": c.name, "arguments": args}})
                m["tool_calls"] = calls
            if role == "tool" and detail.tool_call_id in call_names:
                m["tool_name"] = call_names[detail.tool_call_id]
        messages.append(m)
    body = {"model": model.upstream, "messages": messages, "stream": stream}
    options = {key: v for name, key in _OPTIONS if (v := getattr(request, name)) is not None}
    options["num_predict"] = request.max_tokens or model.max_output_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    body["options"] = options
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        body["format"] = fmt.schema if fmt.type == "json_schema" and fmt.schema else "json"
    if request.tools and (choice is None or choice.mode != "none"):
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description or "",
            "parameters": t.parameters or {"type": "object", "properties": {}}}} for t in request.tools]
    if keep_alive:
        body["keep_alive"] = keep_alive
    return body


def status_error(name: str, status: int, headers: dict[str, str], body: bytes) -> AtpError:
    """A non-200 answer, {"error": "..."}: a missing model, a bad option, or the server's own fault."""
    try:
        detail = str(orjson.loads(body)["error"])[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        detail = body[:300].decode("utf-8", "replace")
    message = f"{name}: upstream HTTP {status}: {detail}"
    if status == 404 and "model" in detail.lower():
        return AtpError(ErrorCode.UNKNOWN_MODEL, message)
    if status in (400, 413, 422):
        return AtpError(ErrorCode.INVALID_REQUEST, message)
    if status in (429, 503):   # 503: Ollama's queue is full (OLLAMA_MAX_QUEUE): back off and retry
        return AtpError(ErrorCode.RATE_LIMITED if status == 429 else ErrorCode.UPSTREAM_ERROR, message,
                        _retry_after_ms(headers))
    if status in (408, 504):
        return AtpError(ErrorCode.UPSTREAM_TIMEOUT, message)
    return AtpError(ErrorCode.UPSTREAM_ERROR, message)


def _finish(obj: dict, tool_calls: tuple = ()) -> Finish:
    reason = "tool_calls" if tool_calls else FINISH.get(obj.get("done_reason") or "stop", "stop")
    return Finish(reason, obj.get("prompt_eval_count"), obj.get("eval_count"), tool_calls)


def _calls(message: dict, first: int) -> list[ToolCall]:
    """A message's tool_calls (arguments as objects) as neutral calls; ids when Ollama gives none."""
    out = []
    for i, c in enumerate(message.get("tool_calls") or (), first):
        fn = c["function"]
        out.append(ToolCall(c.get("id") or f"call_{i}", fn["name"], orjson.dumps(fn.get("arguments") or {}).decode()))
    return out


class OllamaAdapter:
    """Ollama's native API at base_url: chat streams NDJSON, one JSON object per line."""

    def __init__(self, name: str, settings):
        self.name = name
        self.settings = settings
        self.capabilities = frozenset(settings.capabilities)
        base = settings.base_url.rstrip("/")
        self._chat, self._embed = base + "/api/chat", base + "/api/embed"
        self._tags, self._ps = base + "/api/tags", base + "/api/ps"
        self._headers = {"Content-Type": "application/json", **settings.extra_headers}
        self._http = HttpClient(max_connections=settings.max_connections,
                                connect_timeout_s=settings.connect_timeout_s, read_timeout_s=settings.timeout_s)

    def _fail(self, e: AtpError) -> AtpError:
        return AtpError(e.code, f"{self.name}: {e.message}", e.retry_after_ms)

    async def stream(self, model: ModelSpec, request: ChatRequest):
        body = orjson.dumps(chat_payload(model, request, True, self.settings.keep_alive))
        parser, final, calls = NDJSONParser(), None, 0
        try:
            async with self._http.stream("POST", self._chat, headers=self._headers, body=body) as resp:
                if resp.status != 200:
                    raise status_error(self.name, resp.status, resp.headers, await resp.read())
                async for chunk in resp:
                    try:
                        objs = parser.feed(chunk)
                    except AtpError as e:
                        raise self._fail(e) from None
                    for obj in objs:
                        if "error" in obj:   # Ollama reports a failure after a 200 as an error line
                            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: {str(obj['error'])[:300]}")
                        msg = obj.get("message") or {}
                        if text := msg.get("content"):
                            yield TextDelta(text, 1)
                        if msg.get("tool_calls"):
                            try:
                                got = _calls(msg, calls)
                            except (KeyError, TypeError):
                                raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed tool_calls") from None
                            for c in got:   # Ollama sends each call whole: one delta carries all of it
                                yield ToolCallDelta(calls, c.id, c.name, c.arguments)
                                calls += 1
                        if obj.get("done"):
                            final = obj
                    if final is not None:
                        break
                if final is not None and not resp.complete:
                    await _drain(resp)     # so the socket goes back to the pool
        except PeerClosedError as e:
            if final is None:
                code = ErrorCode.UPSTREAM_CUT if e.headers_received else ErrorCode.UPSTREAM_ERROR
                raise AtpError(code, f"{self.name}: {e}") from None
        except HttpClientError as e:
            raise _transport_error(self.name, e) from None
        if final is None:
            raise AtpError(ErrorCode.UPSTREAM_CUT, f"{self.name}: stream ended without a done line")
        f = _finish(final)
        yield f._replace(reason="tool_calls") if calls else f

    async def _post(self, url: str, body: bytes):
        return await call_json(self._http, self.name, "POST", url, self._headers, body, status_error)

    async def complete(self, model: ModelSpec, request: ChatRequest) -> tuple[str, Finish]:
        obj = await self._post(self._chat, orjson.dumps(chat_payload(model, request, False, self.settings.keep_alive)))
        try:
            msg = obj["message"]
            return msg.get("content") or "", _finish(obj, tuple(_calls(msg, 0)))
        except (KeyError, TypeError, AttributeError):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed chat body") from None

    async def embed(self, model: ModelSpec, request: EmbeddingRequest) -> Embeddings:
        body = {"model": model.upstream, "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        obj = await self._post(self._embed, orjson.dumps(body))
        vectors = obj.get("embeddings") if type(obj) is dict else None
        if type(vectors) is not list or len(vectors) != len(request.inputs):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: embed answered no vector per input")
        return Embeddings(vectors, int(obj.get("prompt_eval_count") or 0))

    async def _get(self, url: str) -> dict:
        return await call_json(self._http, self.name, "GET", url, self._headers, b"", status_error)

    async def list_models(self) -> list[str]:
        """The models pulled on this Ollama (/api/tags): discovery."""
        try:
            return [m["name"] for m in (await self._get(self._tags))["models"]]
        except (KeyError, TypeError):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed /api/tags body") from None

    async def loaded_models(self) -> list[LoadedModel]:
        """The models in memory now (/api/ps), with their RAM/VRAM footprint."""
        try:
            return [LoadedModel(m["name"], int(m.get("size") or 0), int(m.get("size_vram") or 0),
                                str(m.get("expires_at") or ""), m.get("context_length"))
                    for m in (await self._get(self._ps))["models"]]
        except (KeyError, TypeError, ValueError):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed /api/ps body") from None

    async def health(self) -> bool:
        return await answers(self._get(self._tags))

    async def aclose(self) -> None:
        await self._http.aclose()

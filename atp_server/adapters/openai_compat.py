"""Adapter for OpenAI-compatible chat-completions upstreams (OpenAI, vLLM, llama.cpp, ...) over http_client."""
from __future__ import annotations

import orjson

from codec.errors import ErrorCode

from ..types import (AtpError, ChatRequest, EmbeddingRequest, Embeddings, Finish, TextDelta, ToolCall,
                     ToolCallDelta)
from .base import ModelSpec
from .calls import drain as _drain
from .errors import MAX_ERROR_BODY, in_band_error, status_error as _status_error, transport_error as _transport_error
from .http_client import HttpClient, HttpClientError, PeerClosedError



class OpenAICompatAdapter:
    """POST {base_url}/chat/completions; `stream()` parses SSE, `complete()` one JSON answer;
    `embed()` POSTs /embeddings, `list_models()` / `health()` GET /models.

    Quirks of the servers it is used with (see README, "How to add a provider"): llama-cpp-python's
    server takes a schema only as {"type": "json_object", "schema": ...} (json_schema_format =
    "json_object_schema"); TGI has no logit_bias and takes a schema as its grammar
    {"type": "json", "value": ...} (json_schema_format = "tgi"); some older servers reject
    stream_options (stream_usage = false: the usage is then counted and marked estimated);
    OpenAI's reasoning models want max_tokens_field = "max_completion_tokens".
    """

    def __init__(self, name: str, base_url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 connect_timeout_s: float = 5.0, max_connections: int = 64,
                 extra_headers: dict[str, str] | None = None, capabilities: frozenset = frozenset({"chat"}),
                 stream_usage: bool = True, max_tokens_field: str = "max_tokens",
                 json_schema_format: str = "json_schema",
                 total_timeout_s: float = 0.0, pool_timeout_s: float = 10.0, keepalive_s: float = 15.0,
                 max_concurrency: int = 0):
        self.name = name
        self.max_concurrency = max_concurrency   # enforced by the pipeline (dispatch.Caps)
        self.capabilities = frozenset(capabilities)
        self._base = base_url.rstrip("/")
        self._url = self._base + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        headers.update(extra_headers or {})
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._json_headers = {**headers, "Accept": "application/json"}
        self._stream_usage = stream_usage
        self._max_tokens_field = max_tokens_field
        self._json_schema_format = json_schema_format
        # timeout_s bounds upstream silence (time to headers, or a stall between stream chunks),
        # not the whole answer: a long generation that keeps streaming is healthy.
        self._http = HttpClient(max_connections=max_connections, connect_timeout_s=connect_timeout_s,
                                read_timeout_s=timeout_s, total_timeout_s=total_timeout_s or None,
                                pool_timeout_s=pool_timeout_s, idle_timeout_s=keepalive_s)

    def _payload(self, model: ModelSpec, request: ChatRequest, stream: bool) -> bytes:
        details = request.details
        messages = ([_message(r, c, d) for (r, c), d in zip(request.messages, details)] if details
                    else [{"role": r, "content": c} for r, c in request.messages])
        # max_output_tokens is enforced by clamping: the upstream never writes more than the model
        # is configured for, whatever the client asked (finish_reason "length" tells it so).
        limit = model.max_output_tokens
        body = {"model": model.upstream, "messages": messages, "stream": stream,
                self._max_tokens_field: min(request.max_tokens or limit, limit)}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        for key in _SAMPLING:
            if (value := getattr(request, key)) is not None:
                body[key] = value
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
        if (choice := request.tool_choice) is not None:
            body["tool_choice"] = (choice.mode if choice.mode != "function"
                                   else {"type": "function", "function": {"name": choice.name}})
        if (fmt := request.response_format) is not None:
            body["response_format"] = _response_format(fmt, self._json_schema_format)
        if stream and self._stream_usage:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def stream(self, model: ModelSpec, request: ChatRequest):
        body = self._payload(model, request, True)
        reason = in_tok = out_tok = cached = None
        done = False
        try:
            async with self._http.stream("POST", self._url, headers=self._stream_headers, body=body) as resp:
                if resp.status != 200:
                    raise _status_error(self.name, resp.status, resp.headers,
                                        await resp.read(limit=MAX_ERROR_BODY))
                sse = _SSEParser()
                async for chunk in resp:
                    for data in sse.feed(chunk):
                        if data == b"[DONE]":
                            done = True
                            break
                        try:
                            obj = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: bad JSON in stream") from None
                        if "error" in obj:  # some servers report failures in-band after a 200
                            raise in_band_error(self.name, obj)
                        usage = obj.get("usage")
                        if usage:
                            in_tok, out_tok = usage.get("prompt_tokens"), usage.get("completion_tokens")
                            cached = _cached(usage)
                        for choice in obj.get("choices") or ():
                            if choice.get("index", 0) != 0:
                                continue
                            delta = choice.get("delta") or _EMPTY
                            text = delta.get("content")
                            if text:
                                yield TextDelta(text, 1)
                            if delta.get("tool_calls"):
                                for item in _tool_call_deltas(delta["tool_calls"]):
                                    yield item
                            if choice.get("finish_reason"):
                                reason = choice["finish_reason"]
                    if done:
                        break
                if done and not resp.complete:
                    await _drain(resp)
        except PeerClosedError as e:
            if reason is None:  # a finish_reason already seen makes a missing tail harmless
                raise _transport_error(self.name, e) from None
        except HttpClientError as e:
            raise _transport_error(self.name, e) from None
        if not done and reason is None:
            raise AtpError(ErrorCode.UPSTREAM_CUT, f"{self.name}: stream ended without [DONE] or finish_reason")
        yield Finish(reason or "stop", in_tok, out_tok, (), cached)

    async def complete(self, model: ModelSpec, request: ChatRequest) -> tuple[str, Finish]:
        """One non-streamed answer: cheaper than SSE when the caller wants the whole text anyway."""
        body = self._payload(model, request, False)
        try:
            resp = await self._http.request("POST", self._url, headers=self._json_headers, body=body)
        except HttpClientError as e:
            raise _transport_error(self.name, e) from None
        if resp.status != 200:
            raise _status_error(self.name, resp.status, resp.headers, resp.body)
        try:
            obj = orjson.loads(resp.body)
            choice = obj["choices"][0]
            message = choice.get("message") or _EMPTY
            text = message.get("content") or ""
            calls = tuple(ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "")
                          for c in message.get("tool_calls") or ())
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed completion body") from None
        usage = obj.get("usage") or _EMPTY
        return text, Finish(choice.get("finish_reason") or "stop",
                            usage.get("prompt_tokens"), usage.get("completion_tokens"), calls, _cached(usage))

    async def _get_json(self, method: str, path: str, body: bytes = b""):
        try:
            resp = await self._http.request(method, self._base + path, headers=self._json_headers, body=body)
        except HttpClientError as e:
            raise _transport_error(self.name, e) from None
        if resp.status != 200:
            raise _status_error(self.name, resp.status, resp.headers, resp.body)
        try:
            return orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed JSON from {path}") from None

    async def embed(self, model: ModelSpec, request: EmbeddingRequest) -> Embeddings:
        """POST {base_url}/embeddings (OpenAI, vLLM, llama.cpp --embedding, Ollama /v1, LM Studio, TEI)."""
        body = {"model": model.upstream, "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user is not None:
            body["user"] = request.user
        obj = await self._get_json("POST", "/embeddings", orjson.dumps(body))
        try:
            rows = sorted(obj["data"], key=lambda row: row.get("index", 0))
            vectors = [row["embedding"] for row in rows]
        except (KeyError, TypeError, AttributeError):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed embeddings body") from None
        if len(vectors) != len(request.inputs):
            raise AtpError(ErrorCode.UPSTREAM_ERROR,
                           f"{self.name}: {len(vectors)} embeddings for {len(request.inputs)} inputs")
        for vector in vectors:
            _check_vector(self.name, vector)
        return Embeddings(vectors, (obj.get("usage") or _EMPTY).get("prompt_tokens"))

    async def list_models(self) -> list[str]:
        """GET {base_url}/models: the upstream names it serves now."""
        obj = await self._get_json("GET", "/models")
        try:
            return [row["id"] for row in obj["data"]]
        except (KeyError, TypeError):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed model list") from None

    async def health(self) -> bool:
        try:
            await self.list_models()
        except AtpError:
            return False
        return True

    async def aclose(self) -> None:
        await self._http.aclose()


_EMPTY: dict = {}
# Optional sampling parameters sent under their own names when the request sets them.
_SAMPLING = ("top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "parallel_tool_calls",
             "user")


def _message(role: str, text: str, detail) -> dict:
    """One neutral message (text + its MessageDetail) in OpenAI's shape."""
    if detail is None:
        return {"role": role, "content": text}
    if detail.parts:
        content = [{"type": "text", "text": p} if type(p) is str else
                   {"type": "image_url", "image_url": {"url": p.url, "detail": p.detail} if p.detail
                    else {"url": p.url}} for p in detail.parts]
    else:
        content = text if text or not detail.tool_calls else None
    out = {"role": role, "content": content}
    if detail.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in detail.tool_calls]
    if detail.tool_call_id is not None:
        out["tool_call_id"] = detail.tool_call_id
    if detail.name is not None:
        out["name"] = detail.name
    return out


def _tool(t) -> dict:
    fn = {"name": t.name}
    if t.description is not None:
        fn["description"] = t.description
    fn["parameters"] = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
    if t.strict is not None:
        fn["strict"] = t.strict
    return {"type": "function", "function": fn}


def _response_format(fmt, dialect: str = "json_schema") -> dict:
    """The request's response_format in the form the server takes (json_schema_format):
    OpenAI's; llama-cpp-python's {"type": "json_object", "schema": ...}; TGI's grammar
    {"type": "json", "value": <schema>} (its router's GrammarType; "json_object" is an alias there)."""
    if dialect == "tgi" and fmt.type in ("json_schema", "json_object"):
        return {"type": "json", "value": fmt.schema if fmt.schema is not None else {"type": "object"}}
    if dialect == "json_object_schema" and fmt.type == "json_schema":
        return {"type": "json_object", "schema": fmt.schema or {"type": "object"}}
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec = {"name": fmt.name, "schema": fmt.schema if fmt.schema is not None else {"type": "object"}}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    if fmt.description is not None:
        spec["description"] = fmt.description
    return {"type": "json_schema", "json_schema": spec}


def _tool_call_deltas(calls) -> list[ToolCallDelta]:
    out = []
    for i, call in enumerate(calls):
        if type(call) is not dict:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, "malformed tool_calls delta in stream")
        fn = call.get("function") or _EMPTY
        out.append(ToolCallDelta(call.get("index", i), call.get("id"), fn.get("name"), fn.get("arguments") or ""))
    return out


def _cached(usage: dict) -> int | None:
    details = usage.get("prompt_tokens_details")
    return details.get("cached_tokens") if type(details) is dict else None


class _SSEParser:
    """Server-sent events -> the `data` of each event. Other fields (event, id, retry) are unused."""

    __slots__ = ("_tail", "_lines")

    def __init__(self):
        self._tail, self._lines = b"", []

    def feed(self, chunk: bytes) -> list[bytes]:
        if (not self._tail and not self._lines and chunk.endswith(b"\n\n") and chunk.startswith(b"data: ")
                and chunk.count(b"\n") == 2 and b"\r" not in chunk):
            return [chunk[6:-2]]     # the common read: exactly one whole one-line event
        parts = (self._tail + chunk if self._tail else chunk).split(b"\n")
        self._tail = parts.pop()  # an incomplete line waits for the next chunk
        out, lines = [], self._lines
        for line in parts:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if lines:
                    out.append(lines[0] if len(lines) == 1 else b"\n".join(lines))
                    lines.clear()
            elif line.startswith(b"data:"):
                lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
        return out


def _check_vector(name: str, vector) -> None:
    """One embedding must be a flat list of numbers. A list of lists is what a server gives for a
    model it serves without pooling (llama-cpp-python with a decoder-only GGUF: one vector per
    token, measured with Gemma 3 270M): forwarding it would hand clients a malformed body."""
    if type(vector) is not list or not vector:
        raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{name}: malformed embeddings body (an embedding "
                       "is not a non-empty list of numbers)")
    first = vector[0]
    if type(first) is list:
        raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{name}: the server returned per-token embeddings "
                       f"({len(vector)} vectors of {len(first)} for one input), not one vector: it "
                       "serves this model without pooling (llama.cpp: --pooling mean)")
    if not all(type(x) is float or type(x) is int for x in vector):
        raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{name}: malformed embeddings body (an embedding "
                       "holds something other than numbers)")

"""Adapter for OpenAI-compatible chat-completions upstreams (OpenAI, vLLM, llama.cpp, ...) over http_client."""
from __future__ import annotations

import asyncio

import orjson

from codec.errors import ErrorCode

from ..types import AtpError, ChatRequest, Finish, TextDelta
from .base import ModelSpec
from .errors import MAX_ERROR_BODY, in_band_error, status_error as _status_error, transport_error as _transport_error
from .http_client import HttpClient, HttpClientError, PeerClosedError

_DRAIN_S = 1.0  # how long to wait for the HTTP end after `[DONE]` so the socket can be reused


class OpenAICompatAdapter:
    """POST {base_url}/chat/completions; `stream()` parses SSE, `complete()` one JSON answer."""

    def __init__(self, name: str, base_url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 connect_timeout_s: float = 5.0, max_connections: int = 64,
                 extra_headers: dict[str, str] | None = None, capabilities: frozenset = frozenset({"chat"}),
                 total_timeout_s: float = 0.0, pool_timeout_s: float = 10.0, keepalive_s: float = 15.0,
                 max_concurrency: int = 0):
        self.name = name
        self.max_concurrency = max_concurrency   # enforced by the pipeline (dispatch.Caps)
        self.capabilities = frozenset(capabilities)
        self._url = base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        headers.update(extra_headers or {})
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._json_headers = {**headers, "Accept": "application/json"}
        # timeout_s bounds upstream silence (time to headers, or a stall between stream chunks),
        # not the whole answer: a long generation that keeps streaming is healthy.
        self._http = HttpClient(max_connections=max_connections, connect_timeout_s=connect_timeout_s,
                                read_timeout_s=timeout_s, total_timeout_s=total_timeout_s or None,
                                pool_timeout_s=pool_timeout_s, idle_timeout_s=keepalive_s)

    def _payload(self, model: ModelSpec, request: ChatRequest, stream: bool) -> bytes:
        body = {"model": model.upstream, "messages": [{"role": r, "content": c} for r, c in request.messages],
                "stream": stream}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def stream(self, model: ModelSpec, request: ChatRequest):
        body = self._payload(model, request, True)
        reason = in_tok = out_tok = None
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
                        for choice in obj.get("choices") or ():
                            if choice.get("index", 0) != 0:
                                continue
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                yield TextDelta(text, 1)
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
        yield Finish(reason or "stop", in_tok, out_tok)

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
            text = (choice.get("message") or {}).get("content") or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{self.name}: malformed completion body") from None
        usage = obj.get("usage") or {}
        return text, Finish(choice.get("finish_reason") or "stop",
                            usage.get("prompt_tokens"), usage.get("completion_tokens"))

    async def aclose(self) -> None:
        await self._http.aclose()


class _SSEParser:
    """Server-sent events -> the `data` of each event. Other fields (event, id, retry) are unused."""

    __slots__ = ("_tail", "_lines")

    def __init__(self):
        self._tail, self._lines = b"", []

    def feed(self, chunk: bytes) -> list[bytes]:
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


async def _drain(resp) -> None:
    # After [DONE] only the chunked terminator should remain; wait briefly for it so the socket
    # goes back to the pool, but never let a sloppy upstream turn a finished answer into an error.
    try:
        async with asyncio.timeout(_DRAIN_S):
            await resp.read()
    except (TimeoutError, HttpClientError):
        resp.close()

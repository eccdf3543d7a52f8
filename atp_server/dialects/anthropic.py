"""The Anthropic HTTP dialect: Messages API JSON to the neutral request, and answers, SSE and errors back.

Every Messages parameter is forwarded or refused with a 400 that names it: nothing a client asks
for is dropped silently. `model` is any configured model id, or `auto` / `atp-fast|balanced|high`
to let ATP route; the optional `atp` object (the SDK's extra_body) carries tier, tenant, budget.
"""
from __future__ import annotations

import orjson

from codec.errors import ErrorCode

from ..adapters.base import required_capabilities
from ..types import (AtpError, ChatRequest, ImagePart, MessageDetail, ResponseFormat, ToolCall, ToolCallDelta,
                     ToolChoice, ToolSpec)

# `model` values that mean "route for me" (as in the OpenAI dialect): auto keeps atp.tier.
TIER_ALIASES = {"auto": None, "atp-fast": "fast", "atp-balanced": "balanced", "atp-high": "high"}
# neutral finish reason -> Anthropic stop_reason
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
# Messages parameters ATP cannot honour on every model: refused by name rather than ignored.
_REFUSED = ("top_k", "thinking", "container", "mcp_servers", "service_tier", "context_management", "speed",
            "inference_geo", "diagnostics", "user_profile_id", "workspace_id")
# cache_control is accepted and not forwarded: a caching hint, it never changes the answer.
_KNOWN = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p",
                    "tools", "tool_choice", "metadata", "stream", "output_config", "cache_control",
                    "atp"}) | frozenset(_REFUSED)
_NUM = (int, float)

_E = ErrorCode
# wire code -> (HTTP status, Anthropic error type); the SDK retries 429, 529 and 5xx by itself.
STATUS = {code: (401, "authentication_error") if 200 <= code <= 205 else
          (400, "invalid_request_error") if 100 <= code < 200 else (500, "api_error") for code in ErrorCode}
STATUS.update({_E.FORBIDDEN: (403, "permission_error"), _E.POLICY_DENIED: (403, "permission_error"), _E.BUDGET_EXCEEDED: (402, "billing_error"),
               _E.INVALID_REQUEST: (400, "invalid_request_error"), _E.UNKNOWN_MODEL: (404, "not_found_error"),
               _E.NO_ROUTE: (400, "invalid_request_error"), _E.RATE_LIMITED: (429, "rate_limit_error"),
               _E.OVERLOADED: (529, "overloaded_error"), _E.WINDOW_EXCEEDED: (429, "rate_limit_error"),
               _E.REPLAY_CACHE_FULL: (529, "overloaded_error"), _E.UNAVAILABLE: (529, "overloaded_error"),
               _E.UPSTREAM_TIMEOUT: (504, "timeout_error"), _E.TIMEOUT: (504, "timeout_error"),
               _E.UPSTREAM_ERROR: (502, "api_error"), _E.UPSTREAM_CUT: (502, "api_error")})


def bad(message: str) -> AtpError:
    return AtpError(ErrorCode.INVALID_REQUEST, message)


def error_json(exc: AtpError) -> dict:
    return {"type": "error", "error": {"type": STATUS[exc.code][1], "message": exc.message, "code": exc.name,
                                       "atp_code": int(exc.code), "retryable": exc.retryable}}


def _get(d: dict, key: str, types, what: str, prefix: str = ""):
    if (v := d.get(key)) is None or type(v) in types:    # type(): a JSON true is not an integer
        return v
    raise bad(f"{prefix}{key}: must be {what}")


def _text_blocks(value, where: str) -> str:
    """A string, or a list of text blocks (system, tool_result content): their text joined."""
    if type(value) is str:
        return value
    if type(value) is not list:
        raise bad(f"{where}: must be a string or a list of text blocks")
    for j, b in enumerate(value):
        if type(b) is not dict or b.get("type") != "text" or type(b.get("text")) is not str:
            raise bad(f"{where}[{j}]: only text blocks are supported here")
    return "\n".join(b["text"] for b in value)


def _image(block: dict, where: str) -> ImagePart:
    src = block.get("source")
    if type(src) is dict and src.get("type") == "base64" and type(src.get("data")) is str \
            and type(src.get("media_type")) is str:
        return ImagePart(f"data:{src['media_type']};base64,{src['data']}")
    if type(src) is dict and src.get("type") == "url" and type(src.get("url")) is str:
        return ImagePart(src["url"])
    raise bad(f"{where}.source: must be {{type: base64, media_type, data}} or {{type: url, url}}")


def _message(m, i: int, messages: list, details: list) -> None:
    """One Messages turn as one or more neutral messages (tool results become `tool` messages)."""
    where = f"messages[{i}]"
    if type(m) is not dict or m.get("role") not in ("user", "assistant"):
        raise bad(f"{where}.role: must be user or assistant")
    role, content = m["role"], m.get("content")
    if type(content) is str:
        messages.append((role, content))
        details.append(None)
        return
    if type(content) is not list:
        raise bad(f"{where}.content: must be a string or a list of content blocks")
    parts, calls = [], []
    for j, b in enumerate(content):
        w = f"{where}.content[{j}]"
        kind = b.get("type") if type(b) is dict else None
        if kind == "text" and type(b.get("text")) is str:
            parts.append(b["text"])
        elif kind == "image":
            parts.append(_image(b, w))
        elif kind == "tool_use" and role == "assistant":
            if type(b.get("id")) is not str or type(b.get("name")) is not str:
                raise bad(f"{w}: tool_use needs a string id and name")
            calls.append(ToolCall(b["id"], b["name"], orjson.dumps(b.get("input") or {}).decode()))
        elif kind == "tool_result" and role == "user":
            if type(b.get("tool_use_id")) is not str:
                raise bad(f"{w}.tool_use_id: must be a string")
            text = _text_blocks(b.get("content", ""), f"{w}.content")
            messages.append(("tool", f"Error: {text}" if b.get("is_error") else text))
            details.append(MessageDetail(tool_call_id=b["tool_use_id"]))
        else:
            raise bad(f"{w}: a {kind or 'non-object'} block is not supported in a {role} message")
    if parts or calls or not content:
        text = "\n".join(p for p in parts if type(p) is str)
        rich = calls or any(type(p) is not str for p in parts)
        messages.append((role, text))
        details.append(MessageDetail(parts=tuple(parts), tool_calls=tuple(calls)) if rich else None)


def _tools(data: dict) -> tuple[tuple, ToolChoice | None, bool | None]:
    tools = _get(data, "tools", (list,), "a list of tools") or ()
    specs = []
    for i, t in enumerate(tools):
        if type(t) is not dict or type(t.get("name")) is not str or type(t.get("input_schema")) is not dict:
            raise bad(f"tools[{i}]: must have a string name and an input_schema object "
                      "(server tools such as web_search are not supported)")
        specs.append(ToolSpec(t["name"], _get(t, "description", (str,), "a string", f"tools[{i}]."),
                              t["input_schema"]))
    choice = _get(data, "tool_choice", (dict,), "an object")
    if choice is None:
        return tuple(specs), None, None
    mode = {"auto": "auto", "any": "required", "none": "none", "tool": "function"}.get(choice.get("type"))
    if mode is None:
        raise bad("tool_choice.type: must be auto, any, tool or none")
    name = _get(choice, "name", (str,), "a string", "tool_choice.")
    if mode == "function" and not name:
        raise bad("tool_choice.name: is required when type is tool")
    no_parallel = _get(choice, "disable_parallel_tool_use", (bool,), "true or false", "tool_choice.")
    return tuple(specs), ToolChoice(mode, name), (False if no_parallel else None)


def _output_format(data: dict) -> ResponseFormat | None:
    """output_config.format {type: json_schema, schema} (structured outputs) as the neutral format."""
    cfg = _get(data, "output_config", (dict,), "an object") or {}
    for key in cfg:
        if key not in ("format", "effort") or (key == "effort" and cfg[key] is not None):
            raise bad(f"output_config.{key}: is not supported by this gateway")
    fmt = _get(cfg, "format", (dict,), "an object", "output_config.")
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or type(fmt.get("schema")) is not dict:
        raise bad("output_config.format: must be {type: json_schema, schema: {...}}")
    return ResponseFormat("json_schema", "output", fmt["schema"])


def parse_messages(data) -> tuple[ChatRequest, bool]:
    """A Messages API body -> (ChatRequest, stream); AtpError naming the field if invalid."""
    if type(data) is not dict:
        raise bad("the request body must be a JSON object")
    for key in data:
        if key in _REFUSED:
            raise bad(f"{key}: is not supported by this gateway")
        if key not in _KNOWN:
            raise bad(f"{key}: unknown parameter")
    model = _get(data, "model", (str,), "a string")
    if not model:
        raise bad("model: is required (a configured model id, or auto)")
    max_tokens = _get(data, "max_tokens", (int,), "an integer")
    if max_tokens is None:
        raise bad("max_tokens: is required")
    msgs = data.get("messages")
    if type(msgs) is not list or not msgs:
        raise bad("messages: must be a non-empty list")
    messages, details = [], []
    if (system := data.get("system")) is not None:
        messages.append(("system", _text_blocks(system, "system")))
        details.append(None)
    for i, m in enumerate(msgs):
        _message(m, i, messages, details)
    ext = _get(data, "atp", (dict,), "an object") or {}
    tier = _get(ext, "tier", (str,), "one of fast, balanced, high", "atp.")
    if model in TIER_ALIASES:
        alias = TIER_ALIASES[model]
        if alias and tier and tier != alias:
            raise bad(f"model: {model!r} conflicts with atp.tier {tier!r}")
        tier, model = tier or alias or "balanced", None
    stops = _get(data, "stop_sequences", (list,), "a list of strings") or []
    if not all(type(s) is str and s for s in stops):
        raise bad("stop_sequences: must be a list of non-empty strings")
    meta = _get(data, "metadata", (dict,), "an object") or {}
    user = _get(meta, "user_id", (str,), "a string", "metadata.")
    tools, choice, parallel = _tools(data)
    stream = _get(data, "stream", (bool,), "true or false") or False
    chat = ChatRequest(
        messages, tier=tier or "balanced", model=model, max_tokens=max_tokens,
        max_cost_usd=_get(ext, "max_cost_usd", _NUM, "a number", "atp."),
        latency_slo_ms=_get(ext, "latency_slo_ms", (int,), "an integer", "atp."),
        tenant=_get(ext, "tenant", (str,), "a string", "atp.") or "",
        temperature=_get(data, "temperature", _NUM, "a number"), stream=stream,
        metadata={"user": user} if user else {},
        details=tuple(details) if any(d is not None for d in details) else (),
        tools=tools, tool_choice=choice, parallel_tool_calls=parallel, stop=tuple(stops),
        top_p=_get(data, "top_p", _NUM, "a number"), user=user, response_format=_output_format(data))
    if chat.tools or chat.response_format or chat.details:   # so `auto` only picks a model that can serve it
        chat.capabilities = required_capabilities(chat)
    return chat, stream


def _usage(u) -> dict:
    out = {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}
    if u.cached_input_tokens:
        out["cache_read_input_tokens"] = u.cached_input_tokens
    return out


def _atp(decision, usage, overhead_us: int) -> dict:
    return {"provider": decision.provider, "model": decision.model, "cost_usd": usage.cost_usd,
            "usage_estimated": usage.estimated, "overhead_us": overhead_us}


def message_json(c) -> dict:
    """A whole answer (pipeline Completion) as a Messages response body."""
    content = [{"type": "text", "text": c.text}] if c.text or not c.tool_calls else []
    for call in c.tool_calls:
        try:
            args = orjson.loads(call.arguments) if call.arguments else {}
        except orjson.JSONDecodeError:
            args = {"_raw": call.arguments}   # the model wrote invalid JSON; keep it visible
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
    return {"id": "msg_" + c.request_id, "type": "message", "role": "assistant", "model": c.decision.model,
            "content": content, "stop_reason": STOP_REASON.get(c.finish_reason, "end_turn"),
            "stop_sequence": None, "usage": _usage(c.usage), "atp": _atp(c.decision, c.usage, c.overhead_us)}


def _event(kind: bytes, payload: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + payload + b"\n\n"


_TEXT_START = b'{"type":"content_block_start","index":%d,"content_block":{"type":"text","text":""}}'
_STOP = b'{"type":"content_block_stop","index":%d}'


class StreamEncoder:
    """Pipeline events -> Anthropic SSE bytes. Sans-I/O: each method returns the bytes to write.

    Text opens a text block, a new tool call closes the open block and opens a tool_use block;
    blocks are numbered in order, as Anthropic numbers them.
    """

    __slots__ = ("_index", "_open", "_tools", "_delta_head")

    def __init__(self):
        self._index = -1          # the open (or last) content block
        self._open = None         # "text" | "tool" | None
        self._tools: dict[int, int] = {}   # neutral tool call index -> block index
        self._delta_head = b""

    def start(self, request_id: str, model: str, input_tokens: int) -> bytes:
        msg = {"id": "msg_" + request_id, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": input_tokens, "output_tokens": 0}}
        return _event(b"message_start", orjson.dumps({"type": "message_start", "message": msg}))

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event(b"content_block_stop", _STOP % self._index)

    def text(self, text: str) -> bytes:
        out = b""
        if self._open != "text":
            out = self._close()
            self._index += 1
            self._open = "text"
            out += _event(b"content_block_start", _TEXT_START % self._index)
            self._delta_head = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
                                + str(self._index).encode() + b',"delta":{"type":"text_delta","text":')
        return out + self._delta_head + orjson.dumps(text) + b"}}\n\n"

    def tool(self, d: ToolCallDelta) -> bytes:
        out = b""
        if d.index not in self._tools:
            out = self._close()
            self._index += 1
            self._open = "tool"
            self._tools[d.index] = self._index
            block = {"type": "tool_use", "id": d.id or f"toolu_{self._index}", "name": d.name or "", "input": {}}
            out += _event(b"content_block_start", orjson.dumps(
                {"type": "content_block_start", "index": self._index, "content_block": block}))
        if d.arguments:
            out += _event(b"content_block_delta", orjson.dumps(
                {"type": "content_block_delta", "index": self._tools[d.index],
                 "delta": {"type": "input_json_delta", "partial_json": d.arguments}}))
        return out

    def done(self, done) -> bytes:
        out = self._close()
        delta = {"type": "message_delta", "delta": {"stop_reason": STOP_REASON.get(done.finish_reason, "end_turn"),
                                                     "stop_sequence": None},
                 "usage": _usage(done.usage), "atp": _atp(done.decision, done.usage, done.overhead_us)}
        return out + _event(b"message_delta", orjson.dumps(delta)) + _event(b"message_stop",
                                                                             b'{"type":"message_stop"}')

    @staticmethod
    def error(exc: AtpError) -> bytes:
        """A stream that fails after it began: an `error` event and no message_stop (the SDK raises)."""
        return _event(b"error", orjson.dumps(error_json(exc)))

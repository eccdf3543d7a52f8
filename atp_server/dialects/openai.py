"""The OpenAI HTTP dialect: its JSON (chat, legacy completions, embeddings, models, errors) to the neutral types and back.

Every chat parameter is forwarded or refused with a 400 that names it (`error.param`): nothing a
client asks for is dropped silently. The parameter table in the README is the reference.
"""
import base64
import time

import numpy as np
import orjson

from codec.errors import ErrorCode

from ..adapters.base import required_capabilities
from ..types import (AtpError, ChatRequest, EmbeddingRequest, ImagePart, MessageDetail, ResponseFormat,
                     ToolCall, ToolChoice, ToolSpec)

# `model` values that mean "route for me": auto keeps atp.tier (default balanced), the others set it.
TIER_ALIASES = {"auto": None, "atp-fast": "fast", "atp-balanced": "balanced", "atp-high": "high"}

_E = ErrorCode
STATUS = {code: (401, "authentication_error") if 200 <= code <= 205 else
          (400, "invalid_request_error") if 100 <= code < 200 else (500, "server_error")
          for code in ErrorCode}                        # code -> (HTTP status, OpenAI error type)
STATUS.update({_E.FORBIDDEN: (403, "permission_error"), _E.BUDGET_EXCEEDED: (402, "insufficient_quota"),
               _E.INVALID_REQUEST: (400, "invalid_request_error"), _E.UNKNOWN_MODEL: (404, "not_found_error"),
               _E.NO_ROUTE: (422, "invalid_request_error"), _E.UNAVAILABLE: (503, "service_unavailable"),
               _E.UPSTREAM_ERROR: (502, "upstream_error"), _E.UPSTREAM_CUT: (502, "upstream_error"),
               _E.UPSTREAM_TIMEOUT: (504, "timeout_error"), _E.TIMEOUT: (504, "timeout_error")})
STATUS.update(dict.fromkeys((_E.RATE_LIMITED, _E.OVERLOADED, _E.WINDOW_EXCEEDED, _E.REPLAY_CACHE_FULL),
                            (429, "rate_limit_error")))

_EMPTY: dict = {}
_NUM = (int, float)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MAX_TOOLS = 128           # OpenAI's own limit on tools per request
MAX_LOGIT_BIAS = 300      # OpenAI's limit on logit_bias entries: bounds what one request may hold
MAX_EMBED_INPUTS = 2048   # OpenAI's limit on inputs per embeddings request

# Parameters accepted only at the value that asks for nothing (False, None, the default): any other
# value is refused, because ATP would otherwise have to drop it. name -> (accepted values, why not).
_ONLY_DEFAULT = {
    "logprobs": ((False,), "token log-probabilities are not returned through ATP yet"),
    "top_logprobs": ((0,), "token log-probabilities are not returned through ATP yet"),
    "store": ((False,), "stored completions are an OpenAI platform feature; ATP keeps its own audit log"),
    "modalities": ((["text"],), "only text output is supported"),
    "service_tier": (("auto", "default"), "use atp.tier to choose a quality tier"),
}
# Parameters refused whatever their value, with the reason.
_REFUSED = {
    "functions": "the deprecated functions API is not supported; send tools",
    "function_call": "the deprecated functions API is not supported; send tool_choice",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "metadata": "stored-completion metadata is not supported; ATP's audit log records every request",
    "reasoning_effort": "reasoning_effort is not forwarded yet",
    "verbosity": "verbosity is not forwarded yet",
}
# A body with only these keys (and plain-text messages) is parsed by the fast path.
_PLAIN_KEYS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stream",
                         "stream_options", "user", "atp", "n"})
_CHAT_KEYS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "atp"}) | set(_ONLY_DEFAULT) | set(_REFUSED)


def bad(message: str, param: str | None = None) -> AtpError:
    """An INVALID_REQUEST naming the parameter at fault (OpenAI's `error.param`)."""
    exc = AtpError(ErrorCode.INVALID_REQUEST, message)
    exc.param = param
    return exc


def error_body(exc: AtpError) -> bytes:
    return orjson.dumps({"error": {
        "message": exc.message, "type": STATUS[exc.code][1], "param": getattr(exc, "param", None),
        "code": exc.name, "atp_code": int(exc.code), "retryable": exc.retryable,
        "retry_after_ms": exc.retry_after_ms}})


def _get(d: dict, key: str, types, what: str, prefix: str = ""):
    if (v := d.get(key)) is None or type(v) in types:    # type(): a JSON true is not an integer
        return v
    raise bad(f"{prefix}{key} must be {what}", prefix + key)


# ---- chat.completions request ------------------------------------------------------------------

def _parts(content: list, where: str) -> tuple:
    """OpenAI content parts -> ordered str / ImagePart parts."""
    out = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if type(part) is dict else None
        if kind == "text":
            if type(part.get("text")) is not str:
                raise bad(f"{at}.text must be a string", at)
            out.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            image = {"url": image} if type(image) is str else image
            if type(image) is not dict or type(image.get("url")) is not str:
                raise bad(f"{at}.image_url.url must be a string (an http(s) or data: URL)", at)
            detail = _get(image, "detail", (str,), "low, high or auto", f"{at}.image_url.")
            out.append(ImagePart(image["url"], detail))
        elif kind in ("input_audio", "file", "refusal"):
            raise bad(f"{at}: {kind} parts are not supported", at)
        else:
            raise bad(f"{at} must be a text or image_url part", at)
    return tuple(out)


def _tool_calls(calls, where: str) -> tuple[ToolCall, ...]:
    if type(calls) is not list:
        raise bad(f"{where} must be an array", where)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if type(call) is dict else None
        if (type(fn) is not dict or type(call.get("id")) is not str or type(fn.get("name")) is not str
                or type(fn.get("arguments", "")) is not str):
            raise bad(f"{where}[{j}] must be {{id, type: function, function: {{name, arguments}}}}", where)
        out.append(ToolCall(call["id"], fn["name"], fn.get("arguments", "")))
    return tuple(out)


def _messages(msgs) -> tuple[list, tuple]:
    """-> (messages as (role, text), details or () when every message is plain text)."""
    if type(msgs) is not list or not msgs:
        raise bad("messages must be a non-empty array", "messages")
    messages, details = [], None            # details: built from the first message that needs one
    for i, m in enumerate(msgs):
        if type(m) is not dict or type(m.get("role")) is not str:
            raise bad(f"messages[{i}] must be an object with a string role", "messages")
        role = _ROLES.get(m["role"])
        if role is None:
            raise bad(f"messages[{i}].role must be one of {', '.join(_ROLES)}, not {m['role']!r}", "messages")
        content = m.get("content")
        if type(content) is str and len(m) == 2 and role != "tool":   # the common case: only text
            messages.append((role, content))
            if details is not None:
                details.append(None)
            continue
        parts = ()
        if type(content) is list:
            parts = _parts(content, f"messages[{i}].content")
            text = "\n".join(p for p in parts if type(p) is str)
            if all(type(p) is str for p in parts):
                parts = ()                                   # text parts only: the text says it all
        elif content is None or type(content) is str:
            text = content or ""
        else:
            raise bad(f"messages[{i}].content must be a string or an array of content parts", "messages")
        calls = _tool_calls(m["tool_calls"], f"messages[{i}].tool_calls") if m.get("tool_calls") else ()
        call_id = _get(m, "tool_call_id", (str,), "a string", f"messages[{i}].")
        if role == "tool" and not call_id:
            raise bad(f"messages[{i}]: a tool message needs tool_call_id", "messages")
        detail = MessageDetail(parts, calls, call_id, _get(m, "name", (str,), "a string", f"messages[{i}]."))
        messages.append((role, text))
        if detail != _PLAIN:
            if details is None:
                details = [None] * i
            details.append(detail)
        elif details is not None:
            details.append(None)
    return messages, tuple(details) if details is not None else ()


_PLAIN = MessageDetail()


def _tools(tools) -> tuple[ToolSpec, ...]:
    if type(tools) is not list or len(tools) > MAX_TOOLS:
        raise bad(f"tools must be an array of at most {MAX_TOOLS} tools", "tools")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if type(tool) is dict else None
        if type(tool) is not dict or tool.get("type") != "function" or type(fn) is not dict:
            raise bad(f"tools[{i}] must be {{type: function, function: {{name, ...}}}}", "tools")
        if type(fn.get("name")) is not str or not fn["name"]:
            raise bad(f"tools[{i}].function.name must be a non-empty string", "tools")
        params = _get(fn, "parameters", (dict,), "a JSON Schema object", f"tools[{i}].function.")
        out.append(ToolSpec(fn["name"], _get(fn, "description", (str,), "a string", f"tools[{i}].function."),
                            params, _get(fn, "strict", (bool,), "true or false", f"tools[{i}].function.")))
    return tuple(out)


def _tool_choice(choice, tools) -> ToolChoice | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        mode = ToolChoice(choice)
    elif type(choice) is dict and choice.get("type") == "function" and type(choice.get("function")) is dict \
            and type(choice["function"].get("name")) is str:
        mode = ToolChoice("function", choice["function"]["name"])
        if not any(t.name == mode.name for t in tools):
            raise bad(f"tool_choice names {mode.name!r}, which is not in tools", "tool_choice")
    else:
        raise bad('tool_choice must be "auto", "none", "required" or {type: function, function: {name}}',
                  "tool_choice")
    if mode.mode != "none" and not tools and mode.mode != "auto":
        raise bad("tool_choice needs tools", "tool_choice")
    return mode


def _response_format(fmt) -> ResponseFormat | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if type(fmt) is dict else None
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if type(spec) is not dict or type(spec.get("name")) is not str or type(spec.get("schema", {})) is not dict:
            raise bad("response_format.json_schema must be {name, schema, strict?}", "response_format")
        return ResponseFormat("json_schema", spec["name"], spec.get("schema"),
                              _get(spec, "strict", (bool,), "true or false", "response_format.json_schema."),
                              _get(spec, "description", (str,), "a string", "response_format.json_schema."))
    raise bad("response_format.type must be text, json_object or json_schema", "response_format")


def _stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if type(stop) is str:
        return (stop,)
    if type(stop) is list and all(type(s) is str for s in stop):
        return tuple(stop)
    raise bad("stop must be a string or an array of strings", "stop")


def _logit_bias(bias) -> dict | None:
    if bias is None:
        return None
    if type(bias) is not dict or len(bias) > MAX_LOGIT_BIAS or not all(
            type(v) in _NUM and -100 <= v <= 100 for v in bias.values()):
        raise bad(f"logit_bias must map at most {MAX_LOGIT_BIAS} token ids to numbers in [-100, 100]",
                  "logit_bias")
    return bias


def _refuse_unsupported(data: dict) -> None:
    for key in data:
        if key not in _CHAT_KEYS:
            raise bad(f"unrecognized request argument: {key}", key)
        if key in _REFUSED and data[key] is not None:
            raise bad(f"{key}: {_REFUSED[key]}", key)
        if key in _ONLY_DEFAULT and data[key] is not None and data[key] not in _ONLY_DEFAULT[key][0]:
            raise bad(f"{key}: {_ONLY_DEFAULT[key][1]}", key)


def _routing(data: dict) -> tuple[dict, str | None, str]:
    """(the atp extension object, pinned model or None, tier) from `model` and `atp.tier`."""
    ext = _get(data, "atp", (dict,), "an object") or _EMPTY
    tier = _get(ext, "tier", (str,), "one of fast, balanced, high", "atp.")
    model = _get(data, "model", (str,), "a string") or "auto"
    if model in TIER_ALIASES:
        alias = TIER_ALIASES[model]
        if alias and tier and tier != alias:
            raise bad(f"model {model!r} conflicts with atp.tier {tier!r}", "model")
        return ext, None, tier or alias or "balanced"
    return ext, model, tier or "balanced"


def parse_chat(data) -> tuple[ChatRequest, bool, bool]:
    """An OpenAI chat.completions body -> (ChatRequest, stream, include_usage); AtpError if invalid."""
    if type(data) is not dict:
        raise bad("the request body must be a JSON object")
    plain = data.keys() <= _PLAIN_KEYS      # the common body: no parameter beyond these
    if not plain:
        _refuse_unsupported(data)
    messages, details = _messages(data.get("messages"))
    ext, model, tier = _routing(data)
    if data.get("n") not in (None, 1):
        raise bad("n must be 1", "n")
    caps = ext.get("capabilities") or ()
    if caps and (type(caps) is not list or not all(type(c) is str for c in caps)):
        raise bad("atp.capabilities must be a list of strings", "atp.capabilities")
    max_tokens = _get(data, "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens",
                      (int,), "an integer")
    stream = _get(data, "stream", (bool,), "true or false") or False
    opts = _get(data, "stream_options", (dict,), "an object") or _EMPTY
    user = _get(data, "user", (str,), "a string")
    chat = ChatRequest(
        messages, tier=tier, model=model, max_tokens=max_tokens,
        max_cost_usd=_get(ext, "max_cost_usd", _NUM, "a number", "atp."),
        latency_slo_ms=_get(ext, "latency_slo_ms", (int,), "an integer", "atp."),
        tenant=_get(ext, "tenant", (str,), "a string", "atp.") or "", capabilities=tuple(caps),
        temperature=_get(data, "temperature", _NUM, "a number"), stream=stream,
        metadata={"user": user} if user else {}, user=user)
    if details or not plain:                  # else every other field keeps its default
        tools = _tools(data["tools"]) if data.get("tools") else ()
        chat.details, chat.tools = details, tools
        chat.tool_choice = _tool_choice(data.get("tool_choice"), tools)
        chat.parallel_tool_calls = _get(data, "parallel_tool_calls", (bool,), "true or false")
        chat.response_format = _response_format(data.get("response_format"))
        chat.stop = _stop(data.get("stop"))
        chat.top_p = _get(data, "top_p", _NUM, "a number")
        chat.seed = _get(data, "seed", (int,), "an integer")
        chat.presence_penalty = _get(data, "presence_penalty", _NUM, "a number")
        chat.frequency_penalty = _get(data, "frequency_penalty", _NUM, "a number")
        chat.logit_bias = _logit_bias(data.get("logit_bias"))
        if tools or chat.response_format or details:
            chat.capabilities = required_capabilities(chat)
    return chat, stream, opts.get("include_usage") is True


# ---- legacy completions and embeddings requests -------------------------------------------------

_COMPLETION_KEYS = frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
                              "stream_options", "stop", "seed", "presence_penalty", "frequency_penalty",
                              "logit_bias", "user", "atp", "echo", "best_of", "logprobs", "suffix"})


def parse_completion(data) -> tuple[ChatRequest, bool, bool]:
    """A legacy /v1/completions body -> the chat request of one user message holding the prompt."""
    if type(data) is not dict:
        raise bad("the request body must be a JSON object")
    for key in data:
        if key not in _COMPLETION_KEYS:
            raise bad(f"unrecognized request argument: {key}", key)
    prompt = data.get("prompt")
    if type(prompt) is list and len(prompt) == 1:
        prompt = prompt[0]
    if type(prompt) is not str or not prompt:
        raise bad("prompt must be a non-empty string (one prompt per request)", "prompt")
    for key, ok in (("echo", (None, False)), ("best_of", (None, 1)), ("logprobs", (None, 0)), ("suffix", (None, ""))):
        if data.get(key) not in ok:
            raise bad(f"{key} is not supported through ATP", key)
    chat_body = {k: v for k, v in data.items() if k not in ("prompt", "echo", "best_of", "logprobs", "suffix")}
    chat_body["messages"] = [{"role": "user", "content": prompt}]
    return parse_chat(chat_body)


def parse_embeddings(data) -> tuple[EmbeddingRequest, str | None]:
    """An /v1/embeddings body -> (EmbeddingRequest, encoding_format: None, "float" or "base64")."""
    if type(data) is not dict:
        raise bad("the request body must be a JSON object")
    for key in data:
        if key not in ("model", "input", "dimensions", "encoding_format", "user"):
            raise bad(f"unrecognized request argument: {key}", key)
    inputs = data.get("input")
    inputs = [inputs] if type(inputs) is str else inputs
    if type(inputs) is not list or not inputs or len(inputs) > MAX_EMBED_INPUTS or not all(
            type(s) is str and s for s in inputs):
        raise bad(f"input must be a non-empty string or an array of 1..{MAX_EMBED_INPUTS} non-empty strings"
                  " (token arrays are not supported)", "input")
    if data.get("encoding_format") not in (None, "float", "base64"):
        raise bad("encoding_format must be float or base64", "encoding_format")
    dims = _get(data, "dimensions", (int,), "an integer")
    if dims is not None and dims < 1:
        raise bad("dimensions must be >= 1", "dimensions")
    model = _get(data, "model", (str,), "a string")
    return EmbeddingRequest(tuple(inputs), None if model in TIER_ALIASES else model, dims,
                            _get(data, "user", (str,), "a string")), data.get("encoding_format")


# ---- responses -----------------------------------------------------------------------------------

def usage_body(u) -> dict:
    body = {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens, "estimated": u.estimated}
    if u.cached_input_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": u.cached_input_tokens}
    return body


def atp_body(decision, usage, overhead_us: int) -> dict:
    return {"provider": decision.provider, "model": decision.model, "cost_usd": usage.cost_usd,
            "usage_estimated": usage.estimated, "overhead_us": overhead_us,
            "route_reasons": list(decision.reasons)}


def _calls_body(calls) -> list:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]


def completion_body(c) -> bytes:
    d = c.decision
    message = {"role": "assistant", "content": c.text if c.text or not c.tool_calls else None}
    if c.tool_calls:
        message["tool_calls"] = _calls_body(c.tool_calls)
    return orjson.dumps({
        "id": "chatcmpl-" + c.request_id, "object": "chat.completion", "created": int(time.time()),
        "model": d.model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                       "finish_reason": c.finish_reason}],
        "usage": usage_body(c.usage), "atp": atp_body(d, c.usage, c.overhead_us)})


def text_completion_body(c) -> bytes:
    d = c.decision
    return orjson.dumps({
        "id": "cmpl-" + c.request_id, "object": "text_completion", "created": int(time.time()),
        "model": d.model, "choices": [{"index": 0, "text": c.text, "logprobs": None,
                                       "finish_reason": c.finish_reason}],
        "usage": usage_body(c.usage), "atp": atp_body(d, c.usage, c.overhead_us)})


def embeddings_body(result, model_id: str, encoding: str | None = None) -> bytes:
    """`base64` (what the openai SDK asks for by default) is the little-endian float32 bytes, base64."""
    if encoding == "base64":
        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in result.vectors]
    else:
        vectors = result.vectors
    return orjson.dumps({
        "object": "list", "model": model_id,
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens}})


def model_body(row) -> dict:
    m = row.spec
    return {"id": m.id, "object": "model", "created": 0, "owned_by": m.provider, "atp": {
        "price": {"input_per_mtok": m.price_in_per_mtok, "output_per_mtok": m.price_out_per_mtok},
        "quality": m.quality, "capabilities": sorted(m.capabilities),
        "context_window": m.context_window, "max_output_tokens": m.max_output_tokens,
        "latency_ms": m.latency_ms, "healthy": row.healthy}}


class ChunkEncoder:
    """The SSE events of one streamed answer, as bytes: every event shares one prefix, built once."""

    __slots__ = ("prefix", "legacy")

    def __init__(self, request_id: str, model: str, legacy: bool = False):
        self.legacy = legacy
        kind = b'"cmpl-' if legacy else b'"chatcmpl-'
        obj = b'"text_completion"' if legacy else b'"chat.completion.chunk"'
        self.prefix = (b'data: {"id":' + kind + request_id.encode() + b'","object":' + obj + b',"created":'
                       + str(int(time.time())).encode() + b',"model":' + orjson.dumps(model) + b',"choices":[')

    def head(self) -> bytes:
        if self.legacy:
            return b""
        return self.prefix + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'

    def text(self, text: str) -> bytes:
        if self.legacy:
            return self.prefix + b'{"index":0,"text":' + orjson.dumps(text) + b',"finish_reason":null}]}\n\n'
        return self.prefix + b'{"index":0,"delta":{"content":' + orjson.dumps(text) + b'},"finish_reason":null}]}\n\n'

    def tool_call(self, item) -> bytes:
        call = {"index": item.index, "function": {"arguments": item.arguments}}
        if item.id is not None:
            call["id"], call["type"] = item.id, "function"
        if item.name is not None:
            call["function"]["name"] = item.name
        return (self.prefix + b'{"index":0,"delta":{"tool_calls":[' + orjson.dumps(call)
                + b']},"finish_reason":null}]}\n\n')

    def done(self, item, include_usage: bool) -> bytes:
        empty = b'"text":""' if self.legacy else b'"delta":{}'
        out = (self.prefix + b'{"index":0,' + empty + b',"finish_reason":' + orjson.dumps(item.finish_reason)
               + b'}],"atp":' + orjson.dumps(atp_body(item.decision, item.usage, item.overhead_us)) + b'}\n\n')
        if include_usage:
            out += self.prefix + b'],"usage":' + orjson.dumps(usage_body(item.usage)) + b'}\n\n'
        return out + b"data: [DONE]\n\n"

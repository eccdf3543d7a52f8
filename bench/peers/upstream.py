"""The fake upstream's fixed answer, and the request every load generator sends.

nginx returns COMPLETION_JSON verbatim; a response counts as correct only if it carries MARKER
(the assistant message content), which every gateway must pass through untouched. Ids, timestamps
and usage may be rewritten by a gateway, the content may not.
"""
import json

MODEL = "bench-model"
MARKER = "atp-bench-upstream-ok-7f3a9c"          # the assistant content; checked in every response body
COMPLETION_ID = "chatcmpl-atpbench0000000000000000"

COMPLETION = {
    "id": COMPLETION_ID,
    "object": "chat.completion",
    "created": 1735689600,
    "model": MODEL,
    "system_fingerprint": "fp_atpbench",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": MARKER},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}
COMPLETION_JSON = json.dumps(COMPLETION, separators=(",", ":"))

MODELS_JSON = json.dumps({"object": "list", "data": [
    {"id": MODEL, "object": "model", "created": 1735689600, "owned_by": "atp-bench"}]},
    separators=(",", ":"))

REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one word."}]}
REQUEST_JSON = json.dumps(REQUEST, separators=(",", ":"))

# nginx's `return 200 '...'` takes a single-quoted string in which `$` starts a variable and `\`
# escapes: keep the constants free of them rather than escape.
for _s in (COMPLETION_JSON, MODELS_JSON):
    assert not any(c in _s for c in "'$\\"), "upstream JSON must not contain ' $ or \\"


def is_good(status: int, body: bytes | str) -> bool:
    """The check wrk's Lua hook applies, for Python-side probes."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return 200 <= status < 300 and MARKER in body

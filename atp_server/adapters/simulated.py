"""A deterministic simulated provider: configurable latency, speed, price, failures and stream cuts."""
import asyncio
import random
import zlib
from dataclasses import dataclass

import orjson

from codec.errors import ErrorCode

from ..types import (AtpError, ChatRequest, EmbeddingRequest, Embeddings, Finish, TextDelta, ToolCall,
                     ToolCallDelta)
from .base import ModelSpec, estimate_tokens

EMBED_DIMS = 8   # small on purpose: tests compare vectors, nothing reads meaning into them
_WORDS = ("the", "router", "sends", "each", "request", "to", "a", "model", "that", "fits", "its",
          "budget", "and", "latency", "goal", "while", "frames", "stay", "signed", "end", "to",
          "end", "so", "nothing", "is", "lost", "or", "replayed", "along", "way")


@dataclass(frozen=True, slots=True)
class SimulatedSettings:
    latency_ms: float = 0.0          # time to first token, median
    latency_jitter: float = 0.0      # lognormal sigma around the median (0 = fixed)
    tokens_per_s: float = 0.0        # 0 = all tokens at once
    output_tokens: int = 16          # tokens per answer (capped by the request's max_tokens)
    failure_rate: float = 0.0        # fail before the first token with UPSTREAM_ERROR
    cut_rate: float = 0.0            # die mid-stream (UPSTREAM_CUT)
    seed: int = 0


class SimulatedAdapter:
    """Same request + same seed = same answer, timing and failures: for demos, tests, benchmarks."""

    capabilities = frozenset({"chat", "streaming", "tools", "json", "vision", "embeddings", "long_context"})

    def __init__(self, name: str, settings: SimulatedSettings = SimulatedSettings()):
        self.name = name
        self.settings = settings
        self.calls = 0
        self._texts: dict[tuple[int, int], str] = {}

    def _plan(self, model: ModelSpec, request: ChatRequest):
        """(tokens out, fail?, cut index or None, delay s, first word) — all from a stable hash.

        crc32 (C, stable across processes, unlike hash()) instead of a seeded random.Random,
        which alone cost ~10 µs per request; Random is built only when latency jitter needs it.
        """
        s = self.settings
        h = zlib.crc32(f"{s.seed}|{model.id}|{request.request_id}".encode())
        for role, content in request.messages:
            h = zlib.crc32(content.encode(), zlib.crc32(role.encode(), h))
        n_out = min(s.output_tokens, request.max_tokens or s.output_tokens, model.max_output_tokens)
        fails = bool(s.failure_rate) and (h % 10_007) / 10_007 < s.failure_rate
        cut_at = (n_out // 2 if s.cut_rate and ((h >> 7) % 10_009) / 10_009 < s.cut_rate
                  else None)
        delay = s.latency_ms / 1000
        if delay and s.latency_jitter:
            delay *= random.Random(h).lognormvariate(0.0, s.latency_jitter)
        return n_out, fails, cut_at, delay, h % len(_WORDS)

    def _word(self, start: int, i: int) -> str:
        word = _WORDS[(start + i * 7) % len(_WORDS)]
        return word if i == 0 else " " + word

    def _finish(self, request: ChatRequest, n_out: int) -> Finish:
        return Finish("length" if n_out < self.settings.output_tokens else "stop",
                      estimate_tokens(request.prompt_chars()), n_out)

    async def stream(self, model: ModelSpec, request: ChatRequest):
        self.calls += 1
        n_out, fails, cut_at, delay, start = self._plan(model, request)
        if delay:
            await asyncio.sleep(delay)
        if fails:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"simulated failure of {model.id}")
        if (shaped := _shaped_answer(request, self._word(start, 0).strip())) is not None:
            text, calls = shaped
            for i, call in enumerate(calls):      # id and name first, then the arguments in two pieces
                half = len(call.arguments) // 2
                yield ToolCallDelta(i, call.id, call.name, call.arguments[:half])
                yield ToolCallDelta(i, None, None, call.arguments[half:])
            for piece in _pieces(text):
                yield TextDelta(piece, 1)
            yield self._finish_shaped(request, text, calls)
            return
        gap = 1.0 / self.settings.tokens_per_s if self.settings.tokens_per_s else 0.0
        for i in range(n_out):
            if cut_at is not None and i == cut_at:
                raise AtpError(ErrorCode.UPSTREAM_CUT, f"simulated stream cut after {i} tokens")
            if gap and i:
                await asyncio.sleep(gap)
            yield TextDelta(self._word(start, i), 1)
        yield self._finish(request, n_out)

    async def complete(self, model: ModelSpec, request: ChatRequest):
        """The one-shot answer: the same text the stream would give, after the same total time."""
        self.calls += 1
        n_out, fails, cut_at, delay, start = self._plan(model, request)
        if self.settings.tokens_per_s and n_out > 1:
            delay += (n_out - 1) / self.settings.tokens_per_s
        if delay:
            await asyncio.sleep(delay)
        if fails:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"simulated failure of {model.id}")
        if cut_at is not None:
            raise AtpError(ErrorCode.UPSTREAM_CUT, f"simulated connection cut after {cut_at} tokens")
        if (shaped := _shaped_answer(request, self._word(start, 0).strip())) is not None:
            text, calls = shaped
            return text, self._finish_shaped(request, text, calls)._replace(tool_calls=calls)
        text = self._texts.get((start, n_out))
        if text is None:   # at most len(_WORDS) x output_tokens distinct answers: cache them
            text = self._texts[(start, n_out)] = "".join(self._word(start, i) for i in range(n_out))
        return text, self._finish(request, n_out)

    async def embed(self, model: ModelSpec, request: EmbeddingRequest) -> Embeddings:
        """A unit vector per input from its crc32: equal texts embed equally, others differ."""
        self.calls += 1
        dims = request.dimensions or EMBED_DIMS
        vectors = []
        for text in request.inputs:
            rng = random.Random(zlib.crc32(text.encode()))
            v = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
            norm = sum(x * x for x in v) ** 0.5 or 1.0
            vectors.append([x / norm for x in v])
        return Embeddings(vectors, sum(estimate_tokens(len(t)) for t in request.inputs))

    def _finish_shaped(self, request: ChatRequest, text: str, calls: tuple) -> Finish:
        out = len(calls) * 2 + len(_pieces(text))
        return Finish("tool_calls" if calls else "stop", estimate_tokens(request.prompt_chars()), out)

    async def aclose(self) -> None:
        return None


def _pieces(text: str) -> list[str]:
    """Text cut in 8-character pieces: a JSON answer streams in several deltas, like a real model's."""
    return [text[i:i + 8] for i in range(0, len(text), 8)]


def _shaped_answer(request: ChatRequest, word: str) -> tuple[str, tuple[ToolCall, ...]] | None:
    """For a request with tools (and tool_choice not "none") one call to the chosen (or first)
    tool, arguments built from its schema; for a JSON response_format a JSON text matching the
    schema; otherwise None (plain words). After a tool result the answer is text again, as a
    model's would be."""
    choice = request.tool_choice
    last_role = request.messages[-1][0] if request.messages else ""
    if request.tools and (choice is None or choice.mode != "none") and last_role != "tool":
        tool = next((t for t in request.tools if choice and t.name == choice.name), request.tools[0])
        args = orjson.dumps(_example(tool.parameters or {"type": "object"}, word)).decode()
        return "", (ToolCall(f"call_{zlib.crc32(args.encode()):08x}", tool.name, args),)
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema else {
            "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        return orjson.dumps(_example(schema, word)).decode(), ()
    return None


def _example(schema: dict, word: str, depth: int = 0):
    """The smallest value a JSON Schema accepts (objects get every listed property): enough
    schema for tests and demos of tools / structured output, not a validator."""
    if depth > 8 or type(schema) is not dict:
        return None
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example(schema[key][0], word, depth + 1)
    kind = schema.get("type", "object")
    if type(kind) is list:
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _example(v, word, depth + 1) for k, v in props.items()}
    return {"string": word, "integer": 1, "number": 1.0, "boolean": True, "array": []}.get(kind)

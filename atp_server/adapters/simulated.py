"""A deterministic simulated provider: configurable latency, speed, price, failures and stream cuts."""
import asyncio
import hashlib
import random
from dataclasses import dataclass

from codec.errors import ErrorCode

from ..types import AtpError, ChatRequest, Finish, TextDelta
from .base import ModelSpec, estimate_tokens

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

    capabilities = frozenset({"chat", "tools", "json", "vision", "long_context"})

    def __init__(self, name: str, settings: SimulatedSettings = SimulatedSettings()):
        self.name = name
        self.settings = settings
        self.calls = 0

    def _rng(self, model: ModelSpec, request: ChatRequest) -> random.Random:
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{self.settings.seed}|{model.id}|{request.request_id}|".encode())
        for role, content in request.messages:
            digest.update(role.encode())
            digest.update(content.encode())
        return random.Random(int.from_bytes(digest.digest(), "big"))

    async def stream(self, model: ModelSpec, request: ChatRequest):
        self.calls += 1
        s = self.settings
        rng = self._rng(model, request)
        n_out = min(s.output_tokens, request.max_tokens or s.output_tokens, model.max_output_tokens)
        fails = s.failure_rate and rng.random() < s.failure_rate
        cut_at = n_out // 2 if s.cut_rate and rng.random() < s.cut_rate else None
        if s.latency_ms:
            delay = s.latency_ms * (rng.lognormvariate(0.0, s.latency_jitter) if s.latency_jitter else 1.0)
            await asyncio.sleep(delay / 1000)
        if fails:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, f"simulated failure of {model.id}")
        gap = 1.0 / s.tokens_per_s if s.tokens_per_s else 0.0
        for i in range(n_out):
            if cut_at is not None and i == cut_at:
                raise AtpError(ErrorCode.UPSTREAM_CUT, f"simulated stream cut after {i} tokens")
            if gap and i:
                await asyncio.sleep(gap)
            word = _WORDS[(i + rng.randrange(len(_WORDS))) % len(_WORDS)]
            yield TextDelta(word if i == 0 else " " + word, 1)
        yield Finish("length" if n_out < s.output_tokens else "stop",
                     estimate_tokens(request.prompt_chars()), n_out)

    async def aclose(self) -> None:
        return None

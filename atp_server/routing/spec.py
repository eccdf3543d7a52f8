"""A routable model as configuration declares it: the row the routing table is built from.

It lives with routing, not with adapters: routing never imports adapters; adapters import this.
"""
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A routable model: which adapter serves it, what the provider calls it, what it costs."""

    id: str                                   # what clients ask for / see
    provider: str                             # adapter instance name (config [[providers]].name)
    upstream: str                             # the provider's own model name
    price_in_per_mtok: float = 0.0            # USD per million input tokens
    price_out_per_mtok: float = 0.0           # USD per million output tokens
    context_window: int = 8192
    capabilities: frozenset = frozenset({"chat"})
    quality: float = 0.5                      # prior, 0..1
    latency_ms: float = 500.0                 # prior for a typical answer
    max_output_tokens: int = 1024
    local: bool = False                       # served on this host (Ollama, llama.cpp): resources.py
    memory_mb: float = 0.0                    # what loading it takes; 0 = unknown (never loaded under pressure)

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        """Cost in USD micros (price per Mtok × tokens = micro-dollars, exactly)."""
        return round(input_tokens * self.price_in_per_mtok + output_tokens * self.price_out_per_mtok)


def estimate_tokens(text_chars: int) -> int:
    """Rough token count when a provider reports none (~4 characters per token)."""
    return max(1, (text_chars + 3) // 4)

"""Typed settings of each provider type: what a [[providers]] entry may say, checked at config load."""
from dataclasses import dataclass, field

from .simulated import SimulatedSettings


@dataclass(frozen=True, slots=True)
class OpenAICompatSettings:
    """OpenAICompatAdapter's constructor arguments, as the [[providers]] options that set them."""

    base_url: str                                   # ATP posts to <base_url>/chat/completions
    api_key: str | None = field(default=None, repr=False)   # the upstream's Bearer key
    api_key_env: str = ""                           # or: the environment variable holding it
    timeout_s: float = 60.0                         # upstream silence allowed (headers, between chunks)
    connect_timeout_s: float = 5.0
    max_connections: int = 64                       # pooled keep-alive connections to the upstream
    extra_headers: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ("chat",)
    stream_usage: bool = True                       # ask for stream_options.include_usage (false: count it)
    max_tokens_field: str = "max_tokens"            # "max_completion_tokens" for OpenAI's reasoning models
    json_schema_format: str = "json_schema"         # "json_object_schema": {"type": "json_object", "schema": ...}


# provider type -> its settings dataclass (every field is an option; a field without default is required)
SETTINGS = {"simulated": SimulatedSettings, "openai_compat": OpenAICompatSettings}

# Range rules checked at load, by option: (">=", x), (">", x), ("in", lo, hi), ("one_of", a, b...), ("http_url",),
# ("env_of", field): the option names an environment variable whose value fills `field`.
CHECKS = {
    SimulatedSettings: {
        "latency_ms": (">=", 0), "latency_jitter": (">=", 0), "tokens_per_s": (">=", 0),
        "output_tokens": (">=", 1), "failure_rate": ("in", 0, 1), "cut_rate": ("in", 0, 1)},
    OpenAICompatSettings: {
        "base_url": ("http_url",), "api_key_env": ("env_of", "api_key"),
        "timeout_s": (">", 0), "connect_timeout_s": (">", 0), "max_connections": (">=", 1),
        "max_tokens_field": ("one_of", "max_tokens", "max_completion_tokens"),
        "json_schema_format": ("one_of", "json_schema", "json_object_schema")},
}

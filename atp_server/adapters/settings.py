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
    connect_timeout_s: float = 5.0                  # TCP + TLS handshake
    # The whole answer, first byte to last; 0 = unbounded, since a long generation that keeps
    # streaming is healthy (timeout_s already catches a stalled one).
    total_timeout_s: float = 0.0
    max_connections: int = 64                       # pooled keep-alive connections to the upstream
    pool_timeout_s: float = 10.0                    # a call's wait for a pooled connection to free up
    # Idle pooled connections are closed after this; a reused one the server already closed is
    # retried once on a fresh socket, so a longer value than the server's costs one reconnect.
    keepalive_s: float = 15.0
    # In-flight calls allowed to this provider (0 = only max_connections bounds it). Beyond it a
    # call fails at once as a retryable OVERLOADED, not counted against the provider's health,
    # so dispatch fails over instead of queueing behind a saturated upstream.
    max_concurrency: int = 0
    extra_headers: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ("chat",)
    stream_usage: bool = True                       # ask for stream_options.include_usage (false: count it)
    max_tokens_field: str = "max_tokens"            # "max_completion_tokens" for OpenAI's reasoning models
    json_schema_format: str = "json_schema"         # "json_object_schema": {"type": "json_object", "schema": ...}; "tgi": {"type": "json", "value": ...}


@dataclass(frozen=True, slots=True)
class AnthropicSettings:
    """AnthropicAdapter's options: the Messages API at <base_url>/v1/messages."""

    base_url: str = "https://api.anthropic.com"
    api_key: str | None = field(default=None, repr=False)   # sent as x-api-key
    api_key_env: str = ""                           # or: the environment variable holding it
    anthropic_version: str = "2023-06-01"           # the anthropic-version header (the current API version)
    timeout_s: float = 60.0                         # upstream silence allowed (headers, between events)
    connect_timeout_s: float = 5.0
    max_connections: int = 64
    extra_headers: dict[str, str] = field(default_factory=dict)   # e.g. anthropic-beta
    capabilities: tuple[str, ...] = ("chat", "streaming", "tools", "json", "vision")   # json: output_config.format


@dataclass(frozen=True, slots=True)
class OllamaSettings:
    """OllamaAdapter's options: Ollama's native API (/api/chat, /api/embed, /api/tags, /api/ps)."""

    base_url: str = "http://127.0.0.1:11434"        # Ollama's default listen address
    timeout_s: float = 120.0                        # a cold model load can take a minute before the first byte
    connect_timeout_s: float = 5.0
    max_connections: int = 16                       # Ollama serves few requests in parallel (OLLAMA_NUM_PARALLEL)
    keep_alive: str = ""                            # how long Ollama keeps the model loaded ("" = its default)
    extra_headers: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ("chat", "json", "embeddings")


# provider type -> its settings dataclass (every field is an option; a field without default is required)
SETTINGS = {"simulated": SimulatedSettings, "openai_compat": OpenAICompatSettings,
            "anthropic": AnthropicSettings, "ollama": OllamaSettings}

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
        "json_schema_format": ("one_of", "json_schema", "json_object_schema", "tgi"),
        "total_timeout_s": (">=", 0), "pool_timeout_s": (">", 0), "keepalive_s": (">", 0),
        "max_concurrency": (">=", 0)},
    AnthropicSettings: {
        "base_url": ("http_url",), "api_key_env": ("env_of", "api_key"), "anthropic_version": ("nonempty",),
        "timeout_s": (">", 0), "connect_timeout_s": (">", 0), "max_connections": (">=", 1)},
    OllamaSettings: {
        "base_url": ("http_url",), "timeout_s": (">", 0), "connect_timeout_s": (">", 0),
        "max_connections": (">=", 1)},
}

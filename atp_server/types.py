"""The transport-agnostic data model: requests, route decisions, output events, usage, errors."""
from dataclasses import dataclass, field
from typing import NamedTuple

from codec.errors import RETRYABLE, ErrorCode, code_name

TIERS = ("fast", "balanced", "high")


class AtpError(Exception):
    """A request failed with a wire code; transports map it to an ERROR frame / gRPC status / HTTP error."""

    def __init__(self, code: ErrorCode, message: str, retry_after_ms: int = 0):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.retry_after_ms = retry_after_ms

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    @property
    def name(self) -> str:
        return code_name(self.code)

    def __str__(self) -> str:
        return f"{self.name} ({int(self.code)}): {self.message}"


@dataclass(slots=True)
class ChatRequest:
    """One completion request as every transport hands it to the pipeline."""

    messages: list[tuple[str, str]]               # (role, content)
    tier: str = "balanced"
    model: str | None = None                      # pinned model id
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    latency_slo_ms: int | None = None
    tenant: str = ""
    capabilities: tuple[str, ...] = ()
    temperature: float | None = None
    stream: bool = True
    request_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # Objective (routing/choose.py): an explicit trade-off instead of the tier's; at most one.
    cost_weight: float | None = None
    min_quality: float | None = None

    def validate(self) -> None:
        if not self.messages:
            raise AtpError(ErrorCode.INVALID_REQUEST, "messages must not be empty")
        for i, msg in enumerate(self.messages):
            if len(msg) != 2 or not isinstance(msg[0], str) or not isinstance(msg[1], str):
                raise AtpError(ErrorCode.INVALID_REQUEST, f"messages[{i}] must be (role, content) strings")
        if self.tier not in TIERS:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"tier must be one of {', '.join(TIERS)}, not {self.tier!r}")
        if self.max_tokens is not None and not 0 < self.max_tokens <= 1_000_000:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"max_tokens must be in 1..1000000, not {self.max_tokens}")
        if self.max_cost_usd is not None and self.max_cost_usd < 0:
            raise AtpError(ErrorCode.INVALID_REQUEST, "max_cost_usd must be >= 0")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise AtpError(ErrorCode.INVALID_REQUEST, "temperature must be in [0, 2]")

    def prompt_chars(self) -> int:
        return sum(len(c) for _, c in self.messages)


# The value types built for every request or token are NamedTuples, not frozen dataclasses: the same
# immutability and attribute access at a third of the construction cost (a frozen dataclass sets each
# field through object.__setattr__).

class RouteDecision(NamedTuple):
    provider: str
    model: str
    estimated_cost_usd: float
    estimated_latency_ms: float
    confidence: float
    reasons: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()               # ordered failover chain (model ids), excluding `model`
    max_attempts: int = 0                         # from an alias; 0 = dispatch's default
    trace: object = None                          # routing.choose.Trace: what feedback needs later


class Usage(NamedTuple):
    input_tokens: int
    output_tokens: int
    cost_usd_micros: int

    @property
    def cost_usd(self) -> float:
        return self.cost_usd_micros / 1e6


# ---- what adapters yield while streaming ----------------------------------------------------------

class TextDelta(NamedTuple):
    text: str
    tokens: int = 1


class Finish(NamedTuple):
    """The upstream finished normally. Token counts from the provider when it reports them."""
    reason: str = "stop"
    input_tokens: int | None = None
    output_tokens: int | None = None


# ---- what the pipeline yields to transports --------------------------------------------------------

class Routed(NamedTuple):
    decision: RouteDecision


class Delta(NamedTuple):
    index: int
    text: str
    tokens: int


class Done(NamedTuple):
    finish_reason: str
    usage: Usage
    decision: RouteDecision
    overhead_us: int                              # gateway time excluding the upstream's own


class Completion(NamedTuple):
    """A whole (non-streamed) answer, assembled by Pipeline.complete()."""
    request_id: str
    text: str
    finish_reason: str
    usage: Usage
    decision: RouteDecision
    overhead_us: int

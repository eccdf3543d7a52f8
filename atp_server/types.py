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
    # ---- beyond text (the HTTP dialects fill these; the frame paths leave the defaults) ----------
    # `messages` stays the text of the conversation (routing, estimates, redaction read it);
    # `details`, when not empty, has one entry per message with what text alone cannot say.
    details: tuple["MessageDetail | None", ...] = ()
    tools: tuple["ToolSpec", ...] = ()
    tool_choice: "ToolChoice | None" = None
    parallel_tool_calls: bool | None = None
    response_format: "ResponseFormat | None" = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int = 1
    user: str | None = None
    # Objective (routing/choose.py): an explicit trade-off instead of the tier's; at most one.
    cost_weight: float | None = None
    min_quality: float | None = None
    # W3C trace context (tracing/context.py): the client's, as received (never validated here: a
    # malformed one starts a new trace); trace_id is set by the pipeline — the trace the request's
    # span belongs to, or the client's when tracing is off — for the x-atp-trace-id header.
    traceparent: str = ""
    tracestate: str = ""
    trace_id: str = ""

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

        if self.details and len(self.details) != len(self.messages):
            raise AtpError(ErrorCode.INVALID_REQUEST, "details must have one entry per message")
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise AtpError(ErrorCode.INVALID_REQUEST, "top_p must be in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            if (v := getattr(self, name)) is not None and not -2 <= v <= 2:
                raise AtpError(ErrorCode.INVALID_REQUEST, f"{name} must be in [-2, 2]")
        if len(self.stop) > MAX_STOP:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"stop takes at most {MAX_STOP} sequences")
        if self.n != 1:
            raise AtpError(ErrorCode.INVALID_REQUEST, "n must be 1")

    def prompt_chars(self) -> int:
        return sum(len(c) for _, c in self.messages)

    def map_text(self, fn) -> None:
        """Rewrite every piece of message text with fn(str) -> str, in `messages` and in the text
        parts of `details` alike (a redaction that saw only `messages` would leak the parts)."""
        self.messages = [(role, fn(text)) for role, text in self.messages]
        if self.details:
            self.details = tuple(d and d._replace(parts=tuple(fn(p) if type(p) is str else p for p in d.parts))
                                 for d in self.details)


MAX_STOP = 4   # OpenAI's own limit on stop sequences; providers reject more


# ---- the parts of a request beyond plain text --------------------------------------------------

class ImagePart(NamedTuple):
    url: str                                      # http(s) URL or a data: URL (base64 image data)
    detail: str | None = None                     # OpenAI's "low" | "high" | "auto"


class ToolCall(NamedTuple):
    """A function call the assistant made (in history, or in a whole answer)."""
    id: str
    name: str
    arguments: str                                # JSON text as the model wrote it (may be invalid)


class MessageDetail(NamedTuple):
    """What one message says beyond its text. `parts` (when not empty) is the content in order:
    str for text, ImagePart for images; the message's text in `messages` is its str parts joined."""
    parts: tuple = ()
    tool_calls: tuple[ToolCall, ...] = ()         # an assistant message that called tools
    tool_call_id: str | None = None               # a tool message: the call it answers
    name: str | None = None


class ToolSpec(NamedTuple):
    name: str
    description: str | None = None
    parameters: dict | None = None                # JSON Schema of the arguments
    strict: bool | None = None


class ToolChoice(NamedTuple):
    mode: str                                     # "auto" | "none" | "required" | "function"
    name: str | None = None                       # the forced function when mode == "function"


class ResponseFormat(NamedTuple):
    type: str                                     # "text" | "json_object" | "json_schema"
    name: str | None = None
    schema: dict | None = None
    strict: bool | None = None
    description: str | None = None


class EmbeddingRequest(NamedTuple):
    inputs: tuple[str, ...]
    model: str | None = None
    dimensions: int | None = None
    user: str | None = None


class Embeddings(NamedTuple):
    vectors: list[list[float]]
    input_tokens: int


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
    estimated: bool = False                       # counted by ATP, not reported by the provider
    cached_input_tokens: int = 0

    @property
    def cost_usd(self) -> float:
        return self.cost_usd_micros / 1e6


# ---- what adapters yield while streaming ----------------------------------------------------------

class TextDelta(NamedTuple):
    text: str
    tokens: int = 1


class ToolCallDelta(NamedTuple):
    """A piece of a streamed tool call: the first piece of call `index` has its id and name, the
    following ones append to its JSON arguments (OpenAI's streaming shape)."""
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    tokens: int = 1


class Finish(NamedTuple):
    """The upstream finished normally. Token counts from the provider when it reports them."""
    reason: str = "stop"
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()         # a whole (non-streamed) answer's calls
    cached_input_tokens: int | None = None
    # what the adapter learnt of the route while serving, added to the decision's reasons
    # (federation: the next hop that answered when the first one failed)
    route_note: str | None = None


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
    tool_calls: tuple[ToolCall, ...] = ()

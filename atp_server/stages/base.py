"""The stage protocol, the per-request context the stages share, and the chain that runs them."""
import time

from ..types import ChatRequest, RouteDecision


class RequestContext:
    """Everything one request carries through the chain; each stage reads and writes its fields.

    A class with __slots__, not a dataclass: one is built per request (a third of the cost).
    """

    __slots__ = ("request", "principal", "transport", "t0", "upstream_ns", "decision", "usage",
                 "outcome", "code", "finished", "failures",
                 "redacted", "vault", "injection", "policy", "cache", "trace_id", "span")

    def __init__(self, request: ChatRequest, principal, transport: str, started_ns: int | None):
        self.request = request
        self.principal = principal
        self.transport = transport
        self.t0 = started_ns or time.perf_counter_ns()
        self.upstream_ns = 0                       # time spent waiting on the provider
        self.decision: RouteDecision | None = None
        self.usage = None                          # types.Usage once an answer is complete
        self.outcome, self.code = "ok", 0          # wire-code name and number at the end
        self.finished = False                      # the result was produced; a later close is not a cancel
        self.failures: list[str] = []              # "model: CODE" of attempts that failed over
        self.redacted: dict | None = None          # kind -> values redacted (stages/redact.py)
        self.vault = None                          # redaction.Vault when the answer is restored
        self.injection = None                      # (score, signals) when the guard flagged it
        self.policy = None                         # policy.Decision, set by the policy stage
        self.cache = None                          # stages.cache.Ticket when caching applies
        self.trace_id = None                       # 32 hex: tracing on, or a traceparent came in
        self.span = None                           # tracing/otel.py RequestSpan when tracing is on

    def overhead_us(self) -> int:
        """Gateway time so far, excluding the provider's own."""
        return (time.perf_counter_ns() - self.t0 - self.upstream_ns) // 1000


class Stage:
    """Base of every stage. Subclasses override `before` and/or `after`; what they leave as the
    base's is skipped by the chain (never called), so an after-only stage costs nothing before."""

    name = "stage"
    selection = False          # also runs for a selection-only call (the Route RPC)

    def before(self, ctx: RequestContext):
        """Check or rewrite; raise AtpError to refuse; may return an awaitable to wait on."""

    def after(self, ctx: RequestContext, outcome: str) -> None:
        """Runs once the request ended (ctx.outcome/ctx.code are final), in reverse chain order."""


def _overrides(stage: Stage, method: str) -> bool:
    """Whether the stage's class defines its own `method` (an instance attribute does not count:
    stages say what they do in their class, where the chain and a reader can see it)."""
    if method in getattr(stage, "__dict__", {}):
        raise TypeError(f"stage {stage.name!r}: define {method}() in the class, not on the instance")
    return getattr(type(stage), method) is not getattr(Stage, method)


class StageChain:
    """A fixed, ordered tuple of stages with their bound methods looked up once.

    `befores[i]` / `afters[i]` are the bound methods of stage i or None where the stage keeps the
    base's no-op, so the per-request loops call only what does something.
    """

    __slots__ = ("stages", "befores", "afters", "selection_befores")

    def __init__(self, stages):
        self.stages = tuple(stages)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.befores = tuple(s.before if _overrides(s, "before") else None for s in self.stages)
        self.afters = tuple(s.after if _overrides(s, "after") else None for s in self.stages)
        self.selection_befores = tuple(s.before for s in self.stages
                                       if s.selection and _overrides(s, "before"))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def __len__(self) -> int:
        return len(self.stages)

"""Per-model health: a minimal circuit breaker (closed / open / half-open) fed by call outcomes."""
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class Breaker:
    failure_threshold: int = 5        # consecutive failures that open the circuit
    cooldown_s: float = 10.0          # open -> half-open after this long
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False             # half-open: one trial call at a time

    def allows(self, now: float) -> bool:
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state, self.probing = HALF_OPEN, False
        if self.state == CLOSED:
            return True
        return self.state == HALF_OPEN and not self.probing

    def on_dispatch(self) -> None:
        if self.state == HALF_OPEN:
            self.probing = True

    def on_success(self) -> None:
        self.state, self.failures, self.probing = CLOSED, 0, False

    def on_failure(self, now: float) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.state, self.opened_at, self.probing = OPEN, now, False


@dataclass(slots=True)
class HealthBoard:
    threshold: int = 5
    cooldown_s: float = 10.0
    breakers: dict = field(default_factory=dict)
    not_closed: set = field(default_factory=set)   # model ids whose circuit is open or half-open

    def record_failure(self, model_id: str, now: float) -> None:
        b = self.breaker(model_id)
        b.on_failure(now)
        if b.state != CLOSED:
            self.not_closed.add(model_id)

    def record_success(self, model_id: str) -> None:
        self.breaker(model_id).on_success()
        self.not_closed.discard(model_id)

    def all_closed(self) -> bool:
        """True when no circuit is open or probing: routing results may then be reused."""
        return not self.not_closed

    def breaker(self, model_id: str) -> Breaker:
        b = self.breakers.get(model_id)
        if b is None:
            b = self.breakers[model_id] = Breaker(self.threshold, self.cooldown_s)
        return b

    def healthy(self, model_id: str, now: float) -> bool:
        """Routing's question: may a call go to this model now (moves open -> half-open)."""
        return self.breaker(model_id).allows(now)

    def is_open(self, model_id: str, now: float) -> bool:
        """Reporting's question, without side effects: is the circuit open and still cooling down?"""
        b = self.breakers.get(model_id)
        return b is not None and b.state == OPEN and now - b.opened_at < b.cooldown_s

"""Per-model health: one circuit breaker per model, a pure (state, signal) -> (action, next) table.

Reads (`state`, `admits`, `is_open`, `retry_after_ms`) never change anything: routing may ask as
often as it likes. `report()` is the only mutator; the pipeline reports each dispatch and each
call's end. OPEN -> HALF_OPEN is not a move anybody makes: an OPEN circuit *reads* as HALF_OPEN once
its cooldown has passed. The probe (the one trial call of a half-open circuit) is released whatever
its call ends with: success closes, an upstream fault re-opens, anything else (client error,
cancel, a bug) hands the probe back. Only upstream faults count (DESIGN §4): one client's bad
requests never open a circuit for every tenant.

The table is indexed by small ints so that a later model table (numpy columns) can hold it as two
arrays, ACTION[state, signal] and NEXT[state, signal], and apply it to a column of circuits at once.
"""
import math
from dataclasses import dataclass, field
from enum import IntEnum

from codec.errors import ErrorCode

from ..types import AtpError


class State(IntEnum):
    CLOSED = 0        # calls flow; consecutive upstream faults are counted
    OPEN = 1          # cooling down: no calls (reads as HALF_OPEN once the cooldown has passed)
    HALF_OPEN = 2     # the next dispatch becomes the probe
    PROBING = 3       # the probe is out; nothing else is sent until it answers


class Signal(IntEnum):
    DISPATCH = 0        # a call is about to be sent
    OK = 1              # a call finished normally
    FAULT = 2           # a call failed because of the upstream
    LAST_FAULT = 3      # the same, reaching the threshold (the board sends it in place of FAULT)
    NEUTRAL = 4         # a call ended for a reason that says nothing about the upstream
    PROBE_OK = 5        # the same three for the probe's own call
    PROBE_FAULT = 6
    PROBE_NEUTRAL = 7


class Action(IntEnum):
    PASS = 0          # dispatch: send it, an ordinary call
    PROBE = 1         # dispatch: send it, it is the probe (report its end with probe=True)
    REJECT = 2        # dispatch: do not send (open, or the probe is already out)
    RESET = 3         # failures = 0
    COUNT = 4         # failures += 1
    TRIP = 5          # failures = 0, opened_at = now
    RELEASE = 6       # the probe is handed back
    IGNORE = 7        # nothing to do


class Outcome(IntEnum):
    """How a dispatched call ended, as far as the upstream's health is concerned."""
    OK = 0
    FAULT = 1
    NEUTRAL = 2


_S, _G, _A = State, Signal, Action
_LATE = (_G.OK, _G.FAULT, _G.LAST_FAULT, _G.NEUTRAL)
_STRAY = (_G.PROBE_OK, _G.PROBE_FAULT, _G.PROBE_NEUTRAL)

_PAIRS = {
    (_S.CLOSED, _G.DISPATCH): (_A.PASS, _S.CLOSED),
    (_S.CLOSED, _G.OK): (_A.RESET, _S.CLOSED),
    (_S.CLOSED, _G.FAULT): (_A.COUNT, _S.CLOSED),
    (_S.CLOSED, _G.LAST_FAULT): (_A.TRIP, _S.OPEN),
    (_S.CLOSED, _G.NEUTRAL): (_A.IGNORE, _S.CLOSED),   # a client's 400 leaves the count alone
    (_S.OPEN, _G.DISPATCH): (_A.REJECT, _S.OPEN),       # routed before it opened: fail over
    (_S.HALF_OPEN, _G.DISPATCH): (_A.PROBE, _S.PROBING),
    (_S.PROBING, _G.DISPATCH): (_A.REJECT, _S.PROBING),  # one probe at a time
    (_S.PROBING, _G.PROBE_OK): (_A.RESET, _S.CLOSED),
    (_S.PROBING, _G.PROBE_FAULT): (_A.TRIP, _S.OPEN),
    (_S.PROBING, _G.PROBE_NEUTRAL): (_A.RELEASE, _S.HALF_OPEN),
}
# Late answers from calls sent before the circuit opened describe the past; the probe decides.
_PAIRS.update({(s, g): (_A.IGNORE, s) for s in (_S.OPEN, _S.HALF_OPEN, _S.PROBING) for g in _LATE})
# Only the probe's own answer leaves PROBING, so a probe answer seen in another state is stray
# (e.g. a board reset under it): it must not move anything.
_PAIRS.update({(s, g): (_A.IGNORE, s) for s in (_S.CLOSED, _S.OPEN, _S.HALF_OPEN) for g in _STRAY})

# TABLE[state][signal] -> (action, next state). Built so that a pair left out fails at import,
# not at 3 a.m. with a default nobody chose.
_missing = [(s.name, g.name) for s in State for g in Signal if (s, g) not in _PAIRS]
if _missing:
    raise AssertionError(f"breaker table has no entry for {_missing}")
TABLE: tuple = tuple(tuple(_PAIRS[(s, g)] for g in Signal) for s in State)
del _missing

# Codes an adapter raises when the provider, not the request, is at fault: 5xx, timeouts, resets,
# cut streams, and the provider's own rate limiting / overload. Everything else (invalid request,
# unknown model, forbidden, ...) is the caller's problem and must not count against the model.
UPSTREAM_FAULTS = frozenset({
    ErrorCode.UPSTREAM_ERROR, ErrorCode.UPSTREAM_TIMEOUT, ErrorCode.UPSTREAM_CUT,
    ErrorCode.RATE_LIMITED, ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT,
})

# When the only thing in the way is a probe already in flight, its answer takes about one call;
# 1 s is also the smallest value an HTTP Retry-After header can say.
PROBE_WAIT_MS = 1000

_FINISHED = ((_G.OK, _G.FAULT, _G.NEUTRAL), (_G.PROBE_OK, _G.PROBE_FAULT, _G.PROBE_NEUTRAL))
# Module-level names for the members the per-request path uses: an enum attribute lookup
# (State.OPEN) costs ~100 ns on CPython 3.11, a global ~15 ns; two reports per request add up.
_CLOSED, _OPEN, _HALF_OPEN, _PROBING = State
_OK, _PROBE_OK = Signal.OK, Signal.PROBE_OK
_FAULT, _LAST_FAULT = Signal.FAULT, Signal.LAST_FAULT
_COUNT, _RESET, _TRIP = Action.COUNT, Action.RESET, Action.TRIP
_OK_OUT, _FAULT_OUT, _NEUTRAL_OUT = Outcome


def step(state: State, signal: Signal) -> tuple[Action, State]:
    """The breaker: pure. An unknown pair raises (IndexError/ValueError), never a default."""
    return TABLE[State(state)][Signal(signal)]


def outcome_of(exc: BaseException | None) -> Outcome:
    """Classify how a call ended: None is success; only upstream-fault codes count as faults."""
    if exc is None:
        return _OK_OUT
    return _FAULT_OUT if isinstance(exc, AtpError) and exc.code in UPSTREAM_FAULTS else _NEUTRAL_OUT


def finished(outcome: Outcome, probe: bool) -> Signal:
    """The signal that reports a call's end (probe: its dispatch was answered Action.PROBE)."""
    return _FINISHED[probe][outcome]


def ended(exc: BaseException | None, probe: bool) -> Signal:
    """finished(outcome_of(exc), probe), with the success case first and without the calls."""
    if exc is None:
        return _PROBE_OK if probe else _OK
    return _FINISHED[probe][outcome_of(exc)]


@dataclass(slots=True)
class Circuit:
    """One model's breaker data: the stored state (OPEN is stored, HALF_OPEN may be derived)."""
    state: State = _CLOSED
    failures: int = 0             # consecutive upstream faults while CLOSED
    opened_at: float = 0.0
    closed_at: float = 0.0        # last re-close after a trip: what other workers adopt (adopt())


@dataclass(slots=True)
class HealthBoard:
    # Five consecutive upstream faults: one flaky answer does not evict a model, a dead one is out
    # within a handful of requests. Ten seconds: long enough not to hammer a provider that is down,
    # short enough that a recovered one is back before most clients' retry budget runs out.
    threshold: int = 5
    cooldown_s: float = 10.0
    # Model id -> Circuit, created on a model's first report. Only the pipeline reports, and only
    # for models of the router's table, so this is bounded by the configured models.
    circuits: dict = field(default_factory=dict)
    not_closed: set = field(default_factory=set)   # model ids whose stored state is not CLOSED
    # fn(model_id, was, now_state) on each stored transition: the App logs it as an event, so
    # routing itself does no I/O.
    on_change: object = None

    # ---- reads: no side effects ------------------------------------------------------------------

    def state(self, model_id: str, now: float) -> State:
        c = self.circuits.get(model_id)
        if c is None:
            return _CLOSED
        if c.state is _OPEN and now - c.opened_at >= self.cooldown_s:
            return _HALF_OPEN
        return c.state

    def admits(self, model_id: str, now: float) -> bool:
        """Routing's question: may a call be routed to this model now?"""
        if model_id not in self.not_closed:
            return True
        return self.state(model_id, now) is _HALF_OPEN

    def is_open(self, model_id: str, now: float) -> bool:
        """Reporting's question: is the circuit open and still cooling down?"""
        return model_id in self.not_closed and self.state(model_id, now) is _OPEN

    def all_closed(self) -> bool:
        """True when no circuit is open, half-open or probing: routing results may be reused."""
        return not self.not_closed

    def retry_after_ms(self, model_ids, now: float) -> int:
        """How long until one of these models may be tried again: the earliest half-open, or
        PROBE_WAIT_MS when the only obstacle is a probe in flight; 0 if one is usable now."""
        best = None
        for model_id in model_ids:
            state = self.state(model_id, now)
            if state is _OPEN:
                # Rounded up (a client told to come back early is refused again), after dropping
                # float noise below a microsecond so that 6000.0000001 ms stays 6000.
                left_ms = (self.circuits[model_id].opened_at + self.cooldown_s - now) * 1000
                wait = math.ceil(round(left_ms, 3))
            elif state is _PROBING:
                wait = PROBE_WAIT_MS
            else:
                return 0
            best = wait if best is None else min(best, wait)
        return best or 0

    # ---- the one mutator -----------------------------------------------------------------------

    def report(self, model_id: str, signal: Signal, now: float) -> Action:
        c = self.circuits.get(model_id)
        if c is None:
            c = self.circuits[model_id] = Circuit()
        state = stored = c.state
        if state is _OPEN and now - c.opened_at >= self.cooldown_s:
            state = _HALF_OPEN
        if signal is _FAULT and state is _CLOSED and c.failures + 1 >= self.threshold:
            signal = _LAST_FAULT
        action, state = TABLE[state][signal]
        if action is _COUNT:
            c.failures += 1
        elif action is _RESET:
            c.failures = 0
        elif action is _TRIP:
            c.failures, c.opened_at = 0, now
        if state is not stored:
            c.state = state
            if self.on_change is not None:   # logs/events outside routing (app.py wires it)
                self.on_change(model_id, stored, state)
            if state is _CLOSED:
                c.closed_at = now
                self.not_closed.discard(model_id)
            else:
                self.not_closed.add(model_id)
        return action

    # ---- another worker's breaker (state/learning.py merges them through the shared store) ------

    def adopt(self, model_id: str, opened_at: float, closed_at: float) -> None:
        """Take over the latest breaker event any worker saw for this model (times on our
        clock): a trip after our last one opens our circuit from that moment; a close after our
        last trip closes it. A probe of ours in flight is left to answer for itself."""
        c = self.circuits.get(model_id)
        if c is None:
            c = self.circuits[model_id] = Circuit()
        stored = c.state
        if stored is _PROBING:
            return
        if opened_at > closed_at:
            if opened_at <= c.opened_at:
                return
            c.state, c.failures, c.opened_at = _OPEN, 0, opened_at
        elif closed_at > c.opened_at and stored is not _CLOSED:
            c.state, c.failures, c.closed_at = _CLOSED, 0, closed_at
        else:
            return
        if c.state is not stored:
            if self.on_change is not None:
                self.on_change(model_id, stored, c.state)
            if c.state is _CLOSED:
                self.not_closed.discard(model_id)
            else:
                self.not_closed.add(model_id)

"""Circuit breakers: the (state, signal) -> (action, next state) table, walked pair by pair, and the
health board's read-only questions and its one mutator, report()."""
import itertools

import pytest

from atp_server.routing import health as h
from atp_server.routing.health import TABLE, Action, HealthBoard, Outcome, Signal, State, finished

REGULAR = (Signal.OK, Signal.FAULT, Signal.LAST_FAULT, Signal.NEUTRAL)
PROBE = (Signal.PROBE_OK, Signal.PROBE_FAULT, Signal.PROBE_NEUTRAL)

# The whole table, written out a second time on purpose: a change to the breaker must change both.
EXPECTED = {
    (State.CLOSED, Signal.DISPATCH): (Action.PASS, State.CLOSED),
    (State.CLOSED, Signal.OK): (Action.RESET, State.CLOSED),
    (State.CLOSED, Signal.FAULT): (Action.COUNT, State.CLOSED),
    (State.CLOSED, Signal.LAST_FAULT): (Action.TRIP, State.OPEN),
    (State.CLOSED, Signal.NEUTRAL): (Action.IGNORE, State.CLOSED),
    (State.OPEN, Signal.DISPATCH): (Action.REJECT, State.OPEN),
    (State.HALF_OPEN, Signal.DISPATCH): (Action.PROBE, State.PROBING),
    (State.PROBING, Signal.DISPATCH): (Action.REJECT, State.PROBING),
    (State.PROBING, Signal.PROBE_OK): (Action.RESET, State.CLOSED),
    (State.PROBING, Signal.PROBE_FAULT): (Action.TRIP, State.OPEN),
    (State.PROBING, Signal.PROBE_NEUTRAL): (Action.RELEASE, State.HALF_OPEN),
}
# Late answers of calls sent before the circuit opened say nothing about now; the probe decides.
EXPECTED.update({(s, sig): (Action.IGNORE, s) for s in (State.OPEN, State.HALF_OPEN, State.PROBING)
                 for sig in REGULAR})
# Only the probe's own answer leaves PROBING, so a probe answer in any other state is stray.
EXPECTED.update({(s, sig): (Action.IGNORE, s) for s in (State.CLOSED, State.OPEN, State.HALF_OPEN)
                 for sig in PROBE})


def test_table_is_total_and_every_pair_is_the_intended_one():
    pairs = list(itertools.product(State, Signal))
    assert len(EXPECTED) == len(pairs)
    for state, signal in pairs:
        assert h.step(state, signal) == EXPECTED[(state, signal)], (state, signal)
        assert TABLE[state][signal] == EXPECTED[(state, signal)]


def test_a_missing_pair_is_a_bug_not_a_silent_default():
    with pytest.raises((KeyError, IndexError, ValueError)):
        h.step(State.CLOSED, 99)


def test_reads_never_change_state():
    board = HealthBoard(threshold=1, cooldown_s=10)
    board.report("m", Signal.DISPATCH, 0.0)
    board.report("m", finished(Outcome.FAULT, probe=False), 0.0)
    before = (board.state("m", 0.0), board.circuits["m"].state)
    for now in (0.0, 5.0, 10.0, 11.0, 10_000.0):      # asking, even after the cooldown, moves nothing
        board.admits("m", now)
        board.state("m", now)
        board.is_open("m", now)
        board.retry_after_ms(["m"], now)
    assert (board.state("m", 0.0), board.circuits["m"].state) == before == (State.OPEN, State.OPEN)
    assert board.state("m", 10.0) is State.HALF_OPEN       # derived from the clock, not stored
    assert board.admits("never-seen", 0.0) and "never-seen" not in board.circuits


def test_threshold_then_cooldown_then_one_probe():
    board = HealthBoard(threshold=2, cooldown_s=5)
    for now in (0.0, 1.0):
        assert board.report("m", Signal.DISPATCH, now) is Action.PASS
        board.report("m", finished(Outcome.FAULT, probe=False), now)
    assert board.state("m", 2.0) is State.OPEN and not board.admits("m", 2.0)
    assert board.retry_after_ms(["m"], 2.0) == 4000          # opened at 1.0, cooldown 5 s
    assert board.admits("m", 6.0)
    assert board.report("m", Signal.DISPATCH, 6.0) is Action.PROBE
    assert not board.admits("m", 6.0)                         # one probe at a time
    assert board.report("m", Signal.DISPATCH, 6.0) is Action.REJECT
    board.report("m", finished(Outcome.FAULT, probe=True), 7.0)
    assert board.state("m", 7.0) is State.OPEN and board.retry_after_ms(["m"], 7.0) == 5000
    assert board.report("m", Signal.DISPATCH, 12.0) is Action.PROBE
    board.report("m", finished(Outcome.OK, probe=True), 12.5)
    assert board.state("m", 12.5) is State.CLOSED and board.all_closed()


@pytest.mark.parametrize("outcome", [Outcome.NEUTRAL])
def test_a_released_probe_lets_the_next_call_probe(outcome):
    board = HealthBoard(threshold=1, cooldown_s=5)
    board.report("m", finished(Outcome.FAULT, probe=False), 0.0)
    assert board.report("m", Signal.DISPATCH, 5.0) is Action.PROBE
    board.report("m", finished(outcome, probe=True), 5.0)
    assert board.state("m", 5.0) is State.HALF_OPEN and board.admits("m", 5.0)
    assert board.report("m", Signal.DISPATCH, 5.0) is Action.PROBE


def test_a_late_regular_answer_does_not_release_someone_elses_probe():
    board = HealthBoard(threshold=1, cooldown_s=5)
    assert board.report("m", Signal.DISPATCH, 0.0) is Action.PASS     # a slow call, sent while closed
    board.report("m", finished(Outcome.FAULT, probe=False), 0.0)        # another call trips it
    assert board.report("m", Signal.DISPATCH, 5.0) is Action.PROBE
    board.report("m", finished(Outcome.NEUTRAL, probe=False), 6.0)      # the slow call gives up
    assert board.state("m", 6.0) is State.PROBING and not board.admits("m", 6.0)


def test_neutral_outcomes_leave_the_failure_count_alone():
    board = HealthBoard(threshold=2, cooldown_s=5)
    board.report("m", finished(Outcome.FAULT, probe=False), 0.0)
    for _ in range(10):
        board.report("m", finished(Outcome.NEUTRAL, probe=False), 0.0)
    assert board.state("m", 0.0) is State.CLOSED and board.circuits["m"].failures == 1
    board.report("m", finished(Outcome.OK, probe=False), 0.0)
    assert board.circuits["m"].failures == 0


def test_only_upstream_faults_count():
    from atp_server.types import AtpError
    from codec.errors import ErrorCode as E
    faults = {E.UPSTREAM_ERROR, E.UPSTREAM_TIMEOUT, E.UPSTREAM_CUT, E.RATE_LIMITED, E.OVERLOADED,
              E.UNAVAILABLE, E.TIMEOUT}
    for code in E:
        if code is E.NO_ERROR:
            continue
        expected = Outcome.FAULT if code in faults else Outcome.NEUTRAL
        assert h.outcome_of(AtpError(code, "x")) is expected, code
    assert h.outcome_of(None) is Outcome.OK
    assert h.outcome_of(RuntimeError("a bug")) is Outcome.NEUTRAL
    assert h.outcome_of(GeneratorExit()) is Outcome.NEUTRAL


def test_retry_after_is_the_earliest_half_open():
    board = HealthBoard(threshold=1, cooldown_s=10)
    board.report("a", finished(Outcome.FAULT, probe=False), 0.0)
    board.report("b", finished(Outcome.FAULT, probe=False), 4.0)
    assert board.retry_after_ms(["a", "b"], 5.0) == 5000
    assert board.retry_after_ms(["b"], 5.0) == 9000
    board.report("a", Signal.DISPATCH, 10.0)                  # a's probe is out: ask again soon
    assert board.retry_after_ms(["a"], 10.0) == h.PROBE_WAIT_MS

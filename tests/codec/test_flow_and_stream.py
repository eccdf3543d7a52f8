"""codec.flow (credit windows, reservations) and codec.stream (the per-stream transition tables)."""
import itertools

import pytest

from codec import (DEFAULT_INITIAL, DEFAULT_REQUEST_TOKENS, CreditWindow, ErrorCode, FlowControlError,
                   ProtocolError, StreamState, reservation)
from codec.flow import MAX_CREDIT
from codec.stream import CLIENT_TABLE, SERVER_TABLE, TABLES, transition

IDLE, OPEN, CANCELLING, CLOSED = (StreamState.IDLE, StreamState.OPEN, StreamState.CANCELLING,
                                  StreamState.CLOSED)
INPUTS = [f"{d}_{x}" for d in ("send", "recv") for x in ("request", "chunk", "end", "error", "cancel")]


# ---- flow ---------------------------------------------------------------------------------------------

def test_reservation_defaults_and_explicit():
    assert reservation({"messages": []}) == (1, DEFAULT_REQUEST_TOKENS, 0)
    assert reservation({"max_tokens": 7, "max_cost": 9}) == (1, 7, 9)
    assert DEFAULT_INITIAL == (4, 16_384, 1_000_000)


def test_consume_exactly_to_zero():
    window = CreditWindow(2, 100, 10)
    window.consume(1, 60, 4)
    window.consume(1, 40, 6)
    assert window.available == (0, 0, 0)


@pytest.mark.parametrize("need,dimension", [((3, 1, 1), "requests"), ((1, 101, 1), "tokens"),
                                            ((1, 1, 11), "usd_micros")])
def test_consume_over_any_dimension_raises_and_changes_nothing(need, dimension):
    window = CreditWindow(2, 100, 10)
    with pytest.raises(FlowControlError, match=dimension) as info:
        window.consume(*need)
    assert info.value.code is ErrorCode.WINDOW_EXCEEDED and info.value.retryable
    assert window.available == (2, 100, 10)


def test_shortfall_reports_the_first_short_dimension():
    window = CreditWindow(0, 0, 0)
    assert window.shortfall(0, 0, 0) is None
    assert window.shortfall(1, 1, 1).startswith("requests")
    assert CreditWindow(1, 0, 0).shortfall(1, 1, 1).startswith("tokens")


def test_grant_adds_and_saturates():
    window = CreditWindow(1, 2, 3)
    window.grant(1, 1, 1)
    assert window.available == (2, 3, 4)
    window.grant(MAX_CREDIT, 2**64 - 1, MAX_CREDIT)
    assert window.available == (MAX_CREDIT,) * 3
    assert MAX_CREDIT < 2**64


# ---- stream tables ---------------------------------------------------------------------------------------

CLIENT_ALLOWED = {
    (IDLE, "send_request"): OPEN,
    (OPEN, "recv_chunk"): OPEN, (OPEN, "recv_end"): CLOSED, (OPEN, "recv_error"): CLOSED,
    (OPEN, "send_cancel"): CANCELLING,
    (CANCELLING, "recv_chunk"): CANCELLING, (CANCELLING, "recv_end"): CLOSED,
    (CANCELLING, "recv_error"): CLOSED, (CANCELLING, "send_cancel"): CANCELLING,
}
SERVER_ALLOWED = {
    (IDLE, "recv_request"): OPEN,
    (OPEN, "send_chunk"): OPEN, (OPEN, "send_end"): CLOSED, (OPEN, "send_error"): CLOSED,
    (OPEN, "recv_cancel"): CLOSED, (CLOSED, "recv_cancel"): CLOSED,
}
EXPECTED = {"client": CLIENT_ALLOWED, "server": SERVER_ALLOWED}


def test_tables_are_exactly_the_documented_ones():
    assert CLIENT_TABLE == CLIENT_ALLOWED
    assert SERVER_TABLE == SERVER_ALLOWED
    assert TABLES == {"client": CLIENT_TABLE, "server": SERVER_TABLE}


ALL_PAIRS = [(role, state, event) for role in ("client", "server")
             for state, event in itertools.product(StreamState, INPUTS)]


@pytest.mark.parametrize("role,state,event", ALL_PAIRS,
                         ids=[f"{r}-{s.value}-{e}" for r, s, e in ALL_PAIRS])
def test_every_pair_either_transitions_or_is_invalid_stream(role, state, event):
    expected = EXPECTED[role].get((state, event))
    if expected is not None:
        assert transition(TABLES[role], state, 7, event) is expected
    else:
        with pytest.raises(ProtocolError, match=f"stream 7: {event} not allowed in state {state.value}") as info:
            transition(TABLES[role], state, 7, event)
        assert info.value.code is ErrorCode.INVALID_STREAM


def test_roles_never_use_the_other_sides_verbs():
    assert all(event.startswith(("send_request", "send_cancel", "recv_"))
               for _, event in CLIENT_TABLE)
    assert not any(event in ("recv_request", "recv_cancel") for _, event in CLIENT_TABLE)
    assert not any(event in ("send_request", "send_cancel", "recv_chunk") for _, event in SERVER_TABLE)


def test_closed_is_terminal_except_a_raced_cancel():
    for (state, event), new in {**CLIENT_TABLE, **SERVER_TABLE}.items():
        if state is CLOSED:
            assert (event, new) == ("recv_cancel", CLOSED)


def test_typical_lifecycles():
    client = [("send_request", OPEN), ("recv_chunk", OPEN), ("recv_chunk", OPEN), ("recv_end", CLOSED)]
    cancelled = [("send_request", OPEN), ("send_cancel", CANCELLING), ("recv_chunk", CANCELLING),
                 ("recv_error", CLOSED)]
    server = [("recv_request", OPEN), ("send_chunk", OPEN), ("send_end", CLOSED), ("recv_cancel", CLOSED)]
    for role, steps in (("client", client), ("client", cancelled), ("server", server)):
        state = IDLE
        for event, expected in steps:
            state = transition(TABLES[role], state, 1, event)
            assert state is expected

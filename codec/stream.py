"""Per-stream state machine as a transition table: (role, state, input) -> next state."""
from enum import Enum

from .errors import ErrorCode, ProtocolError


class StreamState(Enum):
    IDLE = "idle"
    OPEN = "open"
    CANCELLING = "cancelling"   # client sent CANCEL; frames already in flight may still arrive
    CLOSED = "closed"


IDLE, OPEN, CANCELLING, CLOSED = StreamState.IDLE, StreamState.OPEN, StreamState.CANCELLING, StreamState.CLOSED

# Inputs are "send_X" / "recv_X" for X in request, chunk, end, error, cancel.
# A pair missing from the table is a protocol error (INVALID_STREAM).
CLIENT_TABLE = {
    (IDLE, "send_request"): OPEN,
    (OPEN, "recv_chunk"): OPEN,
    (OPEN, "recv_end"): CLOSED,
    (OPEN, "recv_error"): CLOSED,
    (OPEN, "send_cancel"): CANCELLING,
    (CANCELLING, "recv_chunk"): CANCELLING,     # in flight before the server saw CANCEL
    (CANCELLING, "recv_end"): CLOSED,
    (CANCELLING, "recv_error"): CLOSED,
    (CANCELLING, "send_cancel"): CANCELLING,
}

SERVER_TABLE = {
    (IDLE, "recv_request"): OPEN,
    (OPEN, "send_chunk"): OPEN,
    (OPEN, "send_end"): CLOSED,
    (OPEN, "send_error"): CLOSED,
    (OPEN, "recv_cancel"): CLOSED,              # the server answers with ERROR(CANCELLED)
    (CLOSED, "recv_cancel"): CLOSED,            # raced with our END/ERROR: nothing to do
}

TABLES = {"client": CLIENT_TABLE, "server": SERVER_TABLE}


def transition(table: dict, state: StreamState, stream_id: int, event: str) -> StreamState:
    try:
        return table[state, event]
    except KeyError:
        raise ProtocolError(f"stream {stream_id}: {event} not allowed in state {state.value}",
                            ErrorCode.INVALID_STREAM) from None

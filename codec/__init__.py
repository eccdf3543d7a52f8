"""The ATP wire protocol, sans-I/O: frames, CBOR payloads, signing, anti-replay, flow control, sessions."""
from . import backend
from .connection import Connection, ConnectionConfig
from .errors import (AuthError, CodecError, ErrorCode, FlowControlError, FrameError, PayloadError,
                     ProtocolError, RETRYABLE, code_name)
from .events import (ChunkReceived, CongestionChanged, ConnectionTerminated, Event, PingReceived,
                     PongReceived, RequestReceived, SessionStarted, StreamCancelled, StreamEnded,
                     StreamReset, WindowUpdated)
from .flow import DEFAULT_INITIAL, DEFAULT_REQUEST_TOKENS, CreditWindow, reservation
from .frame import (HEADER_SIZE, NONCE_SIZE, TAG_SIZE, VERSION, Flag, Frame, FrameType,
                    check_shape, open_frame, peek_length, seal)
from .keys import Keyring
from .payload import DEFAULT_LIMITS, Limits, decode as decode_payload, encode as encode_payload
from .replay import NonceCache, NonceSnapshot, SequenceWindow, SessionGuard
from .stream import StreamState

__all__ = [name for name in dir() if not name.startswith("_")]

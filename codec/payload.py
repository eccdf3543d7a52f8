"""CBOR payloads: deterministic encoding for what we emit, bounded strict decoding of what we receive."""
from dataclasses import dataclass

import cbor2

from . import backend
from .errors import ErrorCode, PayloadError


@dataclass(frozen=True, slots=True)
class Limits:
    """Receive-side limits; a frame over any of them is rejected before or while decoding."""

    max_payload: int = 1 << 20      # bytes of CBOR per frame
    max_depth: int = 8              # nested containers, the top-level map counts as 1
    max_map_size: int = 64          # entries in any map the receiver interprets
    max_array_len: int = 1024       # items in any array the receiver interprets (e.g. messages)
    # bytes in one gRPC Session message (Frame.data), PROTOCOL.md §2.2: 4 MiB less 1 KiB, so that
    # the protobuf message around it stays within gRPC's default 4 MiB limit at every peer
    max_message: int = (4 << 20) - 1024

    def __post_init__(self):
        for name in ("max_payload", "max_depth", "max_map_size", "max_array_len", "max_message"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        if self.max_payload > 0xFFFFFFFF:
            raise ValueError("Limits.max_payload must fit the u32 length field")


DEFAULT_LIMITS = Limits()


def encode(payload: dict) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1 core deterministic: shortest forms, sorted keys)."""
    return cbor2.dumps(payload, canonical=True)


def encode_ordered(payload: dict) -> bytes:
    """The same bytes as encode() for a payload whose text keys are already in deterministic
    order (shorter first, then bytewise) and that holds no floats: plain cbor2 then emits
    exactly that, at a third of the cost of canonical mode's sorting. For the frames the codec
    builds itself; tests/codec/test_ordered_encoding.py holds every one to encode()."""
    return cbor2.dumps(payload)


def decode(data, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Decode one top-level CBOR map; anything else, trailing bytes, or a broken limit -> PayloadError.

    Strict CBOR (codec.backend's decode_cbor): no tags, no indefinite lengths, text/byte-string
    keys only and no duplicates, nesting at most limits.max_depth containers deep.
    """
    return decode_span(data, 0, len(data) if type(data) is bytes else memoryview(data).nbytes,
                       limits)


def decode_span(buf, start: int, end: int, limits: Limits = DEFAULT_LIMITS) -> dict:
    """decode() of the bytes buf[start:end], without slicing or copying them first."""
    try:
        obj = backend.impl.decode_cbor(buf, start, end, limits.max_depth)
    except ValueError as exc:
        raise PayloadError(exc.args[0] if exc.args else "malformed CBOR") from None
    if type(obj) is not dict:
        raise PayloadError(f"payload must be a CBOR map, got {type(obj).__name__}")
    if len(obj) > limits.max_map_size:
        raise PayloadError(f"payload map has {len(obj)} entries, limit {limits.max_map_size}")
    return obj


__all__ = ["Limits", "DEFAULT_LIMITS", "encode", "decode", "decode_span", "ErrorCode"]

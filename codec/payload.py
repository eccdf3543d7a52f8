"""CBOR payloads: deterministic encoding for what we emit, bounded strict decoding of what we receive."""
import io
from dataclasses import dataclass

import cbor2

from .errors import ErrorCode, PayloadError

# cbor2 resolves these semantic tags into rich objects (datetime, Fraction, re.Pattern, shared
# references that can build cycles...). ATP payloads are plain data, so every tag is rejected.
_KNOWN_TAGS = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 52, 54,
               100, 256, 258, 260, 261, 1004, 55799)


def _reject_tag(decoder, *_):
    raise PayloadError("CBOR tags are not allowed in ATP payloads")


_NO_TAGS = {tag: _reject_tag for tag in _KNOWN_TAGS}


@dataclass(frozen=True, slots=True)
class Limits:
    """Receive-side limits; a frame over any of them is rejected before or while decoding."""

    max_payload: int = 1 << 20      # bytes of CBOR per frame
    max_depth: int = 8              # nested containers, the top-level map counts as 1
    max_map_size: int = 64          # entries in any map the receiver interprets
    max_array_len: int = 1024       # items in any array the receiver interprets (e.g. messages)

    def __post_init__(self):
        for name in ("max_payload", "max_depth", "max_map_size", "max_array_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        if self.max_payload > 0xFFFFFFFF:
            raise ValueError("Limits.max_payload must fit the u32 length field")


DEFAULT_LIMITS = Limits()


def encode(payload: dict) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1 core deterministic: shortest forms, sorted keys)."""
    return cbor2.dumps(payload, canonical=True)


def decode(data, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Decode one top-level CBOR map; anything else, trailing bytes, or a broken limit -> PayloadError."""
    stream = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(
            stream, max_depth=limits.max_depth, allow_indefinite=False,
            allow_duplicate_keys=False, strict_hashable_types=True,
            semantic_decoders=_NO_TAGS, tag_hook=_reject_tag,
        ).decode()
    except PayloadError:
        raise
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, PayloadError):
            raise PayloadError(str(cause.args[0])) from None
        raise PayloadError(f"malformed CBOR: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError, EOFError) as exc:
        raise PayloadError(f"malformed CBOR: {type(exc).__name__}: {exc}") from None
    if stream.tell() != len(data):
        raise PayloadError(f"{len(data) - stream.tell()} trailing bytes after the payload map")
    if type(obj) is not dict:
        raise PayloadError(f"payload must be a CBOR map, got {type(obj).__name__}")
    if len(obj) > limits.max_map_size:
        raise PayloadError(f"payload map has {len(obj)} entries, limit {limits.max_map_size}")
    return obj


__all__ = ["Limits", "DEFAULT_LIMITS", "encode", "decode", "ErrorCode"]

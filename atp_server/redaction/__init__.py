"""PII and secret redaction with reversible placeholders, and a prompt-injection heuristic.

detectors (find spans) → vault (placeholders, restore a whole answer) → stream (restore a streamed
answer chunk by chunk); settings parses [redaction] / [guard]; injection scores a prompt.
"""
from .detectors import TYPES, Span, find
from .stream import restoring
from .vault import PLACEHOLDER, StreamRestorer, Vault

__all__ = ["PLACEHOLDER", "Span", "StreamRestorer", "TYPES", "Vault", "find", "restoring"]

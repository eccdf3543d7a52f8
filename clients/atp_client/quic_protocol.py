"""Deprecated location of codec.aio.quic.CoalescingQuicProtocol, kept for one release (0.1 -> 0.2).

The protocol moved to codec/aio so the server no longer imports the SDK; import it from codec.aio.quic.
"""
from codec.aio.quic import CoalescingQuicProtocol

__all__ = ["CoalescingQuicProtocol"]

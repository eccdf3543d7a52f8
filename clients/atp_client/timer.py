"""Deprecated location of codec.aio.timer (ConnectionTimer, now_ms), kept for one release (0.1 -> 0.2).

The timer moved to codec/aio so the server no longer imports the SDK; import it from codec.aio.
"""
from codec.aio.timer import ConnectionTimer, now_ms

__all__ = ["ConnectionTimer", "now_ms"]

"""The asyncio glue every driver of a codec.Connection shares: timer, frame-session driver, QUIC protocol.

The rest of codec/ is sans-I/O; this subpackage is where a Connection meets an event loop (as
aioquic keeps aioquic/asyncio/ beside its sans-I/O core), so the server and the SDK share it
without importing each other. `codec.aio.quic` needs aioquic and is imported on its own, so a
gRPC-only user of the SDK never loads aioquic.
"""
from .driver import FrameDriver
from .timer import ConnectionTimer, now_ms

__all__ = ["ConnectionTimer", "FrameDriver", "now_ms"]

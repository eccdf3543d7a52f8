"""Drives one codec.Connection on the running loop: bytes in, events to a subclass, frames out once a pass."""
import asyncio
import time

from .timer import ConnectionTimer, now_ms


class FrameDriver:
    """What every frame-session driver shares: the server's FrameSession and the SDK's FrameClient.

    It owns the Connection and its one timer. The transport calls feed() (a byte stream: QUIC),
    feed_frames() (a message of whole frames: gRPC Session) or feed_frame() with what arrived;
    the subclass's `_dispatch()` drains `conn.next_event()`. Output is flushed once per loop pass
    (`schedule_flush`), so what many streams produced in one pass leaves as one `send(frames)`
    call — one gRPC message, one QUIC write. Once the connection is closed and its last frames
    were handed to `send`, `_closed()` runs, once.
    """

    def __init__(self, conn, send):
        self.conn = conn
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._timer = ConnectionTimer(self._loop, conn, self._timer_fired)
        self._flush_pending = False
        self.finished = False
        self.fed_ns = 0     # perf_counter_ns at the last input: a server's overhead starts there

    # ---- input -----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """The next bytes of a byte stream (frames may be split anywhere)."""
        self.fed_ns = time.perf_counter_ns()
        self.conn.receive_data(data, now_ms())
        self._dispatch()
        self.schedule_flush()

    def feed_frames(self, data: bytes) -> None:
        """One message of whole frames back to back (gRPC Session)."""
        self.fed_ns = time.perf_counter_ns()
        self.conn.receive_frames(data, now_ms())
        self._dispatch()
        self.schedule_flush()

    def feed_frame(self, frame: bytes) -> None:
        """Exactly one frame."""
        self.fed_ns = time.perf_counter_ns()
        self.conn.receive_frame(frame, now_ms())
        self._dispatch()
        self.schedule_flush()

    def _dispatch(self) -> None:
        """Act on every event the connection has queued (`while (e := conn.next_event())`)."""
        raise NotImplementedError

    # ---- output and the timer --------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """Flush at the end of this loop pass (once, however many frames are queued until then)."""
        if not self._flush_pending and not self.finished:
            self._flush_pending = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand every queued frame to `send` now; finish if the connection is closed."""
        self._flush_pending = False
        if self.finished:
            return
        conn = self.conn
        frames = conn.frames_to_send()
        if frames:
            self._send(frames)
        if conn.closed:
            self.finish()
        else:
            self._timer.arm()

    def _timer_fired(self) -> None:
        self._dispatch()
        self.flush()

    def finish(self) -> None:
        """Stop driving: the timer is cancelled and `_closed()` runs (only the first call counts)."""
        if self.finished:
            return
        self.finished = True
        self._timer.cancel()
        self._closed()

    def _closed(self) -> None:
        """Hook: the session is over (its final frames, if any, went to `send`)."""

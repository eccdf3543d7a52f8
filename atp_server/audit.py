"""Audit hook: every finished or failed request becomes a record, batched into SQLite off the hot path.

Why the batches are written on the event loop and only checkpoints run in a thread: a writer
thread competing for the GIL with the loop (bind a row, release for sqlite3_step, re-acquire)
gave the loop multi-millisecond stalls — p99 latency 3–40 ms at 3.5k req/s. Appends to the WAL
without fsync cost ~1.5 µs a row on the loop, in slices every 50 ms; the one slow part, the WAL
checkpoint (fsync), runs on its own connection in a worker thread, in C without the GIL.
"""
import asyncio
import sqlite3
import threading
import time

import orjson

_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, ts REAL NOT NULL, tenant TEXT, principal TEXT,
  transport TEXT, request_id TEXT, model TEXT, outcome TEXT, code INTEGER, record TEXT NOT NULL)"""


class AuditLog:
    """Appends records to a buffer (O(1) on the request path); a background flush writes batches."""

    def __init__(self, path: str, flush_every_s: float = 0.05, max_buffer: int = 4096,
                 checkpoint_every_s: float = 5.0):
        self.path = path
        self.flush_every_s = flush_every_s
        self.checkpoint_every_s = checkpoint_every_s
        self.max_buffer = max_buffer
        self._buffer: list[tuple] = []
        self._lock = threading.Lock()       # count() may be called from other threads (tests)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a committed batch survives a process crash (not an OS crash before the
        # next checkpoint); halves the cost per row against FULL (1.5 vs 3 µs measured here).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")   # checkpoints: _checkpoint(), threaded
        self._db.execute(_SCHEMA)
        self._db.commit()
        self._task: asyncio.Task | None = None
        self.written = 0

    def record(self, tenant: str, principal: str, transport: str, request_id: str, model: str,
               outcome: str, code: int, detail: dict) -> None:
        self._buffer.append((time.time(), tenant, principal, transport, request_id, model, outcome,
                             code, orjson.dumps(detail).decode()))
        if len(self._buffer) >= self.max_buffer and self._task is None:
            self.flush()   # no background task (tests, CLI): keep memory bounded anyway

    def flush(self) -> int:
        rows, self._buffer = self._buffer, []
        if not rows:
            return 0
        with self._lock:
            self._db.executemany("INSERT INTO audit (ts, tenant, principal, transport, request_id, "
                                 "model, outcome, code, record) VALUES (?,?,?,?,?,?,?,?,?)", rows)
            self._db.commit()
        self.written += len(rows)
        return len(rows)

    def _checkpoint(self) -> None:
        """Fold the WAL into the database (fsync) on a connection of this worker thread's own."""
        db = sqlite3.connect(self.path)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time() + self.checkpoint_every_s
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.flush_every_s)
            except asyncio.TimeoutError:
                pass
            if self._buffer:
                self.flush()
            if loop.time() >= next_checkpoint:
                await loop.run_in_executor(None, self._checkpoint)
                next_checkpoint = loop.time() + self.checkpoint_every_s

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task:
            self._stopping.set()
            await self._task
            self._task = None
        self.flush()
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]

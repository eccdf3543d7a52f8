"""The audit writer: every request and admin action becomes a hash-chained row, group-committed to SQLite.

Rows are chained and checkpoints signed as chain.py defines. Sequence numbers and hashes are
assigned inside the write transaction (BEGIN IMMEDIATE, reading the head first), so several
worker processes appending to one file still build one chain. `durable()` lets the pipeline hold
a request's final frame until its row is committed: every request waiting on the same flush
shares one commit (group commit), so durability does not serialise requests.

Why the batches are written on the event loop and only checkpoints run in a thread: a writer
thread competing for the GIL with the loop (bind a row, release for sqlite3_step, re-acquire)
gave the loop multi-millisecond stalls — p99 latency 3–40 ms at 3.5k req/s. Appends to the WAL
without fsync cost ~1.5 µs a row on the loop, in slices every 50 ms; the one slow part, the WAL
checkpoint (fsync), runs on its own connection in a worker thread, in C without the GIL.

When writes fail (disk full, database locked by another process, read-only file) the audit log
fails closed, because an audit log must not lose records silently:

- rows that failed to write stay buffered, in order, and are retried with backoff; nothing that
  was buffered is lost on a transient failure, and recovery writes all of it;
- once `max_buffer` rows wait, new requests are refused with a retryable UNAVAILABLE (Admission
  consults `admit()`), counted in `refused`. Refusing rather than dropping: an operator can
  trade availability for records by raising [audit] max_buffered_rows, never the reverse by
  accident. Requests already dispatched still get their rows (at most max_inflight + max_queue
  beyond the bound, so memory stays bounded);
- while full, the records of requests refused at the door (never dispatched: no provider, no
  tokens, no cost) are counted in `dropped` instead of buffered — else a flood of refusals would
  grow the buffer without bound;
- the state is readable (`healthy`, `status()`, Prometheus via Metrics.track_audit) and logged
  once per state change, not per row or per attempt.
"""
import asyncio
import logging
import sqlite3
import threading
import time

import orjson

from codec.errors import ErrorCode

from ..types import AtpError
from . import chain, signing

log = logging.getLogger("atp.audit")

_SCHEMA = ("""CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, ts REAL NOT NULL, tenant TEXT, principal TEXT,
  transport TEXT, request_id TEXT, model TEXT, outcome TEXT, code INTEGER, record TEXT NOT NULL,
  prev_hash BLOB, hash BLOB)""",
           """CREATE TABLE IF NOT EXISTS audit_checkpoint (
  seq INTEGER PRIMARY KEY, ts REAL NOT NULL, hash BLOB NOT NULL, signature BLOB NOT NULL,
  public_key TEXT NOT NULL)""")
# No index on ts: it doubled the cost of an insert here, and only offline readers (costs,
# export --since, retention once an hour) filter by time.
_INSERT = ("INSERT INTO audit (seq, ts, tenant, principal, transport, request_id, model, outcome, "
           "code, record, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
_HEAD = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
_LAST_CHECKPOINT = "SELECT seq, ts FROM audit_checkpoint ORDER BY seq DESC LIMIT 1"
ROWS = ("SELECT seq, ts, tenant, principal, transport, request_id, model, outcome, code, record, "
        "prev_hash, hash FROM audit")
CHECKPOINTS = "SELECT seq, ts, hash, signature FROM audit_checkpoint ORDER BY seq"
SYNCHRONOUS = ("normal", "full")

# A signed checkpoint every this many rows or seconds, whichever comes first: signing costs
# ~60 µs (Ed25519 here), so one per 1,000 rows is < 0.1 µs a row, and rows deleted from the end of
# the log are detectable once a checkpoint past them was written (see chain.py).
DEFAULT_CHECKPOINT_ROWS = 1000
DEFAULT_CHECKPOINT_S = 60.0
# How long a finished request waits for its row to be committed before its final frame goes out
# anyway (the row stays buffered and is written on recovery; counted in `late`). A healthy
# commit takes well under a millisecond; a second means the disk is failing, and answering late
# is worse than answering with the row still pending.
DEFAULT_DURABLE_WAIT_S = 1.0

# Rows kept in memory while writes fail before new requests are refused: ~5 s of the peak one
# worker reached here (~4k req/s), ~20 MB of rows — long enough to ride out a lock or a brief
# disk hiccup without refusing anyone.
DEFAULT_MAX_BUFFER = 20_000
# How long one write may block the event loop waiting for another process's lock (workers share
# the file). A batch holds the lock well under a millisecond; beyond this the batch is retried
# later instead of stalling every request on this loop (sqlite3's default would be 5 s).
_LOCK_WAIT_S = 0.05
# How long opening the file may wait for a lock: --workers N open it together at start, and the
# first opener of a WAL file rebuilds its index under an exclusive lock (or a sibling commits);
# on a loaded machine that outlasted 50 ms and failed a worker's start ("database is locked").
OPEN_LOCK_WAIT_S = 10.0
_OPEN_RETRY_S = 0.005   # between attempts at WAL mode while a sibling holds the file: ~1 recovery


class AuditLog:
    """Appends records to a buffer (O(1) on the request path); a background flush writes batches."""

    def __init__(self, path: str, flush_every_s: float = 0.05, max_buffer: int = DEFAULT_MAX_BUFFER,
                 checkpoint_every_s: float = 5.0, retry_max_s: float = 5.0,
                 close_retry_s: float = 2.0, on_event=None, *, signing_key: str | None = None,
                 sign_every_rows: int = DEFAULT_CHECKPOINT_ROWS,
                 sign_every_s: float = DEFAULT_CHECKPOINT_S, synchronous: str = "normal",
                 durable_wait_s: float = DEFAULT_DURABLE_WAIT_S, retention_days: float = 0.0,
                 store_prompts: bool = False):
        self.path = path
        self.flush_every_s = flush_every_s
        self.checkpoint_every_s = checkpoint_every_s   # WAL checkpoints (fsync), not signed ones
        self.key = signing.load_or_create(signing_key or path + ".ed25519.pem")
        self.public_pem = signing.public_pem(self.key).decode()
        self.sign_every_rows, self.sign_every_s = sign_every_rows, sign_every_s
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
        self.synchronous = synchronous
        self.durable_wait_s = durable_wait_s
        self.retention_days = retention_days
        self.store_prompts = store_prompts  # read by stages.record.AuditStage
        self._waiters: list[asyncio.Future] = []   # durable() callers: released by the next commit
        self._wake: asyncio.Event | None = None
        self.late = 0                       # final frames sent before their row was committed
        self.commits = 0                    # flushes that wrote rows (rows / commits = group size)
        self.signed = 0                     # checkpoints written by this writer
        self.max_buffer = max_buffer
        self.retry_max_s = retry_max_s      # backoff cap: a recovered disk is noticed within this
        self.close_retry_s = close_retry_s  # on shutdown: how long a failing final write is retried
        self.on_event = on_event            # fn(name) at each state change (tests, /healthz later)
        self._buffer: list[tuple] = []
        self._lock = threading.Lock()       # count() may be called from other threads (tests)
        self._db = self._open(OPEN_LOCK_WAIT_S)   # at start, a failure to open is a config error: raise
        self._task: asyncio.Task | None = None
        self._retry_delay = flush_every_s
        self.written = 0
        self.write_errors = {"insert": 0, "checkpoint": 0}
        self.refused = 0                    # requests refused because the buffer was full
        self.dropped = 0                    # records of door refusals not kept while full
        self.lost = 0                       # rows still unwritten when close() gave up
        self.failing: str | None = None     # the last write error while writes fail
        self.checkpoint_failing: str | None = None
        self.refusing = False

    def _open(self, lock_wait_s: float = _LOCK_WAIT_S) -> sqlite3.Connection:
        """A connection set up for appending; `lock_wait_s` bounds the wait for a lock while
        setting up (at start OPEN_LOCK_WAIT_S; a reopen on the event loop the hot path's wait)."""
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=lock_wait_s)
        _wal_mode(db, lock_wait_s)
        # WAL + NORMAL: a committed batch survives a process crash (kill -9), not an OS crash
        # before the next WAL checkpoint; halves the cost per row against FULL (1.5 vs 3 µs
        # measured here). [audit] synchronous = "full" fsyncs every commit for power loss too.
        db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        db.execute("PRAGMA wal_autocheckpoint=0")   # checkpoints: _checkpoint(), threaded
        db.isolation_level = None                   # transactions are explicit (BEGIN IMMEDIATE)
        columns = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
        for statement in _SCHEMA:
            db.execute(statement)
        if columns and "hash" not in columns:
            _migrate(db)
        self._since_signed, self._signed_at = _rows_since_checkpoint(db)
        db.execute(f"PRAGMA busy_timeout={int(_LOCK_WAIT_S * 1000)}")   # the hot path's wait from here
        return db

    # ---- the request path -----------------------------------------------------------------------

    def admit(self) -> None:
        """Admission's gate: refuse a new request (retryable) while the buffer is full."""
        if len(self._buffer) < self.max_buffer:
            return
        self.refused += 1
        if not self.refusing:
            self.refusing = True
            log.error("audit: %d rows wait to be written (%s); refusing new requests with "
                      "UNAVAILABLE until they are", len(self._buffer), self.failing or "no write yet")
            self._event("refusing")
        raise AtpError(ErrorCode.UNAVAILABLE, "the audit log cannot be written at the moment; "
                       "retry later", max(1, int(self._retry_delay * 1000)))

    def record(self, tenant: str, principal: str, transport: str, request_id: str, model: str,
               outcome: str, code: int, detail: dict) -> None:
        if len(self._buffer) >= self.max_buffer and detail.get("provider") is None:
            self.dropped += 1   # refused at the door while full: no work done, counted (see above)
            return
        self._buffer.append((time.time(), tenant, principal, transport, request_id, model, outcome,
                             code, orjson.dumps(detail).decode()))
        if len(self._buffer) >= self.max_buffer and self._task is None:
            self._try_flush()   # no background task (tests, CLI): keep memory bounded anyway

    # ---- writing --------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def healthy(self) -> bool:
        """Writes succeed (the last attempt did) and the buffer has room."""
        return self.failing is None and not self.refusing

    def status(self) -> dict:
        return {"healthy": self.healthy, "buffered": len(self._buffer), "failing": self.failing,
                "refusing": self.refusing, "written": self.written, "refused": self.refused,
                "dropped": self.dropped, "checkpoint_failing": self.checkpoint_failing}

    def flush(self) -> int:
        """Write every buffered row now. On failure the rows stay buffered, in order, and it raises."""
        rows = self._buffer
        if not rows:
            return 0
        self._buffer = []
        try:
            with self._lock:
                if self._db is None:
                    self._db = self._open()
                self._append(self._db, rows)
        except BaseException:
            self._buffer = rows + self._buffer
            self._rollback()
            raise
        self.written += len(rows)
        self.commits += 1
        self._retry_delay = self.flush_every_s
        if self._waiters:
            self._release(late=False)
        if self.failing is not None or self.refusing:
            log.warning("audit: writing again: every buffered row written (%d so far); accepting "
                        "requests (%d refused, %d door-refusal records dropped meanwhile)",
                        self.written, self.refused, self.dropped)
            self.failing, self.refusing = None, False
            self._event("write_recovered")
        return len(rows)

    def _append(self, db: sqlite3.Connection, rows: list[tuple]) -> None:
        """One transaction: link `rows` to the head of the chain, insert them, sign if due."""
        db.execute("BEGIN IMMEDIATE")   # the write lock first: the head cannot move under us
        head = db.execute(_HEAD).fetchone()
        if head is not None and head[1] is None:
            head = _chain_unlinked(db)  # rows of a writer that does not chain (an older ATP)
        seq, prev = head if head else (0, chain.GENESIS)
        linked = []
        for row in rows:
            seq += 1
            body = (seq,) + row
            digest = chain.link(prev, body)
            linked.append(body + (prev, digest))
            prev = digest
        db.executemany(_INSERT, linked)
        self._since_signed += len(rows)
        now = time.time()
        if (self._since_signed >= self.sign_every_rows
                or now - self._signed_at >= self.sign_every_s):
            self._sign(db, seq, now, prev)
        db.execute("COMMIT")

    def _sign(self, db: sqlite3.Connection, seq: int, ts: float, head: bytes) -> None:
        signature = self.key.sign(chain.checkpoint_message(seq, ts, head))
        db.execute("INSERT OR IGNORE INTO audit_checkpoint VALUES (?,?,?,?,?)",
                   (seq, ts, head, signature, self.public_pem))
        self._since_signed, self._signed_at = 0, ts
        self.signed += 1

    def sign_now(self) -> None:
        """Write every buffered row and a checkpoint over the head (shutdown, before pruning)."""
        self.flush()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                head = db.execute(_HEAD).fetchone()
                if head and self._since_signed:
                    self._sign(db, head[0], time.time(), head[1])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    async def durable(self) -> None:
        """Return once every row recorded so far is committed, or counted `late` when the commit
        fails (the row stays buffered and is written on recovery).

        Group commit: the first waiter of a loop turn schedules one commit for the next turn, and
        every request that finishes meanwhile joins it. Each waiter awaits a future of its own, so
        a cancelled client cancels only itself (no shield, no wait_for task: ~10 µs a request less).
        The commit is synchronous on this loop and sqlite waits at most _LOCK_WAIT_S for a lock, so
        a wait is bounded by that, below durable_wait_s."""
        if not self._buffer:
            return   # flush() is synchronous: nothing buffered means everything is committed
        if self.failing is not None:
            self.late += 1   # writes fail now: waiting cannot help; the row is kept and retried
            return
        if self._wake is None:   # no background writer (tests, CLI): commit now
            self._try_flush()
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._waiters:
            loop.call_soon(self._commit_group)
        self._waiters.append(waiter)
        await waiter

    def _commit_group(self) -> None:
        """The group's commit; waiters it could not commit for are released, counted late."""
        if self._buffer:
            self._try_flush()
        self._release(late=True)   # a commit that succeeded released its waiters already

    def _release(self, late: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
                if late:
                    self.late += 1

    def admin(self, tenant: str, actor: str, action: str, target: str, details: dict | None = None) -> None:
        """Record an administrative action (key created, policy reloaded, model promoted...)."""
        self._buffer.append((time.time(), tenant, actor, "admin", "", target, action, 0,
                             orjson.dumps(details or {}).decode()))

    def prune(self, before_ts: float) -> int:
        """Delete the rows older than `before_ts`, up to the newest signed checkpoint among them
        (so the first row kept links to a signed hash); returns how many rows were deleted."""
        self.flush()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                anchor = db.execute(
                    "SELECT MAX(c.seq) FROM audit_checkpoint c JOIN audit a ON a.seq = c.seq "
                    "WHERE a.ts < ?", (before_ts,)).fetchone()[0]
                deleted = 0
                if anchor is not None:
                    deleted = db.execute("DELETE FROM audit WHERE seq <= ?", (anchor,)).rowcount
                    # the anchor's own checkpoint stays: the first kept row links to it
                    db.execute("DELETE FROM audit_checkpoint WHERE seq < ?", (anchor,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if deleted:
            log.info("audit: retention pruned %d rows (through seq %d)", deleted, anchor)
        return deleted

    def _rollback(self) -> None:
        """Undo a half-written batch so its retry does not write rows twice."""
        with self._lock:
            if self._db is None:
                return
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error:   # the connection itself is broken: open a new one next time
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
                self._db = None

    def _try_flush(self) -> bool:
        """flush(), with a failure counted and logged once per state change instead of raised."""
        try:
            self.flush()
        except Exception as exc:
            self.write_errors["insert"] += 1
            problem = f"{type(exc).__name__}: {exc}"
            if self.failing is None:
                log.error("audit: cannot write to %s (%s); %d rows kept and retried with backoff "
                          "(up to %.0f s apart), new requests refused once %d wait", self.path,
                          problem, len(self._buffer), self.retry_max_s, self.max_buffer)
                self.failing = problem
                self._event("write_failed")
            self.failing = problem   # the latest error, for status(); logged only on the change
            self._retry_delay = min(self._retry_delay * 2, self.retry_max_s)
            return False
        return True

    def _checkpoint(self) -> None:
        """Fold the WAL into the database (fsync) on a connection of this worker thread's own."""
        db = sqlite3.connect(self.path, timeout=_LOCK_WAIT_S)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    async def _try_checkpoint(self, loop) -> None:
        try:
            await loop.run_in_executor(None, self._checkpoint)
        except Exception as exc:   # the WAL grows meanwhile; rows are safe in it
            self.write_errors["checkpoint"] += 1
            if self.checkpoint_failing is None:
                log.error("audit: WAL checkpoint of %s failed (%s: %s); retrying at each interval",
                          self.path, type(exc).__name__, exc)
                self._event("checkpoint_failed")
            self.checkpoint_failing = f"{type(exc).__name__}: {exc}"
            return
        if self.checkpoint_failing is not None:
            log.warning("audit: WAL checkpoints succeed again")
            self.checkpoint_failing = None
            self._event("checkpoint_recovered")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time() + self.checkpoint_every_s
        next_prune = loop.time()
        while not self._stopping.is_set():
            delay = self._retry_delay if self.failing else self.flush_every_s
            try:   # periodic: durable() waiters commit at once through _commit_group instead
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._buffer:
                self._try_flush()
            if self.retention_days and loop.time() >= next_prune and self.failing is None:
                self._try_prune()
                next_prune = loop.time() + _PRUNE_EVERY_S
            if loop.time() >= next_checkpoint and self.failing is None:
                await self._try_checkpoint(loop)
                next_checkpoint = loop.time() + self.checkpoint_every_s

    def _try_prune(self) -> None:
        try:
            self.prune(time.time() - self.retention_days * 86400)
        except Exception as exc:   # retention is housekeeping: the log keeps growing, rows are safe
            log.error("audit: retention pruning failed: %s: %s", type(exc).__name__, exc)

    def _event(self, name: str) -> None:
        if self.on_event is not None:
            self.on_event(name)

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the writer and write what is left, retrying for up to close_retry_s; rows still
        unwritten then are counted in `lost` and logged (shutdown cannot wait forever)."""
        if self._task:
            self._stopping.set()
            self._wake.set()
            await self._task
            self._task = None
            self._wake = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_retry_s
        delay = self.flush_every_s
        while self._buffer and not self._try_flush():
            if loop.time() + delay > deadline:
                self.lost = len(self._buffer)
                log.error("audit: %d audit row(s) could not be written before shutdown (%s)",
                          self.lost, self.failing)
                break
            await asyncio.sleep(delay)   # a backoff between attempts, not a synchronisation
            delay = min(delay * 2, self.retry_max_s)
        self._release(late=True)   # whoever still waits: their rows are lost or kept, not committed
        if not self._buffer and self._db is not None:
            try:   # sign the head, so rows deleted from the end later are detectable
                self.sign_now()
            except sqlite3.Error as exc:
                log.warning("audit: final signed checkpoint failed: %s", exc)
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:   # the rows are in the WAL; the next open folds them in
                log.warning("audit: final WAL checkpoint failed: %s", exc)
            self._db.close()
            self._db = None

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]


# Retention runs at start and then hourly: pruning is a range delete on the seq key, and rows
# expire by the day, so checking more often buys nothing.
_PRUNE_EVERY_S = 3600.0


def _wal_mode(db: sqlite3.Connection, wait_s: float) -> None:
    """PRAGMA journal_mode=WAL, retried while another process holds the file: sqlite answers
    "database is locked" at once here, without its busy handler, while a sibling worker opening
    the same file rebuilds the WAL index (seen under load with --workers 2)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_OPEN_RETRY_S)


def _rows_since_checkpoint(db: sqlite3.Connection) -> tuple[int, float]:
    """(rows after the last signed checkpoint, its time) — where signing resumes after a restart."""
    last = db.execute(_LAST_CHECKPOINT).fetchone()
    head = db.execute(_HEAD).fetchone()
    if head is None:
        return 0, time.time()
    if last is None:
        return head[0], 0.0
    return head[0] - last[0], last[1]


def _chain_unlinked(db: sqlite3.Connection) -> tuple[int, bytes]:
    """Inside the caller's transaction: link the rows at the end that carry no hash (appended by a
    writer that does not chain, e.g. an older ATP on the same file), as found; the new head."""
    last = db.execute("SELECT seq, hash FROM audit WHERE hash IS NOT NULL ORDER BY seq DESC "
                      "LIMIT 1").fetchone()
    start, prev = last if last else (0, chain.GENESIS)
    unlinked = db.execute(ROWS.replace(", prev_hash, hash", "") + " WHERE seq > ? ORDER BY seq",
                          (start,)).fetchall()
    for row in unlinked:
        digest = chain.link(prev, tuple(row))
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row[0]))
        prev = digest
    log.warning("audit: %d rows written without the hash chain (an older writer on this file) "
                "were chained as found", len(unlinked))
    return (unlinked[-1][0], prev) if unlinked else (start, prev)


def _migrate(db: sqlite3.Connection) -> None:
    """A log written before the chain existed: add the columns and chain its rows as they are
    (they had no protection before; from here on they do)."""
    db.execute("BEGIN IMMEDIATE")
    db.execute("ALTER TABLE audit ADD COLUMN prev_hash BLOB")
    db.execute("ALTER TABLE audit ADD COLUMN hash BLOB")
    prev, n = chain.GENESIS, 0
    for row in db.execute(ROWS.replace(", prev_hash, hash", "") + " ORDER BY seq").fetchall():
        digest = chain.link(prev, tuple(row))
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row[0]))
        prev, n = digest, n + 1
    db.execute("COMMIT")
    log.warning("audit: %d rows written before the hash chain existed were chained as found", n)

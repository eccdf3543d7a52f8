"""The audit log under write failures: no row lost, the writer keeps retrying, a full buffer refuses."""
import asyncio
import logging
import sqlite3

import pytest

from atp_server.app import App
from atp_server.audit import AuditLog
from atp_server.metrics import Metrics
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config


def row(log: AuditLog, request_id: str, provider: str | None = "sim") -> None:
    log.record("default", "dev", "test", request_id, "m", "ok" if provider else "OVERLOADED", 0,
               {"provider": provider})


def written_ids(path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT request_id FROM audit ORDER BY seq")]
    finally:
        db.close()


def test_a_failed_flush_keeps_its_rows_for_the_next_one(tmp_path):
    path = str(tmp_path / "audit.sqlite")
    log = AuditLog(path)
    for i in range(5):
        row(log, f"r{i}")
    log._db.execute("PRAGMA query_only = ON")      # a real SQLite write failure: read-only
    with pytest.raises(sqlite3.Error):
        log.flush()
    log._db.execute("PRAGMA query_only = OFF")
    assert log.flush() == 5
    assert written_ids(path) == [f"r{i}" for i in range(5)]
    asyncio.run(log.close())


class Events:
    """AuditLog's on_event hook as awaitable events: tests wait for a state change, never sleep."""

    def __init__(self):
        self.seen: list[str] = []
        self._events: dict[str, asyncio.Event] = {}

    def __call__(self, name: str) -> None:
        self.seen.append(name)
        self._event(name).set()

    def _event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    async def wait(self, name: str, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._event(name).wait(), timeout)


def sample(metrics: Metrics, name: str, labels: str = "") -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(name + labels + " ") or line.startswith(name + "{" + labels + "} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not exported")


def test_background_writer_survives_a_locked_database_and_writes_everything(tmp_path, caplog):
    path = str(tmp_path / "audit.sqlite")

    async def main():
        events = Events()
        log = AuditLog(path, flush_every_s=0.005, retry_max_s=0.02, on_event=events)
        metrics = Metrics()
        metrics.track_audit(log)
        log.start()
        blocker = sqlite3.connect(path, timeout=0)   # another process holding the write lock
        blocker.execute("BEGIN EXCLUSIVE")
        for i in range(10):
            row(log, f"r{i}")
        await events.wait("write_failed")
        for i in range(10, 20):                     # more rows arrive while it keeps failing
            row(log, f"r{i}")
        state = (log.healthy, log.buffered, sample(metrics, "atp_audit_healthy"),
                 sample(metrics, "atp_audit_buffered_rows"),
                 sample(metrics, "atp_audit_write_errors_total", 'op="insert"'))
        blocker.rollback()                          # the lock goes away: the next retry succeeds
        await events.wait("write_recovered")
        alive = not log._task.done()
        after = (log.healthy, log.buffered, sample(metrics, "atp_audit_healthy"))
        await log.close()
        blocker.close()
        return events.seen, state, alive, after

    with caplog.at_level(logging.INFO, logger="atp.audit"):
        seen, state, alive, after = asyncio.run(main())
    healthy, buffered, healthy_metric, buffered_metric, errors = state
    assert not healthy and healthy_metric == 0 and errors >= 1
    assert buffered == buffered_metric == 20        # nothing lost, nothing written twice
    assert alive and after == (True, 0, 1)
    assert written_ids(path) == [f"r{i}" for i in range(20)]
    assert seen == ["write_failed", "write_recovered"]
    # one log line per state change, however many attempts failed in between
    messages = [r.getMessage() for r in caplog.records if r.name == "atp.audit"]
    assert len(messages) == 2, messages
    assert "cannot write" in messages[0] and "locked" in messages[0]
    assert "writing again" in messages[1]


def test_checkpoint_failures_do_not_stop_the_writer(tmp_path, monkeypatch):
    path = str(tmp_path / "audit.sqlite")

    async def main():
        events = Events()
        log = AuditLog(path, flush_every_s=0.005, checkpoint_every_s=0, on_event=events)
        metrics = Metrics()
        metrics.track_audit(log)
        calls = []

        def failing_checkpoint():
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.OperationalError("disk I/O error")
        monkeypatch.setattr(log, "_checkpoint", failing_checkpoint)
        log.start()
        await events.wait("checkpoint_failed")
        await events.wait("checkpoint_recovered")
        row(log, "after")
        alive = not log._task.done()
        errors = sample(metrics, "atp_audit_write_errors_total", 'op="checkpoint"')
        await log.close()
        return alive, errors

    alive, errors = asyncio.run(main())
    assert alive and errors == 1
    assert written_ids(path) == ["after"]


def test_full_buffer_keeps_dispatched_rows_and_counts_refusals_it_does_not_keep(tmp_path):
    log = AuditLog(str(tmp_path / "audit.sqlite"), max_buffer=3)
    log._db.execute("PRAGMA query_only = ON")
    for i in range(3):
        row(log, f"r{i}")                    # the third reaches the bound: a write is tried, fails
    assert log.buffered == 3 and not log.healthy
    with pytest.raises(AtpError) as info:
        log.admit()
    assert info.value.code == ErrorCode.UNAVAILABLE and info.value.retryable
    assert info.value.retry_after_ms > 0 and log.refused == 1
    row(log, "refused", provider=None)       # the refusal's own record: no work done, counted
    row(log, "in-flight")                    # a request dispatched before the bound: kept
    assert log.buffered == 4 and log.dropped == 1
    log._db.execute("PRAGMA query_only = OFF")
    assert log.flush() == 4 and log.healthy
    log.admit()                              # accepting again
    asyncio.run(log.close())


def test_app_refuses_requests_while_the_audit_buffer_is_full(tmp_path):
    async def main():
        cfg = make_config(tmp_path)
        cfg = cfg.__class__(cfg.server, cfg.auth, cfg.providers, cfg.models,
                            cfg.audit.__class__(max_buffered_rows=2))
        app = App(cfg)
        app.audit._db.execute("PRAGMA query_only = ON")      # the disk turned read-only
        for i in range(2):
            await app.pipeline.complete(ChatRequest([("user", "x")], request_id=f"ok{i}"), PRINCIPAL, "t")
        with pytest.raises(AtpError) as info:
            await app.pipeline.complete(ChatRequest([("user", "x")], request_id="no"), PRINCIPAL, "t")
        text = app.metrics.render().decode()
        app.audit._db.execute("PRAGMA query_only = OFF")
        app.audit.flush()
        await app.pipeline.complete(ChatRequest([("user", "x")], request_id="ok2"), PRINCIPAL, "t")
        await app.stop(0)
        return info.value, text
    err, text = asyncio.run(main())
    assert err.code == ErrorCode.UNAVAILABLE and err.retryable and "audit" in err.message
    assert "atp_audit_refused_requests_total 1.0" in text
    assert "atp_audit_dropped_records_total 1.0" in text
    assert "atp_audit_buffered_rows 2.0" in text
    assert written_ids(tmp_path / "audit.sqlite") == ["ok0", "ok1", "ok2"]


def test_close_reports_rows_it_could_not_write(tmp_path, caplog):
    log = AuditLog(str(tmp_path / "audit.sqlite"), close_retry_s=0.01)
    row(log, "r0")
    log._db.execute("PRAGMA query_only = ON")
    with caplog.at_level(logging.ERROR, logger="atp.audit"):
        asyncio.run(log.close())
    assert log.lost == 1
    assert any("1 audit row(s) could not be written" in r.getMessage() for r in caplog.records)


def test_opening_waits_out_another_writers_lock(tmp_path):
    """Workers open one audit file at start while a sibling may be committing: opening waits for
    the lock (OPEN_LOCK_WAIT_S) instead of failing the worker's start as 'database is locked';
    appends afterwards still give up after the short hot-path wait."""
    import threading
    path = str(tmp_path / "audit.sqlite")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")     # a rollback-journal file: its lock blocks every reader
    holder.execute("BEGIN EXCLUSIVE")        # held 0.3 s: longer than the hot path's 50 ms wait
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        log = AuditLog(path)
    finally:
        release.join()
    assert log._db.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    holder.close()

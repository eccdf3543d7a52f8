"""The audit log is tamper-evident: each kind of tampering is found and located, checkpoints are
signed, several writers build one chain, durability is group-committed, retention keeps it verifiable."""
import asyncio
import sqlite3
import time
import types

import pytest

from atp_server.audit import AuditLog, chain, signing, verify_file
from atp_server.audit import log as audit_log
from atp_server.audit.log import ROWS


def row(log: AuditLog, request_id: str, tenant: str = "acme", cost: int = 10) -> None:
    log.record(tenant, "key1", "http", request_id, "m", "ok", 0,
               {"provider": "sim", "in": 5, "out": 7, "cost_micros": cost})


def filled(tmp_path, n: int = 10, every: int = 1000) -> tuple[str, AuditLog]:
    path = str(tmp_path / "audit.sqlite")
    log = AuditLog(path, sign_every_rows=every)
    for i in range(n):
        row(log, f"r{i}")
    log.flush()
    return path, log


def sql(path: str, *statements) -> None:
    db = sqlite3.connect(path)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def problems(path) -> list[tuple[int, str]]:
    return [(p.seq, p.check) for p in verify_file(path).problems]


def closed(log: AuditLog) -> None:
    asyncio.run(log.close())


# ---- an untouched log verifies -----------------------------------------------------------------

def test_an_untouched_log_verifies_with_its_checkpoints(tmp_path):
    path = str(tmp_path / "audit.sqlite")
    log = AuditLog(path, sign_every_rows=10)
    for i in range(25):                           # one commit per row: a checkpoint every 10th
        row(log, f"r{i}")
        log.flush()
    closed(log)                                   # close signs the head (seq 25)
    report = verify_file(path)
    assert report.ok and report.rows == 25 and (report.first_seq, report.last_seq) == (1, 25)
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT seq FROM audit_checkpoint")] == [10, 20, 25]


def test_the_hash_covers_the_documented_canonical_bytes(tmp_path):
    path, log = filled(tmp_path, 2)
    closed(log)
    db = sqlite3.connect(path)
    rows = db.execute(ROWS + " ORDER BY seq").fetchall()
    prev = chain.GENESIS
    for r in rows:
        import hashlib
        import orjson
        expected = hashlib.sha256(prev + orjson.dumps(list(r[:10]))).digest()
        assert r[10] == prev and r[11] == expected
        prev = expected


# ---- each kind of tampering is found where it happened -------------------------------------------

def test_an_edited_row_is_named(tmp_path):
    path, log = filled(tmp_path)
    closed(log)
    sql(path, "UPDATE audit SET record = replace(record, '\"cost_micros\":10', '\"cost_micros\":1') "
              "WHERE seq = 4")
    assert problems(path) == [(4, "edited")]


def test_an_edited_row_with_its_hash_recomputed_breaks_the_next_link(tmp_path):
    path, log = filled(tmp_path)
    closed(log)
    db = sqlite3.connect(path)
    r = db.execute(ROWS + " WHERE seq = 4").fetchone()
    forged = r[:7] + ("forged",) + r[8:10]
    db.execute("UPDATE audit SET outcome = 'forged', hash = ? WHERE seq = 4",
               (chain.link(r[10], forged),))
    db.commit()
    db.close()
    assert problems(path) == [(5, "relinked")]


def test_a_deleted_row_is_named(tmp_path):
    path, log = filled(tmp_path)
    closed(log)
    sql(path, "DELETE FROM audit WHERE seq = 6")
    found = problems(path)
    assert (6, "missing") in found and (7, "relinked") in found


def test_the_first_row_deleted_is_named(tmp_path):
    path, log = filled(tmp_path)
    closed(log)
    sql(path, "DELETE FROM audit WHERE seq = 1")
    assert (1, "missing") in problems(path)


def test_rows_deleted_from_the_end_are_caught_by_the_checkpoint(tmp_path):
    path, log = filled(tmp_path, 10)
    closed(log)                                   # checkpoint at 10
    sql(path, "DELETE FROM audit WHERE seq > 7")
    assert problems(path) == [(10, "truncated")]


def test_reordered_rows_are_named(tmp_path):
    path, log = filled(tmp_path)
    closed(log)
    sql(path, "UPDATE audit SET seq = -1 WHERE seq = 3", "UPDATE audit SET seq = 3 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = -1")
    found = problems(path)
    assert {(3, "edited"), (4, "edited")} <= set(found) and all(s in (3, 4, 5) for s, _ in found)


def test_an_inserted_row_is_named(tmp_path):
    path, log = filled(tmp_path)
    closed(log)
    db = sqlite3.connect(path)
    rows = db.execute(ROWS + " WHERE seq > 5 ORDER BY seq DESC").fetchall()
    for r in rows:                                # make room after 5, then slip a row in at 6
        db.execute("UPDATE audit SET seq = ? WHERE seq = ?", (r[0] + 1, r[0]))
    five = db.execute(ROWS + " WHERE seq = 5").fetchone()
    body = (6,) + five[1:5] + ("slipped-in",) + five[6:10]
    db.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
               body + (five[11], chain.link(five[11], body)))
    db.commit()
    db.close()
    found = problems(path)
    assert (7, "relinked") in found or (7, "edited") in found
    assert min(s for s, _ in found) >= 6


def test_a_rewritten_chain_is_caught_by_the_signed_head(tmp_path):
    path, log = filled(tmp_path, 10)
    closed(log)
    db = sqlite3.connect(path)      # an attacker with the file but not the key recomputes everything
    prev = chain.GENESIS
    for r in db.execute(ROWS + " ORDER BY seq").fetchall():
        body = r[:10] if r[0] != 3 else r[:7] + ("forged",) + r[8:10]
        digest = chain.link(prev, body)
        db.execute("UPDATE audit SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (body[7], prev, digest, r[0]))
        prev = digest
    db.commit()
    db.close()
    assert problems(path) == [(10, "checkpoint-head")]


def test_a_checkpoint_re_signed_with_another_key_fails_against_the_operators_key(tmp_path):
    path, log = filled(tmp_path, 5)
    closed(log)
    real_public = signing.public_pem(log.key)
    other = signing.load_or_create(tmp_path / "attacker.pem")
    db = sqlite3.connect(path)
    seq, ts, head, _ = db.execute("SELECT seq, ts, hash, signature FROM audit_checkpoint").fetchone()
    db.execute("UPDATE audit_checkpoint SET signature = ?, public_key = ?",
               (other.sign(chain.checkpoint_message(seq, ts, head)),
                signing.public_pem(other).decode()))
    db.commit()
    db.close()
    assert verify_file(path).ok                   # self-consistent without the operator's key...
    report = verify_file(path, real_public)       # ...but not against it
    assert [(p.seq, p.check) for p in report.problems] == [(5, "checkpoint-signature")]


# ---- writers, durability, retention ------------------------------------------------------------

def test_two_writers_on_one_file_build_one_chain(tmp_path):
    path = str(tmp_path / "audit.sqlite")
    a = AuditLog(path, signing_key=str(tmp_path / "k.pem"))
    b = AuditLog(path, signing_key=str(tmp_path / "k.pem"))
    for i in range(20):
        row(a if i % 3 else b, f"r{i}")
        (a if i % 2 else b).flush()
    a.flush()
    b.flush()
    closed(a)
    closed(b)
    report = verify_file(path)
    assert report.ok and report.rows == 20


def test_waiters_on_one_flush_share_one_commit(tmp_path):
    async def main():
        log = AuditLog(str(tmp_path / "audit.sqlite"))
        log.start()
        for i in range(50):
            row(log, f"r{i}")
        await asyncio.gather(*(log.durable() for _ in range(50)))
        committed = log.count()
        commits = log.commits
        await log.close()
        return committed, commits
    committed, commits = asyncio.run(main())
    assert committed == 50 and commits == 1


def test_durable_returns_at_once_when_nothing_is_buffered(tmp_path):
    async def main():
        log = AuditLog(str(tmp_path / "audit.sqlite"))
        log.start()
        await log.durable()
        n = log.commits
        await log.close()
        return n
    assert asyncio.run(main()) == 0


def test_a_durable_wait_is_bounded_when_writes_fail(tmp_path):
    async def main():
        log = AuditLog(str(tmp_path / "audit.sqlite"), durable_wait_s=0.05)
        log.start()
        log._db.execute("PRAGMA query_only = ON")     # a real write failure
        row(log, "r0")
        await log.durable()
        late = log.late
        log._db.execute("PRAGMA query_only = OFF")
        await log.close()
        return late, log.count() if log._db else None
    late, _ = asyncio.run(main())
    assert late == 1


def test_retention_prunes_to_a_checkpoint_and_the_rest_verifies(tmp_path, monkeypatch):
    path = str(tmp_path / "audit.sqlite")
    log = AuditLog(path, sign_every_rows=10)
    now = time.time()
    for i in range(30):                           # 25 rows 100 days old, then 5 of today
        clock = now - 100 * 86400 if i < 25 else now
        monkeypatch.setattr(audit_log, "time", types.SimpleNamespace(time=lambda c=clock: c))
        row(log, f"r{i}")
        log.flush()
    monkeypatch.setattr(audit_log, "time", time)
    deleted = log.prune(before_ts=now - 86400)    # the newest checkpoint among old rows: 20
    closed(log)
    report = verify_file(path)
    assert deleted == 20 and report.ok and report.first_seq == 21 and report.anchored_at == 20


def test_a_log_from_before_the_chain_is_migrated_and_verifies(tmp_path):
    path = str(tmp_path / "audit.sqlite")
    sql(path, """CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, tenant TEXT,
              principal TEXT, transport TEXT, request_id TEXT, model TEXT, outcome TEXT,
              code INTEGER, record TEXT NOT NULL)""",
        "INSERT INTO audit (ts, tenant, principal, transport, request_id, model, outcome, code, "
        "record) VALUES (1.5, 't', 'k', 'http', 'old', 'm', 'ok', 0, '{}')")
    log = AuditLog(path)
    row(log, "new")
    log.flush()
    closed(log)
    report = verify_file(path)
    assert report.ok and report.rows == 2


def test_admin_actions_are_chained_rows(tmp_path):
    path = str(tmp_path / "audit.sqlite")
    log = AuditLog(path)
    log.admin("acme", "alice", "key.revoke", "key-7", {"reason": "leaked"})
    log.flush()
    closed(log)
    db = sqlite3.connect(path)
    assert db.execute("SELECT transport, outcome, model FROM audit").fetchone() == (
        "admin", "key.revoke", "key-7")
    assert verify_file(path).ok


@pytest.mark.parametrize("value", ["sometimes", ""])
def test_an_unknown_synchronous_mode_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="synchronous"):
        AuditLog(str(tmp_path / "a.sqlite"), synchronous=value)


def test_rows_an_older_unchained_writer_appended_are_chained_not_a_write_failure(tmp_path):
    # An older ATP sharing the file (a rolling upgrade, a benchmark baseline) appends rows with no
    # hash: the next chained write links them in as found instead of failing on a NULL head.
    path, log = filled(tmp_path, 3)
    sql(path, "INSERT INTO audit (ts, tenant, principal, transport, request_id, model, outcome, "
              "code, record) VALUES (2.5, 't', 'k', 'http', 'old-writer', 'm', 'ok', 0, '{}')")
    row(log, "r-after")
    assert log.flush() == 1 and log.failing is None
    closed(log)
    report = verify_file(path)
    assert report.ok and report.rows == 5


def test_durable_does_not_wait_while_writes_are_failing(tmp_path):
    async def main():
        log = AuditLog(str(tmp_path / "audit.sqlite"), durable_wait_s=30.0)
        log.start()
        log.failing = "disk full"          # the writer already knows it cannot write
        row(log, "r0")
        await asyncio.wait_for(log.durable(), 1.0)   # returns at once, counted late
        late = log.late
        log.failing = None
        await log.close()
        return late
    assert asyncio.run(main()) == 1


def test_processes_creating_the_signing_key_together_all_get_the_one_installed(tmp_path):
    # Each child waits on the same pipe, then calls load_or_create at once: the key file that ends
    # up in place is whole, every process holds that key, and no temp file is left behind.
    import os
    path = tmp_path / "audit_signing_key.pem"
    read_fd, write_fd = os.pipe()
    kids = []
    for _ in range(6):
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            os.read(read_fd, 1)            # the start signal: an event, not a sleep
            try:
                pem = signing.public_pem(signing.load_or_create(path))
                os.write(out_w, pem)
                os._exit(0)
            except BaseException:
                os._exit(1)
        os.close(out_w)
        kids.append((pid, out_r))
    os.write(write_fd, b"x" * len(kids))
    os.close(write_fd)
    publics = set()
    for pid, out_r in kids:
        with os.fdopen(out_r, "rb") as f:
            publics.add(f.read())
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert publics == {signing.public_pem(signing.load_or_create(path))}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert (path.stat().st_mode & 0o777) == 0o600

"""Reading an audit database back: verify its chain and checkpoints, export it as JSONL."""
import datetime as dt
import sqlite3
from pathlib import Path

import orjson

from . import chain, signing
from .log import CHECKPOINTS, ROWS


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """The database opened read-only (verification must not create or change what it checks)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no audit database at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def verify_file(path: str | Path, public_key_pem: bytes | None = None) -> chain.Report:
    """Verify the database at `path`. Checkpoint signatures are checked against `public_key_pem`
    (the operator's copy of the key — the strong check) or, without it, against the public key
    each checkpoint names; then every checkpoint must name the same key."""
    db = open_readonly(path)
    try:
        checkpoints = db.execute(CHECKPOINTS).fetchall()
        keys = {row[0] for row in db.execute("SELECT DISTINCT public_key FROM audit_checkpoint")}
        report_keys = []
        if public_key_pem is not None:
            check = signing.verifier(signing.load_public(public_key_pem))
        elif keys:
            if len(keys) > 1:
                report_keys.append(chain.Problem(0, "checkpoint-signature", f"checkpoints are "
                                                 f"signed with {len(keys)} different keys"))
            verifiers = [signing.verifier(signing.load_public(k.encode())) for k in keys]
            def check(message, signature):
                return any(v(message, signature) for v in verifiers)
        else:
            def check(message, signature):
                return False
        report = chain.verify(db.execute(ROWS + " ORDER BY seq"), checkpoints, check)
        report.problems[:0] = report_keys
        return report
    finally:
        db.close()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


def export(path: str | Path, out, since_ts: float | None = None) -> int:
    """Write each row (from `since_ts` on) as one JSON line to the binary file `out`; returns
    the number of rows. Hashes are hex, `record` is parsed, `time` is ISO 8601 UTC."""
    db = open_readonly(path)
    n = 0
    try:
        query, args = ROWS, ()
        if since_ts is not None:
            query, args = ROWS + " WHERE ts >= ?", (since_ts,)
        for row in db.execute(query + " ORDER BY seq", args):
            item = dict(zip(chain.ROW_FIELDS, row[:10]))
            item["time"] = _iso(item["ts"])
            item["record"] = orjson.loads(item["record"])
            item["prev_hash"] = bytes(row[10]).hex() if row[10] is not None else None
            item["hash"] = bytes(row[11]).hex() if row[11] is not None else None
            out.write(orjson.dumps(item) + b"\n")
            n += 1
    finally:
        db.close()
    return n

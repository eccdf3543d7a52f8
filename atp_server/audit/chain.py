"""The audit log's hash chain and signed checkpoints as pure functions: encode, link, verify.

A row's hash is SHA-256 over the previous row's hash followed by the row's canonical bytes:

    hash(seq) = SHA-256( hash(seq - 1) ‖ canonical(row seq) ),   hash(0) = 32 zero bytes (GENESIS)

    canonical(row) = the UTF-8 JSON array (orjson, no whitespace)
        [seq, ts, tenant, principal, transport, request_id, model, outcome, code, record]

with `ts` the float seconds stored in SQLite (REAL keeps the double exactly) and `record` the
JSON text stored in the row, byte for byte. The sequence number is inside the hash, so a row
moved, renumbered, inserted or removed breaks the chain where it happened.

A checkpoint signs the head of the chain: Ed25519 over the UTF-8 JSON array
`["atp-audit-checkpoint/1", seq, ts, hash_hex]`. Rows removed from the end of the log cannot be
detected by the chain alone (what is left is still a valid chain); a checkpoint naming a row that
is no longer there can: keep checkpoints frequent (see log.py) and, for tail truncation after the
last checkpoint, export them off the machine.

Retention prunes whole prefixes ending exactly at a checkpoint; the first kept row then links to
that checkpoint's signed hash, so what is left verifies on its own.
"""
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Iterable

import orjson

GENESIS = bytes(32)
CHECKPOINT_DOMAIN = "atp-audit-checkpoint/1"
ROW_FIELDS = ("seq", "ts", "tenant", "principal", "transport", "request_id", "model", "outcome",
              "code", "record")


def canonical(row: tuple) -> bytes:
    """The bytes a row's hash covers: `row` is (seq, ts, tenant, ..., record) in ROW_FIELDS order."""
    return orjson.dumps(list(row))


def link(prev_hash: bytes, row: tuple) -> bytes:
    return sha256(prev_hash + canonical(row)).digest()


def checkpoint_message(seq: int, ts: float, head: bytes) -> bytes:
    return orjson.dumps([CHECKPOINT_DOMAIN, seq, ts, head.hex()])


@dataclass(frozen=True, slots=True)
class Problem:
    """One place the log fails verification: the row (or checkpoint) and which check failed."""

    seq: int
    check: str       # missing | edited | relinked | checkpoint-signature | checkpoint-head | truncated
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.check}: {self.detail}"


@dataclass(slots=True)
class Report:
    rows: int = 0
    first_seq: int = 0
    last_seq: int = 0
    checkpoints: int = 0
    anchored_at: int = 0          # the checkpoint the first row links to after pruning (0: genesis)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(rows: Iterable[tuple], checkpoints: Iterable[tuple], verify_signature) -> Report:
    """Check a log: `rows` are (seq, ts, ..., record, prev_hash, hash) ordered by seq; `checkpoints`
    are (seq, ts, head_hash, signature) ordered by seq; `verify_signature(message, signature)` is
    True when a checkpoint was signed by the log's key.

    Every problem is reported with its place, not just the first: an edited row is named as
    edited and the chain continues from its stored hash, so one edit yields one problem.
    """
    report = Report()
    cps = list(checkpoints)
    report.checkpoints = len(cps)
    signed = {}
    for seq, ts, head, signature in cps:
        if verify_signature(checkpoint_message(seq, ts, head), signature):
            signed[seq] = head
        else:
            report.problems.append(Problem(seq, "checkpoint-signature",
                                           "the checkpoint's signature does not verify"))
    hashes = {}
    prev, expected = None, None
    for r in rows:
        seq, body, prev_hash, stored = r[0], r[:10], r[10], r[11]
        if expected is None:   # the first row links to genesis, or to the checkpoint it was pruned at
            report.first_seq = seq
            if seq == 1:
                prev = GENESIS
            elif seq - 1 in signed:
                prev = signed[seq - 1]
                report.anchored_at = seq - 1
            else:
                report.problems.append(Problem(1, "missing", f"rows 1..{seq - 1} are gone and no "
                                               f"signed checkpoint at {seq - 1} anchors the rest"))
                prev = prev_hash
            expected = seq
        if seq != expected:
            report.problems.append(Problem(expected, "missing", f"rows {expected}..{seq - 1} "
                                           "were deleted (the sequence jumps)"))
        if prev_hash != prev:
            report.problems.append(Problem(seq, "relinked", "prev_hash is not the hash of the row "
                                           "before it (a row was inserted, removed or reordered)"))
        if link(prev_hash, body) != stored:
            report.problems.append(Problem(seq, "edited", "the row's content does not match its hash"))
        hashes[seq] = stored
        prev, expected = stored, seq + 1
        report.rows += 1
    report.last_seq = expected - 1 if expected is not None else 0
    for seq, head in signed.items():
        if seq in hashes:
            if hashes[seq] != head:
                report.problems.append(Problem(seq, "checkpoint-head", "the signed head differs "
                                               "from the row's hash: rows up to here were rewritten"))
        elif seq > report.last_seq:
            report.problems.append(Problem(seq, "truncated", f"a checkpoint signs row {seq} but the "
                                           f"log ends at {report.last_seq}: rows were deleted "
                                           "from the end"))
    report.problems.sort(key=lambda p: p.seq)
    return report

"""`atp audit verify|export|pubkey|prune` and `atp costs`: read the audit log offline, no server needed."""
import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

from . import config as atp_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_RAW = argparse.RawDescriptionHelpFormatter


class _Usage(Exception):
    pass


def parse_since(text: str | None) -> float | None:
    """`2026-12-01`, `2026-12-01T09:30:00+00:00` (no zone = UTC), or a span back from now: `7d`, `12h`."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)([dh])", text.strip())
    if m:
        return time.time() - int(m.group(1)) * (86400 if m.group(2) == "d" else 3600)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _Usage(f"--since {text!r}: give a date (2026-12-01), an ISO time or a span (7d, 12h)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _config(args):
    try:
        return atp_config.load(args.config)
    except atp_config.ConfigError as exc:
        raise _Usage(f"config: {exc}") from None


def _db_path(args) -> Path:
    if args.db:
        return Path(args.db).expanduser()
    return atp_config.audit_file(_config(args))


def _public_key(args) -> bytes | None:
    """The key checkpoints must verify against: --public-key, else the configured signing key."""
    if args.public_key:
        try:
            return Path(args.public_key).expanduser().read_bytes()
        except OSError as exc:
            raise _Usage(f"--public-key: {exc}") from None
    if args.db:
        return None
    key = atp_config.audit_signing_key(_config(args))
    return key.read_bytes() if key.exists() else None


def cmd_verify(args) -> int:
    from .audit import verify_file
    path = _db_path(args)
    try:
        report = verify_file(path, _public_key(args))
    except (OSError, ValueError) as exc:
        raise _Usage(f"{path}: {exc}") from None
    if args.json:
        print(json.dumps({"ok": report.ok, "db": str(path), "rows": report.rows,
                          "first_seq": report.first_seq, "last_seq": report.last_seq,
                          "checkpoints": report.checkpoints, "anchored_at": report.anchored_at,
                          "problems": [{"seq": p.seq, "check": p.check, "detail": p.detail}
                                       for p in report.problems]}))
    else:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.rows else "no rows"
        print(f"{path}: {report.rows} rows ({span}), {report.checkpoints} signed checkpoints")
        for problem in report.problems:
            print(f"  FAIL {problem}")
        print("OK: the chain and every checkpoint verify" if report.ok
              else f"FAILED: {len(report.problems)} problem(s)")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_export(args) -> int:
    from .audit import export
    path = _db_path(args)
    since = parse_since(args.since)
    try:
        if args.output in (None, "-"):
            n = export(path, sys.stdout.buffer, since)
        else:
            with open(args.output, "wb") as out:
                n = export(path, out, since)
    except OSError as exc:
        raise _Usage(f"{exc}") from None
    print(f"exported {n} rows from {path}", file=sys.stderr)
    return EXIT_OK


def cmd_pubkey(args) -> int:
    from .audit import signing
    cfg = _config(args)
    path = atp_config.audit_signing_key(cfg)
    if not path.exists():
        raise _Usage(f"no signing key at {path} yet (the server creates it on first start)")
    sys.stdout.write(signing.public_pem(signing.load_or_create(path)).decode())
    return EXIT_OK


def cmd_prune(args) -> int:
    from .audit import AuditLog
    cfg = _config(args)
    path = _db_path(args)
    log = AuditLog(str(path), signing_key=str(atp_config.audit_signing_key(cfg)))
    log.sign_now()   # the head gets a checkpoint first, so every row old enough can go
    deleted = log.prune(time.time() - args.older_than_days * 86400)
    log._db.close()
    print(f"pruned {deleted} rows older than {args.older_than_days:g} days from {path}")
    return EXIT_OK


def cmd_costs(args) -> int:
    from .audit import open_readonly
    from .costs import report, render
    cfg = _config(args)
    path = Path(args.db).expanduser() if args.db else atp_config.audit_file(cfg)
    baseline = args.baseline or cfg.costs.baseline_model or None
    prices = None
    if baseline:
        spec = {m.id: m for m in cfg.models}.get(baseline)
        if spec is None:
            raise _Usage(f"--baseline {baseline!r}: not a configured model id "
                         f"({', '.join(m.id for m in cfg.models)})")
        prices = (spec.price_in_per_mtok, spec.price_out_per_mtok)
    try:
        db = open_readonly(path)
    except (OSError, FileNotFoundError) as exc:
        raise _Usage(str(exc)) from None
    clip = (cfg.privacy.tokens_clip, round(cfg.privacy.cost_clip_usd * 1e6))
    try:
        rep = report(db, args.by, parse_since(args.since), prices, baseline, clip)
    finally:
        db.close()
    if args.private is not None:
        return _private(cfg, rep, args)
    print(json.dumps(rep.as_dict()) if args.json else render(rep))
    return EXIT_OK


def _private(cfg, rep, args) -> int:
    from .costs import private
    from .privacy import BudgetSpent, Ledger
    if args.private <= 0:
        raise _Usage("--private: epsilon must be > 0")
    if args.by != "tenant":
        raise _Usage("--private needs --by tenant: each tenant's budget covers its own requests")
    try:
        lines = private(rep, Ledger(atp_config.privacy_ledger(cfg), cfg.privacy), args.private)
    except BudgetSpent as exc:
        print(f"atp: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    if args.json:
        print(json.dumps({"by": "tenant", "epsilon": args.private, "lines": lines}))
        return EXIT_OK
    print(f"{'tenant':<24} {'requests~':>10} {'tokens~':>12} {'cost $~':>12}   epsilon {args.private:g} "
          "each (Laplace); left today per metric")
    for x in lines:
        left = " ".join(f"{m}={v:g}" for m, v in x["epsilon_left"].items())
        print(f"{x['group'][:24]:<24} {x['requests']:>10.0f} {x['tokens']:>12.0f} "
              f"{x['cost_usd']:>12.6f}   {left}")
    return EXIT_OK


def _guarded(fn):
    def run(args) -> int:
        try:
            return fn(args)
        except _Usage as exc:
            print(f"atp: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return run


def add_commands(sub) -> None:
    """Register `audit` and `costs` on the `atp` sub-command parser."""
    def where(q, db_help="the audit database (default: audit.path of --config, else "
                         "~/.atp/audit.sqlite)"):
        q.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
        q.add_argument("--db", metavar="PATH", help=db_help)

    a = sub.add_parser("audit", formatter_class=_RAW, help="verify or export the audit log",
                       description="The audit log is hash-chained with signed checkpoints "
                                   "(docs: README, Audit log).")
    asub = a.add_subparsers(dest="audit_command", metavar="<subcommand>", required=True)
    v = asub.add_parser("verify", formatter_class=_RAW, help="check the chain and checkpoints",
                        description="Find any edited, deleted, reordered or inserted row and say "
                                    "where; check every checkpoint's\nEd25519 signature. Exit 0 "
                                    "when everything verifies, 1 when not, 2 on usage errors.",
                        epilog="examples:\n  atp audit verify\n  atp audit verify --db "
                               "/var/lib/atp/audit.sqlite --public-key audit.pub --json")
    where(v)
    v.add_argument("--public-key", metavar="PEM", help="verify checkpoints against this key "
                   "(default: the configured signing key; with --db alone, the key each "
                   "checkpoint names)")
    v.add_argument("--json", action="store_true", help="print one JSON document")
    v.set_defaults(func=_guarded(cmd_verify))
    e = asub.add_parser("export", formatter_class=_RAW, help="write the rows as JSON lines (SIEM)",
                        epilog="examples:\n  atp audit export -o audit.jsonl\n"
                               "  atp audit export --since 7d | your-siem-shipper")
    where(e)
    e.add_argument("--since", help="only rows from this date/time or span (2026-12-01, 7d, 12h)")
    e.add_argument("-o", "--output", metavar="FILE", help="output file (default stdout)")
    e.set_defaults(func=_guarded(cmd_export))
    k = asub.add_parser("pubkey", formatter_class=_RAW, help="print the checkpoint public key (PEM)",
                        epilog="keep a copy off the machine: `atp audit verify --public-key` "
                               "then detects a re-signed log")
    k.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
    k.set_defaults(func=_guarded(cmd_pubkey))
    p = asub.add_parser("prune", formatter_class=_RAW, help="apply retention now",
                        description="Delete rows older than N days up to a signed checkpoint; what "
                                    "is left still verifies.\nStop the server first or let "
                                    "[audit] retention_days do it while it runs.")
    where(p)
    p.add_argument("--older-than-days", type=float, required=True, metavar="N")
    p.set_defaults(func=_guarded(cmd_prune))

    c = sub.add_parser("costs", formatter_class=_RAW, help="spend and savings from the audit log",
                       description="Requests, tokens and USD grouped by tenant, model, key or day; "
                                   "with a baseline model\n(--baseline or [costs] baseline_model), "
                                   "what the same tokens would have cost on it.",
                       epilog="examples:\n  atp costs --by tenant\n  atp costs --by day --since 30d "
                              "--config atp.toml\n  atp costs --by model --baseline gpt-4o --json")
    where(c)
    c.add_argument("--by", choices=("tenant", "model", "key", "day"), default="tenant",
                   help="grouping (default tenant)")
    c.add_argument("--since", help="from this date/time or span (2026-12-01, 7d, 12h)")
    c.add_argument("--baseline", metavar="MODEL", help="price every answer at this configured model too")
    c.add_argument("--private", type=float, metavar="EPSILON",
                   help="release per-tenant figures with differential privacy (Laplace noise at "
                        "EPSILON per metric, charged to each tenant's daily budget, "
                        "[privacy] epsilon_per_day); refused once a budget is spent")
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.set_defaults(func=_guarded(cmd_costs))

"""Administrative commands: `atp keys create|list|revoke|rotate`, `atp policy test`, `atp reload`."""
import json
import sys
import time

from . import config as atp_config
from .reload import PID_FILE, read_status, signal_server, workers_of
from .tenants import KeyFile, KeyStoreError, keys_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
RELOAD_WAIT_S = 10.0          # how long `atp reload` waits for the server's answer by default
_POLL_S = 0.05                # the status file is the server's only way to answer a signal


# KeyFile.create names the record's field at fault ("groups: ..."); the CLI user typed an option.
_CREATE_OPTIONS = {"name": "--name", "tenant": "--tenant", "groups": "--group", "models": "--model"}


def _create_key(store: KeyFile, args, **kwargs):
    """store.create, its KeyStoreError naming the command-line option instead of the field."""
    try:
        return store.create(args.name, args.tenant, **kwargs)
    except KeyStoreError as exc:
        field, sep, rest = str(exc).partition(":")
        if not sep or field not in _CREATE_OPTIONS:
            raise
        raise KeyStoreError(f"{_CREATE_OPTIONS[field]}:{rest}") from None


def _config(args):
    return atp_config.load(args.config)


def _store(cfg) -> KeyFile:
    names = frozenset(t.name for t in cfg.tenants) | {"default"} if cfg.tenants else None
    return KeyFile(keys_path(cfg), names)


def _when(ts) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _hmac_store(cfg):
    from .hmac_keys import HmacKeyFile, hmac_path
    names = frozenset(t.name for t in cfg.tenants) | {"default"} if cfg.tenants else None
    return HmacKeyFile(hmac_path(keys_path(cfg)), names)


def _hmac_row(rec, now: float) -> dict:
    return {"kind": "hmac", "id": rec.id, "name": rec.name, "tenant": rec.tenant,
            "state": rec.state(now), "created": _when(rec.created), "expires": _when(rec.expires)}


def cmd_hmac_keys(args, cfg, now: float) -> int:
    """`atp keys ... --hmac`: the HMAC signature keys (hmac_keys.py)."""
    store = _hmac_store(cfg)
    if args.keys_command == "create" and (args.user or args.group or args.model):
        raise KeyStoreError("--user, --group and --model apply to API keys, not to --hmac keys")
    if args.keys_command == "create":
        expires = None if args.expires_days is None else now + args.expires_days * 86_400
        secret, rec = store.create(args.name, args.tenant, expires=expires, now=now)
    elif args.keys_command == "rotate":
        secret, rec = store.rotate(args.ref, grace_s=args.grace, now=now)
    else:
        secret, rec = None, store.revoke(args.ref, now=now)
    out = {**_hmac_row(rec, now), "reload": _tell_server(cfg, args)}
    if secret is not None:
        out["secret_hex"] = secret.hex()
    if args.json:
        print(json.dumps(out, indent=1))
        return EXIT_OK
    if secret is not None:
        print(f"key id {rec.id}\nsecret {secret.hex()}\n  ^ the secret (hex): shown this once, "
              "store it now (sign with x-atp-key-id / x-atp-signature)")
    print(f"{args.keys_command}: HMAC key {rec.id} ({rec.name}, tenant {rec.tenant}); {out['reload']}")
    return EXIT_OK


def _row(rec, now: float) -> dict:
    return {"kind": "api", "id": rec.id, "name": rec.name, "tenant": rec.tenant, "user": rec.user,
            "groups": list(rec.groups), "models": None if rec.models is None else list(rec.models),
            "state": rec.state(now), "created": _when(rec.created), "expires": _when(rec.expires)}


def _tell_server(cfg, args) -> str:
    """After a change to the store: ask a running server to reload, if there is one."""
    if args.no_reload:
        return "not reloaded (--no-reload): run `atp reload`"
    try:
        pid = signal_server(atp_config.state_dir(cfg))
    except (OSError, ValueError):
        return "no running server found in the state dir: the change applies at its next start"
    return f"asked server pid {pid} to reload"


def cmd_keys(args) -> int:
    cfg = _config(args)
    store, now = _store(cfg), time.time()
    if args.keys_command == "list":
        rows = [] if args.hmac else [_row(r, now) for r in store.list()]
        hmac_rows = [_hmac_row(r, now) for r in _hmac_store(cfg).list()]
        if args.json:
            print(json.dumps(rows + hmac_rows, indent=1))
        else:
            for r in rows:
                print(f"{r['id']}  {r['name']:<16} {r['tenant']:<12} {r['state']:<8} "
                      f"expires {r['expires']}  models {','.join(r['models'] or ['*'])}")
            for r in hmac_rows:
                print(f"hmac {r['id']:<10} {r['name']:<16} {r['tenant']:<12} {r['state']:<8} "
                      f"expires {r['expires']}")
        return EXIT_OK
    if args.hmac:
        return cmd_hmac_keys(args, cfg, now)
    if args.keys_command == "create":
        expires = None if args.expires_days is None else now + args.expires_days * 86_400
        token, rec = _create_key(store, args, user=args.user or "", groups=args.group or (),
                                 models=args.model or None, expires=expires, now=now)
    elif args.keys_command == "rotate":
        token, rec = store.rotate(args.ref, grace_s=args.grace, now=now)
    else:
        token, rec = None, store.revoke(args.ref, now=now)
    note = _tell_server(cfg, args)
    out = {**_row(rec, now), "reload": note}
    if token is not None:
        out["key"] = token
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        if token is not None:
            print(f"{token}\n  ^ the key itself: shown this once, store it now")
        print(f"{args.keys_command}: {rec.id} ({rec.name}, tenant {rec.tenant}); {note}")
    return EXIT_OK


def cmd_policy_test(args) -> int:
    from .policy import PolicyHolder
    from .policy.explain import explain
    cfg = _config(args)
    holder = PolicyHolder.from_config(cfg)
    try:
        with open(args.request, "rb") as f:
            doc = json.load(f)
        result = explain(holder, doc, cfg.tenants)
    except (OSError, ValueError) as exc:
        print(f"atp: {args.request}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        verdict = "ALLOW" if result["allowed"] else "DENY"
        print(f"{verdict} by {result['rule']}: {result['reason']}")
        if result["models"] is not None:
            print(f"  models allowed: {', '.join(result['models']) or 'none'}")
        if result["require_redaction"]:
            print("  redaction required")
        if result["cache"] is not None:
            print(f"  response cache: {'required' if result['cache'] == 'on' else 'forbidden'} by policy")
        for t in result["trace"]:
            mark = ("not reached" if not t["reached"] else "match" if t["matched"]
                    else f"no ({t['failed']})")
            print(f"  [{t['priority']:>4}] {t['rule']:<24} {t['effect']:<17} {mark}")
    return EXIT_OK if result["allowed"] else EXIT_FAILED


def cmd_reload(args) -> int:
    """Check every reloadable file here first (a bad one is named, nothing is signalled), then
    SIGHUP the server and wait for its own verdict in the state dir."""
    cfg = _config(args)
    try:
        from .policy import PolicyHolder
        PolicyHolder.from_config(cfg)
        _store(cfg).list()
        _hmac_store(cfg).secrets({k.id for k in cfg.auth.hmac_keys})
    except (KeyStoreError, atp_config.ConfigError) as exc:
        print(f"atp: reload refused, nothing changed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        pid, answers = signal_and_wait(atp_config.state_dir(cfg), args.timeout)
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"atp: {exc}", file=sys.stderr)
        return EXIT_FAILED
    refused = [s for s in answers.values() if not s["ok"]]
    if refused:
        print(f"atp: server refused the reload, old rules stay: {refused[0]['error']}", file=sys.stderr)
        return EXIT_FAILED
    generation = max(s["generation"] for s in answers.values())
    print(f"reloaded (server pid {pid}, {len(answers)} process(es), generation {generation})")
    return EXIT_OK


def signal_and_wait(directory, timeout: float) -> tuple[int, dict]:
    """SIGHUP the server in the state dir and wait for every process's reload verdict:
    (pid, {worker: status}). OSError/ValueError: no server; TimeoutError: it did not answer."""
    try:
        pid = int((directory / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = None
    workers = workers_of(directory, pid) if pid else []
    sources = workers or [None]          # None: the single server's reload.json
    before = {w: (read_status(directory, w) or {}).get("at") for w in sources}
    pid = signal_server(directory)
    deadline, answers = time.monotonic() + timeout, {}
    while time.monotonic() < deadline and len(answers) < len(sources):
        for w in sources:
            status = read_status(directory, w)
            if status and status.get("pid") == pid and status.get("at") != before[w]:
                answers[w] = status
        if len(answers) < len(sources):
            time.sleep(_POLL_S)
    if len(answers) < len(sources):
        raise TimeoutError(f"server pid {pid} did not answer within {timeout}s "
                           f"({len(answers)} of {len(sources)} workers did)")
    return pid, answers


def add_parsers(sub, raw_formatter) -> None:
    """The keys, policy and reload subcommands (cli.build_parser calls this)."""
    k = sub.add_parser("keys", formatter_class=raw_formatter, help="create, list, revoke, rotate API keys",
                       description="Manage the API-key store (<state_dir>/keys.json, or [auth] "
                                   "keys_file). A new key is printed once;\nonly a salted hash is "
                                   "kept. A running server is asked to reload after each change.",
                       epilog="examples:\n  atp keys create --config atp.toml --tenant acme --name ci "
                              "--model sim-fast --expires-days 90\n  atp keys list --config atp.toml\n"
                              "  atp keys rotate ci --grace 3600\n  atp keys revoke 3f2a9c0d1e4b\n"
                              "  atp keys create --hmac --tenant acme --name signer   # id + secret, "
                              "kept encrypted\n  atp keys rotate --hmac signer --grace 600")
    ksub = k.add_subparsers(dest="keys_command", metavar="<subcommand>", required=True)
    parsers = {name: ksub.add_parser(name, formatter_class=raw_formatter, help=text)
               for name, text in (("create", "issue a key (shown once)"), ("list", "list keys"),
                                  ("revoke", "revoke a key by id or name"),
                                  ("rotate", "issue a replacement; the old key expires after --grace"))}
    for name, q in parsers.items():
        q.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
        q.add_argument("--json", action="store_true", help="print JSON")
        q.add_argument("--hmac", action="store_true",
                       help="HMAC signature keys (ids, secrets kept encrypted) instead of API keys"
                       + (" (list: only those)" if name == "list" else ""))
        if name != "list":
            q.add_argument("--no-reload", action="store_true", help="do not signal a running server")
        q.set_defaults(func=cmd_keys)
    c = parsers["create"]
    c.add_argument("--tenant", required=True, help="the tenant every request with this key acts as")
    c.add_argument("--name", required=True, help="shown in audit records and logs")
    c.add_argument("--user", help="the user the key belongs to ([[tenants]] users give it groups)")
    c.add_argument("--group", action="append", help="a group of the key (repeatable)")
    c.add_argument("--model", action="append", help="scope the key to this model (repeatable)")
    c.add_argument("--expires-days", type=float, metavar="DAYS", help="expire after DAYS (default never)")
    for name in ("revoke", "rotate"):
        parsers[name].add_argument("ref", metavar="ID|NAME", help="the key's id, or its name if unique")
    parsers["rotate"].add_argument("--grace", type=float, default=0.0, metavar="SECONDS",
                                   help="the old key keeps working this long (default 0)")

    p = sub.add_parser("policy", formatter_class=raw_formatter, help="test the attribute-based policy",
                       description="Policy tools. `test` decides one described request offline "
                                   "against [policy] files\nand prints the deciding rule and each "
                                   "rule's verdict. Exit status 0 allow, 1 deny, 2 bad input.",
                       epilog='request.json: {"principal": {"tenant": "acme", "groups": ["staff"]},\n'
                              '  "request": {"model": "sim-high", "prompt": "hi"}, "pii": ["email"],\n'
                              '  "time": "2026-12-05T23:00:00Z", "transport": "http"}')
    psub = p.add_subparsers(dest="policy_command", metavar="<subcommand>", required=True)
    t = psub.add_parser("test", formatter_class=raw_formatter, help="explain the decision for a request")
    t.add_argument("request", metavar="REQUEST.json")
    t.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=cmd_policy_test)

    r = sub.add_parser("reload", formatter_class=raw_formatter, help="reload keys and policies now",
                       description="Check the keys file and policy files, then send SIGHUP to the "
                                   "server in the state dir\nand wait for its verdict: a bad file "
                                   "is refused with the key at fault and the old rules stay.")
    r.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
    r.add_argument("--timeout", type=float, default=RELOAD_WAIT_S, help="seconds to wait (default 10)")
    r.set_defaults(func=cmd_reload)

"""`atp router status|promote|rollback|pin|unpin`: operate a running server's champion/challenger.

The command travels through the state directory (routing/control.py): written to
router_command.json, picked up by the server on SIGHUP (the `atp reload` path), answered in
router_state.json under the command's id. Exit status: 0 applied, 1 refused or no server, 2 usage.
"""
import getpass
import json
import secrets
import sys
import time

from . import config as atp_config
from .cli_admin import EXIT_FAILED, EXIT_OK, RELOAD_WAIT_S, signal_and_wait
from .routing.control import ACTIONS, COMMAND_FILE, STATE_FILE, read_json, write_json


def _fail(args, message: str) -> int:
    if args.json:
        print(json.dumps({"ok": False, "error": message}))
    print(f"atp: {message}", file=sys.stderr)
    return EXIT_FAILED


def precheck(state: dict | None, action: str) -> str | None:
    """What makes the action impossible according to the server's last published state (the
    server checks again: the state may be a moment old), or None."""
    if state is None:
        return ("no router state in the state dir: is a server running with this config? "
                f"(it writes {STATE_FILE} at start)")
    if action in ("promote", "rollback") and not state.get("running"):
        if state.get("challenger"):
            return f"no challenger running: the experiment on {state['challenger']} ended"
        return "no challenger registered"
    if action == "promote" and state.get("pinned"):
        return "the champion is pinned: `atp router unpin` first"
    return None


def cmd_router_status(args) -> int:
    directory = atp_config.state_dir(atp_config.load(args.config))
    state = read_json(directory / STATE_FILE)
    if state is None:
        return _fail(args, precheck(None, "status"))
    if args.json:
        print(json.dumps(state, indent=1))
        return EXIT_OK
    print(f"server pid {state['pid']}; champion {'pinned' if state['pinned'] else 'not pinned'}")
    if state["challenger"]:
        mode = "shadow" if state.get("shadow") else "live"
        print(f"challenger {state['challenger']} ({mode}, share {state['share']:.0%}): "
              f"{'running' if state['running'] else 'ended'}, {state['rewards']} rewards "
              f"(mean {state['challenger_mean']:.3f} vs champion {state['champion_mean']:.3f}), "
              f"{state['pairs']} pairs")
    else:
        print("no challenger registered")
    for v in state["verdicts"]:
        print(f"  {v['action']:<8} {v['challenger']} after {v['rewards']} rewards: {v['reason']}")
    return EXIT_OK


def cmd_router_action(args) -> int:
    action = args.router_command
    directory = atp_config.state_dir(atp_config.load(args.config))
    problem = precheck(read_json(directory / STATE_FILE), action)
    if problem is not None:
        return _fail(args, problem)
    cmd = {"id": secrets.token_hex(8), "action": action, "at": time.time(),
           "actor": args.actor or getpass.getuser()}
    write_json(directory / COMMAND_FILE, cmd)
    try:
        pid, _ = signal_and_wait(directory, args.timeout)
    except OSError as exc:              # no pid file, a dead pid, no answer in time
        return _fail(args, str(exc))
    state = read_json(directory / STATE_FILE) or {}
    result = state.get("last_command") or {}
    if result.get("id") != cmd["id"]:
        return _fail(args, f"server pid {pid} reloaded but did not apply the command "
                           "(the whole reload was refused: see `atp reload`)")
    if args.json:
        print(json.dumps({**result, "state": {k: v for k, v in state.items()
                                              if k != "last_command"}}, indent=1))
    if not result["ok"]:
        if not args.json:
            print(f"atp: server pid {pid} refused {action}: {result['error']}", file=sys.stderr)
        return EXIT_FAILED
    if not args.json:
        target = state.get("challenger") or "-"
        print(f"{action}: applied by server pid {pid} (challenger {target}, "
              f"champion {'pinned' if state.get('pinned') else 'not pinned'})")
    return EXIT_OK


def add_router_commands(rsub, raw_formatter) -> None:
    """status, promote, rollback, pin, unpin under `atp router` (cli.build_parser calls this)."""
    helps = {"status": "show the champion/challenger experiment of the running server",
             "promote": "make the running challenger the champion now",
             "rollback": "end the challenger's experiment, keeping the champion",
             "pin": "freeze the champion: no challenger traffic, no automatic promotion",
             "unpin": "let the experiment run again"}
    for name in ("status",) + ACTIONS:
        q = rsub.add_parser(name, formatter_class=raw_formatter, help=helps[name],
                            description=helps[name].capitalize() + ". Acts on the server whose "
                            "state dir the config names\n(through router_command.json and SIGHUP, "
                            "like `atp reload`); audited.",
                            epilog=f"examples:\n  atp router {name} --config atp.toml\n"
                                   f"  atp router {name} --json")
        q.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
        q.add_argument("--json", action="store_true", help="print JSON")
        if name == "status":
            q.set_defaults(func=cmd_router_status)
            continue
        q.add_argument("--actor", help="who acts, for the audit log (default: the login name)")
        q.add_argument("--timeout", type=float, default=RELOAD_WAIT_S,
                       help="seconds to wait for the server (default 10)")
        q.set_defaults(func=cmd_router_action)

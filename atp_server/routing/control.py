"""Operator control of a running server's champion/challenger: `atp router promote|rollback|pin|unpin`.

The CLI and the server share the state directory, the channel `atp reload` already uses: the CLI
writes one command to `router_command.json` and sends SIGHUP; the server's reloader calls
`prepare()` (this module is one of its parts), which reads the command, checks it against the
router and returns a commit that applies it. The server answers in `router_state.json`: the
experiment now (challenger, share, shadow, pinned, rewards, the verdicts so far) and the outcome
of the last command by its id, so the CLI can tell its own command's result from an older one.

A command is applied at most once per process (its id is remembered), so the file may stay: every
worker of `--workers N` applies it once, and a later reload (keys, policy) does not repeat it. A
command the router refuses (no challenger registered, pinned) is answered with its error and
changes nothing; it never refuses the reload of the other parts (keys, policies).
Every applied command is logged (event `router_operator`) and written to the audit log.
"""
import json
import logging
import os
import time
from pathlib import Path

from ..logs import event

log = logging.getLogger("atp.routing")

COMMAND_FILE = "router_command.json"
STATE_FILE = "router_state.json"
ACTIONS = ("promote", "rollback", "pin", "unpin")
# Verdicts kept in the state file: the history an operator reads in `atp router status`; the
# router keeps all of them in memory (one per experiment, a handful per server lifetime).
SHOWN_VERDICTS = 20


def write_json(path: Path, doc: dict) -> None:
    """Atomically (temp file + rename): a reader never sees half a document."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def describe(router) -> dict:
    """The champion/challenger state as the operator sees it."""
    exp = router.experiment
    out = {"pinned": router.pinned, "challenger": None, "running": False}
    if exp is not None:
        out.update(challenger=exp.challenger, running=exp.running, share=exp.share,
                   shadow=getattr(router, "shadow", False), rewards=exp.n,
                   champion_rewards=exp.champ_n, pairs=exp.pairs,
                   challenger_mean=exp.total / exp.n if exp.n else 0.0,
                   champion_mean=exp.champion_mean(), llr_up=exp.llr_up, llr_down=exp.llr_down)
    out["verdicts"] = [{"action": v.action, "challenger": v.challenger, "rewards": v.rewards,
                        "challenger_mean": v.challenger_mean, "champion_mean": v.champion_mean,
                        "reason": v.reason} for v in router.verdicts[-SHOWN_VERDICTS:]]
    return out


class OperatorControl:
    """The server side: a reloader part, and the writer of router_state.json."""

    def __init__(self, router, directory: Path, audit=None):
        self.router = router
        self.directory = Path(directory)
        self.audit = audit
        self.applied: set[str] = set()     # command ids seen by this process (a few per lifetime)
        self.last: dict | None = None      # the outcome of the last command
        stale = read_json(self.directory / COMMAND_FILE)   # left by an earlier run: never applied
        if stale is not None and isinstance(stale.get("id"), str):
            self.applied.add(stale["id"])
        before = read_json(self.directory / STATE_FILE)
        if before is not None and before.get("pinned") is True:
            router.operator("pin")          # a restart is not an unpin: the pin holds
            log.warning("routing: the champion stays pinned (%s); `atp router unpin` releases it",
                        self.directory / STATE_FILE)
        previous = router.on_verdict

        def on_verdict(v) -> None:         # an automatic verdict changes the state too
            if previous is not None:
                previous(v)
            self.write_state()
        router.on_verdict = on_verdict

    def prepare(self):
        """Reloader part: read the pending command (changes nothing); the commit applies it."""
        cmd = read_json(self.directory / COMMAND_FILE)
        if cmd is None or not isinstance(cmd.get("id"), str) or cmd["id"] in self.applied:
            return _nothing
        self.applied.add(cmd["id"])        # once, even if the whole reload is refused below
        return lambda: self.apply(cmd)

    def apply(self, cmd: dict) -> dict:
        action, actor = cmd.get("action"), str(cmd.get("actor") or "operator")
        result = {"id": cmd["id"], "action": action, "actor": actor, "at": time.time()}
        exp = self.router.experiment
        target = exp.challenger if exp is not None else ""
        try:
            if action not in ACTIONS:
                raise ValueError(f"unknown router action {action!r} (known: {', '.join(ACTIONS)})")
            verdict = self.router.operator(action)
        except ValueError as exc:
            result.update(ok=False, error=str(exc))
            log.error("router %s by %s refused: %s", action, actor, exc)
        else:
            result.update(ok=True, error="")
            if verdict is not None:
                result["verdict"] = verdict.action
            event("router_operator", logging.WARNING, action=action, actor=actor, challenger=target)
        if self.audit is not None:
            self.audit.admin("", actor, f"router.{action}", target,
                             {"ok": result["ok"], "error": result["error"]})
        self.last = result
        self.write_state()
        return result

    def write_state(self) -> None:
        doc = {"pid": os.getpid(), "at": time.time(), **describe(self.router),
               "last_command": self.last}
        try:
            write_json(self.directory / STATE_FILE, doc)
        except OSError as exc:
            log.error("cannot write %s: %s", self.directory / STATE_FILE, exc)


def _nothing() -> None:
    return None

"""Reload keys, policies (and whatever else registers) without a restart: all or nothing.

Every part first parses and checks its files (`prepare()`, which changes nothing and raises
ValueError/OSError naming the key at fault); only when every part succeeded are the new rules
put in force, one attribute swap each. A bad file leaves every old rule in force. Triggered by
SIGHUP, which `atp reload` sends to the pid written in the state dir.
"""
import json
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("atp.reload")

PID_FILE = "atp.pid"                 # in the state dir: the serving process, for `atp reload`
STATUS_FILE = "reload.json"          # in the state dir: the outcome of the last reload
# With --workers N each worker also writes reload.<its pid>.json: `atp reload` waits for all.
WORKER_STATUS = "reload.{pid}.json"
WORKERS_FILE = "workers.json"         # in the state dir: the worker pids of `atp serve --workers N`


class Reloader:
    def __init__(self, parts, status_dir: Path | None = None):
        self.parts = list(parts)      # (name, prepare) with prepare() -> commit()
        self.generation = 0           # reloads put in force since start
        self.last_error = ""
        self.status_dir = status_dir
        self.owner_pid: int | None = None     # the pid in the pid file, when a parent's (workers)

    def add(self, name: str, prepare) -> None:
        """Register another reloadable part (limits, budgets...) with the same contract."""
        self.parts.append((name, prepare))

    def reload(self) -> bool:
        commits = []
        try:
            for name, prepare in self.parts:
                commits.append(prepare())
        except (ValueError, OSError) as exc:    # ConfigError, KeyStoreError are ValueErrors
            self.last_error = f"{name}: {exc}"
            log.error("reload refused, the rules in force stay: %s", self.last_error)
            self._status(False)
            return False
        for commit in commits:
            commit()
        self.generation += 1
        self.last_error = ""
        log.info("reloaded %s (generation %d)", ", ".join(n for n, _ in self.parts), self.generation)
        self._status(True)
        return True

    def announce(self) -> None:
        """Write the status once the reload signal is handled (workers: `atp reload` waits for
        the ones that announced)."""
        self._status(True)

    def _status(self, ok: bool) -> None:
        if self.status_dir is None:
            return
        text = json.dumps({"ok": ok, "generation": self.generation, "error": self.last_error,
                           "pid": self.owner_pid or os.getpid(), "worker": os.getpid(),
                           "at": time.time()})
        names = [STATUS_FILE] + ([WORKER_STATUS.format(pid=os.getpid())] if self.owner_pid else [])
        for name in names:
            path = Path(self.status_dir) / name
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, path)
            except OSError as exc:
                log.error("cannot write %s: %s", path, exc)


def write_pid(directory: Path) -> None:
    try:
        (Path(directory) / PID_FILE).write_text(str(os.getpid()), encoding="utf-8")
    except OSError as exc:     # reload by signal still works with `kill -HUP <pid>`
        log.warning("cannot write the pid file in %s: %s", directory, exc)


def signal_server(directory: Path) -> int:
    """Send SIGHUP to the server whose pid is in `directory`; its pid. OSError/ValueError say why."""
    path = Path(directory) / PID_FILE
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {path}: is a server running with this state dir?") from None
    os.kill(pid, signal.SIGHUP)
    return pid


def read_status(directory: Path, worker: int | None = None) -> dict | None:
    name = STATUS_FILE if worker is None else WORKER_STATUS.format(pid=worker)
    try:
        return json.loads((Path(directory) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_workers(directory: Path, pids) -> None:
    """The parent of `atp serve --workers N` records its workers (at start, after a respawn):
    what `atp reload` waits for. Written whole (temp file + rename): a reader never sees half."""
    from .routing.control import write_json
    try:
        write_json(Path(directory) / WORKERS_FILE, {"parent": os.getpid(), "workers": sorted(pids)})
    except OSError as exc:       # `atp reload` then waits for the parent's verdict alone
        log.warning("cannot write the workers file in %s: %s", directory, exc)


def workers_of(directory: Path, pid: int) -> list[int]:
    """The live workers the parent `pid` recorded (none for a single server). Not the process's
    children as such: a server may have others (a multiprocessing helper) that never answer."""
    try:
        doc = json.loads((Path(directory) / WORKERS_FILE).read_text(encoding="utf-8"))
        children = set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except (OSError, ValueError):
        return []
    if doc.get("parent") != pid:      # left by an earlier server on this state dir
        return []
    return [w for w in doc.get("workers", []) if str(w) in children]

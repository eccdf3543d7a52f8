"""Shared plumbing: work directories, apt installs, pinned child processes, readiness probes."""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import upstream

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("ATP_BENCH_PEERS_DIR", REPO / "bench" / ".peers"))  # git-ignored
LOGS = WORK / "logs"


class Unavailable(RuntimeError):
    """A target cannot run here (missing piece, failed install); the run skips it with this reason."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- installs ------------------------------------------------------------------------------------

_apt_updated = False


def ensure_apt(binary: str, packages: list[str]) -> str:
    """Path of `binary`, installing the first Debian package that provides it if it is missing."""
    global _apt_updated
    found = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/sbin/{binary}")
                                          if os.access(p, os.X_OK)), None)
    if found:
        return found
    if not shutil.which("apt-get"):
        raise Unavailable(f"{binary} is not installed and there is no apt-get to install it")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise Unavailable(f"{binary} is not installed; run: apt-get install -y {packages[0]}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / "apt.log", "ab") as out:
        for pkg in packages:
            for attempt in (0, 1):
                if attempt or not _apt_updated:  # a clean machine has empty package lists
                    log(f"  apt-get update (for {pkg})")
                    subprocess.run(sudo + ["apt-get", "update"], stdout=out, stderr=out, env=env)
                    _apt_updated = True
                log(f"  apt-get install -y {pkg}")
                r = subprocess.run(sudo + ["apt-get", "install", "-y", "--no-install-recommends", pkg],
                                   stdout=out, stderr=out, env=env)
                if r.returncode == 0:
                    break
            found = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}",)
                                                  if os.access(p, os.X_OK)), None)
            if found:
                return found
    raise Unavailable(f"could not install {binary} (tried {', '.join(packages)}; see {LOGS / 'apt.log'})")


def run_text(cmd: list[str], timeout: float = 30) -> str:
    """stdout+stderr of a short command (version probes); '' if it cannot run."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout + r.stderr).strip()


# ---- processes -----------------------------------------------------------------------------------

def pinned(cmd: list[str], core: int | None) -> list[str]:
    """`taskset -c core cmd…` (taskset execs, so the pid stays the command's own)."""
    if core is None:
        return list(cmd)
    ts = shutil.which("taskset")
    if ts is None:
        raise Unavailable("taskset not found (Debian package util-linux)")
    return [ts, "-c", str(core), *cmd]


def _die_with_parent() -> None:
    """preexec: SIGKILL this child if the harness dies without stopping it (kill -9, crash)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; survives exec
    except (OSError, AttributeError):
        pass


class Proc:
    """A child in its own session/process group, its output in a log file; `stop()` ends the group."""

    def __init__(self, name: str, cmd: list[str], *, core: int | None = None, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, log_path: Path | None = None):
        self.name = name
        self.cmd = pinned(cmd, core)
        self.log_path = log_path or LOGS / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True,  # pgid == pid: killpg reaches workers
                                      preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self.pid = self.popen.pid
        self.seen_pids: set[int] = {self.pid}  # every pid of the tree we have observed (for checks)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace_s`; reap the leader."""
        from .proc import tree_pids
        if self.alive():
            self.seen_pids |= set(tree_pids(self.pid))
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:  # stragglers in the group (workers that ignore TERM, or a leader that would not exit)
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        # Children that escaped the group (setsid) but we saw: end them too.
        for pid in self.seen_pids - {self.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()

    def stopped(self) -> bool:
        """True when no process we ever saw in this tree is still running (zombies count as gone)."""
        from .proc import is_running
        return not any(is_running(p) for p in self.seen_pids)


# ---- probes --------------------------------------------------------------------------------------

def probe(url_host: str, port: int, path: str, headers: dict[str, str] | None = None,
          body: str | None = upstream.REQUEST_JSON, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection: (status, body); raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        conn.request("POST" if body is not None else "GET", path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_ready(name: str, check, timeout_s: float, proc: Proc | None = None, interval_s: float = 0.1) -> float:
    """Poll `check()` (True = ready) until it passes; fail early if `proc` dies. Returns seconds taken."""
    t0 = time.monotonic()
    last = "no answer yet"
    while True:
        if proc is not None and not proc.alive():
            raise Unavailable(f"{name} exited with code {proc.popen.returncode} before it was ready; "
                              f"log {proc.log_path}:\n{proc.log_tail()}")
        try:
            ok, last = check()
            if ok:
                return time.monotonic() - t0
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() - t0 > timeout_s:
            tail = f"; log {proc.log_path}:\n{proc.log_tail()}" if proc else ""
            raise Unavailable(f"{name} not ready after {timeout_s:.0f} s (last: {last}){tail}")
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 1.0)


def completion_check(host: str, port: int, path: str, headers: dict[str, str] | None = None):
    """A readiness check that passes only when a real chat completion comes back with the marker."""
    def check():
        status, body = probe(host, port, path, headers)
        if upstream.is_good(status, body):
            return True, "ok"
        return False, f"HTTP {status}: {body[:300]!r}"
    return check


async def serve_post(port: int, path: str, handler, ready: str) -> None:
    """A fake upstream: aiohttp answering POST `path` on 127.0.0.1:`port` with `handler` until the
    process is killed; prints `ready` once it listens (the parent waits for that line)."""
    import asyncio

    from aiohttp import web
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(ready, flush=True)
    await asyncio.Event().wait()

"""`atp serve --workers N` beside a real redis-server, for the tests/server/test_workers_*.py suites.

The server runs as a subprocess (the forks are the thing under test). Readiness is the workers'
own "ATP serving" log line, one per worker, read from the process's output as it is written:
no sleeps and no polling.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading

from atp_server import config as atp_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY = "ATP serving"
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers_toml(state_dir, redis_url: str | None, extra: str = "", *, hmac: bool = True) -> str:
    """The embedded default (dev API key, dev HMAC key unless `hmac=False`) with its state in
    `state_dir`, [state] on `redis_url` (none: in memory) and `extra` TOML appended."""
    text = atp_config.DEFAULT_TOML.replace("[server]\n", f'[server]\nstate_dir = "{state_dir}"\n', 1)
    if not hmac:
        text = text.replace(atp_config.dev_auth_toml(), atp_config.dev_auth_toml(hmac=False))
    if redis_url:
        text += f'\n[state]\nredis_url = "{redis_url}"\ntimeout_ms = 200\n'
    return text + extra


class Serving:
    """A running `atp serve --workers N`: its ports, its pids, and its output so far."""

    def __init__(self, proc: subprocess.Popen, http: int, grpc: int):
        self.proc, self.http, self.grpc = proc, http, grpc
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.workers = 0
        self.needed = 1

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if READY in line:
                self.workers += 1
                if self.workers >= self.needed:
                    self.ready.set()
        self.ready.set()          # exited: wake the waiter, which then sees the exit

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def serving(tmp_path, toml: str, workers: int = 2, *flags):
    """`atp serve` with `toml` and `workers` workers, yielded once every worker serves."""
    cfg = tmp_path / "atp.toml"
    cfg.write_text(toml)
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "atp_server", "serve", "--config", str(cfg),
                             "--http-port", str(http), "--grpc-port", str(grpc), "--no-quic",
                             "--workers", str(workers), "--no-access-log", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    s = Serving(proc, http, grpc)
    s.needed = workers
    reader = threading.Thread(target=s._read, daemon=True)
    reader.start()
    try:
        if not s.ready.wait(START_TIMEOUT_S) or s.workers < workers:
            raise AssertionError(f"atp serve did not start {workers} workers:\n{s.output}")
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(5)
        print(s.output)          # pytest shows it when the test fails

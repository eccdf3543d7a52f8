"""The pieces a target is made of: its context, its running handle, its registry entry."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .nginx import Nginx
from .common import LOGS, Proc, completion_check, wait_ready


@dataclass
class Ctx:
    """What a target's start function gets."""
    nginx: Nginx
    gateway_core: int | str | None           # a core, or "0,1" for several workers
    load_core: int | None
    tag: str = "run"                          # e.g. "r2": distinguishes log files per round
    log_dir: Path = LOGS
    workers: int = 1                          # gateway worker processes (targets that have them)

    @property
    def upstream_base_url(self) -> str:       # http://127.0.0.1:<nginx>/v1
        return self.nginx.base_url

    @property
    def upstream_port(self) -> int:
        return self.nginx.port

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}-{self.tag}.log"


@dataclass
class MeasureSpec:
    duration_s: float
    connections: int
    core: int | None          # the load core: pin the load generator here
    log_path: Path | None = None
    threads: int = 1


@dataclass
class Running:
    """A started target: where to send requests, what to account CPU/RSS for, how to stop it."""
    url: str                                   # full URL of the chat completions endpoint
    headers: dict[str, str]
    pids: list[int]                            # roots of process trees to account (CPU, RSS)
    stop: Callable[[], None]
    stopped: Callable[[], bool] = lambda: True
    ready_s: float = 0.0
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)  # anything a custom measure() needs (ports, keys…)

    @classmethod
    def for_proc(cls, proc: Proc, url: str, headers: dict[str, str], ready_timeout_s: float, **extra) -> "Running":
        """Wait until `url` answers a real completion (else stop `proc` and raise), then wrap it."""
        u = urlsplit(url)
        try:
            ready = wait_ready(proc.name, completion_check(u.hostname, u.port, u.path, headers), ready_timeout_s, proc)
        except BaseException:
            proc.stop()
            raise
        return cls(url, headers, [proc.pid], proc.stop, proc.stopped, ready, proc.log_path, extra)


@dataclass
class Target:
    name: str
    label: str
    start: Callable[[Ctx], Running]
    version: Callable[[], str] | None = None     # printed with the results (None: nothing to print)
    install: Callable[[], object] | None = None    # idempotent; raises Unavailable when it cannot
    measure: Callable[[Running, MeasureSpec], dict] | None = None   # None: wrk
    is_floor: bool = False                          # the direct-to-upstream baseline

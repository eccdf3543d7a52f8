"""CPU time and peak RSS of a process tree, from /proc (Linux only).

CPU: utime+stime of every live process in the tree plus cutime+cstime (children already reaped),
so a multi-process server's workers count and a worker that exits mid-run is not lost as long as
its parent reaps it. Sample before and after a run and subtract.
Peak RSS: VmHWM (the high-water mark of resident memory) summed over the tree — an upper bound of
the tree's simultaneous peak (processes may peak at different moments; shared pages count twice).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("latin-1")
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    rest = raw[raw.rindex(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f is None:
            continue
        kids.setdefault(int(f[1]), []).append(int(d))  # field 4: ppid
    return kids


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants (by parent pid)."""
    if _stat_fields(root) is None:
        return []
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def is_running(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] not in ("Z", "X")


def cpu_seconds(pid: int) -> float:
    """utime+stime+cutime+cstime of one process, in seconds (0 if it is gone)."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    # fields 14..17 (utime stime cutime cstime) are rest[11..14]
    return sum(int(x) for x in f[11:15]) / _TICK


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass(frozen=True)
class TreeSample:
    pids: tuple[int, ...]
    cpu_s: float          # summed over the tree, cumulative since each process started
    hwm_kb: int           # summed VmHWM
    rss_kb: int           # summed VmRSS now


def sample(roots: list[int] | tuple[int, ...]) -> TreeSample:
    pids: list[int] = []
    for r in roots:
        pids.extend(p for p in tree_pids(r) if p not in pids)
    return TreeSample(tuple(pids), sum(cpu_seconds(p) for p in pids),
                      sum(_status_kb(p, "VmHWM:") for p in pids), sum(_status_kb(p, "VmRSS:") for p in pids))


def delta(before: TreeSample, after: TreeSample) -> dict:
    """CPU seconds spent between two samples and the tree's peak RSS (MB) at the second one.

    A process present before but gone after (not reaped by a tree member) loses its time; one that
    appeared in between counts in full (its whole life was inside the window)."""
    return {
        "cpu_s": max(0.0, after.cpu_s - before.cpu_s),
        "peak_rss_mb": round(max(before.hwm_kb, after.hwm_kb) / 1024, 1),
        "rss_mb": round(after.rss_kb / 1024, 1),
        "processes": len(after.pids),
    }


def affinity(pid: int) -> str:
    """The CPU list a process may run on (to confirm taskset took), e.g. '0' or '0-1'."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"

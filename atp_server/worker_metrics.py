"""Every worker's numbers in one /metrics scrape (`atp serve --workers N`).

Each worker keeps its own counters (requests, latency, tokens, spend, breakers, queues), and the
kernel hands a scrape's connection to any one of them. So each worker also serves its own
exposition on a unix socket in the state directory, and the worker a scrape reaches gathers the
others' and returns them all, every series labelled `worker="<index>"` (sum them in PromQL:
`sum without (worker) (rate(atp_requests_total[5m]))`), plus `atp_metrics_worker_up{worker}`:
1 for each worker that answered this scrape, 0 for one that did not (dead, restarting, stuck).

Why sockets and not prometheus-client's multiprocess mode: that mode covers only the library's
own Counter/Gauge/Histogram objects written to mmap files, and most of ATP's series come from
collectors that read live state at scrape time (breakers, AIMD windows, posteriors, budgets,
audit health) — they would vanish. Asking at scrape time costs nothing between scrapes.

Merging is text surgery on prometheus-client's output, not a parse: the worker label is put first
in each sample's label set, and each family's lines stay together (the text format requires one
group per family), its HELP/TYPE from the first worker that has it.
"""
import asyncio
import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("atp.metrics")

# A worker that has not answered within this is left out of this scrape (worker_up 0): well under
# Prometheus' default scrape_timeout (10 s), and a healthy worker renders in milliseconds.
GATHER_TIMEOUT_S = 1.0
# AF_UNIX paths are limited to 108 bytes on Linux (sun_path), the terminating NUL included.
_MAX_SOCKET_PATH = 107
UP = "atp_metrics_worker_up"


def socket_dir(state_dir) -> Path:
    """`<state_dir>/workers`, or a private directory in the temp dir when that path is too long
    for a unix socket (named after the state dir, so every worker of one server agrees)."""
    d = Path(state_dir) / "workers"
    if len(str(d / "w999.sock")) <= _MAX_SOCKET_PATH:
        return d
    tag = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"atp-workers-{tag}"


class WorkerMetrics:
    """Serves this worker's exposition on its socket; `gather()` answers a scrape for all."""

    def __init__(self, render, state_dir, index: int, workers: int):
        self.render, self.index, self.workers = render, index, workers
        self.dir = socket_dir(state_dir)
        self._server: asyncio.AbstractServer | None = None

    def path(self, index: int) -> str:
        return str(self.dir / f"w{index}.sock")

    async def start(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mine = self.path(self.index)
        try:
            os.unlink(mine)          # a predecessor with this index (a respawn) left its socket
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._answer, mine)
        os.chmod(mine, 0o600)

    async def _answer(self, reader, writer) -> None:
        try:
            writer.write(self.render())
            await writer.drain()
        except (ConnectionError, OSError):
            pass                     # the gathering worker gave up (its timeout): nothing to do
        finally:
            writer.close()

    async def _fetch(self, index: int) -> bytes | None:
        try:
            async with asyncio.timeout(GATHER_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(self.path(index))
                try:
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.debug("metrics: worker %d did not answer (%s)", index, exc)
            return None

    async def gather(self) -> bytes:
        """This worker's exposition and every other's, merged and labelled by worker."""
        others = [i for i in range(self.workers) if i != self.index]
        fetched = await asyncio.gather(*(self._fetch(i) for i in others))
        texts = dict(zip(others, fetched))
        texts[self.index] = self.render()
        return merge(dict(sorted(texts.items())))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            try:
                os.unlink(self.path(self.index))
            except FileNotFoundError:
                pass


def _families(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(family name, HELP/TYPE lines, sample lines) in exposition order."""
    out, header, samples, name = [], [], [], None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if parts[2] != name:       # a new family starts
                    if name is not None:
                        out.append((name, header, samples))
                    name, header, samples = parts[2], [], []
                header.append(line)
            continue
        samples.append(line)
    if name is not None:
        out.append((name, header, samples))
    return out


def _labelled(line: str, label: str) -> str:
    """`label` (already `worker="i"`) first in a sample line's label set."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = line[brace + 1:]
        return f"{line[:brace]}{{{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{line[:space]}{{{label}}}{line[space:]}"


def merge(texts: dict[int, bytes | None]) -> bytes:
    """One exposition from each worker's (None: the worker did not answer)."""
    order: list[str] = []
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for index, raw in texts.items():
        if raw is None:
            continue
        label = f'worker="{index}"'
        for name, header, lines in _families(raw.decode()):
            if name not in headers:
                order.append(name)
                headers[name], samples[name] = header, []
            samples[name].extend(_labelled(s, label) for s in lines)
    out = []
    for name in order:
        out.extend(headers[name])
        out.extend(samples[name])
    out.append(f"# HELP {UP} 1 if this worker's numbers are in this scrape, 0 if it did not answer")
    out.append(f"# TYPE {UP} gauge")
    out.extend(f'{UP}{{worker="{i}"}} {0.0 if raw is None else 1.0}' for i, raw in texts.items())
    return ("\n".join(out) + "\n").encode()

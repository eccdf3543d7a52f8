"""Resource-aware routing: sample host memory pressure and what local model servers hold, and mask local models that would need loading.

Pure core, thin I/O shell. The parsers (`parse_psi`, `parse_meminfo`, `parse_ollama_ps`,
`parse_llama_slots`) and the decisions (`assess`, `block_mask`) take text/JSON and numbers; the
ResourceMonitor reads `<proc_root>/pressure/memory` and `<proc_root>/meminfo` every
`interval_ms` on a background task, probes local model servers (Ollama `/api/ps`, llama.cpp
`/health` + `/slots`) on a slower task with bounded timeouts, and writes one additive column on
the live routing table — `table.resource_block`, a bool per model or None — that choose() ORs
into its health mask. choose() stays pure: it reads the column like any other.

Why PSI `total` deltas rather than `avg10`: avg10 is a 10-second exponential average, so it
needs seconds to cross a threshold; the cumulative stall time (`total`, µs) differenced over one
sampling interval reacts within that interval, which is what the 100 ms budget needs.
Kernels without PSI (CONFIG_PSI=n, `psi=0`, < 4.20) have no such file: MemAvailable alone decides.
"""
import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from .logs import event

log = logging.getLogger("atp.resources")


@dataclass(frozen=True, slots=True)
class ResourcesConfig:
    """[resources]: thresholds with their reasons."""

    enabled: bool = True
    proc_root: str = "/proc"            # tests point this at a fake /proc
    # 50 ms sampling: pressure appearing is seen within one interval plus a read (~0.05 ms), so
    # well inside the 100 ms budget even when the loop is a few ms late; reading two small /proc
    # files 20×/s costs ~1 ms of CPU per second (measured, bench/RESULTS.md).
    interval_ms: float = 50.0
    # Without local models there is nothing to steer: sample only for the snapshot, once a second.
    idle_interval_ms: float = 1000.0
    # Share of the last interval in which some task stalled on memory (PSI "some"). 10% is far
    # below systemd-oomd's default kill limit (60% for 20 s) — steer long before anything is killed.
    psi_some_pct: float = 10.0
    # Share in which all non-idle tasks stalled at once (PSI "full"): the machine is thrashing.
    psi_full_pct: float = 5.0
    # MemAvailable under this share of MemTotal is pressure even without PSI (or before it shows).
    min_available_pct: float = 10.0
    # Pressure clears only when every signal is below this fraction of its threshold (and
    # MemAvailable above threshold / this fraction): no flapping on a signal hovering at the line.
    release_ratio: float = 0.5
    # A local model that is not loaded may still be picked under pressure when its declared
    # memory_mb is at most this share of MemAvailable: it leaves room for its KV cache and the rest.
    fit_fraction: float = 0.5
    # Local servers change what they hold in seconds (a load takes that long): probe once a second,
    # each probe bounded so a hung server never delays the next round.
    probe_interval_ms: float = 1000.0
    probe_timeout_ms: float = 500.0


_CHECKS = {"interval_ms": (">", 0), "idle_interval_ms": (">", 0), "psi_some_pct": ("in", 0, 100),
           "psi_full_pct": ("in", 0, 100), "min_available_pct": ("in", 0, 100),
           "release_ratio": ("in", 0, 1), "fit_fraction": ("in", 0, 1),
           "probe_interval_ms": (">", 0), "probe_timeout_ms": (">", 0)}


def parse_resources(t: dict, typed, check) -> ResourcesConfig:
    """config.py's hook: `typed`/`check` are its own table checkers (errors name the key)."""
    v = typed("resources", t, ResourcesConfig)
    check("resources", v, _CHECKS)
    return ResourcesConfig(**v)


# ---- pure parsing ---------------------------------------------------------------------------------

class Psi(NamedTuple):
    """/proc/pressure/memory: averages in percent, totals in microseconds of stall."""
    some_avg10: float
    some_total_us: int
    full_avg10: float
    full_total_us: int


def parse_psi(text: str | None) -> Psi | None:
    """`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` (+ a `full` line since 5.x); None when
    the kernel has no PSI (no file, or an empty/unreadable one)."""
    if not text:
        return None
    lines = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
        try:
            lines[kind] = (float(fields["avg10"]), int(fields["total"]))
        except (KeyError, ValueError):
            continue
    if "some" not in lines:
        return None
    full = lines.get("full", (0.0, 0))   # 4.20–5.1 had no "full" line for memory on some builds
    return Psi(lines["some"][0], lines["some"][1], full[0], full[1])


class Mem(NamedTuple):
    total_kb: int
    available_kb: int


_MEMINFO_KEYS = frozenset({"MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached"})


def parse_meminfo(text: str) -> Mem | None:
    """MemTotal and MemAvailable (kB); before 3.14 there is no MemAvailable: MemFree + Buffers +
    Cached approximates it (what `free` did then)."""
    v = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name not in _MEMINFO_KEYS:
            continue
        parts = rest.split()
        if parts and parts[0].isdigit():
            v[name] = int(parts[0])
            if "MemTotal" in v and "MemAvailable" in v:
                break                       # lines 1 and 3: the other ~50 are not needed
    if "MemTotal" not in v:
        return None
    avail = v.get("MemAvailable")
    if avail is None:
        avail = v.get("MemFree", 0) + v.get("Buffers", 0) + v.get("Cached", 0)
    return Mem(v["MemTotal"], avail)


def parse_loadavg(text: str | None) -> list | None:
    """/proc/loadavg's 1, 5 and 15 minute load averages, or None when unreadable."""
    try:
        return [float(x) for x in (text or "").split()[:3]] or None
    except ValueError:
        return None


def parse_ollama_ps(body: bytes) -> frozenset:
    """The model names Ollama holds in memory (/api/ps); ValueError for a malformed body."""
    try:
        return frozenset(m["name"] for m in orjson.loads(body)["models"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed /api/ps body: {exc}") from None


def parse_llama_slots(body: bytes) -> tuple[int, int]:
    """llama.cpp /slots: (slots, busy). A slot is busy when `is_processing` (newer servers) or
    `state` != 0 (older ones); ValueError for a malformed body."""
    try:
        slots = orjson.loads(body)
        busy = sum(1 for s in slots if s.get("is_processing", s.get("state", 0) not in (0, False)))
        return len(slots), busy
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ValueError(f"malformed /slots body: {exc}") from None


def ollama_names(upstream: str) -> tuple[str, str]:
    """The names Ollama may list a model under: `llama3` is `llama3:latest` in /api/ps."""
    return (upstream, upstream if ":" in upstream else upstream + ":latest")


# ---- pure decisions -------------------------------------------------------------------------------

class Sample(NamedTuple):
    at: float                 # monotonic seconds
    psi: Psi | None
    mem: Mem | None


class Pressure(NamedTuple):
    high: bool
    some_pct: float           # stall share over the last interval (from PSI totals), percent
    full_pct: float
    available_pct: float      # MemAvailable / MemTotal, percent (100 when unknown)
    reasons: tuple


NO_PRESSURE = Pressure(False, 0.0, 0.0, 100.0, ())


def assess(prev: Sample | None, cur: Sample, cfg: ResourcesConfig, was_high: bool) -> Pressure:
    """Pressure now, from two consecutive samples; with hysteresis (see release_ratio)."""
    some = full = 0.0
    if prev is not None and prev.psi is not None and cur.psi is not None and cur.at > prev.at:
        span_us = (cur.at - prev.at) * 1e6
        some = max(0.0, (cur.psi.some_total_us - prev.psi.some_total_us) / span_us * 100)
        full = max(0.0, (cur.psi.full_total_us - prev.psi.full_total_us) / span_us * 100)
    if cur.psi is not None:   # the first sample, or a long pause: the kernel's own 10 s view too
        some, full = max(some, cur.psi.some_avg10), max(full, cur.psi.full_avg10)
    avail = 100.0 * cur.mem.available_kb / cur.mem.total_kb if cur.mem and cur.mem.total_kb else 100.0
    k = cfg.release_ratio if was_high else 1.0
    reasons = []
    if some >= cfg.psi_some_pct * k:
        reasons.append(f"memory stall (some) {some:.1f}% >= {cfg.psi_some_pct * k:g}%")
    if full >= cfg.psi_full_pct * k:
        reasons.append(f"memory stall (full) {full:.1f}% >= {cfg.psi_full_pct * k:g}%")
    floor = cfg.min_available_pct / k
    if avail < floor:
        reasons.append(f"MemAvailable {avail:.1f}% < {floor:g}%")
    return Pressure(bool(reasons), some, full, avail, tuple(reasons))


def block_mask(specs, loaded: dict, pressure: Pressure, available_mb: float,
               fit_fraction: float) -> np.ndarray | None:
    """Which models choose() must skip now: under pressure, local models not loaded whose memory
    is unknown or more than fit_fraction of what is available. None when nothing is blocked."""
    if not pressure.high:
        return None
    budget = available_mb * fit_fraction
    mask = np.array([s.local and not loaded.get(s.id, False)
                     and not (0 < s.memory_mb <= budget) for s in specs], dtype=np.bool_)
    return mask if mask.any() else None


# ---- I/O shell ------------------------------------------------------------------------------------

def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class _ProcFile:
    """A /proc file kept open and re-read with pread: no open/close per sample (the read is
    generated by the kernel at each offset-0 read, so a kept descriptor sees fresh values)."""

    __slots__ = ("path", "fd")

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def read(self) -> str | None:
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDONLY)
            return os.pread(self.fd, 8192, 0).decode("ascii", "replace")
        except OSError:     # no PSI (ENOENT), or psi=0 at boot (EOPNOTSUPP on read)
            self.close()
            return None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ResourceMonitor:
    """Samples pressure and local servers; keeps the routing table's resource_block column current.

    `tables()` returns the tables to write (the live one and a challenger's): a table rebuilt
    since the last sample gets its column on the next one. `probes` maps provider name ->
    async () -> {model id: loaded?} (see `local_probes`).
    """

    def __init__(self, cfg: ResourcesConfig, tables, specs, probes: dict | None = None,
                 clock=time.monotonic):
        self.cfg = cfg
        root = Path(cfg.proc_root)
        self._psi, self._meminfo = _ProcFile(root / "pressure" / "memory"), _ProcFile(root / "meminfo")
        self._loadavg = root / "loadavg"     # read per snapshot only, not per sample
        self.tables = tables
        self.specs = specs            # () -> the current ModelSpecs
        self.probes = probes or {}
        self.clock = clock
        self.prev: Sample | None = None
        self.pressure = NO_PRESSURE
        self.loaded: dict = {}        # model id -> bool, from the last probe round
        self.servers: dict = {}       # provider -> what its last probe said
        self.since: float | None = None   # when the current pressure began
        self.transitions = 0
        self.sample_cost_s = 0.0      # the last sample's read + decide time
        self._tasks: list = []
        self._written: dict = {}      # id(table) -> the mask last written, to skip no-op writes

    @property
    def local(self) -> bool:
        return any(s.local for s in self.specs())

    def sample(self) -> Pressure:
        """One round: read /proc, decide, write the mask, log a transition."""
        t0 = time.perf_counter()
        cur = Sample(self.clock(), parse_psi(self._psi.read()),
                     parse_meminfo(self._meminfo.read() or ""))
        was = self.pressure.high
        p = assess(self.prev, cur, self.cfg, was)
        self.prev, self.pressure = cur, p
        self.apply()
        self.sample_cost_s = time.perf_counter() - t0
        if p.high != was:
            self.transitions += 1
            self.since = cur.at if p.high else None
            if p.high:
                event("resource.pressure_high", logging.WARNING, source="memory",
                      reasons=list(p.reasons),
                      available_pct=round(p.available_pct, 1), some_pct=round(p.some_pct, 1),
                      full_pct=round(p.full_pct, 1), blocked=self.blocked())
            else:
                event("resource.pressure_cleared", logging.INFO,
                      available_pct=round(p.available_pct, 1))
        return p

    def available_mb(self) -> float:
        mem = self.prev.mem if self.prev else None
        return mem.available_kb / 1024 if mem else float("inf")

    def apply(self) -> None:
        """Write the mask on every table to route with (a no-op write is skipped)."""
        for table in self.tables():
            mask = block_mask(table.specs, self.loaded, self.pressure, self.available_mb(),
                              self.cfg.fit_fraction)
            old = self._written.get(id(table), False)
            if (mask is None) != (old is None) or (mask is not None and not np.array_equal(mask, old)):
                table.resource_block = mask      # one assignment: a decision sees old or new
                self._written[id(table)] = mask

    def blocked(self) -> list:
        out = []
        for table in self.tables():
            rb = table.resource_block
            if rb is not None:
                out += [table.ids[r] for r in np.flatnonzero(rb).tolist()]
        return sorted(set(out))

    async def probe(self) -> None:
        """One round of local-server probes, each bounded by probe_timeout_ms."""
        timeout = self.cfg.probe_timeout_ms / 1000
        for name, fn in self.probes.items():
            try:
                async with asyncio.timeout(timeout):
                    state = await fn()
            except (Exception, TimeoutError) as exc:    # down or hung: its models are not loaded
                state = {"reachable": False, "error": f"{type(exc).__name__}: {exc}"[:200],
                         "loaded": dict.fromkeys(getattr(fn, "models", ()), False)}
            self.servers[name] = state
            self.loaded.update(state["loaded"])
        self.apply()

    def interval_s(self) -> float:
        return (self.cfg.interval_ms if self.local else self.cfg.idle_interval_ms) / 1000

    async def _sampler(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:       # never let a bad read stop the watch
                log.exception("resource sample failed")
            await asyncio.sleep(self.interval_s())   # the sampling period itself, not a sync

    async def _prober(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.cfg.probe_interval_ms / 1000)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sampler())]
        if self.probes:
            self._tasks.append(loop.create_task(self._prober()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for f in (self._psi, self._meminfo):
            f.close()
        for fn in self.probes.values():
            close = getattr(fn, "aclose", None)
            if close is not None:
                await close()

    def snapshot(self) -> dict:
        """What GET /api/v1/ai/resources/metrics and `atp resources` show (JSON-able)."""
        p, s = self.pressure, self.prev
        mem = s.mem if s else None
        psi = s.psi if s else None
        return {
            "pressure": {"high": p.high, "reasons": list(p.reasons),
                         "since_s": round(self.clock() - self.since, 3) if self.since else None,
                         "some_pct": round(p.some_pct, 2), "full_pct": round(p.full_pct, 2),
                         "transitions": self.transitions},
            "memory": {"total_mb": round(mem.total_kb / 1024, 1) if mem else None,
                       "available_mb": round(mem.available_kb / 1024, 1) if mem else None,
                       "available_pct": round(p.available_pct, 2)},
            "psi": None if psi is None else {"some_avg10": psi.some_avg10,
                                             "full_avg10": psi.full_avg10},
            "cpu": {"load": parse_loadavg(_read_text(self._loadavg)), "count": os.cpu_count()},
            "models": [{"id": sp.id, "local": sp.local, "memory_mb": sp.memory_mb,
                        "loaded": self.loaded.get(sp.id) if sp.local else None}
                       for sp in self.specs()],
            "blocked": self.blocked(),
            "servers": {k: {kk: vv for kk, vv in v.items() if kk != "loaded"}
                        for k, v in self.servers.items()},
            "thresholds": {"psi_some_pct": self.cfg.psi_some_pct,
                           "psi_full_pct": self.cfg.psi_full_pct,
                           "min_available_pct": self.cfg.min_available_pct,
                           "interval_ms": self.interval_s() * 1000},
        }


# ---- local-server probes --------------------------------------------------------------------------

def local_probes(config, timeout_s: float) -> dict:
    """provider name -> async probe, for the providers that serve a `local = true` model:
    Ollama (/api/ps) and openai_compat (llama.cpp: /health, /slots; a server without /health —
    llama-cpp-python — counts as loaded when /v1/models answers, as it loads at start)."""
    from .adapters.http_client import HttpClient

    by_provider: dict = {}
    for spec in config.models:
        if spec.local:
            by_provider.setdefault(spec.provider, []).append(spec)
    probes = {}
    for name, specs in by_provider.items():
        p = config.provider(name)
        base = str(p.options.get("base_url", "")).rstrip("/")
        http = HttpClient(max_connections=2, connect_timeout_s=timeout_s, read_timeout_s=timeout_s,
                          total_timeout_s=timeout_s)
        if p.type == "ollama":
            probes[name] = _ollama_probe(http, base, specs)
        elif p.type == "openai_compat":
            probes[name] = _llama_probe(http, base.removesuffix("/v1"), specs)
    return probes


def _ollama_probe(http, base: str, specs):
    async def probe() -> dict:
        resp = await http.request("GET", base + "/api/ps")
        if resp.status != 200:
            raise ValueError(f"/api/ps answered {resp.status}")
        held = parse_ollama_ps(resp.body)
        return {"reachable": True, "kind": "ollama", "held": sorted(held),
                "loaded": {s.id: any(n in held for n in ollama_names(s.upstream)) for s in specs}}
    probe.aclose, probe.models = http.aclose, [s.id for s in specs]
    return probe


def _llama_probe(http, root: str, specs):
    async def probe() -> dict:
        health = await http.request("GET", root + "/health")
        if health.status == 404:          # llama-cpp-python: no /health; it loads at start
            ok = (await http.request("GET", root + "/v1/models")).status == 200
        else:
            ok = health.status == 200     # 503 while llama.cpp is still loading the model
        out = {"reachable": True, "kind": "llama.cpp", "ready": ok,
               "loaded": {s.id: ok for s in specs}}
        if health.status != 404:
            slots = await http.request("GET", root + "/slots")
            if slots.status == 200:       # 501 when started with --no-slots
                out["slots"], out["slots_busy"] = parse_llama_slots(slots.body)
        return out
    probe.aclose, probe.models = http.aclose, [s.id for s in specs]
    return probe

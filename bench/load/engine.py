"""The load loops: closed (C workers back to back) and open (constant arrival rate, CO-safe).

Timing rules
  * A request belongs to the measured window when its (scheduled) start time falls in
    [t_start, t_end), t_start = t0 + warmup, t_end = t_start + duration. Requests started in the
    window are waited for after t_end (up to the drain timeout) and counted; nothing new starts.
  * Open loop: request i is due at t_i = t0 + i/rate whatever happened to earlier ones; its latency
    is completion - t_i (not - the moment it was actually sent), so a stalled server or a lagging
    load generator shows up in the latencies instead of silently thinning the load (coordinated
    omission). If `max_outstanding` requests are already in flight when t_i comes, the arrival is
    counted as dropped and not sent. The send lag (actual send - t_i) is reported on its own.
  * Server CPU = utime+stime of the server's process tree from /proc, sampled at t_start and t_end
    (warmup excluded); client CPU = this process's CPU time over the same window.
  * Noise: for a pinned side, `core_foreign_share` is the share of the window its core spent on
    anything else (other processes, interrupts; from /proc/stat) and `core_steal_share` the
    hypervisor's steal; `runqueue_wait_share` sums, over the side's threads, the time they were
    runnable but not running (includes the side's own threads queuing behind each other).
"""
from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from bench.peers import proc as procfs

from .drivers import DRIVERS, error_name
from .hist import Histogram
from .servers import Server

_now = time.perf_counter


@dataclass
class LoadSpec:
    target: str
    mode: str = "closed"            # closed | open
    concurrency: int = 64           # closed: workers; open: max outstanding
    rate: float | None = None       # open: arrivals per second
    duration: float = 10.0
    warmup: float = 2.0
    stream: bool = False
    connections: int = 1
    model: str | None = None
    expect: str | None = None
    timeout: float = 30.0
    quic_streams: int = 1
    http_client: str = "lean"
    progress: bool = True
    label: str = ""
    probe_timeout: float = 20.0
    timer: str = "thread"           # open loop: how the scheduler sleeps (see PreciseTimer)


@dataclass
class _Window:
    lat: Histogram = field(default_factory=Histogram)
    overhead: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    lag: Histogram = field(default_factory=Histogram)
    service: Histogram = field(default_factory=Histogram)   # open loop: completion - actual send
    ok: int = 0
    errors: dict = field(default_factory=dict)
    error_samples: dict = field(default_factory=dict)
    dropped: int = 0
    sent: int = 0

    def fail(self, exc: BaseException) -> None:
        name = error_name(exc)
        self.errors[name] = self.errors.get(name, 0) + 1
        if name not in self.error_samples:
            self.error_samples[name] = str(exc)[:300]


class PreciseTimer:
    """Run a callback on the loop at a perf_counter() deadline, ~50-100 µs late instead of ~1 ms.

    uvloop (libuv) timers have millisecond granularity: an open-loop schedule driven by the loop's
    timers sends up to ~1 ms late (or wakes early and spins), and since latency counts from the
    scheduled time, that lag lands in every latency. Here a helper thread does the precise part
    (time.sleep with 1 ns timer slack) and hands the callback to the loop with
    call_soon_threadsafe: ~20-40 µs of CPU per wake-up, no busy-waiting. Deadlines more than 2 ms
    away are waited for mostly on the loop's own timer first.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="load-timer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:   # PR_SET_TIMERSLACK = 1 ns: the default 50 µs slack would delay every wake-up
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(29, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        while (item := self.q.get()) is not None:
            deadline, fn = item
            delay = deadline - _now()
            if delay > 0:
                time.sleep(delay)
            try:
                self.loop.call_soon_threadsafe(fn)
            except RuntimeError:   # loop closed
                return

    def call_at(self, deadline: float, fn) -> None:
        delay = deadline - _now()
        if delay > 0.002:
            self.loop.call_later(delay - 0.0015, self.q.put, (deadline, fn))
        elif delay > 0:
            self.q.put((deadline, fn))
        else:
            self.loop.call_soon(fn)

    def close(self) -> None:
        self.q.put(None)


class LoopTimer:
    """The event loop's own timer (millisecond granularity on uvloop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def call_at(self, deadline: float, fn) -> None:
        self.loop.call_later(max(0.0, deadline - _now()), fn)

    def close(self) -> None:
        pass


def _tree_cpu(pids: list[int]) -> float:
    return sum(procfs.cpu_seconds(p) for p in pids)


def core_times() -> dict[int, tuple[float, float]]:
    """{cpu: (busy seconds, steal seconds)} from /proc/stat (busy = everything but idle/iowait/steal)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *v = line.split()
                    v = [int(x) for x in v[:8]] + [0] * (8 - len(v[:8]))
                    user, nice, system, idle, iowait, irq, softirq, steal = v
                    out[int(name[3:])] = ((user + nice + system + irq + softirq) / tick, steal / tick)
    except OSError:
        pass
    return out


def _single_core(affinity: str) -> int | None:
    return int(affinity) if affinity.isdigit() else None


def sched_wait_s(pids) -> float:
    """Thread-seconds the threads of `pids` spent runnable but waiting for a CPU
    (/proc/<pid>/task/*/schedstat, field 2): behind other processes, or behind each other on a
    pinned core (grpc's threads queue behind the event loop thread)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return total / 1e9


async def probe(driver, server: Server | None, timeout_s: float) -> float:
    """One real request, retried until it succeeds; raises with the last error when it never does."""
    t0 = _now()
    call = driver.caller(0)
    last = None
    while True:
        if server is not None and not server.alive():
            raise RuntimeError(f"server exited before answering; log tail:\n{server.log_tail()}")
        try:
            await asyncio.wait_for(call(), 5.0)
            return _now() - t0
        except Exception as exc:   # not ready yet, or misconfigured: retry until the deadline
            last = exc
        if _now() - t0 > timeout_s:
            raise RuntimeError(f"no good answer from {driver.target} within {timeout_s:.0f} s; last error "
                               f"{error_name(last)}: {last}")
        await asyncio.sleep(0.2)


async def run(spec: LoadSpec, server: Server | None) -> dict:
    if spec.mode == "open" and not spec.rate:
        raise ValueError("open loop needs --rate")
    drv = DRIVERS[spec.target](server.host, server.port, connections=spec.connections, stream=spec.stream,
                               model=spec.model, expect=spec.expect, timeout=spec.timeout,
                               concurrency=spec.concurrency, quic_streams=spec.quic_streams,
                               http_client=spec.http_client)
    await drv.open()
    try:
        probe_s = await probe(drv, server, spec.probe_timeout)
        result = await _run(spec, drv, server)
        result["probe_s"] = round(probe_s, 3)
        return result
    finally:
        await drv.close()


async def _run(spec: LoadSpec, drv, server: Server | None) -> dict:
    loop = asyncio.get_running_loop()
    pids = procfs.tree_pids(server.pid) if server is not None and server.pid else []
    w = _Window()
    st = {"sent": 0, "done": 0, "err": 0, "dropped": 0, "outstanding": 0}
    marks: dict = {}
    t0 = _now()
    t_start = t0 + spec.warmup
    t_end = t_start + spec.duration
    label = spec.label or spec.target
    stop_early: list[str] = []

    me = [os.getpid()]

    def mark(name: str) -> None:
        marks[name] = (_now(), _tree_cpu(pids), time.process_time(), sched_wait_s(pids), sched_wait_s(me),
                       core_times())

    async def marker() -> None:
        if spec.warmup > 0:
            await asyncio.sleep(max(0.0, t_start - _now()))
        mark("start")
        await asyncio.sleep(max(0.0, t_end - _now()))
        mark("end")

    async def ticker() -> None:
        last_done, last_t = 0, t0
        while True:
            await asyncio.sleep(1.0)
            t = _now()
            if server is not None and not stop_early and not server.alive():
                stop_early.append("server exited during the run")
            if spec.progress:
                phase = "warmup " if t < t_start else ("measure" if t < t_end else "drain  ")
                rate = (st["done"] - last_done) / (t - last_t)
                extra = f" dropped {st['dropped']}" if spec.mode == "open" else ""
                print(f"  [{label}] {t - t0:6.1f}s {phase} sent {st['sent']} done {st['done']} "
                      f"err {st['err']}{extra} inflight {st['outstanding']} {rate:,.0f} req/s",
                      file=sys.stderr, flush=True)
            last_done, last_t = st["done"], t

    def record(ts: float, te: float, res, exc) -> None:
        if exc is None:
            w.ok += 1
            w.lat.record((te - ts) * 1e6)
            ov, first = res
            if ov is not None:
                w.overhead.record(ov)
            if first is not None:
                w.ttft.record((first - ts) * 1e6)
        else:
            w.fail(exc)

    tasks: set = set()
    if spec.mode == "closed":
        async def worker(i: int) -> None:
            call = drv.caller(i)
            while not stop_early:
                ts = _now()
                if ts >= t_end:
                    return
                st["sent"] += 1
                st["outstanding"] += 1
                exc = res = None
                try:
                    res = await call()
                except Exception as e:
                    exc = e
                te = _now()
                st["outstanding"] -= 1
                st["done"] += 1
                if exc is not None:
                    st["err"] += 1
                if ts >= t_start:
                    w.sent += 1
                    record(ts, te, res, exc)
                if exc is not None:
                    await asyncio.sleep(0.001)    # a failing server must not turn this into a spin

        load = [loop.create_task(worker(i)) for i in range(spec.concurrency)]
    else:
        interval = 1.0 / spec.rate
        callers = [drv.caller(j) for j in range(max(spec.connections, 1))]
        ncallers = len(callers)

        async def one(ts: float, call, measured: bool) -> None:
            t_send = _now()
            exc = res = None
            try:
                res = await call()
            except Exception as e:
                exc = e
            te = _now()
            st["outstanding"] -= 1
            st["done"] += 1
            if exc is not None:
                st["err"] += 1
            if measured:
                w.lag.record((t_send - ts) * 1e6)
                if exc is None:
                    w.service.record((te - t_send) * 1e6)
                record(ts, te, res, exc)

        timer = PreciseTimer(loop) if spec.timer == "thread" else LoopTimer(loop)
        finished = loop.create_future()
        nxt_i = [0]

        def launch() -> None:
            """Start every arrival that is due (t_i <= now), then arm the timer for the next one."""
            if finished.done():
                return
            i, tn = nxt_i[0], _now()
            while True:
                ti = t0 + i * interval
                if ti > tn or ti >= t_end:
                    break
                measured = ti >= t_start
                if st["outstanding"] >= spec.concurrency:
                    st["dropped"] += 1
                    if measured:
                        w.dropped += 1
                else:
                    st["outstanding"] += 1
                    st["sent"] += 1
                    if measured:
                        w.sent += 1
                    task = loop.create_task(one(ti, callers[i % ncallers], measured))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                i += 1
            nxt_i[0] = i
            nxt = t0 + i * interval
            if nxt >= t_end or stop_early:
                finished.set_result(None)
            else:
                timer.call_at(nxt, launch)

        async def scheduler() -> None:
            launch()
            try:
                await finished
            finally:
                timer.close()

        load = [loop.create_task(scheduler())]

    mark_task = loop.create_task(marker())
    tick_task = loop.create_task(ticker())
    try:
        done, pending = await asyncio.wait(load, timeout=spec.warmup + spec.duration + spec.timeout + 5)
        if "end" not in marks:
            mark("end")     # stopped early
        # Requests still running: give them the drain timeout, then they count as unfinished.
        still = [t for t in (*pending, *tasks) if not t.done()]
        if still:
            _, late = await asyncio.wait(still, timeout=spec.timeout + 1)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
                w.errors["UNFINISHED"] = w.errors.get("UNFINISHED", 0) + len(late)
    finally:
        mark_task.cancel()
        tick_task.cancel()
        for t in load:
            t.cancel()
    if "start" not in marks:
        marks["start"] = marks["end"]
    return _result(spec, w, marks, server, pids, stop_early)


def _r(x, nd=1):
    return None if x is None else round(x, nd)


def _result(spec: LoadSpec, w: _Window, marks: dict, server: Server | None, pids: list[int],
            stop_early: list[str]) -> dict:
    (ts, scpu0, ccpu0, swait0, cwait0, cores0), (te, scpu1, ccpu1, swait1, cwait1, cores1) = \
        marks["start"], marks["end"]

    def foreign(core: int | None, own_cpu: float) -> tuple[float | None, float | None]:
        """Share of the window `core` was busy with something other than `own_cpu`, and its steal share."""
        if core is None or core not in cores0 or core not in cores1:
            return None, None
        busy = cores1[core][0] - cores0[core][0]
        steal = cores1[core][1] - cores0[core][1]
        return round(max(0.0, busy - own_cpu) / window, 3), round(steal / window, 3)

    window = max(te - ts, 1e-9)
    nerr = sum(w.errors.values())
    requests = w.ok + nerr
    srv: dict = {"accounted": bool(pids)}
    if pids:
        after = procfs.sample(pids)
        cpu = max(0.0, scpu1 - scpu0)
        srv.update(pid=server.pid, pids=list(after.pids) or pids, affinity=procfs.affinity(server.pid),
                   cpu_s=round(cpu, 4), cpu_us_per_req=_r(cpu * 1e6 / w.ok if w.ok else None),
                   core_util=round(cpu / window, 3), peak_rss_mb=round(after.hwm_kb / 1024, 1),
                   rss_mb=round(after.rss_kb / 1024, 1),
                   runqueue_wait_share=round(max(0.0, swait1 - swait0) / window, 3))
        srv["core_foreign_share"], srv["core_steal_share"] = foreign(_single_core(srv["affinity"]), cpu)
    ccpu = max(0.0, ccpu1 - ccpu0)
    client = {"cpu_s": round(ccpu, 4), "cpu_us_per_req": _r(ccpu * 1e6 / w.ok if w.ok else None),
              "core_util": round(ccpu / window, 3), "affinity": ",".join(map(str, sorted(os.sched_getaffinity(0)))),
              "runqueue_wait_share": round(max(0.0, cwait1 - cwait0) / window, 3)}
    client["core_foreign_share"], client["core_steal_share"] = foreign(_single_core(client["affinity"]), ccpu)
    out = {
        "target": spec.target, "mode": spec.mode, "stream": spec.stream,
        "concurrency": spec.concurrency, "rate": spec.rate, "connections": spec.connections,
        "model": spec.model, "duration_s": round(window, 3), "warmup_s": spec.warmup,
        "requests": requests, "ok": w.ok, "errors": w.errors, "error_count": nerr,
        "error_samples": w.error_samples, "sent": w.sent, "dropped": w.dropped,
        "achieved_rps": round(w.ok / window, 1),
        "offered_rps": spec.rate if spec.mode == "open" else None,
        "latency_us": w.lat.summary(),
        "gateway_overhead_us": w.overhead.summary() if w.overhead.n else None,
        "ttft_us": w.ttft.summary() if w.ttft.n else None,
        "send_lag_us": w.lag.summary() if w.lag.n else None,
        "service_latency_us": w.service.summary() if w.service.n else None,
        "server": srv, "client": client,
        "stopped_early": stop_early[0] if stop_early else None,
        "histogram": w.lat.to_json(),
    }
    return out

"""`python -m bench chaos`: under steady load, kill -9 a provider, a router, a worker and Redis in
turn (and inject latency and loss with `tc netem` where the kernel has it); report requests lost,
errors clients saw and time to recover, and check that every request acknowledged as complete is
in the edge router's audit log.

Each phase runs real processes (`atp serve`, an OpenAI-compatible upstream, `redis-server`) on
loopback, drives HTTP load from CONCURRENCY keep-alive clients, kills its victim with SIGKILL
half-way, keeps the load on for the rest of the phase, then stops the edge router with SIGTERM
(it drains and commits its audit rows) and reads its audit database back:

  provider  the edge serves `m` from two upstream processes (two models, one routed chain);
            kill -9 one upstream: the dispatch fails over to the other model.
  router    edge A forwards `m` to B (cheaper) or C over AGP; kill -9 B: A moves to C.
  router-hang  the same, but B is frozen (SIGSTOP): no reset, A notices by its timers alone
            (the hop session's 3 s idle timeout, AGP's 3 s hold time).
  worker    `atp serve --workers 2` on shared ports; kill -9 one worker.
  redis     the edge keeps its rate-limit counters in Redis (limits_on_error = open);
            kill -9 redis-server, restart it on the same port half a phase later.
  netem     20 ms delay, 1% loss on lo for a phase (needs the sch_netem module and CAP_NET_ADMIN).

lost = sent, never answered (client timeout); errors = answered with an error or a reset
connection; recover = from the kill to the last client-visible error (0: none; -1: never, no
request succeeded after it).
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HELP = "kill -9 a provider, a router, a worker and Redis under load; lost, errors, recovery, audit"
PHASES = ("provider", "router", "router-hang", "worker", "redis", "netem")
CONCURRENCY = 8
# A request unanswered after this long is lost (the simulated answers take milliseconds).
CLIENT_TIMEOUT_S = 10.0
# How long a started process may take to say it is serving (numba warm-up on a loaded machine).
START_TIMEOUT_S = 60.0
KEY = "sk-atp-dev"
PEER_KEY_ID = 9
PEER_SECRET = "federation-peer-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- processes -----------------------------------------------------------------------------------

class Proc:
    """A child process whose output is read line by line on a thread; `ready(marker, n)` waits
    for the n-th line holding `marker` — an event from the process itself, not a sleep."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        self.name = name
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, text=True, bufsize=1,
                                  start_new_session=True)
        self.lines: list[str] = []
        self.stamped: list[tuple[float, str]] = []   # (monotonic arrival, line) of notable lines
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._news = asyncio.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self._loop.call_soon_threadsafe(self._line, line)
        self._loop.call_soon_threadsafe(self._line, None)

    def _line(self, line) -> None:
        if line is None:
            self.ended = True
        else:
            self.lines.append(line)
            del self.lines[:-2000]       # bounded: a chatty process cannot grow this
            if "federation" in line and len(self.stamped) < 2000:
                self.stamped.append((time.monotonic(), line))
        self._news.set()

    async def ready(self, marker: str, n: int = 1) -> None:
        deadline = self._loop.time() + START_TIMEOUT_S
        while sum(marker in x for x in self.lines) < n:
            if self.ended:
                raise RuntimeError(f"{self.name} exited before {marker!r}:\n"
                                   + "".join(self.lines[-20:]))
            self._news.clear()
            await asyncio.wait_for(self._news.wait(), max(0.1, deadline - self._loop.time()))

    def kill9(self, pid: int | None = None) -> None:
        os.kill(pid or self.p.pid, signal.SIGKILL)

    async def stop(self, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.p.wait, timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


def atp(name: str, config: Path, *extra: str) -> Proc:
    return Proc(name, [sys.executable, "-m", "atp_server", "serve", "--config", str(config),
                       "--no-quic", "--no-access-log", *extra])


def upstream(name: str, port: int) -> Proc:
    return Proc(name, [sys.executable, "-m", "bench.chaos", "upstream", str(port)])


def serve_upstream(port: int) -> None:
    """A minimal OpenAI-compatible upstream (non-streaming chat completions) for the provider phase."""
    from aiohttp import web

    async def chat(request):
        body = await request.json()
        return web.json_response({
            "id": "chatcmpl-chaos", "object": "chat.completion", "created": 0,
            "model": body.get("model", "m"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

    from .peers.common import serve_post
    asyncio.run(serve_post(port, "/v1/chat/completions", chat, "upstream ready"))


# ---- configurations ----------------------------------------------------------------------------------

def _auth(hmac: bool = True) -> str:
    from atp_server.config import dev_auth_toml
    return dev_auth_toml("dev", hmac=hmac)


def _server(d: Path, http: int, grpc: int, audit: bool = True) -> str:
    return (f'[server]\nstate_dir = "{d}"\nhttp_port = {http}\ngrpc_port = {grpc}\nquic_port = 0\n'
            + ("" if audit else "[audit]\nenabled = false\n"))


SIM = '[[providers]]\nname = "sim"\ntype = "simulated"\noutput_tokens = 4\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- load ------------------------------------------------------------------------------------------

@dataclass
class Report:
    phase: str
    victim: str = ""
    sent: int = 0
    ok: int = 0
    errors: int = 0
    lost: int = 0
    recover_ms: float = 0.0               # kill -> last client-visible error; -1: never recovered
    missing_from_audit: int = -1          # -1: not checked
    convergence_ms: float = -1.0          # router phases: kill -> the edge withdrew the victim
    slowest_ms: float = 0.0               # the slowest answered request (a failover's cost)
    note: str = ""
    error_kinds: dict = field(default_factory=dict)


class Load:
    """CONCURRENCY clients posting chat completions to `url` until stopped; every answer counted."""

    def __init__(self, url: str, model: str, phase: str):
        self.url, self.model, self.phase = url, model, phase
        self.acked: list[str] = []               # request ids answered 200 (complete)
        self.acked_at: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.lost = 0
        self.killed_at: float | None = None
        self.slowest = 0.0
        self.sent = 0
        self._stop = asyncio.Event()
        self._n = 0

    async def _client(self, session) -> None:
        import aiohttp
        while not self._stop.is_set():
            self._n += 1
            rid = f"chaos-{self.phase}-{os.getpid()}-{self._n}"
            self.sent += 1
            t0 = time.monotonic()
            try:
                async with session.post(self.url, headers={"Authorization": f"Bearer {KEY}",
                                                           "X-Request-Id": rid},
                                        json={"model": self.model, "messages": [
                                            {"role": "user", "content": "chaos"}]}) as r:
                    await r.read()
                    if r.status == 200:
                        self.acked.append(rid)
                        self.acked_at.append(time.monotonic())
                        self.slowest = max(self.slowest, time.monotonic() - t0)
                    else:
                        self.errors.append((time.monotonic(), f"HTTP {r.status}"))
            except asyncio.TimeoutError:
                self.lost += 1
            except aiohttp.ClientError as exc:
                self.errors.append((time.monotonic(), type(exc).__name__))

    async def run_until(self, stop: asyncio.Event) -> None:
        import aiohttp
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.create_task(self._client(session)) for _ in range(CONCURRENCY)]
            await stop.wait()
            self._stop.set()
            await asyncio.gather(*tasks)

    def report(self, phase: str, victim: str, killed_at: float | None) -> Report:
        kinds: dict = {}
        for _, k in self.errors:
            kinds[k] = kinds.get(k, 0) + 1
        last = max((t for t, _ in self.errors), default=None)
        recover = (last - killed_at) * 1000 if last is not None and killed_at is not None else 0.0
        if last is not None and not any(t > last for t in self.acked_at):
            recover = -1.0               # nothing succeeded after the last error
        return Report(phase, victim, self.sent, len(self.acked), len(self.errors), self.lost,
                      round(max(0.0, recover), 1) if recover >= 0 else -1.0, error_kinds=kinds,
                      slowest_ms=round(self.slowest * 1000, 1))


async def under_load(url: str, model: str, phase: str, seconds: float, victim: str, kill,
                     after_kill=None) -> tuple[Report, Load]:
    """Load for `seconds`; `kill()` at the half; `after_kill()` (a coroutine) a quarter later."""
    load, stop = Load(url, model, phase), asyncio.Event()
    runner = asyncio.create_task(load.run_until(stop))
    await asyncio.sleep(seconds / 2)        # the phase's schedule, not a synchronisation
    killed_at = time.monotonic()
    kill()
    if after_kill is not None:
        await asyncio.sleep(seconds / 4)
        await after_kill()
        await asyncio.sleep(seconds / 4)
    else:
        await asyncio.sleep(seconds / 2)
    stop.set()
    await runner
    load.killed_at = killed_at
    return load.report(phase, victim, killed_at), load


def convergence(edge: Proc, killed_at: float, victim: str) -> float:
    """ms from the kill to the edge's log saying it dropped the victim's session (and routes)."""
    for at, line in edge.stamped:
        if at >= killed_at and "peer_down" in line and f"peer={victim}" in line:
            return round((at - killed_at) * 1000, 1)
    return -1.0


def audit_missing(db: Path, acked: list[str]) -> int:
    """How many acknowledged request ids the audit log lacks (after the router stopped)."""
    from atp_server.audit.reader import open_readonly
    con = open_readonly(db)
    try:
        have = {r[0] for r in con.execute("SELECT request_id FROM audit")}
    finally:
        con.close()
    return sum(1 for rid in acked if rid not in have)


# ---- phases ----------------------------------------------------------------------------------------

async def phase_provider(d: Path, seconds: float) -> Report:
    p1, p2, http, grpc = free_port(), free_port(), free_port(), free_port()
    cfg = write(d / "edge.toml", _server(d / "edge", http, grpc) + _auth() + "".join(
        f'[[providers]]\nname = "up{i}"\ntype = "openai_compat"\nbase_url = "http://127.0.0.1:{p}/v1"\n'
        f'timeout_s = 2.0\n[[models]]\nid = "m{i}"\nprovider = "up{i}"\nupstream = "m"\n'
        f'price_in_per_mtok = {i}.0\nprice_out_per_mtok = {i}.0\nquality = 0.9\n'
        for i, p in ((1, p1), (2, p2))) + '[aliases]\nm = ["m1", "m2"]\n')
    ups = [upstream("up1", p1), upstream("up2", p2)]
    edge = atp("edge", cfg)
    try:
        for u in ups:
            await u.ready("upstream ready")
        await edge.ready("ATP serving")
        rep, load = await under_load(f"http://127.0.0.1:{http}/v1/chat/completions", "m",
                                     "provider", seconds, "upstream up1 (model m1)", ups[0].kill9)
    finally:
        await edge.stop()
        for u in ups:
            await u.stop()
    rep.missing_from_audit = audit_missing(d / "edge" / "audit.sqlite", load.acked)
    return rep


async def phase_router(d: Path, seconds: float, hang: bool = False) -> Report:
    from atp_server.federation.config import load_key, public_b64
    names = ("A", "B", "C")
    ports = {n: (free_port(), free_port(), free_port()) for n in names}   # http, grpc, agp
    pubs = {n: public_b64(load_key(d / n / "agp_key.pem")) for n in names}
    links = (("A", "B"), ("A", "C"))
    models = {"A": "", "B": '[[models]]\nid = "m"\nprovider = "sim"\nprice_in_per_mtok = 1.0\n',
              "C": '[[models]]\nid = "m"\nprovider = "sim"\nprice_in_per_mtok = 2.0\n'}
    procs = {}
    for n in names:
        http, grpc, agp = ports[n]
        text = (_server(d / n, http, grpc) + _auth() +
                f'[[auth.hmac_keys]]\nid = {PEER_KEY_ID}\nsecret = "{PEER_SECRET}"\ntenant = "peers"\n'
                + SIM + f'[[models]]\nid = "local-{n}"\nprovider = "sim"\n' + models[n]
                + f'[federation]\nrouter_id = "{n}"\nlisten = "127.0.0.1:{agp}"\n')
        for a, b in links:
            if a == n:
                text += f'[[federation.peers]]\naddress = "127.0.0.1:{ports[b][2]}"\nrouter_id = "{b}"\n'
            if n in (a, b):
                o = b if a == n else a
                text += (f'[[federation.forward]]\nrouter_id = "{o}"\naddress = "127.0.0.1:{ports[o][1]}"\n'
                         f'key_id = {PEER_KEY_ID}\nsecret = "{PEER_SECRET}"\n')
        text += "".join(f'[[federation.trust]]\nrouter_id = "{r}"\npublic_key = "{k}"\n'
                        for r, k in pubs.items())
        procs[n] = atp(n, write(d / f"{n}.toml", text), "--log-level", "info")
    try:
        for n in ("B", "C", "A"):
            await procs[n].ready("ATP serving")
        # A knows `m` once it logs its best route; wait for that line (B's: cheaper)
        await procs["A"].ready("best_changed model=m via=B")
        victim = procs["B"]
        stop = ((lambda: os.kill(victim.p.pid, signal.SIGSTOP)) if hang else victim.kill9)
        rep, load = await under_load(f"http://127.0.0.1:{ports['A'][0]}/v1/chat/completions", "m",
                                     "router-hang" if hang else "router", seconds,
                                     "router B " + ("stopped (SIGSTOP: silent, no reset)" if hang
                                                    else "(best route for m)"), stop)
        rep.convergence_ms = convergence(procs["A"], load.killed_at, "B")
    finally:
        if hang and victim.p.poll() is None:
            os.kill(victim.p.pid, signal.SIGKILL)
        for p in procs.values():
            await p.stop()
    rep.missing_from_audit = audit_missing(d / "A" / "audit.sqlite", load.acked)
    return rep


async def phase_worker(d: Path, seconds: float) -> Report:
    http, grpc = free_port(), free_port()
    cfg = write(d / "workers.toml", _server(d / "w", http, grpc) + _auth(hmac=False) + SIM
                + '[[models]]\nid = "m"\nprovider = "sim"\n')
    edge = atp("workers", cfg, "--workers", "2", "--no-grpc")
    try:
        await edge.ready("ATP serving", 2)
        line = next(x for x in edge.lines if "2 workers:" in x)
        victim = int(line.rsplit(":", 1)[1].split(",")[0])
        rep, load = await under_load(f"http://127.0.0.1:{http}/v1/chat/completions", "m",
                                     "worker", seconds, f"worker pid {victim}",
                                     lambda: os.kill(victim, signal.SIGKILL))
        if edge.p.poll() is not None:
            rep.note = ("the master stopped every worker when one died (no respawn): "
                        "atp_server/cli.py _serve_workers")
    finally:
        await edge.stop()
    rep.missing_from_audit = audit_missing(d / "w" / "audit.sqlite", load.acked)
    return rep


async def phase_redis(d: Path, seconds: float) -> Report:
    server = shutil.which("redis-server")
    if server is None:
        return Report("redis", note="no redis-server on PATH: phase not run")
    rport, http, grpc = free_port(), free_port(), free_port()

    def start_redis() -> Proc:
        return Proc("redis", [server, "--port", str(rport), "--save", "", "--appendonly", "no",
                              "--bind", "127.0.0.1"])
    cfg = write(d / "redis-edge.toml", _server(d / "r", http, grpc) + _auth() + SIM
                + '[[models]]\nid = "m"\nprovider = "sim"\n'
                + f'[state]\nredis_url = "redis://127.0.0.1:{rport}/0"\nlimits_on_error = "open"\n'
                + '[[limits]]\nname = "rpm"\nrequests_per_min = 10000000\n')
    holder = {"redis": start_redis()}
    await holder["redis"].ready("Ready to accept connections")
    edge = atp("redis-edge", cfg)

    async def restart():
        holder["redis"] = start_redis()
        await holder["redis"].ready("Ready to accept connections")
    try:
        await edge.ready("ATP serving")
        rep, load = await under_load(f"http://127.0.0.1:{http}/v1/chat/completions", "m", "redis",
                                     seconds, "redis-server (rate-limit counters)",
                                     holder["redis"].kill9, restart)
    finally:
        await edge.stop()
        await holder["redis"].stop()
    rep.missing_from_audit = audit_missing(d / "r" / "audit.sqlite", load.acked)
    return rep


async def phase_netem(d: Path, seconds: float) -> Report:
    tc = shutil.which("tc")
    if tc is None:
        return Report("netem", note="no `tc` on PATH: phase not run")
    add = subprocess.run([tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "20ms",
                          "loss", "1%"], capture_output=True, text=True)
    if add.returncode != 0:
        return Report("netem", note=f"tc netem unavailable ({add.stderr.strip()}): phase not run")
    try:
        http, grpc = free_port(), free_port()
        cfg = write(d / "netem.toml", _server(d / "n", http, grpc) + _auth() + SIM
                    + '[[models]]\nid = "m"\nprovider = "sim"\n')
        edge = atp("netem-edge", cfg)
        try:
            await edge.ready("ATP serving")
            rep, load = await under_load(f"http://127.0.0.1:{http}/v1/chat/completions", "m",
                                         "netem", seconds, "lo: 20 ms delay, 1% loss", lambda: None)
        finally:
            await edge.stop()
        rep.missing_from_audit = audit_missing(d / "n" / "audit.sqlite", load.acked)
        return rep
    finally:
        subprocess.run([tc, "qdisc", "del", "dev", "lo", "root"], capture_output=True)


async def phase_router_hang(d: Path, seconds: float) -> Report:
    return await phase_router(d, seconds, hang=True)


RUNNERS = {"provider": phase_provider, "router": phase_router, "router-hang": phase_router_hang,
           "worker": phase_worker,
           "redis": phase_redis, "netem": phase_netem}


async def run(phases, seconds: float, workdir: Path) -> list[Report]:
    out = []
    for name in phases:
        out.append(await RUNNERS[name](workdir / name, seconds))
    return out


def table(reports: list[Report]) -> str:
    rows = ["| phase | victim | sent | ok | errors | lost | recover ms | convergence ms "
            "| slowest ok ms | missing from audit | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        kinds = ", ".join(f"{k} {v}" for k, v in r.error_kinds.items())
        rows.append(f"| {r.phase} | {r.victim} | {r.sent} | {r.ok} | {r.errors}"
                    f"{f' ({kinds})' if kinds else ''} | {r.lost} | "
                    f"{'never' if r.recover_ms < 0 else f'{r.recover_ms:g}'} | "
                    f"{r.convergence_ms if r.convergence_ms >= 0 else '-'} | {r.slowest_ms:g} | "
                    f"{r.missing_from_audit if r.missing_from_audit >= 0 else '-'} | {r.note} |")
    return "\n".join(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=6.0, help="length of each phase (default 6)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated, in order (default {','.join(PHASES)})")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--workdir", help="where configs, state and audit logs go (default: a temp dir)")


def main(args) -> int:
    phases = [x for x in args.phases.split(",") if x]
    bad = [x for x in phases if x not in RUNNERS]
    if bad:
        print(f"chaos: unknown phase {bad[0]!r} (known: {', '.join(PHASES)})", file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="atp-chaos-"))
    reports = asyncio.run(run(phases, args.seconds, workdir))
    print(json.dumps([asdict(r) for r in reports], indent=1) if args.json else table(reports))
    # acknowledged-complete requests missing from the audit log fail the run
    return 1 if any(r.missing_from_audit > 0 for r in reports) else 0


if __name__ == "__main__" and sys.argv[1:2] == ["upstream"]:
    serve_upstream(int(sys.argv[2]))

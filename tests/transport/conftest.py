"""Real-socket server fixtures: the full App on a uvloop event loop in a background thread.

The loop runs the way `atp serve` runs it (uvloop), in its own thread, so sync clients, async
clients on their own loop (`asyncio.run`) and subprocesses (node) can all talk to it over loopback.

Fixtures:
  atp_server    session-scoped ServerHarness: every transport (grpc, http, quic) on free loopback
                ports. A transport that fails to import or to start is an error for every test
                using the fixture, never a skip: a broken transport must not leave CI green. Beside the embedded default models (sim-fast,
                sim-balanced, sim-high) it serves `sim-slow` (provider "slow": 50 tokens/s, 200
                tokens, ~4 s per answer) for cancellation tests. sim-slow costs and latency-priors
                like sim-high with far lower quality, so it is never the router's first choice and
                the default models' routing is unchanged; pin it with model="sim-slow".
  start_server  factory for a dedicated server with other settings, stopped at teardown:
                start_server(max_inflight=1, max_queue=0, http=False, extra_toml=...)
                (keyword server settings override [server]; extra_toml adds providers/models).

ServerHarness: .app, .ports (.grpc/.http/.quic; 0 = not started), .grpc_target, .run(coro) runs a
coroutine on the server loop and returns its result, .outcome(request_id) blocks until the
pipeline finished that request and returns (transport, outcome, code) — e.g. ("grpc", "CANCELLED",
505) — without sleeping, .wait_inflight(n) blocks until n requests hold a dispatch slot, and
.begin_stop(grace) starts App.stop and returns (a future of its end) once draining has begun.
"""
import asyncio
import concurrent.futures
import dataclasses
import threading

import pytest
import uvloop

from atp_server import config as atp_config
from atp_server.app import App

SLOW_TOML = """
[[providers]]
name = "slow"
type = "simulated"
latency_ms = 0
tokens_per_s = 50
output_tokens = 200

[[models]]
id = "sim-slow"
provider = "slow"
price_in_per_mtok = 3.00
price_out_per_mtok = 15.00
quality = 0.05
latency_ms = 900
context_window = 8192
"""

TRANSPORTS = ("grpc", "http", "quic")


def server_config(state_dir, extra_toml: str = "", **server_overrides) -> atp_config.Config:
    """The embedded default + sim-slow (+ extra_toml: more [[providers]]/[[models]]), every port 0
    (a free port), state (generated certificates) in state_dir."""
    cfg = atp_config.loads(atp_config.DEFAULT_TOML + SLOW_TOML + extra_toml)
    server = dataclasses.replace(cfg.server, http_port=0, grpc_port=0, quic_port=0,
                                 state_dir=str(state_dir), **server_overrides)
    return dataclasses.replace(cfg, server=server)




class ServerHarness:
    def __init__(self, config, audit_path: str):
        self.config = config
        self.audit_path = audit_path
        self.app: App | None = None
        self._outcomes: dict[str, tuple] = {}
        self._cond = threading.Condition()
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="atp-test-server", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float = 60):
        """Run a coroutine on the server's loop (from any other thread) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def ports(self):
        return self.app.ports

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.app.ports.grpc}"

    async def _start_app(self, enabled: dict) -> App:
        app = App(self.config, audit_path=self.audit_path)

        def spy(request_id, transport, outcome, code):
            with self._cond:
                self._outcomes[request_id] = (transport, outcome, code)
                self._cond.notify_all()
        app.pipeline.observers.append(spy)
        acquire = app.admission.acquire

        async def acquire_and_tell(*args):   # wakes wait_inflight() (no polling across threads)
            await acquire(*args)
            with self._cond:
                self._cond.notify_all()
        app.admission.acquire = acquire_and_tell
        try:
            await app.start(**enabled)
        except BaseException:
            await app.stop(0)
            raise
        return app

    def start(self, **only) -> "ServerHarness":
        enabled = {name: only.get(name, True) for name in TRANSPORTS}
        try:
            self.app = self.run(self._start_app(enabled))
        except BaseException:
            self.close()
            raise
        return self

    def outcome(self, request_id: str, timeout: float = 15.0) -> tuple:
        """Block until the pipeline finished `request_id`; (transport, outcome, code)."""
        with self._cond:
            if not self._cond.wait_for(lambda: request_id in self._outcomes, timeout):
                raise TimeoutError(f"request {request_id!r} did not finish within {timeout}s")
            return self._outcomes[request_id]

    def wait_inflight(self, n: int, timeout: float = 15.0) -> None:
        """Block until at least `n` requests hold a dispatch slot (admitted, not yet finished)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.app.admission.inflight >= n, timeout):
                raise TimeoutError(f"{n} requests were not in flight within {timeout}s")

    def begin_stop(self, grace_s: float) -> concurrent.futures.Future:
        """Start App.stop(grace_s) on the server loop; return once it is draining, with a future
        that completes when the stop does. The caller must then set `.app = None`."""
        begun = threading.Event()
        app = self.app

        async def stop():
            task = asyncio.ensure_future(app.stop(grace_s))
            await asyncio.sleep(0)   # one loop pass: the task's first step sets app.draining
            begun.set()              # (App.stop flags draining before its first await)
            await task
        done = asyncio.run_coroutine_threadsafe(stop(), self.loop)
        if not begun.wait(15):
            raise TimeoutError("App.stop did not begin")
        assert app.draining
        return done

    def stop(self, grace_s: float = 0.5) -> None:
        if self.app is not None:
            app, self.app = self.app, None
            self.run(app.stop(grace_s))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def atp_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("atp-server")
    harness = ServerHarness(server_config(d), str(d / "audit.sqlite")).start()
    yield harness
    harness.stop()
    harness.close()


@pytest.fixture
def start_server(tmp_path):
    started = []

    def start(*, grpc: bool = True, http: bool = True, quic: bool = True, extra_toml: str = "",
              **server_overrides):
        d = tmp_path / f"server{len(started)}"
        d.mkdir()
        harness = ServerHarness(server_config(d, extra_toml, **server_overrides),
                                str(d / "audit.sqlite"))
        started.append(harness)
        return harness.start(grpc=grpc, http=http, quic=quic)
    yield start
    for harness in started:
        try:
            harness.stop()
        finally:
            harness.close()

"""The pipeline feeds the breakers: only upstream faults count, the half-open probe is released
whatever happens to it (cancel included), an outage is a retryable UNAVAILABLE, and metric labels
come from configuration only. Time is an injected clock; waits are events, never sleeps."""
import asyncio

import pytest

from atp_server.app import App
from atp_server.dispatch import DispatchConfig
from atp_server.types import AtpError, ChatRequest, Delta, Finish, TextDelta
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Scripted:
    """An adapter whose next answer the test picks: ok, an AtpError code, a bug, or hang (the call
    then waits on `release` and sets `entered` so the test can cancel it mid-call)."""

    name = "sim"
    capabilities = frozenset({"chat", "vision"})

    def __init__(self):
        self.mode: object = "ok"
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def _before(self):
        self.calls += 1
        mode = self.mode
        if mode == "hang":
            self.entered.set()
            await self.release.wait()
        elif mode == "bug":
            raise RuntimeError("adapter bug")
        elif isinstance(mode, ErrorCode):
            raise AtpError(mode, f"scripted {mode.name}")

    async def stream(self, model, request):
        await self._before()
        yield TextDelta("hello", 1)
        if self.mode == "hang-after-token":
            self.entered.set()
            await self.release.wait()
        yield Finish("stop", 1, 1)

    async def aclose(self):
        return None


def build(tmp_path):
    app = App(make_config(tmp_path))
    # Far from any real time.monotonic(): a stage still reading the real clock fails every test.
    clock = app.pipeline.clock = Clock(10_000_000.0)
    adapter = app.adapters["sim"] = Scripted()
    app.pipeline.sleep = _no_backoff   # retries of a pinned model back off on the test's terms
    return app, clock, adapter


async def _no_backoff(seconds: float) -> None:
    return None


async def complete(app, model="cheap", **kw):
    return await app.pipeline.complete(ChatRequest([("user", "x")], model=model, **kw), PRINCIPAL, "t")


async def stream(app, model="cheap", **kw):
    return [i async for i in app.pipeline.stream(ChatRequest([("user", "x")], model=model, **kw),
                                                 PRINCIPAL, "t")]


async def refused(app, adapter, model="cheap") -> AtpError:
    """The error a pinned request gets without anything being sent upstream (circuit open)."""
    calls = adapter.calls
    with pytest.raises(AtpError) as info:
        await complete(app, model)
    assert adapter.calls == calls, "the request reached the upstream"
    return info.value


async def trip(app, adapter, model="cheap"):
    adapter.mode = ErrorCode.UPSTREAM_ERROR
    for _ in range(app.router.health.threshold):
        with pytest.raises(AtpError):
            await complete(app, model)
    await refused(app, adapter, model)


def after_cooldown(app, clock):
    clock.now += app.router.health.cooldown_s


# ---- item 1: the half-open probe is released whatever happens ------------------------------------

@pytest.mark.parametrize("how", ["cancel-complete", "cancel-stream", "close-stream-after-token"])
def test_a_cancelled_probe_does_not_exclude_the_model_forever(tmp_path, how):
    async def main():
        app, clock, adapter = build(tmp_path)
        await trip(app, adapter)
        after_cooldown(app, clock)
        adapter.mode = "hang-after-token" if how == "close-stream-after-token" else "hang"
        if how == "close-stream-after-token":
            gen = app.pipeline.stream(ChatRequest([("user", "x")], model="cheap"), PRINCIPAL, "t")
            async for item in gen:
                if type(item) is Delta:
                    break                       # the client leaves mid-answer
            await gen.aclose()                  # GeneratorExit through the probe's call
        else:
            task = asyncio.create_task(complete(app) if how == "cancel-complete" else stream(app))
            await adapter.entered.wait()        # the probe is out, waiting on the upstream
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        adapter.mode = "ok"
        clock.now += 1.0                        # t = cooldown + 1 s, far before any new cooldown
        answered = (await complete(app)).decision.model
        clock.now += 9000.0
        again = (await complete(app)).decision.model
        await app.stop(0)
        return answered, again, app.router.health.all_closed()
    answered, again, all_closed = asyncio.run(main())
    assert answered == again == "cheap"
    assert all_closed                           # and so the ranking cache is back on


@pytest.mark.parametrize("mode", [ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_MODEL, "bug"])
def test_a_probe_ending_in_a_non_upstream_error_is_released(tmp_path, mode):
    async def main():
        app, clock, adapter = build(tmp_path)
        await trip(app, adapter)
        after_cooldown(app, clock)
        adapter.mode = mode
        with pytest.raises(AtpError if mode != "bug" else RuntimeError):
            await complete(app)
        adapter.mode = "ok"
        answered = (await complete(app)).decision.model
        await app.stop(0)
        return answered, app.router.health.all_closed()
    assert asyncio.run(main()) == ("cheap", True)


def test_a_failed_probe_reopens_and_a_successful_one_closes(tmp_path):
    async def main():
        app, clock, adapter = build(tmp_path)
        await trip(app, adapter)
        after_cooldown(app, clock)
        with pytest.raises(AtpError):
            await complete(app)                 # still UPSTREAM_ERROR: the probe fails
        reopened = await refused(app, adapter)
        after_cooldown(app, clock)
        adapter.mode = "ok"
        items = await stream(app)
        await app.stop(0)
        return reopened, items, app.router.health.all_closed()
    reopened, items, closed = asyncio.run(main())
    assert reopened.retry_after_ms == 10_000 and closed and items[-1].usage


# ---- item 2: only upstream faults count -----------------------------------------------------------

@pytest.mark.parametrize("code", [ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_MODEL])
def test_one_clients_bad_requests_do_not_open_the_circuit_for_everyone(tmp_path, code):
    async def main():
        app, clock, adapter = build(tmp_path)
        adapter.mode = code                     # the upstream answers 400 (or 404 model) to this client
        for _ in range(app.router.health.threshold * 4):
            with pytest.raises(AtpError) as info:
                await complete(app)
            assert info.value.code == code
        closed = app.router.health.all_closed()
        adapter.mode = "ok"
        other = await app.pipeline.complete(ChatRequest([("user", "y")], model="cheap"),
                                            PRINCIPAL, "t")
        await app.stop(0)
        return closed, other
    closed, other = asyncio.run(main())
    assert closed and other.decision.model == "cheap"


def test_a_client_error_does_not_reset_the_upstream_fault_count_either(tmp_path):
    async def main():
        app, clock, adapter = build(tmp_path)
        app.pipeline.dispatch = DispatchConfig(max_attempts=1)   # one upstream call per request
        board = app.router.health
        for _ in range(board.threshold - 1):
            adapter.mode = ErrorCode.UPSTREAM_ERROR
            with pytest.raises(AtpError):
                await complete(app)
            adapter.mode = ErrorCode.INVALID_REQUEST
            with pytest.raises(AtpError):
                await complete(app)
        adapter.mode = ErrorCode.UPSTREAM_TIMEOUT
        with pytest.raises(AtpError):
            await complete(app)
        err = await refused(app, adapter)       # the threshold-th consecutive upstream fault
        await app.stop(0)
        return err
    assert asyncio.run(main()).code == ErrorCode.UNAVAILABLE


@pytest.mark.parametrize("code", [ErrorCode.UPSTREAM_ERROR, ErrorCode.UPSTREAM_TIMEOUT,
                                  ErrorCode.UPSTREAM_CUT, ErrorCode.RATE_LIMITED])
def test_upstream_faults_open_the_circuit(tmp_path, code):
    async def main():
        app, clock, adapter = build(tmp_path)
        adapter.mode = code
        for _ in range(app.router.health.threshold):
            with pytest.raises(AtpError):
                await stream(app)
        err = await refused(app, adapter)
        await app.stop(0)
        return err
    assert asyncio.run(main()).code == ErrorCode.UNAVAILABLE


# ---- item 3: an outage is a retryable UNAVAILABLE with retry_after_ms ---------------------------------

def test_pinned_model_with_open_circuit_is_retryable_unavailable(tmp_path):
    async def main():
        app, clock, adapter = build(tmp_path)
        await trip(app, adapter)
        clock.now += 4.0
        errors = []
        for call in (complete, stream):
            with pytest.raises(AtpError) as info:
                await call(app)
            errors.append(info.value)
        calls = adapter.calls
        await app.stop(0)
        return errors, calls, app.router.health.threshold
    errors, calls, threshold = asyncio.run(main())
    assert calls == threshold                   # nothing was sent upstream
    for err in errors:
        assert err.code == ErrorCode.UNAVAILABLE and err.retryable
        assert err.retry_after_ms == 6000       # cooldown 10 s, opened 4 s ago


def test_a_busy_probe_is_skipped_at_dispatch_not_doubled(tmp_path):
    """Two requests routed while half-open: the first to dispatch takes the probe; the second must
    not send a second trial call: pinned, it ends UNAVAILABLE; routed, it fails over."""
    async def main():
        app, clock, adapter = build(tmp_path)
        await trip(app, adapter)
        after_cooldown(app, clock)
        adapter.mode = "hang"
        first = app.pipeline.stream(ChatRequest([("user", "a")], model="cheap"), PRINCIPAL, "t")
        pinned = app.pipeline.stream(ChatRequest([("user", "b")], model="cheap"), PRINCIPAL, "t")
        routed = app.pipeline.stream(ChatRequest([("user", "c")], tier="fast"), PRINCIPAL, "t")
        routes = [(await g.__anext__()).decision.model for g in (first, pinned, routed)]
        probe = asyncio.create_task(first.__anext__())      # dispatches: the probe
        await adapter.entered.wait()
        calls = adapter.calls
        with pytest.raises(AtpError) as refused:     # wait_for: a guard, should it dispatch and hang
            await asyncio.wait_for(pinned.__anext__(), 10)
        adapter.mode = "ok"
        rest = [item async for item in routed]
        adapter.release.set()
        await probe
        await first.aclose()
        await app.stop(0)
        return routes, calls, refused.value, rest, adapter.calls
    routes, calls, refused, rest, calls_after = asyncio.run(main())
    assert routes == ["cheap", "cheap", "cheap"]
    assert refused.code == ErrorCode.UNAVAILABLE and refused.retryable and refused.retry_after_ms > 0
    assert rest[0].decision.model == "smart" and rest[-1].decision.model == "smart"
    assert calls_after == calls + 1                         # only the routed one, to smart


# ---- item 5: metric labels come from configuration only ----------------------------------------------

def test_bogus_model_names_share_one_metrics_label(tmp_path):
    async def main():
        app, clock, adapter = build(tmp_path)
        await complete(app)                     # one real series
        for i in range(1000):
            with pytest.raises(AtpError):
                await complete(app, model=f"bogus-{i}-" + "x" * 200)
        body = app.metrics.render()
        await app.stop(0)
        return app, body
    app, body = asyncio.run(main())
    labels = {model for (_, model, _) in app.metrics.request_counts}
    assert labels <= set(app.router.models) | {"unknown"}
    series = [line for line in body.decode().splitlines() if line.startswith("atp_requests_total{")]
    assert len(series) == 2                     # (t, cheap, ok) and (t, unknown, UNKNOWN_MODEL)
    assert b"bogus" not in body and len(body) < 20_000

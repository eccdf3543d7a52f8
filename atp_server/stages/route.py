"""Choose the model chain for the request (routing core, pure), and report how the request ended."""
import time

from .base import RequestContext, Stage


class RouteStage(Stage):
    name = "route"
    selection = True

    def __init__(self, router, clock, decision_time=None):
        self.choose = router.choose
        self.finished = router.finished
        self.started = router.started
        self.clock = clock
        self.decision_time = decision_time   # metrics' histogram of choose() times, or None

    def before(self, ctx: RequestContext) -> None:
        timed = self.decision_time
        if timed is None:
            ctx.decision = d = self.choose(ctx.request, self.clock())
        else:
            t0 = time.perf_counter_ns()
            ctx.decision = d = self.choose(ctx.request, self.clock())
            timed.observe((time.perf_counter_ns() - t0) * 1e-9)
        if ctx.transport != "route":
            self.started(d)

    def after(self, ctx: RequestContext, outcome: str) -> None:
        # Runs only when before() completed; the Route RPC runs befores alone, so a selection-only
        # call is never reported as dispatched.
        if ctx.transport != "route":
            self.finished(ctx, self.clock())

"""Choose the model chain for the request (routing core, pure), and report how the request ended."""
from .base import RequestContext, Stage


class RouteStage(Stage):
    name = "route"
    selection = True

    def __init__(self, router, clock):
        self.choose = router.choose
        self.finished = router.finished
        self.started = router.started
        self.clock = clock

    def before(self, ctx: RequestContext) -> None:
        ctx.decision = d = self.choose(ctx.request, self.clock())
        if ctx.transport != "route":
            self.started(d)

    def after(self, ctx: RequestContext, outcome: str) -> None:
        # Runs only when before() completed; the Route RPC runs befores alone, so a selection-only
        # call is never reported as dispatched.
        if ctx.transport != "route":
            self.finished(ctx, self.clock())

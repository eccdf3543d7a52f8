"""Choose the model chain for the request (routing core, pure: reads health, changes nothing)."""
from .base import RequestContext, Stage


class RouteStage(Stage):
    name = "route"
    selection = True

    def __init__(self, router, clock):
        self.choose = router.choose
        self.clock = clock

    def before(self, ctx: RequestContext) -> None:
        ctx.decision = self.choose(ctx.request, self.clock())

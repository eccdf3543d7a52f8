"""Score the request for prompt injection; tag it, log it or refuse it as the tenant's rule says."""
import logging

from codec.errors import ErrorCode

from ..redaction.injection import score
from ..types import AtpError
from .base import RequestContext, Stage

log = logging.getLogger("atp.guard")


class GuardStage(Stage):
    """At or above the tenant's threshold: `tag` records (score, signals) in ctx.injection (the
    audit row), `log` also writes one warning line, `block` refuses with FORBIDDEN. System
    messages are the application's own and are not scored."""

    name = "guard"

    def __init__(self, config, metrics=None):
        self.rule = config.rule
        self.count = metrics.count_injection if metrics is not None else None

    def before(self, ctx: RequestContext) -> None:
        rule = self.rule(ctx.principal.tenant)
        if rule.mode == "off":
            return
        value, signals = score(content for role, content in ctx.request.messages if role != "system")
        if value < rule.threshold:
            return
        ctx.injection = (round(value, 3), signals)
        if self.count is not None:
            self.count(rule.mode)
        if rule.mode == "log" or rule.mode == "block":
            log.warning("prompt injection suspected: request %s tenant %s score %.2f signals %s "
                        "(%s)", ctx.request.request_id, ctx.principal.tenant, value,
                        ",".join(signals), rule.mode)
        if rule.mode == "block":
            raise AtpError(ErrorCode.FORBIDDEN, f"the request looks like a prompt injection "
                           f"(score {value:.2f}: {', '.join(signals)}) and this tenant blocks those")

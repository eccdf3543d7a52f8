"""Replace personal data and secrets in the request's messages before anything leaves for a provider."""
from codec.errors import ErrorCode

from ..redaction.vault import Vault
from ..types import AtpError
from .base import RequestContext, Stage


class RedactStage(Stage):
    """Per tenant (redaction.settings): `redact` rewrites the messages with placeholders, `restore`
    also keeps the vault so the pipeline puts the values back into the answer, `block` refuses a
    request that contains any of the configured types. Counts by kind go to ctx.redacted (the
    audit row) and to metrics."""

    name = "redact"

    def __init__(self, config, metrics=None):
        self.rule = config.rule
        self.count = metrics.count_redactions if metrics is not None else None

    def before(self, ctx: RequestContext) -> None:
        rule = self.rule(ctx.principal.tenant)
        if rule.mode == "off":
            return
        request, vault, kinds = ctx.request, Vault(), rule.types
        for _, content in request.messages:
            if "[" in content:
                vault.reserve(content)
        messages = [(role, vault.redact(content, kinds)) for role, content in request.messages]
        if not vault.counts:
            return
        ctx.redacted = vault.counts
        if self.count is not None:
            self.count(vault.counts, rule.mode)
        if rule.mode == "block":
            found = ", ".join(f"{kind} x{n}" for kind, n in sorted(vault.counts.items()))
            raise AtpError(ErrorCode.FORBIDDEN, f"the request contains data this tenant may not "
                           f"send to a provider ({found}); remove it or ask for redaction")
        request.messages = messages
        if rule.mode == "restore":
            ctx.vault = vault

"""Request checks before anything is spent: the request's own shape (validate) and the policy."""
from dataclasses import dataclass

from codec.errors import ErrorCode

from ..auth import Principal
from ..types import AtpError, ChatRequest
from .base import RequestContext, Stage


class ValidateStage(Stage):
    """Refuse a request whose fields are out of range (types.ChatRequest.validate)."""

    name = "validate"
    selection = True

    def before(self, ctx: RequestContext) -> None:
        ctx.request.validate()


@dataclass(frozen=True, slots=True)
class BasicPolicy:
    """The policy hook's minimal real rule set: size caps and an optional per-tenant model allowlist."""

    max_prompt_chars: int = 400_000     # ~100k tokens at ~4 chars/token: the largest context served
    max_tokens: int = 32_768            # the largest output window among common providers
    allowed_models: dict | None = None  # tenant -> frozenset of model ids

    def check(self, principal: Principal, request: ChatRequest) -> None:
        if request.prompt_chars() > self.max_prompt_chars:
            raise AtpError(ErrorCode.INVALID_REQUEST,
                           f"prompt of {request.prompt_chars()} chars exceeds {self.max_prompt_chars}")
        if request.max_tokens is not None and request.max_tokens > self.max_tokens:
            raise AtpError(ErrorCode.FORBIDDEN, f"max_tokens {request.max_tokens} exceeds policy "
                           f"limit {self.max_tokens}")
        if self.allowed_models is not None and request.model:
            allowed = self.allowed_models.get(principal.tenant, frozenset())
            if request.model not in allowed:
                raise AtpError(ErrorCode.FORBIDDEN, f"tenant {principal.tenant!r} may not use "
                               f"model {request.model!r}")


class PolicyStage(Stage):
    """Apply the policy to (principal, request) before admission and routing."""

    name = "policy"
    selection = True

    def __init__(self, policy):
        self.check = policy.check

    def before(self, ctx: RequestContext) -> None:
        self.check(ctx.principal, ctx.request)

"""The narrow adapter protocol every provider family implements."""
from typing import AsyncIterator, Protocol

from ..routing.spec import ModelSpec, estimate_tokens
from ..types import ChatRequest, Finish, TextDelta

__all__ = ["Adapter", "ModelSpec", "estimate_tokens"]


class Adapter(Protocol):
    """One provider family (OpenAI-compatible, Anthropic, simulated...).

    `stream` yields TextDelta items and ends with exactly one Finish. Failures raise
    types.AtpError with an upstream code (UPSTREAM_ERROR, UPSTREAM_TIMEOUT, UPSTREAM_CUT, ...);
    an iterator that stops without Finish is treated by the pipeline as UPSTREAM_CUT. Closing the
    iterator early (client went away) must cancel the upstream call promptly.
    """

    name: str
    capabilities: frozenset

    def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[TextDelta | Finish]:
        ...

    async def aclose(self) -> None:
        ...

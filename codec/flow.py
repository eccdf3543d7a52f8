"""Credit windows in three dimensions: parallel requests, tokens, USD micros."""
from dataclasses import dataclass

from .errors import ErrorCode, FlowControlError

MAX_CREDIT = (1 << 62) - 1   # keeps sums inside a u64 on the wire
DEFAULT_INITIAL = (4, 16_384, 1_000_000)   # what an initiator may use before the responder's HELLO
DEFAULT_REQUEST_TOKENS = 1024              # reserved by a REQUEST that omits max_tokens


@dataclass(slots=True)
class CreditWindow:
    """Credit the responder granted; a REQUEST consumes (1, max_tokens, max_cost) of it."""

    requests: int
    tokens: int
    usd_micros: int

    @property
    def available(self) -> tuple[int, int, int]:
        return (self.requests, self.tokens, self.usd_micros)

    def shortfall(self, requests: int, tokens: int, usd_micros: int) -> str | None:
        """Why (requests, tokens, usd_micros) does not fit, or None if it does."""
        for name, need, have in (("requests", requests, self.requests),
                                 ("tokens", tokens, self.tokens),
                                 ("usd_micros", usd_micros, self.usd_micros)):
            if need > have:
                return f"{name}: need {need}, window has {have}"
        return None

    def consume(self, requests: int, tokens: int, usd_micros: int) -> None:
        why = self.shortfall(requests, tokens, usd_micros)
        if why is not None:
            raise FlowControlError(f"window exceeded ({why})", ErrorCode.WINDOW_EXCEEDED)
        self.requests -= requests
        self.tokens -= tokens
        self.usd_micros -= usd_micros

    def grant(self, requests: int, tokens: int, usd_micros: int) -> None:
        self.requests = min(self.requests + requests, MAX_CREDIT)
        self.tokens = min(self.tokens + tokens, MAX_CREDIT)
        self.usd_micros = min(self.usd_micros + usd_micros, MAX_CREDIT)


def reservation(request: dict) -> tuple[int, int, int]:
    """What a REQUEST payload consumes from the window (docs/PROTOCOL.md §8)."""
    return (1, request.get("max_tokens", DEFAULT_REQUEST_TOKENS), request.get("max_cost", 0))

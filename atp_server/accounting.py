"""Accounting: turns usage into USD micros (pricing.PriceBook) and keeps per-tenant / per-model totals."""
from collections import defaultdict
from dataclasses import dataclass

from .pricing import PriceBook
from .routing.spec import ModelSpec, estimate_tokens
from .types import ChatRequest, Finish, Usage


@dataclass(slots=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd_micros: int = 0
    estimated: int = 0            # requests whose usage ATP counted itself (the provider reported none)


class Accountant:
    def __init__(self, prices: PriceBook | None = None):
        self.by_tenant: dict[str, Totals] = defaultdict(Totals)
        self.by_model: dict[str, Totals] = defaultdict(Totals)
        self.prices = prices          # None: every model at its [[models]] list price

    def usage(self, model: ModelSpec, request: ChatRequest, finish: Finish, streamed_tokens: int) -> Usage:
        """Provider-reported tokens when present, else our own count (what was streamed) and
        estimate (the prompt), and then the usage is marked `estimated`."""
        tin = finish.input_tokens if finish.input_tokens is not None else estimate_tokens(request.prompt_chars())
        tout = finish.output_tokens if finish.output_tokens is not None else streamed_tokens
        estimated = finish.input_tokens is None or finish.output_tokens is None
        cached = finish.cached_input_tokens or 0
        cost = (self.prices.cost_micros(model, tin, tout, cached) if self.prices is not None
                else model.cost_micros(tin, tout))
        return Usage(tin, tout, cost, estimated, cached)

    def delivered(self, model: ModelSpec, request: ChatRequest, streamed_tokens: int) -> Usage:
        """What a stream cut after `streamed_tokens` is billed: what it delivered, estimated."""
        return self.usage(model, request, _CUT, streamed_tokens)

    def record(self, tenant: str, model_id: str, usage: Usage) -> None:
        for totals in (self.by_tenant[tenant], self.by_model[model_id]):
            totals.requests += 1
            totals.input_tokens += usage.input_tokens
            totals.output_tokens += usage.output_tokens
            totals.cost_usd_micros += usage.cost_usd_micros
            totals.estimated += usage.estimated


_CUT = Finish("cut")

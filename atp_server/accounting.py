"""Accounting: turns usage into USD micros and keeps per-tenant / per-model totals."""
from collections import defaultdict
from dataclasses import dataclass

from .routing.spec import ModelSpec, estimate_tokens
from .types import ChatRequest, Finish, Usage


@dataclass(slots=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd_micros: int = 0


class Accountant:
    def __init__(self):
        self.by_tenant: dict[str, Totals] = defaultdict(Totals)
        self.by_model: dict[str, Totals] = defaultdict(Totals)

    @staticmethod
    def usage(model: ModelSpec, request: ChatRequest, finish: Finish, streamed_tokens: int) -> Usage:
        """Provider-reported tokens when present, else our own count/estimate (then `estimated`)."""
        tin = finish.input_tokens if finish.input_tokens is not None else estimate_tokens(request.prompt_chars())
        tout = finish.output_tokens if finish.output_tokens is not None else streamed_tokens
        estimated = finish.input_tokens is None or finish.output_tokens is None
        return Usage(tin, tout, model.cost_micros(tin, tout), estimated, finish.cached_input_tokens or 0)

    def record(self, tenant: str, model_id: str, usage: Usage) -> None:
        for totals in (self.by_tenant[tenant], self.by_model[model_id]):
            totals.requests += 1
            totals.input_tokens += usage.input_tokens
            totals.output_tokens += usage.output_tokens
            totals.cost_usd_micros += usage.cost_usd_micros

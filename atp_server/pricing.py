"""The pricing catalogue: what each model costs on a given day, and the exact cost of a usage in USD micros.

A model's list price is its [[models]] price_in/out_per_mtok. [[pricing]] entries override it per
deployment, each with an effective date (the newest entry not in the future applies): input,
output and cached-input prices per million tokens, a per-request fee, and a currency with its USD
rate, so a negotiated or changed price is configuration, not code.
"""
import bisect
import datetime
import time
from dataclasses import dataclass

from .routing.spec import ModelSpec

_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class Price:
    """One [[pricing]] entry. Prices are in `currency` units; usd_per_unit converts them."""

    model: str                                # a configured model id
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float = -1.0       # per 1M prompt tokens served from the provider's cache; <0: input price
    request_fee: float = 0.0                  # per request, whatever its tokens
    currency: str = "USD"
    usd_per_unit: float = 1.0                 # the exchange rate when currency is not USD
    effective: str = ""                       # ISO date (YYYY-MM-DD) from which it applies; "" = always

    @property
    def effective_day(self) -> int:
        """Days since 1970-01-01 (UTC) from which this entry applies; 0 for "always"."""
        if not self.effective:
            return 0
        return (datetime.date.fromisoformat(self.effective) - datetime.date(1970, 1, 1)).days

    def cost_micros(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
        """Exact to the micro-dollar: price per Mtok × tokens is micro-units of the currency."""
        cached = min(cached_input_tokens, input_tokens)
        cached_price = self.cached_input_per_mtok if self.cached_input_per_mtok >= 0 else self.input_per_mtok
        units = ((input_tokens - cached) * self.input_per_mtok + cached * cached_price
                 + output_tokens * self.output_per_mtok + self.request_fee * 1_000_000)
        return round(units * self.usd_per_unit)


def list_price(model: ModelSpec) -> Price:
    return Price(model.id, model.price_in_per_mtok, model.price_out_per_mtok)


class PriceBook:
    """The price of each model on each day: its [[pricing]] entries by effective date, its list
    price before the first (or when it has none)."""

    def __init__(self, models, prices=()):
        self._list = {m.id: list_price(m) for m in models}
        by_model: dict[str, list[Price]] = {}
        for p in prices:
            by_model.setdefault(p.model, []).append(p)
        self._dated = {mid: sorted(ps, key=lambda p: p.effective_day) for mid, ps in by_model.items()}
        self._days = {mid: [p.effective_day for p in ps] for mid, ps in self._dated.items()}
        self._today = -1
        self._current: dict[str, Price] = {}

    def price(self, model_id: str, day: int | None = None) -> Price:
        """The entry in effect on `day` (days since the epoch, UTC; default today)."""
        if day is None:
            day = int(time.time() // _DAY_S)
            if day == self._today:                    # the hot path: one dict lookup
                hit = self._current.get(model_id)
                if hit is not None:
                    return hit
            else:
                self._today, self._current = day, {}
        days = self._days.get(model_id)
        i = bisect.bisect_right(days, day) if days else 0
        found = self._dated[model_id][i - 1] if i else self._list.get(model_id)
        if found is None:
            raise KeyError(model_id)
        if day == self._today:
            self._current[model_id] = found       # bounded: keys are configured model ids only
        return found

    def cost_micros(self, model: ModelSpec, input_tokens: int, output_tokens: int,
                    cached_input_tokens: int = 0) -> int:
        try:
            price = self.price(model.id)
        except KeyError:                          # a model added after start (admin API): list price
            return list_price(model).cost_micros(input_tokens, output_tokens, cached_input_tokens)
        return price.cost_micros(input_tokens, output_tokens, cached_input_tokens)

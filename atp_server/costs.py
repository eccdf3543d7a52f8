"""Cost reports from the audit log: spend by tenant, model, key or day, and savings against a baseline model.

Realised savings answer "what would this traffic have cost on the premium model": each request's
recorded input and output tokens priced at the baseline model's rates, minus what it cost. Only
requests that produced an answer carry tokens; refused and failed ones count as requests at $0.
"""
import datetime as dt
import sqlite3
from dataclasses import dataclass, field

import orjson

GROUPS = ("tenant", "model", "key", "day")


@dataclass(slots=True)
class Line:
    group: str
    requests: int = 0
    answered: int = 0                 # requests that returned tokens
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    estimated: int = 0                # answers whose usage was estimated, not reported
    baseline_micros: int = 0          # the same tokens at the baseline model's prices
    clipped_tokens: int = 0           # in + out, each request's capped at the privacy clip
    clipped_micros: int = 0           # cost, each request's capped at the privacy clip
    cache_hits: int = 0               # answered from the response cache (cost 0)
    cache_saved_micros: int = 0       # what those hits would have cost upstream

    @property
    def savings_micros(self) -> int:
        return self.baseline_micros - self.cost_micros

    def as_dict(self, baseline: bool) -> dict:
        out = {"group": self.group, "requests": self.requests, "answered": self.answered,
               "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
               "cost_usd": self.cost_micros / 1e6, "estimated_answers": self.estimated,
               "cache_hits": self.cache_hits, "cache_saved_usd": self.cache_saved_micros / 1e6}
        if baseline:
            out["baseline_usd"] = self.baseline_micros / 1e6
            out["savings_usd"] = self.savings_micros / 1e6
            out["savings_pct"] = (100.0 * self.savings_micros / self.baseline_micros
                                  if self.baseline_micros else 0.0)
        return out


@dataclass(slots=True)
class Report:
    by: str
    since_ts: float | None
    baseline_model: str | None
    lines: list[Line] = field(default_factory=list)
    total: Line = field(default_factory=lambda: Line("total"))

    def as_dict(self) -> dict:
        b = self.baseline_model is not None
        return {"by": self.by, "baseline_model": self.baseline_model,
                "since": (dt.datetime.fromtimestamp(self.since_ts, dt.timezone.utc).isoformat()
                          if self.since_ts is not None else None),
                "lines": [line.as_dict(b) for line in self.lines], "total": self.total.as_dict(b)}


def _key(by: str, ts: float, tenant: str, principal: str, model: str) -> str:
    if by == "tenant":
        return tenant or "-"
    if by == "model":
        return model or "-"
    if by == "key":
        return f"{tenant}/{principal}" if tenant else (principal or "-")
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).date().isoformat()


def report(db: sqlite3.Connection, by: str, since_ts: float | None = None,
           baseline_prices: tuple[float, float] | None = None,
           baseline_model: str | None = None, clip: tuple[int, int] = (0, 0)) -> Report:
    """Aggregate the request rows of an audit database. `baseline_prices` are the baseline
    model's (input, output) USD per million tokens; `clip` (tokens, USD micros) caps what one
    request adds to the clipped sums a private release uses (privacy.py)."""
    clip_tokens, clip_micros = clip
    if by not in GROUPS:
        raise ValueError(f"--by must be one of {', '.join(GROUPS)}, not {by!r}")
    # shadow rows (shadow.py) are spend of the operator's experiment, not of a tenant's requests
    query = ("SELECT ts, tenant, principal, model, record FROM audit "
             "WHERE transport NOT IN ('admin', 'shadow')")
    args: tuple = ()
    if since_ts is not None:
        query, args = query + " AND ts >= ?", (since_ts,)
    lines: dict[str, Line] = {}
    rep = Report(by, since_ts, baseline_model if baseline_prices else None)
    for ts, tenant, principal, model, record in db.execute(query + " ORDER BY seq", args):
        detail = orjson.loads(record)
        group = _key(by, ts, tenant, principal, model)
        line = lines.get(group)
        if line is None:
            line = lines[group] = Line(group)
        tin, tout = int(detail.get("in", 0)), int(detail.get("out", 0))
        cost = int(detail.get("cost_micros", 0))
        base = round(tin * baseline_prices[0] + tout * baseline_prices[1]) if baseline_prices else 0
        cached = detail.get("cache")
        hit = bool(cached and cached.get("hit"))
        saved = int(cached.get("saved_micros", 0)) if hit else 0
        for target in (line, rep.total):
            target.requests += 1
            target.answered += 1 if (tin or tout) else 0
            target.input_tokens += tin
            target.output_tokens += tout
            target.cost_micros += cost
            target.estimated += 1 if detail.get("estimated") else 0
            target.baseline_micros += base
            target.clipped_tokens += min(tin + tout, clip_tokens)
            target.clipped_micros += min(cost, clip_micros)
            target.cache_hits += hit
            target.cache_saved_micros += saved
    rep.lines = sorted(lines.values(), key=lambda line: (-line.cost_micros, line.group))
    if by == "day":
        rep.lines.sort(key=lambda line: line.group)
    return rep


def render(rep: Report) -> str:
    """A fixed-width table for the terminal."""
    b = rep.baseline_model is not None
    head = f"{rep.by:<24} {'requests':>9} {'answered':>9} {'in tok':>10} {'out tok':>10} {'cost $':>12}"
    if b:
        head += f" {'baseline $':>12} {'saved $':>12} {'saved %':>8}"
    out = [head]
    for line in rep.lines + [rep.total]:
        row = (f"{line.group[:24]:<24} {line.requests:>9} {line.answered:>9} {line.input_tokens:>10} "
               f"{line.output_tokens:>10} {line.cost_micros / 1e6:>12.6f}")
        if b:
            pct = 100.0 * line.savings_micros / line.baseline_micros if line.baseline_micros else 0.0
            row += (f" {line.baseline_micros / 1e6:>12.6f} {line.savings_micros / 1e6:>12.6f}"
                    f" {pct:>7.1f}%")
        out.append(row)
    if b:
        out.append(f"baseline: every answered request priced at {rep.baseline_model}")
    if rep.total.cache_hits:
        out.append(f"{rep.total.cache_hits} answer(s) from the response cache, saving "
                   f"${rep.total.cache_saved_micros / 1e6:.6f}")
    if rep.total.estimated:
        out.append(f"{rep.total.estimated} answer(s) with estimated usage (the provider reported none)")
    return "\n".join(out)


def private(rep: Report, ledger, epsilon: float) -> list[dict]:
    """A per-tenant report released with differential privacy: each tenant's requests, tokens
    and cost get Laplace noise at `epsilon` each, charged to that tenant's ledger. Raises
    privacy.BudgetSpent (and releases nothing for that tenant or after it) when a budget is spent."""
    from .privacy import release
    if rep.by != "tenant":
        raise ValueError("a private release is per tenant (--by tenant): a tenant's budget "
                         "covers only its own requests")
    out = []
    for line in rep.lines:
        out.append({"group": line.group,
                    "requests": release(ledger, line.group, "requests", line.requests, epsilon),
                    "tokens": release(ledger, line.group, "tokens", line.clipped_tokens, epsilon),
                    "cost_usd": release(ledger, line.group, "cost_usd", line.clipped_micros / 1e6,
                                        epsilon),
                    "epsilon_left": {m: ledger.remaining(line.group, m)
                                     for m in ("requests", "tokens", "cost_usd")}})
    return out

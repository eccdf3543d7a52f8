"""The model table: every routable model as numpy columns, static specs plus the statistics report() keeps.

A ModelTable is built once per model set (`build_table`) and never changes shape: when models are
added or removed a new table is built (`rebuild`, carrying the statistics of the models that stay)
and swapped in by one assignment (TableRef.table), so a decision in progress reads one consistent
table. The static columns are read-only arrays; the statistics (`TableStats`) are the only mutable
part and only `report()` (routing/report.py) writes them.
"""
from dataclasses import dataclass

import numpy as np

from . import scoring
from .spec import ModelSpec

# Capability names become bits of one uint64 per model: a request's required set is a single AND.
MAX_CAPABILITIES = 64
# Recent latencies kept per model for p50/p95: 128 answers are enough for a stable p95 (the 95th
# percentile of 128 samples sits between the 6th and 7th slowest), and ~1 KB per model.
LATENCY_RING = 128
# Percentiles are recomputed every this many answers of a model, not per answer: a percentile
# (report.quantile on a sorted copy: ~9 µs) per request would be a tenth of the whole HTTP path.
PERCENTILE_EVERY = 16
# EWMA weight of a new observation: 0.1 gives an effective memory of ~10 answers (1/α), which
# follows a provider that slows down within seconds at typical rates but ignores a single outlier.
EWMA_ALPHA = 0.1
# AIMD window not yet managed (h-sched's controller fills the column): no limit.
NO_WINDOW = np.inf


class TableStats:
    """Per-model statistics, one row per table model; written only by report()."""

    __slots__ = ("S", "lat_ewma", "lat_p50", "lat_p95", "err_rate", "succ", "fail", "aimd_window",
                 "answers", "inflight", "lat_ring", "ring_n")

    def __init__(self, prior_latency: np.ndarray):
        m = prior_latency.shape[0]
        # One [k, M] block (what the decision kernel reads in one argument); the named columns
        # are views of its rows (scoring.S_*).
        self.S = S = np.zeros((scoring.N_S, m))
        self.lat_ewma = S[scoring.S_LAT_EWMA]      # ms; starts at the config prior
        self.lat_p50 = S[scoring.S_LAT_P50]
        self.lat_p95 = S[scoring.S_LAT_P95]
        self.err_rate = S[scoring.S_ERR]           # EWMA of upstream faults per answer
        self.succ = S[scoring.S_SUCC]              # quality posterior: Σ reward (Beta α − prior)
        self.fail = S[scoring.S_FAIL]              # Σ (1 − reward)      (Beta β − prior)
        self.aimd_window = S[scoring.S_AIMD]
        for col in (self.lat_ewma, self.lat_p50, self.lat_p95):
            col[:] = prior_latency
        self.aimd_window[:] = NO_WINDOW
        self.answers = np.zeros(m, dtype=np.int64)
        self.inflight = np.zeros(m, dtype=np.int64)
        self.lat_ring = np.zeros((m, LATENCY_RING))
        self.ring_n = np.zeros(m, dtype=np.int64)

    def copy_rows(self, src: "TableStats", dst_rows, src_rows) -> None:
        self.S[:, dst_rows] = src.S[:, src_rows]
        for name in ("answers", "inflight", "lat_ring", "ring_n"):
            getattr(self, name)[dst_rows] = getattr(src, name)[src_rows]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, slots=True)
class Alias:
    """A configured model name that stands for a group: ordered (failover in this order), weighted
    (first pick drawn by weight, then the rest by weight), or routed (choose() picks among them)."""
    name: str
    models: tuple[str, ...]
    mode: str = "ordered"                       # ordered | weighted | routed
    weights: tuple[float, ...] = ()
    max_attempts: int = 0                       # 0: dispatch's default
    tier: str = ""                              # routed: the tier to route with ("" = request's)
    cost_weight: float | None = None            # routed: an explicit trade-off
    min_quality: float | None = None


class ModelTable:
    """Static columns of the models (read-only) and their statistics (mutable via report())."""

    __slots__ = ("specs", "ids", "index", "price_in", "price_out", "context", "caps", "cap_bit",
                 "prior_quality", "prior_latency", "max_output", "stats", "health", "predictor",
                 "pred_cols", "aliases", "alias_rows", "alias_weights", "alias_sets", "policy",
                 "bandit", "objectives", "F", "all_rows", "every", "only", "no_block", "no_cost", "scratch",
                 "resource_block")

    @property
    def size(self) -> int:
        return len(self.ids)

    def breaker_states(self, now: float) -> np.ndarray:
        """The breaker column (routing.health.State per model) as of `now`, read from the board."""
        return np.array([int(self.health.state(i, now)) for i in self.ids], dtype=np.int8)

    def cap_mask(self, names) -> int:
        """The required-capability bits, or -1 when a name is one no model has."""
        bits = 0
        for name in names:
            b = self.cap_bit.get(name)
            if b is None:
                return -1
            bits |= 1 << b
        return bits


def build_table(models, health, *, predictor=None, aliases=(), policy=None,
                bandit=None) -> ModelTable:
    """A table for `models`; aliases name table models (checked by the config loader too)."""
    models = tuple(models)
    if not models:
        raise ValueError("the model table needs at least one model")
    t = ModelTable()
    t.specs = models
    t.ids = tuple(m.id for m in models)
    t.index = {m: i for i, m in enumerate(t.ids)}
    if len(t.index) != len(t.ids):
        raise ValueError("model ids must be unique")
    t.price_in = _frozen(np.array([m.price_in_per_mtok for m in models], dtype=np.float64))
    t.price_out = _frozen(np.array([m.price_out_per_mtok for m in models], dtype=np.float64))
    t.context = _frozen(np.array([m.context_window for m in models], dtype=np.int64))
    t.max_output = _frozen(np.array([m.max_output_tokens for m in models], dtype=np.int64))
    names = sorted(frozenset().union(*(m.capabilities for m in models)))
    if len(names) > MAX_CAPABILITIES:
        raise ValueError(f"at most {MAX_CAPABILITIES} distinct capabilities, got {len(names)}")
    t.cap_bit = {n: b for b, n in enumerate(names)}
    t.caps = _frozen(np.array([sum(1 << t.cap_bit[c] for c in m.capabilities) for m in models],
                              dtype=np.uint64))
    t.prior_quality = _frozen(np.array([m.quality for m in models], dtype=np.float64))
    t.prior_latency = _frozen(np.array([m.latency_ms for m in models], dtype=np.float64))
    t.F = _frozen(np.array([t.price_in, t.price_out, t.context, t.max_output, t.prior_quality],
                           dtype=np.float64))
    t.stats = TableStats(t.prior_latency)
    M = len(models)
    t.all_rows = _frozen(np.arange(M))
    t.every = _frozen(np.ones(M, dtype=np.bool_))
    # the candidate set of a request pinned to row r, built once (choose() allocated one a request)
    t.only = tuple(_frozen(np.arange(M) == r) for r in range(M))
    t.no_block = _frozen(np.zeros(M, dtype=np.bool_))
    t.no_cost = _frozen(np.full(M, np.nan))
    # Reused output buffers of the decision kernel: a decision copies out what it keeps, and the
    # event loop runs one decision at a time (not thread-safe, like the Featurizer's scratch).
    t.scratch = (np.empty((scoring.N_W, M)), np.empty(M, dtype=np.int64),
                 np.empty(M, dtype=np.int64), np.empty(3), np.empty(scoring.N_P))
    t.health = health
    t.predictor = predictor
    # table row -> predictor column (-1: the predictor was not trained on this model; its prior
    # quality is used instead)
    cols = {name: j for j, name in enumerate(predictor.models)} if predictor is not None else {}
    t.pred_cols = _frozen(np.array([cols.get(i, -1) for i in t.ids], dtype=np.int64))
    t.aliases = {}
    t.alias_rows = {}
    t.alias_weights = {}
    t.alias_sets = {}
    for a in aliases:
        missing = [m for m in a.models if m not in t.index]
        if missing:
            raise ValueError(f"alias {a.name!r} names unknown models {missing}")
        if a.name in t.index:
            raise ValueError(f"alias {a.name!r} is also a model id")
        t.aliases[a.name] = a
        t.alias_rows[a.name] = _frozen(np.array([t.index[m] for m in a.models], dtype=np.int64))
        member = np.zeros(M, dtype=np.bool_)
        member[t.alias_rows[a.name]] = True
        t.alias_sets[a.name] = _frozen(member)
        if a.weights:
            w = np.array(a.weights, dtype=np.float64)
            t.alias_weights[a.name] = _frozen(w / w.sum())
    t.policy = policy
    t.bandit = bandit
    t.objectives = {}         # tier -> choose.Objective, filled on first use (3 entries at most)
    # Local models that must not be loaded now (memory pressure): a bool per row, or None when
    # nothing is blocked. Written whole by resources.ResourceMonitor, read by choose().
    t.resource_block = None
    return t


def rebuild(old: ModelTable, models, **changes) -> ModelTable:
    """A new table for a changed model set, keeping the statistics of models present in both.
    Keyword arguments replace the old table's predictor / aliases / policy / bandit."""
    kw = {"predictor": old.predictor, "aliases": tuple(old.aliases.values()),
          "policy": old.policy, "bandit": old.bandit, **changes}
    new = build_table(models, old.health, **kw)
    kept = [(new.index[i], old.index[i]) for i in new.ids if i in old.index]
    if kept:
        dst, src = (np.array(x, dtype=np.int64) for x in zip(*kept))
        new.stats.copy_rows(old.stats, dst, src)
    return new


class TableRef:
    """The live table: replaced whole by `swap`, so readers see the old table or the new one."""

    __slots__ = ("table",)

    def __init__(self, table: ModelTable):
        self.table = table

    def swap(self, models, **changes) -> ModelTable:
        self.table = new = rebuild(self.table, models, **changes)
        return new


def spec_row(table: ModelTable, model_id: str) -> ModelSpec:
    return table.specs[table.index[model_id]]

"""The [routing] and [aliases] configuration sections, typed and validated; errors name the key.

Self-contained (no import of atp_server.config, which imports this): it raises RoutingConfigError
with the dotted key first, and config.parse re-raises it as a ConfigError.
"""
import math
from dataclasses import dataclass, field

from .table import Alias

TIERS = ("fast", "balanced", "high")
BANDITS = ("greedy", "thompson", "ucb", "linucb")
ALIAS_MODES = ("ordered", "weighted", "routed")


class RoutingConfigError(ValueError):
    """Invalid [routing] / [aliases]; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class TierWeights:
    """How much quality one unit of cost / latency is worth: utility = q − λ·cost/cost_ref −
    μ·latency/latency_ref. cost_ref is the trained router's reference cost (the mean query cost of
    its priciest model) when one is loaded, else the dearest usable candidate's expected cost for
    this request; latency_ref is the slowest usable candidate's latency estimate. So λ = 0.25 says:
    "moving from a free model to the dearest one must buy a quarter of the quality scale"."""
    cost_weight: float | None      # None: the trained router's learned λ for this tier, else default
    latency_weight: float


# Why these numbers (the cost weights when no trained router is loaded; latency always):
#  high: λ 0.05 — pay the dearest price for 5 quality points; latency ignored (μ 0): the caller
#        asked for the best answer.
#  balanced: λ 0.25 — the dearest model must be worth a quarter of the scale more than a free one
#        (roughly the gap between a frontier and a small open model on hard benchmarks); μ 0.05
#        only breaks near-ties in favour of the faster model.
#  fast: λ 0.25 as balanced, μ 1 — latency dominates: the slowest candidate would have to buy the
#        whole quality scale over an instant one.
PRIOR_COST_WEIGHTS = {"high": 0.05, "balanced": 0.25, "fast": 0.25}
# cost_weight None: a trained router's λ for the tier (chosen on its validation split to keep the
# tier's share of the best model's accuracy, predictor.TIER_TARGETS), else PRIOR_COST_WEIGHTS.
DEFAULT_TIERS = {
    "high": TierWeights(None, 0.0),
    "balanced": TierWeights(None, 0.05),
    "fast": TierWeights(None, 1.0),
}


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    predictor: str = ""             # router.bin from `atp router train` ("" = config priors only)
    # greedy | thompson | ucb | linucb: how the posterior is explored (every mode learns from
    # feedback; greedy always takes the posterior-best, the others also try uncertain models)
    bandit: str = "thompson"
    # The predictor's (or prior's) probability counts as this many observations in the Beta
    # posterior: 20 lets ~20 real outcomes move a model halfway from what was predicted, so a
    # few unlucky answers cannot flip a decision but a real shift is followed within a day's traffic.
    prior_strength: float = 20.0
    # UCB / LinUCB bonus scale: 0.5 on a [0, 1] reward is the classic UCB1 sqrt(2 ln n / n) with
    # the range halved (rewards here are probabilities, not unbounded payoffs).
    explore: float = 0.5
    seed: int = -1                  # routing RNG seed (-1: from the OS; set it for reproducible runs)
    persist: bool = True            # keep bandit posteriors in <state_dir>/routing_posteriors.npz
    challenger: str = ""            # another router.bin to test against `predictor` (champion.py)
    # Its share of decisions: a tenth limits a worse policy's exposure while the paired test
    # gathers evidence (at 1k req/s and a few % of requests rated, a verdict within hours).
    challenger_share: float = 0.1
    # shadow: the challenger decides no live request; that share is mirrored to it instead
    # (shadow.py), its answers thrown away, its cost and score recorded.
    challenger_shadow: bool = False
    # Shadow calls at once: beyond this a mirror is dropped (counted). 4 bounds what a hung shadow
    # provider can hold (4 sockets, 4 tasks) while keeping up with a 10% share of ~40 req/s of
    # 1 s answers; raise it with the share and the traffic.
    shadow_max_inflight: int = 4
    # A shadow call still running after this is abandoned (scored 0): 30 s is a long answer's
    # generation time; past it a slot held by a hung upstream comes back.
    shadow_timeout_s: float = 30.0
    tiers: dict = field(default_factory=lambda: dict(DEFAULT_TIERS))
    aliases: tuple = ()             # tuple[Alias, ...]


def _fail(key, problem):
    raise RoutingConfigError(f"{key}: {problem}")


def _num(key, v, lo=None, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        _fail(key, f"must be a finite number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        _fail(key, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return float(v)


def _int(key, v, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        _fail(key, f"must be an integer >= {lo}, got {v!r}")
    return v


def _str(key, v, choices=None):
    if not isinstance(v, str):
        _fail(key, f"must be a string, got {v!r}")
    if choices and v not in choices:
        _fail(key, f"must be one of {', '.join(choices)}, got {v!r}")
    return v


def _known(key, t, names):
    if not isinstance(t, dict):
        _fail(key, f"must be a table, got {type(t).__name__} {t!r}")
    for k in t:
        if k not in names:
            _fail(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(names))})")


def _tiers(t) -> dict:
    _known("routing.tiers", t, TIERS)
    out = dict(DEFAULT_TIERS)
    for tier, v in t.items():
        key = f"routing.tiers.{tier}"
        _known(key, v, ("cost_weight", "latency_weight"))
        d = out[tier]
        cw = _num(f"{key}.cost_weight", v["cost_weight"], 0) if "cost_weight" in v else d.cost_weight
        lw = _num(f"{key}.latency_weight", v["latency_weight"], 0) if "latency_weight" in v \
            else d.latency_weight
        out[tier] = TierWeights(cw, lw)
    return out


def _alias(key: str, t: dict, model_ids: set) -> Alias:
    _known(key, t, ("name", "models", "mode", "weights", "max_attempts", "tier", "cost_weight",
                    "min_quality"))
    if "name" not in t:
        _fail(f"{key}.name", "is required")
    name = _str(f"{key}.name", t["name"])
    if not name:
        _fail(f"{key}.name", "must not be empty")
    models = t.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        _fail(f"{key}.models", f"must be a non-empty list of model ids, got {models!r}")
    for j, m in enumerate(models):
        if m not in model_ids:
            _fail(f"{key}.models[{j}]", f"no model with id {m!r}")
    if len(set(models)) != len(models):
        _fail(f"{key}.models", "lists a model twice")
    mode = _str(f"{key}.mode", t.get("mode", "ordered"), ALIAS_MODES)
    weights = ()
    if "weights" in t:
        w = t["weights"]
        if not isinstance(w, list) or len(w) != len(models):
            _fail(f"{key}.weights", f"must be a list of {len(models)} numbers (one per model)")
        weights = tuple(_num(f"{key}.weights[{j}]", x, 0) for j, x in enumerate(w))
        if not sum(weights) > 0:
            _fail(f"{key}.weights", "must not all be zero")
    elif mode == "weighted":
        _fail(f"{key}.weights", "is required when mode = \"weighted\"")
    if weights and mode != "weighted":
        _fail(f"{key}.weights", "only means something with mode = \"weighted\"")
    objective = [k for k in ("tier", "cost_weight", "min_quality") if k in t]
    if objective and mode != "routed":
        _fail(f"{key}.{objective[0]}", "only means something with mode = \"routed\"")
    if "cost_weight" in t and "min_quality" in t:
        _fail(f"{key}.min_quality", "give cost_weight or min_quality, not both")
    return Alias(
        name, tuple(models), mode, weights,
        _int(f"{key}.max_attempts", t["max_attempts"], 1) if "max_attempts" in t else 0,
        _str(f"{key}.tier", t["tier"], TIERS) if "tier" in t else "",
        _num(f"{key}.cost_weight", t["cost_weight"], 0) if "cost_weight" in t else None,
        _num(f"{key}.min_quality", t["min_quality"], 0, 1) if "min_quality" in t else None)


def parse_aliases(value, model_ids) -> tuple:
    """`[[aliases]]` (tables with name, models, mode...) or `[aliases]` (name = [models], ordered)."""
    ids = set(model_ids)
    if isinstance(value, dict):
        tables = [{"name": k, "models": v} for k, v in value.items()]
        keys = [f"aliases.{k}" for k in value]
    elif isinstance(value, list):
        tables, keys = value, [f"aliases[{i}]" for i in range(len(value))]
    else:
        _fail("aliases", f"must be [aliases] (name = [models]) or [[aliases]] tables, got {value!r}")
    out, seen = [], {}
    for key, t in zip(keys, tables):
        if isinstance(value, dict) and not isinstance(t["models"], list):
            _fail(key, f"must be a list of model ids, got {t['models']!r}")
        a = _alias(key, t, ids)
        if a.name in ids:
            _fail(f"{key}.name", f"{a.name!r} is already a model id")
        if a.name in seen:
            _fail(f"{key}.name", f"the same as {seen[a.name]}.name")
        seen[a.name] = key
        out.append(a)
    return tuple(out)


def parse_routing(t, aliases, model_ids) -> RoutingConfig:
    fields_ = ("predictor", "bandit", "prior_strength", "explore", "seed", "persist", "tiers",
               "challenger", "challenger_share", "challenger_shadow", "shadow_max_inflight",
               "shadow_timeout_s")
    _known("routing", t, fields_)
    kw = {}
    if "predictor" in t:
        kw["predictor"] = _str("routing.predictor", t["predictor"])
    if "bandit" in t:
        kw["bandit"] = _str("routing.bandit", t["bandit"], BANDITS)
    if "prior_strength" in t:
        kw["prior_strength"] = _num("routing.prior_strength", t["prior_strength"], 1e-3)
    if "explore" in t:
        kw["explore"] = _num("routing.explore", t["explore"], 0)
    if "seed" in t:
        kw["seed"] = _int("routing.seed", t["seed"], -1)
    if "persist" in t:
        if not isinstance(t["persist"], bool):
            _fail("routing.persist", f"must be true or false, got {t['persist']!r}")
        kw["persist"] = t["persist"]
    if "tiers" in t:
        kw["tiers"] = _tiers(t["tiers"])
    if "challenger" in t:
        kw["challenger"] = _str("routing.challenger", t["challenger"])
    if "challenger_share" in t:
        share = _num("routing.challenger_share", t["challenger_share"], 0, 1)
        if not 0 < share < 1:
            _fail("routing.challenger_share", f"must be strictly between 0 and 1, got {share}")
        kw["challenger_share"] = share
    if "challenger_shadow" in t:
        if not isinstance(t["challenger_shadow"], bool):
            _fail("routing.challenger_shadow", f"must be true or false, got {t['challenger_shadow']!r}")
        kw["challenger_shadow"] = t["challenger_shadow"]
    if "shadow_max_inflight" in t:
        kw["shadow_max_inflight"] = _int("routing.shadow_max_inflight", t["shadow_max_inflight"], 1)
    if "shadow_timeout_s" in t:
        kw["shadow_timeout_s"] = _num("routing.shadow_timeout_s", t["shadow_timeout_s"], 1e-3)
    return RoutingConfig(**kw, aliases=parse_aliases(aliases, model_ids))

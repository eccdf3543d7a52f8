"""The [state] and [[limits]] configuration: where shared state lives, and the limits to enforce.

Typed and checked at load like the rest of config.py (whose generic checks it uses; config.py
calls `parse_state` / `parse_limits` from its `parse`). Errors name the key at fault.
"""
from dataclasses import dataclass

SCOPES = ("tenant", "key", "model")
LIMIT_KINDS = ("requests_per_min", "tokens_per_min", "concurrent", "usd_per_day", "usd_per_month")


@dataclass(frozen=True, slots=True)
class StateConfig:
    redis_url: str = ""            # "" = in memory (one worker); redis://host:port/db (or a
                                   # redis+sentinel:// URL) to share
    timeout_ms: int = 50           # per Redis call: a few round trips on a LAN, far below a request
    prefix: str = "atp:"           # key prefix: several ATP deployments can share one Redis
    # When Redis does not answer: "open" lets requests through unrecorded, "closed" refuses them
    # (retryable UNAVAILABLE). Rate limits protect capacity, so availability wins; budgets are
    # money and nonces are security, so they refuse.
    limits_on_error: str = "open"
    budgets_on_error: str = "closed"
    nonces_on_error: str = "closed"
    # How often each worker merges what the router learnt (posteriors, latency, breakers) with
    # the others through Redis (state/learning.py, which says why 2 s); 0 = never.
    merge_interval_ms: int = 2000


@dataclass(frozen=True, slots=True)
class LimitRule:
    """One [[limits]] entry: limits per tenant, API key or model (each one counted separately,
    or only the one named by `match`). A limit of 0 is not enforced."""

    name: str
    scope: str = "tenant"          # tenant | key | model (the model a request names)
    match: str = ""                # "" = every tenant/key/model separately; else only this one
    requests_per_min: int = 0
    tokens_per_min: int = 0
    concurrent: int = 0
    usd_per_day: float = 0.0
    usd_per_month: float = 0.0
    soft: float = 0.8              # fraction of a limit past which an alert is logged and counted


def parse_state(t) -> StateConfig:
    from .config import _check, _env, _fail, _typed
    v = _typed("state", t, StateConfig, extra={"redis_url_env": str})
    if "redis_url_env" in v:       # a URL with a password belongs in the environment
        if "redis_url" in v:
            _fail("state.redis_url_env", "give redis_url or redis_url_env, not both")
        v["redis_url"] = _env("state.redis_url_env", v.pop("redis_url_env"))
    _check("state", v, {"timeout_ms": (">=", 1), "merge_interval_ms": (">=", 0)})
    url = v.get("redis_url", "")
    from .state.urls import MULTI_NODE_URLS
    parse = next((f for scheme, f in MULTI_NODE_URLS.items() if url.startswith(scheme)), None)
    if parse is not None:
        try:
            parse(url)
        except ValueError as exc:
            _fail("state.redis_url", f"a {url.split('//')[0]}// URL {exc}, got {url!r}")
    elif url and not url.startswith(("redis://", "rediss://", "unix://")):
        _fail("state.redis_url", f"must be a redis://, rediss://, unix://, redis+sentinel:// or "
                                 f"redis+cluster:// URL, got {url!r}")
    for name in ("limits_on_error", "budgets_on_error", "nonces_on_error"):
        if name in v and v[name] not in ("open", "closed"):
            _fail(f"state.{name}", f"must be \"open\" or \"closed\", got {v[name]!r}")
    return StateConfig(**v)


def parse_limits(items, model_ids) -> tuple[LimitRule, ...]:
    from .config import _check, _fail, _tables, _typed
    rules, names = [], set()
    for i, t in enumerate(_tables("limits", items)):
        key = f"limits[{i}]"
        v = _typed(key, t, LimitRule)
        if "name" not in v:
            _fail(f"{key}.name", "is required (it labels alerts and metrics)")
        _check(key, v, {"name": ("nonempty",), "soft": ("in", 0, 1),
                        **{kind: (">=", 0) for kind in LIMIT_KINDS}})
        if v["name"] in names:
            _fail(f"{key}.name", f"{v['name']!r} is used by another [[limits]] entry")
        names.add(v["name"])
        if v.get("scope", "tenant") not in SCOPES:
            _fail(f"{key}.scope", f"must be one of {', '.join(SCOPES)}, got {v['scope']!r}")
        if v.get("scope") == "model" and v.get("match") and v["match"] not in model_ids:
            _fail(f"{key}.match", f"no [[models]] entry has id {v['match']!r}")
        rule = LimitRule(**v)
        if not any(getattr(rule, kind) for kind in LIMIT_KINDS):
            _fail(key, f"sets no limit (give at least one of {', '.join(LIMIT_KINDS)})")
        rules.append(rule)
    return tuple(rules)

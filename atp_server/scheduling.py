"""The typed [scheduling] section: QoS tiers and their weights, tenant tiers, queue deadlines, AIMD windows.

Parsed here (config.py hooks it in with one call) so the scheduling keys live next to what they
mean. Every error names the key at fault, like the rest of the configuration.
"""
import math
from dataclasses import dataclass, field

# A gold tenant is served 4x as often as a silver one, 16x a bronze one, while all are backlogged:
# far enough apart that the tiers are felt, close enough that bronze still moves under overload.
DEFAULT_TIERS = {"gold": 16.0, "silver": 4.0, "bronze": 1.0}


@dataclass(frozen=True, slots=True)
class ProviderWindow:
    """One provider's AIMD concurrency window bounds ([scheduling.providers.NAME])."""

    max_concurrency: int = 0      # ceiling; 0 = the provider's max_connections, else DEFAULT_CEILING
    min_window: int = 1           # floor: one request always gets through, so recovery is observed
    initial_window: int = 0       # 0 = start at the ceiling (no slow start: the ceiling is configured)
    latency_slo_ms: float = 0.0   # a success slower than this counts as congestion; 0 = no latency SLO


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    tiers: dict = field(default_factory=lambda: dict(DEFAULT_TIERS))   # tier -> weight (> 0)
    tenants: dict = field(default_factory=dict)          # tenant -> tier name
    # Unlisted tenants sit in the middle: neither promoted over paying tiers nor pushed to the back.
    default_tier: str = "silver"
    # A request that waited this long for a slot is refused with TIMEOUT (retryable): past a few
    # seconds a client does better retrying (or going elsewhere) than waiting on an overloaded queue.
    queue_timeout_ms: float = 5_000.0
    # CONGESTION clears only when the fill drops below this (it is set at server.congestion_watermark):
    # the gap keeps the flag from flapping on every request near one threshold.
    low_watermark: float = 0.6
    # Retry-After on a full queue: about one typical short completion, so retries do not come
    # back before anything could have drained.
    retry_after_ms: int = 200
    # Flow records (tenants) the fair queue keeps; bounded so no client input grows memory.
    max_tenants: int = 1024
    # AIMD: +increase per window's worth of successes (TCP's one segment per RTT, RFC 5681) and
    # x decrease on 429 / timeout / over-SLO (TCP's halving: the classic stable AIMD pair).
    aimd_increase: float = 1.0
    aimd_decrease: float = 0.5
    providers: dict = field(default_factory=dict)        # provider name -> ProviderWindow

    def tier_of(self, tenant: str) -> str:
        return self.tenants.get(tenant, self.default_tier)

    def weight_of(self, tenant: str) -> float:
        return self.tiers[self.tier_of(tenant)]


_SCALARS = {"default_tier": str, "queue_timeout_ms": float, "low_watermark": float,
            "retry_after_ms": int, "max_tenants": int, "aimd_increase": float,
            "aimd_decrease": float}
_WINDOW_KEYS = {"max_concurrency": int, "min_window": int, "initial_window": int,
                "latency_slo_ms": float}


def _number(fail, key: str, value, kind):
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        fail(key, f"must be {'a number' if kind is float else 'an integer' if kind is int else 'a string'}"
                  f", got {type(value).__name__} {value!r}")
    if kind is float:
        if not math.isfinite(value):
            fail(key, f"must be a finite number, got {value}")
        return float(value)
    return value


def _table(fail, key: str, value) -> dict:
    if not isinstance(value, dict):
        fail(key, f"must be a table, got {type(value).__name__} {value!r}")
    return value


def parse_scheduling(t, providers: set, fail) -> SchedulingConfig:
    """[scheduling] as a SchedulingConfig; `fail(key, problem)` raises the config error."""
    t = _table(fail, "scheduling", t)
    known = sorted(set(_SCALARS) | {"tiers", "tenants", "providers"})
    values: dict = {}
    for name, value in t.items():
        key = f"scheduling.{name}"
        if name not in known:
            fail(key, f"unknown key (known: {', '.join(known)})")
        if name in _SCALARS:
            values[name] = _number(fail, key, value, _SCALARS[name])
    tiers = dict(DEFAULT_TIERS)
    if "tiers" in t:
        tiers = {}
        for tier, w in _table(fail, "scheduling.tiers", t["tiers"]).items():
            w = _number(fail, f"scheduling.tiers.{tier}", w, float)
            if not w > 0:
                fail(f"scheduling.tiers.{tier}", f"must be > 0 (a weight), got {w}")
            tiers[tier] = w
        if not tiers:
            fail("scheduling.tiers", "must name at least one tier")
    tenants = {}
    for tenant, tier in _table(fail, "scheduling.tenants", t.get("tenants", {})).items():
        tier = _number(fail, f"scheduling.tenants.{tenant}", tier, str)
        if tier not in tiers:
            fail(f"scheduling.tenants.{tenant}", f"unknown tier {tier!r} (tiers: {', '.join(tiers)})")
        tenants[tenant] = tier
    windows = {}
    for name, w in _table(fail, "scheduling.providers", t.get("providers", {})).items():
        key = f"scheduling.providers.{name}"
        if name not in providers:
            fail(key, f"no provider named {name!r}")
        opts = {}
        for k, v in _table(fail, key, w).items():
            if k not in _WINDOW_KEYS:
                fail(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(_WINDOW_KEYS))})")
            opts[k] = _number(fail, f"{key}.{k}", v, _WINDOW_KEYS[k])
            if opts[k] < 0 or (k == "min_window" and opts[k] < 1):
                fail(f"{key}.{k}", f"must be >= {1 if k == 'min_window' else 0}, got {opts[k]}")
        pw = ProviderWindow(**opts)
        if pw.max_concurrency and pw.min_window > pw.max_concurrency:
            fail(f"{key}.min_window", f"must be <= max_concurrency ({pw.max_concurrency})")
        windows[name] = pw
    cfg = SchedulingConfig(tiers=tiers, tenants=tenants, providers=windows, **values)
    if cfg.default_tier not in tiers:
        fail("scheduling.default_tier", f"unknown tier {cfg.default_tier!r} (tiers: {', '.join(tiers)})")
    if not 0 < cfg.queue_timeout_ms:
        fail("scheduling.queue_timeout_ms", f"must be > 0, got {cfg.queue_timeout_ms}")
    if not 0 <= cfg.low_watermark < 1:
        fail("scheduling.low_watermark", f"must be in [0, 1), got {cfg.low_watermark}")
    if cfg.retry_after_ms < 1:
        fail("scheduling.retry_after_ms", f"must be >= 1, got {cfg.retry_after_ms}")
    if cfg.max_tenants < 1:
        fail("scheduling.max_tenants", f"must be >= 1, got {cfg.max_tenants}")
    if not cfg.aimd_increase > 0:
        fail("scheduling.aimd_increase", f"must be > 0, got {cfg.aimd_increase}")
    if not 0 < cfg.aimd_decrease < 1:
        fail("scheduling.aimd_decrease", f"must be in (0, 1), got {cfg.aimd_decrease}")
    return cfg

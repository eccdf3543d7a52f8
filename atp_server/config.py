"""Typed TOML configuration, validated at load: every error names the key and the problem."""
import hashlib
import math
import os
import tomllib
import types
import typing
import urllib.parse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from .cache import CacheConfig, parse_cache
from .routing.config import RoutingConfig, parse_routing
from .routing.spec import ModelSpec
from .adapters.settings import CHECKS, SETTINGS
from .pricing import Price
from .audit.log import (DEFAULT_CHECKPOINT_ROWS, DEFAULT_CHECKPOINT_S, DEFAULT_DURABLE_WAIT_S,
                        DEFAULT_MAX_BUFFER, SYNCHRONOUS)
from .admin import AdminConfig, parse_admin
from .events import EventsConfig, parse_events
from .live import DashboardConfig, parse_dashboard
from .webhooks import parse_webhooks
from .privacy import PrivacyConfig   # the [privacy] section's dataclass lives with its mechanism
from .tracing.config import TracingConfig, parse_tracing   # no OpenTelemetry import (tracing/__init__)
from .dispatch import CHECKS as DISPATCH_CHECKS, DispatchConfig, check_tiers
from .scheduling import SchedulingConfig, parse_scheduling
from .resources import ResourcesConfig, parse_resources
from .slo import parse_slos
from .limits_config import LimitRule, StateConfig, parse_limits, parse_state
from .redaction.settings import GuardConfig, RedactionConfig, parse_guard, parse_redaction
from .federation.config import FederationConfig, FederationConfigError
from .federation.config import parse as parse_federation


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the dotted key at fault."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    http_port: int = 8470          # OpenAI-compatible HTTP (0 = any free port; --no-http disables)
    grpc_port: int = 8471          # gRPC: atp.v1.Atp, health, reflection (0 = any free port)
    quic_port: int = 8472          # QUIC/UDP, ALPN atp/1 (0 = any free port)
    workers: int = 1
    max_inflight: int = 512        # requests being dispatched at once
    max_queue: int = 2048          # requests waiting for a dispatch slot; beyond: OVERLOADED
    drain_seconds: float = 10.0    # SIGTERM: how long in-flight streams may finish
    tls_cert: str = ""             # QUIC certificate (PEM); generated on first start if empty
    tls_key: str = ""
    state_dir: str = "~/.atp"      # generated certificate, audit database
    congestion_watermark: float = 0.8   # queue fill at which frames carry the CONGESTION flag


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str                    # hex digest of the key; the key itself is never stored
    tenant: str = "default"


@dataclass(frozen=True, slots=True)
class HmacKeyConfig:
    id: int
    secret: bytes = field(repr=False, default=b"")
    tenant: str = "default"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    api_keys: tuple[ApiKey, ...] = ()
    hmac_keys: tuple[HmacKeyConfig, ...] = ()
    require_signature: bool = False   # typed gRPC / HTTP must also carry an HMAC signature
    skew_ms: int = 30_000
    nonce_cache: int = 100_000
    keys_file: str = ""               # `atp keys` store; "" = <state_dir>/keys.json
    jwt: object = None                # tenants.JwtConfig from [auth.jwt], or None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str                      # simulated | openai_compat | anthropic | ollama
    options: dict = field(default_factory=dict)   # as written in the file
    settings: object = None        # the options checked: adapters.settings.SETTINGS[type]


@dataclass(frozen=True, slots=True)
class AuditConfig:
    enabled: bool = True
    path: str = ""                 # SQLite file; "" = <state_dir>/audit.sqlite
    max_buffered_rows: int = DEFAULT_MAX_BUFFER   # rows waiting while writes fail; beyond: refuse
    synchronous: str = "normal"    # normal: survives kill -9; full: fsync per commit (power loss)
    signing_key: str = ""          # Ed25519 PEM for checkpoints; "" = <state_dir>/audit_signing_key.pem
    checkpoint_every_rows: int = DEFAULT_CHECKPOINT_ROWS   # a signed checkpoint every N rows...
    checkpoint_every_s: float = DEFAULT_CHECKPOINT_S        # ...or every this many seconds
    durable_wait_ms: int = int(DEFAULT_DURABLE_WAIT_S * 1000)   # final frame waits for its row
    retention_days: float = 0.0    # 0 = keep forever; else prune older rows at a checkpoint
    store_prompts: bool = False    # rows carry the prompt's SHA-256; true adds its text


@dataclass(frozen=True, slots=True)
class CostsConfig:
    baseline_model: str = ""       # `atp costs` savings: what each request would cost on this model


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    scrape_token: str = field(repr=False, default="")   # "" = /metrics open, without per-tenant spend
    # Series per client-derived label (tenants' spend, budget subjects) before the rest fold into
    # "other": a few thousand series per metric is what Prometheus handles comfortably.
    max_label_values: int = 1000


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    files: tuple[str, ...] = ()    # TOML policy files (atp_server/policy); reloaded by SIGHUP
    dry_run: bool = False          # decide, log and audit, but never refuse


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    audit: AuditConfig = AuditConfig()
    pricing: tuple[Price, ...] = ()   # [[pricing]]: per-deployment prices over the models' list prices
    dispatch: DispatchConfig = DispatchConfig()   # the [routing] keys of dispatch (dispatch.py)
    routing: RoutingConfig = RoutingConfig()   # [routing] + [aliases] (routing/config.py)
    scheduling: SchedulingConfig = SchedulingConfig()   # [scheduling] (scheduling.py)
    state: StateConfig = StateConfig()          # [state] (limits_config.py)
    limits: tuple[LimitRule, ...] = ()          # [[limits]]
    redaction: RedactionConfig = RedactionConfig()   # [redaction] (redaction/settings.py)
    guard: GuardConfig = GuardConfig()               # [guard]
    metrics: MetricsConfig = MetricsConfig()
    tenants: tuple = ()            # tenants.Tenant, from [[tenants]]
    policy: PolicyConfig = PolicyConfig()
    costs: CostsConfig = CostsConfig()               # [costs] (costs.py, `atp costs`)
    privacy: PrivacyConfig = PrivacyConfig()         # [privacy] (privacy.py)
    federation: FederationConfig = FederationConfig()   # [federation] (federation/config.py)
    admin: AdminConfig = AdminConfig()               # [admin] (admin.py): the admin API's keys
    cache: CacheConfig = CacheConfig()                   # [cache] (cache.py: the response cache)
    resources: ResourcesConfig = ResourcesConfig()      # [resources] (resources.py)
    slo: tuple = ()                                     # [[slo]]: slo.SloConfig (slo.py)
    dashboard: DashboardConfig = DashboardConfig()   # [dashboard] (live.py, transport/http_dashboard.py)
    events: EventsConfig = EventsConfig()            # [events] thresholds (events.py)
    webhooks: tuple = ()                             # webhooks.WebhookConfig, from [[webhooks]]
    tracing: TracingConfig = TracingConfig()         # [tracing] (tracing/: OpenTelemetry spans)

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)


PROVIDER_TYPES = tuple(SETTINGS)

# The well-known development credentials of the embedded default (loopback only; printed at start).
DEV_API_KEY = "sk-atp-dev"
DEV_HMAC_KEY_ID = 1
DEV_HMAC_SECRET = b"atp-dev-hmac-secret-change-me!!!"



def dev_auth_toml(name: str = "dev", api_key: str = DEV_API_KEY, *, hmac: bool = True) -> str:
    """TOML tables accepting the development credentials: the embedded default, benches, tests.

    `hmac=False` leaves out the HMAC key: API keys only, a configuration that may run --workers N.
    """
    text = f"""
[[auth.api_keys]]
name = "{name}"
sha256 = "{hashlib.sha256(api_key.encode()).hexdigest()}"
tenant = "default"
"""
    if hmac:
        text += f"""
[[auth.hmac_keys]]
id = {DEV_HMAC_KEY_ID}
secret = "{DEV_HMAC_SECRET.decode()}"
tenant = "default"
"""
    return text


DEFAULT_TOML = """
[server]
host = "127.0.0.1"
""" + dev_auth_toml() + """
[[providers]]
name = "sim"
type = "simulated"
latency_ms = 20
tokens_per_s = 400
output_tokens = 24

[[models]]
id = "sim-fast"
provider = "sim"
price_in_per_mtok = 0.10
price_out_per_mtok = 0.40
quality = 0.55
latency_ms = 150
context_window = 8192

[[models]]
id = "sim-balanced"
provider = "sim"
price_in_per_mtok = 0.50
price_out_per_mtok = 1.50
quality = 0.75
latency_ms = 400
context_window = 32768

[[models]]
id = "sim-high"
provider = "sim"
price_in_per_mtok = 3.00
price_out_per_mtok = 15.00
quality = 0.92
latency_ms = 900
context_window = 131072
capabilities = ["chat", "tools", "json", "vision", "long_context"]
"""


# ---- validation helpers --------------------------------------------------------------------------

def _fail(key: str, problem: str):
    raise ConfigError(f"{key}: {problem}")


def _check_type(key, value, types, what):
    if isinstance(value, bool) and bool not in types:
        _fail(key, f"must be {what}, got a boolean")
    if not isinstance(value, types):
        _fail(key, f"must be {what}, got {type(value).__name__} {value!r}")
    return value


def _table(key: str, value) -> dict:
    if not isinstance(value, dict):
        _fail(key, f"must be a table, got {type(value).__name__} {value!r}")
    return value


def _tables(key: str, value) -> list[dict]:
    """An array of tables ([[key]]); a lone [key] table or a scalar gets an error saying what to write."""
    if isinstance(value, dict):
        _fail(key, f"must be an array of tables: write [[{key}]] (one per entry), not [{key}]")
    if not isinstance(value, list):
        _fail(key, f"must be an array of tables: write [[{key}]], got {type(value).__name__} {value!r}")
    for i, item in enumerate(value):
        _table(f"{key}[{i}]", item)
    return value


def _value(key: str, value, hint):
    """Check one value against a dataclass field's type; returns it in that type (int -> float)."""
    if hint is bool:
        return _check_type(key, value, (bool,), "true or false")
    if hint is int:
        return _check_type(key, value, (int,), "an integer")
    if hint is float:
        _check_type(key, value, (int, float), "a number")
        if not math.isfinite(value):
            _fail(key, f"must be a finite number, got {value}")
        return float(value)
    if hint is str:
        return _check_type(key, value, (str,), "a string")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:   # TOML has no null
        return _value(key, value, next(a for a in args if a is not type(None)))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            _fail(key, f"must be a table of strings, got {value!r}")
        for name, text in value.items():   # header names/values: a line break would inject headers
            if any(c in name + text for c in "\r\n\0"):
                _fail(f"{key}.{name}", "must not contain line breaks or NUL")
        return dict(value)
    if origin is tuple or hint is frozenset:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            _fail(key, f"must be a list of strings, got {value!r}")
        return frozenset(value) if hint is frozenset else tuple(value)
    raise TypeError(f"{key}: no config check for type {hint!r}")   # a field type this file lacks


def _typed(key: str, table, cls, *, skip=(), extra: dict | None = None, what="key") -> dict:
    """Check a TOML table against dataclass `cls`: unknown keys and wrong types are refused."""
    _table(key, table)
    hints = {**typing.get_type_hints(cls), **(extra or {})}
    known = sorted({f.name for f in fields(cls)} | set(extra or {}) - set(skip))
    values = {}
    for name, value in table.items():
        if name not in known:
            _fail(f"{key}.{name}", f"unknown {what} (known: {', '.join(known)})")
        values[name] = _value(f"{key}.{name}", value, hints[name])
    return values


def _env(key: str, name: str) -> str:
    if not name or "=" in name or "\0" in name:
        _fail(key, f"{name!r} is not an environment variable name")
    value = os.environ.get(name)
    if value is None:
        _fail(key, f"environment variable {name} is not set")
    return value


def _check(key: str, values: dict, rules: dict) -> None:
    """Range rules (see adapters.settings.CHECKS for the notation) on the values present."""
    for name, rule in rules.items():
        if name not in values:
            continue
        v, op, k = values[name], rule[0], f"{key}.{name}"
        if op == ">=" and not v >= rule[1]:
            _fail(k, f"must be >= {rule[1]}, got {v}")
        elif op == ">" and not v > rule[1]:
            _fail(k, f"must be > {rule[1]}, got {v}")
        elif op == "in" and not rule[1] <= v <= rule[2]:
            _fail(k, f"must be in [{rule[1]}, {rule[2]}], got {v}")
        elif op == "one_of" and v not in rule[1:]:
            _fail(k, f"must be one of {', '.join(map(str, rule[1:]))}, got {v!r}")
        elif op == "nonempty" and not v:
            _fail(k, "must not be empty")
        elif op == "http_url":
            try:
                u = urllib.parse.urlsplit(v)
                u.port   # raises for a port out of range or not a number
            except ValueError as exc:
                _fail(k, f"is not a valid URL ({exc}): {v!r}")
            if u.scheme not in ("http", "https") or not u.hostname:
                _fail(k, f"must be an http:// or https:// URL with a host, got {v!r}")
        elif op == "env_of":
            target = rule[1]
            if target in values:
                _fail(f"{key}.{target}", f"give {target} or {name}, not both")
            values[target] = _env(k, v)


def _required(key: str, values: dict, cls, what: str = "") -> None:
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values:
            _fail(f"{key}.{f.name}", f"is required{what}")


def _port(key, value):
    if not 0 <= value <= 65535:
        _fail(key, f"must be a port number 0..65535, got {value}")


_SERVER_CHECKS = {"host": ("nonempty",), "workers": (">=", 1), "max_inflight": (">=", 1),
                  "max_queue": (">=", 0), "drain_seconds": (">=", 0), "state_dir": ("nonempty",)}


def _parse_server(t) -> ServerConfig:
    v = _typed("server", t, ServerConfig)
    _check("server", v, _SERVER_CHECKS)
    cfg = ServerConfig(**v)
    for name in ("http_port", "grpc_port", "quic_port"):
        _port(f"server.{name}", getattr(cfg, name))
    if not 0 < cfg.congestion_watermark <= 1:
        _fail("server.congestion_watermark", "must be in (0, 1]")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        _fail("server.tls_cert", "tls_cert and tls_key go together")
    return cfg


def _secret(key: str, t: dict) -> bytes:
    sources = [k for k in ("secret", "secret_hex", "secret_env") if k in t]
    if len(sources) != 1:
        _fail(key, "give exactly one of secret, secret_hex, secret_env")
    src = sources[0]
    raw = _check_type(f"{key}.{src}", t[src], (str,), "a string")
    if src == "secret":
        secret = raw.encode()
    elif src == "secret_hex":
        try:
            secret = bytes.fromhex(raw)
        except ValueError:
            _fail(f"{key}.secret_hex", "is not valid hex")
    else:
        secret = _env(f"{key}.secret_env", raw).encode()
    if len(secret) < 16:
        _fail(f"{key}.{src}", "secret must be at least 16 bytes")
    return secret


_KEY_CHECKS = {"name": ("nonempty",), "tenant": ("nonempty",)}


def _parse_auth(t) -> AuthConfig:
    _table("auth", t)
    api_keys, hmac_keys = [], []
    names, digests = {}, {}
    for i, k in enumerate(_tables("auth.api_keys", t.get("api_keys", []))):
        key = f"auth.api_keys[{i}]"
        v = _typed(key, k, ApiKey, extra={"key_env": str})
        _check(key, v, _KEY_CHECKS)
        if "key_env" in v:   # convenience: hash a key taken from the environment at load
            if "sha256" in v:
                _fail(f"{key}.sha256", "give sha256 or key_env, not both")
            v["sha256"] = hashlib.sha256(_env(f"{key}.key_env", v.pop("key_env")).encode()).hexdigest()
        if "name" not in v or "sha256" not in v:
            _fail(key, "needs name and sha256 (or key_env)")
        digest = v["sha256"].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            _fail(f"{key}.sha256", "must be 64 hex characters (sha256 of the key)")
        for seen, field_name, value in ((names, "name", v["name"]), (digests, "sha256", digest)):
            if value in seen:   # one key under two names would be audited under either
                _fail(f"{key}.{field_name}", f"the same as {seen[value]}.{field_name}")
            seen[value] = key
        api_keys.append(ApiKey(v["name"], digest, v.get("tenant", "default")))
    seen = set()
    hmac_fields = {"id": int, "secret": str, "secret_hex": str, "secret_env": str, "tenant": str}
    for i, k in enumerate(_tables("auth.hmac_keys", t.get("hmac_keys", []))):
        key = f"auth.hmac_keys[{i}]"
        v = _typed(key, k, HmacKeyConfig, extra=hmac_fields)
        _check(key, v, _KEY_CHECKS)
        if "id" not in v:
            _fail(f"{key}.id", "is required (a u32 key id)")
        kid = v["id"]
        if not 0 <= kid <= 0xFFFFFFFF or kid in seen:
            _fail(f"{key}.id", "must be a unique u32")
        seen.add(kid)
        hmac_keys.append(HmacKeyConfig(kid, _secret(key, v), v.get("tenant", "default")))
    rest = {x: y for x, y in t.items() if x not in ("api_keys", "hmac_keys", "jwt")}
    v = _typed("auth", rest, AuthConfig, skip=("api_keys", "hmac_keys", "jwt"))
    if "jwt" in t:
        from .tenants import parse_jwt
        v["jwt"] = parse_jwt("auth.jwt", _table("auth.jwt", t["jwt"]))
    _check("auth", v, {"skew_ms": (">=", 1), "nonce_cache": (">=", 1)})
    if v.get("require_signature") and not hmac_keys:
        _fail("auth.require_signature", "needs at least one [[auth.hmac_keys]] to verify signatures with")
    return AuthConfig(tuple(api_keys), tuple(hmac_keys), **v)


def _parse_metrics(t) -> MetricsConfig:
    v = _typed("metrics", t, MetricsConfig, extra={"scrape_token_env": str})
    _check("metrics", v, {"scrape_token_env": ("env_of", "scrape_token"), "max_label_values": (">=", 1)})
    v.pop("scrape_token_env", None)
    if "scrape_token" in v and len(v["scrape_token"]) < 16:   # a guessable token guards nothing
        _fail("metrics.scrape_token", "must be at least 16 characters")
    return MetricsConfig(**v)


def provider_settings(key: str, ptype: str, options: dict):
    """A provider's options as its typed settings (adapters.settings), checked; `key` names it."""
    cls = SETTINGS.get(ptype)
    if cls is None:
        _fail(f"{key}.type", f"unknown provider type {ptype!r} (known: {', '.join(PROVIDER_TYPES)})")
    values = _typed(key, options, cls, what="option")
    _required(key, values, cls, f" for {ptype} providers")
    _check(key, values, CHECKS.get(cls, {}))
    return cls(**values)


def _parse_provider(i: int, t: dict) -> ProviderConfig:
    key = f"providers[{i}]"
    if "name" not in t:
        _fail(f"{key}.name", "is required")
    if "type" not in t:
        _fail(f"{key}.type", f"is required ({', '.join(PROVIDER_TYPES)})")
    name = _check_type(f"{key}.name", t.get("name"), (str,), "a string")
    if not name:
        _fail(f"{key}.name", "must not be empty")
    ptype = _check_type(f"{key}.type", t.get("type"), (str,), "a string")
    if ptype not in PROVIDER_TYPES:
        _fail(f"{key}.type", f"unknown provider type {ptype!r} (known: {', '.join(PROVIDER_TYPES)})")
    options = {k: v for k, v in t.items() if k not in ("name", "type")}
    # Options are named after the provider from here on: `providers[local].timeout_s`.
    settings = provider_settings(f"providers[{name}]", ptype, options)
    return ProviderConfig(name, ptype, options, settings)


_MODEL_CHECKS = {"id": ("nonempty",), "upstream": ("nonempty",), "context_window": (">=", 1),
                 "max_output_tokens": (">=", 1), "price_in_per_mtok": (">=", 0),
                 "price_out_per_mtok": (">=", 0), "quality": ("in", 0, 1), "latency_ms": (">=", 0)}
_MAX_OUTPUT_DEFAULT = next(f.default for f in fields(ModelSpec) if f.name == "max_output_tokens")


def _parse_model(i: int, t: dict, providers: set) -> ModelSpec:
    key = f"models[{i}]"
    v = _typed(key, t, ModelSpec)
    for required in ("id", "provider"):
        if required not in v:
            _fail(f"{key}.{required}", "is required")
    v.setdefault("upstream", v["id"])
    _check(key, v, _MODEL_CHECKS)
    if v["provider"] not in providers:
        _fail(f"{key}.provider", f"no provider named {v['provider']!r}")
    window = v.get("context_window", 8192)
    if "max_output_tokens" not in v:   # the default never exceeds a small window
        v["max_output_tokens"] = min(_MAX_OUTPUT_DEFAULT, window)
    elif v["max_output_tokens"] > window:
        _fail(f"{key}.max_output_tokens", f"must be <= context_window ({window}), "
                                          f"got {v['max_output_tokens']}")
    return ModelSpec(**v)


_PRICE_CHECKS = {"input_per_mtok": (">=", 0), "output_per_mtok": (">=", 0), "request_fee": (">=", 0),
                 "usd_per_unit": (">", 0)}


def _parse_price(i: int, t: dict, models: set) -> Price:
    key = f"pricing[{i}]"
    t = dict(_table(key, t))
    if hasattr(t.get("effective"), "isoformat"):      # a TOML date literal: 2026-01-01
        t["effective"] = t["effective"].isoformat()
    v = _typed(key, t, Price)
    if v.get("model") not in models:
        _fail(f"{key}.model", f"no model with id {v.get('model')!r}" if "model" in v else "is required")
    _check(key, v, _PRICE_CHECKS)
    currency = v.get("currency", "USD")
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        _fail(f"{key}.currency", f"must be an ISO 4217 code such as USD or EUR, got {currency!r}")
    if currency != "USD" and "usd_per_unit" not in v:
        _fail(f"{key}.usd_per_unit", f"is required when currency is {currency} (USD per 1 {currency})")
    try:
        Price(**v).effective_day
    except ValueError:
        _fail(f"{key}.effective", f"must be a date YYYY-MM-DD, got {v['effective']!r}")
    return Price(**v)


def parse(data: dict) -> Config:
    if not isinstance(data, dict):
        _fail("(toml)", "the document must be a table")
    known = {"server", "auth", "providers", "models", "audit", "pricing", "routing", "aliases",
             "scheduling", "state", "limits", "redaction", "guard", "metrics", "tenants", "policy",
             "costs", "privacy", "federation", "admin", "cache", "resources", "slo", "dashboard", "events", "webhooks",
             "tracing"}
    for k in data:
        if k not in known:
            _fail(k, f"unknown section (known: {', '.join(sorted(known))})")
    server = _parse_server(data.get("server", {}))
    auth = _parse_auth(data.get("auth", {}))
    providers = tuple(_parse_provider(i, p)
                      for i, p in enumerate(_tables("providers", data.get("providers", []))))
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        _fail("providers", "provider names must be unique")
    models = tuple(_parse_model(i, m, set(names))
                   for i, m in enumerate(_tables("models", data.get("models", []))))
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        _fail("models", "model ids must be unique")
    if not models:
        _fail("models", "at least one [[models]] entry is required")
    v = _typed("audit", data.get("audit", {}), AuditConfig)
    _check("audit", v, {"max_buffered_rows": (">=", 1), "checkpoint_every_rows": (">=", 1),
                        "checkpoint_every_s": (">", 0), "durable_wait_ms": (">=", 0),
                        "retention_days": (">=", 0)})
    if v.get("synchronous", "normal") not in SYNCHRONOUS:
        _fail("audit.synchronous", f"must be one of {', '.join(SYNCHRONOUS)}, got {v['synchronous']!r}")
    audit = AuditConfig(**v)
    pricing = tuple(_parse_price(i, p, set(ids))
                    for i, p in enumerate(_tables("pricing", data.get("pricing", []))))
    dated = [(p.model, p.effective_day) for p in pricing]
    if len(set(dated)) != len(dated):
        _fail("pricing", "two entries for the same model and effective date")
    # [routing] holds the dispatch keys (dispatch.DispatchConfig) and the engine's (routing/config.py)
    rt = _table("routing", data.get("routing", {}))
    dispatch_keys = {f.name for f in fields(DispatchConfig)}
    try:
        routing = parse_routing({k: v for k, v in rt.items() if k not in dispatch_keys},
                                data.get("aliases", []), ids)
    except ValueError as exc:   # RoutingConfigError: the message starts with the key
        raise ConfigError(str(exc)) from None
    scheduling = parse_scheduling(data.get("scheduling", {}), set(names), _fail)
    if scheduling.low_watermark >= server.congestion_watermark:
        _fail("scheduling.low_watermark", f"must be below server.congestion_watermark "
                                          f"({server.congestion_watermark}), got {scheduling.low_watermark}")
    from .tenants import check_tenant_refs, parse_tenants
    metrics = _parse_metrics(data.get("metrics", {}))
    policy = PolicyConfig(**_typed("policy", data.get("policy", {}), PolicyConfig))
    tenants = parse_tenants(_tables("tenants", data.get("tenants", [])))
    check_tenant_refs(auth, tenants)
    costs = CostsConfig(**_typed("costs", data.get("costs", {}), CostsConfig))
    if costs.baseline_model and costs.baseline_model not in ids:
        _fail("costs.baseline_model", f"is not a configured model id: {costs.baseline_model!r}")
    v = _typed("privacy", data.get("privacy", {}), PrivacyConfig)
    _check("privacy", v, {"epsilon_per_day": (">", 0), "tokens_clip": (">=", 1),
                          "cost_clip_usd": (">", 0)})
    federation = FederationConfig()
    if "federation" in data:
        try:
            federation = parse_federation(data["federation"], set(ids))
        except FederationConfigError as exc:
            raise ConfigError(str(exc)) from None
    cfg = Config(server=server, auth=auth, providers=providers, models=models, audit=audit,
                 pricing=pricing,
                 dispatch=_parse_dispatch({k: v for k, v in rt.items() if k in dispatch_keys}),
                 routing=routing, scheduling=scheduling,
                 state=parse_state(data.get("state", {})),
                 limits=parse_limits(data.get("limits", []), set(ids)),
                 redaction=parse_redaction(data.get("redaction", {}), _fail),
                 guard=parse_guard(data.get("guard", {}), _fail),
                 metrics=metrics, tenants=tenants, policy=policy, costs=costs,
                 privacy=PrivacyConfig(**v), federation=federation,
                 admin=parse_admin(data.get("admin", {})),
                 cache=parse_cache(_table("cache", data.get("cache", {})), _fail),
                 resources=parse_resources(data.get("resources", {}), _typed, _check),
                 slo=parse_slos(data.get("slo", []), set(ids) | {a.name for a in routing.aliases},
                                tuple(scheduling.tiers), _fail),
                 dashboard=parse_dashboard(data.get("dashboard", {}), _fail),
                 events=parse_events(data.get("events", {}), _fail),
                 webhooks=parse_webhooks(data.get("webhooks", []), _fail),
                 tracing=parse_tracing(data.get("tracing", {}), _typed, _check))
    check_workers(cfg, server.workers, "server.workers")
    return cfg


def _parse_dispatch(t) -> DispatchConfig:
    v = _typed("routing", t, DispatchConfig)
    _check("routing", v, DISPATCH_CHECKS)
    if "hedge_tiers" in v and (problem := check_tiers(v["hedge_tiers"])):
        _fail("routing.hedge_tiers", problem)
    return DispatchConfig(**v)


def check_workers(cfg: Config, workers: int, key: str) -> None:
    """Refuse N > 1 worker processes when a worker of its own would break a guarantee.

    With [state] redis_url the workers share what must be one: [[limits]] (rate limits, budgets)
    and the anti-replay nonces (state/, auth.check_shared_nonce). Without it each worker would
    keep its own, so N > 1 is refused while any [[limits]] or [[auth.hmac_keys]] is configured
    (an HMAC key enables frame sessions and request signatures, the users of the nonce cache;
    without one nothing reaches it). What stays per worker is documented (README, "Workers").
    """
    if workers <= 1 or cfg.state.redis_url:
        return
    where = f"{key} {workers}" if key.startswith("--") else key
    if cfg.limits:
        _fail(where, f"{workers} worker processes would each count [[limits]] (rate limits, budgets) on "
              "their own, letting a tenant spend up to N times its budget. Set [state] redis_url "
              "to share them, or run one worker (--workers 1)")
    if cfg.auth.hmac_keys:
        _fail(where, f"{workers} worker processes would each keep their own anti-replay nonce cache, "
              f"and {len(cfg.auth.hmac_keys)} [[auth.hmac_keys]] are configured: they enable signed "
              "frame sessions (gRPC Session, QUIC) and HMAC request signatures (HTTP, typed gRPC), "
              "so a signed request or session HELLO replayed to another worker would be accepted. "
              "Set [state] redis_url to share one replay window, run one worker (--workers 1), or "
              "serve API-key traffic only (remove every [[auth.hmac_keys]])")
    from .hmac_keys import HmacKeyFile, hmac_path   # `atp keys --hmac` keys: the same risk
    from .tenants import keys_path
    stored = [r for r in HmacKeyFile(hmac_path(keys_path(cfg))).list() if r.revoked is None]
    if stored:
        _fail(where, f"{workers} worker processes would each keep their own anti-replay nonce cache, "
              f"and the key store holds {len(stored)} HMAC key(s) (`atp keys list --hmac`): a "
              "signed request replayed to another worker would be accepted. Set [state] redis_url "
              "to share one replay window, run one worker (--workers 1), or revoke them")


def loads(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"(toml): {exc}") from None
    return parse(data)


def load(path: str | os.PathLike | None = None) -> Config:
    """Load a TOML file, or the embedded default when `path` is None."""
    if path is None:
        return loads(DEFAULT_TOML)
    p = Path(path)
    try:
        text = p.read_bytes().decode()
    except OSError as exc:
        raise ConfigError(f"(file): cannot read {p}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:   # TOML is UTF-8 by definition
        raise ConfigError(f"(file): {p} is not UTF-8 text (byte {exc.start})") from None
    return loads(text)


def federation_key(cfg: Config) -> Path:
    """This router's AGP key: federation.key, else <state_dir>/agp_key.pem."""
    if cfg.federation.key:
        return Path(os.path.expanduser(cfg.federation.key))
    return state_dir(cfg) / "agp_key.pem"


def audit_signing_key(cfg: Config) -> Path:
    """The checkpoint signing key: audit.signing_key, else <state_dir>/audit_signing_key.pem."""
    if cfg.audit.signing_key:
        return Path(os.path.expanduser(cfg.audit.signing_key))
    return state_dir(cfg) / "audit_signing_key.pem"


def privacy_ledger(cfg: Config) -> Path:
    """Where the differential-privacy epsilon ledger is kept: <state_dir>/privacy_ledger.json."""
    return state_dir(cfg) / "privacy_ledger.json"


def audit_file(cfg: Config) -> Path:
    """The audit database: audit.path, else <state_dir>/audit.sqlite."""
    if cfg.audit.path:
        return Path(os.path.expanduser(cfg.audit.path))
    return state_dir(cfg) / "audit.sqlite"


def state_dir(cfg: Config) -> Path:
    d = Path(os.path.expanduser(cfg.server.state_dir))
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail("server.state_dir", f"cannot create {d}: {exc.strerror or exc}")
    return d

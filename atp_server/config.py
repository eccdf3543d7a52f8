"""Typed TOML configuration, validated at load: every error names the key and the problem."""
import hashlib
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .adapters.base import ModelSpec


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


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str                      # simulated | openai_compat
    options: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    enabled: bool = True
    path: str = ""                 # SQLite file; "" = <state_dir>/audit.sqlite


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    audit: AuditConfig = AuditConfig()

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)


PROVIDER_TYPES = ("simulated", "openai_compat")

# The well-known development credentials of the embedded default (loopback only; printed at start).
DEV_API_KEY = "sk-atp-dev"
DEV_HMAC_KEY_ID = 1
DEV_HMAC_SECRET = b"atp-dev-hmac-secret-change-me!!!"



def dev_auth_toml(name: str = "dev", api_key: str = DEV_API_KEY) -> str:
    """TOML tables accepting the development credentials: the embedded default, benches, tests."""
    return f"""
[[auth.api_keys]]
name = "{name}"
sha256 = "{hashlib.sha256(api_key.encode()).hexdigest()}"
tenant = "default"

[[auth.hmac_keys]]
id = {DEV_HMAC_KEY_ID}
secret = "{DEV_HMAC_SECRET.decode()}"
tenant = "default"
"""


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


_KINDS = {int: ((int,), "an integer"), float: ((int, float), "a number"), str: ((str,), "a string"),
          bool: ((bool,), "true or false")}


def _section(key: str, table: dict, cls, extra: dict | None = None):
    """Build a frozen dataclass from a TOML table, rejecting unknown keys and wrong types."""
    if not isinstance(table, dict):
        _fail(key, "must be a table")
    known = {f.name: f for f in fields(cls)}
    values = dict(extra or {})
    for name, value in table.items():
        if name not in known:
            _fail(f"{key}.{name}", f"unknown key (known: {', '.join(sorted(known))})")
        kind = _KINDS.get(known[name].type)
        if kind:
            _check_type(f"{key}.{name}", value, *kind)
        values[name] = value
    return values


def _port(key, value):
    if not 0 <= value <= 65535:
        _fail(key, f"must be a port number 0..65535, got {value}")


def _parse_server(t: dict) -> ServerConfig:
    v = _section("server", t, ServerConfig)
    cfg = ServerConfig(**v)
    for name in ("http_port", "grpc_port", "quic_port"):
        _port(f"server.{name}", getattr(cfg, name))
    if cfg.workers < 1:
        _fail("server.workers", "must be >= 1")
    if cfg.max_inflight < 1 or cfg.max_queue < 0:
        _fail("server.max_inflight", "must be >= 1 (and server.max_queue >= 0)")
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
        env = os.environ.get(raw)
        if env is None:
            _fail(f"{key}.secret_env", f"environment variable {raw} is not set")
        secret = env.encode()
    if len(secret) < 16:
        _fail(f"{key}.{src}", "secret must be at least 16 bytes")
    return secret


def _parse_auth(t: dict) -> AuthConfig:
    if not isinstance(t, dict):
        _fail("auth", "must be a table")
    api_keys, hmac_keys = [], []
    for i, k in enumerate(t.get("api_keys", [])):
        key = f"auth.api_keys[{i}]"
        if "key_env" in k:   # convenience: hash a key taken from the environment at load
            env = os.environ.get(k["key_env"])
            if env is None:
                _fail(f"{key}.key_env", f"environment variable {k['key_env']} is not set")
            k = {**{x: y for x, y in k.items() if x != "key_env"},
                 "sha256": hashlib.sha256(env.encode()).hexdigest()}
        v = _section(key, k, ApiKey)
        if "name" not in v or "sha256" not in v:
            _fail(key, "needs name and sha256 (or key_env)")
        if len(v["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in v["sha256"].lower()):
            _fail(f"{key}.sha256", "must be 64 hex characters (sha256 of the key)")
        api_keys.append(ApiKey(v["name"], v["sha256"].lower(), v.get("tenant", "default")))
    seen = set()
    for i, k in enumerate(t.get("hmac_keys", [])):
        key = f"auth.hmac_keys[{i}]"
        if not isinstance(k, dict):
            _fail(key, "must be a table")
        unknown = set(k) - {"id", "secret", "secret_hex", "secret_env", "tenant"}
        if unknown:
            _fail(f"{key}.{sorted(unknown)[0]}", "unknown key")
        kid = _check_type(f"{key}.id", k.get("id"), (int,), "an integer key id")
        if not 0 <= kid <= 0xFFFFFFFF or kid in seen:
            _fail(f"{key}.id", "must be a unique u32")
        seen.add(kid)
        hmac_keys.append(HmacKeyConfig(kid, _secret(key, k), k.get("tenant", "default")))
    rest = {x: y for x, y in t.items() if x not in ("api_keys", "hmac_keys")}
    v = _section("auth", rest, AuthConfig)
    return AuthConfig(tuple(api_keys), tuple(hmac_keys), **v)


def _parse_provider(i: int, t: dict) -> ProviderConfig:
    key = f"providers[{i}]"
    if not isinstance(t, dict):
        _fail(key, "must be a table")
    name = _check_type(f"{key}.name", t.get("name"), (str,), "a string")
    ptype = _check_type(f"{key}.type", t.get("type"), (str,), "a string")
    if ptype not in PROVIDER_TYPES:
        _fail(f"{key}.type", f"unknown provider type {ptype!r} (known: {', '.join(PROVIDER_TYPES)})")
    options = {k: v for k, v in t.items() if k not in ("name", "type")}
    if ptype == "openai_compat" and "base_url" not in options:
        _fail(f"{key}.base_url", "is required for openai_compat providers")
    return ProviderConfig(name, ptype, options)


def _parse_model(i: int, t: dict, providers: set) -> ModelSpec:
    key = f"models[{i}]"
    v = _section(key, {k: x for k, x in t.items() if k != "capabilities"}, ModelSpec)
    for required in ("id", "provider"):
        if required not in v:
            _fail(f"{key}.{required}", "is required")
    if v["provider"] not in providers:
        _fail(f"{key}.provider", f"no provider named {v['provider']!r}")
    caps = t.get("capabilities", ["chat"])
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        _fail(f"{key}.capabilities", "must be a list of strings")
    v.setdefault("upstream", v["id"])
    if not 0 <= v.get("quality", 0.5) <= 1:
        _fail(f"{key}.quality", "must be in [0, 1]")
    for name in ("price_in_per_mtok", "price_out_per_mtok", "latency_ms"):
        if v.get(name, 0) < 0:
            _fail(f"{key}.{name}", "must be >= 0")
    return ModelSpec(capabilities=frozenset(caps), **{k: (float(x) if k in (
        "price_in_per_mtok", "price_out_per_mtok", "quality", "latency_ms") else x) for k, x in v.items()})


def parse(data: dict) -> Config:
    known = {"server", "auth", "providers", "models", "audit"}
    for k in data:
        if k not in known:
            _fail(k, f"unknown section (known: {', '.join(sorted(known))})")
    server = _parse_server(data.get("server", {}))
    auth = _parse_auth(data.get("auth", {}))
    providers = tuple(_parse_provider(i, p) for i, p in enumerate(data.get("providers", [])))
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        _fail("providers", "provider names must be unique")
    models = tuple(_parse_model(i, m, set(names)) for i, m in enumerate(data.get("models", [])))
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        _fail("models", "model ids must be unique")
    if not models:
        _fail("models", "at least one [[models]] entry is required")
    audit = AuditConfig(**_section("audit", data.get("audit", {}), AuditConfig))
    return Config(server, auth, providers, models, audit)


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
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"(file): cannot read {p}: {exc.strerror}") from None
    return loads(text)


def state_dir(cfg: Config) -> Path:
    d = Path(os.path.expanduser(cfg.server.state_dir))
    d.mkdir(parents=True, exist_ok=True)
    return d

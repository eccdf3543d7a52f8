"""The [federation] section: this router's identity, where it listens for AGP, whom it peers with and trusts."""
import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class FederationConfigError(ValueError):
    """The message starts with the dotted key at fault (config.py re-raises it as ConfigError)."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    address: str          # host:port of the peer's AGP listener
    router_id: str        # who must answer there


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """How this router sends requests to a next hop (docs/FEDERATION.md §8): the hop's ATP gRPC
    listener and the HMAC key its frame sessions are signed with (a key the hop knows in its
    [[auth.hmac_keys]]; the tenant it maps to there is what the hop bills and polices)."""
    router_id: str
    address: str          # host:port of the hop's ATP gRPC port (not its AGP listener)
    key_id: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class FederationConfig:
    enabled: bool = False
    router_id: str = ""
    domain: str = ""                      # "" = the router id: a domain of one
    listen: str = "127.0.0.1:8473"        # 8473: next to ATP's 8470-8472
    reflector: bool = False
    overhead_per_mtok: float = 0.0        # USD this router adds per million tokens it relays
    hop_latency_ms: float = 0.0           # latency it adds
    hold_time_ms: int = 3000
    keepalive_ms: int = 1000
    key: str = ""                         # Ed25519 PEM; "" = <state_dir>/agp_key.pem (created)
    advertise: tuple[str, ...] | None = None   # model ids to offer; None = every configured model
    peers: tuple[PeerConfig, ...] = ()
    trust: dict = field(default_factory=dict)   # router id -> Ed25519PublicKey
    forward: tuple[ForwardConfig, ...] = ()     # [[federation.forward]]: credentials per next hop


_DEFAULTS = {name: f.default for name, f in FederationConfig.__dataclass_fields__.items()}


def _fail(key: str, problem: str):
    raise FederationConfigError(f"{key}: {problem}")


def _str(t: dict, key: str, default: str, where: str) -> str:
    v = t.get(key, default)
    if not isinstance(v, str):
        _fail(f"{where}.{key}", f"must be a string, got {type(v).__name__}")
    return v


def _host_port(value: str, key: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        _fail(key, f"must be HOST:PORT, got {value!r}")
    return value


def public_key(text: str, key: str) -> Ed25519PublicKey:
    """A trust-store entry: the base64 of the 32 raw bytes (what `atp federation keygen` prints) or a PEM."""
    if "BEGIN PUBLIC KEY" in text:
        try:
            k = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            _fail(key, f"not a PEM public key ({exc})")
        if not isinstance(k, Ed25519PublicKey):
            _fail(key, "must be an Ed25519 key")
        return k
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _fail(key, "must be base64 (32 bytes) or a PEM public key")
    if len(raw) != 32:
        _fail(key, f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse(t, model_ids: set) -> FederationConfig:
    if not isinstance(t, dict):
        _fail("federation", "must be a table ([federation])")
    known = {f for f in FederationConfig.__dataclass_fields__}
    for k in t:
        if k not in known:
            _fail(f"federation.{k}", f"unknown key (known: {', '.join(sorted(known))})")
    enabled = t.get("enabled", True)
    if not isinstance(enabled, bool):
        _fail("federation.enabled", "must be true or false")
    router_id = _str(t, "router_id", "", "federation")
    if enabled and not router_id:
        _fail("federation.router_id", "is required (a name unique in the federation)")
    nums = {}
    for k, lo, hi in (("overhead_per_mtok", 0, 1e6), ("hop_latency_ms", 0, 1e6),
                      ("hold_time_ms", 300, 600_000), ("keepalive_ms", 100, 200_000)):
        v = t.get(k, _DEFAULTS[k])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            _fail(f"federation.{k}", f"must be a number in [{lo}, {hi}], got {v!r}")
        nums[k] = v
    if nums["keepalive_ms"] * 3 > nums["hold_time_ms"]:
        _fail("federation.keepalive_ms", "must be at most a third of hold_time_ms (three "
                                         "keepalives per hold time survive one lost message)")
    advertise = t.get("advertise")
    if advertise is not None:
        if not isinstance(advertise, list) or not all(isinstance(m, str) for m in advertise):
            _fail("federation.advertise", "must be a list of model ids")
        unknown = [m for m in advertise if m not in model_ids]
        if unknown:
            _fail("federation.advertise", f"not configured models: {', '.join(unknown)}")
        advertise = tuple(advertise)
    peers = []
    for i, p in enumerate(t.get("peers", [])):
        where = f"federation.peers[{i}]"
        if not isinstance(p, dict):
            _fail(where, "must be a table ([[federation.peers]])")
        extra = set(p) - {"address", "router_id"}
        if extra:
            _fail(f"{where}.{sorted(extra)[0]}", "unknown key (known: address, router_id)")
        peers.append(PeerConfig(_host_port(_str(p, "address", "", where), f"{where}.address"),
                                _str(p, "router_id", "", where) or _fail(f"{where}.router_id",
                                                                           "is required")))
    trust = {}
    for i, e in enumerate(t.get("trust", [])):
        where = f"federation.trust[{i}]"
        if not isinstance(e, dict) or set(e) != {"router_id", "public_key"}:
            _fail(where, "must be a table with router_id and public_key")
        trust[_str(e, "router_id", "", where)] = public_key(_str(e, "public_key", "", where),
                                                            f"{where}.public_key")
    forward = tuple(_forward(i, e) for i, e in enumerate(t.get("forward", [])))
    if len({f.router_id for f in forward}) != len(forward):
        _fail("federation.forward", "one entry per router_id")
    missing = [p.router_id for p in peers if p.router_id not in trust]
    if missing:
        _fail("federation.trust", f"no public key for peer(s) {', '.join(missing)}: a peer "
                                  "must be in the trust store")
    return FederationConfig(enabled, router_id, _str(t, "domain", "", "federation") or router_id,
                            _host_port(_str(t, "listen", _DEFAULTS["listen"], "federation"),
                                       "federation.listen"),
                            bool(t.get("reflector", False)), float(nums["overhead_per_mtok"]),
                            float(nums["hop_latency_ms"]), int(nums["hold_time_ms"]),
                            int(nums["keepalive_ms"]), _str(t, "key", "", "federation"),
                            advertise, tuple(peers), trust, forward)


# At least 16 bytes, as [[auth.hmac_keys]] requires of the key it must match on the other side.
MIN_SECRET = 16


def _forward(i: int, e) -> ForwardConfig:
    where = f"federation.forward[{i}]"
    if not isinstance(e, dict):
        _fail(where, "must be a table ([[federation.forward]])")
    known = {"router_id", "address", "key_id", "secret", "secret_hex", "secret_env"}
    extra = set(e) - known
    if extra:
        _fail(f"{where}.{sorted(extra)[0]}", f"unknown key (known: {', '.join(sorted(known))})")
    rid = _str(e, "router_id", "", where) or _fail(f"{where}.router_id", "is required")
    address = _host_port(_str(e, "address", "", where), f"{where}.address")
    key_id = e.get("key_id")
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id < 2**32:
        _fail(f"{where}.key_id", "must be the u32 id of an HMAC key the hop knows")
    sources = [k for k in ("secret", "secret_hex", "secret_env") if k in e]
    if len(sources) != 1:
        _fail(where, "give exactly one of secret, secret_hex, secret_env")
    raw = _str(e, sources[0], "", where)
    if sources[0] == "secret_hex":
        try:
            secret = bytes.fromhex(raw)
        except ValueError:
            _fail(f"{where}.secret_hex", "is not valid hex")
    elif sources[0] == "secret_env":
        if raw not in os.environ:
            _fail(f"{where}.secret_env", f"environment variable {raw} is not set")
        secret = os.environ[raw].encode()
    else:
        secret = raw.encode()
    if len(secret) < MIN_SECRET:
        _fail(f"{where}.{sources[0]}", f"an HMAC secret is at least {MIN_SECRET} bytes")
    return ForwardConfig(rid, address, key_id, secret)


def load_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """This router's AGP key, created (0600) on first use."""
    path = Path(path).expanduser()
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise FederationConfigError(f"federation.key: {path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return key


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()

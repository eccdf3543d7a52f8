"""Tenants (users, groups, attributes), the API-key store file behind `atp keys`, and JWT settings.

A request's tenant always comes from its credentials: an API key of the store or of the config,
an HMAC key id, or a verified JWT's tenant claim — never from the request body.

Store keys are `atp_<id>_<secret>`: the id (12 hex digits) finds the record without hashing, the
secret (32 random bytes, URL-safe base64) is checked against sha256(salt || secret). A slow KDF
(scrypt) protects low-entropy passwords from offline guessing; a 256-bit random secret cannot be
guessed whatever the hash, so scrypt would only add ~50 ms to the first request of every key
(measured by hashlib.scrypt with n=2**14, r=8) and nothing to the security. The per-key salt keeps
two stores from sharing digests.
"""
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

KEYS_FILE = "keys.json"        # in the state dir unless [auth] keys_file says otherwise
KEYS_FORMAT = 1
KEY_PREFIX = "atp_"
ID_HEX = 12                    # 48 bits: ids are public, unique by retry, not secret
SECRET_BYTES = 32              # 256 bits of entropy: see the module note on hashing
NAME_MAX = 64


class KeyStoreError(ValueError):
    """A keys file that cannot be used; the message starts with the file and the key at fault."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    attributes: dict = field(default_factory=dict, hash=False, compare=False)
    users: dict = field(default_factory=dict, hash=False, compare=False)   # user -> frozenset(groups)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    jwks_file: str
    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    tenant_claim: str = "tenant"
    groups_claim: str = "groups"
    user_claim: str = "sub"
    attribute_claims: tuple[str, ...] = ()
    leeway_s: int = 30


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One API key of the store, as written in the keys file (the key itself never is)."""

    id: str
    name: str
    tenant: str
    salt: str                          # hex
    digest: str                        # hex sha256(salt || secret)
    created: float
    expires: float | None = None       # Unix seconds; None = never
    revoked: float | None = None
    user: str = ""
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None   # None = every model the policy allows

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        return "expired" if self.expires is not None and now >= self.expires else "active"


# ---- config sections --------------------------------------------------------------------------------

def _err(key: str, problem: str):
    from .config import ConfigError     # config imports this module's parsers lazily
    raise ConfigError(f"{key}: {problem}")


def _strings(key: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _err(key, f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def parse_tenants(tables: list[dict]) -> tuple[Tenant, ...]:
    """[[tenants]]: name, attributes = {k = "v"}, users = {alice = ["admins"]}."""
    out, seen = [], set()
    for i, t in enumerate(tables):
        key = f"tenants[{i}]"
        unknown = set(t) - {"name", "attributes", "users"}
        if unknown:
            _err(f"{key}.{sorted(unknown)[0]}", "unknown key (known: attributes, name, users)")
        name = t.get("name")
        if not isinstance(name, str) or not name or len(name) > NAME_MAX:
            _err(f"{key}.name", f"is required: a string of 1..{NAME_MAX} characters")
        if name in seen:
            _err(f"{key}.name", f"tenant {name!r} is defined twice")
        seen.add(name)
        attrs = t.get("attributes", {})
        if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
            _err(f"{key}.attributes", f"must be a table of strings, got {attrs!r}")
        users = t.get("users", {})
        if not isinstance(users, dict):
            _err(f"{key}.users", "must be a table: user = [groups]")
        groups = {u: frozenset(_strings(f"{key}.users.{u}", g)) for u, g in users.items()}
        out.append(Tenant(name, dict(attrs), groups))
    return tuple(out)


def check_tenant_refs(auth, tenants: tuple[Tenant, ...]) -> None:
    """With [[tenants]] configured, every configured key names one of them (or "default")."""
    if not tenants:
        return
    names = {t.name for t in tenants} | {"default"}
    for section, keys in (("auth.api_keys", auth.api_keys), ("auth.hmac_keys", auth.hmac_keys)):
        for i, k in enumerate(keys):
            if k.tenant not in names:
                _err(f"{section}[{i}].tenant", f"{k.tenant!r} is not a [[tenants]] name "
                     f"(known: {', '.join(sorted(names))})")


def parse_jwt(key: str, t: dict) -> JwtConfig:
    known = {f: f for f in JwtConfig.__dataclass_fields__}
    for name in t:
        if name not in known:
            _err(f"{key}.{name}", f"unknown key (known: {', '.join(sorted(known))})")
    for required in ("jwks_file", "issuer", "audience"):
        if not isinstance(t.get(required), str) or not t[required]:
            _err(f"{key}.{required}", "is required (a non-empty string)")
    v = dict(t)
    for name in ("algorithms", "attribute_claims"):
        if name in v:
            v[name] = _strings(f"{key}.{name}", v[name])
    for name in ("tenant_claim", "groups_claim", "user_claim"):
        if name in v and (not isinstance(v[name], str) or not v[name]):
            _err(f"{key}.{name}", "must be a non-empty string")
    if "none" in (a.lower() for a in v.get("algorithms", ())):
        _err(f"{key}.algorithms", "'none' would accept unsigned tokens")
    if not isinstance(v.get("leeway_s", 0), int) or not 0 <= v.get("leeway_s", 0) <= 300:
        _err(f"{key}.leeway_s", "must be an integer in 0..300")
    return JwtConfig(**v)


# ---- the key store file -----------------------------------------------------------------------------

def keys_path(cfg) -> Path:
    from .config import state_dir
    if cfg.auth.keys_file:
        return Path(os.path.expanduser(cfg.auth.keys_file))
    return state_dir(cfg) / KEYS_FILE


def _check_record(where: str, r, tenants: frozenset | None) -> StoredKey:
    if not isinstance(r, dict):
        raise KeyStoreError(f"{where}: must be an object")

    def get(name, types, required=True):
        if r.get(name) is None:      # JSON null = not set (expires, revoked, models)
            if required:
                raise KeyStoreError(f"{where}.{name}: is required")
            return None
        if not isinstance(r[name], types) or isinstance(r[name], bool):
            raise KeyStoreError(f"{where}.{name}: has the wrong type ({type(r[name]).__name__})")
        return r[name]
    kid, salt, digest = get("id", str), get("salt", str), get("digest", str)
    if len(kid) != ID_HEX or not all(c in "0123456789abcdef" for c in kid):
        raise KeyStoreError(f"{where}.id: must be {ID_HEX} lower-case hex digits")
    for name, value, size in (("salt", salt, 16), ("digest", digest, 32)):
        try:
            if len(bytes.fromhex(value)) != size:
                raise ValueError
        except ValueError:
            raise KeyStoreError(f"{where}.{name}: must be {2 * size} hex digits") from None
    tenant = get("tenant", str)
    if tenants is not None and tenant not in tenants:
        raise KeyStoreError(f"{where}.tenant: {tenant!r} is not a configured [[tenants]] name")
    models = get("models", list, required=False)
    groups = get("groups", list, required=False) or []
    for name, items in (("models", models or []), ("groups", groups)):
        if not all(isinstance(x, str) and x for x in items):
            raise KeyStoreError(f"{where}.{name}: must be a list of non-empty strings")
    return StoredKey(kid, get("name", str), tenant, salt, digest, float(get("created", (int, float))),
                     get("expires", (int, float), required=False),
                     get("revoked", (int, float), required=False), get("user", str, False) or "",
                     tuple(groups), None if models is None else tuple(models))


def parse_keys(raw: bytes, where: str, tenants: frozenset | None = None) -> dict[str, StoredKey]:
    """The keys file's text -> {id: StoredKey}; KeyStoreError naming the entry at fault."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != KEYS_FORMAT:
        raise KeyStoreError(f"{where}.format: must be {KEYS_FORMAT}")
    records = doc.get("api_keys")
    if not isinstance(records, list):
        raise KeyStoreError(f"{where}.api_keys: must be a list")
    out: dict[str, StoredKey] = {}
    for i, r in enumerate(records):
        k = _check_record(f"{where}: api_keys[{i}]", r, tenants)
        if k.id in out:
            raise KeyStoreError(f"{where}: api_keys[{i}].id: {k.id} appears twice")
        out[k.id] = k
    return out


def load_keys(path: Path, tenants: frozenset | None = None) -> dict[str, StoredKey]:
    """The store at `path`; a missing file is an empty store (no key created yet)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise KeyStoreError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_keys(raw, str(path), tenants)


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """`atp_<id>_<secret>` -> (id, secret), or None for any other shape."""
    if not token.startswith(KEY_PREFIX) or len(token) < len(KEY_PREFIX) + ID_HEX + 2:
        return None
    kid, sep, secret = token[len(KEY_PREFIX):].partition("_")
    if sep != "_" or len(kid) != ID_HEX or not secret:
        return None
    return kid, secret


def verify_secret(key: StoredKey, secret: str) -> bool:
    return hmac.compare_digest(_digest(bytes.fromhex(key.salt), secret), key.digest)


class KeyFile:
    """Read-modify-write of the keys file under an exclusive lock, replaced atomically (the
    server reads it on SIGHUP / `atp reload`; a half-written file must never be seen)."""

    def __init__(self, path: Path, tenants: frozenset | None = None):
        self.path = Path(path)
        self.tenants = tenants

    def _write(self, keys: dict[str, StoredKey]) -> None:
        doc = {"format": KEYS_FORMAT, "api_keys": [
            {k: v for k, v in (("id", r.id), ("name", r.name), ("tenant", r.tenant),
                               ("user", r.user), ("groups", list(r.groups)),
                               ("models", None if r.models is None else list(r.models)),
                               ("salt", r.salt), ("digest", r.digest), ("created", r.created),
                               ("expires", r.expires), ("revoked", r.revoked))
             if v is not None or k in ("expires", "revoked")} for r in keys.values()]}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # digests: owner only
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _locked(self, change):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self._load()
            result = change(keys)
            self._write(keys)
            return result

    def create(self, name: str, tenant: str, *, user: str = "", groups=(), models=None,
               expires: float | None = None, now: float | None = None) -> tuple[str, StoredKey]:
        """A new key: (the key itself, shown once; its record)."""
        if not name or len(name) > NAME_MAX:
            raise KeyStoreError(f"name: must be 1..{NAME_MAX} characters")
        if self.tenants is not None and tenant not in self.tenants:
            raise KeyStoreError(f"tenant: {tenant!r} is not a configured [[tenants]] name")
        for field_name, items in (("groups", groups), ("models", models or ())):
            # the loader refuses these (parse_key): one stored would make the whole file unreadable
            if not all(isinstance(x, str) and x for x in items):
                raise KeyStoreError(f"{field_name}: must be non-empty names, not {list(items)!r}")
        now = time.time() if now is None else now

        def add(keys):
            kid = secrets.token_hex(ID_HEX // 2)
            while kid in keys:
                kid = secrets.token_hex(ID_HEX // 2)
            secret = secrets.token_urlsafe(SECRET_BYTES)
            salt = secrets.token_bytes(16)
            rec = StoredKey(kid, name, tenant, salt.hex(), _digest(salt, secret), now, expires,
                            None, user, tuple(groups), None if models is None else tuple(models))
            keys[kid] = rec
            return f"{KEY_PREFIX}{kid}_{secret}", rec
        return self._locked(add)

    def _load(self) -> dict:
        return load_keys(self.path, self.tenants)

    def _find(self, keys, ref: str) -> StoredKey:
        hits = [k for k in keys.values() if ref in (str(k.id), k.name) and k.revoked is None]
        if not hits:
            raise KeyStoreError(f"no active key with id or name {ref!r}")
        if len(hits) > 1:
            raise KeyStoreError(f"{len(hits)} active keys are named {ref!r}: give the id")
        return hits[0]

    def revoke(self, ref: str, now: float | None = None) -> StoredKey:
        now = time.time() if now is None else now

        def revoke(keys):
            rec = replace(self._find(keys, ref), revoked=now)
            keys[rec.id] = rec
            return rec
        return self._locked(revoke)

    def rotate(self, ref: str, grace_s: float = 0.0, now: float | None = None) -> tuple[str, StoredKey]:
        """A new key with the old one's name, tenant and scope; the old one expires after
        `grace_s` (0: at once) so clients can switch without an outage."""
        now = time.time() if now is None else now
        old = self._locked(lambda keys: self._find(keys, ref))
        token, new = self._replacement(old, now)

        def retire(keys):
            rec = keys[old.id]
            until = now + grace_s
            keys[old.id] = replace(rec, expires=until if rec.expires is None else min(rec.expires, until))
        self._locked(retire)
        return token, new

    def _replacement(self, old: StoredKey, now: float):
        return self.create(old.name, old.tenant, user=old.user, groups=old.groups,
                           models=old.models, expires=old.expires, now=now)

    def list(self) -> list[StoredKey]:
        return list(self._load().values())

"""Authentication at the door: API keys (stored hashed), HMAC request signatures, session key ids."""
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from codec import Keyring, NonceCache, NonceSnapshot
from codec.errors import AuthError, ErrorCode

from . import tenants as tenancy
from .config import AuthConfig
from .types import AtpError

# Headers of the optional request signature, PROTOCOL.md §9.4 (typed gRPC metadata uses the same
# names, lower-case).
SIG_KEY_ID = "x-atp-key-id"             # decimal u32
SIG_TIMESTAMP = "x-atp-timestamp"       # Unix milliseconds, decimal; signed as sent
SIG_NONCE = "x-atp-nonce"               # 16 hex characters (8 random bytes), either case
SIG_SIGNATURE = "x-atp-signature"       # 64 hex characters: HMAC-SHA256 of signing_input()
SIG_HEADERS = (SIG_KEY_ID, SIG_TIMESTAMP, SIG_NONCE, SIG_SIGNATURE)
# The exact syntax of each value (§9.4): ASCII only, no sign, no spaces; int()/fromhex() would
# also take "+7", " 7", "7_0", Arabic-Indic digits or spaced hex.
_SYNTAX = {SIG_KEY_ID: (re.compile(r"[0-9]{1,10}"), "a decimal key id (u32)"),
           SIG_TIMESTAMP: (re.compile(r"[0-9]{1,19}"), "Unix milliseconds in 1-19 decimal digits"),
           SIG_NONCE: (re.compile(r"[0-9A-Fa-f]{16}"), "16 hex digits"),
           SIG_SIGNATURE: (re.compile(r"[0-9A-Fa-f]{64}"), "64 hex digits")}
VERIFIED_CACHE = 4096
# In the state dir: the nonce cache of the last graceful stop, read (and removed) by the next start.
NONCE_SNAPSHOT = "nonces.json"
SNAPSHOT_FORMAT = 1

log = logging.getLogger("atp.auth")


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    name: str                 # API key name, "hmac:<id>" or "jwt:<subject>"
    method: str               # "api_key" | "hmac" | "jwt"
    user: str = ""
    groups: frozenset = frozenset()
    attributes: dict = field(default_factory=dict, hash=False, compare=False)   # the tenant's (+ JWT)
    models: frozenset | None = None   # the key's model scope; None = whatever policy allows
    key_id: str = ""          # the credential's id (store key id, config key name, JWT kid)


def signing_input(method: str, path: str, timestamp_ms, nonce_hex: str, body: bytes) -> bytes:
    """What a request signature covers: method, path, timestamp (an int, or the header's text as
    sent), nonce (in lower case) and the body's SHA-256, one per line (PROTOCOL.md §9.4)."""
    return b"\n".join((method.upper().encode(), path.encode(), str(timestamp_ms).encode(),
                       nonce_hex.lower().encode(), hashlib.sha256(body).hexdigest().encode()))


def sign_request(secret: bytes, method: str, path: str, timestamp_ms: int, nonce_hex: str,
                 body: bytes) -> str:
    return hmac.new(secret, signing_input(method, path, timestamp_ms, nonce_hex, body),
                    hashlib.sha256).hexdigest()


class Authenticator:
    def __init__(self, cfg: AuthConfig, *, keys_path=None, tenants=()):
        self.cfg = cfg
        self._api_keys = {k.sha256: k for k in cfg.api_keys}
        self._tenants = {t.name: t for t in tenants}
        # Names a credential may carry (metric and accounting labels come from configuration).
        self.tenant_names = frozenset(self._tenants) | {"default"} if tenants else None
        self.keys_path = keys_path
        self._store: dict[str, tenancy.StoredKey] = {}
        self._jwt = None
        # Bearer token -> (Principal, valid until) for credentials already verified: skips a
        # SHA-256 (or a JWT signature check) per request; cleared by every reload (revocation).
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._hmac_tenants = {k.id: k.tenant for k in cfg.hmac_keys}
        self.keyring = Keyring({k.id: k.secret for k in cfg.hmac_keys},
                               current_id=cfg.hmac_keys[0].id if cfg.hmac_keys else None)
        self.nonce_cache = NonceCache(cfg.nonce_cache, cfg.skew_ms)
        # A NonceStore shared with other workers/hosts (state/): set by the App when [state]
        # redis_url is; None = this process's cache is the whole replay window.
        self.shared_nonces = None
        self._nonces_loaded = False     # save only what a load_nonces() start has guarded
        self._stored_hmac: set[int] = set()   # ids in the keyring from the `atp keys --hmac` store
        if keys_path is not None or cfg.jwt is not None:
            self.prepare_reload()()

    def new_keyring(self) -> Keyring:
        """A keyring built with the codec backend in use now (tests switch backends)."""
        return Keyring({k.id: k.secret for k in self.cfg.hmac_keys},
                       current_id=self.cfg.hmac_keys[0].id if self.cfg.hmac_keys else None)

    def api_key(self, authorization: str | None) -> Principal:
        """Check `Authorization: Bearer <key>`; raises AtpError(UNAUTHENTICATED)."""
        if not authorization:
            raise AtpError(ErrorCode.UNAUTHENTICATED, "missing API key (Authorization: Bearer <key>)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AtpError(ErrorCode.UNAUTHENTICATED, "Authorization must be 'Bearer <key>'")
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._verified[token]
        principal, until = self._verify_token(token.strip())
        if len(self._verified) >= VERIFIED_CACHE:   # only valid keys get here: few distinct ones
            self._verified.clear()
        self._verified[token] = (principal, until)
        return principal

    def _verify_token(self, token: str) -> tuple[Principal, float]:
        parts = tenancy.split_token(token)
        if parts is not None:
            key = self._store.get(parts[0])
            if key is None or not tenancy.verify_secret(key, parts[1]):
                raise AtpError(ErrorCode.UNAUTHENTICATED, "invalid API key")
            now = time.time()
            if not key.usable(now):
                raise AtpError(ErrorCode.UNAUTHENTICATED, f"API key {key.id} is {key.state(now)}")
            return (self._principal(key.tenant, key.name, "api_key", key.user, key.groups, {},
                                    key.models, key.id),
                    float("inf") if key.expires is None else key.expires)
        if self._jwt is not None and token.count(".") == 2:
            from .jwt_auth import verify_jwt
            claims = verify_jwt(self._jwt, token, self.tenant_names)
            return (self._principal(claims["tenant"], f"jwt:{claims['user']}", "jwt",
                                    claims["user"], claims["groups"], claims["attributes"], None,
                                    claims["kid"]), claims["exp"])
        key = self._api_keys.get(hashlib.sha256(token.encode()).hexdigest())
        if key is None:
            raise AtpError(ErrorCode.UNAUTHENTICATED, "invalid API key")
        return self._principal(key.tenant, key.name, "api_key", "", (), {}, None, key.name), float("inf")

    def _principal(self, tenant, name, method, user, groups, claims, models, key_id) -> Principal:
        """The credential's principal with its tenant's attributes and its user's groups."""
        t = self._tenants.get(tenant)
        groups = frozenset(groups) | (t.users.get(user, frozenset()) if t and user else frozenset())
        attributes = {**(t.attributes if t else {}), **claims}
        return Principal(tenant, name, method, user, groups, attributes,
                         None if models is None else frozenset(models), key_id)

    def prepare_reload(self):
        """Read the keys file (and the JWKS) now; return the function that puts them in force.
        Raises KeyStoreError / ConfigError naming the entry at fault, changing nothing."""
        store = {} if self.keys_path is None else tenancy.load_keys(self.keys_path, self.tenant_names)
        stored_hmac = {}
        if self.keys_path is not None:
            from .hmac_keys import HmacKeyFile, hmac_path
            stored_hmac = HmacKeyFile(hmac_path(self.keys_path), self.tenant_names).secrets(
                {k.id for k in self.cfg.hmac_keys})
        jwt_state = None
        if self.cfg.jwt is not None:
            from .jwt_auth import JwtVerifier
            jwt_state = JwtVerifier.load(self.cfg.jwt)

        def commit() -> None:
            self._store, self._jwt = store, jwt_state
            self._verified = {}         # a revoked or rotated key must not live on in the cache
            self._apply_hmac(stored_hmac)
        return commit

    def _apply_hmac(self, stored: dict) -> None:
        """Swap the store's HMAC keys in the keyring (config keys stay): a revoked or removed key
        stops verifying, an expiring one verifies until its expiry."""
        for kid in self._stored_hmac - set(stored):
            self.keyring.remove(kid)
            self._hmac_tenants.pop(kid, None)
        for kid, (tenant, secret, expires) in stored.items():
            self.keyring.add(kid, secret, None if expires is None else int(expires * 1000))
            self._hmac_tenants[kid] = tenant
        self._stored_hmac = set(stored)

    @staticmethod
    def signature_present(headers) -> bool:
        """Whether any of the four signature headers is there (then all four must be)."""
        # Spelled out, not any(<generator>): this runs on every HTTP request (~0.2 vs ~0.8 µs).
        get = headers.get
        return (get(SIG_KEY_ID) is not None or get(SIG_TIMESTAMP) is not None
                or get(SIG_NONCE) is not None or get(SIG_SIGNATURE) is not None)

    def check_signature(self, headers, method: str, path: str, body: bytes, now_ms: int,
                        principal: "Principal | None" = None):
        """Verify the request signature of PROTOCOL.md §9.4: optional unless
        auth.require_signature, all four headers or none, each in its exact syntax; then key,
        MAC, the key's tenant against `principal`'s (the API key's), timestamp, nonce, in that
        order. Raises AtpError with the wire code.

        Returns None, or — with a shared nonce store — an awaitable the caller must await before
        acting on the request: the same nonce checked in the store every worker sees."""
        values = [headers.get(h) for h in SIG_HEADERS]
        if values == [None, None, None, None]:
            if self.cfg.require_signature:
                raise AtpError(ErrorCode.UNAUTHENTICATED,
                               f"this server requires a request signature ({', '.join(SIG_HEADERS)})")
            return
        for name, value in zip(SIG_HEADERS, values):
            if value is None:
                raise AtpError(ErrorCode.BAD_SIGNATURE, f"partial request signature: {name} is "
                               f"missing (send all of {', '.join(SIG_HEADERS)} or none)")
            pattern, what = _SYNTAX[name]
            if not pattern.fullmatch(value):
                raise AtpError(ErrorCode.BAD_SIGNATURE, f"{name} must be {what}, not {value[:80]!r}")
        key_id_text, timestamp_text, nonce_hex, signature_hex = values
        key_id = int(key_id_text)
        if key_id > 0xFFFFFFFF:
            raise AtpError(ErrorCode.BAD_SIGNATURE, f"{SIG_KEY_ID} {key_id} does not fit 32 bits")
        try:
            key = self.keyring.verifier(key_id, now_ms)
        except AuthError as exc:
            raise AtpError(exc.code, str(exc.args[0])) from None
        expected = key.sign(signing_input(method, path, timestamp_text, nonce_hex, body))
        if not hmac.compare_digest(expected, bytes.fromhex(signature_hex)):
            raise AtpError(ErrorCode.BAD_SIGNATURE, "request signature does not match")
        if principal is not None and self._hmac_tenants.get(key_id) != principal.tenant:
            # A valid signature with another tenant's key must not vouch for this request; the
            # message names neither tenant (it would tell a caller who owns key ids it probes).
            raise AtpError(ErrorCode.FORBIDDEN, f"{SIG_KEY_ID} {key_id} is not a key of the API "
                           "key's tenant: sign with a key bound to the same tenant")
        nonce, timestamp = bytes.fromhex(nonce_hex), int(timestamp_text)
        try:
            self.nonce_cache.check_and_add(nonce, timestamp, now_ms)
        except AuthError as exc:
            raise AtpError(exc.code, str(exc.args[0])) from None
        if self.shared_nonces is not None:
            return self.check_shared_nonce(nonce, timestamp, now_ms)
        return None

    def shared_store_recovered(self, now_ms: int | None = None) -> None:
        """The shared nonce store answers again after an outage, and may have come back empty
        (a restart without persistence): nonces other workers recorded before are then gone.
        Refuse what was timestamped before now as STALE_TIMESTAMP, as a start without a
        snapshot does (load_nonces): no request accepted before the outage can be replayed."""
        now = wall_ms() if now_ms is None else now_ms
        self.nonce_cache.floor_ms = max(self.nonce_cache.floor_ms, now)
        log.warning("shared nonce store is back: refusing signed requests and session openings "
                    "timestamped before %d as STALE_TIMESTAMP (it may have lost its nonces)", now)

    def shared_floor(self, floor_ms: int) -> None:
        """The shared store's floor (state.redis.StoreEpoch: set when it was found to have lost
        its data): this process's cache refuses below it too, so a replay is refused before a
        round trip, also while the store is down and fails open, and the snapshot carries it."""
        self.nonce_cache.floor_ms = max(self.nonce_cache.floor_ms, floor_ms)

    async def check_shared_nonce(self, nonce: bytes, timestamp_ms: int, now_ms: int) -> None:
        """The second, cross-worker half of the nonce check (after the local cache passed it):
        record the nonce in the shared store until timestamp + skew, as the local cache does.
        Raises REPLAYED_NONCE when another worker recorded it first, STALE_TIMESTAMP when the
        timestamp is below the store's floor (it lost its data, see shared_floor), or the
        store's retryable UNAVAILABLE when it is unreachable and fails closed
        (state.nonces_on_error)."""
        ttl_s = max(1, timestamp_ms + self.cfg.skew_ms - now_ms) / 1000
        if not await self.shared_nonces.add(nonce, ttl_s, now_ms / 1000, timestamp_ms):
            raise AtpError(ErrorCode.REPLAYED_NONCE, f"nonce {nonce.hex()} was already used")

    # ---- the nonce cache across a restart (PROTOCOL.md §10.1) -----------------------------------

    def load_nonces(self, path, now_ms: int | None = None) -> bool:
        """At start: take over the nonces of the last graceful stop from `path`, then remove it
        (a snapshot is good for the one start that follows it). Without a readable snapshot
        (first start, crash, corrupt file) refuse opening timestamps older than now instead.
        Returns whether a snapshot was restored."""
        now = wall_ms() if now_ms is None else now_ms
        path = Path(path)
        cache = self.nonce_cache
        self._nonces_loaded = True
        try:
            snapshot = _parse_snapshot(path.read_bytes())
        except FileNotFoundError:
            snapshot, why = None, "none saved (first start, or the last run did not stop cleanly)"
        except (OSError, ValueError) as exc:
            snapshot, why = None, f"{path} is unreadable: {exc}"
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:    # it would be read again after a crash: do not rely on it
            log.error("cannot remove the nonce snapshot %s (%s): using the start-time floor", path,
                      exc)
            snapshot, why = None, "not removable"
        if snapshot is None:
            cache.floor_ms = max(cache.floor_ms, now)
            log.warning("nonce snapshot: %s; refusing session openings and signed requests "
                        "timestamped before %d (start time) as STALE_TIMESTAMP for the next %d ms",
                        why, now, cache.skew_ms)
            return False
        cache.restore(snapshot, now)
        log.info("nonce snapshot: restored %d live nonces from %s", len(cache), path)
        return True

    def save_nonces(self, path, now_ms: int | None = None) -> None:
        """At a graceful stop, once nothing accepts sessions any more: write the live nonces to
        `path` atomically (temporary file, fsync, rename). Workers sharing the state dir merge
        their nonces under a lock instead of overwriting each other's."""
        if not self._nonces_loaded:
            # Never started: a snapshot from us would vouch for nonces we never guarded (the
            # predecessor's, after a crash) and lift the next start's floor.
            log.info("nonce snapshot: not saved (this server never loaded one)")
            return
        now = wall_ms() if now_ms is None else now_ms
        path = Path(path)
        try:
            self._write_snapshot(path, now)
        except OSError as exc:   # the next start then falls back to the start-time floor
            log.error("nonce snapshot: cannot write %s (%s)", path, exc)

    def _write_snapshot(self, path: Path, now: int) -> None:
        merged = NonceCache(self.nonce_cache.capacity, self.nonce_cache.skew_ms)
        merged.restore(self.nonce_cache.snapshot(now), now)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                merged.restore(_parse_snapshot(path.read_bytes()), now)   # another worker's
            except (OSError, ValueError):
                pass
            snap = merged.snapshot(now)
            text = json.dumps({"format": SNAPSHOT_FORMAT, "saved_ms": now, "floor_ms": snap.floor_ms,
                               "nonces": [[n.hex(), ts] for n, ts in snap.nonces]})
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        log.info("nonce snapshot: saved %d live nonces to %s", len(snap.nonces), path)

    def session_principal(self, key_id: int) -> Principal:
        return Principal(self._hmac_tenants.get(key_id, "default"), f"hmac:{key_id}", "hmac")


def _parse_snapshot(raw: bytes) -> NonceSnapshot:
    """The file written by save_nonces -> NonceSnapshot; ValueError for anything else."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        floor = doc["floor_ms"]
        nonces = []
        for n, ts in doc["nonces"]:
            nonce = bytes.fromhex(n)
            if len(nonce) != 8 or type(ts) is not int or ts < 0:
                raise ValueError(f"bad entry {[n, ts]!r}")
            nonces.append((nonce, ts))
        if type(floor) is not int or floor < 0:
            raise ValueError(f"bad floor_ms {floor!r}")
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a nonce snapshot ({type(exc).__name__}: {exc})") from None
    return NonceSnapshot(floor, tuple(nonces))

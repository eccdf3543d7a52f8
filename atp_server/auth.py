"""Authentication at the door: API keys (stored hashed), HMAC request signatures, session key ids."""
import hashlib
import hmac
from dataclasses import dataclass

from codec import Keyring, NonceCache
from codec.errors import AuthError, ErrorCode

from .config import AuthConfig
from .types import AtpError

# Headers of the optional request signature (typed gRPC metadata uses the same names, lower-case).
SIG_KEY_ID = "x-atp-key-id"
SIG_TIMESTAMP = "x-atp-timestamp"       # Unix milliseconds
SIG_NONCE = "x-atp-nonce"               # 16 hex characters (8 random bytes)
SIG_SIGNATURE = "x-atp-signature"       # hex HMAC-SHA256 of signing_input()
VERIFIED_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    name: str                 # API key name or "hmac:<id>"
    method: str               # "api_key" | "hmac"


def signing_input(method: str, path: str, timestamp_ms: int, nonce_hex: str, body: bytes) -> bytes:
    """What a request signature covers: method, path, timestamp, nonce and the body's SHA-256."""
    return b"\n".join((method.upper().encode(), path.encode(), str(timestamp_ms).encode(),
                       nonce_hex.lower().encode(), hashlib.sha256(body).hexdigest().encode()))


def sign_request(secret: bytes, method: str, path: str, timestamp_ms: int, nonce_hex: str,
                 body: bytes) -> str:
    return hmac.new(secret, signing_input(method, path, timestamp_ms, nonce_hex, body),
                    hashlib.sha256).hexdigest()


class Authenticator:
    def __init__(self, cfg: AuthConfig):
        self.cfg = cfg
        self._api_keys = {k.sha256: k for k in cfg.api_keys}
        # Bearer token -> Principal for keys already verified: skips a SHA-256 per request.
        self._verified: dict[str, Principal] = {}
        self._hmac_tenants = {k.id: k.tenant for k in cfg.hmac_keys}
        self.keyring = Keyring({k.id: k.secret for k in cfg.hmac_keys},
                               current_id=cfg.hmac_keys[0].id if cfg.hmac_keys else None)
        self.nonce_cache = NonceCache(cfg.nonce_cache, cfg.skew_ms)

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
        principal = self._verified.get(token)
        if principal is not None:
            return principal
        key = self._api_keys.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if key is None:
            raise AtpError(ErrorCode.UNAUTHENTICATED, "invalid API key")
        principal = Principal(key.tenant, key.name, "api_key")
        if len(self._verified) >= VERIFIED_CACHE:   # only valid keys get here: few distinct ones
            self._verified.clear()
        self._verified[token] = principal
        return principal

    def check_signature(self, headers, method: str, path: str, body: bytes, now_ms: int) -> None:
        """Verify the optional request signature (required when auth.require_signature)."""
        if headers.get(SIG_SIGNATURE) is None:
            if self.cfg.require_signature:
                raise AtpError(ErrorCode.UNAUTHENTICATED, f"missing {SIG_SIGNATURE} header")
            return
        try:
            key_id = int(headers.get(SIG_KEY_ID, ""))
            timestamp_ms = int(headers.get(SIG_TIMESTAMP, ""))
            nonce_hex = headers.get(SIG_NONCE, "")
            nonce = bytes.fromhex(nonce_hex)
            if len(nonce) != 8:
                raise ValueError
        except ValueError:
            raise AtpError(ErrorCode.BAD_SIGNATURE, f"{SIG_KEY_ID}, {SIG_TIMESTAMP} and {SIG_NONCE} "
                           "(16 hex chars) must accompany a signature") from None
        try:
            key = self.keyring.verifier(key_id, now_ms)
        except AuthError as exc:
            raise AtpError(exc.code, str(exc.args[0])) from None
        expected = key.sign(signing_input(method, path, timestamp_ms, nonce_hex, body))
        try:
            given = bytes.fromhex(headers.get(SIG_SIGNATURE, ""))
        except ValueError:
            given = b""
        if not hmac.compare_digest(expected, given):
            raise AtpError(ErrorCode.BAD_SIGNATURE, "request signature does not match")
        try:
            self.nonce_cache.check_and_add(nonce, timestamp_ms, now_ms)
        except AuthError as exc:
            raise AtpError(exc.code, str(exc.args[0])) from None

    def session_principal(self, key_id: int) -> Principal:
        return Principal(self._hmac_tenants.get(key_id, "default"), f"hmac:{key_id}", "hmac")

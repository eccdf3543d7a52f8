"""HMAC signature keys with ids in the `atp keys` store (`atp keys create --hmac`), bound to one tenant.

Unlike an API key, an HMAC secret cannot be kept as a hash: the server must recompute every
signature with it. So each secret is encrypted at rest with AES-256-GCM under a master key
(`hmac_master.key`, 32 random bytes, created owner-only next to the store on first use), with the
key id and tenant as associated data: a record copied to another id or tenant no longer decrypts.
The store file (`hmac_keys.json`, owner-only) alone reveals no secret; a process that can read
both files as the server's user can, as the server itself must. Back up the master key with the
store: without it the keys cannot be recovered (re-issue them).

Ids are u32 (the wire's key id), drawn at random from 2^31..2^32-1 so they never meet the small
ids [[auth.hmac_keys]] use in config; a collision with a configured id is refused at load.
Records are revocable, expiring and rotatable like API keys; the server picks changes up on
reload (SIGHUP, `atp reload`), all or nothing with the other parts.
"""
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .tenants import NAME_MAX, KeyFile, KeyStoreError, StoredKey

HMAC_FILE = "hmac_keys.json"
MASTER_FILE = "hmac_master.key"
FORMAT = 1
SECRET_BYTES = 32            # HMAC-SHA256's block-size-independent strength: 256 bits
ID_FLOOR = 1 << 31           # store ids live in the upper half of u32 (config ids are small)


@dataclass(frozen=True, slots=True)
class HmacRecord:
    id: int
    name: str
    tenant: str
    nonce: str                # hex, 12 bytes (AES-GCM)
    sealed: str               # hex: the encrypted secret + tag
    created: float
    expires: float | None = None
    revoked: float | None = None

    usable = StoredKey.usable     # the same revoked/expires rules as an API key
    state = StoredKey.state


def _aad(kid: int, tenant: str) -> bytes:
    return f"atp-hmac-key:{kid}:{tenant}".encode()


def _master(path: Path, create: bool) -> bytes | None:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key
    if len(key) != 32:
        raise KeyStoreError(f"{path}: the HMAC master key must be 32 bytes, found {len(key)}")
    return key


def _parse(raw: bytes, where: str, tenants) -> dict[int, HmacRecord]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("hmac_keys"), list):
        raise KeyStoreError(f"{where}: must be {{\"format\": {FORMAT}, \"hmac_keys\": [...]}}")
    out = {}
    for i, r in enumerate(doc["hmac_keys"]):
        at = f"{where}: hmac_keys[{i}]"
        try:
            rec = HmacRecord(**r)
        except TypeError as exc:
            raise KeyStoreError(f"{at}: {exc}") from None
        if type(rec.id) is not int or not ID_FLOOR <= rec.id <= 0xFFFFFFFF:
            raise KeyStoreError(f"{at}.id: must be an integer in {ID_FLOOR}..{0xFFFFFFFF}")
        if tenants is not None and rec.tenant not in tenants:
            raise KeyStoreError(f"{at}.tenant: {rec.tenant!r} is not a configured [[tenants]] name")
        if rec.id in out:
            raise KeyStoreError(f"{at}.id: {rec.id} appears twice")
        out[rec.id] = rec
    return out


class HmacKeyFile(KeyFile):
    """The HMAC key store: KeyFile's locked read-modify-write, atomic replace, find, revoke and
    rotate, over HMAC records (create --hmac makes a new id; rotate a new id with the same name)."""

    def __init__(self, path: Path, tenants: frozenset | None = None):
        super().__init__(path, tenants)
        self.master_path = self.path.with_name(MASTER_FILE)

    def _load(self) -> dict[int, HmacRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyStoreError(f"{self.path}: cannot read ({exc.strerror})") from None
        return _parse(raw, str(self.path), self.tenants)

    def secrets(self, config_ids=(), now: float | None = None) -> dict[int, tuple[str, bytes, float | None]]:
        """{id: (tenant, secret, expires)} of the usable keys, decrypted; KeyStoreError names
        the record that cannot be used (a configured id reused, a secret that does not decrypt)."""
        records = self._load()
        if not records:
            return {}
        master = _master(self.master_path, create=False)
        if master is None:
            raise KeyStoreError(f"{self.master_path}: missing: the HMAC keys in {self.path} cannot "
                                "be decrypted (restore the master key, or re-issue the keys)")
        now = time.time() if now is None else now
        aead, out = AESGCM(master), {}
        for kid, rec in records.items():
            if kid in config_ids:
                raise KeyStoreError(f"{self.path}: key id {kid} is also in [[auth.hmac_keys]]")
            if not rec.usable(now):
                continue
            try:
                secret = aead.decrypt(bytes.fromhex(rec.nonce), bytes.fromhex(rec.sealed),
                                      _aad(kid, rec.tenant))
            except Exception:           # InvalidTag, bad hex: tampered, moved, or another master
                raise KeyStoreError(f"{self.path}: key id {kid}: the secret does not decrypt "
                                    "(edited, moved to another id/tenant, or another master key)") from None
            out[kid] = (rec.tenant, secret, rec.expires)
        return out

    def _write(self, records: dict[int, HmacRecord]) -> None:
        doc = {"format": FORMAT, "hmac_keys": [
            {"id": r.id, "name": r.name, "tenant": r.tenant, "nonce": r.nonce, "sealed": r.sealed,
             "created": r.created, "expires": r.expires, "revoked": r.revoked}
            for r in records.values()]}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def create(self, name: str, tenant: str, *, expires: float | None = None,
               now: float | None = None) -> tuple[bytes, HmacRecord]:
        """A new key: (its secret, shown once; its record)."""
        if not name or len(name) > NAME_MAX:
            raise KeyStoreError(f"name: must be 1..{NAME_MAX} characters")
        if self.tenants is not None and tenant not in self.tenants:
            raise KeyStoreError(f"tenant: {tenant!r} is not a configured [[tenants]] name")
        now = time.time() if now is None else now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        aead = AESGCM(_master(self.master_path, create=True))

        def add(records):
            kid = ID_FLOOR + secrets.randbelow(1 << 31)
            while kid in records:
                kid = ID_FLOOR + secrets.randbelow(1 << 31)
            secret, nonce = secrets.token_bytes(SECRET_BYTES), secrets.token_bytes(12)
            rec = HmacRecord(kid, name, tenant, nonce.hex(),
                             aead.encrypt(nonce, secret, _aad(kid, tenant)).hex(), now, expires)
            records[kid] = rec
            return secret, rec
        return self._locked(add)

    def _replacement(self, old: HmacRecord, now: float):
        return self.create(old.name, old.tenant, expires=old.expires, now=now)


def hmac_path(keys_path: Path) -> Path:
    """The HMAC store next to the API-key store."""
    return Path(keys_path).with_name(HMAC_FILE)

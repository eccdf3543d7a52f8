"""HMAC key ring: key ids, the current signing key, and a grace period for the previous one."""
from . import backend
from .errors import AuthError, ErrorCode

MIN_KEY_BYTES = 16


class Keyring:
    """Maps key ids to pre-keyed HMACs.

    `current` signs outgoing frames. Keys added with an expiry (the rotated-out key) verify until
    that instant, then are refused as UNKNOWN_KEY. Times are caller-supplied milliseconds.
    """

    __slots__ = ("_keys", "_expiry", "current_id", "_current")

    def __init__(self, keys: dict[int, bytes] | None = None, current_id: int | None = None):
        self._keys = {}
        self._expiry = {}
        self.current_id = None
        self._current = None
        for key_id, secret in (keys or {}).items():
            self.add(key_id, secret)
        if current_id is not None:
            self.set_current(current_id)
        elif len(self._keys) == 1:
            self.set_current(next(iter(self._keys)))

    def add(self, key_id: int, secret: bytes, expires_ms: int | None = None) -> None:
        if not isinstance(key_id, int) or not 0 <= key_id <= 0xFFFFFFFF:
            raise ValueError(f"key id must be a u32, got {key_id!r}")
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_KEY_BYTES:
            raise ValueError(f"key {key_id}: secret must be at least {MIN_KEY_BYTES} bytes")
        self._keys[key_id] = backend.impl.HmacKey(bytes(secret))
        if expires_ms is None:
            self._expiry.pop(key_id, None)
        else:
            self._expiry[key_id] = expires_ms

    def set_current(self, key_id: int) -> None:
        if key_id not in self._keys:
            raise KeyError(f"key id {key_id} is not in the keyring")
        self.current_id = key_id
        self._current = self._keys[key_id]

    def rotate(self, new_id: int, secret: bytes, now_ms: int, grace_ms: int) -> None:
        """Sign with `new_id` from now on; the old current key still verifies for `grace_ms`."""
        old = self.current_id
        self.add(new_id, secret)
        self.set_current(new_id)
        if old is not None and old != new_id:
            self._expiry[old] = now_ms + grace_ms

    def remove(self, key_id: int) -> None:
        self._keys.pop(key_id, None)
        self._expiry.pop(key_id, None)
        if self.current_id == key_id:
            self.current_id, self._current = None, None

    @property
    def signer(self):
        if self._current is None:
            raise AuthError("no current signing key", ErrorCode.UNKNOWN_KEY)
        return self._current

    def verifier(self, key_id: int, now_ms: int):
        """The key for `key_id`, or AuthError(UNKNOWN_KEY) if absent or past its grace period."""
        key = self._keys.get(key_id)
        if key is None:
            raise AuthError(f"unknown key id {key_id}", ErrorCode.UNKNOWN_KEY)
        expiry = self._expiry.get(key_id)
        if expiry is not None and now_ms > expiry:
            raise AuthError(f"key id {key_id} expired (rotated out)", ErrorCode.UNKNOWN_KEY)
        return key

    def __contains__(self, key_id: int) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

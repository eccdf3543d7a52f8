"""One AGP peering session as a sans-I/O state machine: messages and `now` in, messages out.

    dialler                               answerer
    OPEN(nonce_d)                 ──▶     checks id + key against the trust store
                                  ◀──     OPEN(nonce_a, proof = sign(id_a, nonce_d))
    checks proof                  ──▶     OPEN(proof = sign(id_d, nonce_a))
    ESTABLISHED: full table       ◀─▶     ESTABLISHED: full table
    UPDATE / WITHDRAW / KEEPALIVE at will; silence for the hold time closes the session.

The transitions are a table (state, message kind) -> handler; anything else is answered with a
NOTIFICATION and the session closes. The link (link.py) only moves messages and calls `tick`.
"""
import enum
from dataclasses import dataclass, field

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .rib import Change, PeerInfo, Rib
from .routes import Route

VERSION = 1


class Code(enum.IntEnum):
    """NOTIFICATION codes (docs/FEDERATION.md §6)."""
    BAD_OPEN = 1          # version, unknown router id, or a key that is not the trusted one
    BAD_PROOF = 2         # the OPEN proof does not verify: not the key's holder
    UNEXPECTED = 3        # a message the state does not allow
    HOLD_EXPIRED = 4
    CEASE = 5             # administrative shutdown
    MALFORMED = 6


class State(enum.Enum):
    IDLE = "idle"
    OPEN_SENT = "open_sent"          # dialler: sent OPEN, waits for the answer
    OPEN_WAIT = "open_wait"          # answerer: waits for the dialler's OPEN
    OPEN_CONFIRM = "open_confirm"    # answerer: sent its OPEN, waits for the dialler's proof
    ESTABLISHED = "established"
    CLOSED = "closed"


# ---- messages (the link converts them to and from agp.proto) ----------------------------------

@dataclass(frozen=True, slots=True)
class Open:
    router_id: str
    domain: str
    public_key: bytes
    hold_time_ms: int
    keepalive_ms: int
    nonce: bytes = b""
    proof: bytes = b""
    capabilities: tuple[str, ...] = ()
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Update:
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class Withdraw:
    keys: tuple[tuple[str, str], ...]      # (model, origin)


@dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclass(frozen=True, slots=True)
class Notification:
    code: int
    message: str


def proof_bytes(router_id: str, nonce: bytes) -> bytes:
    return orjson.dumps(["agp-open/1", router_id, nonce.hex()])


def raw_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(slots=True)
class Local:
    """This router's side of every session."""
    router_id: str
    domain: str
    key: object                      # Ed25519PrivateKey
    # Hold 3 s, keepalive 1 s: a dead peer is withdrawn within 3 s (the convergence target is
    # 3 × keepalive); three keepalives fit in one hold time, so one lost message does not drop it.
    hold_time_ms: int = 3000
    keepalive_ms: int = 1000
    reflector: bool = False


class PeerSession:
    def __init__(self, local: Local, rib: Rib, trust: dict[str, Ed25519PublicKey], *,
                 dialler: bool, nonce: bytes, expect: str | None = None):
        self.local, self.rib, self.trust = local, rib, trust
        self.dialler, self.nonce, self.expect = dialler, nonce, expect
        self.state = State.IDLE if dialler else State.OPEN_WAIT
        self.peer: PeerInfo | None = None
        self.hold_s = local.hold_time_ms / 1000
        self.keepalive_s = local.keepalive_ms / 1000
        self.last_heard = self.last_sent = 0.0
        self.sent: dict[str, str] = {}       # model -> origin of what the peer last heard from us
        self.received = 0
        self.closed_reason: str | None = None
        self.changes = Change()              # what this session's input changed in the RIB

    # ---- driving ---------------------------------------------------------------------------------

    def start(self, now: float) -> list:
        self.last_heard = now
        if not self.dialler:
            return []
        self.state = State.OPEN_SENT
        return self._out([self._open(b"")], now)

    def receive(self, msg, now: float) -> list:
        if self.state is State.CLOSED:
            return []
        self.last_heard = now
        handler = _TABLE.get((self.state, type(msg)))
        if handler is None:
            return self._close(Code.UNEXPECTED, f"{type(msg).__name__} in state {self.state.value}", now)
        return handler(self, msg, now)

    def tick(self, now: float) -> list:
        """Hold-timer expiry closes; a keepalive goes out when nothing else did for a while."""
        if self.state is State.CLOSED:
            return []
        if now - self.last_heard >= self.hold_s:
            return self._close(Code.HOLD_EXPIRED, f"nothing heard for {self.hold_s:g} s", now)
        if self.state is State.ESTABLISHED and now - self.last_sent >= self.keepalive_s:
            return self._out([Keepalive()], now)
        return []

    def next_deadline(self) -> float:
        if self.state is State.CLOSED:
            return float("inf")
        hold = self.last_heard + self.hold_s
        if self.state is State.ESTABLISHED:
            return min(hold, self.last_sent + self.keepalive_s)
        return hold

    def advertise(self, models, now: float) -> list:
        """UPDATE/WITHDRAW for `models` (None: everything) as the RIB now stands."""
        if self.state is not State.ESTABLISHED:
            return []
        routes, nothing = self.rib.export_for(self.peer.router_id, models)
        out, withdraw = [], []
        for r in routes:
            old = self.sent.get(r.model)
            if old is not None and old != r.origin:
                withdraw.append((r.model, old))
            self.sent[r.model] = r.origin
        for model in nothing:
            old = self.sent.pop(model, None)
            if old is not None:
                withdraw.append((model, old))
        if withdraw:
            out.append(Withdraw(tuple(withdraw)))
        if routes:
            out.append(Update(tuple(routes)))
        return self._out(out, now)

    def close(self, now: float, message: str = "shutting down") -> list:
        return self._close(Code.CEASE, message, now)

    # ---- handlers ----------------------------------------------------------------------------------

    def _on_open_answer(self, msg: Open, now: float) -> list:
        """Answerer, first OPEN: check who it claims to be; answer with our OPEN and proof."""
        problem = self._check_open(msg)
        if problem:
            return self._close(Code.BAD_OPEN, problem, now)
        self._adopt(msg)
        self.state = State.OPEN_CONFIRM
        return self._out([self._open(self.local.key.sign(proof_bytes(self.local.router_id, msg.nonce)))], now)

    def _on_open_dialler(self, msg: Open, now: float) -> list:
        """Dialler: the answer's proof must be over our nonce; then prove ourselves."""
        problem = self._check_open(msg) or self._check_proof(msg, self.nonce)
        if problem:
            return self._close(Code.BAD_PROOF if "proof" in problem else Code.BAD_OPEN, problem, now)
        self._adopt(msg)
        proof = self.local.key.sign(proof_bytes(self.local.router_id, msg.nonce))
        out = self._out([Open(self.local.router_id, self.local.domain, raw_public(self.local.key),
                              self.local.hold_time_ms, self.local.keepalive_ms, b"", proof,
                              self._caps())], now)
        return out + self._establish(now)

    def _on_open_confirm(self, msg: Open, now: float) -> list:
        if msg.router_id != self.peer.router_id:
            return self._close(Code.BAD_OPEN, "the second OPEN names another router", now)
        problem = self._check_proof(msg, self.nonce)
        if problem:
            return self._close(Code.BAD_PROOF, problem, now)
        return self._establish(now)

    def _on_update(self, msg: Update, now: float) -> list:
        self.received += len(msg.routes)
        change = self.rib.learn(self.peer.router_id, msg.routes, now)
        self.changes.changed |= change.changed
        self.changes.dropped += change.dropped
        return []

    def _on_withdraw(self, msg: Withdraw, now: float) -> list:
        change = self.rib.withdraw(self.peer.router_id, msg.keys, now)
        self.changes.changed |= change.changed
        return []

    def _on_keepalive(self, msg: Keepalive, now: float) -> list:
        return []

    def _on_notification(self, msg: Notification, now: float) -> list:
        self._down(f"peer closed: {Code(msg.code).name if msg.code in Code._value2member_map_ else msg.code}: "
                   f"{msg.message}", now)
        return []

    # ---- helpers -----------------------------------------------------------------------------------

    def _caps(self) -> tuple[str, ...]:
        return ("reflector",) if self.local.reflector else ()

    def _open(self, proof: bytes) -> Open:
        return Open(self.local.router_id, self.local.domain, raw_public(self.local.key),
                    self.local.hold_time_ms, self.local.keepalive_ms, self.nonce, proof, self._caps())

    def _check_open(self, msg: Open) -> str | None:
        if msg.version != VERSION:
            return f"version {msg.version} (this router speaks {VERSION})"
        if self.expect is not None and msg.router_id != self.expect:
            return f"expected router {self.expect}, got {msg.router_id}"
        if msg.router_id == self.local.router_id:
            return "a router cannot peer with itself"
        trusted = self.trust.get(msg.router_id)
        if trusted is None:
            return f"router {msg.router_id} is not in the trust store"
        if raw_public(_Holder(trusted)) != msg.public_key:
            return f"router {msg.router_id} presented a key that is not its trusted one"
        if not 300 <= msg.hold_time_ms <= 600_000:
            return f"hold time {msg.hold_time_ms} ms out of 300..600000"
        return None

    def _check_proof(self, msg: Open, nonce: bytes) -> str | None:
        try:
            self.trust[msg.router_id].verify(msg.proof, proof_bytes(msg.router_id, nonce))
        except (InvalidSignature, ValueError, KeyError):
            return f"the OPEN proof of {msg.router_id} does not verify"
        return None

    def _adopt(self, msg: Open) -> None:
        self.peer = PeerInfo(msg.router_id, msg.domain, "reflector" in msg.capabilities)
        # both sides use the smaller hold time; keepalives at a third of it at most
        self.hold_s = min(self.local.hold_time_ms, msg.hold_time_ms) / 1000
        self.keepalive_s = min(self.local.keepalive_ms / 1000, self.hold_s / 3)

    def _establish(self, now: float) -> list:
        self.state = State.ESTABLISHED
        self.rib.peer_up(self.peer)
        return self.advertise(None, now)

    def _out(self, messages: list, now: float) -> list:
        if messages:
            self.last_sent = now
        return messages

    def _close(self, code: Code, message: str, now: float) -> list:
        out = [Notification(int(code), message)]
        self._down(f"{code.name}: {message}", now)
        return out

    def _down(self, reason: str, now: float) -> None:
        was = self.state
        self.state, self.closed_reason = State.CLOSED, reason
        if was is State.ESTABLISHED and self.peer is not None:
            change = self.rib.peer_down(self.peer.router_id, now)
            self.changes.changed |= change.changed


class _Holder:
    """Adapts a public key to raw_public()'s `key.public_key()` call."""
    def __init__(self, public):
        self._public = public

    def public_key(self):
        return self._public


_S = State
_TABLE = {
    (_S.OPEN_WAIT, Open): PeerSession._on_open_answer,
    (_S.OPEN_SENT, Open): PeerSession._on_open_dialler,
    (_S.OPEN_CONFIRM, Open): PeerSession._on_open_confirm,
    (_S.ESTABLISHED, Update): PeerSession._on_update,
    (_S.ESTABLISHED, Withdraw): PeerSession._on_withdraw,
    (_S.ESTABLISHED, Keepalive): PeerSession._on_keepalive,
}
for _state in (_S.OPEN_SENT, _S.OPEN_WAIT, _S.OPEN_CONFIRM, _S.ESTABLISHED):
    _TABLE[(_state, Notification)] = PeerSession._on_notification

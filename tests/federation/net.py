"""An in-memory federation for tests: routers (federation.node.Node), links that deliver messages
in order, one shared clock. Nothing sleeps: time moves when a test says so."""
from collections import deque

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atp_server.federation.node import Node
from atp_server.federation.routes import Route
from atp_server.federation.session import Local


class Net:
    def __init__(self):
        self.now = 0.0
        self.keys: dict[str, Ed25519PrivateKey] = {}
        self.trust: dict = {}
        self.nodes: dict[str, Node] = {}
        self.wires: dict[tuple, tuple] = {}      # (node, conn) -> (other node, other conn)
        self.queue: deque = deque()
        self.dead: set[str] = set()
        self._n = 0

    def add(self, name: str, domain: str | None = None, *, reflector: bool = False, overhead: float = 0.0,
            hop_latency_ms: float = 0.0, trusted: bool = True, key=None) -> Node:
        domain = domain or name          # by default every router is its own domain
        key = key or Ed25519PrivateKey.generate()
        self.keys[name] = key
        if trusted:
            self.trust[name] = key.public_key()
        counter = iter(range(10**9))
        node = Node(Local(name, domain, key, reflector=reflector), self.trust,
                    overhead_per_mtok=overhead, hop_latency_ms=hop_latency_ms,
                    nonce=lambda n: next(counter).to_bytes(n, "big"))
        self.nodes[name] = node
        return node

    def link(self, a: str, b: str) -> None:
        """`a` dials `b`; the handshake runs at once."""
        self._n += 1
        ca, cb = f"{a}->{b}#{self._n}", f"{b}<-{a}#{self._n}"
        self.wires[(a, ca)] = (b, cb)
        self.wires[(b, cb)] = (a, ca)
        self._post(b, self.nodes[b].connected(cb, self.now, dialler=False))
        self._post(a, self.nodes[a].connected(ca, self.now, dialler=True, expect=b))
        self.run()

    def serve(self, name: str, model: str, *, price: float = 1.0, latency: float = 100.0,
              health: float = 1.0) -> None:
        self._post(name, self.nodes[name].serve(
            Route(model, name, ("chat",), price, price, latency, health, 10), self.now))
        self.run()

    def unserve(self, name: str, model: str) -> None:
        self._post(name, self.nodes[name].unserve(model, self.now))
        self.run()

    def inject(self, into: str, conn_from: str, msg) -> None:
        """Deliver `msg` to `into` on the connection it shares with `conn_from`."""
        conn = next(c for (n, c), (o, _) in self.wires.items() if n == into and o == conn_from)
        self._post(into, self.nodes[into].receive(conn, msg, self.now))
        self.run()

    def kill(self, name: str) -> None:
        """The router dies silently: it sends nothing more; its peers notice by their hold timers."""
        self.dead.add(name)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            for name, node in self.nodes.items():
                if name not in self.dead:
                    self._post(name, node.tick(self.now))
            self.run()

    def run(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            src, conn, msg = self.queue.popleft()
            dst, dconn = self.wires[(src, conn)]
            if src in self.dead or dst in self.dead:
                continue
            self._post(dst, self.nodes[dst].receive(dconn, msg, self.now))
        raise AssertionError("the federation did not settle (a loop?)")

    def _post(self, src: str, out: dict) -> None:
        for conn, msgs in out.items():
            for m in msgs:
                self.queue.append((src, conn, m))

    def best(self, name: str, model: str):
        c = self.nodes[name].rib.best.get(model)
        return c.route if c else None

    def events(self, name: str, kind: str) -> list[dict]:
        return [e.detail for e in self.nodes[name].events if e.kind == kind]

"""Real ATP routers federated on loopback, all in one event loop: each a full App (HTTP + gRPC
front doors, the stage chain, an audit log, AGP) with simulated providers; tests wait on AGP
events, never sleep. Ports are picked up front, so any router may peer with any other.

    topo = Topology(tmp_path, {"A": [], "B": [], "C": ["only-c"]}, links=[("A", "B"), ("B", "C")])
    await topo.start(); ...; await topo.wait_best("A", "only-c"); ...; await topo.stop()

A link (x, y) means: x dials y over AGP, and both may forward to the other (each holds a
[[federation.forward]] entry for the other, signed with the peers' HMAC key PEER_KEY_ID, which
every router maps to tenant "peers").
"""
import asyncio
import socket
import time

from atp_server import config as atp_config
from atp_server.app import App
from atp_server.federation.config import load_key, public_b64

PEER_KEY_ID = 9
PEER_SECRET = "federation-peer-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def router_toml(tmp_path, name, models, *, ports, pubs, links, extra="", provider="") -> str:
    grpc_port, agp_port = ports[name]
    lines = [f'[server]\nstate_dir = "{tmp_path / name}"\nhttp_port = 0\ngrpc_port = {grpc_port}\n'
             'quic_port = 0\n',
             atp_config.dev_auth_toml("dev"),
             f'[[auth.hmac_keys]]\nid = {PEER_KEY_ID}\nsecret = "{PEER_SECRET}"\ntenant = "peers"\n',
             provider or '[[providers]]\nname = "sim"\ntype = "simulated"\noutput_tokens = 8\n',
             # every router has a local model: the router needs at least one
             f'[[models]]\nid = "local-{name.lower()}"\nprovider = "sim"\n']
    for m in models:
        m, price = m if isinstance(m, tuple) else (m, 1.0)   # ("m", 5.0): a dearer copy
        lines.append(f'[[models]]\nid = "{m}"\nprovider = "sim"\nprice_in_per_mtok = {price}\n'
                     f'price_out_per_mtok = {2 * price}\n')
    lines.append(extra)
    lines.append(f'[federation]\nrouter_id = "{name}"\nlisten = "127.0.0.1:{agp_port}"\n')
    for a, b in links:
        if a == name:
            lines.append(f'[[federation.peers]]\naddress = "127.0.0.1:{ports[b][1]}"\n'
                         f'router_id = "{b}"\n')
    for a, b in links:
        if name in (a, b):
            other = b if a == name else a
            lines.append(f'[[federation.forward]]\nrouter_id = "{other}"\n'
                         f'address = "127.0.0.1:{ports[other][0]}"\nkey_id = {PEER_KEY_ID}\n'
                         f'secret = "{PEER_SECRET}"\n')
    for rid, pub in pubs.items():
        lines.append(f'[[federation.trust]]\nrouter_id = "{rid}"\npublic_key = "{pub}"\n')
    return "\n".join(lines)


class Topology:
    def __init__(self, tmp_path, routers: dict, links, extra: dict | None = None,
                 provider: dict | None = None):
        self.names = list(routers)
        self.ports = {n: (free_port(), free_port()) for n in self.names}
        pubs = {n: public_b64(load_key(tmp_path / n / "agp_key.pem")) for n in self.names}
        self.configs = {n: atp_config.loads(router_toml(
            tmp_path, n, routers[n], ports=self.ports, pubs=pubs, links=links,
            extra=(extra or {}).get(n, ""), provider=(provider or {}).get(n, "")))
            for n in self.names}
        self.audit = {n: str(tmp_path / n / "audit.db") for n in self.names}
        self.apps: dict[str, App] = {}
        self.changed = asyncio.Event()

    async def start(self, *names):
        for n in names or self.names:
            app = self.apps[n] = App(self.configs[n], audit_path=self.audit[n])
            await app.start(quic=False)
            app.federation.listeners.append(lambda e: self.changed.set())
            self.changed.set()

    def grpc(self, name) -> str:
        return f"127.0.0.1:{self.ports[name][0]}"

    def best(self, name, model):
        c = self.apps[name].federation.node.rib.best.get(model)
        return c.route if c else None

    async def until(self, condition, timeout: float = 10.0):
        """Wait for `condition()` to hold, re-checking on every AGP event (no polling sleeps)."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("condition not reached in time")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass

    async def wait_best(self, name, model, path=None, timeout: float = 10.0):
        await self.until(lambda: (r := self.best(name, model)) is not None
                         and (path is None or r.path == tuple(path)), timeout)

    async def kill(self, name):
        """The router dies: its AGP link stops answering and its front doors drop every call."""
        app = self.apps.pop(name)
        await app.federation.kill()
        app.federation = None
        for t in app.transports:
            server = getattr(t, "server", None) or getattr(t, "_server", None)
            if server is not None and hasattr(server, "stop"):
                await server.stop(0)
        await app.stop(0)

    async def stop(self):
        for n in list(self.apps):
            await self.apps.pop(n).stop(0)

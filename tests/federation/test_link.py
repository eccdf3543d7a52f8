"""AGP over real gRPC on loopback: routers started in-process, peering, propagation, a router
killed and the convergence time measured, a malformed message, `Status`."""
import asyncio
import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atp_server.federation.link import FederationLink
from atp_server.federation.node import Node
from atp_server.federation.routes import Route
from atp_server.federation.session import Local
from proto.agp.v1 import agp_pb2 as pb
from proto.agp.v1 import agp_pb2_grpc as pb_grpc


class Fed:
    """Routers on loopback, each its own domain; `until` waits for a condition on node events."""

    def __init__(self, names):
        self.keys = {n: Ed25519PrivateKey.generate() for n in names}
        trust = {n: k.public_key() for n, k in self.keys.items()}
        self.links = {n: FederationLink(Node(Local(n, n, k), trust)) for n, k in self.keys.items()}
        self.ports: dict[str, int] = {}
        self.changed = asyncio.Event()
        for link in self.links.values():
            link.listeners.append(lambda e: self.changed.set())

    async def start(self):
        for n, link in self.links.items():
            self.ports[n] = await link.start("127.0.0.1", 0)

    def peer(self, a, b):
        self.links[a].dial(f"127.0.0.1:{self.ports[b]}", b)

    def best(self, name, model):
        c = self.links[name].node.rib.best.get(model)
        return c.route if c else None

    async def until(self, condition, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("condition not reached in time")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def stop(self):
        for link in self.links.values():
            await link.stop()


def run(coro):
    return asyncio.run(coro)


def test_routes_propagate_over_grpc_and_status_shows_them():
    async def main():
        fed = Fed(["A", "B", "C"])
        await fed.start()
        try:
            fed.peer("A", "B")
            fed.peer("C", "B")
            fed.links["A"].serve(Route("m1", "A", ("chat",), 1.0, 2.0, 50.0, 1.0, 8))
            await fed.until(lambda: fed.best("C", "m1") is not None)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{fed.ports['C']}") as ch:
                status = await pb_grpc.AgpStub(ch).Status(pb.StatusRequest())
            return fed.best("C", "m1").path, status
        finally:
            await fed.stop()
    path, status = run(main())
    assert path == ("B", "A")
    assert status.router_id == "C" and [p.state for p in status.peers] == ["established"]
    (route,) = [r for r in status.routes if r.model == "m1"]
    assert list(route.path) == ["B", "A"] and route.best


def test_a_killed_router_is_routed_around_within_three_keepalives():
    async def main():
        fed = Fed(["O", "B", "C", "D"])
        await fed.start()
        try:
            for a, b in (("B", "O"), ("C", "O"), ("D", "B"), ("D", "C")):
                fed.peer(a, b)
            fed.links["O"].serve(Route("m1", "O", ("chat",), 1.0, 1.0, 50.0, 1.0, 8))
            await fed.until(lambda: fed.best("D", "m1") is not None
                            and len(fed.links["D"].node.rib.adj_in) == 2
                            and all(t for t in fed.links["D"].node.rib.adj_in.values()))
            via = fed.best("D", "m1").path[0]
            t0 = time.monotonic()
            await fed.links[via].kill()
            await fed.until(lambda: fed.best("D", "m1") is not None
                            and fed.best("D", "m1").path[0] != via)
            return via, fed.best("D", "m1").path, time.monotonic() - t0
        finally:
            await fed.stop()
    via, path, converged_s = run(main())
    other = "C" if via == "B" else "B"
    assert path == (other, "O")
    assert converged_s <= 3 * 1.0 + 0.5, converged_s     # hold 3 s = 3 × keepalive, + slack


def test_a_malformed_message_closes_the_session_with_a_notification():
    async def main():
        fed = Fed(["A"])
        await fed.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{fed.ports['A']}") as ch:
                call = pb_grpc.AgpStub(ch).Peer()
                await call.write(pb.AgpMessage())          # no body at all
                reply = await call.read()
                rest = await call.read()
            return reply, rest
        finally:
            await fed.stop()
    reply, rest = run(main())
    assert reply.WhichOneof("body") == "notification" and reply.notification.code == 6
    assert rest is grpc.aio.EOF


def test_an_untrusted_dialler_gets_bad_open():
    async def main():
        fed = Fed(["A"])
        await fed.start()
        stranger = Ed25519PrivateKey.generate()
        try:
            from atp_server.federation.session import raw_public
            async with grpc.aio.insecure_channel(f"127.0.0.1:{fed.ports['A']}") as ch:
                call = pb_grpc.AgpStub(ch).Peer()
                await call.write(pb.AgpMessage(open=pb.Open(
                    version=1, router_id="Z", domain="z", public_key=raw_public(stranger),
                    hold_time_ms=3000, keepalive_ms=1000, nonce=b"0" * 16)))
                return await call.read()
        finally:
            await fed.stop()
    reply = run(main())
    assert reply.notification.code == 1 and "trust store" in reply.notification.message

"""The asyncio side of AGP: gRPC peering streams in and out, the timer, reconnects. Thin: every
decision is the Node's (node.py); this moves messages and calls `tick` when a deadline is due.
"""
import asyncio
import itertools
import logging
import time

import grpc

from proto.agp.v1 import agp_pb2 as pb
from proto.agp.v1 import agp_pb2_grpc as pb_grpc

from .node import Node
from .session import Code, Notification
from .wire import Malformed, from_pb, to_pb

log = logging.getLogger("atp.federation")

# Reconnect back-off after a failed dial or a closed session: 0.2 s doubling to 5 s. The first
# retry is quick (a peer restarting is back within a second on loopback); the cap keeps a dead
# peer from being dialled more than a few times per hold time.
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 5.0
# The timer wakes at least this often even with no deadline due: damping reuse is re-evaluated.
IDLE_TICK_S = 1.0


class _Conn:
    """One peering stream: an outbound queue and the task that drains it into the stream."""

    def __init__(self, conn_id: str, write):
        self.id, self.write = conn_id, write
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closing = False


class FederationLink(pb_grpc.AgpServicer):
    def __init__(self, node: Node, clock=time.monotonic):
        self.node, self.clock = node, clock
        self.conns: dict[str, _Conn] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self.server: grpc.aio.Server | None = None
        self.listeners: list = []     # fn(event) for each node event (tests wait on them)

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self.server = grpc.aio.server()
        pb_grpc.add_AgpServicer_to_server(self, self.server)
        bound = self.server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"federation: cannot listen on {host}:{port}")
        await self.server.start()
        self._spawn(self._timer())
        return bound

    def dial(self, target: str, expect: str) -> None:
        """Keep a session to `target` (host:port) whose router must be `expect`."""
        self._spawn(self._dialler(target, expect))

    def serve(self, route) -> None:
        self._send(self.node.serve(route, self.clock()))

    def unserve(self, model: str) -> None:
        self._send(self.node.unserve(model, self.clock()))

    async def kill(self) -> None:
        """Stop at once without telling anyone (tests: a router that dies)."""
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop(0)

    async def stop(self) -> None:
        self._stopping = True
        self._send(self.node.shutdown(self.clock()))
        for c in self.conns.values():
            c.closing = True
            c.queue.put_nowait(None)
        await asyncio.sleep(0)   # one turn: the writers send the CEASE notifications
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop(0.5)

    # ---- the server side (a peer dials us) ---------------------------------------------------------

    async def Peer(self, request_iterator, context):
        conn = _Conn(f"in-{next(self._ids)}", context.write)
        await self._run(conn, context.read, dialler=False, expect=None)

    async def Status(self, request, context):
        s = self.node.status(self.clock())
        return pb.StatusReply(
            router_id=s["router_id"], domain=s["domain"],
            peers=[pb.PeerStatus(router_id=p["router_id"] or "", domain=p["domain"] or "",
                                 state=p["state"], last_heard_ms_ago=max(0, p["last_heard_ms_ago"]),
                                 routes_received=p["routes_received"]) for p in s["peers"]],
            routes=[pb.RouteStatus(model=r["model"], origin=r["origin"], path=r["path"],
                                   price_in_per_mtok=r["price_in_per_mtok"],
                                   price_out_per_mtok=r["price_out_per_mtok"],
                                   latency_ms=r["latency_ms"], health=r["health"], best=r["best"],
                                   suppressed=r["suppressed"]) for r in s["routes"]])

    # ---- the client side (we dial a peer) -------------------------------------------------------------

    async def _dialler(self, target: str, expect: str) -> None:
        delay = RETRY_FIRST_S
        while not self._stopping:
            async with grpc.aio.insecure_channel(target) as channel:
                call = pb_grpc.AgpStub(channel).Peer()
                conn = _Conn(f"out-{expect}-{next(self._ids)}", call.write)
                try:
                    established = await self._run(conn, call.read, dialler=True, expect=expect)
                except grpc.aio.AioRpcError as exc:
                    established = False
                    log.debug("federation: %s (%s) unreachable: %s", expect, target, exc.code().name)
                if established:
                    delay = RETRY_FIRST_S
            if self._stopping:
                return
            await asyncio.sleep(delay)   # back-off between reconnects, not a synchronisation
            delay = min(delay * 2, RETRY_MAX_S)

    # ---- one stream, either side ------------------------------------------------------------------------

    async def _run(self, conn: _Conn, read, *, dialler: bool, expect: str | None) -> bool:
        """Drive one stream until it ends; True if its session was ever established."""
        self.conns[conn.id] = conn
        writer = self._spawn(self._writer(conn))
        established = False
        try:
            self._send(self.node.connected(conn.id, self.clock(), dialler=dialler, expect=expect))
            while True:
                message = await read()
                if message is grpc.aio.EOF:
                    break
                try:
                    msg = from_pb(message)
                except Malformed as exc:
                    self._send({conn.id: [Notification(int(Code.MALFORMED), str(exc))]})
                    break
                self._send(self.node.receive(conn.id, msg, self.clock()))
                session = self.node.sessions.get(conn.id)
                established = established or (session is not None and session.peer is not None
                                              and session.state.value == "established")
                if session is None:
                    break          # the session closed (a NOTIFICATION is queued)
        finally:
            self._send(self.node.disconnected(conn.id, self.clock()))
            conn.closing = True
            conn.queue.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)
            self.conns.pop(conn.id, None)
            self._log_events()
        return established

    async def _writer(self, conn: _Conn) -> None:
        while True:
            msg = await conn.queue.get()
            if msg is None:
                return
            try:
                await conn.write(to_pb(msg))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError):
                return   # the stream is gone; the reader side notices and cleans up

    def _send(self, out: dict) -> None:
        for conn_id, msgs in out.items():
            conn = self.conns.get(conn_id)
            if conn is None:
                continue
            for m in msgs:
                conn.queue.put_nowait(m)
        self._wake.set()
        self._log_events()

    async def _timer(self) -> None:
        while not self._stopping:
            wait = max(0.0, min(self.node.next_deadline() - self.clock(), IDLE_TICK_S))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._send(self.node.tick(self.clock()))

    def _log_events(self) -> None:
        events, self.node.events = self.node.events, []
        for e in events:
            for listener in self.listeners:
                listener(e)
            level = logging.WARNING if e.kind in ("peer_down", "route_dropped") else logging.INFO
            log.log(level, "federation %s %s", e.kind, " ".join(f"{k}={v}" for k, v in e.detail.items()))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

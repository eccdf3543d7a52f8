"""Composition root: builds every component from a Config and runs the transports on one loop."""
import asyncio
import gc
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from codec import ConnectionConfig, Limits

from .accounting import Accountant
from .adapters.simulated import SimulatedAdapter
from .admission import Admission
from .audit import AuditLog
from .auth import NONCE_SNAPSHOT, Authenticator
from .config import Config, audit_file, federation_key, provider_settings, state_dir
from .feedback import FeedbackLog
from .metrics import Metrics
from .pipeline import Pipeline
from .routing.health import HealthBoard
from .routing.router import Router
from .service import GatewayService

log = logging.getLogger("atp")


def build_adapter(name: str, ptype: str, options: dict):
    """One adapter instance per [[providers]] entry, from its options checked as typed settings."""
    settings = provider_settings(f"providers[{name}]", ptype, options)
    if ptype == "simulated":
        return SimulatedAdapter(name, settings)
    from .adapters.openai_compat import OpenAICompatAdapter
    s = settings
    return OpenAICompatAdapter(name, s.base_url, s.api_key, timeout_s=s.timeout_s,
                               connect_timeout_s=s.connect_timeout_s, max_connections=s.max_connections,
                               extra_headers=dict(s.extra_headers), capabilities=frozenset(s.capabilities))


@dataclass
class BoundPorts:
    http: int = 0
    grpc: int = 0
    quic: int = 0
    agp: int = 0          # the federation listener, when [federation] is enabled


class App:
    """Everything one server process needs, built from the Config; transports receive its
    GatewayService (and QUIC its certificate), never the App itself."""

    def __init__(self, config: Config, *, audit_path: str | None = None):
        self.config = config
        self.auth = Authenticator(config.auth)
        self.keyring = self.auth.keyring
        self.limits = Limits()
        self.connection_config = ConnectionConfig(agent="atp-server/0.1", heartbeat_ms=0,
                                                  idle_timeout_ms=300_000)
        self.adapters = {p.name: build_adapter(p.name, p.type, p.options) for p in config.providers}
        self.router = Router(list(config.models), HealthBoard())
        self.admission = Admission(config.server.max_inflight, config.server.max_queue)
        self.accountant = Accountant()
        self.metrics = Metrics(self.accountant, models=[m.id for m in config.models])
        self.metrics.inflight.set_function(lambda: self.admission.inflight)
        self.metrics.queued.set_function(lambda: self.admission.queued)
        self.audit = None
        if config.audit.enabled:
            path = Path(os.path.expanduser(audit_path)) if audit_path else audit_file(config)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.audit = AuditLog(str(path), max_buffer=config.audit.max_buffered_rows)
            self.admission.gate = self.audit.admit   # full buffer: refuse new work (see audit.py)
            self.metrics.track_audit(self.audit)
        self.pipeline = Pipeline(self.router, self.adapters, self.admission, self.accountant,
                                 self.audit, self.metrics)
        self.feedback = FeedbackLog()
        # The transports' one way in (service.py): they never reach the parts above directly.
        self.service = GatewayService(
            auth=self.auth, pipeline=self.pipeline, router=self.router, feedback=self.feedback,
            metrics=self.metrics, admission=self.admission, limits=self.limits,
            connection_config=self.connection_config,
            congestion_watermark=config.server.congestion_watermark)
        self.transports: list = []
        self.federation = None    # federation.link.FederationLink once started
        self.ports = BoundPorts()

    @property
    def draining(self) -> bool:
        return self.service.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.service.draining = value     # read by the transports on every request

    async def start(self, *, http: bool = True, grpc: bool = True, quic: bool = True,
                    reuse_port: bool = False) -> BoundPorts:
        """Start the enabled transports (a configured port of 0 picks a free port)."""
        s = self.config.server
        self.auth.load_nonces(state_dir(self.config) / NONCE_SNAPSHOT)   # before any transport
        if self.audit is not None:
            self.audit.start()
        if http:
            from .transport.http import HttpTransport
            t = HttpTransport(self.service)
            self.ports.http = await t.start(s.host, s.http_port, reuse_port=reuse_port)
            self.transports.append(t)
        if grpc:
            from .transport.grpc import GrpcTransport
            t = GrpcTransport(self.service)
            self.ports.grpc = await t.start(s.host, s.grpc_port, reuse_port=reuse_port)
            self.transports.append(t)
        if quic:
            from .tls import tls_paths
            from .transport.quic import QuicTransport
            t = QuicTransport(self.service, tls_paths(self.config))
            self.ports.quic = await t.start(s.host, s.quic_port)
            self.transports.append(t)
        if self.config.federation.enabled and self.federation is None:
            from . import federation
            from .federation.config import load_key
            self.federation, self.ports.agp = await federation.start(
                self.config.federation, load_key(federation_key(self.config)), self.config.models)
        return self.ports

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new work, give in-flight streams `grace_s`, then close everything."""
        grace = self.config.server.drain_seconds if grace_s is None else grace_s
        self.draining = True
        if self.federation is not None:   # withdraw from the federation first: peers route around
            await self.federation.stop()
            self.federation = None
        await asyncio.gather(*(t.stop(grace) for t in self.transports), return_exceptions=True)
        self.transports.clear()
        self.auth.save_nonces(state_dir(self.config) / NONCE_SNAPSHOT)   # nothing accepts now
        for adapter in self.adapters.values():
            await adapter.aclose()
        if self.audit is not None:
            await self.audit.close()

    async def serve_forever(self, on_started=None, **start_kwargs) -> None:
        """Run until SIGINT/SIGTERM, then drain. `on_started(ports)` runs once everything listens."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start(**start_kwargs)
        except BaseException:
            await self.stop(0)      # a later transport failed (port in use): close the earlier ones
            raise
        # Everything built so far lives as long as the server: move it out of the collector's
        # reach, so a full collection walks only per-request garbage (shorter tail pauses).
        gc.collect()
        gc.freeze()
        if on_started is not None:
            on_started(self.ports)
        log.info("ATP serving: http=%s grpc=%s quic=%s", self.ports.http, self.ports.grpc, self.ports.quic)
        await stop.wait()
        log.info("draining (up to %.1fs)", self.config.server.drain_seconds)
        await self.stop()


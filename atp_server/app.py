"""Composition root: builds every component from a Config and runs the transports on one loop."""
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from codec import ConnectionConfig, Limits

from .accounting import Accountant
from .adapters.simulated import SimulatedAdapter
from .admission import Admission, SchedulingCollector
from .audit import AuditLog
from .auth import NONCE_SNAPSHOT, Authenticator
from .embedding import Embedder
from .config import (Config, audit_file, audit_signing_key, federation_key, privacy_ledger,
                     provider_settings, state_dir)
from .feedback import FeedbackLog
from .logs import event
from .metrics import Metrics
from .pipeline import Pipeline
from .pricing import PriceBook
from .routing.aimd import ProviderWindows, provider_bounds
from .routing.health import HealthBoard
from .routing.bandit import FILE as POSTERIORS
from .routing.router import Router, audit_verdicts, load_predictor
from .service import GatewayService
from .stages.limits import LimitsCollector, LimitsStage
from .state import open_stores

log = logging.getLogger("atp")


def build_adapter(name: str, ptype: str, options: dict):
    """One adapter instance per [[providers]] entry, from its options checked as typed settings."""
    settings = provider_settings(f"providers[{name}]", ptype, options)
    if ptype == "simulated":
        return SimulatedAdapter(name, settings)
    if ptype == "anthropic":
        from .adapters.anthropic import AnthropicAdapter
        return AnthropicAdapter(name, settings)
    if ptype == "ollama":
        from .adapters.ollama import OllamaAdapter
        return OllamaAdapter(name, settings)
    from .adapters.openai_compat import OpenAICompatAdapter
    s = settings
    return OpenAICompatAdapter(name, s.base_url, s.api_key, timeout_s=s.timeout_s,
                               connect_timeout_s=s.connect_timeout_s, max_connections=s.max_connections,
                               extra_headers=dict(s.extra_headers), capabilities=frozenset(s.capabilities),
                               stream_usage=s.stream_usage, max_tokens_field=s.max_tokens_field,
                               json_schema_format=s.json_schema_format,
                               total_timeout_s=s.total_timeout_s, pool_timeout_s=s.pool_timeout_s,
                               keepalive_s=s.keepalive_s, max_concurrency=s.max_concurrency)


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
        from .tenants import keys_path
        self.auth = Authenticator(config.auth, keys_path=keys_path(config), tenants=config.tenants)
        self.keyring = self.auth.keyring
        self.limits = Limits()
        self.connection_config = ConnectionConfig(agent="atp-server/0.1", heartbeat_ms=0,
                                                  idle_timeout_ms=300_000,
                                                  auto_replenish=False)   # session.credits does it
        self.adapters = {p.name: build_adapter(p.name, p.type, p.options) for p in config.providers}
        self.router = Router(list(config.models), HealthBoard(on_change=_circuit_event),
                             policy=config.routing,
                             predictor=load_predictor(config.routing))
        if config.routing.challenger:     # champion/challenger from the start (routing/champion.py)
            self.router.challenge(config.routing.challenger,
                                  load_predictor(config.routing, "challenger"),
                                  config.routing.challenger_share, config.routing.challenger_shadow)
        self.admission = Admission(config.server.max_inflight, config.server.max_queue,
                                   scheduling=config.scheduling,
                                   high_watermark=config.server.congestion_watermark)
        self.windows = ProviderWindows(provider_bounds(config), clock=time.monotonic,
                                       increase=config.scheduling.aimd_increase,
                                       decrease=config.scheduling.aimd_decrease)
        # Fewer slots than max_inflight while the providers' AIMD windows are smaller: the excess
        # waits in the fair queue instead of failing at dispatch.
        self.admission.capacity = lambda: min(config.server.max_inflight, self.windows.total)
        self.windows.overcommitted = lambda: self.admission.inflight > self.windows.total
        self.accountant = Accountant(PriceBook(config.models, config.pricing))
        self.metrics = Metrics(self.accountant, models=[m.id for m in config.models],
                               tenant_spend=bool(config.metrics.scrape_token),
                               max_label_values=config.metrics.max_label_values)
        self.metrics.track_routing(self.router)
        self.metrics.inflight.set_function(lambda: self.admission.inflight)
        self.metrics.queued.set_function(lambda: self.admission.queued)
        self.metrics.registry.register(SchedulingCollector(self.admission, self.windows))
        self.audit = None
        if config.audit.enabled:
            path = Path(os.path.expanduser(audit_path)) if audit_path else audit_file(config)
            path.parent.mkdir(parents=True, exist_ok=True)
            a = config.audit
            self.audit = AuditLog(str(path), max_buffer=a.max_buffered_rows,
                                  signing_key=str(audit_signing_key(config)),
                                  sign_every_rows=a.checkpoint_every_rows,
                                  sign_every_s=a.checkpoint_every_s, synchronous=a.synchronous,
                                  durable_wait_s=a.durable_wait_ms / 1000,
                                  retention_days=a.retention_days, store_prompts=a.store_prompts)
            self.admission.gate = self.audit.admit   # full buffer: refuse new work (see audit.py)
            self.metrics.track_audit(self.audit)
            self.router.on_verdict = audit_verdicts(self.audit)   # champion/challenger verdicts
        self.stores = open_stores(config.state)   # shared state: memory, or Redis when configured
        if self.stores.shared:    # one replay window for every worker (auth.check_shared_nonce)
            self.auth.shared_nonces = self.stores.nonces
            self.stores.nonces.guard.on_recover = self.auth.shared_store_recovered
            self.stores.epoch.listeners.append(self.auth.shared_floor)
            self.metrics.track_state(self.stores)
        self.limit_stage = None
        if config.limits:
            self.limit_stage = LimitsStage(config.limits, self.stores, self.router.models)
            self.metrics.registry.register(LimitsCollector(
                self.limit_stage, per_subject=bool(config.metrics.scrape_token),
                max_subjects=config.metrics.max_label_values))
        from .policy import PolicyHolder
        self.policy = PolicyHolder.from_config(config)   # raises ConfigError for a bad policy file
        # a rule requiring redaction is satisfiable only when the redaction stage is in the chain
        self.policy.redaction_available = config.redaction.enabled
        self.metrics.track_policy(self.policy)
        self.metrics.track_privacy(privacy_ledger(config), config.privacy)
        self.forwarding = None    # federation/forward.py: remote models served through next hops
        if config.federation.enabled:
            from .federation.forward import install
            self.forwarding = install(config.federation, self.router, self.adapters)
        self.shadow = None          # shadow.ShadowMirror when the challenger is a shadow
        shadow_stage = None
        if config.routing.challenger and config.routing.challenger_shadow:
            from .shadow import ShadowMirror, ShadowStage
            r = config.routing
            self.shadow = ShadowMirror(self.router, self.adapters, self.accountant, self.audit,
                                       max_inflight=r.shadow_max_inflight, timeout_s=r.shadow_timeout_s)
            shadow_stage = ShadowStage(self.shadow, r.challenger_share)
            self.metrics.registry.register(self.shadow.collector())
        self.cache = cache_stage = None   # the response cache (cache.py) when [cache] enabled
        if config.cache.enabled:
            from .cache import CacheCounters, open_cache
            from .stages.cache import CacheStage
            self.cache = open_cache(config.cache, self.stores, config.state.prefix)
            self.cache_counters = CacheCounters(self.cache)
            self.metrics.registry.register(self.cache_counters)
            cache_stage = CacheStage(config.cache, self.cache, self.cache_counters, self.router.models)
        else:
            ruled = [r.id for r in self.policy.policy.rules if r.effect in ("cache", "no_cache")]
            if ruled:   # not an error: the same policy files may serve servers with the cache on
                log.warning("policy rules %s set a cache effect but [cache] enabled = false: "
                            "no response is cached", ", ".join(ruled))
        self.slo = None           # slo.SloTracker when [[slo]] is configured
        if config.slo:
            from .slo import SloTracker
            self.slo = SloTracker(config.slo, self.admission)
            self.metrics.registry.register(self.slo.collector())
        from . import tracing       # [tracing]: OpenTelemetry is imported only when it is on
        self.tracer = tracing.build(config.tracing, {p.name: p.type for p in config.providers})
        self.pipeline = Pipeline(self.router, self.adapters, self.admission, self.accountant,
                                 self.audit, self.metrics, policy=self.policy, tracer=self.tracer,
                                 dispatch=config.dispatch, windows=self.windows,
                                 limits=self.limit_stage, redaction=config.redaction,
                                 guard=config.guard, shadow=shadow_stage, cache=cache_stage,
                                 slo=self.slo)
        self._cache_stage = cache_stage
        self.router.on_models.append(self._models_changed)
        self.metrics.track_breakers(self.router.health, lambda: self.router.models,
                                    lambda: self.pipeline.clock())
        # reload(): (name, prepare) pairs; prepare() parses and checks, returns a commit()
        from .reload import Reloader
        self.reloader = Reloader([("keys", self.auth.prepare_reload),
                                  ("policy", self.policy.prepare_reload),
                                  ("limits", self._prepare_limits_reload)], state_dir(config))
        self.config_path: str | None = None   # the file the server was started from (cli.py sets it)
        from .routing.control import OperatorControl    # `atp router promote|rollback|pin`
        self.router_control = OperatorControl(self.router, state_dir(config), self.audit)
        self.reloader.add("router", self.router_control.prepare)
        self.feedback = FeedbackLog(on_score=lambda tenant, rid, score: self.router.feedback(
            tenant, rid, score, self.pipeline.clock()))
        # The transports' one way in (service.py): they never reach the parts above directly.
        self.service = GatewayService(
            auth=self.auth, pipeline=self.pipeline, router=self.router, feedback=self.feedback,
            metrics=self.metrics, admission=self.admission, limits=self.limits,
            connection_config=self.connection_config,
            congestion_watermark=config.server.congestion_watermark,
            scrape_token=config.metrics.scrape_token)
        self.service.embed = Embedder(self.router, self.adapters, self.accountant, self.pipeline.policy,
                                      self.pipeline.clock).embed
        from .admin import Admin
        self.service.admin = Admin(self)   # /admin/v1 (transport/http_admin.py): its own keys and roles
        self.resources = None     # resources.ResourceMonitor: memory pressure -> routing mask
        if config.resources.enabled:
            from .resources import ResourceMonitor, local_probes
            r = self.router
            self.resources = ResourceMonitor(
                config.resources,
                lambda: [t for t in (r.ref.table, r.challenger_table) if t is not None],
                lambda: r.ref.table.specs,
                local_probes(config, config.resources.probe_timeout_ms / 1000))
        self.service.resources = self.resources
        self.service.slo = self.slo
        self.live = self.webhooks = self.events = None   # live.py, webhooks.py, events.py
        if config.dashboard.enabled or config.webhooks:
            from . import events, live, webhooks
            self.live = live.install(self)   # the dashboard's and `atp top`'s numbers
            if config.dashboard.enabled:
                self.service.live = self.live
                self.service.dashboard_token = config.dashboard.token or config.metrics.scrape_token
            if config.webhooks:
                self.webhooks = webhooks.Dispatcher(config.webhooks)
                self.metrics.registry.register(webhooks.WebhookCollector(self.webhooks))
                self.live.extra["webhooks"] = self.webhooks.stats
            self.events = events.install(self)
        self.transports: list = []
        self.federation = None    # federation.link.FederationLink once started
        if config.federation.enabled:
            from .federation.metrics import FederationCollector
            self.metrics.registry.register(FederationCollector(self))
        self.learning = None      # state.learning.LearningSync: workers merge what routing learnt
        self.ports = BoundPorts()
        self.pid_owner: int | None = None        # the pid `atp reload` signals, when not ours
        self.worker: tuple[int, int] | None = None   # (index, N) under `atp serve --workers N`
        self.worker_metrics = None               # worker_metrics.WorkerMetrics when N > 1

    @property
    def draining(self) -> bool:
        return self.service.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.service.draining = value     # read by the transports on every request

    def _prepare_limits_reload(self):
        """The Reloader's [[limits]] part: re-read the config file the server started from; its
        limits replace the ones in force (the admin API's budget changes are laid over them
        again by its own part, which runs after this one). A file that does not load is refused
        with the key at fault; the stage exists only if [[limits]] were configured at start."""
        if self.config_path is None:      # the embedded default: no file to follow
            return lambda: None
        from . import config as atp_config
        fresh = atp_config.load(self.config_path).limits   # ConfigError (a ValueError) names the key
        if fresh == self.config.limits:
            return lambda: None
        if self.limit_stage is None:
            raise ValueError(f"{self.config_path}: [[limits]] were added; the limits stage is built at "
                             "start, so restart the server to enforce them")

        def commit() -> None:
            self.config = dataclasses.replace(self.config, limits=fresh)
            self.limit_stage.set_rules(fresh)
            admin = getattr(self.service, "admin", None)
            if admin is not None:
                admin.budgets = {r.name: r for r in fresh}
        return commit

    def _models_changed(self, models: dict) -> None:
        """The router's table changed (admin API, federation rows): what prices, allows or serves
        per model follows it — budget bounds (a remote route may cost more than every local
        model), the policy's candidates for unpinned requests, the models a cache hit may name."""
        self.policy.models = dict(models)
        if self.limit_stage is not None:
            self.limit_stage.set_models(models)
        if self._cache_stage is not None:
            self._cache_stage.models = models

    async def start(self, *, http: bool = True, grpc: bool = True, quic: bool = True,
                    reuse_port: bool = False) -> BoundPorts:
        """Start the enabled transports (a configured port of 0 picks a free port)."""
        s = self.config.server
        self.auth.load_nonces(state_dir(self.config) / NONCE_SNAPSHOT)   # before any transport
        await self.stores.start()        # Redis: the epoch, read before the first request
        if self.config.routing.persist:
            self.router.load(state_dir(self.config) / POSTERIORS)
        if self.audit is not None:
            self.audit.start()
        if self.stores.learning is not None and self.config.state.merge_interval_ms and self.learning is None:
            from .state.learning import start_sync
            self.learning = start_sync(self.router, self.stores.learning,
                                       self.config.state.merge_interval_ms / 1000, self.pipeline.clock)
        self.router_control.write_state()    # what `atp router status` reads
        if self.resources is not None:
            self.resources.start()
        if self.events is not None:
            await self.events.start()
        if self.worker is not None and self.worker[1] > 1 and self.worker_metrics is None:
            from .worker_metrics import WorkerMetrics   # a scrape of any worker shows them all
            self.worker_metrics = WorkerMetrics(self.metrics.render, state_dir(self.config), *self.worker)
            await self.worker_metrics.start()
            self.service.scrape_metrics = self.worker_metrics.gather
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
            self.forwarding.attach(self.federation)
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
        if self.worker_metrics is not None:
            await self.worker_metrics.stop()
            self.worker_metrics = None
        self.auth.save_nonces(state_dir(self.config) / NONCE_SNAPSHOT)   # nothing accepts now
        if self.learning is not None:     # a last merge, so the saved posteriors hold it too
            await self.learning.stop()
            self.learning = None
        if self.config.routing.persist:
            self.router.save(state_dir(self.config) / POSTERIORS)
        if self.shadow is not None:
            await self.shadow.close()        # cancel shadow calls before their adapters close
        if self.events is not None:
            await self.events.stop()
        for adapter in self.adapters.values():
            await adapter.aclose()
        if self.resources is not None:
            await self.resources.stop()
        if self.audit is not None:
            await self.audit.close()
        if self.cache is not None:
            await self.cache.close()         # background stores sent before the client closes
        await self.stores.close()
        if self.tracer is not None:          # the last spans exported (blocking: off the loop)
            await asyncio.to_thread(self.tracer.shutdown)

    async def serve_forever(self, on_started=None, **start_kwargs) -> None:
        """Run until SIGINT/SIGTERM, then drain. `on_started(ports)` runs once everything listens."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reloader.reload)   # `atp reload`
        self.reloader.announce()     # the files in force now, and that SIGHUP is handled
        try:
            await self.start(**start_kwargs)
        except BaseException:
            await self.stop(0)      # a later transport failed (port in use): close the earlier ones
            raise
        # Everything built so far lives as long as the server: move it out of the collector's
        # reach, so a full collection walks only per-request garbage (shorter tail pauses).
        gc.collect()
        gc.freeze()
        if self.pid_owner is None:               # else a parent process wrote its own pid
            from .reload import write_pid
            write_pid(state_dir(self.config))   # `atp reload` signals this process
        if on_started is not None:
            on_started(self.ports)
        log.info("ATP serving: http=%s grpc=%s quic=%s", self.ports.http, self.ports.grpc, self.ports.quic)
        await stop.wait()
        event("drain", logging.INFO, grace_s=self.config.server.drain_seconds)
        await self.stop()


def _circuit_event(model_id: str, was, now) -> None:
    """A breaker transition as a log event: opening is a warning, recovering is news."""
    event("circuit", logging.WARNING if now.name == "OPEN" else logging.INFO, model=model_id,
          state=now.name.lower(), was=was.name.lower())

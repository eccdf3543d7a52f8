"""The `atp` command line: run a server (`atp serve`) and talk to one (`atp chat|models|health`)."""
import argparse
import asyncio
import dataclasses
import errno
import json
import logging
import os
import sys
import time

from . import config as atp_config

EXIT_OK, EXIT_REQUEST, EXIT_USAGE = 0, 1, 2
DEFAULT_PORTS = {"http": 8470, "grpc": 8471, "session": 8471, "quic": 8472}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RAW = argparse.RawDescriptionHelpFormatter


class RequestFailed(Exception):
    """A request got an ATP error (or none could be made): exit 1 with `atp: NAME (code): message`."""

    def __init__(self, name: str, code: int, message: str):
        super().__init__(f"{name} ({code}): {message}")


def _fail_from(exc) -> RequestFailed:
    return RequestFailed(getattr(exc, "name", "UNAVAILABLE"), getattr(exc, "code", 504),
                         getattr(exc, "message", str(exc)))


class UsageError(Exception):
    """A bad command-line value argparse cannot check itself: exit 2 with `atp: message`."""


def _host_port(target: str, default_port: int) -> tuple[str, int]:
    if target.count(":") > 1 and not target.startswith("["):   # a bare IPv6 address
        return target, default_port
    host, sep, port = target.rpartition(":")
    if not sep or not host:
        return target or "127.0.0.1", default_port
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise UsageError(f"--target {target}: the port must be a number 1..65535 (HOST[:PORT], "
                         "IPv6 as [::1]:PORT)")
    return host.strip("[]"), int(port)


def _target(args, transport: str) -> str:
    return args.target or f"127.0.0.1:{DEFAULT_PORTS[transport]}"


# ---- atp serve -------------------------------------------------------------------------------------

def _banner(cfg, args, enabled: dict) -> str:
    s = cfg.server
    ports = {"http": s.http_port, "grpc": s.grpc_port, "quic": s.quic_port}
    lines = [f"ATP starting on {s.host} (config: {args.config or 'embedded default'})"]
    for name, label in (("http", "HTTP (OpenAI-compatible)"), ("grpc", "gRPC"), ("quic", "QUIC/UDP")):
        where = (ports[name] or "a free port (see the log)") if enabled[name] else "off"
        lines.append(f"  {label:<26} {where}")
    if args.config is None:
        lines += ["", "  development defaults, loopback only — never expose these credentials:",
                  f"    API key       {atp_config.DEV_API_KEY}",
                  f"    HMAC key      id {atp_config.DEV_HMAC_KEY_ID}, secret "
                  f'"{atp_config.DEV_HMAC_SECRET.decode()}"']
    http, grpc = f"{s.host}:{s.http_port or '<port>'}", f"{s.host}:{s.grpc_port or '<port>'}"
    key = atp_config.DEV_API_KEY if args.config is None else "<key>"
    lines += ["", "  try:"]
    if enabled["grpc"]:
        lines += [f'    atp chat "hello" --target {grpc}', f"    atp models --target {grpc}"]
    if enabled["http"]:
        lines += [f'    atp chat "hello" --transport http --target {http}',
                  f"    curl -s http://{http}/v1/chat/completions -H 'Authorization: Bearer {key}' "
                  "-d '{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"]
    lines.append("")
    return "\n".join(lines)


def cmd_serve(args) -> int:
    try:
        cfg = atp_config.load(args.config)
        overrides = {k: v for k, v in (("host", args.host), ("http_port", args.http_port),
                                       ("grpc_port", args.grpc_port), ("quic_port", args.quic_port))
                     if v is not None}
        for key, value in overrides.items():
            if key.endswith("_port") and not 0 <= value <= 65535:
                raise atp_config.ConfigError(f"--{key.replace('_', '-')}: must be 0..65535")
            if key == "host" and not value:
                raise atp_config.ConfigError("--host: must not be empty")
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, **overrides))
        if args.config is None and cfg.server.host not in LOOPBACK:
            raise atp_config.ConfigError(
                f"server.host: {cfg.server.host} is not loopback; the embedded default carries "
                "well-known development credentials, so give a --config with your own keys")
        workers = args.workers if args.workers is not None else cfg.server.workers
        if workers < 1:
            raise atp_config.ConfigError("--workers: must be >= 1")
        atp_config.check_workers(cfg, workers, "--workers" if args.workers is not None
                                 else "server.workers")
        enabled = {"http": not args.no_http, "grpc": not args.no_grpc, "quic": not args.no_quic}
        if not any(enabled.values()):
            raise atp_config.ConfigError("every transport is disabled")
        if workers > 1:
            zero = [n for n in ("http", "grpc") if enabled[n] and getattr(cfg.server, f"{n}_port") == 0]
            if zero:
                raise atp_config.ConfigError(f"server.{zero[0]}_port: workers share ports with "
                                             "SO_REUSEPORT, so 0 (any free port) cannot be used")
        from .logs import setup as setup_logging
        setup_logging(args.log_level, args.log_format)
        if args.no_access_log:
            logging.getLogger("atp.access").setLevel(logging.WARNING)
        _check_ports(cfg, enabled, reuse_port=workers > 1)
        if enabled["quic"]:
            _check_tls(cfg)
        if workers == 1:
            app = _build_app(cfg, args.config)   # config errors found while building show before anything binds
        else:
            _check_audit_file(cfg)  # the workers build their own App: fail once, here, instead
            from . import tracing
            tracing.check(cfg.tracing)   # likewise a missing OpenTelemetry extra
            if cfg.audit.enabled:   # created once, here: workers racing to create it read it half-written
                from .audit.signing import load_or_create
                load_or_create(atp_config.audit_signing_key(cfg))
    except atp_config.ConfigError as exc:
        print(f"atp: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PortUnavailable as exc:
        print(f"atp: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if workers > 1:
        return _serve_workers(cfg, args, enabled, workers)
    return _serve_one(app, cfg, args, enabled, announce=True, reuse_port=False)


_TRANSPORT_LABELS = {"http": "HTTP", "grpc": "gRPC", "quic": "QUIC"}
_BIND_PROBLEMS = {errno.EADDRINUSE: "is already in use",
                  errno.EACCES: "needs privileges (a port below 1024)",
                  errno.EADDRNOTAVAIL: "is not available: the host is not an address of this machine"}


class PortUnavailable(Exception):
    """A configured port cannot be bound: the operator's configuration problem (exit 2)."""


def _check_ports(cfg, enabled: dict, reuse_port: bool) -> None:
    """Bind and release each configured port before starting, as its transport will bind it.

    Without this a busy gRPC port surfaces as grpc's own log line plus a RuntimeError traceback,
    and busy HTTP/QUIC ports as asyncio errors that do not say which transport failed. A port
    taken between this check and the real bind still fails cleanly (exit 2), just less precisely.
    """
    import socket
    host = cfg.server.host
    for name, label in _TRANSPORT_LABELS.items():
        port = getattr(cfg.server, f"{name}_port")
        if not enabled[name] or port == 0:
            continue
        kind = socket.SOCK_DGRAM if name == "quic" else socket.SOCK_STREAM
        try:
            addrs = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise PortUnavailable(f"server.host: cannot resolve {host!r}: {exc.strerror}") from None
        errors = []
        for family, _, proto, _, sockaddr in addrs:
            with socket.socket(family, kind, proto) as probe:
                if kind == socket.SOCK_STREAM:   # as asyncio and grpc do: TIME_WAIT is no obstacle
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port and name != "quic":
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    probe.bind(sockaddr)
                except OSError as exc:
                    errors.append(exc)
        if errors and len(errors) == len(addrs):   # grpc and aioquic need one address, not all
            exc = errors[0]
            problem = _BIND_PROBLEMS.get(exc.errno, f"cannot be bound: {exc.strerror or exc}")
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise PortUnavailable(f"{label} port {where} {problem} (server.{name}_port, --{name}-port)")


def _build_app(cfg, config_path: str | None = None):
    """App(cfg), with a failure to open the audit database reported as a config error;
    `config_path` is the file a reload re-reads for [[limits]]."""
    import sqlite3
    from .app import App
    try:
        app = App(cfg)
        app.config_path = config_path
        return app
    except (OSError, sqlite3.Error) as exc:
        if not cfg.audit.enabled:
            raise
        raise atp_config.ConfigError(f"audit.path: cannot open the audit database "
                                     f"{atp_config.audit_file(cfg)}: {exc}") from None


def _check_audit_file(cfg) -> None:
    """Open and close the audit database (no connection may cross the fork), naming audit.path."""
    import sqlite3
    if not cfg.audit.enabled:
        return
    path = atp_config.audit_file(cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)
        try:
            db.execute("PRAGMA schema_version")   # reads the file: a directory fails here
        finally:
            db.close()
    except (OSError, sqlite3.Error) as exc:
        raise atp_config.ConfigError(f"audit.path: cannot open the audit database {path}: {exc}") from None


def _check_tls(cfg) -> None:
    """Load a configured QUIC certificate as the QUIC transport will, to name the key if it fails."""
    s = cfg.server
    if not s.tls_cert:
        return   # generated into state_dir on first start
    try:
        from aioquic.quic.configuration import QuicConfiguration
    except ImportError:
        return   # no QUIC support installed: the transport reports that itself
    try:
        QuicConfiguration(is_client=False).load_cert_chain(s.tls_cert, s.tls_key)
    except Exception as exc:   # OSError for a missing file, ValueError & co. for a bad PEM
        raise atp_config.ConfigError(f"server.tls_cert: cannot load the QUIC certificate "
                                     f"{s.tls_cert} with key {s.tls_key}: "
                                     f"{getattr(exc, 'strerror', None) or exc}") from None


def _serve_one(app, cfg, args, enabled: dict, *, announce: bool, reuse_port: bool) -> int:
    def on_started(ports) -> None:   # after binding, so port 0 shows the port actually chosen
        if announce:
            bound = dataclasses.replace(cfg.server, http_port=ports.http, grpc_port=ports.grpc,
                                        quic_port=ports.quic)
            print(_banner(dataclasses.replace(cfg, server=bound), args, enabled), file=sys.stderr,
                  flush=True)

    import uvloop
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(app.serve_forever(on_started=on_started, reuse_port=reuse_port, **enabled))
    except atp_config.ConfigError as exc:
        print(f"atp: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:   # at start: a port taken since _check_ports, an unreadable certificate
        print(f"atp: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _serve_workers(cfg, args, enabled: dict, workers: int) -> int:
    """N processes sharing the HTTP and gRPC ports (SO_REUSEPORT: the kernel spreads connections).

    Forked before any gRPC object exists (gRPC's threads do not survive a fork). QUIC runs in
    worker 0 only: UDP port sharing would break a connection whose packets hash to another worker.
    Limits, budgets, replay nonces and learning are shared through [state] redis_url; without it
    config.check_workers refuses N > 1 when a worker of its own would break a guarantee (HMAC
    keys: the nonce cache; [[limits]]); the README's "Workers" note lists what stays per worker.
    A worker that dies after start-up is replaced (WORKER_RESPAWNS); one that cannot start (exit 2:
    a port, the config) stops them all.
    """
    import signal as _signal

    def spawn(index: int) -> int:
        pid = os.fork()
        if pid == 0:   # the worker: its own App, loop and sockets
            code = EXIT_REQUEST
            try:
                _signal.signal(_signal.SIGINT, _signal.SIG_IGN)   # the parent forwards signals
                _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)   # until the loop handles reload
                _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)  # not the parent's forwarder
                mine = dict(enabled, quic=enabled["quic"] and index == 0)
                # Built here, not before the fork: an SQLite connection must not cross one.
                app = _build_app(cfg, args.config)
                app.pid_owner = app.reloader.owner_pid = os.getppid()   # `atp reload` signals
                app.worker = (index, workers)    # /metrics gathers every worker's numbers
                code = _serve_one(app, cfg, args, mine, announce=index == 0 and not respawned,
                                  reuse_port=True)
            except atp_config.ConfigError as exc:   # rare: cmd_serve checked the audit file
                print(f"atp: config error: {exc}", file=sys.stderr, flush=True)
                code = EXIT_USAGE
            except BaseException:   # os._exit below would swallow the traceback of a bug
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        return pid

    respawned = False
    children = {spawn(index): index for index in range(workers)}   # pid -> worker index
    stopping = False

    def forward(signum, _frame) -> None:     # SIGINT and SIGTERM stop workers; SIGHUP reloads
        nonlocal stopping
        if signum != _signal.SIGHUP:
            stopping = True
        for child in list(children):
            try:
                os.kill(child, _signal.SIGHUP if signum == _signal.SIGHUP else _signal.SIGTERM)
            except ProcessLookupError:
                pass

    _signal.signal(_signal.SIGTERM, forward)
    _signal.signal(_signal.SIGINT, forward)

    def forward_reload(signum, _frame) -> None:   # `atp reload`: every worker reloads
        forward(_signal.SIGHUP, None)
    _signal.signal(_signal.SIGHUP, forward_reload)
    from .reload import write_pid, write_workers
    write_pid(atp_config.state_dir(cfg))
    write_workers(atp_config.state_dir(cfg), children)
    print(f"atp: {workers} workers: {', '.join(map(str, children))}", file=sys.stderr, flush=True)
    worst = EXIT_OK
    recent: list[float] = []     # when workers were last replaced (the crash-loop guard)
    while children:   # in exit order: the first failure is the cause, the rest its consequence
        pid, status = os.wait()
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping or code == EXIT_OK:
            continue
        if code != EXIT_USAGE:   # killed (kill -9, OOM) or a crash: the others keep serving
            now = time.monotonic()
            recent = [t for t in recent if now - t < WORKER_RESPAWN_WINDOW_S]
            if len(recent) < WORKER_RESPAWNS:
                recent.append(now)
                how = f"signal {-code}" if code < 0 else f"exit {code}"
                print(f"atp: worker {pid} ended ({how}); starting a new worker {index}",
                      file=sys.stderr, flush=True)
                respawned = True
                children[spawn(index)] = index
                write_workers(atp_config.state_dir(cfg), children)
                continue
            print(f"atp: {len(recent)} workers replaced within {WORKER_RESPAWN_WINDOW_S:.0f} s: "
                  "a crash loop; stopping", file=sys.stderr, flush=True)
        if worst == EXIT_OK:
            worst = code if code > 0 else EXIT_REQUEST
        forward(_signal.SIGTERM, None)   # a worker cannot start (port in use...): stop the rest
    return worst


# A worker that dies after start-up (kill -9, the OOM killer, a crash) is replaced, so one lost
# process does not take the server down; more than this many replacements within the window is
# a crash loop (every new worker dies too), and the server stops with the cause on stderr.
WORKER_RESPAWNS = 5
WORKER_RESPAWN_WINDOW_S = 60.0


# ---- atp chat --------------------------------------------------------------------------------------

async def _http_chat(args, on_text) -> dict:
    """A minimal OpenAI-protocol call with aiohttp; SSE unless --no-stream."""
    import aiohttp
    body = {"model": args.model or (f"atp-{args.tier}" if args.tier else "auto"),
            "messages": [{"role": "user", "content": args.prompt}], "stream": not args.no_stream}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    url = f"http://{_target(args, 'http')}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"}
    out = {"text": "", "model": None, "provider": None, "usage": None, "cost_usd": None,
           "overhead_us": None, "request_id": None}
    parts = []
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as resp:
            out["request_id"] = resp.headers.get("x-request-id")
            if resp.status != 200 or not body["stream"]:
                data = await resp.json(content_type=None)
                if "error" in data:
                    e = data["error"]
                    raise RequestFailed(e.get("code", "HTTP_ERROR"), e.get("atp_code", resp.status),
                                        e.get("message", ""))
                parts.append(data["choices"][0]["message"]["content"])
                on_text(parts[-1])
                _take_final(out, data)
            else:
                done = False
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        e = chunk["error"]
                        raise RequestFailed(e["code"], e["atp_code"], e["message"])
                    for choice in chunk.get("choices", ()):
                        text = choice.get("delta", {}).get("content")
                        if text:
                            parts.append(text)
                            on_text(text)
                    _take_final(out, chunk)
                if not done:
                    raise RequestFailed("UPSTREAM_CUT", 503, "the stream ended without [DONE]")
    out["text"] = "".join(parts)
    return out


def _take_final(out: dict, data: dict) -> None:
    if data.get("usage"):
        u = data["usage"]
        out["usage"] = {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"]}
    ext = data.get("atp")
    if ext:
        out.update(model=ext["model"], provider=ext["provider"], cost_usd=ext["cost_usd"],
                   overhead_us=ext["overhead_us"])


def _quic_trust(args, host: str) -> dict:
    """How `atp chat` checks a QUIC server's certificate: --insecure or --ca-file if given; else
    the system store for a remote host; on loopback the embedded default's generated certificate
    (pinned), or no check if there is none here (loopback traffic stays on this host)."""
    if args.insecure or args.ca_file:
        return {"insecure": True} if args.insecure else {"ca_file": args.ca_file}
    if host not in LOOPBACK:
        return {}
    cert = os.path.join(os.path.expanduser(atp_config.ServerConfig().state_dir), "quic-cert.pem")
    return {"ca_file": cert} if os.path.exists(cert) else {"insecure": True}


async def _sdk_chat(args, on_text) -> dict:
    from atp_client import AsyncGrpcClient, AsyncQuicClient, AsyncSessionClient, Result
    target = _target(args, args.transport)
    secret = os.environ.get("ATP_HMAC_SECRET", "").encode() or atp_config.DEV_HMAC_SECRET
    if args.transport == "grpc":
        client = AsyncGrpcClient(target, args.api_key)
    elif args.transport == "session":
        client = AsyncSessionClient(target, args.key_id, secret)
    else:
        host, port = _host_port(target, DEFAULT_PORTS["quic"])
        client = AsyncQuicClient(host, port, args.key_id, secret, **_quic_trust(args, host))
    kwargs = {"tier": args.tier, "model": args.model, "max_tokens": args.max_tokens}
    try:
        if args.no_stream:
            result = await client.complete(args.prompt, **kwargs)
            on_text(result.text)
        else:
            result = None
            async for item in client.stream(args.prompt, **kwargs):
                if isinstance(item, Result):
                    result = item
                else:
                    on_text(item.text)
            if result is None:
                raise RequestFailed("UPSTREAM_CUT", 503, "the stream ended without a result")
    finally:
        await client.close()
    return {"text": result.text, "model": result.model, "provider": result.provider,
            "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
            "cost_usd": result.cost_usd, "overhead_us": result.gateway_overhead_us,
            "request_id": result.request_id}


def cmd_chat(args) -> int:
    printed = []

    def on_text(text: str) -> None:
        if not args.json:
            sys.stdout.write(text)
            sys.stdout.flush()
            printed.append(text)

    t0 = time.perf_counter()
    run = _http_chat if args.transport == "http" else _sdk_chat
    try:
        out = _run(run(args, on_text))
    finally:
        if printed and not printed[-1].endswith("\n"):
            sys.stdout.write("\n")
    out["transport"] = args.transport
    if args.json:
        print(json.dumps(out))
        return EXIT_OK
    u = out["usage"] or {}
    cost = f"${out['cost_usd']:.6f}" if out["cost_usd"] is not None else "$?"
    print(f"[{out['model']} via {out['provider']} · {u.get('input_tokens', '?')} in / "
          f"{u.get('output_tokens', '?')} out tokens · {cost} · gateway overhead "
          f"{out['overhead_us']} µs · {time.perf_counter() - t0:.2f} s over {args.transport}]",
          file=sys.stderr)
    return EXIT_OK


# ---- atp models / atp health -----------------------------------------------------------------------

async def _models(args) -> list[dict]:
    if args.transport == "http":
        import aiohttp
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{_target(args, 'http')}/v1/models",
                             headers={"Authorization": f"Bearer {args.api_key}"}) as r:
                data = await r.json(content_type=None)
        if "error" in data:
            e = data["error"]
            raise RequestFailed(e["code"], e["atp_code"], e["message"])
        return [{"id": m["id"], "provider": m["owned_by"], "capabilities": m["atp"]["capabilities"],
                 "context_window": m["atp"]["context_window"],
                 "price_in_per_mtok_usd": m["atp"]["price"]["input_per_mtok"],
                 "price_out_per_mtok_usd": m["atp"]["price"]["output_per_mtok"],
                 "quality": m["atp"]["quality"], "healthy": m["atp"]["healthy"]} for m in data["data"]]
    from atp_client import AsyncGrpcClient
    client = AsyncGrpcClient(_target(args, "grpc"), args.api_key)
    try:
        return await client.list_models()
    finally:
        await client.close()


def cmd_models(args) -> int:
    if getattr(args, "action", None) == "status":     # `atp models status` (cli_ops.py)
        from .cli_ops import cmd_models_status, guarded
        return guarded(cmd_models_status)(args)
    models = _run(_models(args))
    if args.json:
        print(json.dumps(models))
        return EXIT_OK
    print(f"{'MODEL':<24} {'PROVIDER':<14} {'$IN/MTOK':>9} {'$OUT/MTOK':>10} {'QUALITY':>8} "
          f"{'CONTEXT':>8}  {'HEALTHY':<8}CAPABILITIES")
    for m in models:
        print(f"{m['id']:<24} {m['provider']:<14} {m['price_in_per_mtok_usd']:>9.2f} "
              f"{m['price_out_per_mtok_usd']:>10.2f} {m['quality']:>8.2f} {m['context_window']:>8}  "
              f"{'yes' if m['healthy'] else 'NO':<8}{','.join(m['capabilities'])}")
    return EXIT_OK


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _health_targets(args) -> dict[str, str]:
    """Where each check goes: --grpc-target / --http-target name one transport's address; --target
    names the address of the transport chosen with --transport, and with `all` the gRPC address,
    whose host the HTTP check uses too (at HTTP's default port)."""
    host, port = _host_port(args.target, 0) if args.target else ("127.0.0.1", 0)
    targets = {}
    for name in ("grpc", "http"):
        if args.transport not in ("all", name):
            continue
        explicit = getattr(args, f"{name}_target")
        if explicit:
            targets[name] = explicit
        elif port and (args.transport == name or name == "grpc"):
            targets[name] = _join(host, port)
        else:
            targets[name] = _join(host, DEFAULT_PORTS[name])
    return targets


async def _health(args) -> dict:
    checks = {}
    targets = _health_targets(args)
    if "grpc" in targets:
        from atp_client import AsyncGrpcClient
        client = AsyncGrpcClient(targets["grpc"], timeout=args.timeout)
        try:
            checks["grpc"] = await client.health()
        except Exception as exc:
            checks["grpc"] = f"DOWN ({getattr(exc, 'message', None) or exc})"
        finally:
            await client.close()
    if "http" in targets:
        import aiohttp
        url = f"http://{targets['http']}/healthz"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as s:
                async with s.get(url) as r:
                    status = (await r.json(content_type=None)).get("status", "?")
                    checks["http"] = "SERVING" if r.status == 200 else status.upper()
        except Exception as exc:
            checks["http"] = f"DOWN ({exc or type(exc).__name__})"
    return checks


def cmd_health(args) -> int:
    checks = _run(_health(args))
    ok = all(v == "SERVING" for v in checks.values())
    targets = _health_targets(args)
    if args.json:
        print(json.dumps({"ok": ok, "checks": checks, "targets": targets}))
    else:
        for name, state in checks.items():
            print(f"{name:<5} {targets[name]:<22} {state}")
    if not ok:
        from .cli_ops import failed_checks
        print(f"atp: health {failed_checks(checks, targets)}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_REQUEST


def cmd_router_train(args) -> int:
    """`atp router train DATA.jsonl -o router.bin`: fit the learned router offline, print a report."""
    from .routing.features import FeatureConfig
    from .routing.predictor import DataError, load_outcomes, train
    try:
        data = load_outcomes(args.data)
    except (OSError, DataError) as exc:
        print(f"atp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    pred = train(data, FeatureConfig(bits=args.bits), seed=args.seed, epochs=args.epochs,
                 cost_kind=args.cost_model)
    pred.save(args.output)
    r = pred.report
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"trained on {r['rows']} rows ({r['fit_rows']} fit, {r['holdout_rows']} holdout), "
          f"{len(r['models'])} models, {r['nnz_per_row']:.0f} features per row")
    for part in ("train", "holdout"):
        print(f"  {part:<8} log-loss {r[part]['log_loss']:.4f}  accuracy {r[part]['accuracy']:.4f}")
    errs = ", ".join(f"{k} {v['total_rel_abs_err']:.3f}" for k, v in r["cost_errors_holdout"].items())
    print(f"  cost model {r['cost_kind']} (holdout relative error: {errs})")
    print("  tier trade-offs λ: " + ", ".join(f"{t} {v:.3g}" for t, v in r["tiers"].items()))
    print(f"wrote {args.output}")
    return 0


def _run(coro):
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# ---- argument parsing ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atp", formatter_class=_RAW,
        description="ATP: an AI request control plane. One server routes every request to the model "
                    "that fits its quality tier,\nbudget and latency goal, and speaks an "
                    "OpenAI-compatible HTTP API, typed gRPC and signed ATP frames (gRPC, QUIC).",
        epilog="examples:\n  atp serve                        # embedded default: simulated models, "
               "dev credentials\n  atp chat \"hello\"                 # stream an answer over gRPC\n"
               "  atp models\n  atp health\n\nrun `atp <command> --help` for each command's options.")
    sub = p.add_subparsers(dest="command", metavar="<command>", required=True)

    s = sub.add_parser("serve", formatter_class=_RAW, help="run the ATP server",
                       description="Run the ATP server until SIGINT/SIGTERM, then drain: new requests "
                                   "are refused, in-flight ones\nget server.drain_seconds to finish. "
                                   "Without --config it runs the embedded default: three simulated\n"
                                   "models and well-known development credentials (loopback only).",
                       epilog="examples:\n  atp serve\n  atp serve --config atp.toml\n"
                              "  atp serve --http-port 9000 --no-quic --log-level debug\n"
                              "  atp serve --config atp.toml --workers 2\n\n"
                              "see atp.example.toml for every configuration key.")
    s.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
    s.add_argument("--host", help="listen address (overrides server.host)")
    for name, port in (("http", 8470), ("grpc", 8471), ("quic", 8472)):
        s.add_argument(f"--{name}-port", type=int, metavar="PORT",
                       help=f"{name.upper()} port (overrides server.{name}_port, default {port}; "
                            "0 = any free port)")
    for name in ("http", "grpc", "quic"):
        s.add_argument(f"--no-{name}", action="store_true", help=f"do not start the {name.upper()} transport")
    s.add_argument("--workers", type=int, metavar="N",
                   help="worker processes sharing the HTTP and gRPC ports via SO_REUSEPORT "
                        "(overrides server.workers, default 1; QUIC runs in worker 0). N > 1 is "
                        "refused while [[auth.hmac_keys]] are configured: each worker would keep "
                        "its own anti-replay nonce cache")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="logging verbosity (default info; debug adds each routing decision's "
                        "reasons to the access log)")
    s.add_argument("--log-format", default="text", choices=("text", "json"),
                   help="text lines, or one JSON object per line for log shippers (default text)")
    s.add_argument("--no-access-log", action="store_true",
                   help="no per-request access-log line (events and errors are still logged)")
    s.set_defaults(func=cmd_serve)

    def client_options(q, transports, default):
        q.add_argument("--transport", choices=transports, default=default,
                       help=f"how to reach the server (default {default})")
        q.add_argument("--target", metavar="HOST:PORT",
                       help="server address (default 127.0.0.1 and the transport's default port: "
                            "http 8470, grpc/session 8471, quic 8472)")
        q.add_argument("--api-key", default=os.environ.get("ATP_API_KEY", atp_config.DEV_API_KEY),
                       help="API key for http/grpc (default: $ATP_API_KEY, else the dev key)")
        q.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    c = sub.add_parser("chat", formatter_class=_RAW, help="send a prompt and stream the answer",
                       description="Send one prompt; the answer streams to stdout as it arrives and a "
                                   "summary line (model,\ntokens, cost, gateway overhead) goes to "
                                   "stderr. Exit status: 0 ok, 1 request error, 2 usage.\n"
                                   "session and quic sign with HMAC key --key-id and the secret in "
                                   "$ATP_HMAC_SECRET (default:\nthe embedded development key).",
                       epilog="examples:\n  atp chat \"why is the sky blue?\"\n"
                              "  atp chat \"summarise RFC 9000\" --tier high --max-tokens 400\n"
                              "  atp chat \"hi\" --transport http --target 127.0.0.1:8470 --json\n"
                              "  atp chat \"hi\" --model sim-fast --transport quic --no-stream")
    c.add_argument("prompt", help="the user message")
    c.add_argument("--model", help="pin a model id (default: let the router choose)")
    c.add_argument("--tier", choices=("fast", "balanced", "high"), help="quality tier for routing")
    c.add_argument("--max-tokens", type=int, metavar="N", help="cap on output tokens")
    client_options(c, ("http", "grpc", "session", "quic"), "grpc")
    c.add_argument("--key-id", type=int, default=os.environ.get("ATP_KEY_ID", str(atp_config.DEV_HMAC_KEY_ID)),
                   help="HMAC key id for session/quic (default: $ATP_KEY_ID, else 1)")
    c.add_argument("--no-stream", action="store_true", help="wait for the whole answer (unary call)")
    c.add_argument("--ca-file", metavar="PEM", help="quic: verify the server certificate against "
                   "this file (default on loopback: ~/.atp/quic-cert.pem when present)")
    c.add_argument("--insecure", action="store_true", help="quic: do not verify the certificate")
    c.set_defaults(func=cmd_chat)

    m = sub.add_parser("models", formatter_class=_RAW, help="list the routable models",
                       description="List the models the server routes to, with prices (USD per "
                                   "million tokens), quality prior,\ncontext window, health and "
                                   "capabilities (gRPC ListModels, or HTTP /v1/models).",
                       epilog="examples:\n  atp models\n  atp models --json\n"
                              "  atp models --transport http --target 127.0.0.1:8470")
    client_options(m, ("grpc", "http"), "grpc")
    m.set_defaults(func=cmd_models)
    from .cli_ops import add_commands as add_ops_commands
    add_ops_commands(sub, m, _RAW)      # `atp models status`, `atp resources`

    h = sub.add_parser("health", formatter_class=_RAW, help="check that a server is serving",
                       description="Check the gRPC health service (grpc.health.v1, service "
                                   "atp.v1.Atp) and HTTP /healthz.\nExit status 0 when every "
                                   "check reports SERVING, 1 otherwise (down, or draining).",
                       epilog="examples:\n  atp health\n  atp health --target 10.0.0.5   "
                              "# gRPC 10.0.0.5:8471, HTTP 10.0.0.5:8470\n"
                              "  atp health --transport http --target 127.0.0.1:9000 --json\n"
                              "  atp health --grpc-target 127.0.0.1:9001 --http-target 127.0.0.1:9000")
    h.add_argument("--transport", choices=("all", "grpc", "http"), default="all",
                   help="which checks to run (default all)")
    h.add_argument("--target", metavar="HOST[:PORT]",
                   help="the server: with --transport grpc or http, that transport's address; with "
                        "all, the gRPC address, and HTTP is checked on the same host at port 8470 "
                        "(default 127.0.0.1, ports 8471/8470)")
    h.add_argument("--grpc-target", metavar="HOST:PORT", help="gRPC address (overrides --target)")
    h.add_argument("--http-target", metavar="HOST:PORT", help="HTTP address (overrides --target)")
    h.add_argument("--timeout", type=float, default=5.0, help="seconds per check (default 5)")
    h.add_argument("--json", action="store_true", help="print one JSON document")
    h.set_defaults(func=cmd_health)

    r = sub.add_parser("router", formatter_class=_RAW, help="train the learned router; operate its "
                       "champion/challenger", description="The learned router: train it offline; "
                       "promote, roll back or pin a running server's challenger.")
    rsub = r.add_subparsers(dest="router_command", metavar="<subcommand>", required=True)
    t = rsub.add_parser("train", formatter_class=_RAW, help="fit router.bin from outcome data",
                        description="Fit per-model quality (calibrated logistic) and cost predictors "
                                    "on a JSON-lines file of\n{prompt, outcomes: {model: {score, "
                                    "cost_usd}}} and write them to one file.",
                        epilog="examples:\n  atp router train outcomes.jsonl -o router.bin\n"
                               "  atp router train outcomes.jsonl --epochs 100 --seed 3 --json")
    t.add_argument("data", metavar="DATA.jsonl", help="routing outcomes, one query per line")
    t.add_argument("-o", "--output", default="router.bin", help="output file (default router.bin)")
    t.add_argument("--epochs", type=int, default=60, help="L-BFGS passes over the data (default 60)")
    t.add_argument("--seed", type=int, default=0, help="holdout split seed (default 0)")
    t.add_argument("--bits", type=int, default=16, help="feature hash bits (default 16)")
    t.add_argument("--cost-model", choices=("length", "dense", "hashed", "all"),
                   help="cost predictor (default: the better of length and dense on the holdout)")
    t.add_argument("--json", action="store_true", help="print the training report as JSON")
    t.set_defaults(func=cmd_router_train)
    from .cli_router import add_router_commands
    add_router_commands(rsub, _RAW)     # status, promote, rollback, pin, unpin
    from .cli_admin import add_parsers
    add_parsers(sub, _RAW)          # keys, policy, reload

    from .cli_audit import add_commands as add_audit_commands
    add_audit_commands(sub)      # audit verify|export|pubkey|prune, costs

    from .cli_federation import add_commands as add_federation_commands
    add_federation_commands(sub)   # federation status|keygen

    from .cli_top import add_commands as add_top_commands
    add_top_commands(sub)          # top: the dashboard's numbers in a terminal
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RequestFailed as exc:
        print(f"atp: {exc}", file=sys.stderr)
        return EXIT_REQUEST
    except UsageError as exc:
        print(f"atp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:    # ConfigError, KeyStoreError, PolicyError: they name the key
        if type(exc).__name__ not in ("ConfigError", "KeyStoreError", "PolicyError"):
            raise
        print(f"atp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if type(exc).__name__ == "AtpClientError" or _is_connection_error(exc):
            print(f"atp: {_fail_from(exc)}", file=sys.stderr)
            return EXIT_REQUEST
        raise


def _is_connection_error(exc) -> bool:
    try:
        import aiohttp
    except ImportError:
        return isinstance(exc, OSError)
    return isinstance(exc, (OSError, aiohttp.ClientError, asyncio.TimeoutError))


if __name__ == "__main__":
    sys.exit(main())

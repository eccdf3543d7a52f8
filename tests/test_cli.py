"""The `atp` command line: help texts, config errors, and `atp serve` end to end as a subprocess."""
import contextlib
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from atp_server import cli
from atp_server import config as atp_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def atp(*args, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run `python -m atp_server ARGS` (what the `atp` console script runs)."""
    return subprocess.run([sys.executable, "-m", "atp_server", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kw)


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("argv,needles", [
    ([], ["serve", "chat", "models", "health", "examples:"]),
    (["serve"], ["--config", "--host", "--http-port", "--grpc-port", "--quic-port", "--no-http",
                 "--no-grpc", "--no-quic", "--log-level", "drain", "examples:"]),
    (["chat"], ["--model", "--tier", "--max-tokens", "--transport", "--target", "--api-key",
                "--json", "--no-stream", "session", "quic", "ATP_API_KEY", "examples:"]),
    (["models"], ["--json", "--target", "examples:"]),
    (["health"], ["--json", "--target", "--http-target", "--grpc-target", "examples:"]),
])
def test_help_explains_each_command(argv, needles, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for needle in needles:
        assert needle in out, needle


def test_console_entry_point_help():
    r = atp("--help")
    assert r.returncode == 0 and "serve" in r.stdout


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["chat"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["chat", "hi", "--tier", "ultra"])
    assert info.value.code == 2


@pytest.mark.parametrize("toml,key", [
    ('[server]\nhttp_port = "x"\n', "server.http_port"),
    ("[server]\nbogus = 1\n", "server.bogus"),
    ("[[providers]]\nname = \"p\"\ntype = \"nope\"\n", "providers[0].type"),
])
def test_serve_with_bad_config_exits_2_naming_the_key(tmp_path, capsys, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    assert cli.main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atp: config error: " + key), err


def test_serve_bad_config_subprocess_and_non_loopback_default(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nmax_queue = -1\n")
    r = atp("serve", "--config", str(path))
    assert r.returncode == 2 and "atp: config error: server.max_queue" in r.stderr
    r = atp("serve", "--host", "0.0.0.0")       # dev credentials must not leave loopback
    assert r.returncode == 2 and "server.host" in r.stderr
    r = atp("serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_chat_without_a_server_is_a_request_error():
    port = free_port(socket.SOCK_STREAM)
    r = atp("chat", "hi", "--transport", "http", "--target", f"127.0.0.1:{port}")
    assert r.returncode == 1 and r.stderr.startswith("atp: UNAVAILABLE (504):")


# ---- end to end ----------------------------------------------------------------------------------

def free_port(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"atp serve exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"atp serve was not ready within {timeout}s")


def reap(proc: subprocess.Popen, log) -> None:
    """Kill the server if it still runs and print its log (pytest shows it on failure)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.seek(0)
    print(log.read())
    log.close()


def test_serve_end_to_end(tmp_path):
    http, grpc, quic = (free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM),
                        free_port(socket.SOCK_DGRAM))
    use_grpc = importable("atp_server.transport.grpc") and importable("atp_client.grpc_client")
    use_quic = importable("atp_server.transport.quic")
    cfg = tmp_path / "atp.toml"
    cfg.write_text(atp_config.DEFAULT_TOML.replace(
        '[server]\n', f'[server]\nstate_dir = "{tmp_path}"\ndrain_seconds = 5.0\n', 1))
    log = open(tmp_path / "serve.log", "w+")
    flags = ([] if use_grpc else ["--no-grpc"]) + ([] if use_quic else ["--no-quic"])
    proc = subprocess.Popen([sys.executable, "-m", "atp_server", "serve", "--config", str(cfg),
                             "--http-port", str(http), "--grpc-port", str(grpc),
                             "--quic-port", str(quic), *flags], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    try:
        wait_ready(http, proc)
        r = atp("chat", "hello", "--json", "--transport", "http", "--target", f"127.0.0.1:{http}")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["text"] and out["model"].startswith("sim-") and out["provider"] == "sim"
        assert out["usage"]["output_tokens"] == 24 and out["cost_usd"] > 0
        assert isinstance(out["overhead_us"], int) and out["transport"] == "http"

        r = atp("chat", "hello", "--transport", "http", "--target", f"127.0.0.1:{http}",
                "--tier", "fast", "--max-tokens", "5", "--no-stream")
        assert r.returncode == 0 and len(r.stdout.split()) == 5
        # a tier weighs quality, cost and latency; Thompson sampling may pick another sim model
        assert re.search(r"sim-\w+ via sim", r.stderr) and "overhead" in r.stderr, r.stderr

        r = atp("chat", "hello", "--transport", "http", "--target", f"127.0.0.1:{http}",
                "--model", "gpt-nope")
        assert r.returncode == 1 and r.stderr.startswith("atp: UNKNOWN_MODEL (401):")

        if use_grpc:
            r = atp("chat", "hello", "--json", "--target", f"127.0.0.1:{grpc}", "--max-tokens", "7")
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out["text"] and out["usage"]["output_tokens"] == 7 and out["transport"] == "grpc"
            r = atp("models", "--json", "--target", f"127.0.0.1:{grpc}")
        else:
            r = atp("models", "--json", "--transport", "http", "--target", f"127.0.0.1:{http}")
        assert r.returncode == 0, r.stderr
        assert {m["id"] for m in json.loads(r.stdout)} == {"sim-fast", "sim-balanced", "sim-high"}

        health = ["health", "--http-target", f"127.0.0.1:{http}", "--target", f"127.0.0.1:{grpc}"]
        r = atp(*health, *([] if use_grpc else ["--transport", "http"]))
        assert r.returncode == 0 and "SERVING" in r.stdout, r.stdout + r.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5.0 + 10) == 0
        r = atp("health", "--transport", "http", "--http-target", f"127.0.0.1:{http}",
                "--timeout", "2")
        assert r.returncode == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        print(log.read())       # shown by pytest on failure
        log.close()


def api_key_only_toml(tmp_path, server_extra: str = "") -> str:
    """The embedded default without [[auth.hmac_keys]]: the only kind of config that may fork."""
    text = atp_config.DEFAULT_TOML.replace(
        '[server]\n', f'[server]\nstate_dir = "{tmp_path}"\n{server_extra}', 1)
    text = text.replace(atp_config.dev_auth_toml(), atp_config.dev_auth_toml(hmac=False))
    assert "[[auth.hmac_keys]]" not in text
    return text


def test_serve_workers_share_ports_and_stop_together(tmp_path):
    http, grpc = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    cfg = tmp_path / "atp.toml"
    cfg.write_text(api_key_only_toml(tmp_path, "drain_seconds = 2.0\n"))
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "atp_server", "serve", "--config", str(cfg),
                             "--http-port", str(http), "--grpc-port", str(grpc), "--no-quic",
                             "--workers", "2"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(http, proc)
        children = subprocess.run(["ps", "--ppid", str(proc.pid), "-o", "pid="],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) == 2          # two workers bound the same ports (SO_REUSEPORT)
        for _ in range(4):                 # new connections each time: the kernel spreads them
            r = atp("chat", "hello", "--json", "--transport", "http", "--target", f"127.0.0.1:{http}")
            assert r.returncode == 0, r.stderr
            r = atp("chat", "hello", "--json", "--target", f"127.0.0.1:{grpc}")
            assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        for child in children:             # no worker outlives the parent
            assert subprocess.run(["ps", "-p", child], capture_output=True).returncode == 1
    finally:
        reap(proc, log)


def test_workers_need_fixed_ports(tmp_path, capsys):
    cfg = tmp_path / "atp.toml"
    cfg.write_text(api_key_only_toml(tmp_path))
    assert cli.main(["serve", "--config", str(cfg), "--workers", "2", "--http-port", "0",
                     "--no-grpc", "--no-quic"]) == 2
    assert "server.http_port" in capsys.readouterr().err


@pytest.mark.parametrize("transport,label", [("http", "HTTP"), ("grpc", "gRPC"), ("quic", "QUIC")])
def test_busy_port_is_one_clean_line_naming_transport_and_port(tmp_path, transport, label):
    kind = socket.SOCK_DGRAM if transport == "quic" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        ports = {"http": "0", "grpc": "0", "quic": "0", transport: str(port)}
        cfg = tmp_path / "atp.toml"
        cfg.write_text(atp_config.DEFAULT_TOML.replace(
            '[server]\n', f'[server]\nstate_dir = "{tmp_path}"\n', 1))
        r = atp("serve", "--config", str(cfg), *(x for n in ports for x in (f"--{n}-port", ports[n])))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"atp: cannot start: {label} port 127.0.0.1:{port} is already in use "
                     f"(server.{transport}_port, --{transport}-port)"], r.stderr


@pytest.mark.skipif(not importable("atp_server.transport.grpc"), reason="grpc transport unavailable")
def test_port_taken_after_the_check_still_exits_2(tmp_path, monkeypatch, capsys):
    """The race _check_ports cannot close: gRPC's bind failure is an OSError, not a traceback."""
    monkeypatch.setattr(cli, "_check_ports", lambda *a, **k: None)
    cfg = tmp_path / "atp.toml"
    cfg.write_text(atp_config.DEFAULT_TOML.replace('[server]\n', f'[server]\nstate_dir = "{tmp_path}"\n', 1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["serve", "--config", str(cfg), "--grpc-port", str(port), "--no-http", "--no-quic"])
    assert code == 2
    assert f"atp: cannot start: gRPC: cannot bind 127.0.0.1:{port}" in capsys.readouterr().err


# ---- --workers N > 1 refuses whatever a worker of its own would get wrong -------------------------

def test_workers_refuse_hmac_keys_embedded_default():
    # The embedded default carries the dev HMAC key. Free ports and a short timeout: should the
    # refusal regress, the workers must not sit on the default ports of other test runs.
    ports = [str(free_port(socket.SOCK_STREAM)) for _ in range(2)]
    r = atp("serve", "--workers", "2", "--http-port", ports[0], "--grpc-port", ports[1], "--no-quic",
            timeout=20)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("atp: config error: --workers 2: "), err
    for needle in ("[[auth.hmac_keys]]", "nonce cache", "replayed to another worker",
                   "gRPC Session", "QUIC", "request signatures", "--workers 1"):
        assert needle in err, needle
    assert len(err.splitlines()) == 1


def test_workers_refuse_hmac_keys_from_the_config_file(tmp_path):
    cfg = tmp_path / "atp.toml"
    cfg.write_text(atp_config.DEFAULT_TOML.replace('[server]\n', '[server]\nworkers = 3\n', 1))
    ports = [str(free_port(socket.SOCK_STREAM)) for _ in range(2)]
    r = atp("serve", "--config", str(cfg), "--http-port", ports[0], "--grpc-port", ports[1],
            "--no-quic", timeout=20)
    assert r.returncode == 2 and r.stderr.startswith("atp: config error: server.workers: 3 "), r.stderr
    cfg.write_text(api_key_only_toml(tmp_path) + '[auth]\nrequire_signature = true\n')
    r = atp("serve", "--config", str(cfg), "--workers", "2", "--http-port", ports[0],
            "--grpc-port", ports[1], "--no-quic", timeout=20)
    assert r.returncode == 2 and "auth.require_signature" in r.stderr, r.stderr


def test_workers_rule_in_config():
    with pytest.raises(atp_config.ConfigError, match=r"^server\.workers: 2 worker processes"):
        atp_config.loads(atp_config.DEFAULT_TOML.replace('[server]\n', '[server]\nworkers = 2\n', 1))
    cfg = atp_config.loads(atp_config.DEFAULT_TOML.replace(atp_config.dev_auth_toml(),
                                                           atp_config.dev_auth_toml(hmac=False))
                           .replace('[server]\n', '[server]\nworkers = 2\n', 1))
    assert cfg.server.workers == 2 and not cfg.auth.hmac_keys
    atp_config.check_workers(cfg, 4, "--workers")        # API keys only: may fork
    with pytest.raises(atp_config.ConfigError, match=r"^--workers 2: "):
        atp_config.check_workers(atp_config.load(), 2, "--workers")
    atp_config.check_workers(atp_config.load(), 1, "--workers")


# ---- atp health: where each check goes --------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    ([], {"grpc": "127.0.0.1:8471", "http": "127.0.0.1:8470"}),
    (["--target", "10.0.0.5:9001"], {"grpc": "10.0.0.5:9001", "http": "10.0.0.5:8470"}),
    (["--target", "10.0.0.5"], {"grpc": "10.0.0.5:8471", "http": "10.0.0.5:8470"}),
    (["--target", "[::1]:9001"], {"grpc": "[::1]:9001", "http": "[::1]:8470"}),
    (["--target", "h:1", "--http-target", "h:2"], {"grpc": "h:1", "http": "h:2"}),
    (["--grpc-target", "g:1", "--http-target", "w:2"], {"grpc": "g:1", "http": "w:2"}),
    (["--transport", "http", "--target", "h:9000"], {"http": "h:9000"}),
    (["--transport", "grpc", "--target", "h:9001"], {"grpc": "h:9001"}),
    (["--target", "::1"], {"grpc": "[::1]:8471", "http": "[::1]:8470"}),
])
def test_health_targets_follow_target_host(argv, expected):
    args = cli.build_parser().parse_args(["health", *argv])
    assert cli._health_targets(args) == expected


def test_bad_target_port_is_a_usage_error(capsys):
    assert cli.main(["health", "--target", "h:port"]) == 2
    assert capsys.readouterr().err.startswith("atp: --target h:port: the port must be a number")


def test_health_http_check_goes_to_target(tmp_path):
    """`atp health --transport http --target H:P` checks H:P (it used to check 127.0.0.1:8470)."""
    import http.server
    import threading

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status":"ok"}' if self.path == "/healthz" else b"{}"
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        r = atp("health", "--transport", "http", "--target", f"127.0.0.1:{port}", "--timeout", "5")
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0 and "SERVING" in r.stdout, r.stdout + r.stderr


# ---- start-up problems past the parser: still one line naming the key, exit 2 ---------------------

@pytest.mark.parametrize("case", ["audit_dir", "audit_unopenable", "tls_missing", "tls_garbage"])
def test_startup_problems_name_the_key(tmp_path, capsys, case):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    server, audit, key = "", "", ""
    if case == "audit_dir":                       # the audit path is a directory
        audit, key = f'[audit]\npath = "{tmp_path}"\n', "audit.path"
    elif case == "audit_unopenable":              # a parent that cannot be created
        audit, key = '[audit]\npath = "/proc/atp-no-such/audit.sqlite"\n', "audit.path"
    elif case == "tls_missing":
        server = f'tls_cert = "{tmp_path}/none.pem"\ntls_key = "{tmp_path}/none.pem"\n'
        key = "server.tls_cert"
    else:
        server, key = f'tls_cert = "{garbage}"\ntls_key = "{garbage}"\n', "server.tls_cert"
    cfg = tmp_path / "atp.toml"
    cfg.write_text(atp_config.DEFAULT_TOML.replace(
        '[server]\n', f'[server]\nstate_dir = "{tmp_path}"\n{server}', 1) + audit)
    code = cli.main(["serve", "--config", str(cfg), "--http-port", "0", "--grpc-port", "0",
                     "--quic-port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"atp: config error: {key}: "), err
    assert len(err.strip().splitlines()) == 1, err


def test_empty_host_override_is_refused(capsys):
    assert cli.main(["serve", "--host", "", "--http-port", "0"]) == 2
    assert capsys.readouterr().err.startswith("atp: config error: --host: must not be empty")


def test_worker_that_cannot_build_says_why(tmp_path):
    cfg = tmp_path / "atp.toml"
    cfg.write_text(api_key_only_toml(tmp_path) + f'[audit]\npath = "{tmp_path}"\n')
    ports = [str(free_port(socket.SOCK_STREAM)) for _ in range(2)]
    r = atp("serve", "--config", str(cfg), "--workers", "2", "--http-port", ports[0],
            "--grpc-port", ports[1], "--no-quic", timeout=30)
    assert r.returncode == 2, r.stderr
    assert "atp: config error: audit.path: " in r.stderr and "Traceback" not in r.stderr, r.stderr


# ---- atp keys | policy test | reload -------------------------------------------------------------

TENANT_TOML = """
[[tenants]]
name = "acme"
users = { alice = ["staff"] }

[policy]
files = ["{policy}"]
"""

POLICY_TOML = """
[[rules]]
id = "no-high-for-staff"
priority = 10
effect = "deny"
reason = "staff use the cheaper models"
when.group = ["staff"]
when.model = ["sim-high"]
"""


def tenant_config(tmp_path, policy: str = POLICY_TOML):
    (tmp_path / "policy.toml").write_text(policy)
    cfg = tmp_path / "atp.toml"
    cfg.write_text(atp_config.DEFAULT_TOML.replace(
        '[server]\n', f'[server]\nstate_dir = "{tmp_path}"\n', 1)
        + TENANT_TOML.replace("{policy}", str(tmp_path / "policy.toml")))
    return cfg


def test_keys_create_list_rotate_revoke(tmp_path, capsys):
    cfg = str(tenant_config(tmp_path))
    assert cli.main(["keys", "create", "--config", cfg, "--tenant", "acme", "--name", "ci",
                     "--model", "sim-fast", "--expires-days", "30", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["key"].startswith("atp_") and made["tenant"] == "acme" and made["models"] == ["sim-fast"]
    assert "no running server" in made["reload"]
    assert made["key"] not in (tmp_path / "keys.json").read_text()
    assert cli.main(["keys", "rotate", "--config", cfg, "ci", "--grace", "60", "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["id"] != made["id"] and rotated["key"] != made["key"]
    assert cli.main(["keys", "revoke", "--config", cfg, made["id"]]) == 0
    assert "key itself" not in capsys.readouterr().out          # nothing secret to show
    assert cli.main(["keys", "list", "--config", cfg, "--json"]) == 0
    states = {r["id"]: r["state"] for r in json.loads(capsys.readouterr().out)}
    assert states == {made["id"]: "revoked", rotated["id"]: "active"}
    assert cli.main(["keys", "create", "--config", cfg, "--tenant", "nope", "--name", "x"]) == 2
    assert "tenant: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--group", "--model"])
def test_keys_create_refuses_an_empty_name_naming_the_option(tmp_path, capsys, option):
    cfg = str(tenant_config(tmp_path))
    assert cli.main(["keys", "create", "--config", cfg, "--tenant", "acme", "--name", "ci",
                     option, ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"atp: {option}: ") and "non-empty" in err, err
    assert not (tmp_path / "keys.json").exists()       # nothing was stored


def test_policy_test_shows_the_deciding_rule_and_why(tmp_path, capsys):
    cfg = str(tenant_config(tmp_path))
    case = tmp_path / "request.json"
    case.write_text(json.dumps({"principal": {"tenant": "acme", "groups": ["staff"]},
                                "request": {"model": "sim-high", "prompt": "hi"}}))
    assert cli.main(["policy", "test", str(case), "--config", cfg]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DENY by no-high-for-staff: staff use the cheaper models")
    assert "no-high-for-staff" in out and "match" in out
    case.write_text(json.dumps({"principal": {"tenant": "acme", "groups": ["ops"]},
                                "request": {"model": "sim-high"}}))
    assert cli.main(["policy", "test", str(case), "--config", cfg, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["allowed"] and result["rule"] == "default"
    assert result["trace"] == [{"rule": "no-high-for-staff", "priority": 10, "effect": "deny",
                                "source": f"{tmp_path / 'policy.toml'}: rules[0]",
                                "matched": False, "failed": "group", "reached": True}]
    case.write_text(json.dumps({"principal": {"colour": "red"}}))
    assert cli.main(["policy", "test", str(case), "--config", cfg]) == 2
    assert "principal.colour" in capsys.readouterr().err


def test_policy_test_names_a_cache_obligation(tmp_path, capsys):
    cfg = str(tenant_config(tmp_path))
    with open(tmp_path / "policy.toml", "a") as f:
        f.write('\n[[rules]]\nid = "no-cache-ops"\npriority = 5\neffect = "no_cache"\n'
                'when.group = ["ops"]\n')
    case = tmp_path / "request.json"
    case.write_text(json.dumps({"principal": {"tenant": "acme", "groups": ["ops"]},
                                "request": {"model": "sim-high"}}))
    assert cli.main(["policy", "test", str(case), "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "response cache: forbidden by policy" in out and "no-cache-ops" in out
    assert cli.main(["policy", "test", str(case), "--config", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == "off"


@contextlib.contextmanager
def serving(tmp_path, cfg, http: int, *flags):
    """`atp serve --config cfg` in a subprocess, ready on `http`; SIGTERM and its log at the end."""
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "atp_server", "serve", "--config", str(cfg),
                             "--http-port", str(http), *flags],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(http, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log.seek(0)
        print(log.read())       # shown by pytest on failure
        log.close()


def wait_status_change(path, before: str, timeout: float = 15) -> dict:
    """The server's reload verdict, once it differs from `before` (another process: no event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if text != before:
            return json.loads(text)
        time.sleep(0.05)
    raise AssertionError("the server wrote no reload verdict")


def test_reload_without_a_restart_keys_and_policy_atomically(tmp_path):
    http = free_port(socket.SOCK_STREAM)
    cfg = tenant_config(tmp_path)
    def chat(key: str, model: str = "sim-high") -> int:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{http}/v1/chat/completions", data=body,
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
    with serving(tmp_path, cfg, http, "--no-grpc", "--no-quic") as proc:
        r = atp("keys", "create", "--config", str(cfg), "--tenant", "acme", "--name", "alice-key",
                "--user", "alice", "--no-reload", "--json")
        key = json.loads(r.stdout)["key"]
        assert chat(key, "sim-fast") == 401                     # not in force before a reload
        r = atp("reload", "--config", str(cfg))
        assert r.returncode == 0 and "reloaded" in r.stdout, r.stderr
        assert chat(key, "sim-fast") == 200
        assert chat(key, "sim-high") == 403                     # alice is staff: policy denies
        # a broken policy file: `atp reload` names the key and signals nothing ...
        (tmp_path / "policy.toml").write_text('[[rules]]\nid = "x"\neffect = "maybe"\n')
        before = (tmp_path / "reload.json").read_text()
        r = atp("reload", "--config", str(cfg))
        assert r.returncode == 1 and "rules[0].effect" in r.stderr
        assert (tmp_path / "reload.json").read_text() == before
        # ... and a server sent SIGHUP anyway refuses it, keeping the old rules and keys
        proc.send_signal(signal.SIGHUP)
        status = wait_status_change(tmp_path / "reload.json", before)
        assert status["ok"] is False and "rules[0].effect" in status["error"]
        assert status["pid"] == proc.pid
        assert chat(key, "sim-high") == 403 and chat(key, "sim-fast") == 200
        (tmp_path / "policy.toml").write_text(POLICY_TOML.replace('"staff"', '"nobody"'))
        r = atp("keys", "revoke", "--config", str(cfg), "alice-key", "--no-reload")
        assert r.returncode == 0
        r = atp("reload", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        assert chat(key, "sim-fast") == 401                     # revoked, without a restart


def test_reload_reaches_every_worker(tmp_path):
    http = free_port(socket.SOCK_STREAM)
    cfg = tenant_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(atp_config.dev_auth_toml(),
                                           atp_config.dev_auth_toml(hmac=False)))
    grpc = str(free_port(socket.SOCK_STREAM))
    with serving(tmp_path, cfg, http, "--grpc-port", grpc, "--no-quic", "--workers", "2") as proc:
        deadline = time.monotonic() + 30   # both workers handle SIGHUP once they announced
        while len(list(tmp_path.glob("reload.*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = atp("keys", "create", "--config", str(cfg), "--tenant", "acme", "--name", "w",
                "--no-reload", "--json")
        key = json.loads(r.stdout)["key"]
        r = atp("reload", "--config", str(cfg))
        assert r.returncode == 0 and "2 process(es)" in r.stdout, r.stdout + r.stderr
        workers = {json.loads(p.read_text())["worker"] for p in tmp_path.glob("reload.*.json")}
        assert len(workers) == 2 and proc.pid not in workers and key.startswith("atp_")


def _workers_of(pid: int) -> set[str]:
    return set(subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="],
                              capture_output=True, text=True).stdout.split())


def test_a_killed_worker_is_replaced_and_the_server_keeps_serving(tmp_path):
    http = free_port(socket.SOCK_STREAM)
    cfg = tmp_path / "atp.toml"
    cfg.write_text(api_key_only_toml(tmp_path))
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "atp_server", "serve", "--config", str(cfg),
                             "--http-port", str(http), "--no-grpc", "--no-quic", "--workers", "2"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(http, proc)
        before = _workers_of(proc.pid)
        assert len(before) == 2
        victim = sorted(before)[0]
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:     # polls a condition (the parent's new child), no fixed wait
            now = _workers_of(proc.pid)
            if len(now) == 2 and victim not in now:
                break
        assert len(now) == 2 and victim not in now, (before, now)
        assert proc.poll() is None             # the parent did not stop the server
        for _ in range(4):
            r = atp("chat", "hello", "--json", "--transport", "http", "--target", f"127.0.0.1:{http}")
            assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log.seek(0)
        assert f"atp: worker {victim} ended (signal 9); starting a new worker" in log.read()
    finally:
        reap(proc, log)

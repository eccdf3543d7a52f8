"""`atp audit verify|export|pubkey|prune` and `atp costs` on real audit databases; and the
durability promise end to end: kill -9 a serving `atp serve` mid-load, then every answered
request is in the log and the chain verifies."""
import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.request

import pytest

from atp_server import config as atp_config
from atp_server.audit import AuditLog
from atp_server.cli import main

from .test_cli import ROOT, api_key_only_toml, free_port, reap, wait_ready

MODELS = """
[[models]]
id = "cheap"
provider = "sim"
price_in_per_mtok = 0.5
price_out_per_mtok = 1.0

[[models]]
id = "premium"
provider = "sim"
price_in_per_mtok = 5.0
price_out_per_mtok = 10.0
"""


def write_config(tmp_path, extra: str = "") -> str:
    path = tmp_path / "atp.toml"
    path.write_text(f"""
[server]
state_dir = "{tmp_path}"
{atp_config.dev_auth_toml("dev")}
[[providers]]
name = "sim"
type = "simulated"
{MODELS}
{extra}
""")
    return str(path)


def fill(tmp_path, rows) -> str:
    """An audit database in the config's state dir with (tenant, key, model, in, out, cost) rows."""
    cfg = atp_config.load(write_config(tmp_path))
    log = AuditLog(str(atp_config.audit_file(cfg)),
                   signing_key=str(atp_config.audit_signing_key(cfg)))
    for i, (tenant, key, model, tin, tout, cost) in enumerate(rows):
        log.record(tenant, key, "http", f"r{i}", model, "ok", 0,
                   {"provider": "sim", "in": tin, "out": tout, "cost_micros": cost})
    asyncio.run(log.close())
    return str(atp_config.audit_file(cfg))


ROWS = [("acme", "k1", "cheap", 1000, 2000, 2500), ("acme", "k2", "cheap", 1000, 0, 500),
        ("globex", "k9", "premium", 100, 100, 1500)]


def test_verify_ok_then_names_the_edited_row(tmp_path, capsys):
    db = fill(tmp_path, ROWS)
    cfg = write_config(tmp_path)
    assert main(["audit", "verify", "--config", cfg]) == 0
    assert "3 rows" in capsys.readouterr().out
    con = sqlite3.connect(db)
    con.execute("UPDATE audit SET tenant = 'evil' WHERE seq = 2")
    con.commit()
    con.close()
    assert main(["audit", "verify", "--config", cfg, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["problems"] == [
        {"seq": 2, "check": "edited", "detail": "the row's content does not match its hash"}]


def test_verify_a_missing_database_is_a_usage_error(tmp_path, capsys):
    assert main(["audit", "verify", "--db", str(tmp_path / "nope.sqlite")]) == 2
    assert "no audit database" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite").exists()     # verification never creates what it checks


def test_export_writes_one_json_line_per_row(tmp_path, capsys):
    fill(tmp_path, ROWS)
    out = tmp_path / "out.jsonl"
    assert main(["audit", "export", "--config", write_config(tmp_path), "-o", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3] and lines[0]["record"]["in"] == 1000
    assert len(lines[0]["hash"]) == 64 and lines[1]["prev_hash"] == lines[0]["hash"]
    assert lines[0]["time"].endswith("+00:00")


def test_pubkey_prints_the_key_verify_uses(tmp_path, capsys):
    fill(tmp_path, ROWS)
    cfg = write_config(tmp_path)
    assert main(["audit", "pubkey", "--config", cfg]) == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "pub.pem").write_text(pem)
    db = str(atp_config.audit_file(atp_config.load(cfg)))
    assert main(["audit", "verify", "--db", db, "--public-key", str(tmp_path / "pub.pem")]) == 0


def test_costs_by_tenant_with_savings_against_the_baseline(tmp_path, capsys):
    fill(tmp_path, ROWS)
    cfg = write_config(tmp_path, '[costs]\nbaseline_model = "premium"\n')
    assert main(["costs", "--config", cfg, "--by", "tenant", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    acme = next(x for x in out["lines"] if x["group"] == "acme")
    # acme's 2000 in + 2000 out tokens at premium prices: 2000×5 + 2000×10 µ$ = $0.03; paid $0.003
    assert acme["requests"] == 2 and acme["cost_usd"] == pytest.approx(0.003)
    assert acme["baseline_usd"] == pytest.approx(0.03) and acme["savings_pct"] == pytest.approx(90.0)
    assert out["total"]["requests"] == 3 and out["total"]["cost_usd"] == pytest.approx(0.0045)


@pytest.mark.parametrize("by,groups", [("model", {"cheap", "premium"}),
                                       ("key", {"acme/k1", "acme/k2", "globex/k9"})])
def test_costs_by_model_and_key(tmp_path, capsys, by, groups):
    fill(tmp_path, ROWS)
    assert main(["costs", "--config", write_config(tmp_path), "--by", by, "--json"]) == 0
    assert {x["group"] for x in json.loads(capsys.readouterr().out)["lines"]} == groups


def test_costs_by_day_and_since(tmp_path, capsys):
    fill(tmp_path, ROWS)
    cfg = write_config(tmp_path)
    assert main(["costs", "--config", cfg, "--by", "day"]) == 0
    text = capsys.readouterr().out
    assert "total" in text and "0.004500" in text
    assert main(["costs", "--config", cfg, "--since", "2999-01-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["requests"] == 0


@pytest.mark.parametrize("argv,needle", [
    (["costs", "--since", "yesterday-ish"], "--since"),
    (["costs", "--baseline", "gpt-nope"], "not a configured model"),
])
def test_costs_usage_errors_name_the_option(tmp_path, capsys, argv, needle):
    fill(tmp_path, ROWS)
    assert main([*argv, "--config", write_config(tmp_path)]) == 2
    assert needle in capsys.readouterr().err


def test_a_baseline_that_is_not_a_model_is_a_config_error(tmp_path):
    with pytest.raises(atp_config.ConfigError, match="costs.baseline_model"):
        atp_config.load(write_config(tmp_path, '[costs]\nbaseline_model = "gpt-nope"\n'))


# ---- kill -9 mid-load ------------------------------------------------------------------------------

def _post(port: int, i: int) -> str | None:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": f"q{i}"}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {
        "Authorization": f"Bearer {atp_config.DEV_API_KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["id"].removeprefix("chatcmpl-")
    except (OSError, ValueError):
        return None                     # the server died under this request: not answered


def test_kill_9_mid_load_loses_no_answered_request_and_the_chain_verifies(tmp_path):
    http = free_port(socket.SOCK_STREAM)
    cfg = tmp_path / "atp.toml"
    cfg.write_text(api_key_only_toml(tmp_path))
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "atp_server", "serve", "--config", str(cfg),
                             "--http-port", str(http), "--no-grpc", "--no-quic"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    answered: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()          # the kill comes once this many answers are in

    def client(worker: int) -> None:
        for i in range(10_000):
            rid = _post(http, worker * 100_000 + i)
            if rid is None:
                return
            with lock:
                answered.append(rid)
                if len(answered) >= 150:
                    enough.set()
    try:
        wait_ready(http, proc)
        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        assert enough.wait(120), "the server did not answer 150 requests"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for t in threads:
            t.join(30)
    finally:
        reap(proc, log)
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
    db = sqlite3.connect(f"file:{tmp_path / 'audit.sqlite'}?mode=ro", uri=True)
    logged = {r[0] for r in db.execute("SELECT request_id FROM audit")}
    missing = [rid for rid in answered if rid not in logged]
    assert len(answered) >= 150 and missing == []

"""cli_ops.py: `atp models status` / `atp resources` rendering and --json, `atp resources --local` on a fake /proc, `atp health` naming what failed."""
import json
import socket

from atp_server.cli import main
from atp_server.cli_ops import failed_checks, render_models_status, render_resources
from atp_server.resources import ResourceMonitor, ResourcesConfig
from atp_server.routing.spec import ModelSpec

STATUS = {"source": "/api/v1/ai/models/status", "models": [
    {"id": "local-llama", "provider": "ollama", "healthy": True, "breaker": "closed",
     "latency_p50_ms": 120.4, "latency_p95_ms": 340.0, "error_rate": 0.015, "in_flight": 2,
     "local": True, "loaded": False, "pressure_blocked": True},
    {"id": "gpt", "provider": "openai", "healthy": False, "breaker": "open",
     "latency_p50_ms": 800.0, "latency_p95_ms": 2000.0, "error_rate": 0.5, "in_flight": 0,
     "local": False, "loaded": None, "pressure_blocked": False}]}


def test_models_status_table_shows_health_breaker_latency_errors_and_loading():
    text = render_models_status(STATUS)
    rows = text.splitlines()
    assert rows[0].split()[:4] == ["MODEL", "PROVIDER", "HEALTH", "BREAKER"]
    assert rows[1].split() == ["local-llama", "ollama", "ok", "closed", "120", "340", "1.5", "2",
                               "yes", "no", "(masked:", "memory", "pressure)"]
    assert rows[2].split() == ["gpt", "openai", "DOWN", "open", "800", "2000", "50.0", "0", "no", "-"]
    assert rows[-1] == "source: /api/v1/ai/models/status"


def fake_proc(root, some_total=0, avail_kb=8_000_000, psi=True):
    (root / "pressure").mkdir(parents=True, exist_ok=True)
    if psi:
        (root / "pressure" / "memory").write_text(
            f"some avg10=30.00 avg60=0.00 avg300=0.00 total={some_total}\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    (root / "meminfo").write_text(f"MemTotal: 16000000 kB\nMemAvailable: {avail_kb} kB\n")
    (root / "loadavg").write_text("1.50 0.75 0.25 2/300 999\n")


def test_resources_render_from_a_real_monitor_snapshot(tmp_path):
    fake_proc(tmp_path, some_total=10)
    specs = [ModelSpec("big", "o", "big", local=True, memory_mb=9000), ModelSpec("cloud", "c", "c")]

    class Table:   # what the monitor writes on: ids, specs and the column
        ids, resource_block = ("big", "cloud"), None
    Table.specs = specs
    mon = ResourceMonitor(ResourcesConfig(proc_root=str(tmp_path)), lambda: [Table], lambda: specs)
    mon.sample()
    mon.servers["ollama"] = {"reachable": True, "kind": "ollama", "held": []}
    text = render_resources(mon.snapshot())
    assert text.splitlines()[0].startswith("memory pressure: HIGH — memory stall (some) 30.0%")
    assert "memory: 7812 MB available of 15625 MB (50.0%)" in text
    assert "big" in text and "masked now: big" in text
    assert "server ollama (ollama): holds []" in text
    assert "cpu: load 1.50 0.75 0.25 (1/5/15 min)" in text


def test_resources_local_on_a_kernel_without_psi_json_and_text(tmp_path, capsys):
    fake_proc(tmp_path, avail_kb=800_000, psi=False)
    assert main(["resources", "--local", "--proc-root", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["psi"] is None and doc["pressure"]["high"] is True
    assert doc["pressure"]["reasons"] == ["MemAvailable 5.0% < 10%"]
    assert main(["resources", "--local", "--proc-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "psi: not available on this kernel" in out and "HIGH — MemAvailable 5.0% < 10%" in out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_models_status_and_resources_without_a_server_are_request_errors(capsys):
    port = closed_port()
    for argv in (["models", "status", "--target", f"127.0.0.1:{port}", "--timeout", "2"],
                 ["resources", "--target", f"127.0.0.1:{port}", "--json", "--timeout", "2"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"atp: cannot reach http://127.0.0.1:{port}" in err and "refused" in err


def test_health_says_which_part_failed():
    assert failed_checks({"grpc": "SERVING", "http": "DOWN (refused)"},
                         {"grpc": "h:8471", "http": "h:8470"}) == \
        "failed: http at h:8470: DOWN (refused) (grpc serving)"


def test_health_json_names_the_targets(capsys):
    port = closed_port()
    assert main(["health", "--transport", "http", "--target", f"127.0.0.1:{port}", "--json",
                 "--timeout", "2"]) == 1
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["ok"] is False and doc["targets"] == {"http": f"127.0.0.1:{port}"}
    assert doc["checks"]["http"].startswith("DOWN")
    assert f"atp: health failed: http at 127.0.0.1:{port}: DOWN" in cap.err

"""`atp models status` and `atp health --target` against a real running server (HTTP and gRPC on free ports)."""
import json
import socket

from atp_server.cli import main


def test_models_status_against_a_running_server(start_server, capsys):
    h = start_server(quic=False)
    target = f"127.0.0.1:{h.ports.http}"
    assert main(["models", "status", "--target", target, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_id = {m["id"]: m for m in doc["models"]}
    assert {"sim-fast", "sim-balanced", "sim-high"} <= set(by_id)
    assert all(m["healthy"] is True for m in by_id.values())
    assert main(["models", "status", "--target", target]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("MODEL") and "sim-fast" in out


def test_health_target_checks_both_ports_and_names_the_failed_one(start_server, capsys):
    h = start_server(quic=False)
    grpc = f"127.0.0.1:{h.ports.grpc}"
    argv = ["health", "--grpc-target", grpc, "--http-target", f"127.0.0.1:{h.ports.http}", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["checks"] == {"grpc": "SERVING", "http": "SERVING"}
    # the HTTP port down, gRPC up (a port nobody listens on; 8470 may be another server's here):
    # the output says it is the HTTP part that failed, and where
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    assert main(["health", "--grpc-target", grpc, "--http-target", f"127.0.0.1:{dead}",
                 "--timeout", "3"]) == 1
    cap = capsys.readouterr()
    assert "grpc" in cap.out and "SERVING" in cap.out
    assert f"atp: health failed: http at 127.0.0.1:{dead}: DOWN" in cap.err
    assert "(grpc serving)" in cap.err

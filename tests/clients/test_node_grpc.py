"""The Node.js example client (clients/node/client.mjs) against a real server over loopback gRPC."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from atp_server.config import DEV_API_KEY
from tests.transport.conftest import ServerHarness, server_config

NODE = shutil.which("node")
NPM = shutil.which("npm")
NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
DEPS = ("@grpc/grpc-js", "@grpc/proto-loader")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture(scope="module")
def node_deps():
    if all((NODE_DIR / "node_modules" / d / "package.json").exists() for d in DEPS):
        return
    if NPM is None:
        pytest.skip("npm is not installed and clients/node/node_modules lacks the gRPC packages")
    try:
        r = subprocess.run([NPM, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install timed out (npm registry unreachable?)")
    if r.returncode != 0:
        pytest.skip(f"npm install failed (npm registry unreachable?): {r.stderr[-500:]}")


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("node-grpc")
    harness = ServerHarness(server_config(d), str(d / "audit.sqlite")).start(http=False, quic=False)
    yield harness
    harness.stop()
    harness.close()


def run_client(target: str, api_key: str = DEV_API_KEY, *args: str):
    env = {k: v for k, v in os.environ.items() if k not in ("ATP_GRPC_TARGET", "ATP_API_KEY")}
    env["ATP_API_KEY"] = api_key
    return subprocess.run([NODE, "client.mjs", target, *args], cwd=NODE_DIR, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_node_client_lists_completes_and_streams(grpc_server, node_deps):
    r = run_client(grpc_server.grpc_target, DEV_API_KEY, "hello from node")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    models = lines[0]
    assert models["rpc"] == "ListModels"
    assert {"sim-fast", "sim-balanced", "sim-high"} <= {m["id"] for m in models["models"]}

    done = lines[1]
    assert done["rpc"] == "Complete" and done["text"] and done["finish_reason"]
    assert done["usage"]["output_tokens"] == 16 and done["usage"]["cost_usd_micros"] > 0
    assert done["gateway_overhead_us"] > 0
    assert done["overhead_us_header"] == done["gateway_overhead_us"]
    assert done["request_id"].startswith("node-")
    assert grpc_server.outcome(done["request_id"]) == ("grpc", "ok", 0)

    events = [x for x in lines[2:] if x["rpc"] == "Stream"]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "route" and kinds[-2:] == ["end", "trailers"]
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks))) and len(chunks) == 16
    assert events[-2]["data"]["usage"]["output_tokens"] == sum(c["tokens"] for c in chunks)
    assert events[-1]["request_id"] == done["request_id"] + "-s"
    assert events[-1]["overhead_us"] == events[-2]["data"]["gateway_overhead_us"]


def test_node_client_needs_an_api_key(grpc_server, node_deps):
    r = run_client(grpc_server.grpc_target, "")
    assert r.returncode == 1 and r.stdout == ""
    assert "ATP_API_KEY" in json.loads(r.stderr.strip().splitlines()[-1])["error"]["message"]


def test_node_client_fails_with_the_atp_code(grpc_server, node_deps):
    r = run_client(grpc_server.grpc_target, "sk-not-a-key")
    assert r.returncode == 1 and r.stdout == ""
    err = json.loads(r.stderr.strip().splitlines()[-1])["error"]
    assert err["atp_code"] == 205 and err["atp_name"] == "UNAUTHENTICATED"
    assert err["grpc_status"] == 16 and err["rpc"] == "ListModels"

"""resources.py's local-server probe against a real llama.cpp server (llama-cpp-python + Gemma 3 270M): loaded while it serves, not once it is gone."""
import asyncio

from atp_server import config as atp_config
from atp_server.resources import ResourceMonitor, ResourcesConfig, local_probes
from atp_server.routing.config import RoutingConfig
from atp_server.routing.health import HealthBoard
from atp_server.routing.table import build_table
from tests.helpers.llama_server import atp_config_head, llama_server, require_llama

require_llama()

MODELS = """
[[models]]
id = "gemma-local"
provider = "llama"
upstream = "gemma-3-270m"
local = true
memory_mb = 999999          # never fits: only "loaded" keeps it routable under pressure

[[providers]]
name = "cloud"
type = "simulated"

[[models]]
id = "cloud"
provider = "cloud"
price_in_per_mtok = 5.0
price_out_per_mtok = 5.0
quality = 0.3
"""


def test_llama_probe_reports_loaded_and_pressure_keeps_the_loaded_model(tmp_path):
    proc = tmp_path / "proc"
    (proc / "pressure").mkdir(parents=True)
    (proc / "pressure" / "memory").write_text(
        "some avg10=50.00 avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    (proc / "meminfo").write_text("MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n")
    with llama_server() as base_url:
        cfg = atp_config.loads(atp_config_head(tmp_path, base_url) + MODELS)
        probes = local_probes(cfg, 5.0)
        assert set(probes) == {"llama"}
        table = build_table(cfg.models, HealthBoard(), policy=RoutingConfig(bandit="greedy"))
        mon = ResourceMonitor(ResourcesConfig(proc_root=str(proc), probe_timeout_ms=5000),
                              lambda: [table], lambda: table.specs, probes)

        async def probe():
            await mon.probe()
        asyncio.run(probe())
        # llama-cpp-python has no /health (404): it loaded its model at start, /v1/models answers
        assert mon.servers["llama"] == {"reachable": True, "kind": "llama.cpp", "ready": True,
                                        "loaded": {"gemma-local": True}}
        assert mon.sample().high
        assert table.resource_block is None         # under pressure, but the local model is loaded
    # the server is gone: the next probe says so, and pressure now masks the local model
    asyncio.run(probe())
    assert mon.servers["llama"]["reachable"] is False and mon.loaded["gemma-local"] is False
    assert table.resource_block.tolist() == [True, False]
    asyncio.run(_close(probes))


async def _close(probes):
    for fn in probes.values():
        await fn.aclose()

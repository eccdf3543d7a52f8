"""`python -m bench chaos`, short: real processes killed with SIGKILL under load. A provider and
a router that die cost no client an error (failover, forwarding to the next hop); Redis dying
costs nothing with limits_on_error = open; each request acknowledged as complete is in the edge
router's audit log. (The worker phase is left to `python -m bench chaos`: today a killed worker
stops the whole server — bench/RESULTS.md.) About 40 s on a loaded 2-core machine."""
import asyncio

from bench import chaos

SECONDS = 2.0


def test_chaos_short_run_loses_nothing_acknowledged(tmp_path):
    reports = {r.phase: r for r in asyncio.run(
        chaos.run(("provider", "router", "redis"), SECONDS, tmp_path))}
    for name in ("provider", "router", "redis"):
        r = reports[name]
        assert r.ok > 0 and r.errors == 0 and r.lost == 0, r
        assert r.missing_from_audit == 0, r


def test_unknown_phase_is_refused(capsys):
    import argparse
    p = argparse.ArgumentParser()
    chaos.add_arguments(p)
    assert chaos.main(p.parse_args(["--phases", "provider,nope"])) == 2
    assert "nope" in capsys.readouterr().err

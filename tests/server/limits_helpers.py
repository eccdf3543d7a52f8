"""Builders for the limits tests: a config with [[limits]] (and [state]), an audit spend sum, and
the worker one process of the multi-process budget hammer runs."""
import asyncio
import sqlite3

import orjson

from atp_server import config
from atp_server.auth import Principal

PRINCIPAL = Principal("default", "dev", "api_key")

# Prices chosen so one request costs tens of thousands of micros: budgets of a few dollars
# then fit a few dozen requests, enough to race many of them against the limit.
MODELS = """
[[models]]
id = "cheap"
provider = "sim"
price_in_per_mtok = 1000.0
price_out_per_mtok = 2000.0
quality = 0.5
latency_ms = 100
max_output_tokens = 16

[[models]]
id = "dear"
provider = "sim"
price_in_per_mtok = 3000.0
price_out_per_mtok = 15000.0
quality = 0.95
latency_ms = 800
max_output_tokens = 16
"""


def limits_config(state_dir, limits: str, *, state: str = "", sim: str = "output_tokens = 16",
                  audit: bool = True):
    return config.loads(limits_toml(state_dir, limits, state=state, sim=sim, audit=audit))


def limits_toml(state_dir, limits: str, *, state: str = "", sim: str = "output_tokens = 16",
                audit: bool = True) -> str:
    """The config text limits_config parses (a reload test writes it to a file)."""
    return f"""
[server]
state_dir = "{state_dir}"
{config.dev_auth_toml("dev", hmac=False)}
[[providers]]
name = "sim"
type = "simulated"
{sim}
{MODELS}
[audit]
enabled = {str(audit).lower()}
[state]
{state}
{limits}
"""


def audit_spend(path) -> tuple[int, int]:
    """(sum of cost_micros, rows with outcome ok) over an audit database."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT outcome, record FROM audit").fetchall()
    finally:
        db.close()
    return (sum(orjson.loads(r)["cost_micros"] for _, r in rows),
            sum(1 for outcome, _ in rows if outcome == "ok"))


async def hammer(app, n: int, model: str = "cheap") -> dict:
    """Send n requests at once through the pipeline; count the outcomes by code name."""
    from atp_server.types import AtpError, ChatRequest

    async def one(i):
        try:
            await app.pipeline.complete(ChatRequest([("user", f"hello number {i}")], model=model),
                                        PRINCIPAL, "test")
            return "ok"
        except AtpError as exc:
            return exc.name
    outcomes: dict[str, int] = {}
    for name in await asyncio.gather(*(one(i) for i in range(n))):
        outcomes[name] = outcomes.get(name, 0) + 1
    return outcomes


def hammer_process(state_dir: str, limits: str, state: str, n: int, results) -> None:
    """One worker process of the multi-process hammer: its own App (own audit file), shared Redis."""
    from atp_server.app import App

    async def main():
        app = App(limits_config(state_dir, limits, state=state, sim="latency_ms = 2"))
        outcomes = await hammer(app, n)
        await app.stop(0)            # drains the background settles, flushes the audit log
        return outcomes
    results.put(asyncio.run(main()))

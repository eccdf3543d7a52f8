"""The route stage in the pipeline: an alias's max_attempts bounds failover, and every dispatched
request is reported back to the routing table (in-flight released, failures and answers counted)."""
import asyncio


from atp_server.app import App
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config

MODELS = """
[[providers]]
name = "broken"
type = "simulated"
failure_rate = 1.0

[[models]]
id = "down"
provider = "broken"

[[models]]
id = "up"
provider = "sim"

[[aliases]]
name = "strict"
models = ["down", "up"]
max_attempts = 1

[[aliases]]
name = "lenient"
models = ["down", "up"]
"""


def complete(tmp_path, model):
    async def main():
        app = App(make_config(tmp_path, models=MODELS))
        try:
            return app, await app.pipeline.complete(ChatRequest([("user", "hi")], model=model),
                                                    PRINCIPAL, "test")
        except AtpError as exc:
            return app, exc
        finally:
            await app.stop(0)
    return asyncio.run(main())


def test_alias_max_attempts_bounds_failover(tmp_path):
    app, out = complete(tmp_path, "strict")
    assert isinstance(out, AtpError) and out.code == ErrorCode.UPSTREAM_ERROR
    t = app.router.table
    assert t.stats.fail[t.index["down"]] == 1.0 and t.stats.inflight.tolist() == [0, 0]


def test_failover_down_an_alias_is_reported_to_the_table(tmp_path):
    app, out = complete(tmp_path, "lenient")
    assert not isinstance(out, AtpError) and out.decision.model == "up"
    t = app.router.table
    assert t.stats.fail[t.index["down"]] == 1.0 and t.stats.answers[t.index["up"]] == 1
    assert t.stats.inflight.tolist() == [0, 0]
    assert ("default", out.request_id) in app.router._recent     # it may be rated now

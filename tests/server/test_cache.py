"""The response cache (atp_server/cache.py, stages/cache.py): exact match per tenant, opt-in, TTL,
LRU by bytes; hits marked, free, audited and counted as savings; in memory and in a real Redis."""
import asyncio
import sqlite3

import orjson
import pytest

from atp_server import costs
from atp_server.app import App
from atp_server.auth import Principal
from atp_server.cache import CacheConfig, MemoryCache, request_key
from atp_server.config import ConfigError
from atp_server.types import ChatRequest, Delta, Done
from tests.state.redis_server import RedisServer

from .helpers import PRINCIPAL, make_config

OTHER = Principal("globex", "g-key", "api_key")


def make_app(tmp_path, cache: str = "enabled = true", state: str = ""):
    return App(make_config(tmp_path, sim_options="output_tokens = 12", extra=f"[cache]\n{cache}\n{state}"))


def ask(text="what is a monad?", cache="on", **kw) -> ChatRequest:
    kw.setdefault("tier", "high")
    return ChatRequest([("user", text)], metadata={"cache": cache} if cache else {}, **kw)


def calls(app) -> int:
    return app.adapters["sim"].calls


def test_a_repeated_request_is_answered_from_the_cache_free_and_marked(tmp_path):
    async def main():
        app = make_app(tmp_path)
        first = await app.pipeline.complete(ask(), PRINCIPAL, "test")
        n = calls(app)
        second = await app.pipeline.complete(ask(), PRINCIPAL, "test")
        assert calls(app) == n                             # no upstream call
        await app.stop(0)
        return app, first, second
    app, first, second = asyncio.run(main())
    assert second.text == first.text and second.decision.provider == "cache"
    assert second.decision.model == first.decision.model and "cache hit" in second.decision.reasons[-1]
    assert second.usage.cost_usd_micros == 0 and second.usage.output_tokens == first.usage.output_tokens
    c = app.cache_counters
    assert (c.hits, c.misses, c.stored) == (1, 1, 1)
    assert c.saved_micros == first.usage.cost_usd_micros > 0
    assert app.accountant.by_tenant["default"].cost_usd_micros == first.usage.cost_usd_micros
    db = sqlite3.connect(app.audit.path)
    rows = [orjson.loads(r) for (r,) in db.execute("select record from audit where transport='test'")]
    assert [r["cache"]["hit"] for r in rows] == [False, True] and rows[1]["provider"] == "cache"
    rep = costs.report(db, "tenant")
    assert rep.total.cache_hits == 1 and rep.total.cache_saved_micros == first.usage.cost_usd_micros
    assert rep.as_dict()["total"]["cache_saved_usd"] == first.usage.cost_usd_micros / 1e6
    # the model's routing statistics learnt nothing from the hit (no 0 ms answer)
    t = app.router.table
    assert t.stats.answers[t.index[first.decision.model]] == 1 and t.stats.inflight.sum() == 0


def test_a_tenant_never_sees_another_tenants_entries(tmp_path):
    async def main():
        app = make_app(tmp_path)
        await app.pipeline.complete(ask(), PRINCIPAL, "test")
        other = await app.pipeline.complete(ask(), OTHER, "test")
        await app.stop(0)
        return other
    assert asyncio.run(main()).decision.provider != "cache"
    assert request_key("a", ask()) != request_key("b", ask())


@pytest.mark.parametrize("change", [dict(temperature=0.2), dict(max_tokens=5), dict(tier="fast"),
                                    dict(model="cheap"), dict(text="what is a functor?"),
                                    dict(stop=("x",)), dict(seed=3)])
def test_what_changes_the_answer_changes_the_key(change):
    text = change.pop("text", "what is a monad?")
    assert request_key("t", ask()) != request_key("t", ask(text, **change))


def test_what_does_not_change_the_answer_keeps_the_key():
    base = request_key("t", ask())
    assert base == request_key("t", ask(request_id="other", stream=False, user="bob"))
    assert base == request_key("t", ask(cache="off"))          # metadata is not in the key


def test_caching_is_opt_in_per_request_or_on_by_config(tmp_path):
    async def main(cache, asks):
        app = make_app(tmp_path / str(len(asks)) / str(len(cache)), cache)
        out = [await app.pipeline.complete(ask(cache=a), PRINCIPAL, "test") for a in asks]
        await app.stop(0)
        return [r.decision.provider == "cache" for r in out]
    assert asyncio.run(main("enabled = true", [None, None])) == [False, False]
    assert asyncio.run(main('enabled = true\ndefault = "on"', [None, None, "off"])) == [False, True, False]
    assert asyncio.run(main("enabled = false", ["on", "on"])) == [False, False]


CACHE_POLICY = """
[[rules]]
id = "never-cache-secrets"
priority = 30
effect = "no_cache"
when.classification = ["secret"]

[[rules]]
id = "cache-default-tenant"
priority = 20
effect = "cache"
when.tenant = ["default"]
"""


def test_policy_opts_requests_in_and_a_no_cache_rule_beats_any_ask(tmp_path):
    """`cache` rules opt matching requests in without any header; `no_cache` keeps them out even
    when the request asks; a request's own `off` still opts out; other tenants keep the default."""
    path = tmp_path / "policy.toml"
    path.write_text(CACHE_POLICY)

    def secret(cache):
        meta = {"data_classification": "secret"} | ({"cache": cache} if cache else {})
        return ChatRequest([("user", "the launch codes")], metadata=meta, tier="high")

    async def main(dry_run):
        app = make_app(tmp_path / str(dry_run), f"enabled = true\n[policy]\nfiles = [{str(path)!r}]\n"
                                                f"dry_run = {str(dry_run).lower()}")
        run = app.pipeline.complete
        out = {"policy": [await run(ask(cache=None), PRINCIPAL, "test") for _ in range(2)],
               "opt_out": [await run(ask("other question", cache="off"), PRINCIPAL, "test")
                           for _ in range(2)],
               "secret": [await run(secret(c), PRINCIPAL, "test") for c in ("on", "on", None)],
               "other_tenant": [await run(ask("a third", cache=None), OTHER, "test") for _ in range(2)]}
        await app.stop(0)
        return {k: [r.decision.provider == "cache" for r in v] for k, v in out.items()}
    assert asyncio.run(main(False)) == {"policy": [False, True], "opt_out": [False, False],
                                        "secret": [False, False, False],
                                        "other_tenant": [False, False]}
    # dry-run decides and audits but enforces nothing: no cache effect either (default off)
    assert asyncio.run(main(True)) == {"policy": [False, False], "opt_out": [False, False],
                                       "secret": [False, True, False],
                                       "other_tenant": [False, False]}


def test_the_policy_decision_carries_its_cache_obligation(tmp_path):
    from atp_server.policy import PolicyHolder
    app = make_app(tmp_path)
    holder = PolicyHolder.of_rules(CACHE_POLICY, app.config.models)
    plain = holder.decide(PRINCIPAL, ask(cache=None), "test")
    secret = holder.decide(PRINCIPAL, ChatRequest([("user", "x")], metadata={
        "data_classification": "secret"}), "test")
    assert plain.allowed and plain.cache == "on" and plain.matched == ("cache-default-tenant",)
    assert secret.cache == "off" and secret.matched == ("never-cache-secrets", "cache-default-tenant")
    assert holder.decide(OTHER, ask(cache=None), "test").cache is None


def test_off_by_default_the_stage_is_absent(tmp_path):
    app = App(make_config(tmp_path))
    assert "cache" not in app.pipeline.chain.names and app.cache is None


def test_a_hit_is_replayed_as_a_stream_and_a_streamed_miss_is_not_stored(tmp_path):
    async def main():
        app = make_app(tmp_path)
        items = [i async for i in app.pipeline.stream(ask("streamed first"), PRINCIPAL, "test")]
        assert app.cache_counters.stored == 0                 # a streamed miss: bypass
        whole = await app.pipeline.complete(ask(), PRINCIPAL, "test")
        n = calls(app)
        replay = [i async for i in app.pipeline.stream(ask(), PRINCIPAL, "test")]
        assert calls(app) == n
        await app.stop(0)
        return items, whole, replay
    items, whole, replay = asyncio.run(main())
    assert type(items[-1]) is Done
    text = "".join(i.text for i in replay if type(i) is Delta)
    done = replay[-1]
    assert text == whole.text and done.decision.provider == "cache" and done.usage.cost_usd_micros == 0


def test_a_hit_on_a_model_the_key_may_not_use_is_a_miss(tmp_path):
    async def main():
        app = make_app(tmp_path)
        first = await app.pipeline.complete(ask(), PRINCIPAL, "test")
        scoped = Principal("default", "scoped", "api_key", models=frozenset({"cheap"}))
        again = await app.pipeline.complete(ask(), scoped, "test")
        await app.stop(0)
        return first, again
    first, again = asyncio.run(main())
    assert first.decision.model == "smart" and again.decision.provider != "cache"


def test_memory_cache_ttl_and_lru_by_bytes():
    now = [0.0]
    c = MemoryCache(CacheConfig(ttl_s=10, max_entries=3, max_bytes=8 * 1024), clock=lambda: now[0])
    assert c.put("t", "a", b"x" * 1000) and c.put("t", "b", b"y" * 1000)
    assert c.get("t", "a") == b"x" * 1000                       # a is now the most recent
    assert not c.put("t", "huge", b"z" * 1025)                  # over max_bytes / 8: not stored
    c.put("t", "c", b"z" * 1000)
    c.put("t", "d", b"w" * 1000)                                # 4 entries > 3: the LRU (b) goes
    assert c.get("t", "b") is None and c.get("t", "a") is not None and c.evicted == 1
    for k in "efgh":
        c.put("t", k, b"v" * 1000)
    assert c.size()[0] <= 3 and c.size()[1] <= 8 * 1024
    now[0] = 10.5
    assert c.get("t", "h") is None and c.size() == (2, 2000)    # expired: dropped when met
    assert c.get("u", "g") is None                              # another tenant's namespace


def test_bad_cache_settings_name_the_key(tmp_path):
    for text, key in (("enabled = 1", "cache.enabled"), ('default = "maybe"', "cache.default"),
                      ("ttl_s = 0", "cache.ttl_s"), ("max_bytes = 10", "cache.max_bytes"),
                      ("colour = 1", "cache.colour"), ("max_entries = 1.5", "cache.max_entries")):
        with pytest.raises(ConfigError, match=key):
            make_config(tmp_path, extra=f"[cache]\n{text}\n")


@pytest.fixture(scope="module")
def redis_url():
    server = RedisServer().start()
    yield server.url
    server.stop()


def test_in_redis_two_workers_share_entries_with_ttl_and_size_bounds(tmp_path, redis_url):
    state = f'[state]\nredis_url = "{redis_url}"\nprefix = "cachetest:"\ntimeout_ms = 2000\n'

    async def main():
        a = make_app(tmp_path / "a", "enabled = true\nmax_entries = 2", state)
        b = make_app(tmp_path / "b", "enabled = true\nmax_entries = 2", state)
        assert a.cache.shared
        first = await a.pipeline.complete(ask(), PRINCIPAL, "test")
        await a.cache.drain()                                  # the background store landed
        hit = await b.pipeline.complete(ask(), PRINCIPAL, "test")
        other = await b.pipeline.complete(ask(), OTHER, "test")
        for i in range(4):                                     # more than max_entries
            await a.pipeline.complete(ask(f"question {i}"), PRINCIPAL, "test")
        await a.cache.drain()
        entries, size = await a.cache.size()
        evicted = a.cache.evicted
        gone = await a.cache.get("default", request_key("default", ask()))
        await a.stop(0)
        await b.stop(0)
        return first, hit, other, entries, size, evicted + b.cache.evicted, gone
    first, hit, other, entries, size, evicted, gone = asyncio.run(main())
    assert hit.decision.provider == "cache" and hit.text == first.text and hit.usage.cost_usd_micros == 0
    assert other.decision.provider != "cache"
    assert entries == 2 and evicted >= 3 and gone is None and size > 0


def test_in_redis_an_entry_expires_with_its_ttl(tmp_path, redis_url):
    state = f'[state]\nredis_url = "{redis_url}"\nprefix = "ttltest:"\ntimeout_ms = 2000\n'

    async def main():
        app = make_app(tmp_path, "enabled = true\nttl_s = 0.05", state)
        await app.pipeline.complete(ask(), PRINCIPAL, "test")
        await app.cache.drain()
        key = request_key("default", ask())
        client = app.cache.r
        entry = app.cache.prefix + "e:default:" + key
        ttl = await client.pttl(entry)
        # the TTL is set (above); its passing is Redis's own clock, so expire it now instead of
        # waiting it out: an expiry time in the past deletes the key as the TTL would
        await client.pexpireat(entry, 1)
        assert not await client.exists(entry)
        again = await app.pipeline.complete(ask(), PRINCIPAL, "test")
        await app.cache.drain()
        entries, size = await app.cache.size()
        await app.stop(0)
        return ttl, again, entries
    ttl, again, entries = asyncio.run(main())
    assert 0 < ttl <= 50 and again.decision.provider != "cache" and entries == 1


def test_over_http_the_header_opts_in_and_marks_the_hit(tmp_path):
    """The real OpenAI client: `x-atp-cache: on` asks, `x-atp-cache: hit` answers."""
    import openai

    from atp_server import config as atp_config
    from tests.transport.conftest import ServerHarness, server_config

    harness = ServerHarness(server_config(tmp_path, "[cache]\nenabled = true\n"),
                            str(tmp_path / "audit.sqlite"))
    try:
        harness.start(grpc=False, quic=False)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{harness.ports.http}/v1",
                               api_key=atp_config.DEV_API_KEY, max_retries=0, timeout=30)

        def chat(**headers):
            return client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "cache me"}],
                extra_headers=headers)
        plain = chat()
        first, second = chat(**{"x-atp-cache": "on"}), chat(**{"x-atp-cache": "on"})
        streamed = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "cache me"}], stream=True,
            extra_headers={"x-atp-cache": "on"})
        assert "x-atp-cache" not in plain.headers and "x-atp-cache" not in first.headers
        assert second.headers["x-atp-cache"] == "hit" and second.headers["x-atp-provider"] == "cache"
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert streamed.headers["x-atp-cache"] == "hit"
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        assert text == first.parse().choices[0].message.content
    finally:
        harness.stop()
        harness.close()


def test_redis_stores_in_flight_are_bounded(redis_url):
    from atp_server import cache as cache_mod
    from atp_server.state import open_stores
    from atp_server.limits_config import StateConfig

    async def main():
        stores = open_stores(StateConfig(redis_url=redis_url, prefix="bound:", timeout_ms=2000))
        c = cache_mod.open_cache(CacheConfig(), stores, "bound:")
        accepted = [c.put("t", f"k{i}", b"v") for i in range(cache_mod.MAX_PENDING_STORES + 10)]
        await c.drain()
        n, _ = await c.size()
        await stores.close()
        return accepted, n
    accepted, n = asyncio.run(main())
    assert accepted.count(True) == 256 and n == 256    # the rest skipped, nothing queued past it


def test_redacted_requests_share_an_entry_and_each_hit_restores_its_own_values(tmp_path):
    """Two prompts differing only in an email redact to the same text, hence one entry; the
    entry keeps the placeholders, so the second answer carries the second email, never the first."""
    from .test_redact_stage import GOVERNANCE, EchoProvider

    async def main():
        app = App(make_config(tmp_path, sim_options=GOVERNANCE, extra="[cache]\nenabled = true\n"))
        echo = app.adapters["sim"] = EchoProvider()
        a = await app.pipeline.complete(ask("mail ana@example.org now"), PRINCIPAL, "test")
        b = await app.pipeline.complete(ask("mail bob@example.net now"), PRINCIPAL, "test")
        await app.stop(0)
        return a, b, echo
    a, b, echo = asyncio.run(main())
    assert len(echo.received) == 1 and b.decision.provider == "cache"
    assert a.text == "mail ana@example.org now" and b.text == "mail bob@example.net now"
    assert "example" not in str(echo.received)          # the provider never saw either address

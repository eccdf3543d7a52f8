"""webhooks.py: signatures a receiver can verify, config errors by key, bounded queues, retries with backoff."""
import asyncio
import random

import pytest
from aiohttp import web

from atp_server import config as atp_config
from atp_server import webhooks
from atp_server.webhooks import Dispatcher, WebhookConfig, backoff_s, parse_webhooks, sign, verify

SECRET = "whsec-0123456789abcdef"


def fail(key, problem):
    raise atp_config.ConfigError(f"{key}: {problem}")


def test_signature_verifies_and_rejects_tampering_and_replays():
    body = b'{"event":"breaker.opened"}'
    header = sign(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, header, body, now=1_700_000_010)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_010)          # body changed
    assert not verify("another-secret-xxxxxxxx", header, body, now=1_700_000_010)
    assert not verify(SECRET, header, body, now=1_700_000_000 + 301)           # too old: a replay
    assert not verify(SECRET, "garbage", body)
    # the documented recipe, by hand: HMAC-SHA256(secret, "<t>." + body)
    import hashlib
    import hmac
    assert header.split("v1=")[1] == hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("entry, key", [
    ({"events": ["model.failed"], "secret": SECRET}, "webhooks[0].url"),
    ({"url": "ftp://x", "events": ["model.failed"], "secret": SECRET}, "webhooks[0].url"),
    ({"url": "http://x/h", "events": [], "secret": SECRET}, "webhooks[0].events"),
    ({"url": "http://x/h", "events": ["model.exploded"], "secret": SECRET}, "webhooks[0].events"),
    ({"url": "http://x/h", "events": ["model.failed"]}, "webhooks[0]"),
    ({"url": "http://x/h", "events": ["model.failed"], "secret": "short"}, "webhooks[0].secret"),
    ({"url": "http://x/h", "events": ["model.failed"], "secret_env": "ATP_NO_SUCH_VAR_X"}, "webhooks[0].secret_env"),
    ({"url": "http://x/h", "events": ["model.failed"], "secret": SECRET, "timeout_s": 0}, "webhooks[0].timeout_s"),
    ({"url": "http://x/h", "events": ["model.failed"], "secret": SECRET, "retries": 3}, "webhooks[0].retries"),
])
def test_bad_webhook_config_names_the_key(entry, key):
    with pytest.raises(atp_config.ConfigError, match=f"^{key.replace('[', '.').replace(']', '.')}"):
        parse_webhooks([entry], fail)


def test_webhooks_parse_from_toml_and_star_means_every_event():
    cfg = atp_config.loads(atp_config.DEFAULT_TOML + f'[[webhooks]]\nurl = "http://127.0.0.1:9/h"\n'
                           f'events = ["*"]\nsecret = "{SECRET}"\n')
    assert cfg.webhooks[0].events == webhooks.NAMES
    assert SECRET not in repr(cfg.webhooks[0])


def test_backoff_is_exponential_capped_and_jittered():
    rng = random.Random(7)
    for attempt in range(1, 12):
        cap = min(webhooks.BACKOFF_CAP_S, webhooks.BACKOFF_BASE_S * 2 ** (attempt - 1))
        draws = [backoff_s(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap      # spread over [0, cap]


def test_a_full_queue_drops_the_oldest_and_counts_it(monkeypatch):
    monkeypatch.setattr(webhooks, "QUEUE", 3)
    d = Dispatcher([WebhookConfig("http://127.0.0.1:9/h", ("model.failed",), SECRET)])
    for i in range(5):
        d.offer("model.failed", {"n": i})
    d.offer("breaker.opened", {"ignored": True})            # not subscribed: not queued
    hook = d.hooks[0]
    assert [e["data"]["n"] for e in hook.queue] == [2, 3, 4] and hook.dropped == 2
    assert d.stats()["endpoints"][0] == {"url": "http://127.0.0.1:9/h", "queued": 3, "delivered": 0,
                                         "failed": 0, "dropped": 2}


def test_urls_are_shown_without_credentials_or_query():
    assert webhooks.shown("https://user:pw@hooks.example/x?token=abc") == "https://hooks.example/x"


def test_retries_with_backoff_until_the_receiver_answers_then_logs_each_attempt():
    """A real receiver on loopback answers 500 twice, then 200: three attempts, two backoff waits
    (recorded by an injected sleep, so the test does not wait), one delivery, signed every time."""
    async def go():
        got, answers = [], [500, 500, 200]

        async def receive(request):
            body = await request.read()
            got.append((request.headers["X-ATP-Delivery"], verify(SECRET, request.headers["X-ATP-Signature"], body)))
            return web.Response(status=answers[len(got) - 1])
        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        waits = []
        done = asyncio.Event()

        async def sleep(s):
            waits.append(s)
        d = Dispatcher([WebhookConfig(f"http://127.0.0.1:{port}/hook", ("breaker.opened",), SECRET,
                                      max_attempts=5)], sleep=sleep, rng=random.Random(1))
        await d.start()
        d.on_attempt = lambda entry, hook: done.set() if hook.delivered or hook.failed else None
        d.offer("breaker.opened", {"model": "m1"})
        await done.wait()
        await d.stop()
        await runner.cleanup()
        return got, waits, d
    got, waits, d = asyncio.run(asyncio.wait_for(go(), 30))
    assert len(got) == 3 and len({g[0] for g in got}) == 1 and all(ok for _, ok in got)
    assert len(waits) == 2 and waits[0] <= webhooks.BACKOFF_BASE_S and waits[1] <= 2 * webhooks.BACKOFF_BASE_S
    assert [(e["attempt"], e["status"], e["ok"]) for e in d.log] == [(1, 500, False), (2, 500, False), (3, 200, True)]
    assert d.hooks[0].delivered == 1 and d.hooks[0].failed == 0


def test_an_endpoint_that_refuses_connections_fails_after_max_attempts():
    async def go():
        waits = []

        async def sleep(s):
            waits.append(s)
        d = Dispatcher([WebhookConfig("http://127.0.0.1:9/none", ("model.failed",), SECRET,
                                      timeout_s=2, max_attempts=3)], sleep=sleep)
        given_up = asyncio.Event()
        d.on_attempt = lambda entry, hook: given_up.set() if entry is None else None
        await d.start()
        d.offer("model.failed", {"model": "m"})
        await given_up.wait()
        await d.stop()
        return d, waits
    d, waits = asyncio.run(asyncio.wait_for(go(), 30))
    assert len(waits) == 2 and [e["attempt"] for e in d.log] == [1, 2, 3]
    assert all(not e["ok"] and e["error"] for e in d.log)

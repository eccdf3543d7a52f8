"""worker_metrics: one scrape carries every worker's series, labelled by worker, over real unix sockets."""
import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from atp_server.worker_metrics import UP, WorkerMetrics, merge, socket_dir


def render_of(requests: int, inflight: float, latencies=()):
    """A registry shaped like ATP's (labelled counter, bare gauge, histogram) rendered as text."""
    r = CollectorRegistry()
    c = Counter("atp_requests", "Requests", ["transport", "model"], registry=r)
    c.labels("http", "sim-fast").inc(requests)
    Gauge("atp_inflight", "In flight", registry=r).set(inflight)
    h = Histogram("atp_latency_seconds", "Latency", buckets=(0.1, 1.0), registry=r)
    for x in latencies:
        h.observe(x)
    return lambda: generate_latest(r)


def samples(text: bytes) -> dict:
    """(sample name, frozenset of labels) -> value, from a text the official parser accepts."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_every_series_of_every_worker_arrives_labelled_and_grouped_by_family():
    merged = merge({0: render_of(3, 1, [0.05])(), 1: render_of(5, 2, [0.5, 2.0])()})
    got = samples(merged)
    w = lambda i, **kw: frozenset({"worker": str(i), **kw}.items())   # noqa: E731
    assert got[("atp_requests_total", w(0, transport="http", model="sim-fast"))] == 3
    assert got[("atp_requests_total", w(1, transport="http", model="sim-fast"))] == 5
    assert got[("atp_inflight", w(0))] == 1 and got[("atp_inflight", w(1))] == 2
    assert got[("atp_latency_seconds_bucket", w(1, le="1.0"))] == 1
    assert got[("atp_latency_seconds_count", w(1))] == 2
    assert got[(UP, w(0))] == 1 and got[(UP, w(1))] == 1
    text = merged.decode()
    for family in ("atp_requests_total", "atp_inflight", "atp_latency_seconds"):
        assert text.count(f"# TYPE {family} ") == 1           # one group per family
    lines = text.splitlines()
    first = lines.index("# TYPE atp_inflight gauge")
    assert [ln.split("{")[0] for ln in lines[first + 1:first + 3]] == ["atp_inflight"] * 2


def test_a_worker_that_did_not_answer_is_marked_down_and_the_rest_still_served():
    got = samples(merge({0: render_of(3, 1)(), 1: None}))
    assert got[(UP, frozenset({("worker", "1")}))] == 0
    assert not any(dict(labels).get("worker") == "1" for name, labels in got if name != UP)


def test_a_family_only_one_worker_has_yet_is_kept():
    r = CollectorRegistry()
    Counter("atp_cache_hits", "Hits", registry=r).inc(2)
    got = samples(merge({0: render_of(1, 0)(), 1: render_of(1, 0)() + generate_latest(r)}))
    assert got[("atp_cache_hits_total", frozenset({("worker", "1")}))] == 2


def test_a_state_dir_too_long_for_a_socket_path_uses_a_private_temp_dir(tmp_path):
    assert socket_dir(tmp_path) == tmp_path / "workers"
    deep = tmp_path / ("d" * 120)
    alt = socket_dir(deep)
    assert alt != deep / "workers" and len(str(alt / "w999.sock")) <= 107
    assert socket_dir(deep) == alt                         # every worker of one server agrees


def test_workers_answer_each_other_over_their_sockets_and_a_stopped_one_is_down(tmp_path):
    async def main():
        a = WorkerMetrics(render_of(3, 0), tmp_path, 0, 2)
        b = WorkerMetrics(render_of(5, 0), tmp_path, 1, 2)
        await a.start()
        await b.start()
        both = samples(await a.gather())
        same = samples(await b.gather())
        await b.stop()
        alone = samples(await a.gather())
        await a.stop()
        return both, same, alone
    both, same, alone = asyncio.run(main())
    key = lambda i: ("atp_requests_total", frozenset(                # noqa: E731
        {"worker": str(i), "transport": "http", "model": "sim-fast"}.items()))
    assert both[key(0)] == 3 and both[key(1)] == 5 and both == same   # whichever worker is asked
    assert alone[(UP, frozenset({("worker", "1")}))] == 0 and key(1) not in alone
    assert not (tmp_path / "workers" / "w0.sock").exists()           # stop removes its socket

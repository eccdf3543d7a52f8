"""`atp serve --workers 2`: whichever worker a scrape reaches, /metrics carries both workers'
numbers, each series labelled by worker, and they add up to every request sent."""
import re

import orjson

from .test_workers_learning import fresh
from .workers_helpers import serving, workers_toml

BODY = orjson.dumps({"model": "sim-fast", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
SENT = 40


def served_by_worker(text: bytes) -> dict[str, float]:
    """worker -> its count of answered HTTP chat requests, from one scrape."""
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        m = re.match(r'atp_requests_total\{worker="(\d+)",(.*)\} ([0-9.e+]+)$', line)
        if m and 'transport="http"' in m.group(2) and 'model="sim-fast"' in m.group(2):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def test_one_scrape_carries_every_workers_series(tmp_path):
    with serving(tmp_path, workers_toml(tmp_path, None, hmac=False)) as s:
        for _ in range(SENT):       # a new connection each: the kernel spreads them over workers
            status, _ = fresh(s.http, "POST", "/v1/chat/completions", BODY)
            assert status == 200
        scrapes = [fresh(s.http, "GET", "/metrics") for _ in range(6)]
    for status, text in scrapes:
        assert status == 200
        by_worker = served_by_worker(text)
        assert sum(by_worker.values()) == SENT, by_worker       # nothing counted twice or missed
        assert set(by_worker) == {"0", "1"} and min(by_worker.values()) > 0   # 2**-39 otherwise
        assert 'atp_metrics_worker_up{worker="0"} 1.0' in text.decode()
        assert 'atp_metrics_worker_up{worker="1"} 1.0' in text.decode()
        assert text.decode().count("# TYPE atp_requests_total counter") == 1

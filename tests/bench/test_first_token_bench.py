"""`python -m bench first-token`: a short run through a real `atp serve` and a fake SSE upstream."""
import json

from bench.__main__ import main


def test_first_token_bench_reports_both_paths(capsys):
    assert main(["first-token", "--requests", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["median_us"]) == {"direct", "atp"}
    assert 0 < out["median_us"]["direct"] and 0 < out["median_us"]["atp"]
    added = out["median_us"]["atp"] - out["median_us"]["direct"]
    assert abs(out["atp_added_median_us"] - added) <= 0.11      # each figure rounded to 0.1 µs

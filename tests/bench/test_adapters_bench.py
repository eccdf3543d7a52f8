"""`python -m bench adapters` runs the real adapter loop over its transcript and re-emits every chunk."""
import json

from bench.__main__ import main


def test_adapters_bench_reports_every_case(capsys):
    assert main(["adapters", "--chunks", "50", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"text", "tool_calls", "reference_json_roundtrip"}
    assert all(r["us_per_chunk_median"] > 0 for r in result.values())

"""The Anthropic SSE per-chunk benchmark runs, every case re-emits every delta, and reports each case."""
from bench.adapters import anthropic_sse


def test_bench_runs_every_case_and_reports_positive_costs(capsys):
    rows = anthropic_sse.run(events=300, repeats=1)
    assert len(rows) == 6 and all(us > 0 for _, us in rows)
    assert anthropic_sse.main(["--events", "100", "--repeats", "1"]) == 0
    assert capsys.readouterr().out.count("| parse + translate") == 6

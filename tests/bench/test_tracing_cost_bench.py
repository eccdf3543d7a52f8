"""`python -m bench.tracing_cost` runs every setting and reports each against tracing off."""
from bench.tracing_cost import SETTINGS, main


def test_tracing_cost_reports_every_setting(capsys):
    assert main(["--requests", "20", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    for name in SETTINGS:
        assert f"  {name} " in out
    spans = int(out.rsplit("spans per traced request: ", 1)[1])
    assert spans >= 10          # the request, its stages' befores and afters, one attempt

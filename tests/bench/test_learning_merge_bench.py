"""`python -m bench merge` merges two workers' learning through a private redis-server and reports each case."""
import re

from bench.__main__ import main


def test_merge_bench_reports_every_case(capsys):
    assert main(["merge", "--merges", "5"]) == 0
    out = capsys.readouterr().out
    cases = re.findall(r"merge_once\(\), 16 models, (\w+) +(.+?) +median +([0-9.]+) µs", out)
    assert [(bandit, moved.startswith("all")) for bandit, moved, _ in cases] == [
        ("thompson", False), ("thompson", True), ("linucb", False), ("linucb", True)]
    assert all(float(us) > 0 for _, _, us in cases)
    assert re.search(r"LinUCB.set_rows\(\).*: [0-9.]+ µs", out)

"""`python -m bench governance` times limits, policy (20 rules) and redaction of a 2 KB prompt and a
whole request with governance on and off; a short smoke run checks every figure is there."""
import json

from bench.__main__ import main
from bench.governance import GOVERNANCE_STAGES, policy_text, prompt


def test_the_prompt_is_2_kb_with_and_without_pii_and_the_policy_has_20_rules():
    assert len(prompt().encode()) == len(prompt(pii=False).encode()) == 2048
    assert "@example.com" in prompt() and "@" not in prompt(pii=False)
    assert policy_text().count("[[rules]]") == 20


def test_governance_bench_reports_each_stage_the_sum_and_on_vs_off(capsys):
    assert main(["governance", "--iterations", "40", "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for label in ("plain", "pii"):
        row = out["stages_us"][label]
        assert set(row) == set(GOVERNANCE_STAGES) | {"guard"} and all(v > 0 for v in row.values())
        assert out["governance_us"][label] == round(sum(row[s] for s in GOVERNANCE_STAGES), 2)
    assert out["whole_request_us"]["on"] > 0 and out["whole_request_us"]["off"] > 0
    assert out["emails_redacted"] > 0                 # the PII prompt was really redacted

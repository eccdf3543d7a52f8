"""`python -m bench redact`: µs to redact (and score) a 2 KB prompt, µs to restore a streamed chunk.

Prompts, all 2048 characters: `typical` (prose with an e-mail, a phone number, an IP address and an
order number, the common shape), `clean` (prose, nothing to find) and `dense` (the first corpus
examples back to back: ~24 values and as many look-alikes — a worst case). `redact` is what the
redact stage pays per request (a Vault, every type, the text rewritten); `guard` is the injection
score. `find` / `find_reference` are the
detectors alone, fast path against its whole-text twin. `restore` feeds an answer in 4-character chunks (a token is ~4 characters) through a
StreamRestorer: per chunk, for an answer without placeholders and one with a placeholder in every
~40 characters. `yardstick` is one literal search over 2 KB: on an idle machine ~0.3 µs, so a
larger figure says how loaded the machine was during the run.
"""
import json
import re
import statistics
import time
from pathlib import Path

HELP = "µs to redact / score a 2 KB prompt and to restore a streamed chunk (in process)"

_PROSE = ("Hi team, following up on the migration plan we discussed last week: the router sends "
          "each request to a model that fits its budget and latency goal, while frames stay "
          "signed end to end. ")
_PII = (" Please reach Ana at ana.silva@example.org or +44 20 7946 0958; the staging host is "
        "10.20.30.40 and order ORD-2024-004817 is blocked.")


def prompts() -> dict[str, str]:
    corpus = Path(__file__).resolve().parents[2] / "tests" / "redaction" / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    clean = (_PROSE * 20)[:2048]
    return {"typical": (clean[:2048 - len(_PII)] + _PII), "clean": clean,
            "dense": " ".join(r["text"] for r in rows[:40])[:2048]}


def add_arguments(p) -> None:
    p.add_argument("--iterations", type=int, default=2000, help="calls per repeat (default 2000)")
    p.add_argument("--repeats", type=int, default=7, help="repeats; the median is reported (default 7)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _median_us(fn, iterations: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            fn()
        runs.append((time.perf_counter_ns() - t0) / iterations / 1000)
    return round(statistics.median(runs), 3)


def measure(iterations: int, repeats: int) -> dict:
    from atp_server.auth import Principal
    from atp_server.redaction.detectors import find, find_reference
    from atp_server.redaction.injection import score
    from atp_server.redaction.settings import RedactionConfig, RedactionRule
    from atp_server.redaction.vault import StreamRestorer, Vault
    from atp_server.stages import RequestContext
    from atp_server.stages.redact import RedactStage
    from atp_server.types import ChatRequest

    stage = RedactStage(RedactionConfig(RedactionRule("restore")))
    principal = Principal("default", "bench", "api_key")
    haystack = (_PROSE * 20)[:2048]
    out: dict = {"yardstick_us": _median_us(lambda: re.search("zzz", haystack), iterations, repeats)}
    for name, text in prompts().items():
        assert len(text) == 2048, (name, len(text))

        def redact(text=text):
            stage.before(RequestContext(ChatRequest([("user", text)]), principal, "bench", None))

        out[f"redact_{name}_us"] = _median_us(redact, iterations, repeats)
        out[f"guard_{name}_us"] = _median_us(lambda text=text: score([text]), iterations, repeats)
        # What the windowed fast path buys over every pattern on the whole text (its twin).
        out[f"find_{name}_us"] = _median_us(lambda text=text: find(text), iterations, repeats)
        out[f"find_reference_{name}_us"] = _median_us(lambda text=text: find_reference(text),
                                                      max(1, iterations // 4), repeats)
    vault = Vault()
    vault.redact(_PII, frozenset({"email", "phone", "ip"}))
    plain = (_PROSE * 4)[:400]
    marked = ("Sure, I will write to [EMAIL_1] and call [PHONE_1] from [IP_1]. " * 7)[:400]
    for name, answer in (("plain", plain), ("placeholders", marked)):
        chunks = [answer[i:i + 4] for i in range(0, len(answer), 4)]

        def stream(chunks=chunks):
            r = StreamRestorer(vault)
            for c in chunks:
                r.feed(c)
            r.flush()

        out[f"restore_{name}_us_per_chunk"] = round(
            _median_us(stream, max(1, iterations // 10), repeats) / len(chunks), 3)
    out.update(iterations=iterations, repeats=repeats)
    return out


def main(args) -> int:
    result = measure(args.iterations, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for key, value in result.items():
        print(f"{key:<36} {value}")
    return 0

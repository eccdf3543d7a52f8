"""Precision and recall of the detectors on the labelled corpus (tests/redaction/corpus.jsonl).

A span counts as found only when type, start and end all match the label exactly: a redaction
that leaves half a card number behind is a miss, and one that eats a neighbouring word is a false
positive. The figures are printed (pytest -s) and written down in README.md / bench/RESULTS.md.
"""
import json
from collections import Counter
from pathlib import Path

from atp_server.redaction.detectors import TYPES, find

from .make_corpus import build

CORPUS = Path(__file__).with_name("corpus.jsonl")


def load() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines()]


def score(rows) -> dict:
    tp, fp, fn = Counter(), Counter(), Counter()
    for row in rows:
        gold = {tuple(s) for s in row["spans"]}
        pred = {tuple(s) for s in find(row["text"])}
        for kind in TYPES:
            g = {s for s in gold if s[2] == kind}
            p = {s for s in pred if s[2] == kind}
            tp[kind] += len(g & p)
            fp[kind] += len(p - g)
            fn[kind] += len(g - p)
    out = {}
    for kind in (*TYPES, "overall"):
        t, f, n = ((sum(tp.values()), sum(fp.values()), sum(fn.values())) if kind == "overall"
                   else (tp[kind], fp[kind], fn[kind]))
        out[kind] = {"precision": t / (t + f) if t + f else 1.0, "recall": t / (t + n) if t + n else 1.0,
                     "support": t + n}
    return out


def test_the_corpus_is_large_varied_and_reproducible():
    rows = load()
    assert rows == build()                       # make_corpus.py regenerates exactly this file
    assert len(rows) >= 300
    assert {r["source"] for r in rows} >= {"ticket", "log", "code", "email", "chat", "csv", "json"}
    assert {r["lang"] for r in rows} >= {"en", "de", "fr", "es", "pt"}
    assert sum(1 for r in rows if not r["spans"]) >= 30          # examples with negatives only
    labelled = Counter(s[2] for r in rows for s in r["spans"])
    assert all(labelled[kind] >= 30 for kind in TYPES), labelled


def test_precision_and_recall_meet_the_targets():
    result = score(load())
    for kind, r in result.items():
        print(f"{kind:<8} precision {r['precision']:.3f} recall {r['recall']:.3f} n={r['support']}")
    assert result["overall"]["recall"] >= 0.98
    assert result["overall"]["precision"] >= 0.95
    # Per type, looser bounds that still catch a detector that broke.
    assert all(r["recall"] >= 0.95 and r["precision"] >= 0.85 for r in result.values()), result

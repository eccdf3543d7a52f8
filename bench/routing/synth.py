"""Synthetic routing-outcome data (the shared-data format) with a known answer: who is good where.

Prompts are drawn from T topics, each with its own vocabulary plus shared filler words; each model
has a skill per topic (one designated expert per topic, the rest weaker), a price, and a typical
answer length. Scores are Bernoulli(skill) or, with `fractional`, a noisy skill clipped to [0, 1].
Deterministic for a given rng (passed in).
"""
import json

import numpy as np

_FILLER = ("the of and to in is that for it as with was on be by this are or an at from which "
           "what how why explain describe find value answer question").split()


def make_rows(rng: np.random.Generator, *, n: int = 600, models: int = 12, topics: int = 6,
              fractional: bool = False, expert_skill: float = 0.95, base_skill: float = 0.35):
    """Returns (rows as dicts in the jsonl format, expert model name per topic)."""
    names = [f"model-{m:02d}" for m in range(models)]
    vocab = [[f"t{t}w{j}" for j in range(40)] for t in range(topics)]
    skill = np.full((models, topics), base_skill) + rng.uniform(-0.1, 0.1, (models, topics))
    experts = [int(t % models) for t in range(topics)]
    for t, m in enumerate(experts):
        skill[m, t] = expert_skill
    skill = np.clip(skill, 0.0, 1.0)
    price = np.geomspace(0.2, 30.0, models)[rng.permutation(models)]   # USD per 1M tokens
    out_tokens = rng.integers(20, 400, models)
    rows = []
    for i in range(n):
        t = int(rng.integers(topics))
        length = int(rng.integers(8, 60))
        words = [vocab[t][j] for j in rng.integers(0, 40, length // 2)]
        words += [_FILLER[j] for j in rng.integers(0, len(_FILLER), length - length // 2)]
        rng.shuffle(words)
        prompt = " ".join(words) + "?"
        outcomes = {}
        for m in range(models):
            if fractional:
                s = float(np.clip(skill[m, t] + rng.normal(0, 0.15), 0.0, 1.0))
            else:
                s = float(rng.random() < skill[m, t])
            tokens = len(prompt) / 4 + out_tokens[m] * rng.uniform(0.8, 1.2)
            outcomes[names[m]] = {"score": round(s, 4), "cost_usd": float(tokens * price[m] / 1e6)}
        rows.append({"id": f"synth-{i}", "prompt": prompt, "category": f"topic{t}",
                     "outcomes": outcomes})
    return rows, {f"topic{t}": names[m] for t, m in enumerate(experts)}


def write_jsonl(path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

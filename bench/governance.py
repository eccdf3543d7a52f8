"""`python -m bench governance`: what limits + policy (20 rules) + redaction add to a request (issue 10).

In process, on the embedded default with its simulated model answering at once (audit on in both):

- each governance stage of the chain — limits (a tenant rule with every kind of limit, plus a key
  rule), policy (20 rules over tenant, group, model, provider, PII, prompt size, hour and data
  classification), redact (`mode = "restore"`) — runs `before` then `after` on fresh contexts
  carrying a 2 KB prompt, once of ordinary text and once with PII in it (an email, a phone
  number, a card number, an IP address: four values to replace); the median of repeats, µs
  per request. The injection guard (`[guard] mode = "tag"`) is timed too but is not part of the
  target's sum (the issue names limits, policy and redaction);
- a whole `pipeline.complete` with governance on against the same App config without it,
  alternated repeat by repeat (so a drift of the machine hits both alike).

The issue's target: limits + policy + redaction add ≤ 50 µs median per request. HTTP throughput
with governance on against off is `python -m bench peers --only atp-http,atp-http-gov,atp-http-gov-guard`
(same run; -gov: limits + policy + redaction, -gov-guard: the injection guard as well).
"""
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from .policy_eval import atp_rules
from .stages.cli import BENCH_LIMITS, time_stage

HELP = "µs per request of limits + policy (20 rules) + redaction of a 2 KB prompt, and on vs off"
TARGET_US = 50.0            # issue 10: limits + policy (20 rules) + redaction of 2 KB ≤ 50 µs
GOVERNANCE_STAGES = ("limits", "policy", "redact")   # the target's sum
TIMED_STAGES = GOVERNANCE_STAGES + ("guard",)
PARAGRAPH = ("Our gateway team is reviewing the rollout plan for the new routing tier. Please "
             "summarise the risks, the open questions and the cost estimate for next quarter, and "
             "keep it short enough for the weekly status mail. ")
PII = ("Contact jane.doe@example.com or +1 415 555 0134; the test card 4111 1111 1111 1111 was "
       "charged from 10.20.30.40. ")


def prompt(size: int = 2048, pii: bool = True) -> str:
    """`size` bytes of ordinary text, with one set of PII in its middle when `pii`."""
    text = PARAGRAPH * (size // len(PARAGRAPH) + 1)
    if not pii:
        return text[:size]
    half = (size - len(PII)) // 2
    return text[:half] + PII + text[half:size - len(PII)]


def policy_text(model: str = "sim-high") -> str:
    """bench.policy_eval's 20 rules, naming a model the embedded default serves."""
    return atp_rules().replace('"smart"', f'"{model}"').replace('when.provider = ["p0"]',
                                                                  'when.provider = ["sim"]')


def governance_toml(state_dir, guard: bool = True) -> str:
    """Limits, the 20-rule policy file (written into `state_dir`), redaction, and the injection
    guard in tag mode unless `guard` is false."""
    path = Path(state_dir) / "bench-policy.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy_text())
    return (BENCH_LIMITS + f'\n[policy]\nfiles = ["{path}"]\n\n[redaction]\nmode = "restore"\n'
            + ('[guard]\nmode = "tag"\n' if guard else ""))


def add_arguments(p) -> None:
    p.add_argument("--iterations", type=int, default=5_000, help="calls per repeat (default 5000)")
    p.add_argument("--repeats", type=int, default=7, help="repeats; medians are reported (default 7)")
    p.add_argument("--prompt-bytes", type=int, default=2048, help="prompt size (default 2048)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _config(tmp: str, governance: bool):
    import dataclasses

    from atp_server import config as atp_config
    text = (atp_config.DEFAULT_TOML.replace("latency_ms = 20\n", "latency_ms = 0\n")
            .replace("tokens_per_s = 400\n", "tokens_per_s = 0\n"))
    if governance:
        text += governance_toml(tmp)
    cfg = atp_config.loads(text)
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, state_dir=tmp))


async def _measure(args) -> dict:
    from atp_server.app import App
    from atp_server.auth import Principal
    from atp_server.stages import RequestContext
    from atp_server.types import ChatRequest

    texts = {"plain": prompt(args.prompt_bytes, pii=False), "pii": prompt(args.prompt_bytes)}
    # tenant t3, group g7: some of the 20 rules are read for it, as for a real tenant
    principal = Principal("t3", "dev", "api_key", groups=frozenset({"g7"}))
    with tempfile.TemporaryDirectory() as on_dir, tempfile.TemporaryDirectory() as off_dir:
        on, off = App(_config(on_dir, True)), App(_config(off_dir, False))
        for app in (on, off):
            app.audit.start()
        chain = on.pipeline.chain
        missing = [s for s in GOVERNANCE_STAGES if s not in chain.names]
        if missing:
            raise RuntimeError(f"governance stages missing from the chain: {missing}")
        stages = {name: {} for name in texts}
        for label, text in texts.items():
            for i, stage in enumerate(chain.stages):
                if stage.name not in TIMED_STAGES:
                    continue
                before, after = chain.befores[i], chain.afters[i]
                runs = []
                for _ in range(args.repeats):
                    ctxs = [RequestContext(ChatRequest([("user", text)], request_id=f"r{n}"),
                                           principal, "bench", None) for n in range(args.iterations)]
                    runs.append(await time_stage(before, after, ctxs))
                stages[label][stage.name] = round(statistics.median(runs), 2)
        text = texts["pii"]
        whole = {"on": [], "off": []}
        n = max(1, args.iterations // 5)
        for _ in range(args.repeats):
            for name, app in (("on", on), ("off", off)):
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    await app.pipeline.complete(ChatRequest([("user", text)], tier="fast"), principal,
                                                "bench")
                whole[name].append((time.perf_counter_ns() - t0) / n / 1000)
                app.audit.flush()
        redactions = on.metrics.registry.get_sample_value("atp_redactions_total",
                                                          {"type": "email", "mode": "restore"})
        for app in (on, off):
            await app.stop(0)
    totals = {label: round(sum(us for name, us in row.items() if name in GOVERNANCE_STAGES), 2)
              for label, row in stages.items()}
    on_us, off_us = statistics.median(whole["on"]), statistics.median(whole["off"])
    return {"prompt_bytes": args.prompt_bytes, "policy_rules": 20, "stages_us": stages,
            "governance_us": totals, "target_us": TARGET_US,
            "meets_target": {label: t <= TARGET_US for label, t in totals.items()},
            "whole_request_us": {"on": round(on_us, 2), "off": round(off_us, 2),
                                 "added": round(on_us - off_us, 2)},
            "emails_redacted": redactions, "iterations": args.iterations, "repeats": args.repeats}


def main(args) -> int:
    import uvloop
    result = uvloop.run(_measure(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"governance stages, {result['prompt_bytes']} B prompt, 20 policy rules "
          f"(µs per request, median of {args.repeats}):")
    print(f"  {'stage':<8} {'plain':>8} {'with PII':>9}")
    plain, pii = result["stages_us"]["plain"], result["stages_us"]["pii"]
    for name in TIMED_STAGES:
        note = "   (not in the sum)" if name not in GOVERNANCE_STAGES else ""
        print(f"  {name:<8} {plain[name]:>8.2f} {pii[name]:>9.2f}{note}")
    t, ok = result["governance_us"], result["meets_target"]
    verdict = {k: "meets" if v else "MISSES" for k, v in ok.items()}
    print(f"  {'sum':<8} {t['plain']:>8.2f} {t['pii']:>9.2f}   (plain {verdict['plain']}, with PII "
          f"{verdict['pii']} the {TARGET_US:g} µs target)")
    w = result["whole_request_us"]
    print(f"whole pipeline.complete (prompt with PII, guard on): on {w['on']:.1f} µs, off "
          f"{w['off']:.1f} µs, governance adds {w['added']:.1f} µs")
    return 0

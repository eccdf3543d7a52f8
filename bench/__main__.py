"""`python -m bench <subcommand> …` — the benchmark harnesses.

Each subcommand is a module exposing HELP (one line), add_arguments(parser) and main(args) -> exit code;
adding one is one line in SUBCOMMANDS. Modules are imported only when their subcommand runs.
"""
import argparse
import importlib
import sys

SUBCOMMANDS = {
    "peers": "bench.peers.run",   # ATP vs LiteLLM vs Portkey vs bare proxy, in front of nginx
    "load": "bench.load.cli",     # open/closed-loop load on gRPC, Session, QUIC, HTTP (+ bare grpc echo)
    "routing": "bench.routing.cli",  # learned router: accuracy, cost, curve, AIQ (+ online, µs)
    "first-token": "bench.first_token",   # µs from the upstream's first SSE token to the client, via ATP vs direct
    "adapters": "bench.adapters.openai_sse",   # µs per streamed OpenAI SSE chunk: parse, translate, re-emit
    "redact": "bench.redact.cli",   # µs to redact / score a 2 KB prompt, to restore a streamed chunk
    "stages": "bench.stages.cli",    # µs per pipeline stage (before + after), in process
    "governance": "bench.governance",  # µs of limits + policy (20 rules) + redaction of 2 KB; on vs off
    "sched": "bench.sched.cli",     # µs per AIMD update and fair-queue selection, numba vs twin
    "policy": "bench.policy_eval",   # µs per policy decision, 20 rules: compiled closures vs cedarpy
    "audit": "bench.audit.cli",      # req/s with the audit log off / on (durable) / synchronous=full
    "workers": "bench.workers",      # HTTP req/s, --workers 1 vs 2 (--redis: shared state in Redis)
    "chaos": "bench.chaos",          # kill -9 provider, router, worker, Redis under load: lost, errors, audit
    "cache": "bench.cache_shadow",   # µs: response-cache key + lookup, shadow stage, Router.finished
    "merge": "bench.learning_merge",  # µs per learning merge of 16 models through Redis (Thompson, LinUCB)
    "nonces": "bench.state_nonces",  # µs per shared nonce record: SET NX vs the epoch script (Redis)
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, module_name in SUBCOMMANDS.items():
        if chosen in (None, name):  # import only what runs (and all of them for --help)
            mod = importlib.import_module(module_name)
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
        else:
            sub.add_parser(name, add_help=False)
    args = parser.parse_args(argv)
    return args._main(args)


if __name__ == "__main__":
    sys.exit(main())

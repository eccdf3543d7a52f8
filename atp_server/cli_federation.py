"""`atp federation status|keygen`: what a router knows about its peers and routes; its public key."""
import argparse
import asyncio
import json
import sys

from . import config as atp_config

_RAW = argparse.RawDescriptionHelpFormatter


def cmd_status(args) -> int:
    import grpc

    from proto.agp.v1 import agp_pb2 as pb
    from proto.agp.v1 import agp_pb2_grpc as pb_grpc

    async def ask():
        async with grpc.aio.insecure_channel(args.target) as ch:
            return await pb_grpc.AgpStub(ch).Status(pb.StatusRequest(), timeout=args.timeout)
    try:
        s = asyncio.run(ask())
    except grpc.aio.AioRpcError as exc:
        print(f"atp: federation status from {args.target}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 1
    if args.json:
        from google.protobuf.json_format import MessageToDict
        print(json.dumps(MessageToDict(s, preserving_proto_field_name=True)))
        return 0
    print(f"router {s.router_id} (domain {s.domain})")
    print(f"  peers: {len(s.peers)}")
    for p in s.peers:
        print(f"    {p.router_id or '?':<20} {p.state:<12} heard {p.last_heard_ms_ago} ms ago, "
              f"{p.routes_received} routes received")
    print(f"  routes: {len(s.routes)}")
    for r in s.routes:
        flags = ("best" if r.best else "") + (" suppressed" if r.suppressed else "")
        print(f"    {r.model:<24} via {' > '.join(r.path):<30} ${r.price_in_per_mtok:g}/"
              f"${r.price_out_per_mtok:g} per Mtok, {r.latency_ms:.0f} ms, health {r.health:g} {flags}")
    return 0


def cmd_keygen(args) -> int:
    from .federation.config import load_key, public_b64
    try:
        cfg = atp_config.load(args.config)
    except atp_config.ConfigError as exc:
        print(f"atp: config error: {exc}", file=sys.stderr)
        return 2
    path = atp_config.federation_key(cfg)
    key = load_key(path)
    rid = cfg.federation.router_id or "<this router's id>"
    print(f"# {path}: give this entry to every router of the federation\n"
          f'[[federation.trust]]\nrouter_id = "{rid}"\npublic_key = "{public_b64(key)}"')
    return 0


def add_commands(sub) -> None:
    f = sub.add_parser("federation", formatter_class=_RAW, help="AGP federation: status, keys",
                       description="Routers federate over AGP (docs/FEDERATION.md).")
    fsub = f.add_subparsers(dest="federation_command", metavar="<subcommand>", required=True)
    s = fsub.add_parser("status", formatter_class=_RAW, help="a router's peers and routes",
                        epilog="examples:\n  atp federation status\n"
                               "  atp federation status --target 10.0.0.5:8473 --json")
    s.add_argument("--target", default="127.0.0.1:8473", metavar="HOST:PORT",
                   help="the router's AGP listener (default 127.0.0.1:8473, [federation] listen)")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(func=cmd_status)
    k = fsub.add_parser("keygen", formatter_class=_RAW, help="print this router's trust-store entry",
                        description="Create this router's Ed25519 key if it has none "
                                    "(federation.key, default state_dir/agp_key.pem)\nand print "
                                    "the [[federation.trust]] entry the other routers need.")
    k.add_argument("--config", metavar="PATH", help="TOML configuration (default: the embedded one)")
    k.set_defaults(func=cmd_keygen)

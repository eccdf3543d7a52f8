"""Codec micro-benchmarks, pure vs native side by side: encode, decode, sign, verify, whole paths.

    python -m bench.bench_codec [--repeats 9] [--number 20000] [--markdown]

Each figure is the median over `repeats` runs of `number` operations, the two backends measured
alternately (pure, native, pure, native...) so machine noise hits both alike.
"""
import argparse
import os
import platform
import statistics
import sys
import time

from codec import Connection, ConnectionConfig, Keyring, NonceCache, backend
from codec.frame import FrameType, open_frame, seal
from codec.payload import decode, encode
from codec.replay import SessionGuard

KEY = bytes(range(32))
NONCE = bytes.fromhex("0102030405060708")
TS = 1_760_000_000_000
REQUEST = {
    "messages": [["system", "You are a concise assistant for a logistics company."],
                 ["user", "Summarise why signed frames with sequence windows stop replays, in two "
                          "sentences, for an engineer who knows TLS but not our protocol."]],
    "tier": "balanced", "max_tokens": 256, "max_cost": 20000, "slo_ms": 2000, "tenant": "acme",
    "caps": ["chat"], "temperature": 0.7, "stream": True, "rid": "req-0001",
}
CHUNK = {"i": 3, "text": " replays"}


def _median_ns(fn, number: int, repeats: int, results: list) -> None:
    t0 = time.perf_counter_ns()
    fn(number)
    results.append((time.perf_counter_ns() - t0) / number)


def cases():
    """name -> factory(number) returning a zero-argument callable that does `number` operations."""
    payload = encode(REQUEST)

    def encode_case(n):
        def run(k):
            for _ in range(k):
                encode(REQUEST)
        return run

    def decode_case(n):
        def run(k):
            for _ in range(k):
                decode(payload)
        return run

    def sign_case(n):
        ring = Keyring({1: KEY})
        key = ring.signer
        frame = seal(key, 1, FrameType.REQUEST, 0, 1, 1, TS, NONCE, REQUEST)

        def run(k):
            body = frame[:-32]
            for _ in range(k):
                key.sign(body)
        return run

    def verify_case(n):
        ring = Keyring({1: KEY})
        key = ring.signer
        frame = seal(key, 1, FrameType.REQUEST, 0, 1, 1, TS, NONCE, REQUEST)
        end = len(frame)

        def run(k):
            for _ in range(k):
                key.verify(frame, 0, end)
        return run

    def inbound_case(n):
        """parse + verify + replay check + payload decode + shape check, per frame."""
        ring = Keyring({1: KEY})
        frames = [seal(ring.signer, 1, FrameType.REQUEST, 0, 1 + i, 1 + i, TS, NONCE, REQUEST)
                  for i in range(n)]

        def run(k):
            guard = SessionGuard(is_responder=True, nonce_cache=NonceCache(), session_nonce=NONCE)
            guard.window.check_and_add(0)       # as if HELLO (sequence 0) was already accepted
            for f in frames[:k]:
                frame, _ = open_frame(f, 0, ring, now_ms=TS)
                guard.check(frame, TS)
        return run

    def outbound_case(n):
        """CHUNK out: deterministic encode + header + sign."""
        ring = Keyring({1: KEY})

        def run(k):
            key = ring.signer
            for i in range(k):
                seal(key, 1, FrameType.CHUNK, 0x80, 1, i, TS, NONCE, CHUNK, ordered=True)
        return run

    def connection_case(n):
        """Server Connection: receive_frame(REQUEST) -> RequestReceived event (full session path)."""
        client_ring, server_ring = Keyring({1: KEY}), Keyring({1: KEY})
        client = Connection("client", client_ring, config=ConnectionConfig(
            initial_window=(1 << 40, 1 << 50, 1 << 50)), now_ms=TS)
        client.initiate(NONCE, TS)
        client.window.grant(1 << 40, 1 << 50, 1 << 50)
        for _ in range(n):
            client.send_request(REQUEST, TS)
        frames = client.frames_to_send()

        def run(k):
            server = Connection("server", server_ring, nonce_cache=NonceCache(), now_ms=TS,
                                config=ConnectionConfig(initial_window=(1 << 40, 1 << 50, 1 << 50),
                                                        max_open_streams=1 << 30))
            server.receive_frame(frames[0], TS)   # HELLO
            server.next_event()
            for f in frames[1:k + 1]:
                server.receive_frame(f, TS)
                server.next_event()
            assert not server.closed
        return run

    return {"encode REQUEST payload (CBOR, deterministic)": encode_case,
            "decode REQUEST payload (strict CBOR)": decode_case,
            "sign ~400 B frame (HMAC-SHA256)": sign_case,
            "verify ~400 B frame": verify_case,
            "inbound frame path (parse+verify+replay+decode+shape)": inbound_case,
            "outbound CHUNK frame (ordered encode+header+sign)": outbound_case,
            "server Connection.receive_frame(REQUEST) -> event": connection_case}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    names = sorted(backend.AVAILABLE)
    frame_len = len(seal(Keyring({1: KEY}).signer, 1, FrameType.REQUEST, 0, 1, 1, TS, NONCE, REQUEST))
    rows = []
    for title, factory in cases().items():
        results = {name: [] for name in names}
        runners = {}
        for name in names:
            backend.use(name)
            runners[name] = factory(args.number)
            runners[name](min(args.number, 1000))   # warm-up
        for _ in range(args.repeats):
            for name in names:
                backend.use(name)
                _median_ns(runners[name], args.number, args.repeats, results[name])
        rows.append((title, {n: statistics.median(v) for n, v in results.items()}))
    header = (f"python {platform.python_version()}, {platform.machine()}, REQUEST frame "
              f"{frame_len} bytes, medians of {args.repeats} x {args.number} ops, backends "
              f"alternated; native SHA-256: {getattr(backend.AVAILABLE.get('native'), '_sha256_backend', lambda: '-')()}")
    print(header)
    if args.markdown:
        cols = " | ".join(f"{n} (µs)" for n in names)
        print(f"\n| operation | {cols} | pure/native |\n|---|" + "---|" * (len(names) + 1))
    for title, med in rows:
        ratio = med["pure"] / med["native"] if "native" in med else float("nan")
        if args.markdown:
            vals = " | ".join(f"{med[n] / 1000:.2f}" for n in names)
            print(f"| {title} | {vals} | {ratio:.2f}× |")
        else:
            vals = "  ".join(f"{n}={med[n] / 1000:7.2f} µs" for n in names)
            print(f"{title:58s} {vals}  ratio {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

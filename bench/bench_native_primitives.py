"""Pure vs native codec primitives: median ns/op over >= 7 timeit repeats.

    python bench/bench_native_primitives.py [--repeat N]

Measures peek_frame on a 400-byte frame, HmacKey.verify of a 400-byte frame, HmacKey.seal of a
330-byte payload (330 + 40 header + 32 tag = 402 bytes) and decode_cbor of the benchmark REQUEST
payload (bench.bench_codec.REQUEST, 329 bytes of deterministic CBOR), for codec._pure and
codec._native.
"""
import argparse
import os
import statistics
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cbor2  # noqa: E402

from bench.bench_codec import REQUEST  # noqa: E402
from codec import _pure  # noqa: E402

try:
    from codec import _native
except ImportError:
    _native = None

KEY = bytes(range(1, 33))
NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08"
SEAL_PAYLOAD = bytes(i % 251 for i in range(330))
FRAME_PAYLOAD = bytes(i % 241 for i in range(400 - 40 - 32))  # whole frame = 400 bytes
REQUEST_CBOR = cbor2.dumps(REQUEST, canonical=True)           # what codec.payload.encode emits


def _median_ns(stmt, number, repeat):
    times = timeit.repeat(stmt, number=number, repeat=repeat)
    return statistics.median(times) / number * 1e9


def bench(mod, repeat):
    key = mod.HmacKey(KEY)
    frame = key.seal(3, 0, 7, 1, 42, 1_700_000_000_000, NONCE, FRAME_PAYLOAD)
    assert len(frame) == 400
    end = len(frame)
    peek, verify, seal, decode = mod.peek_frame, key.verify, key.seal, mod.decode_cbor
    cbor, cbor_len = REQUEST_CBOR, len(REQUEST_CBOR)
    assert decode(cbor, 0, cbor_len, 8) == REQUEST
    return {
        "peek_frame (400 B frame)": _median_ns(lambda: peek(frame, 0), 20000, repeat),
        "verify (400 B frame)": _median_ns(lambda: verify(frame, 0, end), 10000, repeat),
        "seal (330 B payload)": _median_ns(
            lambda: seal(3, 0, 7, 1, 42, 1_700_000_000_000, NONCE, SEAL_PAYLOAD), 10000, repeat),
        f"decode_cbor ({cbor_len} B REQUEST)": _median_ns(
            lambda: decode(cbor, 0, cbor_len, 8), 5000, repeat),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="timeit repeats (median taken; min 7)")
    args = ap.parse_args()
    repeat = max(7, args.repeat)

    pure = bench(_pure, repeat)
    if _native is None:
        print("codec._native is not built (python setup.py build_ext --inplace); pure only:")
        for name, ns in pure.items():
            print(f"  {name:<28} pure {ns:9.1f} ns/op")
        return
    backend = getattr(_native, "_sha256_backend", lambda: "?")()
    native = bench(_native, repeat)
    print(f"median ns/op over {repeat} repeats (native SHA-256: {backend}); "
          f"python {sys.version.split()[0]}")
    print(f"  {'primitive':<28} {'pure':>10} {'native':>10} {'speed-up':>9}")
    for name in pure:
        p, n = pure[name], native[name]
        print(f"  {name:<28} {p:10.1f} {n:10.1f} {p / n:8.2f}x")


if __name__ == "__main__":
    main()

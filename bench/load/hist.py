"""A log-linear latency histogram in pure Python (the HdrHistogram layout, simplified).

Values are integer microseconds. Below 2**(SUB_BITS+1) every value has its own bucket (exact);
above, each power of two is split into 2**SUB_BITS equal buckets, so a reported percentile is
within 1/2**SUB_BITS (0.8 % at SUB_BITS=7) of the true sample. Recording is a few integer
operations and one dict update (~0.3 µs); memory grows with the number of distinct buckets
(a few hundred for any realistic run), not with the number of samples.
"""
from __future__ import annotations

SUB_BITS = 7
_EXACT = 1 << (SUB_BITS + 1)          # 256: values below are their own bucket


def bucket_of(v: int) -> int:
    """The lower bound of the bucket holding `v` (v >= 0)."""
    if v < _EXACT:
        return v
    shift = v.bit_length() - SUB_BITS - 1
    return (v >> shift) << shift


def bucket_width(lower: int) -> int:
    if lower < _EXACT:
        return 1
    return 1 << (lower.bit_length() - SUB_BITS - 1)


class Histogram:
    __slots__ = ("counts", "n", "total", "min", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def record(self, v: int) -> None:
        v = int(v)
        if v < 0:
            v = 0
        b = v if v < _EXACT else (v >> (s := v.bit_length() - SUB_BITS - 1)) << s
        c = self.counts
        c[b] = c.get(b, 0) + 1
        self.n += 1
        self.total += v
        if self.min is None or v < self.min:
            self.min = v
        if self.max is None or v > self.max:
            self.max = v

    def merge(self, other: "Histogram") -> None:
        for b, k in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + k
        self.n += other.n
        self.total += other.total
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)
            self.max = other.max if self.max is None else max(self.max, other.max)

    def percentile(self, p: float) -> float | None:
        """The value below which `p` % of the samples fall (the middle of its bucket, clamped to
        the exact min/max)."""
        if not self.n:
            return None
        rank = max(1, -(-self.n * p // 100))   # ceil(n*p/100), the nearest-rank definition
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                mid = b + (bucket_width(b) - 1) / 2
                return float(min(max(mid, self.min), self.max))
        return float(self.max)

    def summary(self, percentiles=(50, 90, 99, 99.9)) -> dict:
        """{p50, p90, p99, p99.9, min, max, mean, count} in the recorded unit (None when empty)."""
        out = {_pname(p): self.percentile(p) for p in percentiles}
        out.update(min=self.min, max=self.max, mean=round(self.total / self.n, 1) if self.n else None,
                   count=self.n)
        return out

    def to_json(self) -> dict:
        return {"unit": "us", "sub_bucket_bits": SUB_BITS,
                "buckets": [[b, self.counts[b]] for b in sorted(self.counts)]}

    @classmethod
    def from_json(cls, data: dict) -> "Histogram":
        h = cls()
        for b, k in data["buckets"]:
            h.counts[int(b)] = h.counts.get(int(b), 0) + int(k)
            h.n += int(k)
            h.total += int(k) * (int(b) + (bucket_width(int(b)) - 1) / 2)
            h.min = int(b) if h.min is None else min(h.min, int(b))
            h.max = int(b) + bucket_width(int(b)) - 1 if h.max is None else max(h.max, int(b) + bucket_width(int(b)) - 1)
        return h


def _pname(p: float) -> str:
    return f"p{p:g}"

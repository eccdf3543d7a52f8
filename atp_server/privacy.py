"""Differential privacy for the usage statistics ATP publishes: the Laplace mechanism and an epsilon ledger.

A published aggregate (a tenant's request count, tokens, spend over some window) gets Laplace
noise of scale sensitivity / epsilon, and the epsilon spent is charged to that tenant's ledger for
that metric. When a tenant's budget for the period is spent, further releases are refused — the
answer would otherwise be averaged back to the exact figure.

- The unit of privacy is one request: counts have sensitivity 1; sums clip each request's
  contribution to a configured bound (`[privacy] tokens_clip`, `cost_clip_usd`), which is then
  their sensitivity.
- Releases for different tenants touch disjoint requests (parallel composition), so each tenant
  has its own ledger; releases of one tenant's metric compose sequentially (epsilons add).
- Noise is drawn from `secrets.SystemRandom` and the released value is rounded to the metric's
  resolution: the textbook float sampler leaks through the low bits (Mironov, CCS 2012), and
  rounding the output is the usual mitigation short of a discrete mechanism.
- The ledger persists (JSON in the state dir, written atomically) so a restart does not refill it.
"""
import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

METRICS = ("requests", "tokens", "cost_usd")
# Resolution each released metric is rounded to: whole requests and tokens, a micro-dollar.
RESOLUTION = {"requests": 1.0, "tokens": 1.0, "cost_usd": 1e-6}
PERIOD_S = 86400.0    # budgets are per UTC day: the period operators think of for usage reports


class BudgetSpent(Exception):
    """A release would exceed the tenant's epsilon budget for the metric this period."""

    def __init__(self, tenant: str, metric: str, asked: float, left: float, total: float):
        super().__init__(f"privacy budget spent for tenant {tenant!r}, metric {metric}: asked "
                         f"epsilon {asked:g}, {left:g} of {total:g} left today")
        self.tenant, self.metric, self.left = tenant, metric, left


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    epsilon_per_day: float = 1.0    # per tenant per metric; 1.0 is a common ceiling for daily stats
    tokens_clip: int = 8192         # a request counts at most this many tokens in a published sum
    cost_clip_usd: float = 1.0      # ... and at most this many USD


def laplace(value: float, sensitivity: float, epsilon: float, resolution: float = 1.0,
            rng: secrets.SystemRandom | None = None) -> float:
    """value + Laplace(0, sensitivity/epsilon), rounded to `resolution`."""
    if epsilon <= 0 or sensitivity <= 0:
        raise ValueError("epsilon and sensitivity must be > 0")
    rng = rng or _RNG
    u = rng.random() - 0.5                     # uniform on [-0.5, 0.5)
    noise = -(sensitivity / epsilon) * math.copysign(1.0, u) * math.log(1 - 2 * abs(u) or 1e-300)
    return round((value + noise) / resolution) * resolution


def sensitivity(metric: str, cfg: PrivacyConfig) -> float:
    return {"requests": 1.0, "tokens": float(cfg.tokens_clip), "cost_usd": cfg.cost_clip_usd}[metric]


class Ledger:
    """Epsilon spent per (tenant, metric) in the current period, persisted to `path`."""

    def __init__(self, path: str | os.PathLike, cfg: PrivacyConfig = PrivacyConfig(), clock=time.time):
        self.path, self.cfg, self.clock = Path(path), cfg, clock
        self._period, self._spent = self._load()

    def _current(self) -> int:
        return int(self.clock() // PERIOD_S)

    def _load(self) -> tuple[int, dict]:
        try:
            data = json.loads(self.path.read_text())
            return int(data["period"]), {k: float(v) for k, v in data["spent"].items()}
        except FileNotFoundError:
            return self._current(), {}
        except (ValueError, KeyError, TypeError) as exc:
            # a damaged ledger must not silently refill every budget
            raise ValueError(f"{self.path}: unreadable privacy ledger ({exc}); fix or remove it") from None

    def _roll(self) -> None:
        now = self._current()
        if now != self._period:
            self._period, self._spent = now, {}

    def remaining(self, tenant: str, metric: str) -> float:
        self._roll()
        return max(0.0, self.cfg.epsilon_per_day - self._spent.get(f"{tenant}\x1f{metric}", 0.0))

    def spend(self, tenant: str, metric: str, epsilon: float) -> None:
        """Charge `epsilon`, or raise BudgetSpent and charge nothing."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
        if not epsilon > 0:
            raise ValueError("epsilon must be > 0")
        left = self.remaining(tenant, metric)
        if epsilon > left + 1e-12:
            raise BudgetSpent(tenant, metric, epsilon, left, self.cfg.epsilon_per_day)
        key = f"{tenant}\x1f{metric}"
        self._spent[key] = self._spent.get(key, 0.0) + epsilon
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"period": self._period, "spent": self._spent}))
        os.replace(tmp, self.path)   # atomic: a crash leaves the old ledger or the new, never half

    def all_remaining(self) -> dict[tuple[str, str], float]:
        """(tenant, metric) -> epsilon left, for every pair that spent something this period."""
        self._roll()
        return {tuple(k.split("\x1f", 1)): max(0.0, self.cfg.epsilon_per_day - v)
                for k, v in self._spent.items()}


def release(ledger: Ledger, tenant: str, metric: str, value: float, epsilon: float) -> float:
    """Charge the ledger, then return the noisy value (nothing is released if the charge fails)."""
    ledger.spend(tenant, metric, epsilon)
    return laplace(value, sensitivity(metric, ledger.cfg), epsilon, RESOLUTION[metric])


_RNG = secrets.SystemRandom()

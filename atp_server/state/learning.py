"""Merges what each worker's router learns — posteriors, latency, error rate, breakers — through the shared store.

Every `interval_s` (and at once when a breaker of this worker opens or closes) a worker pushes
what it observed since its last merge and pulls the merged view, in one round trip
(redis.RedisLearning):

- the Beta sums `succ` / `fail` and the answer count are **added**: each worker sends only its
  deltas since the last merge, so the merged sum is exactly every worker's observations, and it
  keeps what it observed while the merge was on the wire on top of the merged value;
- the latency EWMA and error rate are not sums, so the merged value is the **mean** over the
  workers heard from recently (each worker's own value, expiring when a worker stops merging);
- breakers: the latest trip and the latest re-close of any worker win (HealthBoard.adopt), so a
  circuit opened by one worker is open in the others after their next merge.

Why 2 s by default ([state] merge_interval_ms): a breaker cools down for 10 s, so a trip pushed
at once and pulled within 2 s keeps the other workers off a dead model for most of it, for the
price of at most a few more failed calls there; posteriors move by one observation per request,
so a 2 s lag is noise next to the thousands they already hold; and one script per worker every
2 s is nothing for Redis. Not merged: LinUCB's per-model matrices (A⁻¹ is no sum; merging needs
A itself, a later step) and in-flight counts (each worker's own).

Clocks: the breaker runs on the pipeline's clock (monotonic, per host); times cross the store as
wall-clock seconds, converted with this worker's offset at each merge.
"""
import asyncio
import logging
import os
import socket
import time

import numpy as np

log = logging.getLogger("atp.state")

# A worker's latency/error values count in the mean while it merged within this many intervals:
# one missed merge (a slow loop, a Redis blip) must not drop a live worker from the mean.
STALE_INTERVALS = 3


class LearningSync:
    """The periodic merge for one worker: `start()` on the loop, `stop()` at shutdown,
    `merge_once()` for tests. Reads and writes the router's table only between awaits."""

    def __init__(self, router, store, interval_s: float, clock, *, wall=time.time,
                 worker: str | None = None):
        self.router, self.store, self.interval_s = router, store, interval_s
        self.clock, self.wall = clock, wall
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        # model id -> (succ, fail, answers) at the last merge; first, what the table holds now
        # (the posteriors restored at start, which every worker loaded: seeds, never deltas)
        self.base: dict[str, np.ndarray] = {}
        self._seed()
        self.merges = 0                        # merges that reached the store
        self._wake = asyncio.Event()
        self._adopting = False                 # our own adopt() must not wake us again
        self._task: asyncio.Task | None = None

    def _seed(self) -> None:
        table = self.router.ref.table
        s = table.stats
        for i, model in enumerate(table.ids):
            if model not in self.base:
                self.base[model] = np.array([s.succ[i], s.fail[i], float(s.answers[i])])

    def wake(self) -> None:
        """A breaker of this worker changed: merge now instead of at the next tick."""
        if not self._adopting:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.merge_once()          # what this worker learnt last is not lost to the others

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.merge_once()
            except Exception:            # a bug here must not end learning for good
                log.exception("learning merge failed")

    async def merge_once(self) -> bool:
        """One push-and-pull; False when the store did not answer (the deltas wait)."""
        table = self.router.ref.table
        s, ids, health = table.stats, table.ids, self.router.health
        offset = self.wall() - self.clock()
        sent = np.stack([s.succ, s.fail, s.answers.astype(np.float64)])   # a copy
        self._seed()                    # a model new since (a reload): from what it holds now
        rows = []
        for i, model in enumerate(ids):
            base = self.base[model]
            c = health.circuits.get(model)
            opened = c.opened_at + offset if c is not None and c.opened_at else 0.0
            closed = c.closed_at + offset if c is not None and c.closed_at else 0.0
            rows.append((model, base, sent[:, i] - base, float(s.lat_ewma[i]), float(s.err_rate[i]),
                         opened, closed))
        merged = await self.store.merge(self.worker, self.wall(), STALE_INTERVALS * self.interval_s, rows)
        if merged is None or self.router.ref.table is not table:
            return False                # down, or the table was swapped meanwhile: next time
        self.merges += 1
        now = np.stack([s.succ, s.fail, s.answers.astype(np.float64)])
        for i, model in enumerate(ids):
            succ, fail, answers, lat, err, opened, closed = merged[i]
            total = np.array([succ, fail, answers])
            local = total + (now[:, i] - sent[:, i])   # plus what arrived while merging
            s.succ[i], s.fail[i], s.answers[i] = local[0], local[1], round(local[2])
            self.base[model] = total
            if np.isfinite(lat):
                s.lat_ewma[i] = lat
            if np.isfinite(err):
                s.err_rate[i] = err
            self._adopting = True
            try:
                health.adopt(model, opened - offset if opened else 0.0,
                             closed - offset if closed else 0.0)
            finally:
                self._adopting = False
        return True


def start_sync(router, store, interval_s: float, clock) -> LearningSync:
    """Start merging `router`'s learning through `store` on the running loop; breaker changes
    (the health board's on_change, which the App already uses for its events) merge at once."""
    sync = LearningSync(router, store, interval_s, clock)
    board, notify = router.health, router.health.on_change

    def on_change(model_id, was, now) -> None:
        if notify is not None:
            notify(model_id, was, now)
        sync.wake()
    board.on_change = on_change
    sync.start()
    return sync

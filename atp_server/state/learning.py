"""Merges what each worker's router learns (posteriors, LinUCB's sums, latency, breakers) through the store.

Every `interval_s` (and at once when a breaker of this worker opens or closes) a worker pushes
what it observed since its last merge and pulls the merged view, in one round trip (one script,
redis.RedisLearning):

- the Beta sums `succ` / `fail` and the answer count are **added**: each worker sends only its
  deltas since the last merge (`base` = the merged value it last pulled), so the merged sum is
  exactly every worker's observations, and it keeps what it observed while the merge was on the
  wire on top of the merged value;
- LinUCB's A = λI + Σ x xᵀ and b = Σ r x (routing/bandit.py), when LinUCB is the bandit, are sums
  too and merge the same way: ΔA (upper triangle; A is symmetric) and Δb since the last merge go
  out as packed float64, the store adds them, and the worker sets A = merged + what arrived
  meanwhile and inverts it afresh (a batched np.linalg.inv of the rows that changed: ~0.1 ms for
  16 models of 17 features, every 2 s; bench/RESULTS.md). A⁻¹ itself is not a sum, so it never
  crosses. A model whose stored sums have another dim (a worker with another trained router or
  version) or are corrupt is skipped with a log line: neither side's matrices change;
- the latency EWMA and error rate are not sums, so the merged value is the **mean** over the
  workers heard from recently (each worker's own value, expiring when a worker stops merging);
- breakers: the latest trip and the latest re-close of any worker win (HealthBoard.adopt), so a
  circuit opened by one worker is open in the others after their next merge.

The bases follow the model set: a reload's removed models are forgotten (Router.on_removed), so a
model added back with fresh statistics starts from a new base instead of sending a negative
delta; a table swapped in while a merge is on the wire (a reload, a promotion) is updated by
model id, since the store already holds what was sent.

Why 2 s by default ([state] merge_interval_ms): a breaker cools down for 10 s, so a trip pushed
at once and pulled within 2 s keeps the other workers off a dead model for most of it, for the
price of at most a few more failed calls there; posteriors move by one observation per request,
so a 2 s lag is noise next to the thousands they already hold; and one script per worker every
2 s is nothing for Redis (~0.2 ms of it with Thompson, ~0.4–0.6 ms with LinUCB, 16 models).
Not merged: in-flight counts (each worker's own).

In Redis every merged key expires a week after its last merge (redis.LEARNING_KEEP_S): a
model no worker serves any more is forgotten, and a fleet stopped longer re-seeds the store.

Clocks: the breaker runs on the pipeline's clock (monotonic, per host); times cross the store as
wall-clock seconds, converted with this worker's offset at each merge.
"""
import asyncio
import logging
import os
import socket
import time

import numpy as np

from ..routing.bandit import LinUCB

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
        # model id -> (succ, fail, answers) at the last merge, and LinUCB's packed sums (A's
        # upper triangle, b) at the last merge; first, what the table holds now (the posteriors
        # restored at start, which every worker loaded: seeds, never deltas)
        self.base: dict[str, np.ndarray] = {}
        self.lin_base: dict[str, np.ndarray] = {}
        self._seed(router.ref.table)
        # Models a reload removed since the merge began: their bases go (a model added back
        # later starts from fresh statistics, and its old base would send a negative delta)
        self._dropped: set[str] = set()
        router.on_removed = self.forget
        self.refused: set[str] = set()         # models whose LinUCB sums the store refuses (dim)
        self.merges = 0                        # merges that reached the store
        self._wake = asyncio.Event()
        self._adopting = False                 # our own adopt() must not wake us again
        self._task: asyncio.Task | None = None

    def _seed(self, table) -> None:
        """Bases for models without one (new: a reload added them, or added them back with fresh
        statistics): what they hold now, so only what they learn from here is sent."""
        s, lin = table.stats, _linucb(table)
        packed = lin.packed() if lin is not None else None
        for i, model in enumerate(table.ids):
            new = model not in self.base
            if new:
                self.base[model] = np.array([s.succ[i], s.fail[i], float(s.answers[i])])
            if packed is not None and (new or self.lin_base.get(model, packed[i]).shape != packed[i].shape):
                self.lin_base[model] = packed[i]

    def forget(self, models) -> None:
        """A reload removed `models` (Router.set_models calls this): drop their bases."""
        for model in models:
            self.base.pop(model, None)
            self.lin_base.pop(model, None)
            self._dropped.add(model)

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
        lin = _linucb(table)
        offset = self.wall() - self.clock()
        self._seed(table)               # a model new since (a reload): from what it holds now
        self._dropped.clear()
        sent = np.stack([s.succ, s.fail, s.answers.astype(np.float64)])   # a copy
        rows = []
        for i, model in enumerate(ids):
            base = self.base[model]
            c = health.circuits.get(model)
            opened = c.opened_at + offset if c is not None and c.opened_at else 0.0
            closed = c.closed_at + offset if c is not None and c.closed_at else 0.0
            rows.append((model, base, sent[:, i] - base, float(s.lat_ewma[i]), float(s.err_rate[i]),
                         opened, closed))
        lin_rows, lin_sent = (), None
        if lin is not None:             # only when LinUCB is the bandit: Thompson/UCB need the sums above
            lin_sent = lin.packed()     # a copy
            lin_rows = [(model, lin.dim, self.lin_base[model], lin_sent[i] - self.lin_base[model])
                        for i, model in enumerate(ids)]
        merged = await self.store.merge(self.worker, self.wall(), STALE_INTERVALS * self.interval_s,
                                        rows, lin_rows)
        if merged is None:
            return False                # down: the deltas wait for the next merge
        beta, pulled = merged
        self.merges += 1
        # The store holds our deltas now, whatever happened meanwhile: the bases move on. A
        # table swapped in during the merge (a reload, a promotion) carried the rows of the
        # models it kept, so what arrived meanwhile is its row minus what was sent, by model id.
        current = self.router.ref.table
        cs, index = current.stats, current.index
        now = np.stack([cs.succ, cs.fail, cs.answers.astype(np.float64)])
        for i, model in enumerate(ids):
            j = index.get(model)
            if j is None or model in self._dropped:   # removed meanwhile
                self.forget((model,))
                continue
            succ, fail, answers, lat, err, opened, closed = beta[i]
            total = np.array([succ, fail, answers])
            self.base[model] = total
            local = total + (now[:, j] - sent[:, i])   # plus what arrived while merging
            cs.succ[j], cs.fail[j], cs.answers[j] = local[0], local[1], round(local[2])
            if np.isfinite(lat):
                cs.lat_ewma[j] = lat
            if np.isfinite(err):
                cs.err_rate[j] = err
            self._adopting = True
            try:
                health.adopt(model, opened - offset if opened else 0.0,
                             closed - offset if closed else 0.0)
            finally:
                self._adopting = False
        if lin_rows:
            self._adopt_linucb(lin_rows, pulled, lin_sent, current)
        return True

    def _adopt_linucb(self, lin_rows, pulled, sent: np.ndarray, current) -> None:
        """The merged LinUCB sums: each model's A and b become merged + what arrived meanwhile,
        and A⁻¹ is inverted afresh. A row the store refused (it holds another dim: a worker
        with another trained router or version) or a merged value that is not finite is skipped
        with a log line: this worker keeps its own matrices, the store keeps its sums."""
        lin = _linucb(current)
        mine = lin.packed() if lin is not None else None
        rows, values = [], []
        for i, ((model, dim, _, _), (vec, stored)) in enumerate(zip(lin_rows, pulled)):
            if vec is None or not np.isfinite(vec).all():
                if model not in self.refused:
                    self.refused.add(model)
                    log.warning("learning merge: LinUCB sums of %s skipped: the store holds %s, "
                                "this worker dim %d (another trained router or version?)", model,
                                f"dim {stored}" if vec is None else "non-finite values", dim)
                continue
            if model in self.refused:
                self.refused.discard(model)
                log.info("learning merge: LinUCB sums of %s merge again", model)
            j = current.index.get(model)
            if j is None or model not in self.base:     # removed meanwhile (forgotten above)
                continue
            self.lin_base[model] = vec
            if lin is not None and lin.dim == dim:
                value = vec + (mine[j] - sent[i])          # plus what arrived while merging
                if not np.array_equal(value, mine[j]):     # unchanged: no inversion needed
                    rows.append(j)
                    values.append(value)
        if rows:
            _set_rows(lin, rows, np.array(values), [current.ids[j] for j in rows])


def _linucb(table):
    return table.bandit if isinstance(table.bandit, LinUCB) else None


def _set_rows(lin: LinUCB, rows, values, models) -> None:
    """lin.set_rows, row by row when the batch holds an A that is no LinUCB sum (not ⪰ λI: a
    corrupt store; that row keeps this worker's own matrices, logged)."""
    try:
        lin.set_rows(rows, values)
        return
    except np.linalg.LinAlgError:
        pass
    for j, v, model in zip(rows, values, models):
        try:
            lin.set_rows([j], v[None])
        except np.linalg.LinAlgError:
            log.error("learning merge: merged LinUCB A of %s is not ⪰ λI (a corrupt store?); "
                      "kept this worker's", model)


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

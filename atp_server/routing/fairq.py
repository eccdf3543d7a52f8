"""Weighted fair queueing core: self-clocked fair-queueing tags per flow and the pick of the next one (pure).

A *flow* is one tenant; its weight is its QoS tier's weight (gold > silver > bronze). Each queued
item gets a finish tag `F = max(V, F_last(flow)) + cost / weight` when it arrives (SCFQ, Golestani
1994: V is the finish tag of the item served last, so no wall clock enters the core). The next item
served is the head with the smallest finish tag; ties go to the lowest flow id, so the decision is a
pure function of the tags. Under sustained overload every backlogged flow therefore receives
service in proportion to its weight: no tier starves, a bronze tenant gets ≈ w_bronze / Σw.

The selection runs over the *active* flows only (those with something queued), kept compact in two
arrays, so its cost follows the number of waiting tenants, not the number ever seen. It exists
twice, per atp_server/routing/kernels.py's house pattern: a plain-Python reference and a numba
twin, identical decisions (same comparison, same tie-break); `ATP_NUMBA=0` forces the reference.

Memory is bounded by construction: at most `max_queued` items and `max_flows` flow records (an
empty flow's record is reused for a new tenant; when every record is backlogged a new tenant is
refused like a full queue). When the queue is full, the arrival's flow is compared with the flow most over its
weighted share (queued / weight): the latter loses its newest item (longest-queue drop), so a
flooding tenant cannot take the queue space a light one needs; otherwise the arrival is refused.
"""
import math
from collections import deque

import numpy as np

from . import kernels

INF = math.inf


def _select_py(act_finish, act_flow, n: int) -> int:
    """Index (into the active arrays) of the smallest finish tag, ties to the lowest flow id; -1 if none.
    Plain Python over two `tolist()` copies: for the tens of flows that wait at once this beats
    numpy's vectorised argmin + tie-break (~5 array calls of fixed overhead each)."""
    if n == 0:
        return -1
    f, g = act_finish[:n].tolist(), act_flow[:n].tolist()
    return min(range(n), key=lambda k: (f[k], g[k]))


def _build_numba():
    import numba

    @numba.njit(cache=True, nogil=True)
    def select(act_finish, act_flow, n):
        best = -1
        for k in range(n):
            if best < 0 or act_finish[k] < act_finish[best] or (
                    act_finish[k] == act_finish[best] and act_flow[k] < act_flow[best]):
                best = k
        return best

    return select


SELECT_PYTHON = _select_py
SELECT_NUMBA = _build_numba() if kernels.NUMBA is not None else None   # same ATP_NUMBA switch


class QueueFull(Exception):
    """The arrival was refused: the queue is full and its flow is the one most over its share."""


class FairQueue:
    """Bounded multi-flow queue; `push` tags, `pop` serves the smallest finish tag. No I/O, no clock."""

    def __init__(self, max_queued: int, max_flows: int, select=None):
        if max_queued < 0 or max_flows < 1:
            raise ValueError("max_queued must be >= 0 and max_flows >= 1")
        self.max_queued, self.max_flows = max_queued, max_flows
        self.select = select or SELECT_NUMBA or SELECT_PYTHON
        self.virtual = 0.0                     # V: finish tag of the item served last
        self._max_finish = 0.0                 # the largest finish tag ever given
        self.queued = 0
        self._keys: dict[str, int] = {}        # flow key -> flow id
        self._key_of: list[str] = []           # flow id -> key
        self._weight: list[float] = []
        self._last_finish: list[float] = []
        self._items: list[deque] = []          # flow id -> deque of [finish, item]
        # The active set, compact: act_flow[k] is a flow with items, act_finish[k] its head's tag.
        self._act_finish = np.full(max_flows, INF)
        self._act_flow = np.zeros(max_flows, dtype=np.int64)
        self._act_pos = [-1] * max_flows       # flow id -> its index in the active arrays, or -1
        self._n_active = 0
        # Compile, or load numba's cache (0.2-2 s), now at start-up rather than on the first
        # request that has to queue.
        self.select(self._act_finish, self._act_flow, 0)

    # ---- flows -----------------------------------------------------------------------------------

    def flow(self, key: str, weight: float) -> int | None:
        """The flow id for `key` (created, or an idle record reused, on first use); None when
        all `max_flows` records are backlogged by other keys."""
        fid = self._keys.get(key)
        if fid is not None:
            return fid
        if len(self._key_of) < self.max_flows:
            fid = len(self._key_of)
            self._key_of.append(key)
            self._weight.append(weight)
            self._last_finish.append(0.0)
            self._items.append(deque())
        else:
            fid = self._idle_flow()
            if fid is None:   # every record is backlogged (max_flows < max_queued): no room
                return None
            del self._keys[self._key_of[fid]]
            self._key_of[fid], self._weight[fid], self._last_finish[fid] = key, weight, 0.0
        self._keys[key] = fid
        return fid

    def _idle_flow(self) -> int | None:
        for fid, items in enumerate(self._items):
            if not items:
                return fid
        return None

    def depth(self, fid: int) -> int:
        return len(self._items[fid])

    # ---- queueing --------------------------------------------------------------------------------

    def push(self, fid: int, item, cost: float = 1.0):
        """Queue `item` on flow `fid`; returns an item evicted to make room (or None).
        Raises QueueFull when the arrival's own flow is the one to shed."""
        evicted = None
        if not self.queued:
            # A new backlog starts: every flow starts level (SCFQ's busy period). Service given
            # while nobody waited is neither debt nor credit, and stale tags from an earlier
            # backlog do not push a flow back; the admission fast path needs no tagging for it.
            self.virtual = max(self.virtual, self._max_finish)
        if self.queued >= self.max_queued:
            victim = self._most_over_share()
            w = self._weight[fid]
            if victim is None or (len(self._items[fid]) + 1) / w > \
                    len(self._items[victim]) / self._weight[victim] or victim == fid:
                raise QueueFull(self._key_of[fid])
            evicted = self._drop_tail(victim)
        start = max(self.virtual, self._last_finish[fid])
        finish = start + cost / self._weight[fid]
        self._last_finish[fid] = finish
        if finish > self._max_finish:
            self._max_finish = finish
        entry = [finish, item]
        items = self._items[fid]
        items.append(entry)
        self.queued += 1
        if len(items) == 1:
            self._activate(fid, finish)
        return evicted


    def pop(self):
        """The next item by weighted fair order, or None when nothing is queued."""
        if not self._n_active:
            return None
        k = self.select(self._act_finish, self._act_flow, self._n_active)
        if k < 0:
            return None
        fid = int(self._act_flow[k])
        items = self._items[fid]
        finish, item = items.popleft()
        self.queued -= 1
        self.virtual = finish
        if items:
            self._act_finish[k] = items[0][0]
        else:
            self._deactivate(fid)
        return item

    def remove(self, fid: int, item) -> bool:
        """Take a queued item out (cancelled, deadline passed); False if it was not queued."""
        items = self._items[fid]
        for i, entry in enumerate(items):
            if entry[1] is item:
                break
        else:
            return False
        was_tail = i == len(items) - 1
        del items[i]
        self.queued -= 1
        if was_tail:   # its service share goes back to the flow
            self._last_finish[fid] = items[-1][0] if items else max(self.virtual, 0.0)
        if not items:
            self._deactivate(fid)
        elif i == 0:
            self._act_finish[self._act_pos[fid]] = items[0][0]
        return True

    # ---- internals -------------------------------------------------------------------------------

    def _most_over_share(self) -> int | None:
        best, best_load = None, -1.0
        for k in range(self._n_active):
            fid = int(self._act_flow[k])
            load = len(self._items[fid]) / self._weight[fid]
            if load > best_load or (load == best_load and fid < best):
                best, best_load = fid, load
        return best

    def _drop_tail(self, fid: int):
        items = self._items[fid]
        _, item = items.pop()
        self.queued -= 1
        self._last_finish[fid] = items[-1][0] if items else self.virtual
        if not items:
            self._deactivate(fid)
        return item

    def _activate(self, fid: int, finish: float) -> None:
        k = self._n_active
        self._act_finish[k], self._act_flow[k] = finish, fid
        self._act_pos[fid] = k
        self._n_active = k + 1

    def _deactivate(self, fid: int) -> None:
        k, last = self._act_pos[fid], self._n_active - 1
        if k != last:   # move the last active flow into the hole
            moved = int(self._act_flow[last])
            self._act_finish[k], self._act_flow[k] = self._act_finish[last], moved
            self._act_pos[moved] = k
        self._act_finish[last] = INF
        self._act_pos[fid] = -1
        self._n_active = last

"""codec.replay: NonceCache (skew, replay, bounded memory), SequenceWindow, SessionGuard."""
import random

import pytest

from codec import AuthError, ErrorCode, Flag, Frame, FrameType, NonceCache, SequenceWindow, SessionGuard
from codec.replay import DEFAULT_SKEW_MS, DEFAULT_WINDOW

NOW = 1_000_000


def _nonce(i: int) -> bytes:
    return i.to_bytes(8, "big")


def _code(fn, *args):
    with pytest.raises(AuthError) as info:
        fn(*args)
    return info.value.code


# ---- NonceCache -----------------------------------------------------------------------------------

def test_nonce_cache_validates_arguments():
    for kwargs in ({"capacity": 0}, {"skew_ms": -1}):
        with pytest.raises(ValueError):
            NonceCache(**kwargs)
    assert NonceCache().skew_ms == DEFAULT_SKEW_MS


@pytest.mark.parametrize("delta", [-30_000, -1, 0, 1, 30_000])
def test_skew_inside_window_accepted(delta):
    cache = NonceCache(skew_ms=30_000)
    cache.check_and_add(_nonce(1), NOW + delta, NOW)
    assert len(cache) == 1


@pytest.mark.parametrize("delta", [-30_001, 30_001, -NOW, 10**12])
def test_skew_both_directions_rejected(delta):
    cache = NonceCache(skew_ms=30_000)
    assert _code(cache.check_and_add, _nonce(1), NOW + delta, NOW) is ErrorCode.STALE_TIMESTAMP
    assert len(cache) == 0        # a refused opening leaves no trace


def test_replay_rejected_while_timestamp_could_still_be_fresh():
    cache = NonceCache(skew_ms=1000)
    cache.check_and_add(_nonce(1), NOW, NOW)
    for now in (NOW, NOW + 500, NOW + 1000):
        assert _code(cache.check_and_add, _nonce(1), NOW, now) is ErrorCode.REPLAYED_NONCE
    # past the skew the timestamp itself is stale: the nonce can never be accepted again
    assert _code(cache.check_and_add, _nonce(1), NOW, NOW + 1001) is ErrorCode.STALE_TIMESTAMP


def test_replay_with_a_different_timestamp_still_rejected():
    cache = NonceCache(skew_ms=1000)
    cache.check_and_add(_nonce(1), NOW - 1000, NOW)
    assert _code(cache.check_and_add, _nonce(1), NOW + 1000, NOW) is ErrorCode.REPLAYED_NONCE


def test_capacity_bound_fails_closed_then_recovers_after_expiry():
    cache = NonceCache(capacity=4, skew_ms=1000)
    for i in range(4):
        cache.check_and_add(_nonce(i), NOW, NOW)
    err = pytest.raises(AuthError, cache.check_and_add, _nonce(99), NOW, NOW).value
    assert err.code is ErrorCode.REPLAY_CACHE_FULL and err.retryable
    assert len(cache) == 4
    # every live nonce is still remembered while full (a forgotten one would be replayable)
    for i in range(4):
        assert _code(cache.check_and_add, _nonce(i), NOW, NOW + 1000) is ErrorCode.REPLAYED_NONCE
    # after expiry the same cache accepts again
    cache.check_and_add(_nonce(99), NOW + 1001, NOW + 1001)
    assert len(cache) == 1


def test_full_cache_purges_dead_entries_hidden_behind_a_live_head():
    cache = NonceCache(capacity=3, skew_ms=1000)
    cache.check_and_add(_nonce(1), NOW + 1000, NOW)     # expires late, inserted first
    cache.check_and_add(_nonce(2), NOW - 1000, NOW)     # expires at NOW
    cache.check_and_add(_nonce(3), NOW - 1000, NOW)
    cache.check_and_add(_nonce(4), NOW + 1, NOW + 1)    # 2 and 3 are dead behind 1
    assert len(cache) == 2
    assert _code(cache.check_and_add, _nonce(1), NOW + 1000, NOW + 1) is ErrorCode.REPLAYED_NONCE


def test_memory_never_exceeds_capacity_under_churn():
    rng = random.Random(1234)
    cache = NonceCache(capacity=50, skew_ms=200)
    now, accepted, refused = NOW, 0, set()
    for i in range(5000):
        now += rng.randrange(0, 6)
        ts = now + rng.randrange(-200, 201)
        nonce = _nonce(rng.randrange(0, 400))
        try:
            cache.check_and_add(nonce, ts, now)
            accepted += 1
        except AuthError as exc:
            refused.add(exc.code)
        assert len(cache) <= 50
    assert accepted > 1000
    assert refused == {ErrorCode.REPLAYED_NONCE, ErrorCode.REPLAY_CACHE_FULL}


def test_reused_nonce_after_expiry_is_accepted_and_protected_again():
    cache = NonceCache(capacity=10, skew_ms=100)
    cache.check_and_add(_nonce(7), NOW, NOW)
    cache.check_and_add(_nonce(7), NOW + 500, NOW + 500)
    assert _code(cache.check_and_add, _nonce(7), NOW + 500, NOW + 550) is ErrorCode.REPLAYED_NONCE


# ---- SequenceWindow --------------------------------------------------------------------------------

def _window_code(window, seq):
    return _code(window.check_and_add, seq)


def test_window_validates_size():
    with pytest.raises(ValueError):
        SequenceWindow(0)
    assert SequenceWindow().size == DEFAULT_WINDOW


def test_window_in_order():
    window = SequenceWindow(8)
    for seq in range(100):
        window.check_and_add(seq)
    assert window.highest == 99
    assert _window_code(window, 99) is ErrorCode.SEQUENCE_REPLAY


def test_window_out_of_order_within_window():
    window = SequenceWindow(8)
    for seq in (0, 7, 3, 1, 6, 2, 5, 4):
        window.check_and_add(seq)
    assert window.highest == 7
    for seq in range(8):
        assert _window_code(window, seq) is ErrorCode.SEQUENCE_REPLAY


def test_window_duplicate():
    window = SequenceWindow(8)
    window.check_and_add(5)
    window.check_and_add(3)
    with pytest.raises(AuthError, match="already received"):
        window.check_and_add(3)
    with pytest.raises(AuthError, match="already received"):
        window.check_and_add(5)


def test_window_too_old():
    window = SequenceWindow(8)
    window.check_and_add(20)
    window.check_and_add(13)              # back = 7: the oldest slot in the window
    with pytest.raises(AuthError, match="older than the window"):
        window.check_and_add(12)          # back = 8
    with pytest.raises(AuthError, match="older than the window"):
        window.check_and_add(0)


def test_window_big_jump_forgets_everything_behind():
    window = SequenceWindow(64)
    for seq in range(10):
        window.check_and_add(seq)
    window.check_and_add(10**6)
    assert window.highest == 10**6 and window._bitmap == 1
    window.check_and_add(10**6 - 63)
    assert _window_code(window, 10**6 - 64) is ErrorCode.SEQUENCE_REPLAY
    assert _window_code(window, 9) is ErrorCode.SEQUENCE_REPLAY


def test_window_jump_to_u64_max_keeps_memory_constant():
    window = SequenceWindow(64)
    window.check_and_add(0)
    window.check_and_add(2**64 - 1)
    assert window._bitmap.bit_length() <= 64
    window.check_and_add(2**64 - 2)
    assert _window_code(window, 2**64 - 1) is ErrorCode.SEQUENCE_REPLAY


def test_window_jump_of_exactly_size():
    window = SequenceWindow(8)
    window.check_and_add(0)
    window.check_and_add(8)          # shift == size: 0 is now outside
    assert _window_code(window, 0) is ErrorCode.SEQUENCE_REPLAY
    window.check_and_add(1)          # back = 7: inside and unseen
    window.check_and_add(7)


def test_window_matches_a_reference_set_model():
    rng = random.Random(99)
    size = 16
    window, seen, highest = SequenceWindow(size), set(), -1
    for _ in range(5000):
        seq = max(0, highest + rng.randrange(-24, 24)) if rng.random() < 0.95 else rng.randrange(0, 10**9)
        ok = seq > highest or (highest - seq < size and seq not in seen)
        if ok:
            window.check_and_add(seq)
            seen.add(seq)
            highest = max(highest, seq)
        else:
            assert _window_code(window, seq) is ErrorCode.SEQUENCE_REPLAY
        assert window.highest == highest
        assert window._bitmap <= window._mask


# ---- SessionGuard ------------------------------------------------------------------------------------

N1, N2 = _nonce(0x1111), _nonce(0x2222)


def _frame(ftype=FrameType.HELLO, seq=0, nonce=N1, responder=False, ts=NOW):
    flags = int(Flag.RESPONDER) if responder else 0
    return Frame(ftype, flags, 1, 0, seq, ts, nonce, {})


def test_guard_responder_needs_a_cache():
    with pytest.raises(ValueError):
        SessionGuard(is_responder=True)


def test_guard_responder_opening_rules():
    cache = NonceCache()
    guard = SessionGuard(is_responder=True, nonce_cache=cache)
    assert _code(guard.check, _frame(responder=True), NOW) is ErrorCode.PROTOCOL_VIOLATION
    assert _code(guard.check, _frame(seq=1), NOW) is ErrorCode.PROTOCOL_VIOLATION
    assert _code(guard.check, _frame(FrameType.PING), NOW) is ErrorCode.PROTOCOL_VIOLATION
    assert len(cache) == 0
    guard.check(_frame(), NOW)
    assert guard.session_nonce == N1 and len(cache) == 1
    guard.check(_frame(FrameType.REQUEST, seq=1), NOW)
    assert _code(guard.check, _frame(FrameType.CHUNK, seq=2, nonce=N2), NOW) is ErrorCode.REPLAYED_NONCE
    assert _code(guard.check, _frame(FrameType.CHUNK, seq=1), NOW) is ErrorCode.SEQUENCE_REPLAY


def test_guard_responder_stale_opening_binds_nonce_for_the_refusal():
    guard = SessionGuard(is_responder=True, nonce_cache=NonceCache(skew_ms=10))
    assert _code(guard.check, _frame(ts=NOW - 11), NOW) is ErrorCode.STALE_TIMESTAMP
    assert guard.session_nonce == N1      # so the CLOSE can echo it


def test_guard_second_responder_sharing_cache_refuses_replay():
    cache = NonceCache()
    SessionGuard(is_responder=True, nonce_cache=cache).check(_frame(), NOW)
    other = SessionGuard(is_responder=True, nonce_cache=cache)
    assert _code(other.check, _frame(), NOW + 5) is ErrorCode.REPLAYED_NONCE


def test_guard_initiator_rules():
    guard = SessionGuard(is_responder=False, session_nonce=N1)
    assert _code(guard.check, _frame(responder=False), NOW) is ErrorCode.PROTOCOL_VIOLATION
    assert _code(guard.check, _frame(FrameType.PING, responder=True), NOW) is ErrorCode.PROTOCOL_VIOLATION
    assert _code(guard.check, _frame(nonce=N2, responder=True), NOW) is ErrorCode.REPLAYED_NONCE
    guard.check(_frame(responder=True), NOW)
    guard.check(_frame(FrameType.CHUNK, seq=2, responder=True), NOW)
    guard.check(_frame(FrameType.CHUNK, seq=1, responder=True), NOW)
    assert _code(guard.check, _frame(FrameType.CHUNK, seq=2, responder=True), NOW) \
        is ErrorCode.SEQUENCE_REPLAY


def test_guard_initiator_accepts_close_as_first_answer():
    guard = SessionGuard(is_responder=False, session_nonce=N1)
    guard.check(_frame(FrameType.CLOSE, responder=True), NOW)
    assert guard.window.highest == 0


# ---- NonceCache across a restart: snapshot, restore, floor ----------------------------------------

def test_floor_refuses_older_timestamps_as_stale_and_leaves_no_trace():
    cache = NonceCache(skew_ms=30_000)
    cache.floor_ms = NOW
    assert _code(cache.check_and_add, _nonce(1), NOW - 1, NOW + 5) is ErrorCode.STALE_TIMESTAMP
    assert len(cache) == 0
    cache.check_and_add(_nonce(1), NOW, NOW + 5)      # at the floor: accepted
    cache.check_and_add(_nonce(2), NOW + 10, NOW + 5)


def test_snapshot_restore_carries_live_nonces_into_a_new_cache():
    old = NonceCache(skew_ms=1000)
    old.check_and_add(_nonce(1), NOW - 900, NOW)     # expires at NOW + 100
    old.check_and_add(_nonce(2), NOW, NOW)           # expires at NOW + 1000
    snap = old.snapshot(NOW + 200)                   # nonce 1 is dead by then
    assert snap.nonces == ((_nonce(2), NOW),) and snap.floor_ms == 0
    new = NonceCache(skew_ms=1000)
    new.restore(snap, NOW + 300)
    assert len(new) == 1
    assert _code(new.check_and_add, _nonce(2), NOW, NOW + 300) is ErrorCode.REPLAYED_NONCE
    new.check_and_add(_nonce(1), NOW + 300, NOW + 300)   # a dead nonce is free again


def test_restore_drops_what_died_while_the_server_was_down_and_keeps_the_higher_floor():
    old = NonceCache(skew_ms=1000)
    old.floor_ms = NOW - 50
    old.check_and_add(_nonce(1), NOW, NOW)
    new = NonceCache(skew_ms=1000)
    new.floor_ms = NOW - 500
    new.restore(old.snapshot(NOW), NOW + 1001)
    assert len(new) == 0 and new.floor_ms == NOW - 50


def test_restore_judges_nonces_with_the_new_skew():
    old = NonceCache(skew_ms=1000)
    old.check_and_add(_nonce(1), NOW, NOW)
    new = NonceCache(skew_ms=5000)                   # configured wider since
    new.restore(old.snapshot(NOW), NOW + 3000)
    assert _code(new.check_and_add, _nonce(1), NOW, NOW + 3000) is ErrorCode.REPLAYED_NONCE


def test_restore_over_capacity_fails_closed_by_raising_the_floor():
    old = NonceCache(capacity=10, skew_ms=1000)
    for i in range(10):
        old.check_and_add(_nonce(i), NOW + i, NOW)
    new = NonceCache(capacity=4, skew_ms=1000)       # configured smaller since
    new.restore(old.snapshot(NOW), NOW)
    assert len(new) == 4 and new.floor_ms == NOW + 6
    for i in range(10):    # every restored HELLO is refused: replayed or, if forgotten, stale
        code = _code(new.check_and_add, _nonce(i), NOW + i, NOW + 1)
        assert code is (ErrorCode.REPLAYED_NONCE if i >= 6 else ErrorCode.STALE_TIMESTAMP)

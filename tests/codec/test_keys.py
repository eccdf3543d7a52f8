"""codec.keys: current key signs, rotation grace for the old key, UNKNOWN_KEY, bad key material."""
import pytest

from codec import AuthError, ErrorCode, FrameType, Keyring, open_frame, seal
from codec.keys import MIN_KEY_BYTES

from . import frame_factory as ff

NOW = ff.NOW
K1, K2, K3 = b"1" * 32, b"2" * 32, b"3" * 16


def _sealed(keyring, now=NOW):
    return seal(keyring.signer, keyring.current_id, FrameType.PING, 0, 0, 0, now, ff.NONCE, {"d": 1})


def _verifies(keyring, wire, now):
    return open_frame(wire, 0, keyring, now_ms=now)[0].key_id


def test_single_key_becomes_current(codec_backend):
    ring = Keyring({1: K1})
    assert ring.current_id == 1 and len(ring) == 1 and 1 in ring and 2 not in ring


def test_several_keys_need_an_explicit_current(codec_backend):
    ring = Keyring({1: K1, 2: K2})
    assert ring.current_id is None
    with pytest.raises(AuthError) as info:
        ring.signer
    assert info.value.code is ErrorCode.UNKNOWN_KEY
    ring.set_current(2)
    assert _sealed(ring)[8:12] == (2).to_bytes(4, "big")


def test_empty_keyring_cannot_sign_or_verify(codec_backend):
    ring = Keyring()
    with pytest.raises(AuthError):
        ring.signer
    with pytest.raises(AuthError) as info:
        ring.verifier(1, NOW)
    assert info.value.code is ErrorCode.UNKNOWN_KEY


def test_current_key_signs_with_its_secret(codec_backend):
    ring = Keyring({1: K1, 2: K2}, current_id=2)
    wire = _sealed(ring)
    assert ff.header(wire)["key_id"] == 2
    assert wire[-32:] == ff.sign(wire[:-32], K2)


def test_set_current_unknown_id(codec_backend):
    with pytest.raises(KeyError):
        Keyring({1: K1}, current_id=5)


def test_rotation_grace_then_unknown_key(codec_backend):
    sender = Keyring({1: K1})
    receiver = Keyring({1: K1})
    old_frame = _sealed(sender)
    receiver.rotate(2, K2, now_ms=NOW, grace_ms=5_000)
    sender.rotate(2, K2, now_ms=NOW, grace_ms=5_000)
    assert receiver.current_id == 2
    new_frame = _sealed(sender)
    assert ff.header(new_frame)["key_id"] == 2            # the new current key signs
    assert _verifies(receiver, old_frame, NOW) == 1
    assert _verifies(receiver, old_frame, NOW + 5_000) == 1   # grace is inclusive
    with pytest.raises(AuthError) as info:
        _verifies(receiver, old_frame, NOW + 5_001)
    assert info.value.code is ErrorCode.UNKNOWN_KEY
    assert _verifies(receiver, new_frame, NOW + 10**9) == 2   # the current key never expires


def test_rotation_chain_each_old_key_keeps_its_own_expiry(codec_backend):
    ring = Keyring({1: K1})
    ring.rotate(2, K2, now_ms=0, grace_ms=100)
    ring.rotate(3, K3, now_ms=50, grace_ms=1000)
    assert ring.verifier(1, 100) and ring.verifier(2, 1050) and ring.verifier(3, 10**12)
    for key_id, dead_at in ((1, 101), (2, 1051)):
        with pytest.raises(AuthError, match="expired"):
            ring.verifier(key_id, dead_at)


def test_rotating_to_the_same_id_sets_no_expiry(codec_backend):
    ring = Keyring({1: K1})
    ring.rotate(1, K2, now_ms=0, grace_ms=10)
    assert ring.verifier(1, 10**9) is ring.signer
    assert _sealed(ring)[-32:] == ff.sign(_sealed(ring)[:-32], K2)


def test_readding_a_key_without_expiry_revives_it(codec_backend):
    ring = Keyring({1: K1})
    ring.rotate(2, K2, now_ms=0, grace_ms=10)
    ring.add(1, K1)
    assert ring.verifier(1, 10**9)


def test_add_with_explicit_expiry(codec_backend):
    ring = Keyring({1: K1})
    ring.add(4, K2, expires_ms=500)
    assert ring.verifier(4, 500)
    with pytest.raises(AuthError):
        ring.verifier(4, 501)


def test_remove(codec_backend):
    ring = Keyring({1: K1})
    ring.remove(1)
    assert 1 not in ring and ring.current_id is None
    with pytest.raises(AuthError):
        ring.signer
    ring.remove(1)   # idempotent
    assert len(ring) == 0


def test_unknown_key_id_in_frame(codec_backend):
    wire = _sealed(Keyring({1: K1}))
    with pytest.raises(AuthError) as info:
        open_frame(wire, 0, Keyring({2: K1}), now_ms=NOW)
    assert info.value.code is ErrorCode.UNKNOWN_KEY


def test_same_id_different_secret_is_bad_signature(codec_backend):
    wire = _sealed(Keyring({1: K1}))
    with pytest.raises(AuthError) as info:
        open_frame(wire, 0, Keyring({1: K2}), now_ms=NOW)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize("secret", [b"", b"x" * (MIN_KEY_BYTES - 1), "s" * 32, None, 12345,
                                    memoryview(b"x" * 32)])
def test_bad_key_material_rejected(codec_backend, secret):
    with pytest.raises(ValueError):
        Keyring({1: secret})
    with pytest.raises(ValueError):
        Keyring().add(1, secret)


@pytest.mark.parametrize("key_id", [-1, 1 << 32, "1", 1.0, None])
def test_bad_key_ids_rejected(codec_backend, key_id):
    with pytest.raises(ValueError):
        Keyring().add(key_id, K1)


def test_minimum_key_and_bytearray_accepted(codec_backend):
    ring = Keyring({0: bytearray(b"k" * MIN_KEY_BYTES), 0xFFFFFFFF: K1}, current_id=0)
    wire = _sealed(ring)
    assert wire[-32:] == ff.sign(wire[:-32], b"k" * MIN_KEY_BYTES)
    assert _verifies(ring, wire, NOW) == 0


def test_key_material_is_copied(codec_backend):
    secret = bytearray(K1)
    ring = Keyring({1: secret})
    secret[:] = K2
    wire = _sealed(ring)
    assert wire[-32:] == ff.sign(wire[:-32], K1)

"""codec._native (native/atp_native.c) against its contract, codec._pure: same results, same errors.

Skipped as a whole when the optional C extension is not built
(`python setup.py build_ext --inplace`). Every HMAC check runs under each SHA-256 compressor the
native module has (x86 SHA-NI when the CPU has it, and always the portable C one).
"""
import copy
import hashlib
import hmac
import pickle
import struct
import sys

import pytest

native = pytest.importorskip(
    "codec._native",
    reason="optional C extension codec._native is not built (python setup.py build_ext --inplace)",
)

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from codec import _pure as pure  # noqa: E402

TWINS = (pure, native)


def _sha_backends():
    names = ["portable"]
    try:
        native._set_sha256_backend("shani")
        names.append("shani")
    except ValueError:
        pass
    native._set_sha256_backend("auto")
    return names


SHA_BACKENDS = _sha_backends()


@pytest.fixture(autouse=True, scope="module")
def _restore_sha_backend():
    yield
    native._set_sha256_backend("auto")


def each_sha_backend():
    """Yield once per native SHA-256 compressor, leaving the automatic choice in place after."""
    try:
        for name in SHA_BACKENDS:
            native._set_sha256_backend(name)
            yield name
    finally:
        native._set_sha256_backend("auto")


def outcome(fn, *args, **kwargs):
    """('ok', result) or ('raise', exception type): what the twins must agree on."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the type is the thing compared
        return ("raise", type(exc))


def same_outcome(name, *args, **kwargs):
    """Call module-level `name` (or a callable factory of the twin) in both twins; must agree."""
    results = [outcome(getattr(m, name), *args, **kwargs) for m in TWINS]
    results = [("ok", "<HmacKey>") if isinstance(r[1], (pure.HmacKey, native.HmacKey)) else r
               for r in results]
    assert results[0] == results[1], f"{name}{args}: pure {results[0]} != native {results[1]}"
    return results[0]


def keys(key):
    return pure.HmacKey(key), native.HmacKey(key)


def same_method(key, method, *args, **kwargs):
    results = []
    for sha in each_sha_backend():
        pk, nk = keys(key)
        p = outcome(getattr(pk, method), *args, **kwargs)
        n = outcome(getattr(nk, method), *args, **kwargs)
        assert p == n, f"{method}{args!r} [{sha}]: pure {p} != native {n}"
        results.append(p)
    return results[0]


u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
key_bytes = st.binary(min_size=1, max_size=200)
nonces = st.binary(min_size=8, max_size=8)
buffer_kinds = st.sampled_from([bytes, bytearray, memoryview])


# ---- module surface -----------------------------------------------------------------------------

def test_constants_and_public_names():
    assert native.HEADER_SIZE == pure.HEADER_SIZE == 40
    assert native.TAG_SIZE == pure.TAG_SIZE == 32
    assert native.NAME == "native" and pure.NAME == "pure"
    assert native.HEADER.format == pure.HEADER.format and native.HEADER.size == 40

    def public(m):
        return {n for n in dir(m) if not n.startswith("_")} - {"hashlib", "hmac", "struct"}

    assert public(native) == public(pure)


def test_hmackey_fixed_layout():
    k = native.HmacKey(b"k")
    with pytest.raises(AttributeError):
        k.anything = 1
    assert not hasattr(k, "__dict__")
    with pytest.raises(TypeError):
        native.HmacKey(b"k", b"extra")


# ---- RFC 4231 HMAC-SHA256 test vectors ----------------------------------------------------------

RFC4231 = [
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\x0c" * 20, b"Test With Truncation",
     "a3b6167473100ee06e0c796c2955552b"),  # truncated to 128 bits
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size data. "
     b"The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("key,data,expected", RFC4231, ids=[f"case{i}" for i in range(1, 8)])
def test_rfc4231(key, data, expected):
    want = bytes.fromhex(expected)
    for sha in each_sha_backend():
        for twin in TWINS:
            tag = twin.HmacKey(key).sign(data)
            assert len(tag) == 32
            assert tag[:len(want)] == want, (twin.NAME, sha)


def test_sha256_block_boundaries_against_hashlib():
    # message lengths around every padding edge, keys around the 64-byte block size
    for sha in each_sha_backend():
        for klen in (1, 63, 64, 65, 200):
            key = bytes((7 * i + klen) & 0xFF for i in range(klen))
            nk = native.HmacKey(key)
            for mlen in list(range(0, 140)) + [183, 184, 191, 192, 1000, 4097]:
                msg = bytes((i * 31 + mlen) & 0xFF for i in range(mlen))
                assert nk.sign(msg) == hmac.new(key, msg, hashlib.sha256).digest(), (sha, klen, mlen)


# ---- properties: identical results --------------------------------------------------------------

@given(key=key_bytes, data=st.binary(max_size=600), kind=buffer_kinds)
def test_sign_identical(key, data, kind):
    want = hmac.new(key, data, hashlib.sha256).digest()
    assert same_method(key, "sign", kind(data)) == ("ok", want)
    assert same_method(bytearray(key), "sign", data=kind(data)) == ("ok", want)


@settings(max_examples=150)
@given(key=key_bytes, ftype=u8, flags=u8, key_id=u32, stream_id=u32, sequence=u64,
       timestamp_ms=u64, nonce=nonces, payload=st.binary(max_size=500), kind=buffer_kinds)
@example(key=b"k", ftype=0xFF, flags=0xFF, key_id=0xFFFFFFFF, stream_id=0xFFFFFFFF,
         sequence=2**64 - 1, timestamp_ms=2**64 - 1, nonce=b"\xff" * 8, payload=b"", kind=bytes)
def test_seal_peek_verify_identical(key, ftype, flags, key_id, stream_id, sequence, timestamp_ms,
                                    nonce, payload, kind):
    args = (ftype, flags, key_id, stream_id, sequence, timestamp_ms, nonce, kind(payload))
    status, frame = same_method(key, "seal", *args)
    assert status == "ok"
    assert len(frame) == 40 + len(payload) + 32
    assert frame[40:-32] == payload
    assert frame[-32:] == hmac.new(key, frame[:-32], hashlib.sha256).digest()
    header = (len(payload), 1, ftype, flags, 0, key_id, stream_id, sequence, timestamp_ms, nonce)
    assert same_outcome("peek_frame", kind(frame)) == ("ok", header)
    assert same_outcome("peek_frame", kind(frame), len(frame) - 40)[0] == "ok"
    assert same_method(key, "verify", kind(frame), 0, len(frame)) == ("ok", True)
    kw = dict(zip(("ftype", "flags", "key_id", "stream_id", "sequence", "timestamp_ms", "nonce",
                   "payload"), args))
    assert same_method(key, "seal", **kw) == ("ok", frame)
    # sealed inside a bigger buffer
    wrapped = b"\x00" * 5 + frame + b"\xee" * 3
    assert same_method(key, "verify", kind(wrapped), 5, 5 + len(frame)) == ("ok", True)
    assert same_method(key, "verify", buf=wrapped, start=5, end=5 + len(frame)) == ("ok", True)
    assert same_outcome("peek_frame", buf=kind(wrapped), offset=5) == ("ok", header)


@given(buf=st.binary(max_size=120), offset=st.integers(-60, 140), kind=buffer_kinds)
@example(buf=b"\x00" * 50, offset=-40, kind=bytes)   # struct alone would read from the end
@example(buf=b"\x00" * 50, offset=51, kind=bytes)    # past the end
@example(buf=b"\x00" * 50, offset=50, kind=bytes)    # at the end: None
@example(buf=b"\x00" * 50, offset=10, kind=bytes)    # exactly one header
def test_peek_frame_identical(buf, offset, kind):
    res = same_outcome("peek_frame", kind(buf), offset)
    if offset < 0 or offset > len(buf):
        assert res == ("raise", ValueError)
    elif len(buf) - offset < 40:
        assert res == ("ok", None)
    else:
        assert res == ("ok", struct.unpack_from(">IBBBBIIQQ8s", buf, offset))


@given(key=key_bytes, buf=st.binary(max_size=150),
       start=st.one_of(st.integers(-40, 160), st.sampled_from([-2**70, 2**70, 2**63, -2**63])),
       end=st.one_of(st.integers(-40, 200), st.sampled_from([-2**70, 2**70, 2**63, -2**63])),
       kind=buffer_kinds)
def test_verify_random_ranges_identical(key, buf, start, end, kind):
    res = same_method(key, "verify", kind(buf), start, end)
    assert res[0] == "ok"
    if start < 0 or end > len(buf) or end - start < 32:
        assert res == ("ok", False)


@given(key=key_bytes, payload=st.binary(max_size=100), other=key_bytes,
       pos=st.integers(0, 31), bit=st.integers(0, 7))
def test_verify_rejects_tampering(key, payload, other, pos, bit):
    pk, nk = keys(key)
    frame = pk.seal(1, 0, 1, 1, 1, 1, b"N" * 8, payload)
    tampered = bytearray(frame)
    tampered[-32 + pos] ^= 1 << bit
    assert same_method(key, "verify", tampered, 0, len(frame)) == ("ok", False)
    # truncated / shifted windows
    assert same_method(key, "verify", frame, 0, len(frame) - 1) == ("ok", False)
    assert same_method(key, "verify", frame, 1, len(frame)) == ("ok", False)
    # another key
    if other == key:
        other = bytes([key[0] ^ 1]) + key[1:]
    assert same_method(other, "verify", frame, 0, len(frame)) == ("ok", False)


@settings(max_examples=25, deadline=None)
@given(key=key_bytes, payload=st.binary(max_size=40))
def test_every_single_bit_flip_fails_verify(key, payload):
    pk, nk = keys(key)
    frame = nk.seal(2, 1, 3, 4, 5, 6, b"12345678", payload)
    assert pk.verify(frame, 0, len(frame)) and nk.verify(frame, 0, len(frame))
    work = bytearray(frame)
    for i in range(len(frame)):
        for b in range(8):
            work[i] ^= 1 << b
            assert pk.verify(work, 0, len(work)) is False
            assert nk.verify(work, 0, len(work)) is False
            work[i] ^= 1 << b
    assert bytes(work) == frame


def test_every_single_bit_flip_fails_verify_400_byte_frame():
    key = b"\x5a" * 32
    for sha in each_sha_backend():
        nk = native.HmacKey(key)
        frame = nk.seal(3, 0, 7, 1, 42, 1_700_000_000_000, b"\x01" * 8, bytes(range(256)) + bytes(72))
        assert len(frame) == 400 and pure.HmacKey(key).verify(frame, 0, 400)
        work = bytearray(frame)
        for i in range(len(frame)):
            for b in range(8):
                work[i] ^= 1 << b
                assert nk.verify(work, 0, 400) is False, (sha, i, b)
                work[i] ^= 1 << b


# ---- errors agree --------------------------------------------------------------------------------

class Idx:
    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v


@pytest.mark.parametrize("key", [b"", bytearray(), "key", memoryview(b"key"), 123, None, [1, 2]])
def test_bad_keys(key):
    assert same_outcome("HmacKey", key) == ("raise", ValueError)


def test_key_constructor_arguments():
    assert same_outcome("HmacKey")[1] is TypeError
    assert same_outcome("HmacKey", key=b"k")[0] == "ok"
    assert same_outcome("HmacKey", b"k", key=b"k")[1] is TypeError

    class BytesSub(bytes):
        pass

    assert keys(BytesSub(b"abc"))[1].sign(b"m") == keys(b"abc")[0].sign(b"m")


NONCE = b"12345678"
GOOD = (1, 2, 3, 4, 5, 6, NONCE, b"payload")


def _with(i, value, base=GOOD):
    return base[:i] + (value,) + base[i + 1:]


BAD_SEAL = [
    # (description, args, expected exception type)
    ("ftype 256", _with(0, 256), ValueError),
    ("ftype -1", _with(0, -1), ValueError),
    ("ftype 2**70", _with(0, 2**70), ValueError),
    ("ftype float", _with(0, 1.0), TypeError),
    ("ftype str", _with(0, "1"), TypeError),
    ("ftype None", _with(0, None), TypeError),
    ("flags 256", _with(1, 256), ValueError),
    ("key_id 2**32", _with(2, 2**32), ValueError),
    ("key_id -1", _with(2, -1), ValueError),
    ("stream_id 2**32", _with(3, 2**32), ValueError),
    ("stream_id float", _with(3, 0.5), TypeError),
    ("sequence 2**64", _with(4, 2**64), ValueError),
    ("sequence -1", _with(4, -1), ValueError),
    ("timestamp 2**64", _with(5, 2**64), ValueError),
    ("timestamp -(2**80)", _with(5, -(2**80)), ValueError),
    ("nonce 7 bytes", _with(6, b"1234567"), ValueError),
    ("nonce 9 bytes", _with(6, b"123456789"), ValueError),
    ("nonce empty", _with(6, b""), ValueError),
    ("nonce str", _with(6, "12345678"), TypeError),
    ("nonce memoryview", _with(6, memoryview(NONCE)), TypeError),
    ("nonce None", _with(6, None), TypeError),
    ("nonce int", _with(6, 8), TypeError),
    ("payload str", _with(7, "text"), TypeError),
    ("payload None", _with(7, None), TypeError),
    ("payload int", _with(7, 5), TypeError),
    ("payload list", _with(7, [1, 2]), TypeError),
    ("payload strided", _with(7, memoryview(bytes(20))[::2]), TypeError),
    # the first bad argument in parameter order decides
    ("float ftype before short nonce", _with(6, b"1", _with(0, 1.5)), TypeError),
    ("big ftype before str nonce", _with(6, "x", _with(0, 999)), ValueError),
    ("short nonce before str payload", _with(7, "x", _with(6, b"1")), ValueError),
    ("bad flags before float sequence", _with(4, 1.5, _with(1, 300)), ValueError),
]


@pytest.mark.parametrize("desc,args,exc", BAD_SEAL, ids=[d for d, _, _ in BAD_SEAL])
def test_seal_bad_arguments(desc, args, exc):
    assert same_method(b"key", "seal", *args) == ("raise", exc)


def test_seal_accepts_index_objects_and_bools():
    ok = same_method(b"key", "seal", Idx(7), True, Idx(2**32 - 1), False, Idx(2**64 - 1), 0,
                     bytearray(NONCE), bytearray(b"p"))
    assert ok[0] == "ok"
    assert ok[1] == pure.HmacKey(b"key").seal(7, 1, 2**32 - 1, 0, 2**64 - 1, 0, NONCE, b"p")


def test_seal_arity():
    assert same_method(b"key", "seal", *GOOD[:7])[1] is TypeError
    assert same_method(b"key", "seal", *GOOD, b"extra")[1] is TypeError
    assert same_method(b"key", "seal", *GOOD[:7], payload=b"x")[0] == "ok"
    assert same_method(b"key", "seal", *GOOD, payload=b"x")[1] is TypeError
    assert same_method(b"key", "seal", *GOOD[:7], bogus=b"x")[1] is TypeError


@pytest.mark.parametrize("data,exc", [
    ("text", TypeError), (None, TypeError), (5, TypeError),
    (memoryview(bytes(64))[::2], BufferError),
])
def test_sign_bad_data(data, exc):
    assert same_method(b"key", "sign", data) == ("raise", exc)
    assert same_method(b"key", "sign")[1] is TypeError


FRAME = pure.HmacKey(b"key").seal(*GOOD)


@pytest.mark.parametrize("args,expected", [
    ((FRAME, 0.0, len(FRAME)), ("raise", TypeError)),
    ((FRAME, 0, float(len(FRAME))), ("raise", TypeError)),
    ((FRAME, "0", len(FRAME)), ("raise", TypeError)),
    ((FRAME, Idx(0), Idx(len(FRAME))), ("ok", True)),
    ((FRAME, True, len(FRAME)), ("ok", False)),
    (("short str", 0, 5), ("ok", False)),            # range check before the buffer is taken
    (("x" * 100, 0, 100), ("raise", TypeError)),
    ((None, 0, 40), ("raise", TypeError)),
    ((12345, 0, 40), ("raise", TypeError)),
    ((memoryview(FRAME * 2)[::2], 0, len(FRAME)), ("raise", BufferError)),
    ((FRAME, -2**70, len(FRAME)), ("ok", False)),
    ((FRAME, 0, 2**70), ("ok", False)),
    ((FRAME, 2**70, len(FRAME)), ("ok", False)),
    ((FRAME, 0, -2**70), ("ok", False)),
    ((FRAME, len(FRAME), 0), ("ok", False)),
])
def test_verify_edge_arguments(args, expected):
    assert same_method(b"key", "verify", *args) == expected


def test_verify_arity():
    assert same_method(b"key", "verify", FRAME, 0)[1] is TypeError
    assert same_method(b"key", "verify", FRAME, 0, 1, 2)[1] is TypeError
    assert same_method(b"key", "verify", FRAME, 0, end=len(FRAME)) == ("ok", True)


@pytest.mark.parametrize("args,kwargs,expected", [
    ((FRAME, -1), {}, ValueError),
    ((FRAME, -len(FRAME)), {}, ValueError),
    ((FRAME, len(FRAME) + 1), {}, ValueError),
    ((FRAME, 2**70), {}, ValueError),
    ((FRAME, -2**70), {}, ValueError),
    ((b"", 1), {}, ValueError),
    ((FRAME, 1.0), {}, TypeError),
    ((FRAME, "0"), {}, TypeError),
    ((b"short", 0.0), {}, TypeError),
    (("x" * 100,), {}, TypeError),
    ((None,), {}, TypeError),
    ((memoryview(FRAME * 2)[::2],), {}, BufferError),
    ((), {}, TypeError),
    ((FRAME, 0, 0), {}, TypeError),
    ((FRAME,), {"offset": 0, "bogus": 1}, TypeError),
    ((FRAME, 0), {"offset": 0}, TypeError),
])
def test_peek_frame_bad_arguments(args, kwargs, expected):
    assert same_outcome("peek_frame", *args, **kwargs) == ("raise", expected)


def test_peek_frame_short_inputs_give_none_before_buffer_checks():
    assert same_outcome("peek_frame", "short str") == ("ok", None)
    assert same_outcome("peek_frame", FRAME, Idx(len(FRAME))) == ("ok", None)


def test_uninitialised_key():
    for twin in TWINS:
        k = twin.HmacKey.__new__(twin.HmacKey)
        with pytest.raises(AttributeError):
            k.sign(b"x")
        with pytest.raises(AttributeError):
            k.verify(FRAME, 0, len(FRAME))
        assert k.verify(FRAME, 0, 3) is False
        with pytest.raises(AttributeError):
            k.seal(*GOOD)
        with pytest.raises(ValueError):  # argument errors come first
            k.seal(*_with(0, 300))


def test_reinit_and_failed_reinit():
    for twin in TWINS:
        k = twin.HmacKey(b"one")
        k.__init__(b"two")
        assert k.sign(b"m") == hmac.new(b"two", b"m", hashlib.sha256).digest()
        with pytest.raises(ValueError):
            k.__init__(b"")
        assert k.sign(b"m") == hmac.new(b"two", b"m", hashlib.sha256).digest()


def test_copy_pickle_parity():
    pk, nk = keys(b"key")
    assert copy.copy(nk).sign(b"m") == copy.copy(pk).sign(b"m") == pk.sign(b"m")
    for fn in (copy.deepcopy, pickle.dumps):
        for k in (pk, nk):
            with pytest.raises(TypeError):
                fn(k)


# ---- buffers are released and references balanced on every path ---------------------------------

def _resizable(ba):
    """A bytearray can only change size when no buffer export is outstanding."""
    ba.append(0)
    ba.pop()
    return True


def test_buffers_released_on_all_paths():
    nk = native.HmacKey(b"key")
    frame = bytearray(nk.seal(*GOOD))
    fresh = native.HmacKey.__new__(native.HmacKey)
    for _ in range(3):
        nk.sign(frame)
        nk.verify(frame, 0, len(frame))
        nk.verify(frame, 0, len(frame) - 1)
        native.peek_frame(frame)
        native.peek_frame(frame, 3)
        nk.seal(*_with(7, frame))
        with pytest.raises(AttributeError):
            fresh.sign(frame)
        with pytest.raises(AttributeError):
            fresh.verify(frame, 0, len(frame))
        with pytest.raises(AttributeError):
            fresh.seal(*_with(7, frame))
        with pytest.raises(ValueError):
            nk.seal(*_with(6, b"1", _with(7, frame)))
        with pytest.raises(ValueError):
            native.peek_frame(frame, -1)
    assert _resizable(frame)
    mv = memoryview(frame)
    nk.sign(mv)
    nk.verify(mv, 0, len(frame))
    native.peek_frame(mv)
    nk.seal(*_with(7, mv))
    mv.release()
    assert _resizable(frame)


@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="needs CPython refcounts")
def test_reference_counts_balanced():
    nk = native.HmacKey(b"key")
    payload = bytes(range(200)) * 2
    nonce = bytes(NONCE)
    frame = nk.seal(*_with(6, nonce, _with(7, payload)))
    big = 2**90
    bad = "not bytes"
    objs = (payload, nonce, frame, big, bad)
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(200):
        nk.sign(payload)
        nk.verify(frame, 0, len(frame))
        nk.verify(frame, big, len(frame))
        native.peek_frame(frame)
        nk.seal(*_with(6, nonce, _with(7, payload)))
        for call in (lambda: nk.seal(*_with(0, big, _with(7, payload))),
                     lambda: nk.seal(*_with(6, bad, _with(7, payload))),
                     lambda: nk.seal(*_with(6, nonce, _with(7, bad))),
                     lambda: nk.sign(bad),
                     lambda: native.peek_frame(frame, big),
                     lambda: native.peek_frame(bad * 20)):
            with pytest.raises((TypeError, ValueError)):
                call()
    assert [sys.getrefcount(o) for o in objs] == before

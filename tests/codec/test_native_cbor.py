"""decode_cbor, the strict CBOR decoder of both codec twins: same acceptance, same objects.

codec._pure.decode_cbor is cbor2 (as codec.payload used it before the twins) and is the
reference; codec._native.decode_cbor is the C decoder. For every input both must either raise
ValueError or return equal objects of identical types (floats compared bit for bit, so -0.0 and
NaN payloads count). The targeted tests pin the rules themselves against each available twin, so
they also run, pure only, when the C extension is not built; twin-equality tests are then skipped.

Rules pinned here (found by experiment against cbor2 6.x, then mirrored by the C twin):
  * depth: max_depth bounds how many containers may be nested, the top-level item (if a container)
    being the first; an empty container counts like any other (PROTOCOL.md §6.1 rule 8), so
    max_depth=1: a0, 80, 81 01 pass; 81 a0, 81 80, 81 81 01 fail; max_depth=0: only a scalar;
  * non-minimal integer and length encodings (18 01, 59 00 01 ..) are accepted, as cbor2 does;
  * simple values: f7 -> cbor2.undefined, e0..f3 -> CBORSimpleValue(0..19), f8 20..ff ->
    CBORSimpleValue(32..255), f8 00..1f -> error; keys must be text or byte strings.
"""
import inspect
import math
import os
import struct
import tracemalloc

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codec import _pure as pure
from codec import backend
from codec.errors import PayloadError
from codec.payload import DEFAULT_LIMITS, Limits, decode, decode_span, encode

try:
    from codec import _native as native
except ImportError:  # the optional C build did not happen
    native = None

TWINS = [pure] + ([native] if native is not None else [])
needs_native = pytest.mark.skipif(native is None, reason="codec._native is not built "
                                  "(python setup.py build_ext --inplace)")
twin_param = pytest.mark.parametrize("twin", TWINS, ids=[t.NAME for t in TWINS])
# examples per property: ATP_CBOR_EXAMPLES (default 200); e.g. 5000 for a long local run
FAST = settings(max_examples=int(os.environ.get("ATP_CBOR_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- comparison helpers ---------------------------------------------------------------------------

def same(a, b):
    """Equal values of identical types, floats bit for bit (so NaN == NaN, 0.0 != -0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack(">d", a) == struct.pack(">d", b)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return (len(a) == len(b) and all(same(ka, kb) for ka, kb in zip(a, b))
                and all(same(a[k], b[k]) for k in a))
    return a == b


def nan_equal(a, b):
    """== with NaN equal to NaN and types checked (the original value vs a decoded one)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is list:
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    return a == b


def outcome(twin, buf, start=0, end=None, max_depth=8):
    end = len(buf) if end is None else end
    try:
        return ("ok", twin.decode_cbor(buf, start, end, max_depth))
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return ("raise", type(exc))


def agree(buf, start=0, end=None, max_depth=8):
    """Both twins on the same input: both raise the same exception type or return the same()."""
    results = [outcome(t, buf, start, end, max_depth) for t in TWINS]
    first = results[0]
    for other in results[1:]:
        assert first[0] == other[0], f"{bytes(buf)[:64].hex()}: pure {first} != native {other}"
        if first[0] == "raise":
            assert first[1] is other[1], f"{bytes(buf)[:64].hex()}: {first[1]} != {other[1]}"
        else:
            assert same(first[1], other[1]), f"{bytes(buf)[:64].hex()}: {first[1]!r} != {other[1]!r}"
    return first


def expect(buf, value=ValueError, max_depth=8):
    """Every twin gives `value` (compared with same()) or raises ValueError when it is ValueError."""
    for twin in TWINS:
        got = outcome(twin, buf, max_depth=max_depth)
        if value is ValueError:
            assert got == ("raise", ValueError), f"{twin.NAME} {buf.hex()}: {got}"
        else:
            assert got[0] == "ok" and same(got[1], value), f"{twin.NAME} {buf.hex()}: {got}"
    agree(buf, max_depth=max_depth)


def H(s):
    return bytes.fromhex(s.replace(" ", ""))


# ---- strategies -----------------------------------------------------------------------------------

keys = st.text(max_size=10) | st.binary(max_size=10)
ints = (st.integers(-(1 << 64), (1 << 64) - 1)
        | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32,
                           (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -1, -24, -25, -256, -257,
                           -(1 << 63), -(1 << 63) - 1, -(1 << 64)]))
floats = (st.floats() | st.floats(width=32) | st.floats(width=16)
          | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 2.2250738585072014e-308,
                             5.960464477539063e-08, 6.097555160522461e-05, 65504.0, 1.401298464324817e-45]))
scalars = (st.none() | st.booleans() | ints | floats | st.text(max_size=40) | st.binary(max_size=40)
           | st.text(alphabet=st.characters(min_codepoint=0x80, codec="utf-8"), max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(keys, inner, max_size=6), max_leaves=40)


def depth_of(v):
    """Containers on the deepest path (a scalar 0, [] and [1] 1), the quantity max_depth bounds."""
    if isinstance(v, list):
        return 1 + max((depth_of(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((max(depth_of(k), depth_of(x)) for k, x in v.items()), default=0)
    return 0


def _head(draw, major, n):
    """A CBOR head for `n`, in its shortest form or (drawn) any wider one: non-minimal on purpose."""
    forms = [(w, ai) for w, ai in ((1, 24), (2, 25), (4, 26), (8, 27)) if n < 1 << (8 * w)]
    if n < 24:
        forms.insert(0, (0, n))
    w, ai = draw(st.sampled_from(forms))
    return bytes([major << 5 | ai]) + (n.to_bytes(w, "big") if w else b"")


def _float(draw, x):
    """x as a double, or as a single/half when that is bit-exact (drawn)."""
    forms = [b"\xfb" + struct.pack(">d", x)]
    for tag, fmt in ((b"\xfa", ">f"), (b"\xf9", ">e")):
        try:
            packed = struct.pack(fmt, x)
        except OverflowError:
            continue
        if struct.pack(">d", struct.unpack(fmt, packed)[0]) == struct.pack(">d", x):
            forms.append(tag + packed)
    return draw(st.sampled_from(forms))


def loose_encode(draw, v):
    """A valid, often non-canonical encoding of v: widened heads, any float width that fits."""
    if v is False:
        return b"\xf4"
    if v is True:
        return b"\xf5"
    if v is None:
        return b"\xf6"
    if type(v) is int:
        return _head(draw, 0, v) if v >= 0 else _head(draw, 1, -1 - v)
    if type(v) is float:
        return _float(draw, v)
    if type(v) is bytes:
        return _head(draw, 2, len(v)) + v
    if type(v) is str:
        raw = v.encode()
        return _head(draw, 3, len(raw)) + raw
    if type(v) is list:
        return _head(draw, 4, len(v)) + b"".join(loose_encode(draw, x) for x in v)
    assert type(v) is dict
    return _head(draw, 5, len(v)) + b"".join(loose_encode(draw, k) + loose_encode(draw, x)
                                             for k, x in v.items())


# ---- the twin interface ---------------------------------------------------------------------------

@needs_native
def test_both_twins_export_decode_cbor():
    assert inspect.signature(native.decode_cbor) == inspect.signature(pure.decode_cbor)
    assert list(inspect.signature(pure.decode_cbor).parameters) == ["buf", "start", "end",
                                                                    "max_depth"]


@twin_param
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_ranges_inside_a_larger_buffer(twin, kind):
    item = encode({"a": [1, "x"]})
    buf = kind(b"\xff\xff" + item + b"\x00")
    assert twin.decode_cbor(buf, 2, 2 + len(item), 8) == {"a": [1, "x"]}
    with pytest.raises(ValueError, match="trailing"):
        twin.decode_cbor(buf, 2, len(buf), 8)
    with pytest.raises(ValueError):
        twin.decode_cbor(buf, 0, len(buf), 8)           # starts at a break byte


@twin_param
@pytest.mark.parametrize("start,end", [(-1, 3), (2, 1), (0, 6), (6, 6), (1 << 70, 1 << 71),
                                       (-(1 << 70), 3)])
def test_out_of_range_spans_are_value_errors(twin, start, end):
    with pytest.raises(ValueError):
        twin.decode_cbor(b"\xa0\x00\x00\x00\x00", start, end, 8)


@twin_param
def test_empty_span_is_truncation(twin):
    with pytest.raises(ValueError):
        twin.decode_cbor(b"\xa0", 1, 1, 8)
    with pytest.raises(ValueError):
        twin.decode_cbor(b"", 0, 0, 8)


@twin_param
def test_argument_errors(twin):
    with pytest.raises(ValueError):
        twin.decode_cbor(b"\xa0", 0, 1, -1)
    with pytest.raises(TypeError):
        twin.decode_cbor("\xa0", 0, 1, 8)                 # str is not bytes-like
    with pytest.raises(TypeError):
        twin.decode_cbor(b"\xa0", 0.0, 1, 8)
    with pytest.raises(TypeError):
        twin.decode_cbor(b"\xa0", 0, 1, "8")
    with pytest.raises(TypeError):
        twin.decode_cbor(b"\xa0", 0, 1)
    assert twin.decode_cbor(b"\xa0", False, True, True) == {}        # bools are ints
    assert twin.decode_cbor(buf=b"\x80", start=0, end=1, max_depth=1) == []


@twin_param
def test_huge_max_depth_is_unbounded(twin):
    raw = b"\x81" * 5000 + b"\x01"
    for depth in (5000, 1 << 40, 1 << 64, 1 << 200):
        v = twin.decode_cbor(raw, 0, len(raw), depth)
        for _ in range(5000):
            v = v[0]
        assert v == 1
    with pytest.raises(ValueError, match="depth"):
        twin.decode_cbor(raw, 0, len(raw), 4999)


# ---- targeted rules -------------------------------------------------------------------------------

SIMPLE_CASES = [
    ("f4", False), ("f5", True), ("f6", None),
    ("00", 0), ("17", 23), ("1818", 24), ("1801", 1), ("190001", 1), ("1a00000001", 1),
    ("1b0000000000000001", 1), ("1bffffffffffffffff", (1 << 64) - 1), ("20", -1), ("37", -24),
    ("3800", -1), ("3b7fffffffffffffff", -(1 << 63)), ("3b8000000000000000", -(1 << 63) - 1),
    ("3bffffffffffffffff", -(1 << 64)),
    ("40", b""), ("4161", b"a"), ("580161", b"a"), ("59000161", b"a"), ("5a0000000161", b"a"),
    ("5b000000000000000161", b"a"),
    ("60", ""), ("6161", "a"), ("62c3a9", "é"), ("64f09f9880", "\U0001F600"), ("780161", "a"),
    ("80", []), ("a0", {}), ("9800", []), ("b800", {}), ("820102", [1, 2]), ("98020102", [1, 2]),
    ("a1616101", {"a": 1}), ("a1416101", {b"a": 1}), ("a2416101616102", {b"a": 1, "a": 2}),
    ("a2616101616202", {"a": 1, "b": 2}), ("a16161a0", {"a": {}}),
    ("f90000", 0.0), ("f98000", -0.0), ("f93c00", 1.0), ("f97c00", math.inf), ("f9fc00", -math.inf),
    ("f90001", 5.960464477539063e-08), ("f903ff", 6.097555160522461e-05), ("f97bff", 65504.0),
    ("fa3fc00000", 1.5), ("fa00000001", 1.401298464324817e-45), ("fa7f800000", math.inf),
    ("fb3ff8000000000000", 1.5), ("fb0000000000000001", 5e-324), ("fb8000000000000000", -0.0),
]


@pytest.mark.parametrize("hexs,value", SIMPLE_CASES, ids=[c[0] for c in SIMPLE_CASES])
def test_accepted_items(hexs, value):
    expect(H(hexs), value)


@pytest.mark.parametrize("hexs,bits", [
    ("f97e00", "7ff8000000000000"), ("f97c01", "7ff8040000000000"), ("f97e01", "7ff8040000000000"),
    ("f9fe00", "fff8000000000000"), ("fa7fc00000", "7ff8000000000000"),
    ("fb7ff0000000000001", "7ff0000000000001"), ("fbfff8000000000001", "fff8000000000001"),
])
def test_nan_payloads(hexs, bits):
    for twin in TWINS:
        assert struct.pack(">d", twin.decode_cbor(H(hexs), 0, len(H(hexs)), 8)).hex() == bits
    agree(H(hexs))


def test_every_half_float_is_decoded_like_cbor2():
    for h in range(1 << 16):
        raw = b"\xf9" + h.to_bytes(2, "big")
        want = struct.pack(">d", cbor2.loads(raw))
        for twin in TWINS:
            assert struct.pack(">d", twin.decode_cbor(raw, 0, 3, 0)) == want, raw.hex()


@given(bits=st.integers(0, (1 << 32) - 1))
@FAST
def test_single_floats_like_cbor2(bits):
    raw = b"\xfa" + bits.to_bytes(4, "big")
    assert same(agree(raw)[1], cbor2.loads(raw))


def test_undefined_and_simple_values_are_cbor2_objects():
    for twin in TWINS:
        assert twin.decode_cbor(b"\xf7", 0, 1, 0) is cbor2.undefined
        for n in range(20):
            v = twin.decode_cbor(bytes([0xE0 + n]), 0, 1, 0)
            assert type(v) is cbor2.CBORSimpleValue and v == cbor2.CBORSimpleValue(n)
        for n in range(32, 256):
            v = twin.decode_cbor(bytes([0xF8, n]), 0, 2, 0)
            assert type(v) is cbor2.CBORSimpleValue and v.value == n
        for n in range(32):
            with pytest.raises(ValueError):
                twin.decode_cbor(bytes([0xF8, n]), 0, 2, 0)
        assert twin.decode_cbor(b"\x82\xf7\xe5", 0, 3, 1) == [cbor2.undefined, cbor2.CBORSimpleValue(5)]


REJECTED = {
    # tags, everywhere and of every width
    "tag0": "c001", "tag1_text": "c16161", "tag24": "d81801", "tag_u16": "d9d9f7a0",
    "tag_u32": "daffffffff01", "tag_u64": "dbffffffffffffffff01", "tag_in_array": "81c001",
    "tag_in_map_value": "a16161c001", "tag_as_key": "a1c0616101", "tag_truncated": "db",
    "tag28_shareable": "d81ca16161d81d00", "tag_ai28": "dc", "tag_ai31": "df",
    # indefinite lengths and the break byte
    "indef_bytes": "5f4161ff", "indef_text": "7f6161ff", "indef_array": "9f01ff", "indef_map": "bf616101ff",
    "indef_nested": "a161619fff", "indef_empty_array": "9fff", "break": "ff", "break_in_array": "81ff",
    "break_in_map": "a1ff", "break_as_value": "a16161ff", "uint_ai31": "1f", "nint_ai31": "3f",
    # reserved additional information 28..30 on every major type
    **{f"ai{ai}_major{m}": f"{m << 5 | ai:02x}" for m in range(8) for ai in (28, 29, 30)},
    # simple values that cbor2 rejects
    "simple_f800": "f800", "simple_f813": "f813", "simple_f814": "f814", "simple_f817": "f817",
    "simple_f81f": "f81f",
    # map keys
    "dup_text_keys": "a2616101616102", "dup_bytes_keys": "a2416101416102",
    "dup_nested": "a16178a2616101616102", "dup_after_others": "a3616101616202616103",
    "int_key": "a10100", "nint_key": "a12000", "float_key": "a1f93c0000", "true_key": "a1f500",
    "null_key": "a1f600", "undefined_key": "a1f700", "simple_key": "a1e000", "array_key": "a18000",
    "map_key": "a1a000", "nonempty_array_key": "a1810100", "int_key_second": "a2616101 0100",
    # text strings must be valid UTF-8
    "bad_utf8_cont": "62c328", "bad_utf8_start": "61ff", "overlong": "62c0af", "surrogate": "63eda080",
    "truncated_utf8": "61c3", "above_max": "64f4908080", "bad_utf8_key": "a161ff00",
    # truncation and trailing bytes
    "empty": "", "uint8_short": "18", "uint16_short": "1901", "uint32_short": "1a000000",
    "uint64_short": "1b00000000000000", "bytes_short": "43aabb", "text_short": "6361",
    "array_short": "8201", "map_short": "a2616101", "map_key_only": "a16161",
    "float_short": "fa0000", "half_short": "f900", "trailing_zero": "a000", "two_items": "0101",
    "trailing_map": "a0a0",
    # claims far beyond the bytes there
    "huge_bytes": "5bffffffffffffffff01", "huge_text": "7bffffffffffffffff61",
    "huge_array": "9bffffffffffffffff010203", "huge_array_u32": "9affffffff010203",
    "huge_map": "bb7fffffffffffffff6161", "huge_map_u32": "baffffffff6161",
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected(name):
    expect(H(REJECTED[name]))


def test_duplicate_keys_are_per_map():
    expect(H("a2 6161 a1616101 6162 a1616102"), {"a": {"a": 1}, "b": {"a": 2}})
    expect(H("82 a1616101 a1616101"), [{"a": 1}, {"a": 1}])


# ---- depth ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hexs,max_depth,ok", [
    ("a0", 0, False), ("01", 0, True), ("80", 0, False), ("8101", 0, False), ("8180", 0, False),
    ("a1616101", 0, False), ("a0", 1, True), ("80", 1, True), ("81a0", 1, False),
    ("8180", 1, False), ("8101", 1, True), ("81a0", 2, True), ("8180", 2, True),
    ("8181a0", 1, False), ("818180", 1, False), ("818101", 1, False), ("8181a0", 2, False),
    ("a16161a0", 1, False), ("a16161a0", 2, True), ("a1616181a0", 2, False),
    ("a1616181a0", 3, True), ("81818101", 3, True), ("8181818101", 3, False),
    ("818181a0", 4, True), ("81818181a0", 4, False), ("8181818180", 4, False),
    # non-shortest empty containers (98 00 = array(0), b8 00 = map(0)) count the same
    ("819800", 1, False), ("819800", 2, True), ("81b800", 1, False), ("81b800", 2, True),
])
def test_depth_convention(hexs, max_depth, ok):
    raw = H(hexs)
    expect(raw, cbor2.loads(raw) if ok else ValueError, max_depth=max_depth)


@pytest.mark.parametrize("container", ["array", "map"])
@pytest.mark.parametrize("levels", range(0, 11))
def test_depth_boundary(container, levels):
    v = 7
    for _ in range(levels):
        v = [v] if container == "array" else {"k": v}
    raw = cbor2.dumps(v)
    for max_depth in range(0, 12):
        expect(raw, v if levels <= max_depth else ValueError, max_depth=max_depth)


@pytest.mark.parametrize("container", ["array", "map"])
@pytest.mark.parametrize("levels", range(1, 11))
def test_depth_boundary_with_an_empty_innermost_container(container, levels):
    # An empty innermost container is one more level, not a free one (it used to be accepted
    # one level beyond max_depth by both twins: nothing inside it was ever checked).
    v = [] if container == "array" else {}
    for _ in range(levels - 1):
        v = [v] if container == "array" else {"k": v}
    raw = cbor2.dumps(v)
    for max_depth in range(0, 12):
        expect(raw, v if levels <= max_depth else ValueError, max_depth=max_depth)


def test_limits_depth_counts_the_top_map():
    # Limits.max_depth=3 passes {"a": [[1]]} (map, array, array) but not one more array
    assert decode(encode({"a": [[1]]}), Limits(max_depth=3)) == {"a": [[1]]}
    with pytest.raises(PayloadError, match="depth"):
        decode(encode({"a": [[[1]]]}), Limits(max_depth=3))


# ---- truncation, trailing bytes, allocation safety ------------------------------------------------

RICH = {"messages": [["system", "be brief"], ["user", "héllo \U0001F600"]], "n": 2 ** 40,
        "neg": -(2 ** 63) - 5, "f": 1.25, "h": 0.5, "d": 0.1, "b": b"\x00\xff", "t": True,
        "none": None, "nested": {"a": [{}, [], {"b": [1, [2, [3]]]}]}, "big": (1 << 64) - 1}


@pytest.mark.parametrize("canonical", [True, False])
def test_truncation_at_every_byte(canonical):
    raw = cbor2.dumps(RICH, canonical=canonical)
    assert cbor2.loads(raw) == RICH
    expect(raw, cbor2.loads(raw))                       # same(): key order as on the wire
    for cut in range(len(raw)):
        expect(raw[:cut])


@pytest.mark.parametrize("tail", [b"\x00", b"\xff", b"\xa0", b"\x00" * 7, b"\xf7"])
def test_trailing_bytes(tail):
    raw = cbor2.dumps(RICH)
    expect(raw + tail)
    for twin in TWINS:
        with pytest.raises(ValueError, match=f"{len(tail)} trailing bytes"):
            twin.decode_cbor(raw + tail, 0, len(raw) + len(tail), 8)


@twin_param
@pytest.mark.parametrize("hexs", ["9bffffffffffffffff010203", "9a0fffffff010203",
                                  "bb0fffffffffffffff616101", "5b00000000ffffffff00",
                                  "7b00000000ffffffff00", "819a0fffffff01"])
def test_huge_claims_fail_without_allocating(twin, hexs):
    raw = H(hexs)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            twin.decode_cbor(raw, 0, len(raw), 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak


@needs_native
@pytest.mark.parametrize("unit", [b"\x97", b"\x98\x20", b"\x99\xff\xff", b"\x81", b"\xa1\x40"])
def test_native_memory_is_proportional_to_the_input(unit):
    # nested containers that each claim many items: nothing is reserved for what is not there
    raw = unit * 3000 + b"\x00" * 70000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            native.decode_cbor(raw, 0, len(raw), 1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * len(raw), (peak, len(raw))


def test_deep_nesting_is_not_a_recursion_error():
    raw = b"\xa1\x61a" + b"\x81" * 200_000 + b"\x00"
    for twin in TWINS:
        with pytest.raises(ValueError, match="depth"):
            twin.decode_cbor(raw, 0, len(raw), 8)
        v = twin.decode_cbor(raw, 0, len(raw), 300_000)
        assert type(v["a"]) is list
    agree(raw, max_depth=200_000)                       # one short: both refuse
    for twin in TWINS:                                  # (too deep for same()'s recursion)
        v = twin.decode_cbor(raw, 0, len(raw), 200_001)["a"]
        for _ in range(200_000 - 1):
            v = v[0]
        assert v == [0]


# ---- property tests: twin equality ----------------------------------------------------------------

@needs_native
@example(v={"a": [1.5, -0.0, math.nan]}, canonical=True, max_depth=8)
@given(v=values, canonical=st.booleans(), max_depth=st.integers(0, 6) | st.just(64))
@FAST
def test_cbor2_encodings_decode_identically(v, canonical, max_depth):
    raw = cbor2.dumps(v, canonical=canonical)
    kind, got = agree(raw, max_depth=max_depth)
    assert (kind == "ok") == (depth_of(v) <= max_depth)
    if kind == "ok":
        assert nan_equal(got, v)


@given(data=st.data(), v=values)
@FAST
def test_loose_encodings_decode_to_the_value(data, v):
    raw = loose_encode(data.draw, v)
    kind, got = agree(raw, max_depth=64)
    assert kind == "ok" and nan_equal(got, v)
    assert same(got, cbor2.loads(raw))


@needs_native
@given(raw=st.binary(max_size=48), max_depth=st.integers(0, 4))
@FAST
def test_random_bytes_agree(raw, max_depth):
    agree(raw, max_depth=max_depth)


@needs_native
@given(data=st.data(), v=values)
@FAST
def test_mutated_encodings_agree(data, v):
    raw = bytearray(cbor2.dumps(v, canonical=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and raw:
            raw[pos] = data.draw(st.sampled_from([0x00, 0x18, 0x1B, 0x5F, 0x7F, 0x9F, 0xBF, 0xC0,
                                                  0xD8, 0xF7, 0xF8, 0xFB, 0xFF, 0x81, 0xA1]))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and raw:
            del raw[pos]
        elif op == "truncate":
            del raw[pos:]
    agree(bytes(raw), max_depth=data.draw(st.integers(0, 8)))
    agree(raw, max_depth=8)                             # bytearray input


@needs_native
@given(prefix=st.binary(max_size=4), item=values, suffix=st.binary(max_size=4),
       kind=st.sampled_from([bytes, bytearray, memoryview]), data=st.data())
@FAST
def test_spans_agree(prefix, item, suffix, kind, data):
    buf = prefix + cbor2.dumps(item) + suffix
    start = data.draw(st.integers(-1, len(buf) + 1))
    end = data.draw(st.integers(-1, len(buf) + 1))
    agree(kind(buf), start, end, 64)
    agree(kind(buf), len(prefix), len(buf) - len(suffix), 64)


@needs_native
def test_every_two_byte_input_agrees():
    for first in range(256):
        agree(bytes([first]))
        for second in range(256):
            agree(bytes([first, second]), max_depth=1)


@needs_native
def test_every_initial_byte_before_valid_tails_agrees():
    tails = [b"", b"\x00", b"\x61a\x01", b"\x00" * 8, b"\xff" * 9, b"\x41a\x61a", b"\xa0\x80"]
    for first in range(256):
        for tail in tails:
            agree(bytes([first]) + tail, max_depth=2)
            agree(b"\xa1\x61k" + bytes([first]) + tail, max_depth=2)
            agree(b"\xa1" + bytes([first]) + tail, max_depth=2)


@needs_native
def test_native_error_paths_do_not_leak():
    bad = [H(REJECTED[k]) for k in sorted(REJECTED)] + [cbor2.dumps(RICH)[:-1],
                                                          b"\x82\xa1\x61a\x81\x01\xa2\x61a\x01\x61a"]
    good = [cbor2.dumps(RICH), b"\xf7", b"\xe5"]

    def run():
        for _ in range(200):
            for raw in bad:
                try:
                    native.decode_cbor(raw, 0, len(raw), 8)
                except ValueError:
                    pass
            for raw in good:
                native.decode_cbor(raw, 0, len(raw), 8)

    run()                                               # warm caches (keys, cbor2 import)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 16 * 1024, after - before


# ---- codec.payload on top of the twins ------------------------------------------------------------

def test_payload_decode_and_decode_span(codec_backend):
    raw = encode(RICH)
    assert decode(raw) == RICH
    buf = bytearray(b"xyz" + raw + b"!")
    assert decode_span(buf, 3, 3 + len(raw), DEFAULT_LIMITS) == RICH
    assert decode(memoryview(buf)[3:-1]) == RICH
    with pytest.raises(PayloadError, match="1 trailing bytes"):
        decode_span(buf, 3, len(buf), DEFAULT_LIMITS)
    with pytest.raises(PayloadError, match="must be a CBOR map"):
        decode(b"\x80")
    with pytest.raises(PayloadError, match="tags are not allowed"):
        decode(b"\xa1\x61a\xc1\x01")
    with pytest.raises(PayloadError, match="[Dd]uplicate"):
        decode(b"\xa2\x61a\x01\x61a\x02")
    with pytest.raises(PayloadError, match="indefinite"):
        decode(b"\xbf\xff")


def test_payload_decode_uses_the_selected_twin(codec_backend):
    calls = []
    real = codec_backend.decode_cbor

    class Spy:
        NAME = codec_backend.NAME

        @staticmethod
        def decode_cbor(*args):
            calls.append(args[1:])
            return real(*args)

    previous = backend.impl
    backend.impl = Spy
    try:
        assert decode(b"\xa1\x61a\x01", Limits(max_depth=5)) == {"a": 1}
    finally:
        backend.impl = previous
    assert calls == [(0, 4, 5)]

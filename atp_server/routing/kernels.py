"""Numeric kernels of the learned router: prompt hashing, sparse scoring, sparse training products.

Every kernel exists twice: a pure-numpy reference (`NUMPY`) and a numba-compiled twin (`NUMBA`,
None when numba is not importable). `ATP_NUMBA=0` forces numpy, `ATP_NUMBA=1` demands numba (an
ImportError if it is missing); unset means numba when importable. The decision path (`featurize`,
`score`, `predict`, `order`) is bit-identical between the twins: integer hashing, float64
accumulation in the same sequential order (numpy's `cumsum` is sequential, unlike `sum`, which is
pairwise), scalar libm transcendentals, and sort keys with explicit tie-breaks. The training
products (`csr_matmul`, `csr_tmatmul`) agree to float64 rounding (their sum order differs).

Hashing (why not Python's `hash()`: it is salted per process, so a trained file would mean nothing
in the next process; why not zlib.crc32: one Python-level call per n-gram, where the compiled
kernel wants a hash it can inline in its byte loop):
  * char n-grams pack their n ≤ 7 bytes and the length n into one 64-bit key;
  * words are FNV-1a 64 over their first `word_cap` bytes (FNV: a published, fixed hash);
  * a key becomes a bucket by Fibonacci hashing (multiply by 2^64/φ, keep the top `bits` bits —
    Knuth, TAOCP vol. 3 §6.4), which spreads consecutive keys well and is one multiply.
"""
import math
import os

import numpy as np

GOLD = np.uint64(0x9E3779B97F4A7C15)        # 2^64 / golden ratio (Fibonacci hashing)
FNV_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a 64-bit offset basis (IETF draft-eastlake-fnv)
FNV_PRIME = np.uint64(0x100000001B3)        # FNV-1a 64-bit prime
SALT_WORD = np.uint64(0x5752440000000001)   # arbitrary distinct salts: words and bigrams must not
SALT_BIGRAM = np.uint64(0x4249470000000002)  # land in the same buckets as each other by design

# ASCII letters/digits, '_' (identifiers) and every byte >= 0x80 (UTF-8 sequences: non-Latin
# scripts form words too) are word bytes; the buffer is already ASCII-lowercased.
WORD_BYTE = np.zeros(256, dtype=np.bool_)
WORD_BYTE[ord("0"):ord("9") + 1] = True
WORD_BYTE[ord("a"):ord("z") + 1] = True
WORD_BYTE[ord("_")] = True
WORD_BYTE[0x80:] = True

# ---- the dense block (features.DENSE_NAMES), computed in the same pass ---------------------------------
DENSE_NAMES = (
    "bias", "log_bytes", "log_words", "log_lines", "digit_frac", "upper_frac", "op_frac",
    "nonascii_frac", "cjk_frac", "cyrillic_frac", "arabic_hebrew_frac",
    "code", "math", "multiple_choice", "ends_question", "wh_start", "imperative_start",
)
N_DENSE = len(DENSE_NAMES)
# Scales put log-counts near 1 at typical sizes: log(1+4096) ≈ 8.3, ~400 words, ~50 lines.
LOG_BYTES, LOG_WORDS, LOG_LINES = 1 / 8.0, 1 / 6.0, 1 / 4.0

# Byte classes counted over the whole prompt, one bit each (order = dense slots 2..10 below).
_CLASS_BYTES = (b" ", b"\n", bytes(range(48, 58)), bytes(range(65, 91)), b"=+*/^<>%",
                bytes(range(0x80, 0x100)),
                bytes(range(0xE3, 0xEA)),   # UTF-8 lead bytes of U+3000..U+9FFF (kana, CJK)
                b"\xd0\xd1\xd2\xd3",        # U+0400..U+04FF (Cyrillic)
                bytes(range(0xD6, 0xDC)))   # U+0580..U+06FF (Hebrew, Arabic)
N_CLASSES = len(_CLASS_BYTES)
CLASS_BITS = np.zeros(256, dtype=np.int64)
CLASS_MATRIX = np.zeros((N_CLASSES, 256), dtype=np.int64)
for _c, _bs in enumerate(_CLASS_BYTES):
    for _b in _bs:
        CLASS_BITS[_b] |= 1 << _c
        CLASS_MATRIX[_c, _b] = 1

# Structure markers, matched case-sensitively anywhere in the prompt; one bit per pattern.
_CODE = (b"```", b"def ", b"return ", b"#include", b"function", b"=>", b"};", b"import ")
_MATH = (b"$", b"\\frac", b"\\sqrt", b"\\(", b"^2", b"sqrt(")
_MC = (b"\nA.", b"\nB.", b"\nA)", b"\nB)", b"(A)", b"(B)", b"\na.", b"\nb.")  # options A and B
PATTERNS = _CODE + _MATH + _MC
CODE_MASK = (1 << len(_CODE)) - 1
MATH_MASK = ((1 << len(_MATH)) - 1) << len(_CODE)
MC_PAIRS = tuple(3 << (len(_CODE) + len(_MATH) + 2 * i) for i in range(len(_MC) // 2))
PAT_BYTES = np.frombuffer(b"".join(PATTERNS), dtype=np.uint8).copy()
PAT_START = np.cumsum([0] + [len(x) for x in PATTERNS[:-1]]).astype(np.int64)
PAT_LEN = np.array([len(x) for x in PATTERNS], dtype=np.int64)
PAT_FIRST = np.zeros(256, dtype=np.uint64)     # byte -> patterns starting with it
for _p, _pat in enumerate(PATTERNS):
    PAT_FIRST[_pat[0]] |= np.uint64(1 << _p)

LOWER = np.arange(256, dtype=np.uint8)
LOWER[65:91] += 32                       # ASCII only: other scripts keep their bytes
WHITESPACE = np.zeros(256, dtype=np.bool_)
WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True
QUESTION = ord("?")


def fnv1a(word: bytes, cap: int) -> int:
    h = int(FNV_OFFSET)
    for b in word[:cap]:
        h = ((h ^ b) * int(FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return h


# First words that make a prompt a question / an instruction (question-type flags), as FNV-1a
# hashes of the lowercased word so the compiled kernel compares integers.
WH_WORDS = (b"what why how which who whom whose when where is are can does do did will should "
            b"could would").split()
IMPERATIVE_WORDS = (b"write explain summarize summarise translate list describe give create "
                    b"generate draft rewrite implement compose").split()
FIRST_WORD_CAP = 16                      # longer than any word in the two lists
WH_HASHES = np.array(sorted(fnv1a(w, FIRST_WORD_CAP) for w in WH_WORDS), dtype=np.uint64)
IMP_HASHES = np.array(sorted(fnv1a(w, FIRST_WORD_CAP) for w in IMPERATIVE_WORDS), dtype=np.uint64)


def _dense_np(raw, out):
    """The dense block of the raw prompt bytes (a uint8 array) into out[N_DENSE]."""
    L = raw.shape[0]
    n = max(L, 1)
    c = (CLASS_MATRIX @ np.bincount(raw, minlength=256)).tolist()
    rb = raw.tobytes()
    found = 0
    for p, pat in enumerate(PATTERNS):
        if pat in rb:
            found |= 1 << p
    lw = LOWER[raw]
    isw = WORD_BYTE[lw]
    first_hash = 0
    ws = np.flatnonzero(isw)
    if ws.shape[0]:
        s = int(ws[0])
        rest = np.flatnonzero(~isw[s:])
        e = s + int(rest[0]) if rest.shape[0] else L
        first_hash = fnv1a(lw[s:e].tobytes(), FIRST_WORD_CAP)
    nonws = np.flatnonzero(~WHITESPACE[raw])
    last = int(raw[nonws[-1]]) if nonws.shape[0] else -1
    out[0] = 1.0
    out[1] = math.log1p(L) * LOG_BYTES
    out[2] = math.log1p(c[0] + c[1]) * LOG_WORDS
    out[3] = math.log1p(c[1]) * LOG_LINES
    for j in range(2, N_CLASSES):
        out[2 + j] = c[j] / n
    out[11] = (found & CODE_MASK) != 0
    out[12] = (found & MATH_MASK) != 0
    mc = False
    for pair in MC_PAIRS:
        mc = mc or (found & pair) == pair
    out[13] = mc
    out[14] = last == QUESTION
    out[15] = first_hash != 0 and first_hash in WH_HASHES
    out[16] = first_hash != 0 and first_hash in IMP_HASHES


_U8 = [np.uint64(8 * j) for j in range(8)]
_TAG_SHIFT = np.uint64(56)


def max_features(n_bytes: int, n_lo: int, n_hi: int) -> int:
    """Upper bound of hashed features for a buffer: char n-grams + words + bigrams."""
    chars = sum(max(0, n_bytes - n + 1) for n in range(n_lo, n_hi + 1)) if n_lo > 0 else 0
    return chars + n_bytes + 1


# ---- numpy reference --------------------------------------------------------------------------------

def _featurize_np(raw, max_bytes, n_lo, n_hi, shift, word_cap, use_words, use_bigrams,
                  out_idx, out_val, out_dense):
    """Hashed n-grams of raw[:max_bytes] (ASCII-lowercased) into out_idx/out_val, the dense block
    of all of raw into out_dense; returns how many hashed features."""
    _dense_np(raw, out_dense)
    buf = LOWER[raw[:max_bytes]]
    L = buf.shape[0]
    k = 0
    sh = np.uint64(shift)
    wide = buf.astype(np.uint64)
    if n_lo > 0:
        for n in range(n_lo, n_hi + 1):
            cnt = L - n + 1
            if cnt <= 0:
                continue
            key = np.full(cnt, np.uint64(n) << _TAG_SHIFT, dtype=np.uint64)
            for j in range(n):
                key |= wide[j:j + cnt] << _U8[j]
            out_idx[k:k + cnt] = (key * GOLD) >> sh
            out_val[k:k + cnt] = np.float32(1.0 / math.sqrt(cnt))
            k += cnt
    if not use_words:
        return k
    isw = WORD_BYTE[buf].view(np.int8)
    edges = np.diff(isw, prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    nw = starts.shape[0]
    if nw == 0:
        return k
    lens = np.minimum(np.flatnonzero(edges == -1) - starts, word_cap)
    h = np.full(nw, FNV_OFFSET, dtype=np.uint64)
    for j in range(int(lens.max())):
        act = lens > j
        h[act] = (h[act] ^ wide[starts[act] + j]) * FNV_PRIME
    out_idx[k:k + nw] = ((h ^ SALT_WORD) * GOLD) >> sh
    out_val[k:k + nw] = np.float32(1.0 / math.sqrt(nw))
    k += nw
    if use_bigrams and nw > 1:
        nb = nw - 1
        key = ((h[:-1] * GOLD) ^ h[1:]) ^ SALT_BIGRAM
        out_idx[k:k + nb] = (key * GOLD) >> sh
        out_val[k:k + nb] = np.float32(1.0 / math.sqrt(nb))
        k += nb
    return k


def _score_np(idx, val, n, dense, W, out):
    """out[h] = sum_k val[k]·W[idx[k], h] + sum_j dense[j]·W[base + j, h], float64, in order."""
    base = W.shape[0] - dense.shape[0]
    prods = np.empty((n + dense.shape[0], W.shape[1]), dtype=np.float64)
    np.multiply(val[:n, None].astype(np.float64), W[idx[:n]], out=prods[:n])
    np.multiply(dense[:, None].astype(np.float64), W[base:], out=prods[n:])
    out[:] = np.cumsum(prods, axis=0)[-1]


def _sigmoid_py(x: float) -> float:
    # tanh form: no overflow for large |x|; libm's tanh, as numba's math.tanh calls
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def _predict_np(idx, val, n, dense, W, a, b, cost_mode, c0, c1, cW, half_s2, n_bytes, z,
                q_out, c_out):
    """Scores, then per model q = σ(a·z + b) and the expected cost (cost_mode 0 length:
    c0 + bytes·c1; 1 dense: exp(dense·cW + s²/2); 2 hashed: exp(z[M+m] + s²/2)). Scalar libm
    transcendentals (math.tanh/exp), not numpy's SIMD ones, so that the numba twin matches bit
    for bit."""
    _score_np(idx, val, n, dense, W, z)
    M = q_out.shape[0]
    zl = z.tolist()
    al, bl = a.tolist(), b.tolist()
    for m in range(M):
        q_out[m] = _sigmoid_py(al[m] * zl[m] + bl[m])
    if cost_mode == 0:
        c_out[:] = c0 + n_bytes * c1
    elif cost_mode == 1:
        lin = np.cumsum(dense[:, None].astype(np.float64) * cW, axis=0)[-1] + half_s2
        c_out[:] = [math.exp(x) for x in lin.tolist()]
    else:
        c_out[:] = [math.exp(x) for x in (z[M:2 * M] + half_s2).tolist()]


def _order_keys(q, c, rule, param):
    """Sort keys (k0, k1, k2), then the index: rule 0 maximise q − param·c (ties: cheaper);
    1 cheapest (ties: better); 2 q ≥ param cheapest-first, then the rest by decreasing q."""
    if rule == 0:
        return -(q - param * c), c, np.zeros_like(q)
    if rule == 1:
        return c, -q, np.zeros_like(q)
    ok = q >= param
    return (np.where(ok, 0.0, 1.0), np.where(ok, c, -q), np.where(ok, -q, 0.0))


def _order_np(q, c, rule, param, out):
    k0, k1, k2 = _order_keys(q, c, rule, param)
    out[:] = np.lexsort((np.arange(q.shape[0]), k2, k1, k0))


def _csr_matmul_np(indptr, idx, val, W, out):
    """out = X @ W for CSR X."""
    # per column bincount: np.add.reduceat over the rows of a 2-D array measured ~5× slower
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    v = val.astype(np.float64)
    for h in range(W.shape[1]):
        out[:, h] = np.bincount(rows, weights=v * W[idx, h], minlength=out.shape[0])


def _csr_tmatmul_np(indptr, idx, val, G, out):
    """out = X^T @ G for CSR X."""
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    v = val.astype(np.float64)
    for h in range(G.shape[1]):
        out[:, h] = np.bincount(idx, weights=v * G[rows, h], minlength=out.shape[0])


class _Impl:
    __slots__ = ("name", "featurize", "score", "predict", "order", "csr_matmul", "csr_tmatmul")

    def __init__(self, name, featurize, score, predict, order, csr_matmul, csr_tmatmul):
        self.name, self.featurize, self.score = name, featurize, score
        self.predict, self.order = predict, order
        self.csr_matmul, self.csr_tmatmul = csr_matmul, csr_tmatmul


NUMPY = _Impl("numpy", _featurize_np, _score_np, _predict_np, _order_np, _csr_matmul_np,
              _csr_tmatmul_np)


# ---- numba twin ---------------------------------------------------------------------------------------

def _build_numba():
    import numba

    njit = numba.njit(cache=True, nogil=True)

    @njit
    def dense(raw, out):
        L = raw.shape[0]
        counts = np.zeros(N_CLASSES, dtype=np.int64)
        found = np.uint64(0)
        last = -1
        for i in range(L):
            b = raw[i]
            bits = CLASS_BITS[b]
            c = 0
            while bits:
                counts[c] += bits & 1
                bits >>= 1
                c += 1
            if not WHITESPACE[b]:
                last = b
            cand = PAT_FIRST[b] & ~found
            while cand:
                p = 0
                while not (cand >> np.uint64(p)) & np.uint64(1):
                    p += 1
                cand &= ~(np.uint64(1) << np.uint64(p))
                s = PAT_START[p]
                m = PAT_LEN[p]
                if i + m <= L:
                    ok = True
                    for j in range(1, m):
                        if raw[i + j] != PAT_BYTES[s + j]:
                            ok = False
                            break
                    if ok:
                        found |= np.uint64(1) << np.uint64(p)
        first_hash = np.uint64(0)
        i = 0
        while i < L and not WORD_BYTE[LOWER[raw[i]]]:
            i += 1
        if i < L:
            first_hash = FNV_OFFSET
            j = 0
            while i < L and WORD_BYTE[LOWER[raw[i]]]:
                if j < FIRST_WORD_CAP:
                    first_hash = (first_hash ^ np.uint64(LOWER[raw[i]])) * FNV_PRIME
                j += 1
                i += 1
        n = max(L, 1)
        out[0] = 1.0
        out[1] = math.log1p(L) * LOG_BYTES
        out[2] = math.log1p(counts[0] + counts[1]) * LOG_WORDS
        out[3] = math.log1p(counts[1]) * LOG_LINES
        for j in range(2, N_CLASSES):
            out[2 + j] = counts[j] / n
        out[11] = (found & np.uint64(CODE_MASK)) != 0
        out[12] = (found & np.uint64(MATH_MASK)) != 0
        mc = False
        for pair in MC_PAIRS:
            mc = mc or (found & np.uint64(pair)) == np.uint64(pair)
        out[13] = mc
        out[14] = last == QUESTION
        wh = False
        imp = False
        if first_hash != 0:
            for h in WH_HASHES:
                wh = wh or h == first_hash
            for h in IMP_HASHES:
                imp = imp or h == first_hash
        out[15] = wh
        out[16] = imp

    @njit
    def featurize(raw, max_bytes, n_lo, n_hi, shift, word_cap, use_words, use_bigrams,
                  out_idx, out_val, out_dense):
        dense(raw, out_dense)
        L = min(raw.shape[0], max_bytes)
        buf = np.empty(L, dtype=np.uint8)
        for i in range(L):
            buf[i] = LOWER[raw[i]]
        k = 0
        sh = np.uint64(shift)
        if n_lo > 0:
            for n in range(n_lo, n_hi + 1):
                cnt = L - n + 1
                if cnt <= 0:
                    continue
                scale = np.float32(1.0 / math.sqrt(cnt))
                tag = np.uint64(n) << np.uint64(56)
                for i in range(cnt):
                    key = tag
                    for j in range(n):
                        key |= np.uint64(buf[i + j]) << np.uint64(8 * j)
                    out_idx[k] = (key * GOLD) >> sh
                    out_val[k] = scale
                    k += 1
        if not use_words:
            return k
        hashes = np.empty(L // 2 + 1, dtype=np.uint64)
        nw = 0
        i = 0
        while i < L:
            if not WORD_BYTE[buf[i]]:
                i += 1
                continue
            h = FNV_OFFSET
            j = 0
            while i < L and WORD_BYTE[buf[i]]:
                if j < word_cap:
                    h = (h ^ np.uint64(buf[i])) * FNV_PRIME
                j += 1
                i += 1
            hashes[nw] = h
            nw += 1
        if nw == 0:
            return k
        scale = np.float32(1.0 / math.sqrt(nw))
        for w in range(nw):
            out_idx[k] = ((hashes[w] ^ SALT_WORD) * GOLD) >> sh
            out_val[k] = scale
            k += 1
        if use_bigrams and nw > 1:
            scale = np.float32(1.0 / math.sqrt(nw - 1))
            for w in range(1, nw):
                key = ((hashes[w - 1] * GOLD) ^ hashes[w]) ^ SALT_BIGRAM
                out_idx[k] = (key * GOLD) >> sh
                out_val[k] = scale
                k += 1
        return k

    @njit
    def score(idx, val, n, dense, W, out):
        H = W.shape[1]
        acc = np.zeros(H, dtype=np.float64)
        for k in range(n):
            r = idx[k]
            v = np.float64(val[k])
            for h in range(H):
                acc[h] += v * W[r, h]
        base = W.shape[0] - dense.shape[0]
        for j in range(dense.shape[0]):
            v = np.float64(dense[j])
            for h in range(H):
                acc[h] += v * W[base + j, h]
        for h in range(H):
            out[h] = acc[h]

    @njit
    def sigmoid(x):
        return 0.5 * (1.0 + math.tanh(0.5 * x))

    @njit
    def predict(idx, val, n, dense, W, a, b, cost_mode, c0, c1, cW, half_s2, n_bytes, z,
                q_out, c_out):
        score(idx, val, n, dense, W, z)
        M = q_out.shape[0]
        for m in range(M):
            q_out[m] = sigmoid(a[m] * z[m] + b[m])
        if cost_mode == 0:
            for m in range(M):
                c_out[m] = c0[m] + n_bytes * c1[m]
        elif cost_mode == 1:
            for m in range(M):
                acc = 0.0
                for j in range(dense.shape[0]):
                    acc += np.float64(dense[j]) * cW[j, m]
                c_out[m] = math.exp(acc + half_s2[m])
        else:
            for m in range(M):
                c_out[m] = math.exp(z[M + m] + half_s2[m])

    @njit
    def order(q, c, rule, param, out):
        M = q.shape[0]
        k0 = np.empty(M)
        k1 = np.empty(M)
        k2 = np.zeros(M)
        for m in range(M):
            if rule == 0:
                k0[m] = -(q[m] - param * c[m])
                k1[m] = c[m]
            elif rule == 1:
                k0[m] = c[m]
                k1[m] = -q[m]
            elif q[m] >= param:
                k0[m] = 0.0
                k1[m] = c[m]
                k2[m] = -q[m]
            else:
                k0[m] = 1.0
                k1[m] = -q[m]
        for i in range(M):
            out[i] = i
        for i in range(1, M):   # insertion sort: M is tens, and it is stable like lexsort
            x = out[i]
            j = i
            while j > 0:
                y = out[j - 1]
                if (k0[x] < k0[y] or (k0[x] == k0[y] and (k1[x] < k1[y] or (
                        k1[x] == k1[y] and k2[x] < k2[y])))):
                    out[j] = y
                    j -= 1
                else:
                    break
            out[j] = x

    @njit
    def csr_matmul(indptr, idx, val, W, out):
        H = W.shape[1]
        for i in range(indptr.shape[0] - 1):
            for h in range(H):
                out[i, h] = 0.0
            for k in range(indptr[i], indptr[i + 1]):
                r = idx[k]
                v = np.float64(val[k])
                for h in range(H):
                    out[i, h] += v * W[r, h]

    @njit
    def csr_tmatmul(indptr, idx, val, G, out):
        H = G.shape[1]
        out[:] = 0.0
        for i in range(indptr.shape[0] - 1):
            for k in range(indptr[i], indptr[i + 1]):
                r = idx[k]
                v = np.float64(val[k])
                for h in range(H):
                    out[r, h] += v * G[i, h]

    return _Impl("numba", featurize, score, predict, order, csr_matmul, csr_tmatmul)


_mode = os.environ.get("ATP_NUMBA", "")
if _mode not in ("", "0", "1"):
    raise ValueError(f"ATP_NUMBA must be 0 or 1, not {_mode!r}")
NUMBA = None
if _mode != "0":
    try:
        NUMBA = _build_numba()
    except ImportError:
        if _mode == "1":
            raise
IMPL = NUMBA or NUMPY   # what the router uses; tests pick NUMPY/NUMBA explicitly

/*
 * codec._native: the C twin of codec/_pure.py (read that file first; it is the contract).
 *
 *   HEADER_SIZE, TAG_SIZE, NAME, HEADER     module constants (HEADER is the same struct.Struct)
 *   peek_frame(buf, offset=0)               40-byte big-endian header ">IBBBBIIQQ8s" or None
 *   decode_cbor(buf, start, end, max_depth) exactly one strict CBOR item from buf[start:end]
 *   HmacKey(key)                            HMAC-SHA256 with the padded-key midstates precomputed
 *       .sign(data) -> bytes(32)
 *       .verify(buf, start, end) -> bool    constant-time tag compare
 *       .seal(ftype, flags, key_id, stream_id, sequence, timestamp_ms, nonce, payload) -> bytes
 *
 * Results and exception *types* match the pure twin on the same inputs, including its argument
 * order of evaluation (e.g. len(buf) is taken before the buffer is acquired, so a too-short str
 * gives None / False in both twins). Buffers are read as flat bytes (PyBUF_SIMPLE); the twins are
 * only held to agree on byte-format buffers (bytes, bytearray, memoryview of those, mmap, ...).
 *
 * SHA-256 is implemented here (no OpenSSL): a portable byte-order-independent compressor, plus an
 * x86 SHA-NI compressor chosen at import time when the CPU has it (-DATP_NO_SHANI leaves it out).
 * Only gcc/clang + Python headers are needed to build. decode_cbor imports cbor2 (a dependency of
 * the project) the first time it meets `undefined` or a simple value, to return cbor2's objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 40
#define TAG_SIZE 32
#define SHA256_BLOCK 64
#define U32_MAX_VALUE 0xFFFFFFFFULL

/* ---------------------------------------------------------------------------------------------
 * Byte-order helpers (byte-wise, so correct on big- and little-endian hosts alike)
 * ------------------------------------------------------------------------------------------- */

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint64_t load_be64(const uint8_t *p)
{
    return ((uint64_t)load_be32(p) << 32) | (uint64_t)load_be32(p + 4);
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
    store_be32(p, (uint32_t)(v >> 32));
    store_be32(p + 4, (uint32_t)v);
}

/* Zeroise key material in a way the optimiser will not elide. */
static void secure_zero(void *p, size_t n)
{
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--)
        *v++ = 0;
}

/* ---------------------------------------------------------------------------------------------
 * SHA-256 (FIPS 180-4)
 * ------------------------------------------------------------------------------------------- */

static const uint32_t SHA256_IV[8] = {
    0x6a09e667UL, 0xbb67ae85UL, 0x3c6ef372UL, 0xa54ff53aUL,
    0x510e527fUL, 0x9b05688cUL, 0x1f83d9abUL, 0x5be0cd19UL,
};

static const uint32_t SHA256_K[64] = {
    0x428a2f98UL, 0x71374491UL, 0xb5c0fbcfUL, 0xe9b5dba5UL, 0x3956c25bUL, 0x59f111f1UL,
    0x923f82a4UL, 0xab1c5ed5UL, 0xd807aa98UL, 0x12835b01UL, 0x243185beUL, 0x550c7dc3UL,
    0x72be5d74UL, 0x80deb1feUL, 0x9bdc06a7UL, 0xc19bf174UL, 0xe49b69c1UL, 0xefbe4786UL,
    0x0fc19dc6UL, 0x240ca1ccUL, 0x2de92c6fUL, 0x4a7484aaUL, 0x5cb0a9dcUL, 0x76f988daUL,
    0x983e5152UL, 0xa831c66dUL, 0xb00327c8UL, 0xbf597fc7UL, 0xc6e00bf3UL, 0xd5a79147UL,
    0x06ca6351UL, 0x14292967UL, 0x27b70a85UL, 0x2e1b2138UL, 0x4d2c6dfcUL, 0x53380d13UL,
    0x650a7354UL, 0x766a0abbUL, 0x81c2c92eUL, 0x92722c85UL, 0xa2bfe8a1UL, 0xa81a664bUL,
    0xc24b8b70UL, 0xc76c51a3UL, 0xd192e819UL, 0xd6990624UL, 0xf40e3585UL, 0x106aa070UL,
    0x19a4c116UL, 0x1e376c08UL, 0x2748774cUL, 0x34b0bcb5UL, 0x391c0cb3UL, 0x4ed8aa4aUL,
    0x5b9cca4fUL, 0x682e6ff3UL, 0x748f82eeUL, 0x78a5636fUL, 0x84c87814UL, 0x8cc70208UL,
    0x90befffaUL, 0xa4506cebUL, 0xbef9a3f7UL, 0xc67178f2UL,
};

typedef void (*sha256_compress_fn)(uint32_t state[8], const uint8_t *blocks, size_t nblocks);

#define ROTR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define SHA_CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define SHA_MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))
#define SHA_BSIG0(x) (ROTR32(x, 2) ^ ROTR32(x, 13) ^ ROTR32(x, 22))
#define SHA_BSIG1(x) (ROTR32(x, 6) ^ ROTR32(x, 11) ^ ROTR32(x, 25))
#define SHA_SSIG0(x) (ROTR32(x, 7) ^ ROTR32(x, 18) ^ ((x) >> 3))
#define SHA_SSIG1(x) (ROTR32(x, 17) ^ ROTR32(x, 19) ^ ((x) >> 10))

static void sha256_compress_portable(uint32_t st[8], const uint8_t *p, size_t nblocks)
{
    uint32_t w[64];
    while (nblocks--) {
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
        uint32_t e = st[4], f = st[5], g = st[6], h = st[7];
        int i;
        for (i = 0; i < 16; i++)
            w[i] = load_be32(p + 4 * i);
        for (i = 16; i < 64; i++)
            w[i] = SHA_SSIG1(w[i - 2]) + w[i - 7] + SHA_SSIG0(w[i - 15]) + w[i - 16];
        for (i = 0; i < 64; i++) {
            uint32_t t1 = h + SHA_BSIG1(e) + SHA_CH(e, f, g) + SHA256_K[i] + w[i];
            uint32_t t2 = SHA_BSIG0(a) + SHA_MAJ(a, b, c);
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        st[0] += a;
        st[1] += b;
        st[2] += c;
        st[3] += d;
        st[4] += e;
        st[5] += f;
        st[6] += g;
        st[7] += h;
        p += SHA256_BLOCK;
    }
    secure_zero(w, sizeof w);
}

/* x86 SHA extensions, compiled for that target only in this function and used only if CPUID
 * says the CPU has them (and SSSE3/SSE4.1, which the shuffles/blends need). */
#if !defined(ATP_NO_SHANI) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define ATP_HAVE_SHANI 1
#include <cpuid.h>
#include <immintrin.h>

__attribute__((target("sha,sse4.1,ssse3")))
static void sha256_compress_shani(uint32_t state[8], const uint8_t *p, size_t nblocks)
{
    const __m128i BSWAP = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i st0, st1, tmp, msg, m[4], abef_save, cdgh_save;
    int i;

    tmp = _mm_loadu_si128((const __m128i *)&state[0]);     /* DCBA */
    st1 = _mm_loadu_si128((const __m128i *)&state[4]);     /* HGFE */
    tmp = _mm_shuffle_epi32(tmp, 0xB1);                    /* CDAB */
    st1 = _mm_shuffle_epi32(st1, 0x1B);                    /* EFGH */
    st0 = _mm_alignr_epi8(tmp, st1, 8);                    /* ABEF */
    st1 = _mm_blend_epi16(st1, tmp, 0xF0);                 /* CDGH */

    while (nblocks--) {
        abef_save = st0;
        cdgh_save = st1;

        /* rounds 0..15: load the message words; start the schedule */
        for (i = 0; i < 4; i++) {
            m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), BSWAP);
            msg = _mm_add_epi32(m[i], _mm_loadu_si128((const __m128i *)&SHA256_K[4 * i]));
            st1 = _mm_sha256rnds2_epu32(st1, st0, msg);
            if (i == 3) {
                tmp = _mm_alignr_epi8(m[3], m[2], 4);
                m[0] = _mm_add_epi32(m[0], tmp);
                m[0] = _mm_sha256msg2_epu32(m[0], m[3]);
            }
            msg = _mm_shuffle_epi32(msg, 0x0E);
            st0 = _mm_sha256rnds2_epu32(st0, st1, msg);
            if (i > 0)
                m[i - 1] = _mm_sha256msg1_epu32(m[i - 1], m[i]);
        }
        /* rounds 16..63: group g uses m[g%4]; finishes m[(g+1)%4]; starts m[(g+3)%4] */
        for (i = 4; i < 16; i++) {
            __m128i *cur = &m[i & 3], *prev = &m[(i + 3) & 3], *next = &m[(i + 1) & 3];
            msg = _mm_add_epi32(*cur, _mm_loadu_si128((const __m128i *)&SHA256_K[4 * i]));
            st1 = _mm_sha256rnds2_epu32(st1, st0, msg);
            if (i < 15) {
                tmp = _mm_alignr_epi8(*cur, *prev, 4);
                *next = _mm_add_epi32(*next, tmp);
                *next = _mm_sha256msg2_epu32(*next, *cur);
            }
            msg = _mm_shuffle_epi32(msg, 0x0E);
            st0 = _mm_sha256rnds2_epu32(st0, st1, msg);
            if (i < 13)
                *prev = _mm_sha256msg1_epu32(*prev, *cur);
        }

        st0 = _mm_add_epi32(st0, abef_save);
        st1 = _mm_add_epi32(st1, cdgh_save);
        p += SHA256_BLOCK;
    }

    tmp = _mm_shuffle_epi32(st0, 0x1B);                    /* FEBA */
    st1 = _mm_shuffle_epi32(st1, 0xB1);                    /* DCHG */
    st0 = _mm_blend_epi16(tmp, st1, 0xF0);                 /* DCBA */
    st1 = _mm_alignr_epi8(st1, tmp, 8);                    /* HGFE */
    _mm_storeu_si128((__m128i *)&state[0], st0);
    _mm_storeu_si128((__m128i *)&state[4], st1);
}

static int cpu_has_shani(void)
{
    unsigned int a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19))) /* SSSE3, SSE4.1 */
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1u;                     /* SHA */
}
#else
#define ATP_HAVE_SHANI 0
#endif

static sha256_compress_fn sha256_compress = sha256_compress_portable;
static const char *sha256_backend = "portable";

/* Absorb msg[0:len] into st (which has already absorbed `prefix` bytes, a multiple of 64), pad,
 * and write the digest. */
static void sha256_finish(const uint32_t start[8], uint64_t prefix, const uint8_t *msg, size_t len,
                          uint8_t out[32])
{
    uint32_t st[8];
    uint8_t tail[2 * SHA256_BLOCK];
    size_t full = len / SHA256_BLOCK, rem = len % SHA256_BLOCK, tail_len;
    int i;

    memcpy(st, start, sizeof st);
    if (full)
        sha256_compress(st, msg, full);
    memcpy(tail, msg + full * SHA256_BLOCK, rem);
    tail[rem] = 0x80;
    tail_len = rem < SHA256_BLOCK - 8 ? SHA256_BLOCK : 2 * SHA256_BLOCK;
    memset(tail + rem + 1, 0, tail_len - rem - 1 - 8);
    store_be64(tail + tail_len - 8, (prefix + (uint64_t)len) * 8u);
    sha256_compress(st, tail, tail_len / SHA256_BLOCK);
    for (i = 0; i < 8; i++)
        store_be32(out + 4 * i, st[i]);
    secure_zero(st, sizeof st);
    secure_zero(tail, sizeof tail);
}

/* ---------------------------------------------------------------------------------------------
 * Module state
 * ------------------------------------------------------------------------------------------- */

static PyObject *StructError;   /* struct.error, for the one case where pure's unpack_from raises */

/* ---------------------------------------------------------------------------------------------
 * Argument helpers
 * ------------------------------------------------------------------------------------------- */

/* Minimal vectorcall argument binder: positional-or-keyword parameters `names`, the first `nreq`
 * required. Errors are TypeError, as for a Python def. */
static int bind_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     const char *const *names, int nparams, int nreq, PyObject **out)
{
    Py_ssize_t i, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int k;

    if (nargs > nparams) {
        PyErr_Format(PyExc_TypeError, "%s() takes %s %d positional argument%s but %zd were given",
                     fname, nreq == nparams ? "exactly" : "at most", nparams,
                     nparams == 1 ? "" : "s", nargs);
        return -1;
    }
    for (k = 0; k < nparams; k++)
        out[k] = k < nargs ? args[k] : NULL;
    for (i = 0; i < nkw; i++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
        for (k = 0; k < nparams; k++) {
            if (PyUnicode_CompareWithASCIIString(kw, names[k]) == 0)
                break;
        }
        if (k == nparams) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, kw);
            return -1;
        }
        if (out[k] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[k]);
            return -1;
        }
        out[k] = args[nargs + i];
    }
    for (k = 0; k < nreq; k++) {
        if (out[k] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s' (pos %d)", fname,
                         names[k], k + 1);
            return -1;
        }
    }
    return 0;
}

/* operator.index(obj), clamped to the Py_ssize_t range (only ever compared against lengths, so
 * clamping preserves every comparison result). -1 with an exception set on error. */
static Py_ssize_t index_clamped(PyObject *obj)
{
    if (PyLong_CheckExact(obj)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow > 0 || v > PY_SSIZE_T_MAX)
            return PY_SSIZE_T_MAX;
        if (overflow < 0 || v < PY_SSIZE_T_MIN)
            return PY_SSIZE_T_MIN;
        return (Py_ssize_t)v;
    }
    return PyNumber_AsSsize_t(obj, NULL);
}

/* A header integer field for seal: operator.index(obj) in [0, max], else TypeError / ValueError
 * (same checks, order and exception types as _pure._check_seal_args). */
static int header_uint(PyObject *obj, const char *name, unsigned long long max,
                       unsigned long long *out)
{
    PyObject *idx = PyNumber_Index(obj);
    unsigned long long v;

    if (idx == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be an integer, not %.200s", name,
                         Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    v = PyLong_AsUnsignedLongLong(idx);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            Py_DECREF(idx);
            return -1;
        }
        PyErr_Clear();
        goto range;
    }
    if (v > max)
        goto range;
    Py_DECREF(idx);
    *out = v;
    return 0;
range:
    PyErr_Format(PyExc_ValueError, "%s out of range: %R not in [0, %llu]", name, idx, max);
    Py_DECREF(idx);
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * peek_frame
 * ------------------------------------------------------------------------------------------- */

static PyObject *unpack_header(const uint8_t *h)
{
    PyObject *t = PyTuple_New(10), *v;
    int i = 0;
    if (t == NULL)
        return NULL;
#define SET(expr)                       \
    do {                                \
        if ((v = (expr)) == NULL)       \
            goto fail;                  \
        PyTuple_SET_ITEM(t, i, v);      \
        i++;                            \
    } while (0)
    SET(PyLong_FromUnsignedLong((unsigned long)load_be32(h)));          /* payload_length */
    SET(PyLong_FromLong(h[4]));                                         /* version */
    SET(PyLong_FromLong(h[5]));                                         /* type */
    SET(PyLong_FromLong(h[6]));                                         /* flags */
    SET(PyLong_FromLong(h[7]));                                         /* reserved */
    SET(PyLong_FromUnsignedLong((unsigned long)load_be32(h + 8)));      /* key_id */
    SET(PyLong_FromUnsignedLong((unsigned long)load_be32(h + 12)));     /* stream_id */
    SET(PyLong_FromUnsignedLongLong(load_be64(h + 16)));                /* sequence */
    SET(PyLong_FromUnsignedLongLong(load_be64(h + 24)));                /* timestamp_ms */
    SET(PyBytes_FromStringAndSize((const char *)h + 32, 8));            /* nonce */
#undef SET
    return t;
fail:
    Py_DECREF(t);
    return NULL;
}

PyDoc_STRVAR(peek_frame_doc,
"peek_frame(buf, offset=0)\n--\n\n"
"Unpack the 40-byte header at buf[offset:], or None if fewer than 40 bytes are there.\n"
"ValueError if offset < 0 or offset > len(buf). No validation of the fields.");

static PyObject *peek_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset"};
    PyObject *a[2], *res;
    Py_ssize_t off = 0, n;
    Py_buffer view;

    if (kwnames == NULL && nargs == 1) {
        a[0] = args[0];
        a[1] = NULL;
    }
    else if (bind_args("peek_frame", args, nargs, kwnames, names, 2, 1, a) < 0)
        return NULL;
    if (a[1] != NULL) {
        off = index_clamped(a[1]);
        if (off == -1 && PyErr_Occurred())
            return NULL;
    }
    if (PyBytes_CheckExact(a[0])) {   /* fast path: immutable, len == buffer length */
        n = PyBytes_GET_SIZE(a[0]);
        if (off < 0 || off > n)
            goto bad_offset;
        if (n - off < HEADER_SIZE)
            Py_RETURN_NONE;
        return unpack_header((const uint8_t *)PyBytes_AS_STRING(a[0]) + off);
    }
    n = PyObject_Length(a[0]);
    if (n < 0)
        return NULL;
    if (off < 0 || off > n)
        goto bad_offset;
    if (n - off < HEADER_SIZE)
        Py_RETURN_NONE;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len - off < HEADER_SIZE) {   /* len(buf) counts items, not bytes: as struct does */
        PyErr_Format(StructError,
                     "unpack_from requires a buffer of at least %zd bytes for unpacking %d bytes "
                     "at offset %zd (actual buffer size is %zd)",
                     off + HEADER_SIZE, HEADER_SIZE, off, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    res = unpack_header((const uint8_t *)view.buf + off);
    PyBuffer_Release(&view);
    return res;
bad_offset:
    PyErr_SetString(PyExc_ValueError, "peek_frame offset out of range");
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * HmacKey
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    uint32_t inner[8];   /* SHA-256 state after absorbing key ^ ipad */
    uint32_t outer[8];   /* SHA-256 state after absorbing key ^ opad */
    int ready;           /* __init__ has succeeded at least once */
} HmacKeyObject;

static void hmac_tag(const HmacKeyObject *k, const uint8_t *msg, size_t len, uint8_t tag[32])
{
    uint8_t inner_digest[32];
    sha256_finish(k->inner, SHA256_BLOCK, msg, len, inner_digest);
    sha256_finish(k->outer, SHA256_BLOCK, inner_digest, sizeof inner_digest, tag);
    secure_zero(inner_digest, sizeof inner_digest);
}

static int not_ready(const HmacKeyObject *k)
{
    if (k->ready)
        return 0;
    PyErr_SetString(PyExc_AttributeError, "HmacKey has no key: __init__ was not called");
    return 1;
}

static int HmacKey_init(HmacKeyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"key", NULL};
    PyObject *key;
    const uint8_t *kp;
    Py_ssize_t klen;
    uint8_t block[SHA256_BLOCK], pad[SHA256_BLOCK];
    int i;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:HmacKey", kwlist, &key))
        return -1;
    if (PyBytes_Check(key)) {
        kp = (const uint8_t *)PyBytes_AS_STRING(key);
        klen = PyBytes_GET_SIZE(key);
    }
    else if (PyByteArray_Check(key)) {
        kp = (const uint8_t *)PyByteArray_AS_STRING(key);
        klen = PyByteArray_GET_SIZE(key);
    }
    else
        klen = 0;
    if (klen == 0) {
        PyErr_SetString(PyExc_ValueError, "HMAC key must be non-empty bytes");
        return -1;
    }

    memset(block, 0, sizeof block);
    if (klen > SHA256_BLOCK)           /* RFC 2104: long keys are hashed first */
        sha256_finish(SHA256_IV, 0, kp, (size_t)klen, block);
    else
        memcpy(block, kp, (size_t)klen);

    for (i = 0; i < SHA256_BLOCK; i++)
        pad[i] = block[i] ^ 0x36;
    memcpy(self->inner, SHA256_IV, sizeof self->inner);
    sha256_compress(self->inner, pad, 1);
    for (i = 0; i < SHA256_BLOCK; i++)
        pad[i] = block[i] ^ 0x5c;
    memcpy(self->outer, SHA256_IV, sizeof self->outer);
    sha256_compress(self->outer, pad, 1);
    self->ready = 1;

    secure_zero(block, sizeof block);
    secure_zero(pad, sizeof pad);
    return 0;
}

static void HmacKey_dealloc(HmacKeyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    secure_zero(self->inner, sizeof self->inner);
    secure_zero(self->outer, sizeof self->outer);
    tp->tp_free((PyObject *)self);
}

PyDoc_STRVAR(sign_doc, "sign($self, /, data)\n--\n\nHMAC-SHA256 (32 bytes) of a bytes-like object.");

static PyObject *HmacKey_sign(HmacKeyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    static const char *const names[] = {"data"};
    PyObject *data, *out;
    Py_buffer view;

    if (kwnames == NULL && nargs == 1)
        data = args[0];
    else if (bind_args("sign", args, nargs, kwnames, names, 1, 1, &data) < 0)
        return NULL;
    if (not_ready(self))
        return NULL;
    out = PyBytes_FromStringAndSize(NULL, TAG_SIZE);
    if (out == NULL)
        return NULL;
    if (PyBytes_CheckExact(data)) {
        hmac_tag(self, (const uint8_t *)PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data),
                 (uint8_t *)PyBytes_AS_STRING(out));
        return out;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    hmac_tag(self, (const uint8_t *)view.buf, (size_t)view.len, (uint8_t *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&view);
    return out;
}

PyDoc_STRVAR(verify_doc,
"verify($self, /, buf, start, end)\n--\n\n"
"True when buf[end-32:end] is the tag of buf[start:end-32] (constant-time compare);\n"
"False when start < 0, end > len(buf) or end - start < 32.");

static PyObject *HmacKey_verify(HmacKeyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const names[] = {"buf", "start", "end"};
    PyObject *a[3];
    Py_ssize_t start, end, n;
    Py_buffer view;
    const uint8_t *p;
    uint8_t tag[TAG_SIZE];
    unsigned int diff = 0;
    int i, owns_view = 0;

    if (kwnames == NULL && nargs == 3) {
        a[0] = args[0];
        a[1] = args[1];
        a[2] = args[2];
    }
    else if (bind_args("verify", args, nargs, kwnames, names, 3, 3, a) < 0)
        return NULL;
    start = index_clamped(a[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    end = index_clamped(a[2]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    if (PyBytes_CheckExact(a[0])) {
        n = PyBytes_GET_SIZE(a[0]);
        p = (const uint8_t *)PyBytes_AS_STRING(a[0]);
    }
    else {
        n = PyObject_Length(a[0]);
        if (n < 0)
            return NULL;
        p = NULL;
    }
    /* end < start is tested first so that end - start cannot overflow */
    if (start < 0 || end > n || end < start || end - start < TAG_SIZE)
        Py_RETURN_FALSE;
    if (p == NULL) {
        if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0)
            return NULL;
        owns_view = 1;
        p = (const uint8_t *)view.buf;
        if (end > view.len) {   /* len(buf) counted items, not bytes: no such tag in range */
            PyBuffer_Release(&view);
            Py_RETURN_FALSE;
        }
    }
    if (not_ready(self)) {
        if (owns_view)
            PyBuffer_Release(&view);
        return NULL;
    }
    hmac_tag(self, p + start, (size_t)(end - TAG_SIZE - start), tag);
    for (i = 0; i < TAG_SIZE; i++)
        diff |= (unsigned int)(tag[i] ^ p[end - TAG_SIZE + i]);
    if (owns_view)
        PyBuffer_Release(&view);
    secure_zero(tag, sizeof tag);
    return PyBool_FromLong(diff == 0);
}

PyDoc_STRVAR(seal_doc,
"seal($self, /, ftype, flags, key_id, stream_id, sequence, timestamp_ms, nonce, payload)\n--\n\n"
"Header + payload + tag, signed over exactly the bytes that will travel.\n"
"TypeError for a non-integer field, non-bytes nonce or non-bytes-like payload; ValueError for a\n"
"field outside its u8/u32/u64 range or a nonce that is not exactly 8 bytes.");

static PyObject *HmacKey_seal(HmacKeyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    static const char *const names[] = {"ftype", "flags", "key_id", "stream_id", "sequence",
                                        "timestamp_ms", "nonce", "payload"};
    static const unsigned long long maxima[6] = {
        0xFFULL, 0xFFULL, U32_MAX_VALUE, U32_MAX_VALUE, 0xFFFFFFFFFFFFFFFFULL, 0xFFFFFFFFFFFFFFFFULL,
    };
    PyObject *a[8], *nonce, *payload, *out;
    unsigned long long v[6];
    const uint8_t *np;
    Py_ssize_t nlen, plen, body;
    Py_buffer view;
    uint8_t *o;
    int i;

    if (kwnames == NULL && nargs == 8)
        memcpy(a, args, sizeof a);
    else if (bind_args("seal", args, nargs, kwnames, names, 8, 8, a) < 0)
        return NULL;

    for (i = 0; i < 6; i++) {
        if (header_uint(a[i], names[i], maxima[i], &v[i]) < 0)
            return NULL;
    }
    nonce = a[6];
    if (PyBytes_Check(nonce)) {
        np = (const uint8_t *)PyBytes_AS_STRING(nonce);
        nlen = PyBytes_GET_SIZE(nonce);
    }
    else if (PyByteArray_Check(nonce)) {
        np = (const uint8_t *)PyByteArray_AS_STRING(nonce);
        nlen = PyByteArray_GET_SIZE(nonce);
    }
    else {
        PyErr_Format(PyExc_TypeError, "nonce must be bytes, not %.200s", Py_TYPE(nonce)->tp_name);
        return NULL;
    }
    if (nlen != 8) {
        PyErr_Format(PyExc_ValueError, "nonce must be exactly 8 bytes, got %zd", nlen);
        return NULL;
    }
    payload = a[7];
    plen = PyObject_Length(payload);
    if (plen < 0)
        return NULL;
    if ((unsigned long long)plen > U32_MAX_VALUE) {
        PyErr_Format(PyExc_ValueError, "payload of %zd bytes does not fit the u32 length field",
                     plen);
        return NULL;
    }
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0) {
        /* pure's `header + payload` turns any buffer failure into this TypeError */
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "can't concat %.100s to bytes", Py_TYPE(payload)->tp_name);
        return NULL;
    }
    /* a bytearray nonce cannot change under us: nothing below runs Python code */
    if (not_ready(self)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (view.len > PY_SSIZE_T_MAX - HEADER_SIZE - TAG_SIZE) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + view.len + TAG_SIZE);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    o = (uint8_t *)PyBytes_AS_STRING(out);
    store_be32(o, (uint32_t)plen);
    o[4] = 1;                          /* version */
    o[5] = (uint8_t)v[0];              /* type */
    o[6] = (uint8_t)v[1];              /* flags */
    o[7] = 0;                          /* reserved */
    store_be32(o + 8, (uint32_t)v[2]);
    store_be32(o + 12, (uint32_t)v[3]);
    store_be64(o + 16, (uint64_t)v[4]);
    store_be64(o + 24, (uint64_t)v[5]);
    memcpy(o + 32, np, 8);
    if (view.len)
        memcpy(o + HEADER_SIZE, view.buf, (size_t)view.len);
    body = HEADER_SIZE + view.len;
    PyBuffer_Release(&view);
    hmac_tag(self, o, (size_t)body, o + body);
    return out;
}

/* copy.copy() works on the pure twin (it shares the immutable pre-keyed hmac object), so here
 * too; deepcopy and pickle fail with TypeError in both (keys are not serialisable). */
static PyObject *HmacKey_copy(HmacKeyObject *self, PyObject *unused)
{
    PyTypeObject *tp = Py_TYPE(self);
    HmacKeyObject *c = (HmacKeyObject *)tp->tp_alloc(tp, 0);
    if (c == NULL)
        return NULL;
    memcpy(c->inner, self->inner, sizeof c->inner);
    memcpy(c->outer, self->outer, sizeof c->outer);
    c->ready = self->ready;
    return (PyObject *)c;
}

static PyMethodDef HmacKey_methods[] = {
    {"__copy__", (PyCFunction)HmacKey_copy, METH_NOARGS, "A new key with the same midstates."},
    {"sign", (PyCFunction)(void (*)(void))HmacKey_sign, METH_FASTCALL | METH_KEYWORDS, sign_doc},
    {"verify", (PyCFunction)(void (*)(void))HmacKey_verify, METH_FASTCALL | METH_KEYWORDS,
     verify_doc},
    {"seal", (PyCFunction)(void (*)(void))HmacKey_seal, METH_FASTCALL | METH_KEYWORDS, seal_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(HmacKey_doc,
"HmacKey(key)\n--\n\n"
"An HMAC-SHA256 key with its pads pre-absorbed (the inner and outer SHA-256 midstates are\n"
"computed once here), so each frame costs only its own bytes plus one outer block.\n"
"ValueError unless key is non-empty bytes or bytearray.");

static PyTypeObject HmacKeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "codec._native.HmacKey",
    .tp_basicsize = sizeof(HmacKeyObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)HmacKey_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = HmacKey_doc,
    .tp_methods = HmacKey_methods,
    .tp_init = (initproc)HmacKey_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------------
 * decode_cbor: strict decoder of exactly one CBOR data item (the twin of cbor2 as _pure uses it)
 *
 * Accepted: ints of every width (non-minimal encodings too, as cbor2 does), definite-length byte
 * and text strings (strict UTF-8), arrays, maps with text/byte-string keys and no duplicates,
 * half/single/double floats, false/true/null, undefined and simple values (returned as the very
 * objects cbor2 returns: cbor2.undefined and cbor2.CBORSimpleValue(n); two-byte simple values
 * below 32 are rejected). Rejected: tags, indefinite lengths, the break byte, additional info
 * 28-30, truncation, trailing bytes, and more than max_depth containers nested (the top-level
 * item, if a container, is the first; an empty container counts like any other, so max_depth=0
 * allows only a scalar: PROTOCOL.md §6.1 rule 8).
 *
 * Iterative, with two explicit stacks: one entry per open container, and the decoded items of
 * all open containers. A container's list or dict is built, at its exact size, only once its
 * last item is decoded. So nesting costs heap, never C stack; a claimed length is only checked
 * against the bytes left (an array item takes >= 1 byte, a map entry >= 2), never allocated
 * for; and memory stays proportional to what was actually decoded, whatever the claims.
 * ------------------------------------------------------------------------------------------- */

#define CBOR_CTL_INLINE 16
#define CBOR_VAL_INLINE 64

static PyObject *CborUndefined;         /* cbor2.undefined, imported on first use */
static PyObject *CborSimpleValueType;   /* cbor2.CBORSimpleValue, imported on first use */

typedef struct {
    Py_ssize_t left;      /* items still to decode (a map entry is two: key, value) */
    Py_ssize_t base;      /* where this container's items start on the value stack */
    int is_map;
} cbor_open;

static int cbor2_objects(void)
{
    PyObject *mod;
    if (CborSimpleValueType != NULL)
        return 0;
    mod = PyImport_ImportModule("cbor2");
    if (mod == NULL)
        return -1;
    CborUndefined = PyObject_GetAttrString(mod, "undefined");
    if (CborUndefined != NULL)
        CborSimpleValueType = PyObject_GetAttrString(mod, "CBORSimpleValue");
    Py_DECREF(mod);
    if (CborSimpleValueType == NULL) {
        Py_CLEAR(CborUndefined);
        return -1;
    }
    return 0;
}

static PyObject *cbor_simple_value(unsigned int v)
{
    PyObject *n, *res;
    if (cbor2_objects() < 0)
        return NULL;
    n = PyLong_FromUnsignedLong(v);
    if (n == NULL)
        return NULL;
    res = PyObject_CallOneArg(CborSimpleValueType, n);
    Py_DECREF(n);
    return res;
}

/* IEEE 754 binary16 -> double, exactly (as cbor2: NaNs come out quiet, payload kept). */
static double cbor_half(uint16_t h)
{
    uint64_t sign = (uint64_t)(h >> 15) << 63, bits;
    unsigned int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double d;

    if (exp == 0) {                       /* zero and subnormals: mant * 2^-24, exact */
        d = (double)mant * (1.0 / 16777216.0);
        return sign ? -d : d;
    }
    if (exp == 31)
        bits = sign | 0x7ff0000000000000ULL |
               (mant ? 0x0008000000000000ULL | ((uint64_t)mant << 42) : 0);
    else
        bits = sign | ((uint64_t)(exp - 15 + 1023) << 52) | ((uint64_t)mant << 42);
    memcpy(&d, &bits, sizeof d);
    return d;
}

static void cbor_error(const char *what, Py_ssize_t at)
{
    PyErr_Format(PyExc_ValueError, "malformed CBOR at byte %zd: %s", at, what);
}

/* A str from UTF-8 bytes (strict): ASCII, the usual case, is checked 8 bytes at a time and
 * copied straight into a new compact ASCII string, the object PyUnicode_DecodeUTF8 would build. */
static PyObject *cbor_text(const uint8_t *s, Py_ssize_t len)
{
    Py_ssize_t i = 0;
    uint64_t acc = 0, w;
    PyObject *u;

    if (len < 2)                            /* the interpreter's shared "" and 1-char strings */
        return PyUnicode_DecodeUTF8((const char *)s, len, NULL);
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, s + i, 8);
        acc |= w;
    }
    for (; i < len; i++)
        acc |= s[i];
    if (acc & 0x8080808080808080ULL)
        return PyUnicode_DecodeUTF8((const char *)s, len, NULL);
    u = PyUnicode_New(len, 127);
    if (u != NULL)
        memcpy(PyUnicode_1BYTE_DATA(u), s, (size_t)len);
    return u;
}

/* Map keys repeat from payload to payload ("messages", "max_tokens", ...), and so do short values
 * ("user", "balanced"): short ASCII strings are kept in a small direct-mapped cache, with their
 * hash computed, so a repeated one costs a memcmp and an INCREF instead of an allocation, a
 * UTF-8 decode and (for keys) a SipHash. Cached strings are immutable and equal to what decoding
 * gives, so results do not change; at most CBOR_KEY_CACHE of them stay alive. Like the module's
 * other static state this relies on the GIL (single-phase init: no per-interpreter GIL). */
#define CBOR_KEY_CACHE 256
#define CBOR_KEY_MAX 32         /* longest key cached */
#define CBOR_VALUE_MAX 16       /* longest non-key text cached */

static PyObject *cbor_key_cache[CBOR_KEY_CACHE];

static PyObject *cbor_text_key(const uint8_t *s, Py_ssize_t len)
{
    uint32_t h = 2166136261u;               /* FNV-1a */
    Py_ssize_t i;
    PyObject *k, **slot;

    if (len > CBOR_KEY_MAX)
        return cbor_text(s, len);
    for (i = 0; i < len; i++)
        h = (h ^ s[i]) * 16777619u;
    slot = &cbor_key_cache[(h ^ (h >> 16)) & (CBOR_KEY_CACHE - 1)];
    k = *slot;                              /* cached keys are ASCII: 1 byte per character */
    if (k != NULL && PyUnicode_GET_LENGTH(k) == len && memcmp(PyUnicode_DATA(k), s, (size_t)len) == 0)
        return Py_NewRef(k);
    k = cbor_text(s, len);
    if (k != NULL && PyUnicode_IS_ASCII(k) && PyObject_Hash(k) != -1)
        Py_XSETREF(*slot, Py_NewRef(k));
    return k;
}

/* Double a stack that starts out in `inline_buf`; -1 (MemoryError set) on failure. */
static int cbor_grow(void **buf, void *inline_buf, Py_ssize_t *cap, size_t elsize)
{
    size_t bytes = (size_t)*cap * 2 * elsize;
    void *grown;
    if ((size_t)*cap > (size_t)PY_SSIZE_T_MAX / 2 / elsize) {
        PyErr_NoMemory();
        return -1;
    }
    if (*buf == inline_buf) {
        grown = PyMem_Malloc(bytes);
        if (grown != NULL)
            memcpy(grown, inline_buf, (size_t)*cap * elsize);
    }
    else
        grown = PyMem_Realloc(*buf, bytes);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = grown;
    *cap *= 2;
    return 0;
}

/* The completed container whose items are items[0:count]. Steals every one of those references,
 * on success and on failure alike. */
static PyObject *cbor_build(PyObject **items, Py_ssize_t count, int is_map)
{
    PyObject *c;
    Py_ssize_t i = 0;

    if (!is_map) {
        c = PyList_New(count);
        if (c == NULL)
            goto fail;
        for (; i < count; i++)
            PyList_SET_ITEM(c, i, items[i]);
        return c;
    }
#if PY_VERSION_HEX < 0x030D0000
    c = _PyDict_NewPresized(count / 2);     /* no resize while filling (public API from 3.13 on: no) */
#else
    c = PyDict_New();
#endif
    if (c == NULL)
        goto fail;
    for (; i < count; i += 2) {
        /* keys are str or bytes: hashing and comparing them cannot run Python code */
        if (PyDict_SetItem(c, items[i], items[i + 1]) < 0)
            goto fail;
        if (PyDict_GET_SIZE(c) != i / 2 + 1) {      /* it replaced an entry: duplicate key */
            if (PyObject_Length(items[i]) <= 40)
                PyErr_Format(PyExc_ValueError, "malformed CBOR: duplicate map key %R", items[i]);
            else
                PyErr_SetString(PyExc_ValueError, "malformed CBOR: duplicate map key");
            goto fail;
        }
        Py_DECREF(items[i]);
        Py_DECREF(items[i + 1]);
    }
    return c;
fail:
    Py_XDECREF(c);
    for (; i < count; i++)
        Py_DECREF(items[i]);
    return NULL;
}

static PyObject *cbor_decode(const uint8_t *p, Py_ssize_t n, Py_ssize_t max_depth)
{
    cbor_open ctl_inline[CBOR_CTL_INLINE], *ctl = ctl_inline, *top;
    PyObject *val_inline[CBOR_VAL_INLINE], **vals = val_inline, *obj = NULL;
    Py_ssize_t ctl_cap = CBOR_CTL_INLINE, val_cap = CBOR_VAL_INLINE, sp = 0, vsp = 0, i;
    Py_ssize_t pos = 0, at;
    uint64_t val;
    unsigned int ib, major, ai;
    int is_key;

    for (;;) {
        at = pos;
        if (pos >= n) {
            cbor_error("truncated: a data item was expected", at);
            goto error;
        }
        ib = p[pos++];
        major = ib >> 5;
        ai = ib & 31;
        /* a map's items alternate key, value: an even count left means a key comes next */
        is_key = sp > 0 && ctl[sp - 1].is_map && (ctl[sp - 1].left & 1) == 0;
        if (is_key && major != 2 && major != 3) {
            cbor_error("map key must be a text string or byte string", at);
            goto error;
        }
        if (ai < 24)
            val = ai;
        else if (ai <= 27) {
            Py_ssize_t w = (Py_ssize_t)1 << (ai - 24);
            if (n - pos < w) {
                cbor_error("truncated argument", at);
                goto error;
            }
            switch (ai) {
            case 24: val = p[pos]; break;
            case 25: val = ((uint64_t)p[pos] << 8) | p[pos + 1]; break;
            case 26: val = load_be32(p + pos); break;
            default: val = load_be64(p + pos); break;
            }
            pos += w;
        }
        else if (ai == 31) {
            if (ib == 0xff)
                cbor_error("break code where a data item was expected", at);
            else if (major >= 2 && major <= 5)
                cbor_error("indefinite-length items are not allowed", at);
            else if (major == 6)
                cbor_error("CBOR tags are not allowed in ATP payloads", at);
            else
                cbor_error("additional information 31 is not valid here", at);
            goto error;
        }
        else {
            cbor_error(major == 6 ? "CBOR tags are not allowed in ATP payloads"
                                  : "reserved additional information 28-30", at);
            goto error;
        }

        switch (major) {
        case 0:
            obj = PyLong_FromUnsignedLongLong(val);
            break;
        case 1:
            if (val <= (uint64_t)LLONG_MAX)
                obj = PyLong_FromLongLong(-1 - (long long)val);
            else {
                PyObject *u = PyLong_FromUnsignedLongLong(val);
                if (u == NULL)
                    goto error;
                obj = PyNumber_Invert(u);       /* ~u == -1 - u */
                Py_DECREF(u);
            }
            break;
        case 2:
        case 3:
            if (val > (uint64_t)(n - pos)) {
                cbor_error(major == 2 ? "truncated byte string" : "truncated text string", at);
                goto error;
            }
            if (major == 2)
                obj = PyBytes_FromStringAndSize((const char *)p + pos, (Py_ssize_t)val);
            else {
                obj = is_key || val <= CBOR_VALUE_MAX ? cbor_text_key(p + pos, (Py_ssize_t)val)
                                                      : cbor_text(p + pos, (Py_ssize_t)val);
                if (obj == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    PyErr_Clear();
                    cbor_error("text string is not valid UTF-8", at);
                    goto error;
                }
            }
            pos += (Py_ssize_t)val;
            break;
        case 4:
        case 5:
            /* before the empty-container shortcut: an empty container is one level too */
            if (sp >= max_depth) {
                PyErr_Format(PyExc_ValueError, "malformed CBOR at byte %zd: maximum container "
                             "nesting depth (%zd) exceeded", at, max_depth);
                goto error;
            }
            if (val == 0) {
                obj = major == 4 ? PyList_New(0) : PyDict_New();
                break;
            }
            /* each array item takes >= 1 byte, each map entry >= 2: nothing is allocated from
             * the claim, it only has to fit the bytes left */
            if (val > (uint64_t)(n - pos) / (major == 4 ? 1u : 2u)) {
                cbor_error(major == 4 ? "truncated array" : "truncated map", at);
                goto error;
            }
            if (sp == ctl_cap &&
                cbor_grow((void **)&ctl, ctl_inline, &ctl_cap, sizeof(cbor_open)) < 0)
                goto error;
            top = &ctl[sp++];
            top->is_map = major == 5;
            top->left = (Py_ssize_t)val * (major == 5 ? 2 : 1);
            top->base = vsp;
            continue;                           /* on to the container's first item */
        case 6:
            cbor_error("CBOR tags are not allowed in ATP payloads", at);
            goto error;
        default:                                /* 7: simple values and floats */
            if (ai < 20)
                obj = cbor_simple_value(ai);
            else if (ai == 20)
                obj = Py_NewRef(Py_False);
            else if (ai == 21)
                obj = Py_NewRef(Py_True);
            else if (ai == 22)
                obj = Py_NewRef(Py_None);
            else if (ai == 23)
                obj = cbor2_objects() < 0 ? NULL : Py_NewRef(CborUndefined);
            else if (ai == 24) {
                if (val < 32) {
                    cbor_error("two-byte simple value below 32", at);
                    goto error;
                }
                obj = cbor_simple_value((unsigned int)val);
            }
            else if (ai == 25)
                obj = PyFloat_FromDouble(cbor_half((uint16_t)val));
            else if (ai == 26) {
                uint32_t b32 = (uint32_t)val;
                float f;
                memcpy(&f, &b32, sizeof f);
                obj = PyFloat_FromDouble((double)f);    /* as cbor2: a NaN comes out quiet */
            }
            else {
                double d;
                memcpy(&d, &val, sizeof d);
                obj = PyFloat_FromDouble(d);
            }
            break;
        }
        if (obj == NULL)
            goto error;

        /* obj is a finished item: it goes to its container; containers that complete bubble up */
        for (;;) {
            if (sp == 0)
                goto done;
            if (vsp == val_cap &&
                cbor_grow((void **)&vals, val_inline, &val_cap, sizeof(PyObject *)) < 0)
                goto error;
            vals[vsp++] = obj;
            obj = NULL;
            top = &ctl[sp - 1];
            if (--top->left > 0)
                break;
            obj = cbor_build(vals + top->base, vsp - top->base, top->is_map);
            vsp = top->base;                    /* cbor_build took those references */
            sp--;
            if (obj == NULL)
                goto error;
        }
    }

done:
    if (pos != n) {
        PyErr_Format(PyExc_ValueError, "%zd trailing bytes after the CBOR item", n - pos);
        Py_CLEAR(obj);
    }
    /* the stacks are empty here: nothing else to release */
    if (ctl != ctl_inline)
        PyMem_Free(ctl);
    if (vals != val_inline)
        PyMem_Free(vals);
    return obj;

error:
    Py_XDECREF(obj);
    for (i = 0; i < vsp; i++)
        Py_DECREF(vals[i]);
    if (ctl != ctl_inline)
        PyMem_Free(ctl);
    if (vals != val_inline)
        PyMem_Free(vals);
    return NULL;
}

PyDoc_STRVAR(decode_cbor_doc,
"decode_cbor(buf, start, end, max_depth)\n--\n\n"
"Decode exactly one strict CBOR data item from the bytes buf[start:end] (it must use all of\n"
"them) and return it. ValueError for malformed or disallowed CBOR (tags, indefinite lengths,\n"
"duplicate or non-string map keys, invalid UTF-8, more than max_depth nested containers,\n"
"trailing bytes),\n"
"for max_depth < 0, and unless 0 <= start <= end <= buf's size in bytes.");

static PyObject *decode_cbor(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"buf", "start", "end", "max_depth"};
    PyObject *a[4], *res;
    Py_ssize_t start, end, depth;
    Py_buffer view;

    if (kwnames == NULL && nargs == 4)
        memcpy(a, args, sizeof a);
    else if (bind_args("decode_cbor", args, nargs, kwnames, names, 4, 4, a) < 0)
        return NULL;
    start = index_clamped(a[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    end = index_clamped(a[2]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    depth = index_clamped(a[3]);
    if (depth == -1 && PyErr_Occurred())
        return NULL;
    if (depth < 0) {
        PyErr_SetString(PyExc_ValueError, "max_depth must be >= 0");
        return NULL;
    }
    if (PyBytes_CheckExact(a[0])) {
        if (start < 0 || end < start || end > PyBytes_GET_SIZE(a[0]))
            goto bad_range;
        return cbor_decode((const uint8_t *)PyBytes_AS_STRING(a[0]) + start, end - start, depth);
    }
    if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        goto bad_range;
    }
    /* nothing in the decoder runs code that could mutate the exported buffer */
    res = cbor_decode((const uint8_t *)view.buf + start, end - start, depth);
    PyBuffer_Release(&view);
    return res;
bad_range:
    PyErr_SetString(PyExc_ValueError, "decode_cbor range out of bounds");
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Test hooks (private): which SHA-256 compressor is in use, and forcing the portable one.
 * ------------------------------------------------------------------------------------------- */

static PyObject *get_sha256_backend(PyObject *module, PyObject *unused)
{
    return PyUnicode_FromString(sha256_backend);
}

static PyObject *set_sha256_backend(PyObject *module, PyObject *arg)
{
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (name == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "backend name must be a str");
        return NULL;
    }
    if (strcmp(name, "portable") == 0) {
        sha256_compress = sha256_compress_portable;
        sha256_backend = "portable";
    }
#if ATP_HAVE_SHANI
    else if ((strcmp(name, "shani") == 0 || strcmp(name, "auto") == 0) && cpu_has_shani()) {
        sha256_compress = sha256_compress_shani;
        sha256_backend = "shani";
    }
#endif
    else if (strcmp(name, "auto") == 0) {
        sha256_compress = sha256_compress_portable;
        sha256_backend = "portable";
    }
    else {
        PyErr_Format(PyExc_ValueError, "SHA-256 backend %R is not available here", arg);
        return NULL;
    }
    return PyUnicode_FromString(sha256_backend);
}

static PyMethodDef module_methods[] = {
    {"peek_frame", (PyCFunction)(void (*)(void))peek_frame, METH_FASTCALL | METH_KEYWORDS,
     peek_frame_doc},
    {"decode_cbor", (PyCFunction)(void (*)(void))decode_cbor, METH_FASTCALL | METH_KEYWORDS,
     decode_cbor_doc},
    {"_sha256_backend", get_sha256_backend, METH_NOARGS,
     "Name of the SHA-256 compressor in use: 'shani' or 'portable'."},
    {"_set_sha256_backend", set_sha256_backend, METH_O,
     "Select 'portable', 'shani' or 'auto' (tests only; keys keep their midstates)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "codec._native",
    .m_doc = "C twin of codec._pure: frame-header peek, HMAC-SHA256 with precomputed pads and "
             "strict CBOR decoding.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m, *structmod, *header;

#if ATP_HAVE_SHANI
    if (cpu_has_shani()) {
        sha256_compress = sha256_compress_shani;
        sha256_backend = "shani";
    }
#endif
    if (PyType_Ready(&HmacKeyType) < 0)
        return NULL;
    structmod = PyImport_ImportModule("struct");
    if (structmod == NULL)
        return NULL;
    if (StructError == NULL) {
        StructError = PyObject_GetAttrString(structmod, "error");
        if (StructError == NULL) {
            Py_DECREF(structmod);
            return NULL;
        }
    }
    header = PyObject_CallMethod(structmod, "Struct", "s", ">IBBBBIIQQ8s");
    Py_DECREF(structmod);
    if (header == NULL)
        return NULL;

    m = PyModule_Create(&native_module);
    if (m == NULL) {
        Py_DECREF(header);
        return NULL;
    }
    if (PyModule_AddObject(m, "HEADER", header) < 0) {
        Py_DECREF(header);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "HEADER_SIZE", HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "TAG_SIZE", TAG_SIZE) < 0 ||
        PyModule_AddStringConstant(m, "NAME", "native") < 0)
        goto fail;
    Py_INCREF(&HmacKeyType);
    if (PyModule_AddObject(m, "HmacKey", (PyObject *)&HmacKeyType) < 0) {
        Py_DECREF(&HmacKeyType);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

/* PBKDF2-HMAC-SHA256 (RFC 8018 §5.2) for the SPAKE2+ verifier, at the SHA-256 limit.
 *
 * The verifier needs 80 output bytes: three 32-byte blocks T1..T3, each `c` iterations of
 * U_j = HMAC(P, U_{j-1}), i.e. two SHA-256 compressions per iteration (inner and outer) with the
 * HMAC key's pads already absorbed. The cost is therefore 2 * 3 * c compressions and nothing
 * else, if:
 *
 *   - the key's inner and outer states (SHA-256 of K^ipad and of K^opad) are computed once per
 *     call, not per iteration;
 *   - each iteration is exactly one compression of a fixed-layout block (U || 0x80 || 0.. || 768
 *     bits): the padding words are constants and U stays in registers between the inner and
 *     outer hash and between iterations (no byte swapping, no memory round trip);
 *   - the three blocks run interleaved: a SHA-NI round instruction has a latency of several
 *     cycles but a throughput of about one per cycle, so one chain leaves the unit idle most of
 *     the time; three independent chains (the three output blocks) fill it.
 *
 * SHA-NI is used when the CPU has it (cpuid, checked once at import); otherwise portable C does
 * the same work one block at a time (pbkdf2.py then prefers cryptography's OpenSSL, measured
 * faster than this portable path, and keeps it as a reference). The password is limited to one SHA-256 block (64 bytes):
 * HMAC pre-hashes a longer key, a path the Matter passcode (4 bytes) never takes; rather than
 * carry untested code for it, such a password is refused with a clear error.
 *
 * The GIL is released during the computation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define MF_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#define MAX_PASSWORD 64 /* one SHA-256 block: the HMAC key is used as is, never pre-hashed */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t H256[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* The message words 8..15 of the block hashed in every iteration: a 32-byte message after the
 * 64-byte key block, padded (0x80, zeros, length = 96 bytes = 768 bits). */
#define PAD_W8 0x80000000u
#define PAD_BITS 768u

static inline uint32_t load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ------------------------------------------------------------------------ portable SHA-256 */
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void portable_compress_words(uint32_t s[8], const uint32_t m[16]) {
    uint32_t w[64];
    memcpy(w, m, 64);
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = ROR(w[t - 15], 7) ^ ROR(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = ROR(w[t - 2], 17) ^ ROR(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
    for (int t = 0; t < 64; t++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[t] + w[t];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    s[0] += a;
    s[1] += b;
    s[2] += c;
    s[3] += d;
    s[4] += e;
    s[5] += f;
    s[6] += g;
    s[7] += h;
}

static void portable_compress_blocks(uint32_t s[8], const uint8_t *data, size_t blocks) {
    uint32_t m[16];
    for (size_t i = 0; i < blocks; i++, data += 64) {
        for (int t = 0; t < 16; t++) m[t] = load_be32(data + 4 * t);
        portable_compress_words(s, m);
    }
}

/* c - 1 iterations for one output block: u holds U_1 and t holds T = U_1 on entry; on return
 * t = U_1 ^ ... ^ U_c. */
static void portable_iterate(const uint32_t inner[8], const uint32_t outer[8], uint32_t u[8],
                             uint32_t t[8], uint32_t rounds) {
    uint32_t m[16] = {0};
    m[8] = PAD_W8;
    m[15] = PAD_BITS;
    for (uint32_t r = 0; r < rounds; r++) {
        uint32_t s[8];
        memcpy(s, inner, 32);
        memcpy(m, u, 32);
        portable_compress_words(s, m);
        memcpy(u, outer, 32);
        memcpy(m, s, 32);
        portable_compress_words(u, m);
        for (int i = 0; i < 8; i++) t[i] ^= u[i];
    }
}

/* ------------------------------------------------------------------------------- SHA-NI */
#ifdef MF_X86
#define NI_TARGET __attribute__((target("sha,sse4.1,ssse3")))
#define NI_INLINE static inline __attribute__((always_inline, target("sha,sse4.1,ssse3")))

/* The state words a..h as SHA-NI keeps them: ABEF and CDGH (highest lane first). */
NI_INLINE void ni_from_words(const uint32_t s[8], __m128i *abef, __m128i *cdgh) {
    __m128i dcba = _mm_loadu_si128((const __m128i *)&s[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&s[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    *abef = _mm_alignr_epi8(cdab, efgh, 8);
    *cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
}

/* ABEF/CDGH back to the words a..d, e..h in lanes 0..3: also the message words W0..W7 of the
 * next block when the digest is the next message. */
NI_INLINE void ni_to_words(__m128i abef, __m128i cdgh, __m128i *dcba, __m128i *hgfe) {
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    *dcba = _mm_blend_epi16(feba, dchg, 0xF0);
    *hgfe = _mm_alignr_epi8(dchg, feba, 8);
}

#define KV(i) _mm_loadu_si128((const __m128i *)&K256[4 * (i)])

/* Four rounds with message words m (four lanes) on state (s0 = ABEF, s1 = CDGH). */
#define NI_4ROUNDS(s0, s1, m, i)                                                                  \
    do {                                                                                          \
        __m128i wk_ = _mm_add_epi32((m), KV(i));                                                  \
        (s1) = _mm_sha256rnds2_epu32((s1), (s0), wk_);                                            \
        (s0) = _mm_sha256rnds2_epu32((s0), (s1), _mm_shuffle_epi32(wk_, 0x0E));                   \
    } while (0)

/* The next four message words from the previous sixteen (m0 oldest, m3 newest). */
#define NI_SCHEDULE(m0, m1, m2, m3)                                                               \
    _mm_sha256msg2_epu32(                                                                         \
        _mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), _mm_alignr_epi8((m3), (m2), 4)), (m3))

/* One compression of `lanes` independent states, interleaved: every step is done for each lane
 * before the next step, so the lanes' dependency chains overlap in the SHA unit. The message of
 * lane l is w[l][0..3]; the state s0/s1 is updated in place, feed-forward included. */
NI_INLINE void ni_compress_lanes(int lanes, __m128i s0[], __m128i s1[], __m128i w[][4]) {
    __m128i a0[3], a1[3], m[3][4];
    for (int l = 0; l < lanes; l++) {
        a0[l] = s0[l];
        a1[l] = s1[l];
        m[l][0] = w[l][0];
        m[l][1] = w[l][1];
        m[l][2] = w[l][2];
        m[l][3] = w[l][3];
    }
#pragma GCC unroll 16
    for (int g = 0; g < 16; g++) {
        if (g >= 4) {
            for (int l = 0; l < lanes; l++) {
                m[l][g & 3] = NI_SCHEDULE(m[l][g & 3], m[l][(g + 1) & 3], m[l][(g + 2) & 3],
                                          m[l][(g + 3) & 3]);
            }
        }
        for (int l = 0; l < lanes; l++) NI_4ROUNDS(s0[l], s1[l], m[l][g & 3], g);
    }
    for (int l = 0; l < lanes; l++) {
        s0[l] = _mm_add_epi32(s0[l], a0[l]);
        s1[l] = _mm_add_epi32(s1[l], a1[l]);
    }
}

/* Bulk hashing: `blocks` 64-byte blocks of `data` into state s (words a..h), one chain. */
static NI_TARGET void ni_compress_blocks(uint32_t s[8], const uint8_t *data, size_t blocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i s0[1], s1[1], w[1][4];
    ni_from_words(s, &s0[0], &s1[0]);
    for (size_t i = 0; i < blocks; i++, data += 64) {
        for (int j = 0; j < 4; j++)
            w[0][j] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * j)), bswap);
        ni_compress_lanes(1, s0, s1, w);
    }
    __m128i lo, hi;
    ni_to_words(s0[0], s1[0], &lo, &hi);
    _mm_storeu_si128((__m128i *)&s[0], lo);
    _mm_storeu_si128((__m128i *)&s[4], hi);
}

/* c - 1 iterations for `lanes` output blocks at once (see portable_iterate). */
NI_INLINE void ni_iterate_lanes(int lanes, const uint32_t inner[8], const uint32_t outer[8],
                                uint32_t u[][8], uint32_t t[][8], uint32_t rounds) {
    __m128i in0, in1, out0, out1;
    ni_from_words(inner, &in0, &in1);
    ni_from_words(outer, &out0, &out1);
    const __m128i pad_lo = _mm_set_epi32(0, 0, 0, (int)PAD_W8);
    const __m128i pad_hi = _mm_set_epi32((int)PAD_BITS, 0, 0, 0);
    __m128i w[3][4], t0[3], t1[3], s0[3], s1[3];
    for (int l = 0; l < lanes; l++) {
        w[l][0] = _mm_loadu_si128((const __m128i *)&u[l][0]);
        w[l][1] = _mm_loadu_si128((const __m128i *)&u[l][4]);
        w[l][2] = pad_lo;
        w[l][3] = pad_hi;
        t0[l] = _mm_loadu_si128((const __m128i *)&t[l][0]);
        t1[l] = _mm_loadu_si128((const __m128i *)&t[l][4]);
    }
    for (uint32_t r = 0; r < rounds; r++) {
        for (int l = 0; l < lanes; l++) {
            s0[l] = in0;
            s1[l] = in1;
        }
        ni_compress_lanes(lanes, s0, s1, w);
        for (int l = 0; l < lanes; l++) {
            ni_to_words(s0[l], s1[l], &w[l][0], &w[l][1]);
            s0[l] = out0;
            s1[l] = out1;
        }
        ni_compress_lanes(lanes, s0, s1, w);
        for (int l = 0; l < lanes; l++) {
            ni_to_words(s0[l], s1[l], &w[l][0], &w[l][1]);
            t0[l] = _mm_xor_si128(t0[l], w[l][0]);
            t1[l] = _mm_xor_si128(t1[l], w[l][1]);
        }
    }
    for (int l = 0; l < lanes; l++) {
        _mm_storeu_si128((__m128i *)&t[l][0], t0[l]);
        _mm_storeu_si128((__m128i *)&t[l][4], t1[l]);
    }
}

static NI_TARGET void ni_iterate_1(const uint32_t *in, const uint32_t *out, uint32_t u[][8],
                                   uint32_t t[][8], uint32_t rounds) {
    ni_iterate_lanes(1, in, out, u, t, rounds);
}
static NI_TARGET void ni_iterate_2(const uint32_t *in, const uint32_t *out, uint32_t u[][8],
                                   uint32_t t[][8], uint32_t rounds) {
    ni_iterate_lanes(2, in, out, u, t, rounds);
}
static NI_TARGET void ni_iterate_3(const uint32_t *in, const uint32_t *out, uint32_t u[][8],
                                   uint32_t t[][8], uint32_t rounds) {
    ni_iterate_lanes(3, in, out, u, t, rounds);
}

static int cpu_has_sha_ni(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & bit_SSE4_1) || !(c & bit_SSSE3)) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 29)) != 0; /* CPUID.(EAX=7,ECX=0):EBX.SHA[bit 29] */
}
#else
static int cpu_has_sha_ni(void) { return 0; }
#endif

/* ------------------------------------------------------------------------------- PBKDF2 */
typedef void (*compress_blocks_fn)(uint32_t s[8], const uint8_t *data, size_t blocks);

typedef struct {
    const char *name;
    compress_blocks_fn compress_blocks;
    int native; /* 1: SHA-NI, 3 blocks interleaved */
} impl_t;

static const impl_t IMPL_PORTABLE = {"portable", portable_compress_blocks, 0};
#ifdef MF_X86
static const impl_t IMPL_SHA_NI = {"sha-ni", ni_compress_blocks, 1};
#endif
static const impl_t *BEST = &IMPL_PORTABLE;

/* SHA-256 of a message that follows `prefix_len` bytes already absorbed into s (words).
 * Writes the digest as words into s. */
static void sha256_finish(const impl_t *impl, uint32_t s[8], uint64_t prefix_len,
                          const uint8_t *msg, size_t len) {
    uint8_t block[128];
    size_t full = len / 64;
    if (full) impl->compress_blocks(s, msg, full);
    size_t rest = len - 64 * full;
    memset(block, 0, sizeof block);
    memcpy(block, msg + 64 * full, rest);
    block[rest] = 0x80;
    size_t n = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (prefix_len + len) * 8;
    for (int i = 0; i < 8; i++) block[n - 1 - i] = (uint8_t)(bits >> (8 * i));
    impl->compress_blocks(s, block, n / 64);
}

typedef struct {
    const impl_t *impl;
    const uint8_t *password;
    size_t password_len;
    const uint8_t *salt;
    size_t salt_len;
    uint32_t iterations;
    uint8_t *out;
    size_t out_len;
    uint8_t *scratch; /* salt || INT(i): salt_len + 4 bytes */
} job_t;

/* U_1 = HMAC(P, S || INT(i)) for block i (1-based), as words. */
static void first_u(const job_t *job, const uint32_t inner[8], const uint32_t outer[8],
                    uint32_t block_index, uint32_t u[8]) {
    uint32_t s[8];
    uint8_t digest[32];
    memcpy(job->scratch, job->salt, job->salt_len);
    store_be32(job->scratch + job->salt_len, block_index);
    memcpy(s, inner, 32);
    sha256_finish(job->impl, s, 64, job->scratch, job->salt_len + 4);
    for (int i = 0; i < 8; i++) store_be32(digest + 4 * i, s[i]);
    memcpy(u, outer, 32);
    sha256_finish(job->impl, u, 64, digest, 32);
}

static void pbkdf2(const job_t *job) {
    uint8_t pad[64];
    uint32_t inner[8], outer[8];
    /* The HMAC pads, once: the states after absorbing K ^ ipad and K ^ opad. */
    memset(pad, 0x36, 64);
    for (size_t i = 0; i < job->password_len; i++) pad[i] ^= job->password[i];
    memcpy(inner, H256, 32);
    job->impl->compress_blocks(inner, pad, 1);
    memset(pad, 0x5c, 64);
    for (size_t i = 0; i < job->password_len; i++) pad[i] ^= job->password[i];
    memcpy(outer, H256, 32);
    job->impl->compress_blocks(outer, pad, 1);

    size_t blocks = (job->out_len + 31) / 32;
    for (size_t first = 0; first < blocks; first += 3) {
        int lanes = blocks - first < 3 ? (int)(blocks - first) : 3;
        uint32_t u[3][8], t[3][8];
        for (int l = 0; l < lanes; l++) {
            first_u(job, inner, outer, (uint32_t)(first + l + 1), u[l]);
            memcpy(t[l], u[l], 32);
        }
        uint32_t rounds = job->iterations - 1;
#ifdef MF_X86
        if (job->impl->native) {
            if (lanes == 3)
                ni_iterate_3(inner, outer, u, t, rounds);
            else if (lanes == 2)
                ni_iterate_2(inner, outer, u, t, rounds);
            else
                ni_iterate_1(inner, outer, u, t, rounds);
        } else
#endif
        {
            for (int l = 0; l < lanes; l++) portable_iterate(inner, outer, u[l], t[l], rounds);
        }
        for (int l = 0; l < lanes; l++) {
            uint8_t bytes[32];
            for (int i = 0; i < 8; i++) store_be32(bytes + 4 * i, t[l][i]);
            size_t at = 32 * (first + l);
            size_t n = job->out_len - at < 32 ? job->out_len - at : 32;
            memcpy(job->out + at, bytes, n);
        }
    }
    memset(pad, 0, sizeof pad);
    memset(inner, 0, sizeof inner);
    memset(outer, 0, sizeof outer);
}

/* ------------------------------------------------------------------------------- Python */
static const impl_t *pick(int portable) { return portable ? &IMPL_PORTABLE : BEST; }

static PyObject *py_pbkdf2(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"password", "salt", "iterations", "length", "portable", NULL};
    Py_buffer password, salt;
    Py_ssize_t iterations, length;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*nn|$p", kwlist, &password, &salt,
                                     &iterations, &length, &portable))
        return NULL;
    PyObject *result = NULL;
    if (password.len > MAX_PASSWORD) {
        PyErr_Format(PyExc_ValueError,
                     "password: must be at most %d bytes (one HMAC block), got %zd",
                     MAX_PASSWORD, password.len);
        goto done;
    }
    if (iterations < 1 || (uint64_t)iterations > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "iterations: must be in 1..%lu, got %zd",
                     (unsigned long)UINT32_MAX, iterations);
        goto done;
    }
    if (length < 1 || length > 1 << 20) {
        PyErr_Format(PyExc_ValueError, "length: must be in 1..%d bytes, got %zd", 1 << 20, length);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, length);
    uint8_t *scratch = PyMem_RawMalloc((size_t)salt.len + 4);
    if (result == NULL || scratch == NULL) {
        Py_CLEAR(result);
        PyMem_RawFree(scratch);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    job_t job = {pick(portable), password.buf, (size_t)password.len, salt.buf, (size_t)salt.len,
                 (uint32_t)iterations, (uint8_t *)PyBytes_AS_STRING(result), (size_t)length,
                 scratch};
    Py_BEGIN_ALLOW_THREADS
    pbkdf2(&job);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
done:
    PyBuffer_Release(&password);
    PyBuffer_Release(&salt);
    return result;
}

static PyObject *py_sha256(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"data", "portable", NULL};
    Py_buffer data;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|$p", kwlist, &data, &portable)) return NULL;
    uint32_t s[8];
    uint8_t digest[32];
    memcpy(s, H256, 32);
    const impl_t *impl = pick(portable);
    Py_BEGIN_ALLOW_THREADS
    sha256_finish(impl, s, 0, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    for (int i = 0; i < 8; i++) store_be32(digest + 4 * i, s[i]);
    return PyBytes_FromStringAndSize((const char *)digest, 32);
}

static PyObject *py_compress_chain(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"count", "portable", NULL};
    Py_ssize_t count;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|$p", kwlist, &count, &portable)) return NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count: must be >= 0");
        return NULL;
    }
    /* Bulk hashing of count * 64 bytes: the blocks are in L1 (one 4 KiB buffer reused), so
     * this is the speed of back-to-back compressions, one dependency chain. */
    uint8_t buf[4096]; /* per call: threads may run this at once */
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 131 + 7);
    uint32_t s[8];
    memcpy(s, H256, 32);
    const impl_t *impl = pick(portable);
    Py_BEGIN_ALLOW_THREADS
    size_t left = (size_t)count;
    while (left) {
        size_t n = left < sizeof buf / 64 ? left : sizeof buf / 64;
        impl->compress_blocks(s, buf, n);
        left -= n;
    }
    Py_END_ALLOW_THREADS
    uint8_t out[32];
    for (int i = 0; i < 8; i++) store_be32(out + 4 * i, s[i]);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyMethodDef methods[] = {
    {"pbkdf2_hmac_sha256", (PyCFunction)(void (*)(void))py_pbkdf2, METH_VARARGS | METH_KEYWORDS,
     "pbkdf2_hmac_sha256(password, salt, iterations, length, *, portable=False) -> bytes"},
    {"sha256", (PyCFunction)(void (*)(void))py_sha256, METH_VARARGS | METH_KEYWORDS,
     "sha256(data, *, portable=False) -> bytes: SHA-256 with this module's compression"},
    {"compress_chain", (PyCFunction)(void (*)(void))py_compress_chain,
     METH_VARARGS | METH_KEYWORDS,
     "compress_chain(count, *, portable=False) -> bytes: count SHA-256 compressions back to back"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pbkdf2",
    "Native PBKDF2-HMAC-SHA256: SHA-NI with three blocks interleaved, or portable C.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__pbkdf2(void) {
#ifdef MF_X86
    if (cpu_has_sha_ni()) BEST = &IMPL_SHA_NI;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddStringConstant(m, "IMPLEMENTATION", BEST->name) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PASSWORD_LEN", MAX_PASSWORD) < 0 ||
        PyModule_AddIntConstant(m, "LANES", BEST->native ? 3 : 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

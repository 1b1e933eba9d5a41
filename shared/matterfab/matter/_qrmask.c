/* QR Code mask evaluation (ISO/IEC 18004:2015 §7.8.3) as segno 1.6.6 scores it, for label.py.
 *
 * label.py makes each label's symbol with mask 0 and then picks the mask segno would have
 * picked: the first of the eight with the lowest penalty. Scoring the eight candidates was half
 * of a label's cost in Python (0.56 of 1.14 ms); this module scores them in C (0.024 ms) with
 * exactly the rules of label._penalty (the readable reference, which the tests compare this
 * with):
 *
 *   N1  every run of >= 5 modules of one colour in a row or a column scores its length - 2;
 *   N2  every 2x2 block of one colour scores 3 (overlapping blocks count each);
 *   N3  every 1:1:3:1:1 finder-like pattern (1011101) in a row or a column scores 40 when it
 *       touches either end of the line, or when the 4 modules before it (as many as there are)
 *       or the 4 after it hold no dark module; segno's search then continues after the match,
 *       otherwise at the match + 4 (so the next match may overlap this one's last three modules);
 *   N4  10 * int(abs(dark / size**2 * 100 - 50) / 5), in IEEE double arithmetic step by step as
 *       Python evaluates it (setup.py compiles this file with -ffp-contract=off, so no fused
 *       multiply-add can change a rounding).
 *
 * Input, one byte (0 or 1) per module, rows top to bottom: the data region of the unmasked
 * symbol (`data`), the modules outside it that are dark while segno scores (`fixed`: function
 * patterns; format and version areas still light) and the eight masks restricted to the data
 * region (`masks`, 8 * size * size bytes). Candidate k is fixed | (data ^ masks[k]) module by
 * module. Malformed input (a size that is no QR Code symbol's, a wrong length, a byte other than
 * 0 or 1) raises ValueError. The GIL is released while the eight candidates are scored.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MASKS 8
#define MIN_SIZE 21  /* version 1 */
#define MAX_SIZE 177 /* version 40 */
#define FINDER_LEN 7

static const uint8_t FINDER_LIKE[FINDER_LEN] = {1, 0, 1, 1, 1, 0, 1};

/* N4 for `dark` dark modules of size * size, exactly as Python's
 * 10 * int(abs(float(dark) / (size**2) * 100 - 50) / 5): every operation is one IEEE double
 * operation rounded to nearest, in Python's order; int() truncates toward zero, as the cast
 * does for the non-negative value here. */
static long n4_score(long dark, long size) {
    double percent = (double)dark / (double)(size * size);
    double deviation = fabs(percent * 100.0 - 50.0);
    return 10 * (long)(deviation / 5.0);
}

static int any_dark(const uint8_t *line, long from, long to) {
    for (long i = from; i < to; i++)
        if (line[i]) return 1;
    return 0;
}

/* First index >= start of the finder-like pattern in line[0..size), or -1 (str.find). */
static long find_finder_like(const uint8_t *line, long size, long start) {
    for (long i = start; i + FINDER_LEN <= size; i++)
        if (memcmp(line + i, FINDER_LIKE, FINDER_LEN) == 0) return i;
    return -1;
}

/* Whether line[0..size) holds the pattern at all: no branch per position (on these modules a
 * branch is a coin toss), so the exact search runs only on the few lines that hold one. */
static int has_finder_like(const uint8_t *line, long size) {
    unsigned any = 0;
    for (long i = 0; i + FINDER_LEN <= size; i++)
        any |= line[i] & (line[i + 1] ^ 1u) & line[i + 2] & line[i + 3] & line[i + 4] &
               (line[i + 5] ^ 1u) & line[i + 6];
    return any != 0;
}

/* N3 of one line: label._finder_like (segno's n3_pattern_occurrences) step by step. */
static long n3_line(const uint8_t *line, long size) {
    if (!has_finder_like(line, size)) return 0;
    long count = 0;
    long idx = find_finder_like(line, size, 0);
    while (idx != -1) {
        long offset = idx + FINDER_LEN;
        long before = idx - 4 > 0 ? idx - 4 : 0;
        long after = offset + 4 < size ? offset + 4 : size;
        if (idx == 0 || idx == size - FINDER_LEN || !any_dark(line, before, idx) ||
            !any_dark(line, offset, after)) {
            count += 40;
        } else {
            offset = idx + 4; /* not enough light around: the next match may overlap */
        }
        idx = find_finder_like(line, size, offset);
    }
    return count;
}

/* N1 of one line: each maximal run of >= 5 modules of one colour scores its length - 2.
 * Arithmetic instead of branches, which random modules would mispredict half the time. */
static long n1_line(const uint8_t *line, long size) {
    long score = 0, run = 1;
    for (long j = 1; j < size; j++) {
        long same = line[j] == line[j - 1];
        score += (1 - same) * (run >= 5) * (run - 2); /* a run ends where the colour changes */
        run = same * run + 1;
    }
    return score + (run >= 5) * (run - 2);
}

/* The penalty of one candidate, `rows` as size * size modules and `cols` its transpose. */
static long penalty(const uint8_t *rows, const uint8_t *cols, long size) {
    long n1 = 0, n2 = 0, n3 = 0, dark = 0;
    for (long i = 0; i < size; i++) {
        const uint8_t *row = rows + i * size;
        const uint8_t *col = cols + i * size;
        n1 += n1_line(row, size) + n1_line(col, size);
        n3 += n3_line(row, size) + n3_line(col, size);
        for (long j = 0; j < size; j++) dark += row[j];
        if (i > 0) {
            const uint8_t *above = row - size;
            for (long j = 1; j < size; j++)
                n2 += (row[j] == row[j - 1]) & (above[j] == above[j - 1]) & (row[j] == above[j]);
        }
    }
    return n1 + 3 * n2 + n3 + n4_score(dark, size);
}

/* scores[k] = penalty of fixed | (data ^ masks[k]); `rows` and `cols` are scratch of n bytes. */
static void score_masks(long size, const uint8_t *data, const uint8_t *fixed, const uint8_t *masks,
                        uint8_t *rows, uint8_t *cols, long scores[MASKS]) {
    long n = size * size;
    for (int k = 0; k < MASKS; k++) {
        const uint8_t *mask = masks + k * n;
        for (long m = 0; m < n; m++) rows[m] = fixed[m] | (data[m] ^ mask[m]);
        for (long i = 0; i < size; i++)
            for (long j = 0; j < size; j++) cols[j * size + i] = rows[i * size + j];
        scores[k] = penalty(rows, cols, size);
    }
}

/* ------------------------------------------------------------------------------- Python */

/* The size argument as a QR Code symbol size (21..177, 4 * version + 17), or -1 with
 * ValueError set (also for an int too large for a C long) or TypeError (not an int). */
static long parse_size(PyObject *obj) {
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "size: must be an int, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long size = PyLong_AsLongAndOverflow(obj, &overflow);
    if (size == -1 && PyErr_Occurred()) return -1;
    if (overflow || size < MIN_SIZE || size > MAX_SIZE || (size - MIN_SIZE) % 4 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "size: must be a QR Code symbol size (%d..%d, 4 * version + 17), got %R",
                     MIN_SIZE, MAX_SIZE, obj);
        return -1;
    }
    return size;
}

/* Length and 0/1 content of one module buffer; 0, or -1 with ValueError set. */
static int check_modules(const char *field, const Py_buffer *buf, Py_ssize_t expected) {
    if (buf->len != expected) {
        PyErr_Format(PyExc_ValueError, "%s: must be %zd bytes (one per module), got %zd", field,
                     expected, buf->len);
        return -1;
    }
    const uint8_t *p = buf->buf;
    uint8_t bits = 0;
    for (Py_ssize_t i = 0; i < buf->len; i++) bits |= p[i]; /* no early exit: vectorised */
    if (bits <= 1) return 0;
    Py_ssize_t i = 0;
    while (p[i] <= 1) i++;
    PyErr_Format(PyExc_ValueError, "%s: every module must be 0 or 1, byte %zd is %d", field, i,
                 (int)p[i]);
    return -1;
}

static PyObject *py_scores(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"size", "data", "fixed", "masks", NULL};
    PyObject *size_obj;
    Py_buffer data, fixed, masks;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oy*y*y*", kwlist, &size_obj, &data, &fixed,
                                     &masks))
        return NULL;
    PyObject *result = NULL;
    uint8_t *scratch = NULL;
    long size = parse_size(size_obj);
    if (size < 0) goto done;
    Py_ssize_t n = (Py_ssize_t)size * size;
    if (check_modules("data", &data, n) < 0 || check_modules("fixed", &fixed, n) < 0 ||
        check_modules("masks", &masks, MASKS * n) < 0)
        goto done;
    scratch = PyMem_RawMalloc(2 * (size_t)n);
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    long scores[MASKS];
    Py_BEGIN_ALLOW_THREADS
    score_masks(size, data.buf, fixed.buf, masks.buf, scratch, scratch + n, scores);
    Py_END_ALLOW_THREADS
    result = PyTuple_New(MASKS);
    if (result == NULL) goto done;
    for (int k = 0; k < MASKS; k++) {
        PyObject *score = PyLong_FromLong(scores[k]);
        if (score == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(result, k, score);
    }
done:
    PyMem_RawFree(scratch);
    PyBuffer_Release(&data);
    PyBuffer_Release(&fixed);
    PyBuffer_Release(&masks);
    return result;
}

static PyObject *py_n4(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"size", "dark", NULL};
    PyObject *size_obj;
    Py_ssize_t dark;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "On", kwlist, &size_obj, &dark)) return NULL;
    long size = parse_size(size_obj);
    if (size < 0) return NULL;
    if (dark < 0 || dark > (Py_ssize_t)size * size) {
        PyErr_Format(PyExc_ValueError, "dark: must be in 0..%ld (size * size), got %zd",
                     size * size, dark);
        return NULL;
    }
    return PyLong_FromLong(n4_score((long)dark, size));
}

static PyMethodDef methods[] = {
    {"scores", (PyCFunction)(void (*)(void))py_scores, METH_VARARGS | METH_KEYWORDS,
     "scores(size, data, fixed, masks) -> tuple of 8 ints: the penalty of each mask's symbol"},
    {"n4", (PyCFunction)(void (*)(void))py_n4, METH_VARARGS | METH_KEYWORDS,
     "n4(size, dark) -> int: the N4 penalty of `dark` dark modules, as scores computes it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_qrmask",
    "Native QR Code mask evaluation (ISO/IEC 18004 §7.8.3) as segno 1.6.6 scores it.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__qrmask(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "MASKS", MASKS) < 0 ||
        PyModule_AddIntConstant(m, "MIN_SIZE", MIN_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SIZE", MAX_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

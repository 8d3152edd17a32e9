/* pack.c: pickles as they travel through the rings.
 *
 * A small pickle goes inline in a ring record.  A large one goes into a
 * segment of its own (a memfd: shm.c), laid out as a header, the pickle, then its
 * out-of-band buffers: an object holding a large buffer (bytes, bytearray
 * of 64 KiB or more, or anything protocol 5 hands out of band, as NumPy
 * arrays) is pickled with protocol 5 and a buffer_callback, so each buffer
 * is copied once, straight into the segment, with the GIL released; the
 * consumer maps the segment and unpickles with buffers= views of it (NumPy
 * arrays then live on the mapping itself: no copy at all).
 *
 * Plain data (None, bool, int, float, complex, str, small bytes, and exact
 * tuples, lists and dicts of them) travels as marshal instead: the same
 * values and the same sharing, written three to five times faster than a
 * pickle, which memoizes every tuple and string.  A payload says what it is
 * by its first byte: a protocol-5 pickle starts with PROTO (0x80), which no
 * marshal stream does.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <sys/uio.h>

#include <marshal.h>

#define PLAIN_DEPTH 4   /* containers nested deeper are pickled */
#define PICKLE_PROTO 0x80
#define NO_GC_LOAD (64 * 1024) /* loads this large run with the GC paused */

/* ---- a mapping as a Python buffer: what out-of-band views point into ---- */

typedef struct {
    PyObject_HEAD
    char *addr;
    size_t size;
    int kept;     /* a cp_segmap's: not ours to unmap */
    int readonly; /* shared with the producer (a kept mapping) */
} MappingObject;

static void Mapping_dealloc(MappingObject *m)
{
    PyTypeObject *tp = Py_TYPE(m);
    if (m->addr != NULL && !m->kept) munmap(m->addr, m->size ? m->size : 1);
    tp->tp_free(m);
    Py_DECREF(tp);
}

static int Mapping_getbuffer(MappingObject *m, Py_buffer *view, int flags)
{
    /* A private copy-on-write mapping: NumPy arrays built on it are writable.
     * A kept one is shared with the producer, and read-only. */
    return PyBuffer_FillInfo(view, (PyObject *)m, m->addr, (Py_ssize_t)m->size,
                             m->readonly, flags);
}

static PyType_Slot Mapping_slots[] = {
    {Py_tp_dealloc, Mapping_dealloc},
    {Py_bf_getbuffer, Mapping_getbuffer},
    {Py_tp_doc, (void *)"A received segment's memory (unmapped when unused)."},
    {0, NULL},
};

static PyType_Spec Mapping_spec = {
    .name = "cpool._cpool._Mapping",
    .basicsize = sizeof(MappingObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Mapping_slots,
};

/* ---- out-of-band bytes and bytearrays, rebuilt --------------------------- */

PyDoc_STRVAR(
    rebuild_doc,
    "_rebuild($module, buffer, type, /)\n--\n\n"
    "A bytes or bytearray of `type` copied from `buffer` (an out-of-band pickle\n"
    "buffer): the copy runs without the GIL, into pages faulted in at once, in\n"
    "two halves at the same time when it is large.");

static PyObject *rebuild(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_rebuild takes (buffer, type)");
        return NULL;
    }
    int is_bytes = args[1] == (PyObject *)&PyBytes_Type;
    if (!is_bytes && args[1] != (PyObject *)&PyByteArray_Type)
        return PyObject_CallOneArg(args[1], args[0]);
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) != 0) return NULL;
    PyObject *out = is_bytes ? PyBytes_FromStringAndSize(NULL, v.len)
                             : PyByteArray_FromStringAndSize(NULL, v.len);
    if (out != NULL && v.len > 0) {
        char *dst = is_bytes ? PyBytes_AS_STRING(out) : PyByteArray_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        cp_copy_fresh(dst, v.buf, (size_t)v.len);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&v);
    return out;
}

/* ---- large bytes and bytearrays out of band, shared as pickle shares ------ */

/* A bytes or bytearray that goes out of band. */
static int big_bytes(PyObject *o)
{
    return (PyBytes_CheckExact(o) && PyBytes_GET_SIZE(o) >= CP_OOB_MIN) ||
           (PyByteArray_CheckExact(o) && PyByteArray_GET_SIZE(o) >= CP_OOB_MIN);
}

/* The persistent_id of _pack_oob's pickler (self: (memo, big)): a large
 * bytes or bytearray becomes big(obj), which pickles as an out-of-band
 * buffer; every reference to one object the same big, which the pickler
 * then memoizes, so the receiver gets one object again, from one buffer.
 * Anything else: None (pickled as usual).  Called for every object the
 * pickler meets, hence C. */
static PyObject *oob_id(PyObject *self, PyObject *o)
{
    if (!big_bytes(o)) Py_RETURN_NONE;
    PyObject *memo = PyTuple_GET_ITEM(self, 0);
    PyObject *key = PyLong_FromVoidPtr(o); /* o lives as long as the dump */
    if (key == NULL) return NULL;
    PyObject *big = PyDict_GetItemWithError(memo, key);
    if (big != NULL) {
        Py_INCREF(big);
    } else if (!PyErr_Occurred()) {
        big = PyObject_CallOneArg(PyTuple_GET_ITEM(self, 1), o);
        if (big != NULL && PyDict_SetItem(memo, key, big) < 0) Py_CLEAR(big);
    }
    Py_DECREF(key);
    return big;
}

static PyMethodDef oob_id_def = {
    "persistent_id", oob_id, METH_O,
    "A large bytes or bytearray as its out-of-band stand-in."};

PyDoc_STRVAR(oob_ids_doc,
             "_oob_ids($module, big, /)\n--\n\n"
             "(persistent_id, memo) for one pickler: persistent_id(obj) is big(obj)\n"
             "for a bytes or bytearray of OOB_MIN bytes or more, the same one for\n"
             "every reference to obj (memo: id -> big), else None.");

static PyObject *oob_ids(PyObject *Py_UNUSED(m), PyObject *big)
{
    PyObject *memo = PyDict_New();
    PyObject *self = memo ? PyTuple_Pack(2, memo, big) : NULL;
    PyObject *fn = self ? PyCFunction_New(&oob_id_def, self) : NULL;
    PyObject *r = fn ? PyTuple_Pack(2, fn, memo) : NULL;
    Py_XDECREF(fn);
    Py_XDECREF(self);
    Py_XDECREF(memo);
    return r;
}

PyDoc_STRVAR(check_segment_doc,
             "_check_segment($module, fd, size, /)\n--\n\n"
             "Why the file open on `fd` would be refused as a segment of `size`\n"
             "bytes (a string), or None if a pool would map it: the check every\n"
             "received segment and attached arena passes first (for the tests).");

static PyObject *check_segment(PyObject *Py_UNUSED(m), PyObject *args)
{
    int fd;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "iK", &fd, &size)) return NULL;
    const char *why = cp_seg_check(fd, 0, size);
    if (why == NULL) Py_RETURN_NONE;
    return PyUnicode_FromString(why);
}

PyDoc_STRVAR(memfd_doc,
             "_memfd($module, name, /)\n--\n\n"
             "A new memfd as every one of cpool's is made: mode 0600, close-on-exec,\n"
             "sealed against shrinking (cpool._template writes its boot data there).");

static PyObject *memfd(PyObject *Py_UNUSED(m), PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    int fd = cp_memfd(name, 0);
    return fd < 0 ? cp_oserror("memfd_create") : PyLong_FromLong(fd);
}

static PyObject *wire(PyObject *m, PyObject *obj);
static PyObject *unwire(PyObject *m, PyObject *data);

static PyMethodDef pack_functions[] = {
    {"_rebuild", (PyCFunction)(void (*)(void))rebuild, METH_FASTCALL, rebuild_doc},
    {"_oob_ids", oob_ids, METH_O, oob_ids_doc},
    {"_check_segment", check_segment, METH_VARARGS, check_segment_doc},
    {"_memfd", memfd, METH_VARARGS, memfd_doc},
    {"_wire", wire, METH_O,
     "_wire($module, obj, /)\n--\n\nThe bytes cpool sends for obj inline (for tests)."},
    {"_unwire", unwire, METH_O,
     "_unwire($module, data, /)\n--\n\nThe object _wire's bytes carry (for tests)."},
    {NULL, NULL, 0, NULL},
};

int cp_pack_add_types(PyObject *module, cpool_state *st)
{
    st->mapping_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &Mapping_spec, NULL);
    if (st->mapping_type == NULL) return -1;
    return PyModule_AddFunctions(module, pack_functions);
}

/* ---- packing --------------------------------------------------------------- */

static int big_buffer(PyObject *o)
{
    if (PyBytes_CheckExact(o) || PyByteArray_CheckExact(o)) return big_bytes(o);
    if (PyUnicode_Check(o) || PyLong_Check(o) || PyTuple_Check(o) || PyList_Check(o) ||
        !PyObject_CheckBuffer(o))
        return 0;
    Py_buffer b;
    if (PyObject_GetBuffer(o, &b, PyBUF_SIMPLE) != 0) {
        PyErr_Clear(); /* not contiguous: pickled in band */
        return 0;
    }
    int big = b.len >= CP_OOB_MIN;
    PyBuffer_Release(&b);
    return big;
}

/* 1 if o, or a container item down to `depth` levels, holds a big buffer. */
static int has_big_buffer(PyObject *o, int depth)
{
    if (big_buffer(o)) return 1;
    if (depth == 0) return 0;
    if (PyTuple_CheckExact(o) || PyList_CheckExact(o)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        for (Py_ssize_t i = 0; i < n; i++)
            if (has_big_buffer(PySequence_Fast_GET_ITEM(o, i), depth - 1)) return 1;
    } else if (PyDict_CheckExact(o)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v)) {
            Py_INCREF(v); /* getting a buffer may run Python code */
            int big = has_big_buffer(v, depth - 1);
            Py_DECREF(v);
            if (big) return 1;
        }
    }
    return 0;
}

/* What plain() finds: not plain data; plain data in which no object
 * appears twice (marshal without references will do, the fastest: version
 * 2); or plain data in which one does, which marshal keeps one object only
 * with references (version 3 and up: a hash table lookup per object with
 * more than one reference, twice the time for a chunk of tuples). */
enum { NOT_PLAIN = 0, PLAIN_SINGLE, PLAIN_SHARED };

/* The objects a walk has met that could be met again: a set of addresses,
 * open addressing, kept at most half full.  Starts on the stack. */
typedef struct {
    PyObject **slots;
    size_t mask;
    size_t n;
    int twice; /* an object was met twice; or no memory to tell */
    PyObject *first[64];
} cp_seen;

/* room for `expect` objects without growing */
static void seen_init(cp_seen *s, size_t expect)
{
    s->n = 0;
    s->twice = 0;
    s->mask = 63;
    while (s->mask < 4 * expect) s->mask = 2 * s->mask + 1;
    s->slots = s->mask == 63 ? s->first : PyMem_Calloc(s->mask + 1, sizeof *s->slots);
    if (s->slots == NULL) { /* then start small */
        s->mask = 63;
        s->slots = s->first;
    }
    if (s->slots == s->first) memset(s->first, 0, sizeof s->first);
}

static void seen_fini(cp_seen *s)
{
    if (s->slots != s->first) PyMem_Free(s->slots);
}

/* Objects made one after another lie one after another in memory, and a
 * payload's are usually walked in that order: the low bits of the address
 * (past the allocator's 16-byte grain) keep the walk's probes close
 * together, the high ones spread what lies far apart. */
static size_t seen_hash(PyObject *o, size_t mask)
{
    uintptr_t a = (uintptr_t)o;
    return (size_t)((a >> 4) ^ (a >> 24)) & mask;
}

static void seen_put(PyObject **slots, size_t mask, PyObject *o)
{
    size_t i = seen_hash(o, mask);
    while (slots[i] != NULL) i = (i + 1) & mask;
    slots[i] = o;
}

/* Note o, met once more: sets s->twice if it was met before. */
static void seen_add(cp_seen *s, PyObject *o)
{
    if (s->twice) return;
    for (size_t i = seen_hash(o, s->mask);; i = (i + 1) & s->mask) {
        if (s->slots[i] == o) {
            s->twice = 1;
            return;
        }
        if (s->slots[i] == NULL) break;
    }
    if (2 * (s->n + 1) > s->mask + 1) {
        size_t mask = 2 * s->mask + 1;
        PyObject **slots = PyMem_Calloc(mask + 1, sizeof *slots);
        if (slots == NULL) {
            s->twice = 1; /* the slower, always right, way */
            return;
        }
        for (size_t i = 0; i <= s->mask; i++)
            if (s->slots[i] != NULL) seen_put(slots, mask, s->slots[i]);
        seen_fini(s);
        s->slots = slots;
        s->mask = mask;
    }
    seen_put(s->slots, s->mask, o);
    s->n++;
}

/* Whether o is plain data down to `depth` levels of exact tuples, lists and
 * dicts: what marshal writes and reads back as the same types and values.
 * (marshal would also take any buffer, a bytearray or a NumPy array, and
 * give back bytes: hence exact types only.)  Objects with more than one
 * reference go into *seen, which says whether one appears twice: a pickle
 * would send it once, and the receiver would get one object (numbers are
 * the exception, as pickle does not share them either). */
static int plain(PyObject *o, int depth, cp_seen *seen)
{
    if (o == Py_None || PyBool_Check(o) || PyLong_CheckExact(o) ||
        PyFloat_CheckExact(o) || PyComplex_CheckExact(o))
        return 1;
    if (PyBytes_CheckExact(o) && PyBytes_GET_SIZE(o) >= CP_OOB_MIN)
        return 0; /* out of band */
    int is_seq = PyTuple_CheckExact(o) || PyList_CheckExact(o);
    if (!PyUnicode_CheckExact(o) && !PyBytes_CheckExact(o) && !is_seq &&
        !PyDict_CheckExact(o))
        return 0;
    if (Py_REFCNT(o) > 1) seen_add(seen, o);
    if (PyUnicode_CheckExact(o) || PyBytes_CheckExact(o)) return 1;
    if (depth == 0) return 0;
    if (is_seq) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        for (Py_ssize_t i = 0; i < n; i++)
            if (!plain(PySequence_Fast_GET_ITEM(o, i), depth - 1, seen)) return 0;
    } else {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v))
            if (!plain(k, depth - 1, seen) || !plain(v, depth - 1, seen)) return 0;
    }
    return 1;
}

/* What plain() says of a payload: NOT_PLAIN, PLAIN_SINGLE or PLAIN_SHARED. */
static int plain_kind(PyObject *obj)
{
    cp_seen seen; /* a chunk's items, at least, may have more than one reference */
    int is_seq = PyTuple_CheckExact(obj) || PyList_CheckExact(obj);
    seen_init(&seen, is_seq ? (size_t)PySequence_Fast_GET_SIZE(obj) : 0);
    int r = plain(obj, PLAIN_DEPTH, &seen) ? (seen.twice ? PLAIN_SHARED : PLAIN_SINGLE)
                                           : NOT_PLAIN;
    seen_fini(&seen);
    return r;
}

/* ---- lists of numbers, flat ------------------------------------------------
 *
 * A list of exact ints that all fit in 64 bits, or of exact floats, is what
 * a map of numbers sends and gets back chunk after chunk; a list of tuples
 * of them (all of one length, each place of one kind) is what a starmap
 * sends.  They travel as flat arrays: written with no call per item
 * (marshal: ~14 ns a number, ~50 a pair), read back with one object made
 * per value and per tuple and nothing else (marshal: ~30 ns a number, ~55
 * a pair).  Layout: VEC_TAG (never a marshal type code, nor a pickle's
 * PROTO), then 'q' or 'd' (numbers) and 6 bytes of padding, or 't' (rows),
 * the row's length (1 to ROW_MAX) and each place's kind ('q' or 'd', then
 * padding); the count of items (uint64); then the values, row by row. */
#define VEC_TAG 0x01
#define VEC_HDR 16
#define VEC_MIN 8 /* shorter lists: marshal is as quick */
#define ROW_MAX 5 /* the places whose kinds fit in the header */

/* Write number o, of kind 'q' or 'd', at p: 0, or -1 if it is not one. */
static int number_dump(PyObject *o, char kind, char *p)
{
    if (kind == 'd') {
        if (!PyFloat_CheckExact(o)) return -1;
        double v = PyFloat_AS_DOUBLE(o);
        memcpy(p, &v, 8);
        return 0;
    }
    int overflow;
    if (!PyLong_CheckExact(o)) return -1;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) return -1; /* an exact int raises nothing else */
    memcpy(p, &v, 8);
    return 0;
}

static char number_kind(PyObject *o)
{
    return PyLong_CheckExact(o) ? 'q' : PyFloat_CheckExact(o) ? 'd' : 0;
}

/* items[0..n) as a vector: *out new bytes (0), or *out NULL (0: not such a
 * list, no exception), or -1 with an exception.  `any_refs`: tuples with
 * other references may go flat too, as the receiver can tell no identity
 * of theirs (a starmap's argument tuples); else only tuples the list alone
 * holds do (a pickle would keep a shared one shared). */
static int vector_dump_items(PyObject *const *items, Py_ssize_t n, int any_refs,
                             PyObject **out)
{
    *out = NULL;
    if (n < VEC_MIN) return 0;
    char head[VEC_HDR] = {VEC_TAG};
    Py_ssize_t width = 1;
    PyObject *first = items[0];
    if (PyTuple_CheckExact(first)) {
        width = PyTuple_GET_SIZE(first);
        if (width < 1 || width > ROW_MAX) return 0;
        head[1] = 't';
        head[2] = (char)width;
        for (Py_ssize_t j = 0; j < width; j++)
            if ((head[3 + j] = number_kind(PyTuple_GET_ITEM(first, j))) == 0) return 0;
    } else if ((head[1] = number_kind(first)) == 0) {
        return 0;
    }
    uint64_t count = (uint64_t)n;
    memcpy(head + 8, &count, 8);
    if ((size_t)n > (PY_SSIZE_T_MAX - VEC_HDR) / 8 / (size_t)width) return 0;
    PyObject *b = PyBytes_FromStringAndSize(NULL, VEC_HDR + 8 * width * n);
    if (b == NULL) return -1;
    char *p = PyBytes_AS_STRING(b);
    memcpy(p, head, VEC_HDR);
    p += VEC_HDR;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = items[i];
        if (head[1] != 't') {
            if (number_dump(o, head[1], p) < 0) goto not_one;
            p += 8;
            continue;
        }
        if (!PyTuple_CheckExact(o) || PyTuple_GET_SIZE(o) != width ||
            (!any_refs && Py_REFCNT(o) != 1))
            goto not_one;
        for (Py_ssize_t j = 0; j < width; j++, p += 8)
            if (number_dump(PyTuple_GET_ITEM(o, j), head[3 + j], p) < 0) goto not_one;
    }
    *out = b;
    return 0;
not_one:
    Py_DECREF(b);
    return 0;
}

/* obj as a vector, if it is a list that can be one (vector_dump_items). */
static int vector_dump(PyObject *obj, PyObject **out)
{
    *out = NULL;
    if (!PyList_CheckExact(obj)) return 0;
    return vector_dump_items(PySequence_Fast_ITEMS(obj), PyList_GET_SIZE(obj), 0, out);
}

PyObject *cp_rows_dump(PyObject *const *items, Py_ssize_t n)
{
    PyObject *b;
    if (vector_dump_items(items, n, 1, &b) < 0) return NULL;
    return b != NULL ? b : Py_NewRef(Py_None);
}

/* The number of kind 'q' or 'd' at p: a new reference, or NULL. */
static PyObject *number_load(const char *p, char kind)
{
    if (kind == 'd') {
        double v;
        memcpy(&v, p, 8);
        return PyFloat_FromDouble(v);
    }
    long long v;
    memcpy(&v, p, 8);
    return PyLong_FromLongLong(v);
}

/* ---- a chunk's results, as they come ---------------------------------------
 *
 * A worker's chunk of 125,000 tiny items used to keep all of its results
 * alive until the end, in a list that was then written as a vector: 4 MB of
 * int objects, in pymalloc arenas that were new for each chunk and handed
 * back to the kernel after it (a page fault per 4 KiB, twice).  Written
 * into the vector as they come and freed at once, the results reuse the
 * same few blocks, which stay in the cache.  The first result that is not
 * a number of the first one's kind turns the vector back into a list. */

int cp_results_init(cp_results *c, Py_ssize_t n)
{
    *c = (cp_results){.n = n};
    if (n >= VEC_MIN) return 0; /* the first result says */
    c->list = PyList_New(n);
    return c->list != NULL ? 0 : -1;
}

/* Leave the vector: the list of the results so far. */
static int results_unflatten(cp_results *c)
{
    c->list = PyList_New(c->n);
    const char *v = c->flat ? PyBytes_AS_STRING(c->flat) + VEC_HDR : NULL;
    for (Py_ssize_t j = 0; c->list != NULL && j < c->i; j++, v += 8) {
        PyObject *o = number_load(v, c->kind);
        if (o == NULL) Py_CLEAR(c->list);
        else PyList_SET_ITEM(c->list, j, o);
    }
    Py_CLEAR(c->flat);
    return c->list != NULL ? 0 : -1;
}

int cp_results_put(cp_results *c, PyObject *r)
{
    if (c->list == NULL) {
        if (c->i == 0 && (c->kind = number_kind(r)) != 0) {
            c->flat = PyBytes_FromStringAndSize(NULL, VEC_HDR + 8 * c->n);
            if (c->flat == NULL) {
                Py_DECREF(r);
                return -1;
            }
            char head[VEC_HDR] = {VEC_TAG, c->kind};
            uint64_t count = (uint64_t)c->n;
            memcpy(head + 8, &count, 8);
            memcpy(PyBytes_AS_STRING(c->flat), head, VEC_HDR);
        }
        if (c->flat != NULL &&
            number_dump(r, c->kind, PyBytes_AS_STRING(c->flat) + VEC_HDR + 8 * c->i) ==
                0) {
            Py_DECREF(r);
            c->i++;
            return 0;
        }
        if (results_unflatten(c) < 0) {
            Py_DECREF(r);
            return -1;
        }
    }
    PyList_SET_ITEM(c->list, c->i++, r);
    return 0;
}

PyObject *cp_results_done(cp_results *c, int *flat)
{
    *flat = c->flat != NULL;
    PyObject *r = c->flat != NULL ? c->flat : c->list;
    *c = (cp_results){0};
    return r;
}

void cp_results_clear(cp_results *c)
{
    Py_CLEAR(c->flat);
    Py_CLEAR(c->list);
}

/* The list a vector holds: a new reference, or NULL.  With func and
 * results (a list of rows): func called on each row's values as its
 * arguments, what it returned put into *results (cp_results_init'ed here),
 * and None (NULL with the exception of the first call that raised,
 * *results cleared). */
static PyObject *vector_load(const char *p, size_t len, PyObject *func,
                             cp_results *results)
{
    uint64_t count;
    memcpy(&count, p + 8, 8);
    char kind = p[1];
    size_t width = kind == 't' ? (size_t)(unsigned char)p[2] : 1;
    int ok =
        kind == 'q' || kind == 'd' || (kind == 't' && width >= 1 && width <= ROW_MAX);
    for (size_t j = 0; ok && kind == 't' && j < ROW_MAX; j++)
        ok = j < width ? p[3 + j] == 'q' || p[3 + j] == 'd' : p[3 + j] == 0;
    if (!ok || (results != NULL && kind != 't') || count > (len - VEC_HDR) / 8 / width ||
        VEC_HDR + 8 * width * count != len) {
        PyErr_SetString(PyExc_ValueError, "cpool: a malformed list of numbers");
        return NULL;
    }
    PyObject *list = results != NULL ? Py_NewRef(Py_None) : PyList_New((Py_ssize_t)count);
    if (list == NULL ||
        (results != NULL && cp_results_init(results, (Py_ssize_t)count) < 0)) {
        Py_XDECREF(list);
        return NULL;
    }
    const char *v = p + VEC_HDR;
    for (uint64_t i = 0; i < count; i++) {
        PyObject *o = NULL, *args[ROW_MAX];
        if (kind != 't') {
            o = number_load(v, kind);
            v += 8;
        } else {
            size_t j = 0;
            for (; j < width; j++, v += 8)
                if ((args[j] = number_load(v, p[3 + j])) == NULL) break;
            if (j == width && results != NULL)
                o = PyObject_Vectorcall(func, args, width, NULL);
            else if (j == width && (o = PyTuple_New((Py_ssize_t)width)) != NULL) {
                for (j = 0; j < width; j++) PyTuple_SET_ITEM(o, (Py_ssize_t)j, args[j]);
                /* Numbers only: never in a cycle, nothing for the GC to
                 * look at (CPython untracks such tuples itself, at their
                 * first collection). */
                PyObject_GC_UnTrack(o);
            }
            if (o == NULL || results != NULL)
                while (j > 0) Py_DECREF(args[--j]);
        }
        if (o == NULL || (results != NULL && cp_results_put(results, o) < 0)) {
            if (results != NULL) cp_results_clear(results);
            Py_DECREF(list);
            return NULL;
        }
        if (func == NULL) PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    return list;
}

PyObject *cp_rows_call(PyObject *func, PyObject *rows, int *flat)
{
    cp_results out;
    PyObject *none =
        vector_load(PyBytes_AS_STRING(rows), (size_t)PyBytes_GET_SIZE(rows), func, &out);
    if (none == NULL) return NULL;
    Py_DECREF(none);
    return cp_results_done(&out, flat);
}

PyObject *cp_flat_list(PyObject *flat)
{
    return vector_load(PyBytes_AS_STRING(flat), (size_t)PyBytes_GET_SIZE(flat), NULL,
                       NULL);
}

/* marshal for plain data (what plain() said), else a protocol-5 pickle:
 * new bytes, or NULL. */
static PyObject *serialize(cpool_state *st, PyObject *obj, int is_plain)
{
    if (is_plain != NOT_PLAIN) {
        PyObject *b = PyMarshal_WriteObjectToString(
            obj, is_plain == PLAIN_SHARED ? Py_MARSHAL_VERSION : 2);
        if (b != NULL) return b;
        PyErr_Clear(); /* too deep or too large for marshal: pickle says */
    }
    return cp_dumps(st, obj);
}

/* Read back what serialize() or a pickler wrote.  Large marshal payloads
 * are read with the cyclic GC paused: building a big list of tuples would
 * run it over and over, for nothing to collect.  New reference, or NULL. */
static PyObject *deserialize(cpool_state *st, const char *p, size_t n, PyObject *view,
                             PyObject *buffers, PyObject **interrupt, int raw_rows)
{
    if (n >= VEC_HDR && p[0] == VEC_TAG)
        return raw_rows && p[1] == 't' ? PyBytes_FromStringAndSize(p, (Py_ssize_t)n)
                                       : vector_load(p, n, NULL, NULL);
    if (n > 0 && (unsigned char)p[0] != PICKLE_PROTO) {
        /* Pure C, no Python code, the GIL held throughout: pausing the GC
         * here cannot undo another thread's gc.disable(). */
#if PY_VERSION_HEX >= 0x030A0000
        int gc_was = n >= NO_GC_LOAD ? PyGC_Disable() : 0;
#endif
        PyObject *obj = PyMarshal_ReadObjectFromString(p, (Py_ssize_t)n);
#if PY_VERSION_HEX >= 0x030A0000
        if (gc_was) PyGC_Enable();
#endif
        return obj;
    }
    for (int attempt = 0;; attempt++) {
        PyObject *obj;
        if (buffers == NULL) {
            obj = PyObject_CallOneArg(st->loads, view);
        } else {
            PyObject *load_oob = cp_hook(st->load_oob, "load_oob");
            obj = load_oob ? PyObject_CallFunctionObjArgs(load_oob, view, buffers, NULL)
                           : NULL;
        }
        /* A Ctrl-C that landed in Python code the unpickler ran: the
         * caller's, and the payload is still here to load again. */
        if (obj != NULL || interrupt == NULL || *interrupt != NULL || attempt > 0 ||
            !PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
            return obj;
        *interrupt = cp_fetch_exc();
    }
}

/* Write the pickle and its buffers into a segment (recycled or new), with
 * the GIL released.  0, or -1 with an exception. */
static int write_segment(PyObject *pickled, PyObject *bufs, int copied,
                         const cp_segdest *d, cp_segref *ref)
{
    Py_ssize_t nb = bufs ? PyList_GET_SIZE(bufs) : 0;
    Py_buffer *views = PyMem_Calloc((size_t)nb + 1, sizeof(Py_buffer));
    struct iovec *pieces = PyMem_Calloc((size_t)nb + 1, sizeof(struct iovec));
    int rc = -1;
    Py_ssize_t got = 0;
    if (views == NULL || pieces == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (PyObject_GetBuffer(pickled, &views[0], PyBUF_SIMPLE) != 0) goto done;
    got = 1;
    for (Py_ssize_t i = 0; i < nb; i++, got++)
        if (PyObject_GetBuffer(PyList_GET_ITEM(bufs, i), &views[i + 1],
                               PyBUF_ANY_CONTIGUOUS) != 0)
            goto done;
    for (Py_ssize_t i = 0; i <= nb; i++)
        pieces[i] =
            (struct iovec){.iov_base = views[i].buf, .iov_len = (size_t)views[i].len};
    Py_BEGIN_ALLOW_THREADS
    rc = cp_seg_write(d, pieces, (int)nb + 1, copied, ref);
    Py_END_ALLOW_THREADS
    if (rc != 0) cp_oserror("cpool: writing a shared-memory segment");
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(pieces);
    return rc;
}

/* What the wire carries for obj when it travels inline: the flat list of
 * numbers, marshal or pickle (no out-of-band buffers).  New bytes, or NULL. */
static PyObject *encode(cpool_state *st, PyObject *obj)
{
    PyObject *b;
    if (vector_dump(obj, &b) < 0) return NULL;
    return b != NULL ? b : serialize(st, obj, plain_kind(obj));
}

static PyObject *wire(PyObject *m, PyObject *obj) { return encode(cp_get_state(m), obj); }

static PyObject *unwire(PyObject *m, PyObject *data)
{
    Py_buffer b;
    if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) != 0) return NULL;
    PyObject *obj =
        deserialize(cp_get_state(m), b.buf, (size_t)b.len, data, NULL, NULL, 0);
    PyBuffer_Release(&b);
    return obj;
}

int cp_pack(cpool_state *st, PyObject *obj, size_t inline_max, const cp_segdest *dest,
            cp_packed *out)
{
    out->bytes = NULL;
    out->has_seg = 0;
    PyObject *pickled = NULL, *bufs = NULL;
    int copied = 0;
    if (vector_dump(obj, &pickled) < 0) return -1;
    /* Plain data holds no big buffer (plain() turns down big bytes): one
     * walk over a chunk of plain items, not two. */
    int is_plain = pickled != NULL ? PLAIN_SINGLE : plain_kind(obj);
    if (is_plain == NOT_PLAIN && has_big_buffer(obj, 2)) {
        PyObject *pack_oob = cp_hook(st->pack_oob, "pack_oob");
        if (pack_oob == NULL) return -1;
        PyObject *r = PyObject_CallOneArg(pack_oob, obj);
        if (r == NULL) return -1;
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 3 ||
            !PyList_Check(PyTuple_GET_ITEM(r, 1))) {
            Py_DECREF(r);
            PyErr_SetString(PyExc_SystemError, "cpool: _pack_oob returned junk");
            return -1;
        }
        pickled = Py_NewRef(PyTuple_GET_ITEM(r, 0));
        bufs = Py_NewRef(PyTuple_GET_ITEM(r, 1));
        copied = PyTuple_GET_ITEM(r, 2) == Py_True;
        Py_DECREF(r);
    } else {
        if (pickled == NULL) pickled = serialize(st, obj, is_plain);
        if (pickled == NULL) return -1;
        int rc = cp_pack_pickled(pickled, inline_max, dest, out);
        Py_DECREF(pickled);
        return rc;
    }
    int rc = write_segment(pickled, bufs, copied, dest, &out->seg);
    Py_DECREF(pickled);
    Py_XDECREF(bufs);
    if (rc == 0) out->has_seg = 1;
    return rc;
}

int cp_pack_pickled(PyObject *pickled, size_t inline_max, const cp_segdest *dest,
                    cp_packed *out)
{
    out->has_seg = 0;
    out->bytes = NULL;
    if ((size_t)PyBytes_GET_SIZE(pickled) <= inline_max) {
        out->bytes = Py_NewRef(pickled);
        return 0;
    }
    /* Unpickling copies out of the pickle: nothing keeps a view of it. */
    if (write_segment(pickled, NULL, 1, dest, &out->seg) < 0) return -1;
    out->has_seg = 1;
    return 0;
}

static void release_entry(cp_recy *entry, _Atomic int32_t *loading)
{
    if (loading != NULL) atomic_store(loading, -1);
    atomic_store(&entry->state, CP_RECY_FREE);
}

/* A private mapping of the segment open on fd, populated: NULL with errno. */
static char *map_private(int fd, size_t size)
{
    /* Populated read-only, then made writable: MAP_POPULATE on a private
     * writable mapping would fault every page for writing, i.e. copy it. */
    void *addr = mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (addr != MAP_FAILED && mprotect(addr, size, PROT_READ | PROT_WRITE) != 0) {
        int saved = errno;
        munmap(addr, size);
        errno = saved;
        addr = MAP_FAILED;
    }
    return addr == MAP_FAILED ? NULL : addr;
}

/* A descriptor of the segment ref names, from src, checked: -1 with the
 * exception set. */
static int open_segment(const cp_segsrc *src, const cp_segref *ref)
{
    int fd = src->get(src->arg, ref);
    if (fd < 0) {
        cp_oserror("cpool: opening a shared-memory segment");
        return -1;
    }
    const char *why = cp_seg_check(fd, ref->ino, ref->size);
    if (why != NULL) {
        close(fd);
        PyErr_Format(PyExc_PermissionError,
                     "cpool: refused a shared-memory segment: %s; it was not loaded",
                     why);
        return -1;
    }
    return fd;
}

PyObject *cp_load_payload(cpool_state *st, const cp_rechdr *h, const cp_segsrc *src,
                          PyObject **interrupt)
{
    const char *p = (const char *)(h + 1);
    int raw_rows = h->kind == CP_K_STARMAP; /* for cp_rows_call */
    if (!(h->flags & CP_F_LARGE)) {
        PyObject *view = PyMemoryView_FromMemory((char *)p, h->len, PyBUF_READ);
        if (view == NULL) return NULL;
        PyObject *obj = deserialize(st, p, h->len, view, NULL, interrupt, raw_rows);
        Py_DECREF(view);
        return obj;
    }
    cp_segref ref;
    memcpy(&ref, p, sizeof ref);
    _Atomic int32_t *loading = src->loading;
    cp_recy *entry = (src->recy != NULL && ref.recy >= 0) ? &src->recy[ref.recy] : NULL;
    cp_segmap *kept = entry != NULL && src->maps != NULL ? &src->maps[ref.recy] : NULL;
    if (kept != NULL && !(ref.flags & CP_SEG_COPIED)) {
        /* An object may live on this record's memory, and the file then be
         * retired: keep no mapping of it (it would keep the file alive). */
        cp_segmap_drop(kept);
        kept = NULL;
    }
    /* Say which entry we hold: if we die before handing it back, the parent
     * does.  Cleared before every hand-back, so it never names an entry
     * someone else may have taken since. */
    if (entry != NULL && loading != NULL) atomic_store(loading, ref.recy);
    int fd = open_segment(src, &ref);
    if (fd < 0) {
        if (entry != NULL) release_entry(entry, loading);
        return NULL;
    }
    size_t size = ref.size ? ref.size : 1;
    char *addr = kept ? cp_segmap_get(kept, fd, 0, size) : NULL;
    if (addr != NULL) size = kept->len;
    else addr = map_private(fd, size);
    int saved = errno;
    close(fd);
    if (addr == NULL) {
        if (entry != NULL) release_entry(entry, loading);
        errno = saved;
        return cp_oserror("mmap");
    }
    int is_kept = kept != NULL && addr == kept->addr;
    MappingObject *m = (MappingObject *)st->mapping_type->tp_alloc(st->mapping_type, 0);
    if (m == NULL) {
        if (!is_kept) munmap(addr, size);
        if (entry != NULL) release_entry(entry, loading);
        return NULL;
    }
    m->addr = addr;
    m->size = size;
    m->kept = m->readonly = is_kept;
    PyObject *obj = NULL, *whole = NULL, *views = NULL, *pview = NULL;
    cp_seghdr *sh = (cp_seghdr *)addr;
    uint64_t hdr =
        ref.size >= sizeof(cp_seghdr)
            ? CP_ALIGN64(sizeof(cp_seghdr) + (uint64_t)sh->nbufs * sizeof(uint64_t))
            : UINT64_MAX;
    if (hdr > ref.size || sh->magic != CP_SEG_MAGIC || sh->pickle_len > ref.size - hdr ||
        ref.size > size) {
        PyErr_SetString(PyExc_ValueError, "cpool: not a cpool segment");
        goto done;
    }
    whole = PyMemoryView_FromObject((PyObject *)m);
    if (whole == NULL) goto done;
    uint64_t off = hdr;
    pview =
        PySequence_GetSlice(whole, (Py_ssize_t)off, (Py_ssize_t)(off + sh->pickle_len));
    if (pview == NULL) goto done;
    off += CP_ALIGN64(sh->pickle_len);
    views = PyList_New(sh->nbufs);
    if (views == NULL) goto done;
    for (uint32_t i = 0; i < sh->nbufs; i++) {
        if (off + sh->lens[i] > ref.size) {
            PyErr_SetString(PyExc_ValueError,
                            "cpool: a segment shorter than its buffers");
            goto done;
        }
        PyObject *v =
            PySequence_GetSlice(whole, (Py_ssize_t)off, (Py_ssize_t)(off + sh->lens[i]));
        if (v == NULL) goto done;
        PyList_SET_ITEM(views, i, v);
        off += CP_ALIGN64(sh->lens[i]);
    }
    obj = deserialize(st, (const char *)addr + hdr, sh->pickle_len, pview,
                      sh->nbufs ? views : NULL, interrupt, raw_rows);
done:
    Py_XDECREF(pview);
    Py_XDECREF(views);
    Py_XDECREF(whole);
    if (entry != NULL) {
        if (Py_REFCNT(m) == 1) {
            release_entry(entry, loading); /* nothing maps it: reuse */
        } else {
            if (loading != NULL) atomic_store(loading, -1);
            /* An object (a NumPy array) lives on this mapping, which would
             * see the producer's next writes: retire the segment.  A kept
             * mapping becomes the object's (it broke CP_SEG_COPIED's word). */
            if (is_kept) {
                (void)madvise(addr, size, MADV_DOFORK);
                m->kept = 0;
                kept->addr = NULL;
            }
            atomic_store(&entry->state, CP_RECY_NONE);
        }
    }
    Py_DECREF(m); /* the mapping lives on while views into it do */
    return obj;
}

/* value.c: shared arenas and the Synchronized wrapper of Value/Array.
 *
 * An Arena is a memfd mapped shared: anonymous, so nothing is ever left in
 * /dev/shm, whether the program ends normally or is killed.  It pickles by
 * reference: (pid, fd, token, size) of the pickling process, and another
 * process maps it by opening /proc/<pid>/fd/<fd> and checking the token in
 * its header.  Arenas export the buffer protocol, so ctypes objects live in
 * them (from_buffer) and cpool's Lock/RLock (lock.c) place their mutexes
 * there.
 *
 * Synchronized is the wrapper of Value/Array: its `value` get/set and
 * acquire/release are C, taking a cpool lock's robust mutex directly.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define ARENA_MAGIC 0x6370617265616e61ull /* "cparena" */
#define ARENA_HDR 64

typedef struct {
    uint64_t magic;
    uint64_t token;
    uint64_t size;
} arena_hdr;

typedef struct {
    PyObject_HEAD
    int fd;
    char *map;
    size_t size;   /* bytes of the data area, after the header */
    uint64_t token;
    PyObject *weakreflist; /* the unpickling registry refers to arenas weakly */
} ArenaObject;

static PyObject *arena_from_fd(PyTypeObject *type, int fd, size_t size, int create,
                               uint64_t token)
{
    ArenaObject *a = (ArenaObject *)type->tp_alloc(type, 0);
    if (a == NULL) {
        close(fd);
        return NULL;
    }
    a->fd = fd;
    a->size = size;
    a->map = mmap(NULL, ARENA_HDR + size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a->map == MAP_FAILED) {
        a->map = NULL;
        cp_oserror("mmap");
        Py_DECREF(a);
        return NULL;
    }
    arena_hdr *h = (arena_hdr *)a->map;
    if (create) {
        h->magic = ARENA_MAGIC;
        h->token = token;
        h->size = size;
    } else if (h->magic != ARENA_MAGIC || h->token != token || h->size != size) {
        PyErr_SetString(PyExc_ValueError,
                        "cpool: that file is not the shared arena it was pickled from");
        Py_DECREF(a);
        return NULL;
    }
    a->token = token;
    return (PyObject *)a;
}

static PyObject *Arena_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", NULL};
    Py_ssize_t size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &size)) return NULL;
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "arena size must be positive");
        return NULL;
    }
    uint64_t token;
    if (getrandom(&token, sizeof token, 0) != (ssize_t)sizeof token)
        return cp_oserror("getrandom");
    /* Mode 0600 and its size sealed (shm.c): no other user opens it, and
     * nobody can shrink it under the processes that map it. */
    int fd = cp_memfd("cpool-shared", ARENA_HDR + (uint64_t)size);
    if (fd < 0) return cp_oserror("memfd_create");
    return arena_from_fd(type, fd, (size_t)size, 1, token);
}

PyDoc_STRVAR(attach_doc,
             "_attach(pid, fd, token, size)\n--\n\n"
             "Map the arena that process `pid` holds as file descriptor `fd`.");

static PyObject *Arena_attach(PyTypeObject *type, PyObject *args)
{
    int pid, fd;
    unsigned long long token;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "iiKn", &pid, &fd, &token, &size)) return NULL;
    int nfd = cp_open_proc_fd(pid, fd, O_RDWR);
    if (nfd < 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
        return cp_oserror(path);
    }
    /* Checked before it is mapped: an arena is a sealed memfd of our own. */
    const char *why =
        size > 0 ? cp_seg_check(nfd, 0, ARENA_HDR + (uint64_t)size) : "empty";
    if (why != NULL) {
        close(nfd);
        PyErr_Format(PyExc_PermissionError,
                     "cpool: process %d's descriptor %d is not a shared arena: %s", pid,
                     fd, why);
        return NULL;
    }
    return arena_from_fd(type, nfd, (size_t)size, 0, token);
}

static PyObject *Arena_reduce(ArenaObject *a, PyObject *Py_UNUSED(ignored))
{
    PyObject *module = PyType_GetModule(Py_TYPE(a));
    if (module == NULL) return NULL;
    PyObject *fn = cp_hook(cp_get_state(module)->attach_arena, "attach_arena");
    if (fn == NULL) return NULL;
    return Py_BuildValue("(O(iiKn))", fn, (int)getpid(), a->fd,
                         (unsigned long long)a->token, (Py_ssize_t)a->size);
}

static int Arena_getbuffer(ArenaObject *a, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)a, a->map + ARENA_HDR, (Py_ssize_t)a->size,
                             0, flags);
}

static void Arena_dealloc(ArenaObject *a)
{
    PyTypeObject *tp = Py_TYPE(a);
    if (a->weakreflist != NULL) PyObject_ClearWeakRefs((PyObject *)a);
    if (a->map != NULL) munmap(a->map, ARENA_HDR + a->size);
    if (a->fd >= 0) close(a->fd);
    tp->tp_free(a);
    Py_DECREF(tp);
}

static PyObject *Arena_get_fd(ArenaObject *a, void *Py_UNUSED(c))
{
    return PyLong_FromLong(a->fd);
}

static PyObject *Arena_get_token(ArenaObject *a, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(a->token);
}

static PyObject *Arena_get_size(ArenaObject *a, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(a->size);
}

static PyMethodDef Arena_methods[] = {
    {"_attach", (PyCFunction)Arena_attach, METH_VARARGS | METH_CLASS, attach_doc},
    {"__reduce__", (PyCFunction)Arena_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Arena_getset[] = {
    {"fd", (getter)Arena_get_fd, NULL, "this process's descriptor of the arena", NULL},
    {"token", (getter)Arena_get_token, NULL, "random identity, checked on attach", NULL},
    {"size", (getter)Arena_get_size, NULL, "bytes of the data area", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#endif

static PyMemberDef Arena_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(ArenaObject, weakreflist), Py_READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Arena_slots[] = {
    {Py_tp_members, Arena_members},
    {Py_tp_new, Arena_new},
    {Py_tp_dealloc, Arena_dealloc},
    {Py_tp_methods, Arena_methods},
    {Py_tp_getset, Arena_getset},
    {Py_bf_getbuffer, Arena_getbuffer},
    {Py_tp_doc,
     (void *)"Arena(size): shared memory (a memfd) for Value, Array and locks."},
    {0, NULL},
};

static PyType_Spec Arena_spec = {
    .name = "cpool._cpool.Arena",
    .basicsize = sizeof(ArenaObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Arena_slots,
};

char *cp_arena_at(PyObject *arena, Py_ssize_t offset, size_t n)
{
    if (Py_TYPE(arena)->tp_dealloc != (destructor)Arena_dealloc) {
        PyErr_SetString(PyExc_TypeError, "expected a cpool arena");
        return NULL;
    }
    ArenaObject *a = (ArenaObject *)arena;
    if (offset < 0 || (size_t)offset + n > a->size || offset % 16) {
        PyErr_SetString(PyExc_ValueError, "offset outside the arena or misaligned");
        return NULL;
    }
    return a->map + ARENA_HDR + offset;
}

/* ---- Synchronized ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *obj;
    PyObject *lock;
    LockObject *fast;  /* lock, when it is a cpool lock: taken directly */
    cpool_state *st;
} SyncObject;

/* Acquire the wrapper's lock: a cpool lock directly, another through its
 * acquire() method.  0, or -1 with an exception. */
static int sync_enter(SyncObject *s)
{
    if (s->fast != NULL) return cp_lock_acquire(s->fast, 1, -1) < 0 ? -1 : 0;
    PyObject *r = PyObject_CallMethod(s->lock, "acquire", NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Release it, keeping an exception already set. */
static int sync_exit(SyncObject *s)
{
    PyObject *pending = cp_fetch_exc();
    int rc;
    if (s->fast != NULL) {
        rc = cp_lock_release(s->fast);
    } else {
        PyObject *r = PyObject_CallMethod(s->lock, "release", NULL);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    if (pending != NULL) {
        if (rc < 0) PyErr_WriteUnraisable(s->lock);
        cp_restore_exc(pending);
        return -1;
    }
    return rc;
}

static void Sync_dealloc(SyncObject *s);

static PyObject *Sync_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"obj", "lock", NULL};
    PyObject *obj, *lock;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &obj, &lock)) return NULL;
    /* Our own type in the chain of (possibly Python) subclasses holds the
     * module, hence the lock type to recognise. */
    PyTypeObject *base = type;
    while (base != NULL && base->tp_dealloc != (destructor)Sync_dealloc)
        base = base->tp_base;
    PyObject *module = base ? PyType_GetModule(base) : NULL;
    if (module == NULL) return NULL;
    SyncObject *s = (SyncObject *)type->tp_alloc(type, 0);
    if (s == NULL) return NULL;
    s->st = cp_get_state(module);
    s->obj = Py_NewRef(obj);
    s->lock = Py_NewRef(lock);
    if (PyObject_TypeCheck(lock, s->st->lock_type)) s->fast = (LockObject *)lock;
    return (PyObject *)s;
}

static int Sync_traverse(SyncObject *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->obj);
    Py_VISIT(s->lock);
    return 0;
}

static int Sync_clear(SyncObject *s)
{
    s->fast = NULL;
    Py_CLEAR(s->obj);
    Py_CLEAR(s->lock);
    return 0;
}

static void Sync_dealloc(SyncObject *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    Sync_clear(s);
    tp->tp_free(s);
    Py_DECREF(tp);
}

static PyObject *Sync_get_value(SyncObject *s, void *Py_UNUSED(c))
{
    if (sync_enter(s) < 0) return NULL;
    PyObject *v = PyObject_GetAttr(s->obj, s->st->str_value);
    if (sync_exit(s) < 0) Py_CLEAR(v);
    return v;
}

static int Sync_set_value(SyncObject *s, PyObject *v, void *Py_UNUSED(c))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete the value");
        return -1;
    }
    if (sync_enter(s) < 0) return -1;
    int rc = PyObject_SetAttr(s->obj, s->st->str_value, v);
    if (sync_exit(s) < 0) rc = -1;
    return rc;
}

static PyObject *Sync_get_obj(SyncObject *s, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(s->obj);
}

static PyObject *Sync_get_lock(SyncObject *s, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(s->lock);
}

static PyObject *Sync_acquire(SyncObject *s, PyObject *args, PyObject *kwds)
{
    if (s->fast != NULL) {
        int block;
        int64_t timeout;
        if (cp_parse_acquire(args, kwds, &block, &timeout) < 0) return NULL;
        int rc = cp_lock_acquire(s->fast, block, timeout);
        return rc < 0 ? NULL : PyBool_FromLong(rc);
    }
    PyObject *m = PyObject_GetAttrString(s->lock, "acquire");
    if (m == NULL) return NULL;
    PyObject *r = PyObject_Call(m, args, kwds);
    Py_DECREF(m);
    return r;
}

static PyObject *Sync_release(SyncObject *s, PyObject *Py_UNUSED(ignored))
{
    if (sync_exit(s) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Sync_enter(SyncObject *s, PyObject *Py_UNUSED(ignored))
{
    if (sync_enter(s) < 0) return NULL;
    Py_RETURN_TRUE;
}

static PyObject *Sync_exit(SyncObject *s, PyObject *Py_UNUSED(args))
{
    if (sync_exit(s) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Sync_reduce(SyncObject *s, PyObject *Py_UNUSED(ignored))
{
    PyObject *fn = cp_hook(s->st->synchronized, "synchronized");
    if (fn == NULL) return NULL;
    return Py_BuildValue("(O(OO))", fn, s->obj, s->lock);
}

static PyObject *Sync_repr(SyncObject *s)
{
    const char *name = strrchr(Py_TYPE(s)->tp_name, '.');
    return PyUnicode_FromFormat("<%s wrapper for %R>",
                                name ? name + 1 : Py_TYPE(s)->tp_name, s->obj);
}

static PyMethodDef Sync_methods[] = {
    {"get_obj", (PyCFunction)Sync_get_obj, METH_NOARGS, "the shared ctypes object"},
    {"get_lock", (PyCFunction)Sync_get_lock, METH_NOARGS, "the lock guarding it"},
    {"acquire", (PyCFunction)(void (*)(void))Sync_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(block=True, timeout=None): the lock's acquire"},
    {"release", (PyCFunction)Sync_release, METH_NOARGS, "the lock's release"},
    {"__enter__", (PyCFunction)Sync_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Sync_exit, METH_VARARGS, NULL},
    {"__reduce__", (PyCFunction)Sync_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sync_getset[] = {
    {"value", (getter)Sync_get_value, (setter)Sync_set_value,
     "the shared value, read or written under the lock", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Sync_slots[] = {
    {Py_tp_new, Sync_new},
    {Py_tp_dealloc, Sync_dealloc},
    {Py_tp_traverse, Sync_traverse},
    {Py_tp_clear, Sync_clear},
    {Py_tp_methods, Sync_methods},
    {Py_tp_getset, Sync_getset},
    {Py_tp_repr, Sync_repr},
    {Py_tp_doc, (void *)"Synchronized(obj, lock): a shared ctypes object and the "
                        "lock that guards it (what Value and Array return)."},
    {0, NULL},
};

static PyType_Spec Sync_spec = {
    .name = "cpool._cpool.Synchronized",
    .basicsize = sizeof(SyncObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = Sync_slots,
};

int cp_value_add_types(PyObject *module, cpool_state *st)
{
    st->arena_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Arena_spec, NULL);
    if (st->arena_type == NULL || PyModule_AddType(module, st->arena_type) < 0) return -1;
    st->sync_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Sync_spec, NULL);
    if (st->sync_type == NULL || PyModule_AddType(module, st->sync_type) < 0) return -1;
    return 0;
}

/* arena.c: shared arenas, where Value/Array's objects and cpool's locks live.
 *
 * An Arena is a memfd mapped shared: anonymous, so nothing is ever left in
 * /dev/shm, whether the program ends normally or is killed.  It pickles by
 * reference: (pid, fd, token, size) of the pickling process, and another
 * process maps it by opening /proc/<pid>/fd/<fd> and checking the token in
 * its header.  Arenas export the buffer protocol, so ctypes objects live in
 * them (from_buffer) and cpool's Lock/RLock (lock.c) place their mutexes
 * there.
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

int cp_arena_add_type(PyObject *module, cpool_state *st)
{
    st->arena_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Arena_spec, NULL);
    if (st->arena_type == NULL || PyModule_AddType(module, st->arena_type) < 0) return -1;
    return 0;
}

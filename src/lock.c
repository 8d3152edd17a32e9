/* lock.c: cpool's Lock and RLock: robust, process-shared mutexes that live in
 * a shared arena (see value.c), so they pickle by reference and work in any
 * process that maps the arena.
 *
 * A holder that dies does not leave the lock locked forever: the mutexes are
 * PTHREAD_MUTEX_ROBUST, so the next acquirer gets EOWNERDEAD, makes the
 * mutex consistent, owns it, and `owner_died` tells the program.  Waits
 * release the GIL, honour the timeout on the monotonic clock, and wake every
 * 50 ms to let Ctrl-C through (pthread mutex waits do not return EINTR).
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#define SLICE_NS 50000000 /* Ctrl-C latency while blocked on a lock */

static void after_acquire(LockObject *l, int rc)
{
    l->owner_died = rc == EOWNERDEAD;
    if (rc == EOWNERDEAD) pthread_mutex_consistent(l->m);
}

int cp_lock_acquire(LockObject *l, int block, int64_t timeout_ns)
{
    int rc = pthread_mutex_trylock(l->m);
    if (rc == 0 || rc == EOWNERDEAD) {
        after_acquire(l, rc);
        return 1;
    }
    if (rc != EBUSY) goto oserror;
    if (!block) return 0;
    int64_t deadline = cp_deadline(timeout_ns);
    for (;;) {
        int64_t until = cp_now_ns() + cp_slice(deadline, SLICE_NS);
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000),
                              .tv_nsec = (long)(until % 1000000000)};
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_clocklock(l->m, CLOCK_MONOTONIC, &ts);
        Py_END_ALLOW_THREADS
        if (rc == 0 || rc == EOWNERDEAD) {
            after_acquire(l, rc);
            return 1;
        }
        if (rc != ETIMEDOUT && rc != EINTR) goto oserror;
        if (deadline >= 0 && cp_now_ns() >= deadline) return 0;
        if (PyErr_CheckSignals() < 0) return -1;
    }
oserror:
    errno = rc;
    cp_oserror("pthread_mutex_lock");
    return -1;
}

int cp_lock_release(LockObject *l)
{
    int rc = pthread_mutex_unlock(l->m);
    if (rc == 0) return 0;
    if (rc == EPERM) {
        /* multiprocessing's errors for the same mistakes. */
        if (l->recursive)
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned by thread");
        else
            PyErr_SetString(PyExc_ValueError,
                            "semaphore or lock released too many times");
        return -1;
    }
    errno = rc;
    cp_oserror("pthread_mutex_unlock");
    return -1;
}

static PyObject *Lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"arena", "offset", "recursive", "init", NULL};
    PyObject *arena;
    Py_ssize_t offset;
    int recursive, init;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onpp", kwlist, &arena, &offset,
                                     &recursive, &init))
        return NULL;
    char *base = cp_arena_at(arena, offset, sizeof(pthread_mutex_t));
    if (base == NULL) return NULL;
    LockObject *l = (LockObject *)type->tp_alloc(type, 0);
    if (l == NULL) return NULL;
    l->arena = Py_NewRef(arena);
    l->offset = offset;
    l->recursive = recursive;
    l->m = (pthread_mutex_t *)base;
    if (init) {
        pthread_mutexattr_t a;
        int rc = pthread_mutexattr_init(&a);
        if (rc == 0) rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        if (rc == 0) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        if (rc == 0)
            rc = pthread_mutexattr_settype(&a, recursive ? PTHREAD_MUTEX_RECURSIVE
                                                         : PTHREAD_MUTEX_NORMAL);
        if (rc == 0) rc = pthread_mutex_init(l->m, &a);
        pthread_mutexattr_destroy(&a);
        if (rc != 0) {
            Py_DECREF(l);
            errno = rc;
            return cp_oserror("pthread_mutex_init");
        }
    }
    return (PyObject *)l;
}

static int Lock_traverse(LockObject *l, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(l));
    Py_VISIT(l->arena);
    return 0;
}

static void Lock_dealloc(LockObject *l)
{
    PyTypeObject *tp = Py_TYPE(l);
    PyObject_GC_UnTrack(l);
    Py_CLEAR(l->arena);
    tp->tp_free(l);
    Py_DECREF(tp);
}

/* Parse (block=True, timeout=None) as multiprocessing's acquire does. */
int cp_parse_acquire(PyObject *args, PyObject *kwds, int *block, int64_t *timeout_ns)
{
    static char *kwlist[] = {"block", "timeout", NULL};
    PyObject *to = Py_None;
    *block = 1;
    *timeout_ns = -1;
    if (PyTuple_GET_SIZE(args) == 0 && (kwds == NULL || PyDict_GET_SIZE(kwds) == 0))
        return 0; /* the common acquire(): no parsing */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pO", kwlist, block, &to)) return -1;
    return cp_parse_timeout(to, timeout_ns);
}

static PyObject *Lock_acquire(LockObject *l, PyObject *args, PyObject *kwds)
{
    int block;
    int64_t timeout;
    if (cp_parse_acquire(args, kwds, &block, &timeout) < 0) return NULL;
    int rc = cp_lock_acquire(l, block, timeout);
    if (rc < 0) return NULL;
    return PyBool_FromLong(rc);
}

static PyObject *Lock_release(LockObject *l, PyObject *Py_UNUSED(ignored))
{
    if (cp_lock_release(l) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Lock_enter(LockObject *l, PyObject *Py_UNUSED(ignored))
{
    int rc = cp_lock_acquire(l, 1, -1);
    if (rc < 0) return NULL;
    return PyBool_FromLong(rc);
}

static PyObject *Lock_exit(LockObject *l, PyObject *Py_UNUSED(args))
{
    if (cp_lock_release(l) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Lock_get_owner_died(LockObject *l, void *Py_UNUSED(c))
{
    return PyBool_FromLong(l->owner_died);
}

static PyObject *Lock_get_arena(LockObject *l, void *Py_UNUSED(c))
{
    return Py_NewRef(l->arena);
}

static PyObject *Lock_get_offset(LockObject *l, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(l->offset);
}

static PyObject *Lock_get_recursive(LockObject *l, void *Py_UNUSED(c))
{
    return PyBool_FromLong(l->recursive);
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(block=True, timeout=None) -> bool"},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "release()"},
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Lock_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lock_getset[] = {
    {"owner_died", (getter)Lock_get_owner_died, NULL,
     "True if the last acquire() took the lock over from a holder that died", NULL},
    {"arena", (getter)Lock_get_arena, NULL, "the shared arena holding the mutex", NULL},
    {"offset", (getter)Lock_get_offset, NULL, "the mutex's offset in the arena", NULL},
    {"recursive", (getter)Lock_get_recursive, NULL, "True for an RLock", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Lock_slots[] = {
    {Py_tp_new, Lock_new},
    {Py_tp_dealloc, Lock_dealloc},
    {Py_tp_traverse, Lock_traverse},
    {Py_tp_methods, Lock_methods},
    {Py_tp_getset, Lock_getset},
    {Py_tp_doc, (void *)"SharedLock(arena, offset, recursive, init): a robust "
                        "process-shared mutex in a shared arena."},
    {0, NULL},
};

static PyType_Spec Lock_spec = {
    .name = "cpool._cpool.SharedLock",
    .basicsize = sizeof(LockObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = Lock_slots,
};

int cp_lock_add_type(PyObject *module, cpool_state *st)
{
    st->lock_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Lock_spec, NULL);
    if (st->lock_type == NULL) return -1;
    return PyModule_AddType(module, st->lock_type);
}

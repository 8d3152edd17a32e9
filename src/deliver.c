/* deliver.c: outcomes into the Python result objects (GIL held).
 *
 * A task's outcome reaches its result object as job._set(index, status,
 * value, nbytes), the protocol cpool/results.py and cpool/imap.py's objects
 * implement (nbytes: the size of the pickled result, for an imap bounding
 * what it holds); one with
 * callbacks is deferred to the collector thread, where multiprocessing runs
 * them too.  Also the failing of whole lists of tasks (terminate, a broken
 * pool) and the breaking of a pool.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* Leave obj._set(idx, status, value, nbytes) to the collector thread. */
static void defer(CoreObject *c, PyObject *obj, PyObject *pidx, PyObject *pst,
                  PyObject *value, PyObject *pn)
{
    PyObject *t = PyTuple_Pack(5, obj, pidx, pst, value, pn);
    if (t == NULL || PyList_Append(c->deferred, t) < 0) {
        PyErr_WriteUnraisable(obj);
    } else {
        atomic_store(&c->has_deferred, 1);
        atomic_store(&c->kicked, 1);
    }
    Py_XDECREF(t);
}

/* obj._set(idx, status, value, nbytes); errors are reported, except a
 * Ctrl-C (or the like) in a waiter that collects for itself: that one is
 * the caller's, raised when its round is over. */
static void call_set(CoreObject *c, PyObject *obj, PyObject *pidx, PyObject *pst,
                     PyObject *value, PyObject *pn)
{
    PyObject *argv[5] = {obj, pidx, pst, value, pn};
    PyObject *r = PyObject_VectorcallMethod(c->st->str_set, argv,
                                            5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    atomic_fetch_add(&c->delivered, 1);
    if (r != NULL) {
        Py_DECREF(r);
        return;
    }
    if (PyThreadState_Get() != c->cts && !PyErr_ExceptionMatches(PyExc_Exception)) {
        /* A Ctrl-C landed in _set, in a waiter (where signal handlers run):
         * the caller's.  The collector thread makes the delivery again (no
         * handler runs there); _set is written to take a repeat. */
        PyObject *exc = cp_fetch_exc();
        if (c->interrupt == NULL) c->interrupt = exc;
        else Py_XDECREF(exc);
        defer(c, obj, pidx, pst, value, pn);
        return;
    }
    PyErr_WriteUnraisable(obj);
}

/* Hand one outcome to the job's result object: job._set(idx, status, value,
 * nbytes).
 * In a waiter collecting for itself, an object with callbacks (obj._defer)
 * is left to the collector thread: callbacks run on cpool's thread, as
 * multiprocessing's run on its result handler, never inside a caller's
 * get(). */
void cp_deliver(CoreObject *c, uint64_t job, uint32_t idx, int status, PyObject *value,
                size_t nbytes)
{
    PyObject *key = PyLong_FromUnsignedLongLong(job);
    if (key == NULL) goto error;
    PyObject *obj = PyDict_GetItemWithError(c->cache, key);
    Py_DECREF(key);
    if (obj == NULL) {
        if (PyErr_Occurred()) goto error;
        return; /* the job was abandoned */
    }
    Py_INCREF(obj);
    PyObject *pidx = PyLong_FromUnsignedLong(idx);
    PyObject *pst = PyLong_FromLong(status); /* small ints: cached */
    PyObject *pn = PyLong_FromSize_t(nbytes);
    if (pidx == NULL || pst == NULL || pn == NULL) {
        PyErr_WriteUnraisable(obj);
    } else if (PyThreadState_Get() != c->cts) {
        PyObject *d = PyObject_GetAttr(obj, c->st->str_defer);
        int later = d == NULL ? -1 : PyObject_IsTrue(d);
        Py_XDECREF(d);
        if (later < 0) {
            PyErr_WriteUnraisable(obj);
        } else if (later) {
            defer(c, obj, pidx, pst, value ? value : Py_None, pn);
        } else {
            /* A signal that arrived meanwhile runs its handler now, not at
             * the first line of _set. */
            if (c->interrupt == NULL && PyErr_CheckSignals() < 0)
                c->interrupt = cp_fetch_exc();
            call_set(c, obj, pidx, pst, value ? value : Py_None, pn);
        }
    } else {
        call_set(c, obj, pidx, pst, value ? value : Py_None, pn);
    }
    Py_XDECREF(pidx);
    Py_XDECREF(pst);
    Py_XDECREF(pn);
    Py_DECREF(obj);
    return;
error:
    PyErr_WriteUnraisable(c->cache);
}

/* The collector thread: deliver what waiters left for it. */
void cp_deliver_deferred(CoreObject *c)
{
    atomic_store(&c->has_deferred, 0); /* set and cleared with the GIL held */
    while (PyList_GET_SIZE(c->deferred) > 0) {
        PyObject *l = c->deferred;
        c->deferred = PyList_New(0);
        if (c->deferred == NULL) { /* keep the old list: no outcome is lost */
            PyErr_WriteUnraisable(NULL);
            c->deferred = l;
            return;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++) {
            PyObject *t = PyList_GET_ITEM(l, i);
            call_set(c, PyTuple_GET_ITEM(t, 0), PyTuple_GET_ITEM(t, 1),
                     PyTuple_GET_ITEM(t, 2), PyTuple_GET_ITEM(t, 3),
                     PyTuple_GET_ITEM(t, 4));
        }
        Py_DECREF(l);
    }
}

/* A chunk's results into a map's list.  The chunk's list is the collector's
 * own (nothing else holds it), so its items move instead of being copied:
 * the slice assignment's reference counting and the chunk list's freeing
 * cost about a tenth of the parent's time on a map of tiny items. */
PyDoc_STRVAR(place_doc,
             "_place($module, dst, lo, src, /)\n--\n\n"
             "dst[lo:lo + len(src)] = src.  When dst and src are lists, the slots\n"
             "fit and hold None, src's items move and src is left empty (a second\n"
             "call with it changes nothing); else a plain slice assignment.");

static PyObject *place(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_place takes 3 arguments");
        return NULL;
    }
    PyObject *dst = args[0], *src = args[2];
    Py_ssize_t lo = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (lo == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyObject_Length(src);
    if (n < 0) return NULL;
    if (PyList_CheckExact(dst) && PyList_CheckExact(src) && dst != src && lo >= 0 &&
        n <= PyList_GET_SIZE(dst) - lo) {
        PyObject **d = ((PyListObject *)dst)->ob_item + lo;
        Py_ssize_t i = 0;
        while (i < n && d[i] == Py_None) i++;
        if (i == n) { /* None is never freed: no code runs while this moves */
            PyObject **s = ((PyListObject *)src)->ob_item;
            for (i = 0; i < n; i++) {
                d[i] = s[i];
                s[i] = NULL;
                Py_DECREF(Py_None);
            }
            Py_SET_SIZE(src, 0);
            Py_RETURN_NONE;
        }
    }
    if (PySequence_SetSlice(dst, lo, lo + n, src) < 0) return NULL;
    Py_RETURN_NONE;
}

int cp_deliver_add_functions(PyObject *module)
{
    static PyMethodDef fns[] = {
        {"_place", (PyCFunction)(void (*)(void))place, METH_FASTCALL, place_doc},
        {NULL, NULL, 0, NULL},
    };
    return PyModule_AddFunctions(module, fns);
}

/* Deliver `status` to every task of the list and free them. */
void cp_fail_list(CoreObject *c, cp_task *t, int status, PyObject *value)
{
    while (t != NULL) {
        cp_task *next = t->next;
        cp_task_drop_segment(c->ctl, t);
        if (t->err) {
            errno = t->err;
            PyObject *e = PyErr_SetFromErrno(PyExc_OSError);
            (void)e;
            PyObject *exc = cp_fetch_exc();
            cp_deliver(c, t->job, t->idx, CP_ST_LOCAL, exc, 0);
            Py_XDECREF(exc);
        } else {
            cp_deliver(c, t->job, t->idx, status, value, 0);
        }
        cp_task_free(t);
        t = next;
    }
}

/* Take and fail the pending queue (and, if `inflight`, everything sent). */
void cp_fail_all(CoreObject *c, int status, PyObject *value, int inflight)
{
    cp_lock_with_gil(c);
    cp_task *all = cp_sched_take_all(&c->sd, inflight);
    pthread_mutex_unlock(&c->mu);
    cp_fail_list(c, all, status, value);
}

/* Break the pool: (exc, traceback text, 1 if the initializer raised). */
void cp_set_broken(CoreObject *c, PyObject *exc, PyObject *tb, int init)
{
    if (c->broken != NULL) return;
    c->broken = Py_BuildValue("(OOO)", exc, tb ? tb : Py_None, init ? Py_True : Py_False);
    if (c->broken == NULL) PyErr_WriteUnraisable(NULL);
    atomic_store(&c->is_broken, 1);
}

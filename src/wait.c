/* wait.c: waiting with the GIL released, the one way.
 *
 * Every blocking call of the module (Pool.join, a waiter collecting, the
 * workers' start, Lock.acquire) takes its timeout through cp_parse_timeout
 * and sleeps in slices (cp_slice), checking for Ctrl-C between them, so a
 * signal handler runs within a slice however long the wait.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

/* A timeout longer than this (about 31 years) waits forever: no overflow. */
#define TIMEOUT_MAX_S 1e9
#define WAIT_SLICE_NS 100000000 /* Ctrl-C is checked this often */

int cp_parse_timeout(PyObject *o, int64_t *ns)
{
    *ns = -1;
    if (o == Py_None) return 0;
    double t = PyFloat_AsDouble(o);
    if (t == -1 && PyErr_Occurred()) return -1;
    if (t != t) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    if (t < TIMEOUT_MAX_S) *ns = t <= 0 ? 0 : (int64_t)(t * 1e9);
    return 0;
}

int cp_wait_event(cp_event *e, int (*ready)(void *), void *arg, int64_t deadline)
{
    for (;;) {
        if (ready(arg)) return 1;
        int64_t slice = cp_slice(deadline, WAIT_SLICE_NS);
        if (slice == 0) return 0;
        uint32_t seen = cp_event_prepare(e);
        if (ready(arg)) {
            cp_event_cancel(e);
            return 1;
        }
        Py_BEGIN_ALLOW_THREADS
        cp_event_sleep(e, seen, slice);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) return -1;
    }
}

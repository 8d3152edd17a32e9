/* value.c: the Synchronized wrapper of Value/Array.
 *
 * Synchronized is what Value and Array return: a shared ctypes object (in
 * an arena: arena.c) and the lock that guards it.  Its `value` get/set and
 * acquire/release are C, taking a cpool lock's robust mutex (lock.c)
 * directly.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

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

int cp_value_add_type(PyObject *module, cpool_state *st)
{
    st->sync_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Sync_spec, NULL);
    if (st->sync_type == NULL || PyModule_AddType(module, st->sync_type) < 0) return -1;
    return 0;
}

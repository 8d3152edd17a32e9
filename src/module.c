/* module.c: the cpool._cpool module: multi-phase init, module state, and the
 * pickling helpers every other file uses.
 *
 * Module state holds the Core type and pickle's dumps/loads (the C
 * accelerated ones, looked up once).  The package checks VERSION against its
 * own at import, so a stale build fails loudly.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifndef CPOOL_VERSION
#error "setup.py defines CPOOL_VERSION"
#endif

cpool_state *cp_get_state(PyObject *module)
{
    void *st = PyModule_GetState(module);
    assert(st != NULL);
    return (cpool_state *)st;
}

PyObject *cp_hook(PyObject *hook, const char *name)
{
    if (hook == NULL)
        PyErr_Format(PyExc_RuntimeError,
                     "cpool._cpool: %s was never registered (import cpool, not only its "
                     "extension)",
                     name);
    return hook;
}

PyDoc_STRVAR(set_hooks_doc,
             "_set_hooks($module, /, *, pack_oob=None, load_oob=None,\n"
             "           attach_arena=None, synchronized=None, timed_out=None)\n--\n\n"
             "Hand the extension the package's functions it calls: the package does\n"
             "this as it is imported, so C never imports the package.");

static PyObject *set_hooks(PyObject *m, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pack_oob",     "load_oob",  "attach_arena",
                             "synchronized", "timed_out", NULL};
    PyObject *hooks[5] = {NULL, NULL, NULL, NULL, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOOO", kwlist, &hooks[0], &hooks[1],
                                     &hooks[2], &hooks[3], &hooks[4]))
        return NULL;
    cpool_state *st = cp_get_state(m);
    PyObject **slots[5] = {&st->pack_oob, &st->load_oob, &st->attach_arena,
                           &st->synchronized, &st->timed_out};
    for (int i = 0; i < 5; i++)
        if (hooks[i] != NULL && hooks[i] != Py_None)
            Py_XSETREF(*slots[i], Py_NewRef(hooks[i]));
    Py_RETURN_NONE;
}

static PyMethodDef module_functions[] = {
    {"_set_hooks", (PyCFunction)(void (*)(void))set_hooks, METH_VARARGS | METH_KEYWORDS,
     set_hooks_doc},
    {NULL, NULL, 0, NULL},
};

PyObject *cp_oserror(const char *what)
{
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, what);
}

PyObject *cp_dumps(cpool_state *st, PyObject *obj)
{
    return PyObject_CallFunctionObjArgs(st->dumps, obj, st->protocol, NULL);
}

static int module_exec(PyObject *m)
{
    cpool_state *st = cp_get_state(m);
    const char *dbg = getenv("CPOOL_DEBUG");
    cp_debug_enabled = dbg != NULL && dbg[0] != '\0' && strcmp(dbg, "0") != 0;
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL) return -1;
    st->dumps = PyObject_GetAttrString(pickle, "dumps");
    st->loads = PyObject_GetAttrString(pickle, "loads");
    Py_DECREF(pickle);
    if (st->dumps == NULL || st->loads == NULL) return -1;
    st->protocol = PyLong_FromLong(5);
    if (st->protocol == NULL) return -1;
    st->str_value = PyUnicode_InternFromString("value");
    st->str_set = PyUnicode_InternFromString("_set");
    st->str_defer = PyUnicode_InternFromString("_defer");
    if (st->str_value == NULL || st->str_set == NULL || st->str_defer == NULL) return -1;
    if (PyModule_AddStringConstant(m, "VERSION", CPOOL_VERSION) < 0 ||
        PyModule_AddFunctions(m, module_functions) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "ST_OK", CP_ST_OK) < 0 ||
        PyModule_AddIntConstant(m, "ST_ERR", CP_ST_ERR) < 0 ||
        PyModule_AddIntConstant(m, "ST_LOCAL", CP_ST_LOCAL) < 0 ||
        PyModule_AddIntConstant(m, "ST_LOST", CP_ST_LOST) < 0 ||
        PyModule_AddIntConstant(m, "ST_TERMINATED", CP_ST_TERMINATED) < 0 ||
        PyModule_AddIntConstant(m, "ST_INITFAIL", CP_ST_INITFAIL) < 0 ||
        PyModule_AddIntConstant(m, "ST_UNPICKLE", CP_ST_UNPICKLE) < 0 ||
        PyModule_AddIntConstant(m, "ST_MIXED", CP_ST_MIXED) < 0 ||
        PyModule_AddIntConstant(m, "ST_TIMEOUT", CP_ST_TIMEOUT) < 0 ||
        PyModule_AddIntConstant(m, "S_FREE", CP_S_FREE) < 0 ||
        PyModule_AddIntConstant(m, "S_SPAWN_REQ", CP_S_SPAWN_REQ) < 0 ||
        PyModule_AddIntConstant(m, "S_SPAWNED", CP_S_SPAWNED) < 0 ||
        PyModule_AddIntConstant(m, "S_READY", CP_S_READY) < 0 ||
        PyModule_AddIntConstant(m, "S_DEAD", CP_S_DEAD) < 0 ||
        PyModule_AddIntConstant(m, "OOB_MIN", CP_OOB_MIN) < 0 ||
        PyModule_AddIntConstant(m, "TEMPLATE_FD_CTL", CP_TFD_CTL) < 0 ||
        PyModule_AddIntConstant(m, "TEMPLATE_FD_EVENT", CP_TFD_EVENT) < 0 ||
        PyModule_AddIntConstant(m, "TEMPLATE_FD_BOOT", CP_TFD_BOOT) < 0 ||
        PyModule_AddIntConstant(m, "TEMPLATE_FD_SOCKS", CP_TFD_SOCKS) < 0)
        return -1;
    if (cp_core_add_type(m, st) < 0 || cp_arena_add_type(m, st) < 0 ||
        cp_lock_add_type(m, st) < 0 || cp_floor_add_functions(m) < 0 ||
        cp_pack_add_types(m, st) < 0 || cp_spawn_add_functions(m) < 0 ||
        cp_worker_add_functions(m) < 0 || cp_limits_add_functions(m) < 0 ||
        cp_deliver_add_functions(m) < 0)
        return -1;
    return cp_value_add_type(m, st);
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    cpool_state *st = cp_get_state(m);
    Py_VISIT(st->core_type);
    Py_VISIT(st->lock_type);
    Py_VISIT(st->arena_type);
    Py_VISIT(st->sync_type);
    Py_VISIT(st->mapping_type);
    Py_VISIT(st->pack_oob);
    Py_VISIT(st->load_oob);
    Py_VISIT(st->attach_arena);
    Py_VISIT(st->synchronized);
    Py_VISIT(st->timed_out);
    Py_VISIT(st->dumps);
    Py_VISIT(st->loads);
    return 0;
}

static int module_clear(PyObject *m)
{
    cpool_state *st = cp_get_state(m);
    Py_CLEAR(st->core_type);
    Py_CLEAR(st->lock_type);
    Py_CLEAR(st->arena_type);
    Py_CLEAR(st->sync_type);
    Py_CLEAR(st->mapping_type);
    Py_CLEAR(st->pack_oob);
    Py_CLEAR(st->load_oob);
    Py_CLEAR(st->attach_arena);
    Py_CLEAR(st->synchronized);
    Py_CLEAR(st->timed_out);
    Py_CLEAR(st->dumps);
    Py_CLEAR(st->loads);
    Py_CLEAR(st->protocol);
    Py_CLEAR(st->str_value);
    Py_CLEAR(st->str_set);
    Py_CLEAR(st->str_defer);
    return 0;
}

static void module_free(void *m) { module_clear((PyObject *)m); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef cpool_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cpool._cpool",
    .m_doc = "The machinery of cpool: template, workers, rings, collector.",
    .m_size = sizeof(cpool_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__cpool(void) { return PyModuleDef_Init(&cpool_module); }

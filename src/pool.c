/* pool.c: the Core type, the parent's handle on a pool.
 *
 * Core owns the control segment and the slots' socketpairs, forks (or
 * execs: spawn.c) the template at creation, and starts the collector thread
 * (collect.c).  Its methods are what cpool/pool.py calls: submitting (tasks
 * pickled with the GIL, then queued and dispatched: queue.c), collecting as
 * a waiter, close/terminate/join, and the workers' pids.
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

#define RING_CAP (256u * 1024u) /* per ring; records over a quarter go by segment */

/* Take `mu` while holding the GIL: drop the GIL only to wait, and never
 * hold `mu` while waiting to get the GIL back (a thread ended there, at
 * interpreter exit, would leave `mu` locked for good). */
void cp_lock_with_gil(CoreObject *c)
{
    while (pthread_mutex_trylock(&c->mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->mu); /* wait until it is free */
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
    }
}

/* Tell the template to look at the slots (a request is set there). */
void cp_tell_template(CoreObject *c)
{
    uint64_t one = 1;
    ssize_t w;
    do {
        w = write(c->evfd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
    /* EAGAIN means the counter is already non-zero: the template will look. */
}

/* ---- the Python type -------------------------------------------------------- */

/* 1 while some slot has no worker pid yet (and has not died trying). */
static int spawn_pending(CoreObject *c)
{
    for (int i = 0; i < c->n; i++) {
        uint32_t st = atomic_load(&c->ctl->slots[i].state);
        if (st == CP_S_SPAWN_REQ) return 1;
        if (st != CP_S_DEAD && st != CP_S_FREE && atomic_load(&c->ctl->slots[i].pid) == 0)
            return 1;
    }
    return 0;
}

/* The template has exited (not reaped here: cp_wait_template does). */
static int template_gone(CoreObject *c)
{
    siginfo_t si = {0};
    return waitid(P_PID, (id_t)c->tmpl, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           si.si_pid == c->tmpl;
}

static int started_pred(void *c) { return !spawn_pending(c) || template_gone(c); }

/* Wait (without the GIL) until the template has forked every first worker,
 * so that whoever asks has their pids, as multiprocessing's Pool() does.
 * 0, or -1 with an exception (Ctrl-C, or the template died). */
static int wait_first_workers(CoreObject *c)
{
    if (cp_wait_event(&c->ctl->results, started_pred, c, -1) < 0) return -1;
    if (!spawn_pending(c)) return 0;
    PyErr_SetString(PyExc_RuntimeError, "cpool: the template process died");
    return -1;
}

static int check_owner(CoreObject *c)
{
    if (c->owner == getpid()) return 0;
    PyErr_SetString(PyExc_RuntimeError,
                    "this pool belongs to another process (inherited by fork)");
    return -1;
}

/* Close a slot socket array's descriptors (-1: none). */
static void close_socks(int *socks, int n)
{
    for (int i = 0; socks != NULL && i < n; i++) {
        if (socks[i] >= 0) close(socks[i]);
        socks[i] = -1;
    }
}

static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"processes", "maxtasks",  "initializer", "initargs",
                             "cache",     "bootstrap", "pack_error",  "spawn",
                             "max_rss",   NULL};
    int n;
    unsigned long long maxtasks, max_rss = 0;
    PyObject *init, *initargs, *cache, *bootstrap, *pack_error, *spawn = Py_None;
    int ctl_fd = -1; /* the control segment's memfd, kept for an exec'ed template */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iKOO!O!OO|O$K", kwlist, &n, &maxtasks,
                                     &init, &PyTuple_Type, &initargs, &PyDict_Type,
                                     &cache, &bootstrap, &pack_error, &spawn, &max_rss))
        return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "Number of processes must be at least 1");
        return NULL;
    }
    PyObject *module = PyType_GetModule(type);
    if (module == NULL) return NULL;
    CoreObject *c = (CoreObject *)type->tp_alloc(type, 0);
    if (c == NULL) return NULL;
    c->evfd = -1;
    for (int k = 0; k < CP_RECY_TASKS; k++) c->task_fds[k] = -1;
    c->module = Py_NewRef(module);
    c->st = cp_get_state(module);
    c->n = n;
    c->owner = getpid();
    c->initializer = Py_NewRef(init);
    c->initargs = Py_NewRef(initargs);
    c->cache = Py_NewRef(cache);
    c->bootstrap = Py_NewRef(bootstrap);
    c->pack_error = Py_NewRef(pack_error);
    pthread_mutex_init(&c->mu, NULL);
    c->deferred = PyList_New(0);
    if (c->deferred == NULL) goto error;
    c->res_maps = calloc((size_t)n * CP_RECY_RESULTS, sizeof *c->res_maps);
    c->kills = calloc((size_t)n, sizeof *c->kills);
    if (c->res_maps == NULL || c->kills == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    c->ctl = cp_ctl_create((uint32_t)n, RING_CAP, spawn != Py_None ? &ctl_fd : NULL);
    if (c->ctl == NULL) {
        cp_oserror("memfd_create");
        goto error;
    }
    c->ctl->parent_pid = c->owner;
    c->ctl->max_rss = max_rss;
    c->ctl->recy_budget_mib = cp_recy_budget_mib();
    c->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->evfd < 0) {
        cp_oserror("eventfd");
        goto error;
    }
    /* Segments change hands over these (SCM_RIGHTS), both ways: one
     * datagram socketpair per worker slot. */
    c->psock = malloc((size_t)n * sizeof(int));
    c->wsock = malloc((size_t)n * sizeof(int));
    if (c->psock == NULL || c->wsock == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (int i = 0; i < n; i++) c->psock[i] = c->wsock[i] = -1;
    if (cp_sched_init(&c->sd, c->ctl, n, maxtasks, c->psock) != 0) {
        PyErr_NoMemory();
        goto error;
    }
    for (int i = 0; i < n; i++) {
        int sv[2];
        if (cp_socketpair(sv) != 0) {
            cp_oserror("socketpair");
            goto error;
        }
        c->psock[i] = sv[0];
        c->wsock[i] = sv[1];
    }
    for (int i = 0; i < n; i++) atomic_store(&c->ctl->slots[i].state, CP_S_SPAWN_REQ);

    pid_t pid;
    int warned = 0;
    if (spawn != Py_None) { /* "spawn", "forkserver": a fresh interpreter (spawn.c) */
        pid = cp_exec_template(ctl_fd, c->evfd, c->wsock, n, spawn);
        close(ctl_fd); /* the template has its own */
        ctl_fd = -1;
        if (pid < 0) goto error;
    } else {
        PyOS_BeforeFork();
        pid = fork();
        if (pid == 0) {
            /* No PyOS_AfterFork_Child here: each worker calls it (cp_wconfig's
             * snapshot).  The template runs no Python, only C. */
            close_socks(c->psock, n); /* the parent's ends */
            /* The template, and every worker it forks, reads only this
             * (this frame lives on in the template, which never returns). */
            cp_wconfig cfg = {.st = c->st,
                              .ctl = c->ctl,
                              .n = n,
                              .maxtasks = maxtasks,
                              .wsock = c->wsock,
                              .initializer = c->initializer,
                              .initargs = c->initargs,
                              .bootstrap = c->bootstrap,
                              .pack_error = c->pack_error,
                              .snapshot = 1};
            cp_template_main(c->ctl, c->evfd, c->owner, cp_spawn_worker, &cfg);
        }
        int saved = errno;
        /* As os.fork(): threads counted before the fork hooks may start one. */
        Py_ssize_t threads = CP_FORK_WARNS && pid > 0 ? cp_count_threads() : 0;
        PyOS_AfterFork_Parent();
        if (pid < 0) {
            errno = saved;
            cp_oserror("fork");
            goto error;
        }
        warned = cp_warn_fork_with_threads(threads);
    }
    c->tmpl = pid;
    atomic_store(&c->ctl->tmpl_pid, pid);
    close_socks(c->wsock, n); /* the template has them: each worker keeps its own */
    if (warned < 0) { /* the warning raised (an error filter, 3.15+) */
        atomic_store(&c->ctl->tmpl_cmd, CP_CMD_TERMINATE);
        cp_tell_template(c);
        cp_wait_template(c);
        goto error;
    }

    /* The collector blocks every signal: Ctrl-C must reach the thread that
     * waits for a result, never this one. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    Py_INCREF(c); /* the collector's reference */
    int rc = pthread_create(&c->thread, NULL, cp_collector_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        Py_DECREF(c);
        atomic_store(&c->ctl->tmpl_cmd, CP_CMD_TERMINATE);
        cp_tell_template(c);
        cp_wait_template(c);
        errno = rc;
        cp_oserror("pthread_create");
        goto error;
    }
    pthread_detach(c->thread);
    atomic_store(&c->thread_started, 1);
    return (PyObject *)c;
error:
    if (ctl_fd >= 0) close(ctl_fd);
    Py_DECREF(c);
    return NULL;
}

static int Core_traverse(CoreObject *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->module);
    Py_VISIT(c->initializer);
    Py_VISIT(c->initargs);
    Py_VISIT(c->cache);
    Py_VISIT(c->bootstrap);
    Py_VISIT(c->pack_error);
    Py_VISIT(c->broken);
    Py_VISIT(c->interrupt);
    Py_VISIT(c->deferred);
    return 0;
}

static int Core_clear(CoreObject *c)
{
    /* Only reached when nothing else refers to us: the collector is over. */
    Py_CLEAR(c->initializer);
    Py_CLEAR(c->initargs);
    Py_CLEAR(c->cache);
    Py_CLEAR(c->bootstrap);
    Py_CLEAR(c->pack_error);
    Py_CLEAR(c->broken);
    Py_CLEAR(c->interrupt);
    Py_CLEAR(c->deferred);
    return 0;
}

static void Core_dealloc(CoreObject *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    Core_clear(c);
    if (c->owner == getpid()) {
        /* The collector held a reference, so it is done: nothing else runs. */
        cp_sched_fini(&c->sd, 1);
        cp_drop_maps(c, 1);
        cp_ctl_destroy(c->ctl);
        pthread_mutex_destroy(&c->mu);
    }
    if (c->evfd >= 0) close(c->evfd);
    close_socks(c->psock, c->n);
    close_socks(c->wsock, c->n);
    free(c->psock);
    free(c->wsock);
    cp_sched_fini(&c->sd, 0); /* what is left: a forked child's copy */
    free(c->res_maps);
    free(c->kills);
    Py_CLEAR(c->module);
    tp->tp_free(c);
    Py_DECREF(tp);
}

static uint64_t job_arg(PyObject *o) { return PyLong_AsUnsignedLongLong(o); }

PyDoc_STRVAR(submit_call_doc,
             "submit_call($self, job, func, args, kwds, retries=0, timeout_ns=0)\n--\n\n"
             "Pickle (func, args, kwds) and queue it as task 0 of `job`, to be run\n"
             "again up to `retries` times if its worker dies, and stopped past\n"
             "timeout_ns (0: never).  A pickling error is raised here, in the caller.");

static PyObject *Core_submit_call(CoreObject *c, PyObject *args)
{
    PyObject *jobo, *func, *fargs, *kwds;
    cp_taskopts o = {0};
    unsigned long long timeout = 0;
    if (!PyArg_ParseTuple(args, "OOOO|IK", &jobo, &func, &fargs, &kwds, &o.retries,
                          &timeout))
        return NULL;
    o.timeout_ns = timeout;
    if (check_owner(c) < 0) return NULL;
    uint64_t job = job_arg(jobo);
    if (PyErr_Occurred()) return NULL;
    if (cp_submit_call(c, job, func, fargs, kwds, &o) < 0) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(
    func_blob_doc,
    "func_blob($self, func)\n--\n\n"
    "Pickle func once for a map-like job; the result is passed to submit_chunks.");

static PyObject *Core_func_blob(CoreObject *c, PyObject *func)
{
    return cp_func_blob(c, func);
}

PyDoc_STRVAR(
    submit_chunks_doc,
    "submit_chunks($self, job, func_blob, items, chunksize, star, first_idx, "
    "progressive, retries=0, timeout_ns=0, nchunks=0)\n--\n\n"
    "Cut the sequence `items` into chunks of `chunksize` (nchunks > 0: into\n"
    "nchunks chunks, the first len(items) % nchunks of them one item longer\n"
    "than the others; first_idx 0), pickle each once, and\n"
    "queue them as tasks first_idx, first_idx+1, ... of `job` (each run again\n"
    "up to `retries` times if its worker dies, each item stopped past\n"
    "timeout_ns, 0: never).  A chunk that\n"
    "fails to pickle raises here.  progressive: send them 256 KiB of pickles at\n"
    "a time (batches sent before a failure run anyway); else all or nothing.\n"
    "Returns the number of chunks.");

static PyObject *Core_submit_chunks(CoreObject *c, PyObject *args)
{
    PyObject *jobo, *blob, *items;
    Py_ssize_t chunksize, nchunks = 0;
    int star, progressive;
    unsigned int first;
    cp_taskopts o = {0};
    unsigned long long timeout = 0;
    if (!PyArg_ParseTuple(args, "OOOnpIp|IKn", &jobo, &blob, &items, &chunksize, &star,
                          &first, &progressive, &o.retries, &timeout, &nchunks))
        return NULL;
    o.timeout_ns = timeout;
    if (check_owner(c) < 0) return NULL;
    uint64_t job = job_arg(jobo);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t n = cp_submit_chunks(c, job, blob, items, chunksize, nchunks, star, first,
                                    progressive, o);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(close_doc, "close($self)\n--\n\nFinish the queued work, then stop.");

static PyObject *Core_close(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    if (check_owner(c) < 0) return NULL;
    int want = CP_RUN;
    atomic_compare_exchange_strong(&c->phase, &want, CP_CLOSE);
    cp_kick(c);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(kick_doc,
             "cp_kick($self)\n--\n\nWake the collector to re-examine the pool.");

static PyObject *Core_kick(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    if (c->owner == getpid()) cp_kick(c);
    Py_RETURN_NONE;
}

/* 1 in the collector thread, or in a thread collecting for itself: a
 * callback runs there, and must not wait for the pool. */
static int in_collector(const CoreObject *c) { return cp_delivering == c; }

static int done_pred(void *c) { return atomic_load(&((CoreObject *)c)->done); }

/* Wait for the collector to finish, releasing the GIL; Ctrl-C gets through.
 * 1 done, 0 timed out, -1 with an exception. */
static int wait_done(CoreObject *c, int64_t timeout_ns)
{
    if (!atomic_load(&c->thread_started)) return 1;
    if (in_collector(c)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot wait for the pool from its own callback");
        return -1;
    }
    return cp_wait_event(&c->done_ev, done_pred, c, cp_deadline(timeout_ns));
}

PyDoc_STRVAR(
    collect_doc,
    "collect($self, timeout=None, seen=None)\n--\n\n"
    "Collect results in this thread, for a caller waiting for one: take the\n"
    "collection token, deliver what has arrived (waiting for news without the\n"
    "GIL, at most `timeout` seconds), give the token back.  seen: the value of\n"
    "`delivered` the caller read before it looked at its result; once it has\n"
    "moved, collect returns (what the caller waits for may have been delivered\n"
    "by another thread since its look).  Returns 1 after a round that delivered,\n"
    "a timeout or a move of `delivered` (check, and call again), 0 if another\n"
    "thread is collecting (it delivers: wait for the result as usual), -1 if\n"
    "this thread cannot collect (the pool is terminating or over, or this\n"
    "thread is delivering results already).");

static PyObject *Core_collect(CoreObject *c, PyObject *args)
{
    PyObject *to = Py_None, *so = Py_None;
    int64_t timeout_ns;
    uint64_t seen = 0;
    if (!PyArg_ParseTuple(args, "|OO", &to, &so) || cp_parse_timeout(to, &timeout_ns) < 0)
        return NULL;
    if (so != Py_None) {
        seen = PyLong_AsUnsignedLongLong(so);
        if (seen == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    }
    return cp_collect_waiting(c, timeout_ns, so != Py_None ? &seen : NULL);
}

PyDoc_STRVAR(terminate_doc,
             "terminate($self)\n--\n\n"
             "Kill the workers now; fail what is unfinished.  Waits for the collector,\n"
             "unless called from a callback (then it returns at once).");

static PyObject *Core_terminate(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    if (c->owner != getpid()) Py_RETURN_NONE;
    atomic_store(&c->phase, CP_TERMINATE);
    atomic_store(&c->ctl->tmpl_cmd, CP_CMD_TERMINATE);
    cp_tell_template(c);
    cp_kick(c);
    if (in_collector(c)) Py_RETURN_NONE;
    if (wait_done(c, -1) < 0) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(join_doc,
             "join($self, timeout=None)\n--\n\n"
             "Wait until the pool is over (closed and drained, or terminated).\n"
             "Returns True when it is, False on timeout.");

static PyObject *Core_join(CoreObject *c, PyObject *args)
{
    PyObject *to = Py_None;
    int64_t timeout_ns;
    if (!PyArg_ParseTuple(args, "|O", &to) || cp_parse_timeout(to, &timeout_ns) < 0)
        return NULL;
    if (check_owner(c) < 0) return NULL;
    int rc = wait_done(c, timeout_ns);
    if (rc < 0) return NULL;
    return PyBool_FromLong(rc);
}

PyDoc_STRVAR(wait_started_doc,
             "wait_started($self)\n--\n\n"
             "Wait until every slot that asked for a worker has one with a known pid.");

static PyObject *Core_wait_started(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    if (c->owner == getpid() && !atomic_load(&c->done) && wait_first_workers(c) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(
    workers_doc,
    "workers($self)\n--\n\n"
    "One (pid, state, wait_status) tuple per worker slot; pid 0 while a\n"
    "replacement is being forked.  States: 0 free, 1 spawn requested, 2 forked,\n"
    "3 ready, 4 dead.");

static PyObject *Core_workers(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    PyObject *l = PyList_New(c->n);
    if (l == NULL) return NULL;
    for (int i = 0; i < c->n; i++) {
        cp_slot *s = &c->ctl->slots[i];
        PyObject *t = Py_BuildValue("(iIi)", (int)atomic_load(&s->pid),
                                    (unsigned)atomic_load(&s->state),
                                    (int)atomic_load(&s->wstatus));
        if (t == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, t);
    }
    return l;
}

static PyObject *Core_get_broken(CoreObject *c, void *Py_UNUSED(closure))
{
    return Py_NewRef(c->broken ? c->broken : Py_None);
}

static PyObject *Core_get_done(CoreObject *c, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(atomic_load(&c->done));
}

static PyObject *Core_get_steals(CoreObject *c, void *Py_UNUSED(closure))
{
    cp_lock_with_gil(c);
    uint64_t n = c->sd.steals;
    pthread_mutex_unlock(&c->mu);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *Core_get_delivered(CoreObject *c, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(atomic_load(&c->delivered));
}

static PyObject *Core_get_template_pid(CoreObject *c, void *Py_UNUSED(closure))
{
    return PyLong_FromLong((long)c->tmpl);
}

PyDoc_STRVAR(stats_doc,
             "stats($self)\n--\n\n"
             "A snapshot of the pool's counters: a dict (see cpool.PoolStats).");

static PyObject *Core_stats(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    return cp_core_stats(c);
}

static PyMethodDef Core_methods[] = {
    {"stats", (PyCFunction)Core_stats, METH_NOARGS, stats_doc},
    {"submit_call", (PyCFunction)Core_submit_call, METH_VARARGS, submit_call_doc},
    {"func_blob", (PyCFunction)Core_func_blob, METH_O, func_blob_doc},
    {"submit_chunks", (PyCFunction)Core_submit_chunks, METH_VARARGS, submit_chunks_doc},
    {"collect", (PyCFunction)Core_collect, METH_VARARGS, collect_doc},
    {"close", (PyCFunction)Core_close, METH_NOARGS, close_doc},
    {"kick", (PyCFunction)Core_kick, METH_NOARGS, kick_doc},
    {"terminate", (PyCFunction)Core_terminate, METH_NOARGS, terminate_doc},
    {"join", (PyCFunction)Core_join, METH_VARARGS, join_doc},
    {"workers", (PyCFunction)Core_workers, METH_NOARGS, workers_doc},
    {"wait_started", (PyCFunction)Core_wait_started, METH_NOARGS, wait_started_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"broken", (getter)Core_get_broken, NULL,
     "(exception, traceback text, raised by the initializer?) of a broken pool, or None",
     NULL},
    {"done", (getter)Core_get_done, NULL, "True once the pool is over", NULL},
    {"template_pid", (getter)Core_get_template_pid, NULL, "pid of the template process",
     NULL},
    {"delivered", (getter)Core_get_delivered, NULL,
     "how many outcomes were handed to result objects (for collect's seen)", NULL},
    {"steals", (getter)Core_get_steals, NULL,
     "how many tasks were taken back from a worker's ring and given to another", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(
    Core_doc,
    "Core(processes, maxtasks, initializer, initargs, cache, bootstrap, pack_error,\n"
    "     spawn=None, *, max_rss=0)\n"
    "--\n\n"
    "The machinery of one pool: its template process, its workers, its rings\n"
    "and its collector thread.  cpool.Pool is the public face.  spawn: None to\n"
    "fork the template, or (executable, argv, fds) from cpool._template to exec\n"
    "it as a fresh interpreter.  max_rss: the bytes of resident memory a worker\n"
    "may keep after a task (Pool's max_memory_per_child); 0: no cap.");

static PyType_Slot Core_slots[] = {
    {Py_tp_new, Core_new},           {Py_tp_dealloc, Core_dealloc},
    {Py_tp_traverse, Core_traverse}, {Py_tp_clear, Core_clear},
    {Py_tp_methods, Core_methods},   {Py_tp_getset, Core_getset},
    {Py_tp_doc, (void *)Core_doc},   {0, NULL},
};

static PyType_Spec Core_spec = {
    .name = "cpool._cpool.Core",
    .basicsize = sizeof(CoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Core_slots,
};

int cp_core_add_type(PyObject *module, cpool_state *st)
{
    st->core_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Core_spec, NULL);
    if (st->core_type == NULL) return -1;
    return PyModule_AddType(module, st->core_type);
}

/* worker.c: a worker's life, from the fork in the template to _exit().
 *
 * The loop is C: take a record from this slot's task ring, unpickle, call,
 * pickle the result, post it on the result ring, wake the parent's
 * collector.  Python is called only for what it must do: unpickling, the
 * user's function, pickling, and (on errors only) formatting a traceback
 * through the package's pack_error helper.  The GIL is released around every
 * wait.  A worker leaves only through _exit(): after a STOP record, after
 * maxtasksperchild tasks, after a task that left it over the memory cap, or
 * after its initializer failed.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

typedef struct {
    const cp_wconfig *cfg;
    cp_ctl *ctl;
    cp_slot *slot;
    cp_ring *tasks, *results;
    int sock;              /* this slot's socket: segments both ways */
    cp_segdest dest;
    uint64_t seg_seq;
    cp_segmap res_maps[CP_RECY_RESULTS]; /* kept: written through */
    int res_fds[CP_RECY_RESULTS];        /* the result recycler's files */
    cp_segmap task_maps[CP_RECY_TASKS];  /* kept: read through */
    cp_segsrc tasks_src, func_src;       /* where task segments come from */
    PyObject *func;        /* cached function of func_job */
    PyObject *func_error;  /* or why it could not be unpickled */
    uint64_t func_job;
    char *buf;             /* the current task record, copied out */
    size_t bufcap;
    /* The current task's time limit, if it has one (CP_F_TIMED: taken off
     * the record), and the deadline of the item the stop signal's handler
     * raised TaskTimeoutError in (cp_slot.stop_for). */
    int timed;
    cp_timing *timing;
    size_t timingcap;
    int64_t stopped;
} worker;

/* This process's worker, for the stop signal's handler (stop_requested). */
static worker *current;

static void __attribute__((noreturn)) leave(int code)
{
    /* Output a task printed must not be lost in a buffer. */
    PyObject *r = PyObject_CallMethod(PySys_GetObject("stdout"), "flush", NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    r = PyObject_CallMethod(PySys_GetObject("stderr"), "flush", NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    _exit(code);
}

/* Append a record to the result ring, waiting (without the GIL) while it is
 * full, and wake the collector. */
static void post_raw(worker *w, const cp_rechdr *h, const void *p, size_t n)
{
    while (cp_ring_try_put(w->results, h, p, n) != 0) {
        uint32_t seen = cp_event_prepare(&w->results->space);
        if (cp_ring_fits(w->results, n)) {
            cp_event_cancel(&w->results->space);
            continue;
        }
        Py_BEGIN_ALLOW_THREADS
        cp_event_sleep(&w->results->space, seen, -1);
        Py_END_ALLOW_THREADS
    }
    cp_event_signal(&w->ctl->results);
}

/* Where the next large result goes; its tag names the message that will
 * carry the segment's descriptor. */
static const cp_segdest *next_dest(worker *w)
{
    w->dest.tag = ++w->seg_seq;
    return &w->dest;
}

/* Hand a segment's descriptor to the parent: a message on the slot's
 * socket, sent before the record that names it, so the parent always finds
 * it (and, in flight, it outlives us if we die).  A one-shot segment's
 * descriptor is the message's from then on.  0, or -1 with errno (a
 * recycled entry is then handed back: nobody will read it). */
static int send_segment(worker *w, const cp_segref *seg)
{
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cp_send_fd(w->sock, seg->tag, seg->fd, 0);
    Py_END_ALLOW_THREADS
    int saved = errno;
    if (seg->recy < 0) close(seg->fd);
    else if (rc < 0) atomic_store(&w->slot->res_recy[seg->recy].state, CP_RECY_FREE);
    errno = saved;
    return rc;
}

/* Post a packed payload: inline, or a reference to its segment.  0, or -1
 * with the exception (the segment could not be handed over: nothing
 * posted). */
static int post_packed(worker *w, uint16_t kind, uint16_t flags, uint64_t job,
                       uint32_t idx, cp_packed *pk)
{
    cp_rechdr h = {.kind = kind, .flags = flags, .job = job, .idx = idx};
    if (pk->has_seg) {
        if (send_segment(w, &pk->seg) != 0) {
            cp_oserror("cpool: handing a result segment to the parent (sendmsg)");
            return -1;
        }
        h.flags |= CP_F_LARGE;
        post_raw(w, &h, &pk->seg, sizeof pk->seg);
        return 0;
    }
    post_raw(w, &h, PyBytes_AS_STRING(pk->bytes), (size_t)PyBytes_GET_SIZE(pk->bytes));
    Py_CLEAR(pk->bytes);
    return 0;
}

/* Post the raised exception as an error record.  With `value`, the raised
 * exception is why value (a result) could not be pickled or sent. */
static void post_error(worker *w, uint16_t kind, uint64_t job, uint32_t idx,
                       PyObject *value)
{
    PyObject *exc = cp_fetch_exc();
    PyObject *payload;
    if (exc == NULL) {
        exc = PyObject_CallFunction(PyExc_SystemError, "s", "error without an exception");
        if (exc == NULL) exc = cp_fetch_exc();
    }
    if (value != NULL)
        payload = PyObject_CallFunctionObjArgs(w->cfg->pack_error, exc, value, NULL);
    else payload = PyObject_CallOneArg(w->cfg->pack_error, exc);
    Py_XDECREF(exc);
    cp_packed pk;
    if (payload == NULL || !PyBytes_Check(payload) ||
        cp_pack_pickled(payload, cp_ring_inline_max(w->results), next_dest(w), &pk) < 0 ||
        post_packed(w, kind, 0, job, idx, &pk) < 0) {
        /* An empty error record: the parent reports that the worker could
         * not describe its error. */
        PyErr_Clear();
        Py_XDECREF(payload);
        cp_rechdr h = {.kind = kind, .job = job, .idx = idx};
        post_raw(w, &h, NULL, 0);
        return;
    }
    Py_DECREF(payload);
}

/* A cp_segget_fn: the descriptor the parent sent on our socket for a task
 * segment (before it put the record), checked by the caller. */
static int parent_segment(void *sock, const cp_segref *ref)
{
    return cp_recv_fd(*(int *)sock, ref->tag);
}

static int ring_has_data(void *r) { return cp_ring_has_data((cp_ring *)r); }

static int is_task(const cp_rechdr *h)
{
    return h->kind == CP_K_CALL || h->kind == CP_K_MAP || h->kind == CP_K_STARMAP;
}

/* A record the parent took back (it gave the task to another worker): drop
 * it, and the descriptor sent for it, if any. */
static void skip_revoked(worker *w, const cp_rechdr *h)
{
    if (h->flags & CP_F_LARGE) {
        cp_segref ref;
        memcpy(&ref, (const char *)(h + 1) + cp_timing_len(h), sizeof ref);
        int fd = cp_recv_fd(w->sock, ref.tag);
        if (fd >= 0) close(fd);
    }
    cp_ring_consume(w->tasks, h);
    /* Past a record taken back from us: the parent may give us work again
     * (we are not stalled), and whoever sleeps for results looks. */
    if (!cp_ring_has_data(w->tasks)) cp_event_signal(&w->ctl->results);
}

/* Take a timed record's limit off its copy (CP_F_TIMED), leaving the
 * payload where an untimed record's is. */
static void take_timing(worker *w, cp_rechdr *h)
{
    w->timed = (h->flags & CP_F_TIMED) != 0;
    if (!w->timed) return;
    size_t nt = cp_timing_len(h);
    if (nt > h->len) leave(70); /* cannot be: the parent wrote it */
    if (nt > w->timingcap) {
        cp_timing *t = realloc(w->timing, nt);
        if (t == NULL) leave(70);
        w->timing = t;
        w->timingcap = nt;
    }
    memcpy(w->timing, h + 1, nt);
    memmove(h + 1, (char *)(h + 1) + nt, h->len - nt);
    h->len -= (uint32_t)nt;
    h->flags &= (uint16_t)~CP_F_TIMED;
}

/* Wait for the next task record, take it (cp_claim: unless the parent took
 * it back first) and copy it out: once consumed, the task is held by this
 * worker (the parent fails it, not resends it, if we die). */
static const cp_rechdr *next_task(worker *w)
{
    const cp_rechdr *h;
    for (;;) {
        h = cp_ring_peek(w->tasks);
        if (h != NULL) {
            if (!is_task(h)) break;
            if (cp_claim((cp_rechdr *)h, CP_CLAIM_TAKEN)) {
                atomic_store(&w->slot->started_ns, cp_now_ns());
                break;
            }
            skip_revoked(w, h);
            continue;
        }
        if (cp_spin_until(ring_has_data, w->tasks)) continue;
        uint32_t seen = cp_event_prepare(&w->tasks->data);
        if (cp_ring_has_data(w->tasks)) {
            cp_event_cancel(&w->tasks->data);
            continue;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = cp_event_sleep(&w->tasks->data, seen, -1);
        Py_END_ALLOW_THREADS
        if (rc == EINTR && PyErr_CheckSignals() < 0) PyErr_WriteUnraisable(NULL);
    }
    size_t need = sizeof *h + h->len;
    if (need > w->bufcap) {
        char *nb = realloc(w->buf, need);
        if (nb == NULL) leave(70);
        w->buf = nb;
        w->bufcap = need;
    }
    memcpy(w->buf, h, need);
    /* Before current_job, whose store publishes it to whoever loads that
     * first (limits.c). */
    atomic_store_explicit(&w->slot->current_idx, h->idx, memory_order_relaxed);
    atomic_store(&w->slot->current_job, h->job);
    cp_ring_consume(w->tasks, h);
    take_timing(w, (cp_rechdr *)w->buf);
    return (const cp_rechdr *)w->buf;
}

/* ---- time limits (task_timeout=) ----------------------------------------- */

/* Item `item` of a timed task starts (UINT32_MAX: an apply's call): its
 * deadline goes into the slot, where limits.c watches it.  The first of a
 * task wakes whoever sleeps for results, to sleep no longer than that. */
static void item_begin(worker *w, uint32_t item, int first)
{
    int64_t now = cp_now_ns();
    atomic_store(&w->slot->item, item);
    atomic_store(&w->slot->item_ns, now);
    atomic_store(&w->slot->deadline_ns, now + (int64_t)w->timing->timeout_ns);
    if (first) cp_event_signal(&w->ctl->results);
}

/* The timed item ended: 1 if the stop signal's handler raised in it.  A
 * deadline limits.c has taken (CP_DEADLINE_KILLED) means the kill is on
 * its way: wait for it here, where no other item or task can be hit. */
static int item_end(worker *w)
{
    int64_t d = atomic_exchange(&w->slot->deadline_ns, 0);
    if (d == CP_DEADLINE_KILLED)
        for (;;) pause();
    return d != 0 && d == w->stopped;
}

/* The index in the whole input of item i of the running chunk, or None (an
 * apply); a new reference. */
static PyObject *input_index(worker *w, uint32_t i)
{
    if (i == UINT32_MAX) return Py_NewRef(Py_None);
    return PyLong_FromUnsignedLongLong((unsigned long long)(w->timing->first_item + i));
}

/* _cpool._stop_requested(): called by the stop signal's Python handler in
 * a worker.  (pid, item, seconds run, limit) when the parent asked to stop
 * the item running now, once per item; else None (a late signal, or not a
 * worker). */
static PyObject *stop_requested(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(args))
{
    worker *w = current;
    if (w == NULL || !w->timed) Py_RETURN_NONE;
    int64_t d = atomic_load(&w->slot->deadline_ns);
    if (d == 0 || d == w->stopped || atomic_load(&w->slot->stop_for) != d) Py_RETURN_NONE;
    w->stopped = d;
    int64_t began = atomic_load(&w->slot->item_ns);
    return Py_BuildValue("(iNdd)", (int)getpid(),
                         input_index(w, atomic_load(&w->slot->item)),
                         (double)(cp_now_ns() - began) / 1e9, (double)(d - began) / 1e9);
}

int cp_worker_add_functions(PyObject *m)
{
    static PyMethodDef fns[] = {
        {"_stop_requested", stop_requested, METH_NOARGS,
         PyDoc_STR("_stop_requested($module, /)\n--\n\n"
                   "In a worker's stop-signal handler: (pid, item, seconds run, limit)\n"
                   "if the item running now is to stop, else None.")},
        {NULL, NULL, 0, NULL},
    };
    return PyModule_AddFunctions(m, fns) < 0 ||
                   PyModule_AddIntConstant(m, "STOP_SIGNAL", CP_STOP_SIGNAL) < 0
               ? -1
               : 0;
}

/* Item i of the running chunk ran out of time: note its TaskTimeoutError
 * (exc, the one raised in it; NULL: it was killed before, per `sk`) in
 * *errors, a dict made on first use.  0, or -1 with the exception. */
static int note_timeout(worker *w, uint32_t i, PyObject *exc, const cp_skip *sk,
                        PyObject **errors)
{
    PyObject *hook = cp_hook(w->cfg->st->timed_out, "timed_out");
    if (hook == NULL) return -1;
    if (*errors == NULL && (*errors = PyDict_New()) == NULL) return -1;
    int64_t began = atomic_load(&w->slot->item_ns);
    PyObject *err = PyObject_CallFunction(
        hook, "OiNdd", exc ? exc : Py_None, sk ? sk->pid : (int)getpid(),
        input_index(w, i), (double)(sk ? sk->elapsed_ns : cp_now_ns() - began) / 1e9,
        (double)w->timing->timeout_ns / 1e9);
    if (err == NULL) return -1;
    PyObject *key = PyLong_FromUnsignedLong(i);
    int rc = key ? PyDict_SetItem(*errors, key, err) : -1;
    Py_XDECREF(key);
    Py_DECREF(err);
    return rc;
}

/* Whether item i of the current chunk is not to run again (its worker was
 * killed running it): its cp_skip, else NULL. */
static const cp_skip *skipped(worker *w, uint32_t i)
{
    for (uint32_t k = 0; k < w->timing->nskips; k++)
        if (w->timing->skips[k].item == i) return &w->timing->skips[k];
    return NULL;
}

/* Call the function on item i of a chunk: a new reference, or NULL with
 * the exception. */
static PyObject *call_item(worker *w, const cp_rechdr *h, PyObject *x)
{
    if (h->kind != CP_K_STARMAP) return PyObject_CallOneArg(w->func, x);
    PyObject *args = PySequence_Tuple(x);
    PyObject *r = args ? PyObject_Call(w->func, args, NULL) : NULL;
    Py_XDECREF(args);
    return r;
}

/* Run a timed chunk into `out`: an item past its limit gets None there
 * and its TaskTimeoutError in *errors.  0, or -1 with the exception of the
 * item that raised. */
static int run_timed(worker *w, const cp_rechdr *h, PyObject *seq, PyObject *out,
                     PyObject **errors)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int begun = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const cp_skip *sk = skipped(w, (uint32_t)i);
        PyObject *r = NULL;
        if (sk != NULL) {
            if (note_timeout(w, (uint32_t)i, NULL, sk, errors) < 0) return -1;
            r = Py_NewRef(Py_None);
        } else {
            item_begin(w, (uint32_t)i, !begun++);
            r = call_item(w, h, PySequence_Fast_GET_ITEM(seq, i));
            if (item_end(w) && r == NULL && PyErr_ExceptionMatches(PyExc_TimeoutError)) {
                PyObject *exc = cp_fetch_exc();
                int rc = note_timeout(w, (uint32_t)i, exc, NULL, errors);
                Py_XDECREF(exc);
                if (rc < 0) return -1;
                r = Py_NewRef(Py_None);
            }
        }
        if (r == NULL) return -1;
        PyList_SET_ITEM(out, i, r);
    }
    return 0;
}

/* ---- running a task ------------------------------------------------------ */

/* Run an untimed chunk (items: stolen): its results (cp_results_done),
 * or NULL with the exception of the item that raised.  A range (the
 * commonest map's input) is walked, never made into a list. */
static PyObject *run_chunk(worker *w, const cp_rechdr *h, PyObject *items, int *flat)
{
    int ranged = PyRange_Check(items);
    PyObject *seq = ranged ? PyObject_GetIter(items)
                           : PySequence_Fast(items, "chunk is not a sequence");
    Py_ssize_t n = ranged ? PyObject_Size(items)
                   : seq  ? PySequence_Fast_GET_SIZE(seq)
                          : 0;
    Py_DECREF(items);
    cp_results out;
    if (seq == NULL || n < 0 || cp_results_init(&out, n) < 0) {
        Py_XDECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x =
            ranged ? PyIter_Next(seq) : Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        PyObject *r = x != NULL ? call_item(w, h, x) : NULL;
        Py_XDECREF(x);
        if (r == NULL || cp_results_put(&out, r) < 0) {
            if (r == NULL && !PyErr_Occurred())
                PyErr_SetString(PyExc_SystemError, "cpool: a range chunk ran short");
            cp_results_clear(&out);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    return cp_results_done(&out, flat);
}

/* The list that flat results (cp_results_done; res, stolen) hold, the
 * raised exception kept: what an error about sending them shows (res
 * itself if the list cannot be made). */
static PyObject *unflatten(PyObject *res)
{
    PyObject *exc = cp_fetch_exc();
    PyObject *list = cp_flat_list(res);
    if (list != NULL) Py_SETREF(res, list);
    PyErr_Clear();
    if (exc != NULL) cp_restore_exc(exc);
    return res;
}

/* Run one task record: a new reference to the result, or NULL with the
 * task's exception set.  *mixed: the result is (results, errors) of a
 * chunk whose items did not all finish (CP_F_MIXED).  *flat: the result
 * is a chunk's results already written flat (cp_results_done). */
static PyObject *run(worker *w, const cp_rechdr *h, int *mixed, int *flat)
{
    cpool_state *st = w->cfg->st;
    if (h->kind == CP_K_CALL) {
        PyObject *t = cp_load_payload(st, h, &w->tasks_src, NULL);
        if (t == NULL) return NULL;
        PyObject *res = NULL;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "malformed apply task");
        } else {
            PyObject *f = PyTuple_GET_ITEM(t, 0), *a = PyTuple_GET_ITEM(t, 1);
            PyObject *k = PyTuple_GET_ITEM(t, 2);
            PyObject *args = PySequence_Tuple(a);
            if (args != NULL) {
                if (w->timed) item_begin(w, UINT32_MAX, 1);
                res = PyObject_Call(f, args,
                                    PyDict_Check(k) && PyDict_GET_SIZE(k) ? k : NULL);
                if (w->timed && item_end(w) && res == NULL &&
                    PyErr_ExceptionMatches(PyExc_TimeoutError))
                    atomic_fetch_add(&w->ctl->timed_out, 1); /* posted as its error */
                Py_DECREF(args);
            }
        }
        Py_DECREF(t);
        return res;
    }
    /* MAP / STARMAP: a chunk of items for the cached function. */
    if (w->func_job != h->job || (w->func == NULL && w->func_error == NULL)) {
        PyErr_SetString(PyExc_SystemError, "cpool: chunk before its function");
        return NULL;
    }
    if (w->func_error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(w->func_error), w->func_error);
        return NULL;
    }
    PyObject *items = cp_load_payload(st, h, &w->tasks_src, NULL);
    if (items != NULL && PyBytes_CheckExact(items)) {
        /* A starmap's rows of numbers: called straight from the record,
         * or (timed: item by item) made into tuples. */
        if (!w->timed) {
            Py_SETREF(items, cp_rows_call(w->func, items, flat));
            return items;
        }
        Py_SETREF(items, cp_flat_list(items));
    }
    if (items == NULL) return NULL;
    if (!w->timed) return run_chunk(w, h, items, flat);
    PyObject *seq = PySequence_Fast(items, "chunk is not a sequence");
    Py_DECREF(items);
    if (seq == NULL) return NULL;
    PyObject *out = PyList_New(PySequence_Fast_GET_SIZE(seq));
    PyObject *errors = NULL;
    if (out != NULL && run_timed(w, h, seq, out, &errors) < 0) Py_CLEAR(out);
    if (out != NULL && errors != NULL) {
        *mixed = 1;
        Py_SETREF(out, PyTuple_Pack(2, out, errors));
    }
    Py_XDECREF(errors);
    Py_DECREF(seq);
    return out;
}

static void set_func(worker *w, const cp_rechdr *h)
{
    Py_CLEAR(w->func);
    Py_CLEAR(w->func_error);
    w->func_job = h->job;
    w->func = cp_load_payload(w->cfg->st, h, &w->func_src, NULL);
    if (w->func == NULL) w->func_error = cp_fetch_exc();
}

void cp_worker_main(const cp_wconfig *cfg, int slot, pid_t tmpl)
{
    worker w = {0};
    current = &w;
    w.cfg = cfg;
    w.ctl = cfg->ctl;
    w.slot = &cfg->ctl->slots[slot];
    w.tasks = cp_task_ring(cfg->ctl, slot);
    w.results = cp_result_ring(cfg->ctl, slot);
    /* Our slot's socket; the other slots' are theirs. */
    for (int i = 0; i < cfg->n; i++)
        if (i != slot) close(cfg->wsock[i]);
    w.sock = cfg->wsock[slot];
    for (int k = 0; k < CP_RECY_RESULTS; k++) w.res_fds[k] = -1;
    w.dest = (cp_segdest){.recy = w.slot->res_recy,
                          .nrecy = CP_RECY_RESULTS,
                          .wait = 1,
                          .maps = w.res_maps,
                          .fds = w.res_fds,
                          .big = &cfg->ctl->recy_big_mib,
                          .budget = cfg->ctl->recy_budget_mib};
    w.tasks_src = (cp_segsrc){.get = parent_segment,
                              .arg = &w.sock,
                              .recy = w.ctl->task_recy,
                              .maps = w.task_maps,
                              .loading = &w.slot->loading_recy};
    w.func_src = (cp_segsrc){.get = parent_segment, .arg = &w.sock};

    /* The template stores our pid too, after fork returns there; we may be
     * READY before that, and Pool() must not see a READY slot without one. */
    atomic_store(&w.slot->pid, getpid());
    /* Go with the template (which is single-threaded, so the death signal
     * is tied to the right thread); the parent owns Ctrl-C.  The template's
     * pid comes from the template: getppid() here could already name init,
     * if the template died before we asked. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != tmpl) _exit(1);
    signal(SIGINT, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    sigset_t all;
    sigemptyset(&all);
    sigaddset(&all, SIGCHLD);
    sigprocmask(SIG_UNBLOCK, &all, NULL);

    PyObject *r = PyObject_CallFunction(cfg->bootstrap, "i", slot);
    if (r == NULL) PyErr_WriteUnraisable(cfg->bootstrap);
    Py_XDECREF(r);
    if (cfg->initializer != Py_None) {
        r = PyObject_Call(cfg->initializer, cfg->initargs, NULL);
        if (r == NULL) {
            post_error(&w, CP_K_INITERR, 0, 0, NULL);
            leave(1);
        }
        Py_DECREF(r);
    }
    cp_drop_fds_upto(w.sock, atomic_load(&w.slot->stale_tag)); /* a predecessor's */
    atomic_store(&w.slot->inited, 1);
    atomic_store(&w.slot->busy_ns, 0);
    atomic_store(&w.slot->deadline_ns, 0); /* a killed predecessor's task */
    atomic_store(&w.slot->started_ns, 0);
    atomic_store(&w.slot->ready_ns, cp_now_ns());
    atomic_store(&w.slot->state, CP_S_READY);

    uint64_t done = 0;
    for (;;) {
        const cp_rechdr *h = next_task(&w);
        if (h->kind == CP_K_STOP) break;
        if (h->kind == CP_K_FUNC) {
            set_func(&w, h);
            continue;
        }
        int mixed = 0, flat = 0;
        PyObject *res = run(&w, h, &mixed, &flat);
        if (res == NULL) {
            post_error(&w, CP_K_ERR, h->job, h->idx, NULL);
        } else {
            cp_packed pk;
            size_t most = cp_ring_inline_max(w.results);
            if ((flat ? cp_pack_pickled(res, most, next_dest(&w), &pk)
                      : cp_pack(cfg->st, res, most, next_dest(&w), &pk)) < 0 ||
                post_packed(&w, CP_K_OK, mixed ? CP_F_MIXED : 0, h->job, h->idx, &pk) <
                    0) {
                if (flat) res = unflatten(res);
                post_error(&w, CP_K_ERR, h->job, h->idx, res);
            }
            Py_DECREF(res);
        }
        cp_test_pause(CP_PAUSE_POSTED);
        /* The clock first: a slot with a clock and no task named is taking
         * one (stats.c). */
        int64_t started = atomic_exchange(&w.slot->started_ns, 0);
        if (started == CP_STARTED_KILLED) /* limits.c's kill is on its way */
            for (;;) pause();
        atomic_store(&w.slot->current_job, 0);
        atomic_fetch_add(&w.slot->busy_ns, (uint64_t)(cp_now_ns() - started));
        if (cfg->maxtasks && ++done >= cfg->maxtasks) break;
        /* Over the memory cap: that task's result is posted; leave before
         * the next (the parent sends what we never took to another). */
        uint64_t cap = w.ctl->max_rss;
        if (cap && cp_proc_rss(getpid()) > (int64_t)cap) break;
    }
    leave(0);
}

/* ---- the fork ---------------------------------------------------------- */

/* The template's way to fork a worker (runs in the template).  A forked
 * template is still the parent's fork child, its Python state as
 * PyOS_BeforeFork left it in the parent at Pool() (snapshot): the worker
 * finishes that fork, and nothing runs in the template.  An exec'ed one is
 * an interpreter of its own, which forks as os.fork() does. */
pid_t cp_spawn_worker(void *arg, int slot)
{
    const cp_wconfig *cfg = arg;
    pid_t tmpl = getpid();
    if (!cfg->snapshot) PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        cp_worker_main(cfg, slot, tmpl);
    }
    if (!cfg->snapshot) {
        int saved = errno;
        PyOS_AfterFork_Parent();
        errno = saved;
    }
    return pid;
}

/* pool.c: the parent's side of a pool, the Core type.
 *
 * Core owns the control segment, forks the template at creation, and runs
 * one collector thread, pure C, that sleeps on a futex without the GIL.  The
 * collector drains the result rings, takes the GIL once per batch to unpickle
 * results and hand them to the Python result objects (job._set), handles
 * worker deaths (failing exactly the tasks the dead worker held, resending
 * the ones it never took, asking the template for a replacement), and
 * dispatches pending tasks.  Submitting threads pickle their tasks with the
 * GIL, then dispatch directly into the worker rings without it.
 *
 * Locking: `mu` guards the pending queue and the per-worker in-flight lists.
 * Nobody holding `mu` ever waits for the GIL, so a thread holding the GIL may
 * wait for `mu` (released GIL first when the lock is contended).
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
/* Tasks in flight per worker.  A second queued task only pays off when tasks
 * are short enough that the collector's round trip would leave the worker
 * idle; for long ones it would wait behind a busy worker while another sits
 * idle (the imbalance a shared queue avoids).  So: one, until measured tasks
 * prove short. */
#define DEPTH_SHORT 4
#define SHORT_TASK_NS 1000000   /* 1 ms */
#define BATCH 64                /* results delivered per slot per GIL hold */
#define WATCHDOG_NS 1000000000  /* template liveness check while busy */
#define SEND_BATCH_BYTES (256u * 1024u) /* map chunks are sent this much at a time */

/* ---- tasks --------------------------------------------------------------- */

static void blob_decref(cp_blob *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) free(b);
}

static void task_free(cp_task *t)
{
    blob_decref(t->func);
    free(t);
}

/* Give up a packed segment nobody will read: a recycled one goes back to
 * the recycler, a one-shot one is closed (its memory goes with the last
 * descriptor or mapping of it). */
static void drop_packed_segment(CoreObject *c, const cp_segref *seg)
{
    if (seg->recy < 0) close(seg->fd);
    else atomic_store(&c->ctl->task_recy[seg->recy].state, CP_RECY_FREE);
}

/* A task that will not be sent (again) gives up its segment; a recycled one
 * not when a worker had taken the task (it hands the segment back itself,
 * or the parent does for a dead one, and someone else may have it since). */
static void task_drop_segment(CoreObject *c, cp_task *t)
{
    if (!t->has_seg) return;
    if (t->seg.recy < 0 || !t->held) drop_packed_segment(c, &t->seg);
    t->has_seg = 0;
}

/* A task carrying a packed payload: a copy of its inline bytes, or its
 * segment (written already, so resending the task reuses it).  Consumes
 * pk's reference.  NULL with MemoryError set. */
static cp_task *task_new(CoreObject *c, uint64_t job, uint32_t idx, uint16_t kind,
                         cp_blob *func, cp_packed *pk)
{
    size_t n = pk->has_seg ? 0 : (size_t)PyBytes_GET_SIZE(pk->bytes);
    cp_task *t = malloc(sizeof *t + n);
    if (t == NULL) {
        if (pk->has_seg) drop_packed_segment(c, &pk->seg);
        Py_CLEAR(pk->bytes);
        PyErr_NoMemory();
        return NULL;
    }
    memset(t, 0, sizeof *t);
    t->job = job;
    t->idx = idx;
    t->kind = kind;
    t->len = n;
    if (pk->has_seg) {
        t->has_seg = 1;
        t->seg = pk->seg;
    } else {
        memcpy(t->data, PyBytes_AS_STRING(pk->bytes), n);
        Py_CLEAR(pk->bytes);
    }
    if (func != NULL) {
        atomic_fetch_add(&func->refs, 1);
        t->func = func;
    }
    return t;
}

/* Pickle obj into a new task; NULL with the exception.  `wait`: a large
 * one may wait a little for a recycled segment (a map's chunks: see shm.c). */
static cp_task *task_pack(CoreObject *c, uint64_t job, uint32_t idx, uint16_t kind,
                          cp_blob *func, PyObject *obj, int wait)
{
    if (c->sealed) { /* racy read, an early refusal only: enqueue decides */
        PyErr_SetString(PyExc_ValueError, "Pool not running");
        return NULL;
    }
    cp_packed pk;
    cp_segdest dest = {.recy = c->ctl->task_recy,
                       .nrecy = CP_RECY_TASKS,
                       .wait = wait,
                       .maps = c->task_maps,
                       .fds = c->task_fds};
    if (cp_pack(c->st, obj, cp_ring_inline_max(cp_task_ring(c->ctl, 0)), &dest, &pk) < 0)
        return NULL;
    return task_new(c, job, idx, kind, func, &pk);
}

/* Take `mu` while holding the GIL: drop the GIL only to wait, and never
 * hold `mu` while waiting to get the GIL back (a thread ended there, at
 * interpreter exit, would leave `mu` locked for good). */
static void lock_with_gil(CoreObject *c)
{
    while (pthread_mutex_trylock(&c->mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->mu); /* wait until it is free */
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
    }
}

static void kick(CoreObject *c)
{
    atomic_store(&c->kicked, 1);
    cp_event_signal(&c->ctl->results);
    cp_event_signal(&c->tok_ev); /* a collector napping while a waiter collects */
}

static void tell_template(CoreObject *c)
{
    uint64_t one = 1;
    ssize_t w;
    do {
        w = write(c->evfd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
    /* EAGAIN means the counter is already non-zero: the template will look. */
}

/* ---- dispatch (mu held, no GIL) ----------------------------------------- */

static int slot_accepts(CoreObject *c, int i)
{
    uint32_t s = atomic_load(&c->ctl->slots[i].state);
    if (s != CP_S_SPAWN_REQ && s != CP_S_SPAWNED && s != CP_S_READY) return 0;
    cp_wstate *w = &c->ws[i];
    int depth = (c->task_ns >= 0 && c->task_ns < SHORT_TASK_NS) ? DEPTH_SHORT : 1;
    if (w->n >= depth) return 0;
    return c->maxtasks == 0 || w->sent < c->maxtasks;
}

/* Close w's FUNC segments put before ring position `upto`: loaded. */
static void close_fsegs(cp_wstate *w, uint64_t upto)
{
    int k = 0;
    for (int j = 0; j < w->nfsegs; j++) {
        if (w->fsegs[j].end < upto) close(w->fsegs[j].fd);
        else w->fsegs[k++] = w->fsegs[j];
    }
    w->nfsegs = k;
}

/* Hand slot i's worker the segment of a record about to be put on its
 * ring (which has room for it): 0, 1 when the socket is full (as a full
 * ring: later), -1 failed (errno). */
static int send_segment(CoreObject *c, int i, cp_segref *seg)
{
    seg->tag = ++c->tag_seq;
    if (cp_send_fd(c->psock[i], seg->tag, seg->fd, MSG_DONTWAIT) == 0) return 0;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
}

/* Put one FUNC record, inline or through a new segment of its own, kept
 * open in w->fsegs until the worker has loaded it: 0 sent, 1 ring full, -1
 * failed (errno). */
static int put_func(CoreObject *c, int i, cp_ring *r, cp_rechdr *h, const char *p,
                    size_t n)
{
    cp_wstate *w = &c->ws[i];
    if (n <= cp_ring_inline_max(r)) return cp_ring_try_put(r, h, p, n) ? 1 : 0;
    cp_segref seg;
    if (!cp_ring_fits(r, sizeof seg)) return 1;
    if (w->nfsegs == w->capfsegs) {
        int cap = w->capfsegs ? 2 * w->capfsegs : 4;
        struct cp_fseg *f = realloc(w->fsegs, (size_t)cap * sizeof *f);
        if (f == NULL) return -1;
        w->fsegs = f;
        w->capfsegs = cap;
    }
    cp_segdest d = {0}; /* one-shot */
    struct iovec piece = {.iov_base = (void *)p, .iov_len = n};
    if (cp_seg_write(&d, &piece, 1, 0, &seg) != 0) return -1;
    h->flags = CP_F_LARGE;
    int rc = send_segment(c, i, &seg);
    if (rc == 0 && cp_ring_try_put(r, h, &seg, sizeof seg) != 0) rc = 1; /* cannot be */
    if (rc != 0) {
        int saved = errno;
        close(seg.fd);
        errno = saved;
        return rc;
    }
    w->fsegs[w->nfsegs++] = (struct cp_fseg){.fd = seg.fd, .end = cp_ring_tail(r)};
    return 0;
}

/* Put a task record on slot i's ring: its inline pickle, or a reference to
 * its segment (handed over first).  0 sent, 1 full, -1 failed (errno). */
static int put_task(CoreObject *c, int i, cp_ring *r, cp_task *t)
{
    cp_rechdr h = {.kind = t->kind, .job = t->job, .idx = t->idx};
    if (!t->has_seg) return cp_ring_try_put(r, &h, t->data, t->len) ? 1 : 0;
    if (!cp_ring_fits(r, sizeof t->seg)) return 1;
    int rc = send_segment(c, i, &t->seg);
    if (rc != 0) return rc;
    h.flags = CP_F_LARGE;
    return cp_ring_try_put(r, &h, &t->seg, sizeof t->seg) ? 1 : 0;
}

static void dispatch_locked(CoreObject *c)
{
    if (atomic_load(&c->phase) == CP_TERMINATE || atomic_load(&c->is_broken)) return;
    while (c->pend_head != NULL) {
        cp_task *t = c->pend_head;
        int best = -1;
        for (int i = 0; i < c->n; i++) {
            if (c->full[i] || !slot_accepts(c, i)) continue;
            if (best < 0 || c->ws[i].n < c->ws[best].n) best = i;
        }
        if (best < 0) break;
        cp_ring *r = cp_task_ring(c->ctl, best);
        cp_wstate *w = &c->ws[best];
        int rc = 0;
        if (t->func != NULL && (!w->has_func || w->func_job != t->job)) {
            /* The function travels once per job and worker, then is cached. */
            cp_rechdr fh = {.kind = CP_K_FUNC, .job = t->job};
            rc = put_func(c, best, r, &fh, t->func->data, t->func->len);
            if (rc == 0) {
                w->has_func = 1;
                w->func_job = t->job;
                w->func_end = cp_ring_tail(r);
                c->touched[best] = 1;
            }
        }
        if (rc == 0) rc = put_task(c, best, r, t);
        if (rc > 0) {
            c->full[best] = 1;
            continue;
        }
        c->pend_head = t->next;
        if (c->pend_head == NULL) c->pend_tail = NULL;
        c->npend--;
        t->next = NULL;
        if (rc < 0) {
            t->err = errno;
            t->next = c->failed;
            c->failed = t;
            atomic_store(&c->kicked, 1);
            continue;
        }
        t->end_pos = cp_ring_tail(r);
        t->sent_ns = cp_now_ns();
        if (w->tail) w->tail->next = t;
        else w->head = t;
        w->tail = t;
        w->n++;
        w->sent++;
        c->touched[best] = 1;
    }
    for (int i = 0; i < c->n; i++) {
        if (c->touched[i]) cp_event_signal(&cp_task_ring(c->ctl, i)->data);
        c->touched[i] = c->full[i] = 0;
    }
    if (atomic_load(&c->kicked)) cp_event_signal(&c->ctl->results);
}

static void fail_all(CoreObject *c, int status, PyObject *value, int inflight);

static void free_list(CoreObject *c, cp_task *t);

/* Queue tasks first..last and dispatch what fits; called with the GIL.
 * 0, or -1 with ValueError when the pool no longer takes tasks (the caller
 * lost a race with close() or terminate()); the tasks are freed then. */
static int enqueue(CoreObject *c, cp_task *first, cp_task *last, size_t n)
{
    /* Keep the GIL unless the lock is contended: dispatch is short (inline
     * records only; large ones were written to segments already), and
     * releasing the GIL on every submit let the collector take it for a
     * whole batch each time: a GIL hand-off per apply_async. */
    lock_with_gil(c);
    int sealed = c->sealed;
    if (!sealed) {
        if (c->pend_tail) c->pend_tail->next = first;
        else c->pend_head = first;
        c->pend_tail = last;
        c->npend += n;
        dispatch_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (sealed) {
        free_list(c, first);
        PyErr_SetString(PyExc_ValueError, "Pool not running");
        return -1;
    }
    if (atomic_load(&c->is_broken) || atomic_load(&c->phase) == CP_TERMINATE)
        kick(c); /* the collector fails them */
    return 0;
}

/* No task gets in from now on: enqueue refuses under mu. */
static void seal(CoreObject *c, int gil)
{
    if (gil) lock_with_gil(c);
    else pthread_mutex_lock(&c->mu);
    c->sealed = 1;
    pthread_mutex_unlock(&c->mu);
}

/* ---- delivery (GIL held) -------------------------------------------------- */

/* Leave obj._set(idx, status, value) to the collector thread. */
static void defer(CoreObject *c, PyObject *obj, PyObject *pidx, PyObject *pst,
                  PyObject *value)
{
    PyObject *t = PyTuple_Pack(4, obj, pidx, pst, value);
    if (t == NULL || PyList_Append(c->deferred, t) < 0) {
        PyErr_WriteUnraisable(obj);
    } else {
        atomic_store(&c->has_deferred, 1);
        atomic_store(&c->kicked, 1);
    }
    Py_XDECREF(t);
}

/* obj._set(idx, status, value); errors are reported, except a Ctrl-C (or
 * the like) in a waiter that collects for itself: that one is the caller's,
 * raised when its round is over. */
static void call_set(CoreObject *c, PyObject *obj, PyObject *pidx, PyObject *pst,
                     PyObject *value)
{
    PyObject *argv[4] = {obj, pidx, pst, value};
    PyObject *r = PyObject_VectorcallMethod(c->st->str_set, argv,
                                            4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
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
        defer(c, obj, pidx, pst, value);
        return;
    }
    PyErr_WriteUnraisable(obj);
}

/* Hand one outcome to the job's result object: job._set(idx, status, value).
 * In a waiter collecting for itself, an object with callbacks (obj._defer)
 * is left to the collector thread: callbacks run on cpool's thread, as
 * multiprocessing's run on its result handler, never inside a caller's
 * get(). */
static void deliver(CoreObject *c, uint64_t job, uint32_t idx, int status,
                    PyObject *value)
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
    if (pidx == NULL || pst == NULL) {
        PyErr_WriteUnraisable(obj);
    } else if (PyThreadState_Get() != c->cts) {
        PyObject *d = PyObject_GetAttr(obj, c->st->str_defer);
        int later = d == NULL ? -1 : PyObject_IsTrue(d);
        Py_XDECREF(d);
        if (later < 0) {
            PyErr_WriteUnraisable(obj);
        } else if (later) {
            defer(c, obj, pidx, pst, value ? value : Py_None);
        } else {
            /* A signal that arrived meanwhile runs its handler now, not at
             * the first line of _set. */
            if (c->interrupt == NULL && PyErr_CheckSignals() < 0)
                c->interrupt = cp_fetch_exc();
            call_set(c, obj, pidx, pst, value ? value : Py_None);
        }
    } else {
        call_set(c, obj, pidx, pst, value ? value : Py_None);
    }
    Py_XDECREF(pidx);
    Py_XDECREF(pst);
    Py_DECREF(obj);
    return;
error:
    PyErr_WriteUnraisable(c->cache);
}

/* The collector thread: deliver what waiters left for it. */
static void deliver_deferred(CoreObject *c)
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
                     PyTuple_GET_ITEM(t, 2), PyTuple_GET_ITEM(t, 3));
        }
        Py_DECREF(l);
    }
}

/* Deliver `status` to every task of the list and free them. */
static void fail_list(CoreObject *c, cp_task *t, int status, PyObject *value)
{
    while (t != NULL) {
        cp_task *next = t->next;
        task_drop_segment(c, t);
        if (t->err) {
            errno = t->err;
            PyObject *e = PyErr_SetFromErrno(PyExc_OSError);
            (void)e;
            PyObject *exc = cp_fetch_exc();
            deliver(c, t->job, t->idx, CP_ST_LOCAL, exc);
            Py_XDECREF(exc);
        } else {
            deliver(c, t->job, t->idx, status, value);
        }
        task_free(t);
        t = next;
    }
}

/* Take and fail the pending queue (and, if `inflight`, everything sent). */
static void fail_all(CoreObject *c, int status, PyObject *value, int inflight)
{
    lock_with_gil(c);
    cp_task *pend = c->pend_head, *failed = c->failed;
    c->pend_head = c->pend_tail = NULL;
    c->npend = 0;
    c->failed = NULL;
    cp_task *sent = NULL;
    if (inflight) {
        for (int i = 0; i < c->n; i++) {
            cp_wstate *w = &c->ws[i];
            if (w->tail) {
                w->tail->next = sent;
                sent = w->head;
            }
            w->head = w->tail = NULL;
            w->n = 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    fail_list(c, failed, status, value);
    fail_list(c, pend, status, value);
    fail_list(c, sent, status, value);
}

/* Break the pool: (exc, traceback text, 1 if the initializer raised). */
static void set_broken(CoreObject *c, PyObject *exc, PyObject *tb, int init)
{
    if (c->broken != NULL) return;
    c->broken = Py_BuildValue("(OOO)", exc, tb ? tb : Py_None, init ? Py_True : Py_False);
    if (c->broken == NULL) PyErr_WriteUnraisable(NULL);
    atomic_store(&c->is_broken, 1);
}

/* A cp_segget_fn: the descriptor slot *sock's worker sent for ref's
 * segment (before it posted the record, so it is there), or -1 with errno.
 * The token holder's. */
static int take_result_segment(void *sock, const cp_segref *ref)
{
    return cp_recv_fd(*(int *)sock, ref->tag);
}

/* Deliver up to BATCH results of slot i. */
static void drain(CoreObject *c, int i)
{
    cp_ring *r = cp_result_ring(c->ctl, i);
    int waiter = PyThreadState_Get() != c->cts;
    for (int k = 0; k < BATCH; k++) {
        const cp_rechdr *h = cp_ring_peek(r);
        if (h == NULL) return;
        /* In a waiter, a pending Ctrl-C stops the round before a record is
         * taken: nothing is half delivered. */
        if (waiter && (c->interrupt != NULL || PyErr_CheckSignals() < 0)) {
            if (c->interrupt == NULL) c->interrupt = cp_fetch_exc();
            return;
        }
        cp_rechdr hh = *h;
        cp_task *t = NULL;
        if (hh.kind != CP_K_INITERR) {
            /* The task is done: refill the worker before unpickling its
             * result, which may take a while (a large chunk's list), so the
             * worker does not idle meanwhile. */
            lock_with_gil(c);
            cp_wstate *w = &c->ws[i];
            t = w->head;
            if (t != NULL) {
                w->head = t->next;
                if (w->head == NULL) w->tail = NULL;
                w->n--;
                close_fsegs(w, t->end_pos); /* the worker has loaded them */
                int64_t took = cp_now_ns() - t->sent_ns;
                c->task_ns = c->task_ns < 0 ? took : (7 * c->task_ns + took) / 8;
                dispatch_locked(c);
            }
            pthread_mutex_unlock(&c->mu);
            if (t == NULL || t->job != hh.job || t->idx != hh.idx)
                CP_DEBUG("result %llu/%u out of order on slot %d",
                         (unsigned long long)hh.job, hh.idx, i);
        }
        PyObject *value = NULL;
        int status;
        if (hh.len == 0 && hh.kind != CP_K_OK) {
            value =
                PyUnicode_FromString("the worker could not pickle or describe its error");
            status = CP_ST_LOCAL;
            if (value != NULL) {
                PyObject *exc = PyObject_CallOneArg(PyExc_RuntimeError, value);
                Py_SETREF(value, exc);
            }
        } else {
            cp_segsrc src = {.get = take_result_segment,
                             .arg = &c->psock[i],
                             .recy = c->ctl->slots[i].res_recy,
                             .maps = c->res_maps + (size_t)i * CP_RECY_RESULTS};
            value = cp_load_payload(c->st, h, &src, waiter ? &c->interrupt : NULL);
            status = hh.kind == CP_K_OK ? CP_ST_OK : CP_ST_ERR;
            if (value == NULL) {
                /* (why, whether it was an error report): Python names it. */
                PyObject *why = cp_fetch_exc();
                value = Py_BuildValue("(NO)", why, status ? Py_True : Py_False);
                status = CP_ST_UNPICKLE;
            }
        }
        cp_ring_consume(r, h);
        if (hh.kind == CP_K_INITERR) {
            if (value != NULL && (status == CP_ST_ERR || status == CP_ST_UNPICKLE) &&
                PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 2)
                set_broken(c, PyTuple_GET_ITEM(value, 0),
                           status == CP_ST_ERR ? PyTuple_GET_ITEM(value, 1) : NULL, 1);
            else set_broken(c, value ? value : Py_None, NULL, 1);
            Py_XDECREF(value);
            continue;
        }
        if (t != NULL) {
            t->held = 1; /* the worker handed a recycled segment back itself */
            task_drop_segment(c, t);
            task_free(t);
        }
        deliver(c, hh.job, hh.idx, status, value);
        Py_XDECREF(value);
    }
}

/* Slot i's worker is dead and its results drained: fail what it held,
 * resend what it never took, and ask for a replacement if one is needed. */
static void handle_death(CoreObject *c, int i)
{
    cp_slot *s = &c->ctl->slots[i];
    pid_t pid = atomic_load(&s->pid);
    int ws = atomic_load(&s->wstatus);
    int inited = atomic_load(&s->inited);
    cp_ring *tr = cp_task_ring(c->ctl, i);
    uint64_t head = cp_ring_head(tr);
    cp_task *held = NULL, **hp = &held, *again = NULL, **ap = &again, *alast = NULL;
    size_t nagain = 0;

    lock_with_gil(c);
    cp_wstate *w = &c->ws[i];
    /* A FUNC record it consumed belongs to the task after it: a function
     * whose unpickling kills the worker fails that task instead of being
     * resent to kill the next worker, and the next. */
    uint64_t held_upto = head;
    int func_taken = w->has_func && w->func_end == head; /* nothing taken after it */
    for (cp_task *t = w->head; func_taken && t != NULL; t = t->next) {
        if (t->job != w->func_job) continue;
        if (t->end_pos > held_upto) held_upto = t->end_pos;
        break;
    }
    close_fsegs(w, UINT64_MAX);
    for (cp_task *t = w->head, *next; t != NULL; t = next) {
        next = t->next;
        t->next = NULL;
        if (t->end_pos <= held_upto) { /* held: failed below */
            t->held = t->end_pos <= head; /* its record (and segment) taken */
            *hp = t;
            hp = &t->next;
        } else {
            *ap = t;
            ap = &t->next;
            alast = t;
            nagain++;
        }
    }
    int poison = 0;
    if (func_taken && held_upto > head) {
        /* Its function killed the worker (or a kill landed in that window:
         * one task pays).  Twice for the same job, the job's queued tasks
         * would kill the next workers the same way: they fail too. */
        poison = c->func_death_job == w->func_job;
        c->func_death_job = w->func_job;
    }
    if (poison) {
        cp_task **pp = &c->pend_head, *prev = NULL;
        while (*pp != NULL) {
            cp_task *t = *pp;
            if (t->job != w->func_job) {
                prev = t;
                pp = &t->next;
                continue;
            }
            *pp = t->next;
            if (c->pend_tail == t) c->pend_tail = prev;
            c->npend--;
            t->next = NULL;
            *hp = t;
            hp = &t->next;
        }
        for (cp_task **ap2 = &again; *ap2 != NULL;) {
            cp_task *t = *ap2;
            if (t->job != w->func_job) {
                ap2 = &t->next;
                continue;
            }
            *ap2 = t->next;
            nagain--;
            t->next = NULL;
            *hp = t;
            hp = &t->next;
        }
        alast = NULL;
        for (cp_task *t = again; t != NULL; t = t->next) alast = t;
    }
    if (again != NULL) {
        alast->next = c->pend_head;
        c->pend_head = again;
        if (c->pend_tail == NULL) c->pend_tail = alast;
        c->npend += nagain;
    }
    w->head = w->tail = NULL;
    w->n = 0;
    w->has_func = 0;
    w->sent = 0;
    cp_ring_reset(tr);
    cp_ring_reset(cp_result_ring(c->ctl, i));
    int sealed = c->sealed;
    pthread_mutex_unlock(&c->mu);

    cp_drop_fds(c->psock[i]); /* a result segment it sent but never posted */
    int32_t loading = atomic_exchange(&s->loading_recy, -1);
    if (loading >= 0) { /* it died loading a task's recycled segment */
        uint32_t busy = CP_RECY_BUSY;
        atomic_compare_exchange_strong(&c->ctl->task_recy[loading].state, &busy,
                                       CP_RECY_FREE);
    }
    for (int k = 0; k < CP_RECY_RESULTS; k++) { /* ...or a recycled one */
        uint32_t busy = CP_RECY_BUSY;
        atomic_compare_exchange_strong(&s->res_recy[k].state, &busy, CP_RECY_FREE);
    }

    int phase = atomic_load(&c->phase);
    if (ws <= CP_WS_FORKFAIL_BASE && c->broken == NULL) {
        errno = CP_WS_FORKFAIL_BASE - ws;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, "fork");
        PyObject *exc = cp_fetch_exc();
        set_broken(c, exc, NULL, 0);
        Py_XDECREF(exc);
    } else if (!inited && c->initializer != Py_None && c->broken == NULL &&
               phase != CP_TERMINATE) {
        /* Died inside the initializer without a word (os._exit, a crash):
         * respawning would loop. */
        PyObject *exc = PyObject_CallFunction(
            PyExc_RuntimeError, "sii",
            "a worker died while running the pool's initializer (pid, wait status)",
            (int)pid, ws);
        if (exc == NULL) exc = cp_fetch_exc();
        set_broken(c, exc, NULL, 1);
        Py_XDECREF(exc);
    }
    int respawn = c->broken == NULL && phase != CP_TERMINATE && !sealed &&
                  (phase == CP_RUN || c->npend > 0 || PyDict_GET_SIZE(c->cache) > 0);
    CP_DEBUG("slot %d: worker %d died (status %#x), %s", i, (int)pid, ws,
             respawn ? "respawning" : "not replaced");
    atomic_store(&s->inited, 0);
    atomic_store(&s->pid, 0);
    atomic_store(&s->state, respawn ? CP_S_SPAWN_REQ : CP_S_FREE);
    if (respawn) tell_template(c);

    if (held != NULL) {
        PyObject *info = Py_BuildValue("(ii)", (int)pid, ws);
        if (info == NULL) PyErr_WriteUnraisable(NULL);
        fail_list(c, held, CP_ST_LOST, info);
        Py_XDECREF(info);
    }
}

/* ---- the collector ------------------------------------------------------- */

/* Results to deliver or a death to handle: what a waiter collects. */
static int ring_news(CoreObject *c)
{
    for (int i = 0; i < c->n; i++) {
        if (cp_ring_has_data(cp_result_ring(c->ctl, i))) return 1;
        if (atomic_load(&c->ctl->slots[i].state) == CP_S_DEAD) return 1;
    }
    return 0;
}

/* Work only the collector thread does: a kick (a phase change, tasks that
 * could not be sent, a finished job of a closing pool) or deliveries left
 * to it by waiters. */
static int collector_owed(CoreObject *c)
{
    return atomic_load(&c->kicked) || atomic_load(&c->has_deferred) ||
           atomic_load(&c->phase) != CP_RUN;
}

static int any_news(CoreObject *c)
{
    return atomic_load(&c->kicked) || atomic_load(&c->has_deferred) ||
           atomic_load(&c->phase) == CP_TERMINATE || ring_news(c);
}

static int any_news_pred(void *c) { return any_news((CoreObject *)c); }
static int ring_news_pred(void *c) { return ring_news((CoreObject *)c); }

static int outstanding_locked(CoreObject *c)
{
    if (c->npend) return 1;
    for (int i = 0; i < c->n; i++)
        if (c->ws[i].n) return 1;
    return 0;
}

/* Wait for the template to exit (it reaps the workers first), at most
 * TEMPLATE_GRACE_MS: one stuck (say, in a fork hook of the user's that
 * waits on a lock) is killed, and its workers go with it (their death
 * signal).  terminate() must return. */
#define TEMPLATE_GRACE_MS 3000
static void wait_template(CoreObject *c)
{
    int st;
    int pfd = (int)syscall(SYS_pidfd_open, c->tmpl, 0);
    if (pfd >= 0) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        int64_t deadline = cp_now_ns() + (int64_t)TEMPLATE_GRACE_MS * 1000000;
        int rc;
        do {
            int64_t left = (deadline - cp_now_ns()) / 1000000;
            rc = poll(&p, 1, left > 0 ? (int)left : 0);
        } while (rc < 0 && errno == EINTR);
        if (rc == 0) {
            CP_DEBUG("the template %d did not exit: killed", (int)c->tmpl);
            kill(c->tmpl, SIGKILL);
        }
        close(pfd);
    }
    while (waitpid(c->tmpl, &st, 0) < 0 && errno == EINTR) {
    }
}

static void send_stops(CoreObject *c)
{
    for (int i = 0; i < c->n; i++) {
        if (atomic_load(&c->ctl->slots[i].state) == CP_S_FREE) continue;
        cp_ring *r = cp_task_ring(c->ctl, i);
        cp_rechdr h = {.kind = CP_K_STOP};
        if (cp_ring_try_put(r, &h, NULL, 0) != 0)
            CP_DEBUG("slot %d: no room for STOP", i);
        cp_event_signal(&r->data);
    }
}

/* Deliver what the rings hold, handle deaths, fail what must fail; GIL and
 * the token held.  With `closing` (the collector thread only), also stop
 * the workers once a closed pool is idle: 1 when they are all gone. */
static int round_gil(CoreObject *c, int closing)
{
    int finished = 0;
    if (closing) deliver_deferred(c);
    for (int i = 0; i < c->n && c->interrupt == NULL; i++) {
        int dead = atomic_load(&c->ctl->slots[i].state) == CP_S_DEAD;
        drain(c, i);
        if (dead) {
            cp_ring *r = cp_result_ring(c->ctl, i);
            while (cp_ring_has_data(r)) drain(c, i);
            handle_death(c, i);
        }
    }
    if (c->broken != NULL) fail_all(c, CP_ST_INITFAIL, c->broken, 0);
    else if (c->failed != NULL) fail_all(c, CP_ST_LOCAL, NULL, 0);
    if (closing && atomic_load(&c->phase) == CP_CLOSE) {
        lock_with_gil(c);
        /* Idle and sealed in one step under mu: a task submitted now is
         * refused (enqueue), never queued behind the STOP records. */
        int stop_now = !c->stopping && !outstanding_locked(c) && c->failed == NULL &&
                       PyDict_GET_SIZE(c->cache) == 0;
        if (stop_now) c->sealed = c->stopping = 1;
        pthread_mutex_unlock(&c->mu);
        if (stop_now) send_stops(c);
        if (c->stopping) {
            finished = 1;
            for (int i = 0; i < c->n; i++)
                if (atomic_load(&c->ctl->slots[i].state) != CP_S_FREE) finished = 0;
        }
    }
    return finished;
}

/* Free the task recycler's entry k: its kept mapping and its file. */
static void drop_task_entry(CoreObject *c, int k)
{
    cp_segmap_drop(&c->task_maps[k]);
    if (c->task_fds[k] >= 0) close(c->task_fds[k]);
    c->task_fds[k] = -1;
}

/* Unmap the kept mappings of the pool's recycled segments and close the
 * task recycler's files, so that their memory goes when the pool ends.  The
 * token holder reads the result ones; a task one is skipped while a
 * producer holds its entry (a submit racing the pool's end), and dealloc
 * frees it later (all: nothing else runs). */
static void drop_maps(CoreObject *c, int all)
{
    for (int i = 0; c->res_maps && i < c->n * CP_RECY_RESULTS; i++)
        cp_segmap_drop(&c->res_maps[i]);
    for (int k = 0; k < CP_RECY_TASKS; k++) {
        if (all) {
            drop_task_entry(c, k);
            continue;
        }
        _Atomic uint32_t *state = &c->ctl->task_recy[k].state;
        uint32_t st = atomic_load(state);
        if (st == CP_RECY_BUSY ||
            !atomic_compare_exchange_strong(state, &st, CP_RECY_BUSY))
            continue;
        drop_task_entry(c, k);
        atomic_store(state, CP_RECY_NONE); /* a file made anew if used again */
    }
}

/* One round of the collector thread (token held, GIL not): 1 if it did
 * something, 0 if idle, -1 when the pool is over. */
static int collect_round(CoreObject *c)
{
    if (atomic_load(&c->phase) == CP_TERMINATE) {
        seal(c, 0);
        atomic_store(&c->ctl->tmpl_cmd, CP_CMD_TERMINATE);
        tell_template(c);
        wait_template(c);
        PyEval_RestoreThread(c->cts);
        deliver_deferred(c);
        for (int i = 0; i < c->n; i++) {
            cp_ring *r = cp_result_ring(c->ctl, i);
            while (cp_ring_has_data(r)) drain(c, i); /* never lose a result */
        }
        fail_all(c, CP_ST_TERMINATED, NULL, 1);
        c->cts = PyEval_SaveThread();
        drop_maps(c, 0);
        return -1;
    }
    if (!any_news(c)) return 0;
    atomic_store(&c->kicked, 0);
    PyEval_RestoreThread(c->cts);
    int finished = round_gil(c, 1);
    c->cts = PyEval_SaveThread();
    if (finished) {
        atomic_store(&c->ctl->tmpl_cmd, CP_CMD_EXIT);
        tell_template(c);
        wait_template(c);
        drop_maps(c, 0);
        return -1;
    }
    pthread_mutex_lock(&c->mu);
    dispatch_locked(c);
    pthread_mutex_unlock(&c->mu);
    return 1;
}

/* The template reports worker deaths; if it is gone (with its workers),
 * nobody would: the pool is over.  Checked by whoever sleeps long on the
 * results without news. */
static void check_template(CoreObject *c)
{
    int st;
    pid_t p = waitpid(c->tmpl, &st, WNOHANG);
    if (p == c->tmpl || (p < 0 && errno == ECHILD)) {
        CP_DEBUG("the template %d is gone", (int)c->tmpl);
        atomic_store(&c->phase, CP_TERMINATE);
        kick(c);
    }
}

/* ---- the collection token -------------------------------------------------- */

/* A thread that waits for a result collects by itself, while the collector
 * thread naps: a result then reaches its waiter without two thread wake-ups
 * (worker -> collector -> waiter), which is most of a round trip.  While
 * waiters keep coming back (an imap consumer, a loop of get()), results
 * wait in the rings for them, a batch at a time, and the collector thread
 * stays out of their way; it takes over TOKEN_NAP_NS after the last one,
 * or at once when a waiter leaves it work (deferred callbacks, a phase
 * change) or held the token long. */
#define TOKEN_NAP_NS 1000000 /* the collector's nap while a waiter collects */

/* The core whose results this thread is delivering (callbacks run inside):
 * such a thread must not wait for the pool. */
static _Thread_local CoreObject *delivering;

static int take_token(CoreObject *c)
{
    int64_t free_ = 0;
    return atomic_compare_exchange_strong(&c->tok, &free_, cp_now_ns());
}

/* Give the token back.  A waiting collector thread is woken when it has
 * work: news arrived, the pool is changing phase, or it has napped on a
 * long hold without a timeout. */
static void give_token(CoreObject *c, int by_waiter)
{
    if (by_waiter && atomic_load(&c->phase) != CP_RUN)
        atomic_store(&c->kicked, 1); /* the collector acts on it */
    /* The clock is read after the token is given back, and await_token
     * reads it before it looks at the token: a collector that saw a hold
     * of TOKEN_NAP_NS or more (and sleeps untimed) is always woken here. */
    int64_t since = atomic_exchange(&c->tok, 0);
    int64_t now = cp_now_ns();
    int owed = by_waiter && collector_owed(c);
    if (by_waiter) atomic_store(&c->waiter_seen, now);
    if (!by_waiter || owed || now - since >= TOKEN_NAP_NS) cp_event_signal(&c->tok_ev);
    if (owed) cp_event_signal(&c->ctl->results); /* wherever it sleeps */
}

/* Sleep (no GIL) until the token is given back, at most `limit_ns` (<0: no
 * limit) and a nap while the hold is young: a waiter that holds it long
 * wakes us when it gives it back, a short holder does not. */
static void await_token(CoreObject *c, int64_t limit_ns)
{
    uint32_t seen = cp_event_prepare(&c->tok_ev);
    int64_t now = cp_now_ns(); /* before the token: see give_token */
    int64_t since = atomic_load(&c->tok);
    if (since == 0) {
        cp_event_cancel(&c->tok_ev);
        return;
    }
    int64_t age = now - since;
    /* Untimed only in principle: a second at most, as a backstop. */
    int64_t nap = age >= TOKEN_NAP_NS ? WATCHDOG_NS : TOKEN_NAP_NS - age;
    if (limit_ns >= 0 && (nap < 0 || nap > limit_ns)) nap = limit_ns;
    cp_event_sleep(&c->tok_ev, seen, nap);
}

static void *collector_main(void *arg)
{
    CoreObject *c = arg;
    /* One thread state for the collector's whole life, the GIL taken and
     * dropped around it.  PyGILState_Ensure/Release per round would create
     * and delete a thread state each time, under the runtime's head lock,
     * and a fork at that moment (another pool starting) leaves the child
     * waiting on that lock for ever (CPython 3.10 reinitialises it too
     * late in PyOS_AfterFork_Child). */
    PyGILState_STATE g = PyGILState_Ensure();
    c->cts = PyEval_SaveThread();
    delivering = c;
    for (;;) {
        int64_t quiet = cp_now_ns() - atomic_load(&c->waiter_seen);
        if (quiet < TOKEN_NAP_NS && !collector_owed(c)) {
            /* A waiter collected a moment ago: it will be back. */
            uint32_t seen = cp_event_prepare(&c->tok_ev);
            cp_event_sleep(&c->tok_ev, seen, TOKEN_NAP_NS - quiet);
            continue;
        }
        if (!take_token(c)) {
            await_token(c, -1);
            continue;
        }
        int r = collect_round(c);
        if (r < 0) break; /* the token stays taken: nobody collects any more */
        give_token(c, 0);
        if (r > 0 || cp_spin_until(any_news_pred, c)) continue;
        uint32_t seen = cp_event_prepare(&c->ctl->results);
        if (any_news(c) || atomic_load(&c->tok) != 0) {
            cp_event_cancel(&c->ctl->results);
            continue;
        }
        /* While the pool has workers, wake once a second to check that the
         * template lives.  A pool whose slots are all free has nothing to
         * lose. */
        int alive = 0;
        for (int i = 0; i < c->n; i++)
            if (atomic_load(&c->ctl->slots[i].state) != CP_S_FREE) alive = 1;
        int rc = cp_event_sleep(&c->ctl->results, seen, alive ? WATCHDOG_NS : -1);
        if (rc == ETIMEDOUT) check_template(c);
    }
    delivering = NULL;
    /* Done is said with the GIL held, and our reference dropped before it is
     * let go: a join() that returns finds the pool's resources (its eventfd)
     * released with the last reference of its own, not a moment later. */
    PyEval_RestoreThread(c->cts);
    atomic_store(&c->done, 1);
    cp_event_signal(&c->done_ev);
    cp_event_signal(&c->tok_ev); /* waiters for the token: it is over */
    Py_DECREF(c);
    PyGILState_Release(g);
    return NULL;
}

/* ---- the template and the workers --------------------------------------- */

/* The template's way to fork a worker (runs in the template). */
pid_t cp_spawn_worker(void *arg, int slot)
{
    CoreObject *c = arg;
    pid_t tmpl = getpid();
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        cp_worker_main(c, slot, tmpl);
    }
    int saved = errno;
    PyOS_AfterFork_Parent();
    errno = saved;
    return pid;
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

/* Wait (without the GIL) until the template has forked every first worker,
 * so Pool() returns with their pids known, as multiprocessing's does.
 * 0, or -1 with an exception (Ctrl-C, or the template died). */
static int wait_first_workers(CoreObject *c)
{
    for (;;) {
        if (!spawn_pending(c)) return 0;
        uint32_t seen = cp_event_prepare(&c->ctl->results);
        if (!spawn_pending(c)) {
            cp_event_cancel(&c->ctl->results);
            return 0;
        }
        Py_BEGIN_ALLOW_THREADS
        cp_event_sleep(&c->ctl->results, seen, 100000000);
        Py_END_ALLOW_THREADS
        int st;
        if (waitpid(c->tmpl, &st, WNOHANG) == c->tmpl) {
            PyErr_SetString(PyExc_RuntimeError, "cpool: the template process died");
            return -1;
        }
        if (PyErr_CheckSignals() < 0) return -1;
    }
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
    static char *kwlist[] = {"processes",  "maxtasks", "initializer",
                             "initargs",   "cache",    "bootstrap",
                             "pack_error", "spawn",    NULL};
    int n;
    unsigned long long maxtasks;
    PyObject *init, *initargs, *cache, *bootstrap, *pack_error, *spawn = Py_None;
    int ctl_fd = -1; /* the control segment's memfd, kept for an exec'ed template */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iKOO!O!OO|O", kwlist, &n, &maxtasks,
                                     &init, &PyTuple_Type, &initargs, &PyDict_Type,
                                     &cache, &bootstrap, &pack_error, &spawn))
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
    c->task_ns = -1;
    c->module = Py_NewRef(module);
    c->st = cp_get_state(module);
    c->n = n;
    c->maxtasks = maxtasks;
    c->owner = getpid();
    c->initializer = Py_NewRef(init);
    c->initargs = Py_NewRef(initargs);
    c->cache = Py_NewRef(cache);
    c->bootstrap = Py_NewRef(bootstrap);
    c->pack_error = Py_NewRef(pack_error);
    pthread_mutex_init(&c->mu, NULL);
    c->deferred = PyList_New(0);
    if (c->deferred == NULL) goto error;
    c->ws = calloc((size_t)n, sizeof *c->ws);
    c->touched = calloc((size_t)n, 1);
    c->full = calloc((size_t)n, 1);
    c->res_maps = calloc((size_t)n * CP_RECY_RESULTS, sizeof *c->res_maps);
    if (c->ws == NULL || c->touched == NULL || c->full == NULL || c->res_maps == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    c->ctl = cp_ctl_create((uint32_t)n, RING_CAP, spawn != Py_None ? &ctl_fd : NULL);
    if (c->ctl == NULL) {
        cp_oserror("memfd_create");
        goto error;
    }
    c->ctl->parent_pid = c->owner;
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
    for (int i = 0; i < n; i++) {
        int sv[2], rc = socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv);
        if (rc != 0 && errno == EMFILE && cp_raise_nofile() == 0)
            rc = socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv);
        if (rc != 0) {
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
        pid = cp_exec_template(c, ctl_fd, spawn);
        close(ctl_fd); /* the template has its own */
        ctl_fd = -1;
        if (pid < 0) goto error;
    } else {
        PyOS_BeforeFork();
        pid = fork();
        if (pid == 0) {
            PyOS_AfterFork_Child();
            close_socks(c->psock, n); /* the parent's ends */
            cp_template_main(c->ctl, c->evfd, c->owner, cp_spawn_worker, c);
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
        tell_template(c);
        wait_template(c);
        goto error;
    }

    /* The collector blocks every signal: Ctrl-C must reach the thread that
     * waits for a result, never this one. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    Py_INCREF(c); /* the collector's reference */
    int rc = pthread_create(&c->thread, NULL, collector_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        Py_DECREF(c);
        atomic_store(&c->ctl->tmpl_cmd, CP_CMD_TERMINATE);
        tell_template(c);
        wait_template(c);
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

static void free_list(CoreObject *c, cp_task *t)
{
    while (t) {
        cp_task *next = t->next;
        task_drop_segment(c, t);
        task_free(t);
        t = next;
    }
}

static void Core_dealloc(CoreObject *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    Core_clear(c);
    if (c->owner == getpid()) {
        /* The collector held a reference, so it is done: nothing else runs. */
        free_list(c, c->pend_head);
        free_list(c, c->failed);
        for (int i = 0; c->ws && i < c->n; i++) {
            free_list(c, c->ws[i].head);
            close_fsegs(&c->ws[i], UINT64_MAX);
            free(c->ws[i].fsegs);
        }
        drop_maps(c, 1);
        cp_ctl_destroy(c->ctl);
        pthread_mutex_destroy(&c->mu);
    }
    if (c->evfd >= 0) close(c->evfd);
    close_socks(c->psock, c->n);
    close_socks(c->wsock, c->n);
    free(c->psock);
    free(c->wsock);
    free(c->ws);
    free(c->touched);
    free(c->full);
    free(c->res_maps);
    Py_CLEAR(c->module);
    tp->tp_free(c);
    Py_DECREF(tp);
}

static uint64_t job_arg(PyObject *o) { return PyLong_AsUnsignedLongLong(o); }

PyDoc_STRVAR(submit_call_doc,
             "submit_call($self, job, func, args, kwds)\n--\n\n"
             "Pickle (func, args, kwds) and queue it as task 0 of `job`.  A pickling\n"
             "error is raised here, in the caller.");

static PyObject *Core_submit_call(CoreObject *c, PyObject *args)
{
    PyObject *jobo, *func, *fargs, *kwds;
    if (!PyArg_ParseTuple(args, "OOOO", &jobo, &func, &fargs, &kwds)) return NULL;
    if (check_owner(c) < 0) return NULL;
    uint64_t job = job_arg(jobo);
    if (PyErr_Occurred()) return NULL;
    PyObject *t = PyTuple_Pack(3, func, fargs, kwds);
    if (t == NULL) return NULL;
    cp_task *task = task_pack(c, job, 0, CP_K_CALL, NULL, t, 0);
    Py_DECREF(t);
    if (task == NULL) return NULL;
    if (enqueue(c, task, task, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

static void blob_capsule_free(PyObject *cap)
{
    blob_decref(PyCapsule_GetPointer(cap, "cpool.func"));
}

PyDoc_STRVAR(
    func_blob_doc,
    "func_blob($self, func)\n--\n\n"
    "Pickle func once for a map-like job; the result is passed to submit_chunks.");

static PyObject *Core_func_blob(CoreObject *c, PyObject *func)
{
    PyObject *payload = cp_dumps(c->st, func);
    if (payload == NULL) return NULL;
    size_t n = (size_t)PyBytes_GET_SIZE(payload);
    cp_blob *b = malloc(sizeof *b + n);
    if (b == NULL) {
        Py_DECREF(payload);
        return PyErr_NoMemory();
    }
    atomic_init(&b->refs, 1);
    b->len = n;
    memcpy(b->data, PyBytes_AS_STRING(payload), n);
    Py_DECREF(payload);
    PyObject *cap = PyCapsule_New(b, "cpool.func", blob_capsule_free);
    if (cap == NULL) free(b);
    return cap;
}

PyDoc_STRVAR(
    submit_chunks_doc,
    "submit_chunks($self, job, func_blob, items, chunksize, star, first_idx, "
    "progressive)\n--\n\n"
    "Cut the sequence `items` into chunks of `chunksize`, pickle each once, and\n"
    "queue them as tasks first_idx, first_idx+1, ... of `job`.  A chunk that\n"
    "fails to pickle raises here.  progressive: send them 256 KiB of pickles at\n"
    "a time (batches sent before a failure run anyway); else all or nothing.\n"
    "Returns the number of chunks.");

static PyObject *Core_submit_chunks(CoreObject *c, PyObject *args)
{
    PyObject *jobo, *cap, *items;
    Py_ssize_t chunksize;
    int star, progressive;
    unsigned int first;
    if (!PyArg_ParseTuple(args, "OOOnpIp", &jobo, &cap, &items, &chunksize, &star, &first,
                          &progressive))
        return NULL;
    if (check_owner(c) < 0) return NULL;
    uint64_t job = job_arg(jobo);
    if (PyErr_Occurred()) return NULL;
    cp_blob *func = PyCapsule_GetPointer(cap, "cpool.func");
    if (func == NULL) return NULL;
    if (chunksize < 1) {
        PyErr_SetString(PyExc_ValueError, "chunksize must be at least 1");
        return NULL;
    }
    /* A range travels as range slices: a chunk pickles in a few bytes,
     * whatever its size (pool.map(f, range(n)) is the commonest map). */
    int ranged = PyRange_Check(items);
    PyObject *seq =
        ranged ? Py_NewRef(items) : PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = ranged ? PyObject_Size(seq) : PySequence_Fast_GET_SIZE(seq);
    if (n < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    cp_task *head = NULL, *tail = NULL;
    size_t count = 0, queued = 0, batch = 0;
    uint16_t kind = star ? CP_K_STARMAP : CP_K_MAP;
    for (Py_ssize_t lo = 0; lo < n; lo += chunksize) {
        Py_ssize_t hi = lo + chunksize < n ? lo + chunksize : n;
        PyObject *chunk = ranged ? PySequence_GetSlice(seq, lo, hi) : PyList_New(hi - lo);
        if (chunk == NULL) goto error;
        for (Py_ssize_t k = lo; !ranged && k < hi; k++) {
            PyObject *x = PySequence_Fast_GET_ITEM(seq, k);
            Py_INCREF(x);
            PyList_SET_ITEM(chunk, k - lo, x);
        }
        cp_task *t =
            task_pack(c, job, first + (uint32_t)count, kind, func, chunk, progressive);
        Py_DECREF(chunk);
        if (t == NULL) goto error;
        if (tail) tail->next = t;
        else head = t;
        tail = t;
        count++;
        batch += t->has_seg ? t->seg.size : t->len;
        if (progressive && batch >= SEND_BATCH_BYTES) {
            /* Chunks are sent as they are packed, a batch at a time: the
             * workers start on them while the rest is packed (and hand
             * recycled segments back).  Chunks already sent run even if a
             * later one fails to pickle, as with multiprocessing. */
            if (enqueue(c, head, tail, (size_t)(count - queued)) < 0) goto error_sent;
            queued = count;
            head = tail = NULL;
            batch = 0;
        }
    }
    Py_DECREF(seq);
    if (head != NULL && enqueue(c, head, tail, (size_t)(count - queued)) < 0) return NULL;
    return PyLong_FromSize_t(count);
error_sent:
    Py_DECREF(seq);
    return NULL;
error:
    Py_DECREF(seq);
    free_list(c, head);
    return NULL;
}

PyDoc_STRVAR(close_doc, "close($self)\n--\n\nFinish the queued work, then stop.");

static PyObject *Core_close(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    if (check_owner(c) < 0) return NULL;
    int want = CP_RUN;
    atomic_compare_exchange_strong(&c->phase, &want, CP_CLOSE);
    kick(c);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(kick_doc, "kick($self)\n--\n\nWake the collector to re-examine the pool.");

static PyObject *Core_kick(CoreObject *c, PyObject *Py_UNUSED(ignored))
{
    if (c->owner == getpid()) kick(c);
    Py_RETURN_NONE;
}

/* 1 in the collector thread, or in a thread collecting for itself: a
 * callback runs there, and must not wait for the pool. */
static int in_collector(const CoreObject *c) { return delivering == c; }

/* Wait for the collector to finish, releasing the GIL; Ctrl-C gets through.
 * 1 done, 0 timed out, -1 with an exception. */
static int wait_done(CoreObject *c, double timeout)
{
    if (!atomic_load(&c->thread_started)) return 1;
    if (in_collector(c)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot wait for the pool from its own callback");
        return -1;
    }
    int64_t deadline = timeout < 0 ? -1 : cp_now_ns() + (int64_t)(timeout * 1e9);
    while (!atomic_load(&c->done)) {
        int64_t left = 100000000; /* slices, so signals are checked */
        if (deadline >= 0) {
            int64_t rem = deadline - cp_now_ns();
            if (rem <= 0) return 0;
            if (rem < left) left = rem;
        }
        uint32_t seen = cp_event_prepare(&c->done_ev);
        if (atomic_load(&c->done)) {
            cp_event_cancel(&c->done_ev);
            break;
        }
        Py_BEGIN_ALLOW_THREADS
        cp_event_sleep(&c->done_ev, seen, left);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) return -1;
    }
    return 1;
}

PyDoc_STRVAR(collect_doc,
             "collect($self, timeout=None)\n--\n\n"
             "Collect results in this thread, for a caller waiting for one: take the\n"
             "collection token, deliver what has arrived (waiting for news without the\n"
             "GIL, at most `timeout` seconds), give the token back.  Returns 1 after a\n"
             "round that delivered or a timeout (check, and call again), 0 if another\n"
             "thread is collecting (it delivers: wait for the result as usual), -1 if\n"
             "this thread cannot collect (the pool is terminating or over, or this\n"
             "thread is delivering results already).");

#define COLLECT_SLICE_NS 100000000 /* Ctrl-C and the template are checked */

static PyObject *Core_collect(CoreObject *c, PyObject *args)
{
    PyObject *to = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &to)) return NULL;
    if (c->owner != getpid() || atomic_load(&c->phase) == CP_TERMINATE ||
        atomic_load(&c->done) || delivering != NULL)
        return PyLong_FromLong(-1);
    if (collector_owed(c)) return PyLong_FromLong(0); /* see below */
    int64_t left = -1;
    if (to != Py_None) {
        double t = PyFloat_AsDouble(to);
        if (t == -1 && PyErr_Occurred()) return NULL;
        left = t <= 0 ? 0 : (int64_t)(t * 1e9);
    }
    if (!take_token(c)) {
        /* The collector thread is in a round: it may be delivering ours. */
        Py_BEGIN_ALLOW_THREADS
        await_token(c, left >= 0 && left < TOKEN_NAP_NS ? left : TOKEN_NAP_NS);
        Py_END_ALLOW_THREADS
        return PyLong_FromLong(atomic_load(&c->tok) != 0 ? 0 : 1);
    }
    delivering = c;
    int64_t deadline = left < 0 ? -1 : cp_now_ns() + left;
    int64_t slept = 0;
    PyObject *ret = NULL;
    for (;;) {
        if (collector_owed(c)) {
            /* Its work first (deferred deliveries come before any later
             * one; a closing pool's end is its to see): it takes over, and
             * this caller waits on its result. */
            ret = PyLong_FromLong(0);
            break;
        }
        if (ring_news(c)) {
            round_gil(c, 0);
            lock_with_gil(c);
            dispatch_locked(c);
            pthread_mutex_unlock(&c->mu);
            ret = PyLong_FromLong(atomic_load(&c->has_deferred) ? 0 : 1);
            break;
        }
        int64_t slice = COLLECT_SLICE_NS;
        if (deadline >= 0) {
            int64_t rem = deadline - cp_now_ns();
            if (rem <= 0) {
                ret = PyLong_FromLong(1);
                break;
            }
            if (rem < slice) slice = rem;
        }
        int rc = 0;
        Py_BEGIN_ALLOW_THREADS
        if (!cp_spin_until(ring_news_pred, c)) {
            uint32_t seen = cp_event_prepare(&c->ctl->results);
            if (ring_news(c) || collector_owed(c)) cp_event_cancel(&c->ctl->results);
            else rc = cp_event_sleep(&c->ctl->results, seen, slice);
        }
        Py_END_ALLOW_THREADS
        if (rc == ETIMEDOUT && (slept += slice) >= WATCHDOG_NS) {
            slept = 0;
            check_template(c);
        }
        if (PyErr_CheckSignals() < 0) break;
    }
    delivering = NULL;
    give_token(c, 1);
    if (c->interrupt != NULL) {
        Py_CLEAR(ret);
        cp_restore_exc(c->interrupt);
        c->interrupt = NULL;
    }
    return ret;
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
    tell_template(c);
    kick(c);
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
    if (!PyArg_ParseTuple(args, "|O", &to)) return NULL;
    if (check_owner(c) < 0) return NULL;
    double timeout = -1;
    if (to != Py_None) {
        timeout = PyFloat_AsDouble(to);
        if (timeout == -1 && PyErr_Occurred()) return NULL;
        if (timeout < 0) timeout = 0;
    }
    int rc = wait_done(c, timeout);
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

static PyObject *Core_get_template_pid(CoreObject *c, void *Py_UNUSED(closure))
{
    return PyLong_FromLong((long)c->tmpl);
}

static PyMethodDef Core_methods[] = {
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
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(
    Core_doc,
    "Core(processes, maxtasks, initializer, initargs, cache, bootstrap, pack_error,\n"
    "     spawn=None)\n"
    "--\n\n"
    "The machinery of one pool: its template process, its workers, its rings\n"
    "and its collector thread.  cpool.Pool is the public face.  spawn: None to\n"
    "fork the template, or (executable, argv, fds) from cpool._template to exec\n"
    "it as a fresh interpreter.");

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

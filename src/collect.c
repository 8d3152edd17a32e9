/* collect.c: where results are collected.
 *
 * Whoever holds the collection token (the collector thread, pure C, asleep
 * on a futex without the GIL; or a thread waiting for a result) drains the
 * result rings, takes the GIL once per batch to unpickle results and hand
 * them over (deliver.c), handles worker deaths (death.c) and dispatches
 * pending tasks (queue.c).  Also the pool's end: STOP records, the
 * template's exit, the kept mappings let go.
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

#define BATCH 64                /* results delivered per slot per GIL hold */

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
            cp_lock_with_gil(c);
            t = cp_sched_answered(&c->sd, i);
            if (t != NULL) {
                if (hh.kind == CP_K_OK) c->sd.n_done++;
                else c->sd.n_failed++;
                cp_dispatch_locked(c);
            }
            pthread_mutex_unlock(&c->mu);
            if (t == NULL || t->job != hh.job || t->idx != hh.idx)
                CP_DEBUG("result %llu/%u out of order on slot %d",
                         (unsigned long long)hh.job, hh.idx, i);
        }
        PyObject *value = NULL;
        int status;
        size_t nbytes = hh.len; /* the pickle's size, wherever it lies */
        if (hh.flags & CP_F_LARGE) {
            cp_segref ref;
            memcpy(&ref, h + 1, sizeof ref);
            nbytes = (size_t)ref.size;
        }
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
            status = hh.kind != CP_K_OK      ? CP_ST_ERR
                     : hh.flags & CP_F_MIXED ? CP_ST_MIXED
                                             : CP_ST_OK;
            if (value == NULL) {
                /* (why, whether it was an error report): Python names it. */
                PyObject *why = cp_fetch_exc();
                value =
                    Py_BuildValue("(NO)", why, status == CP_ST_ERR ? Py_True : Py_False);
                status = CP_ST_UNPICKLE;
            } else if (status == CP_ST_MIXED && PyTuple_Check(value) &&
                       PyTuple_GET_SIZE(value) == 2 &&
                       PyDict_Check(PyTuple_GET_ITEM(value, 1))) {
                /* Counted here, once per outcome: a chunk killed and sent
                 * again runs (and may stop) its earlier items again. */
                atomic_fetch_add(&c->ctl->timed_out,
                                 (uint64_t)PyDict_GET_SIZE(PyTuple_GET_ITEM(value, 1)));
            }
        }
        cp_ring_consume(r, h);
        if (hh.kind == CP_K_INITERR) {
            if (value != NULL && (status == CP_ST_ERR || status == CP_ST_UNPICKLE) &&
                PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 2)
                cp_set_broken(c, PyTuple_GET_ITEM(value, 0),
                              status == CP_ST_ERR ? PyTuple_GET_ITEM(value, 1) : NULL, 1);
            else cp_set_broken(c, value ? value : Py_None, NULL, 1);
            Py_XDECREF(value);
            continue;
        }
        if (t != NULL) {
            t->held = 1; /* the worker handed a recycled segment back itself */
            cp_task_drop_segment(c->ctl, t);
            cp_task_free(t);
        }
        cp_deliver(c, hh.job, hh.idx, status, value, nbytes);
        Py_XDECREF(value);
    }
}

/* ---- the collector ------------------------------------------------------- */

/* Results to deliver or a death to handle: what a waiter collects. */
/* Wake the collector thread, wherever it sleeps, for work only it does. */
void cp_kick(CoreObject *c)
{
    atomic_store(&c->kicked, 1);
    cp_event_signal(&c->ctl->results);
    cp_event_signal(&c->tok_ev); /* a collector napping while a waiter collects */
}

int cp_ring_news(CoreObject *c)
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
int cp_collector_owed(CoreObject *c)
{
    return atomic_load(&c->kicked) || atomic_load(&c->has_deferred) ||
           atomic_load(&c->phase) != CP_RUN;
}

static int any_news(CoreObject *c)
{
    return atomic_load(&c->kicked) || atomic_load(&c->has_deferred) ||
           atomic_load(&c->phase) == CP_TERMINATE || cp_ring_news(c);
}

static int any_news_pred(void *c) { return any_news((CoreObject *)c); }

/* Wait for the template to exit (it reaps the workers first), at most
 * TEMPLATE_GRACE_MS: one stuck (say, in a fork hook of the user's that
 * waits on a lock) is killed, and its workers go with it (their death
 * signal).  terminate() must return. */
#define TEMPLATE_GRACE_MS 3000
void cp_wait_template(CoreObject *c)
{
    int st;
    int pfd = (int)syscall(SYS_pidfd_open, c->tmpl, 0);
    if (pfd >= 0) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        int64_t deadline = cp_deadline((int64_t)TEMPLATE_GRACE_MS * 1000000);
        int rc;
        do {
            rc = poll(&p, 1, (int)(cp_slice(deadline, INT64_MAX) / 1000000));
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
int cp_round_gil(CoreObject *c, int closing)
{
    int finished = 0;
    if (closing) cp_deliver_deferred(c);
    for (int i = 0; i < c->n && c->interrupt == NULL; i++) {
        int dead = atomic_load(&c->ctl->slots[i].state) == CP_S_DEAD;
        drain(c, i);
        if (dead) {
            cp_ring *r = cp_result_ring(c->ctl, i);
            while (cp_ring_has_data(r) && c->interrupt == NULL) drain(c, i);
            /* A Ctrl-C in a waiter stops the round (drain then takes no
             * more): the next round drains the rest and handles the death. */
            if (c->interrupt == NULL) cp_handle_death(c, i);
        }
    }
    if (c->broken != NULL) cp_fail_all(c, CP_ST_INITFAIL, c->broken, 0);
    else if (c->sd.failed != NULL) cp_fail_all(c, CP_ST_LOCAL, NULL, 0);
    if (closing && atomic_load(&c->phase) == CP_CLOSE) {
        cp_lock_with_gil(c);
        /* Idle and sealed in one step under mu: a task submitted now is
         * refused (enqueue), never queued behind the STOP records. */
        int stop_now = !c->stopping && !cp_sched_outstanding(&c->sd) &&
                       c->sd.failed == NULL && PyDict_GET_SIZE(c->cache) == 0;
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
void cp_drop_maps(CoreObject *c, int all)
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
        cp_seal(c, 0);
        atomic_store(&c->ctl->tmpl_cmd, CP_CMD_TERMINATE);
        cp_tell_template(c);
        cp_wait_template(c);
        PyEval_RestoreThread(c->cts);
        cp_deliver_deferred(c);
        for (int i = 0; i < c->n; i++) {
            cp_ring *r = cp_result_ring(c->ctl, i);
            while (cp_ring_has_data(r)) drain(c, i); /* never lose a result */
        }
        cp_fail_all(c, CP_ST_TERMINATED, NULL, 1);
        c->cts = PyEval_SaveThread();
        cp_drop_maps(c, 0);
        return -1;
    }
    if (!any_news(c)) return 0;
    atomic_store(&c->kicked, 0);
    PyEval_RestoreThread(c->cts);
    int finished = cp_round_gil(c, 1);
    c->cts = PyEval_SaveThread();
    if (finished) {
        atomic_store(&c->ctl->tmpl_cmd, CP_CMD_EXIT);
        cp_tell_template(c);
        cp_wait_template(c);
        cp_drop_maps(c, 0);
        return -1;
    }
    pthread_mutex_lock(&c->mu);
    cp_dispatch_locked(c);
    pthread_mutex_unlock(&c->mu);
    return 1;
}

/* The template reports worker deaths; if it is gone (with its workers),
 * nobody would: the pool is over.  Checked by whoever sleeps long on the
 * results without news. */
void cp_check_template(CoreObject *c)
{
    int st;
    pid_t p = waitpid(c->tmpl, &st, WNOHANG);
    if (p == c->tmpl || (p < 0 && errno == ECHILD)) {
        CP_DEBUG("the template %d is gone", (int)c->tmpl);
        atomic_store(&c->phase, CP_TERMINATE);
        cp_kick(c);
    }
}

/* ---- the collection token -------------------------------------------------- */

/* A thread that waits for a result collects by itself, while the collector
 * thread naps: a result then reaches its waiter without two thread wake-ups
 * (worker -> collector -> waiter), which is most of a round trip.  While
 * waiters keep coming back (an imap consumer, a loop of get()), results
 * wait in the rings for them, a batch at a time, and the collector thread
 * stays out of their way; it takes over CP_TOKEN_NAP_NS after the last one,
 * or at once when a waiter leaves it work (deferred callbacks, a phase
 * change) or held the token long (CP_TOKEN_NAP_NS). */

_Thread_local CoreObject *cp_delivering;

/* 1 taken (it holds when it was taken), 0 held elsewhere: never waits. */
int cp_take_token(CoreObject *c)
{
    int64_t free_ = 0;
    return atomic_compare_exchange_strong(&c->tok, &free_, cp_now_ns());
}

/* Give the token back.  A waiting collector thread is woken when it has
 * work: news arrived, the pool is changing phase, or it has napped on a
 * long hold without a timeout. */
void cp_give_token(CoreObject *c, int by_waiter)
{
    if (by_waiter && atomic_load(&c->phase) != CP_RUN)
        atomic_store(&c->kicked, 1); /* the collector acts on it */
    /* The clock is read after the token is given back, and await_token
     * reads it before it looks at the token: a collector that saw a hold
     * of CP_TOKEN_NAP_NS or more (and sleeps untimed) is always woken here. */
    int64_t since = atomic_exchange(&c->tok, 0);
    int64_t now = cp_now_ns();
    int owed = by_waiter && cp_collector_owed(c);
    if (by_waiter) atomic_store(&c->waiter_seen, now);
    if (!by_waiter || owed || now - since >= CP_TOKEN_NAP_NS) cp_event_signal(&c->tok_ev);
    if (owed) cp_event_signal(&c->ctl->results); /* wherever it sleeps */
}

/* Sleep (no GIL) until the token is given back, at most `limit_ns` (<0: no
 * limit) and a nap while the hold is young: a waiter that holds it long
 * wakes us when it gives it back, a short holder does not. */
void cp_await_token(CoreObject *c, int64_t limit_ns)
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
    int64_t nap = age >= CP_TOKEN_NAP_NS ? CP_WATCHDOG_NS : CP_TOKEN_NAP_NS - age;
    if (limit_ns >= 0 && (nap < 0 || nap > limit_ns)) nap = limit_ns;
    cp_event_sleep(&c->tok_ev, seen, nap);
}

/* ---- work stealing's timer ---------------------------------------------------- */

/* Whoever sleeps for results (the collector thread, or a waiter holding
 * the token) wakes when a task left in a worker's ring should go to a free
 * worker (cp_sched_wake_at), and dispatches.  Both are called without the
 * GIL: nobody holding `mu` waits for it. */
#define STEAL_NAP_MIN_NS 100000 /* never a busy loop */

/* How long to sleep at most before that (<0: no limit). */
static int64_t steal_nap(CoreObject *c)
{
    if (atomic_load(&c->phase) == CP_TERMINATE || atomic_load(&c->is_broken)) return -1;
    pthread_mutex_lock(&c->mu);
    int64_t at = cp_sched_wake_at(&c->sd);
    pthread_mutex_unlock(&c->mu);
    if (at < 0) return -1;
    int64_t nap = at - cp_now_ns();
    return nap < STEAL_NAP_MIN_NS ? STEAL_NAP_MIN_NS : nap;
}

static void redispatch(CoreObject *c)
{
    pthread_mutex_lock(&c->mu);
    cp_dispatch_locked(c);
    pthread_mutex_unlock(&c->mu);
}

/* `nap` (<0: none) shortened to what the sleeper's timers allow: a task to
 * steal (*steal: dispatch again after the sleep) and the limits to check
 * (cp_check_limits, at the top of the sleeper's loop). */
static int64_t timers_nap(CoreObject *c, int64_t nap, int *steal)
{
    int64_t s = steal_nap(c), l = cp_limits_nap(c);
    *steal = s >= 0;
    if (s >= 0 && (nap < 0 || s < nap)) nap = s;
    if (l >= 0 && (nap < 0 || l < nap)) nap = l;
    return nap;
}

void *cp_collector_main(void *arg)
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
    cp_delivering = c;
    for (;;) {
        cp_check_limits(c);
        int64_t quiet = cp_now_ns() - atomic_load(&c->waiter_seen);
        if (quiet < CP_TOKEN_NAP_NS && !cp_collector_owed(c)) {
            /* A waiter collected a moment ago: it will be back. */
            uint32_t seen = cp_event_prepare(&c->tok_ev);
            cp_event_sleep(&c->tok_ev, seen, CP_TOKEN_NAP_NS - quiet);
            continue;
        }
        if (!cp_take_token(c)) {
            cp_await_token(c, -1);
            continue;
        }
        int r = collect_round(c);
        if (r < 0) break; /* the token stays taken: nobody collects any more */
        cp_give_token(c, 0);
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
        int steal;
        int64_t nap = timers_nap(c, alive ? CP_WATCHDOG_NS : -1, &steal);
        int rc = cp_event_sleep(&c->ctl->results, seen, nap);
        if (steal) redispatch(c);
        if (rc == ETIMEDOUT) cp_check_template(c);
    }
    cp_delivering = NULL;
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

/* ---- a waiter collecting for itself ---------------------------------------- */

static int ring_news_pred(void *c) { return cp_ring_news((CoreObject *)c); }

#define COLLECT_SLICE_NS 100000000 /* Ctrl-C and the template are checked */

PyObject *cp_collect_waiting(CoreObject *c, int64_t left, const uint64_t *mark)
{
    if (c->owner != getpid() || atomic_load(&c->phase) == CP_TERMINATE ||
        atomic_load(&c->done) || cp_delivering != NULL)
        return PyLong_FromLong(-1);
    if (cp_collector_owed(c)) return PyLong_FromLong(0); /* see below */
    if (!cp_take_token(c)) {
        /* The collector thread is in a round: it may be delivering ours. */
        Py_BEGIN_ALLOW_THREADS
        cp_await_token(c, left >= 0 && left < CP_TOKEN_NAP_NS ? left : CP_TOKEN_NAP_NS);
        Py_END_ALLOW_THREADS
        return PyLong_FromLong(atomic_load(&c->tok) != 0 ? 0 : 1);
    }
    cp_delivering = c;
    int64_t deadline = cp_deadline(left);
    int64_t slept = 0;
    PyObject *ret = NULL;
    for (;;) {
        cp_check_limits(c);
        /* Something was delivered since the caller looked (by the collector
         * thread, between that look and this call): perhaps what it waits
         * for, which no news would then ever bring.  It looks again. */
        if (mark != NULL && atomic_load(&c->delivered) != *mark) {
            ret = PyLong_FromLong(1);
            break;
        }
        if (cp_collector_owed(c)) {
            /* Its work first (deferred deliveries come before any later
             * one; a closing pool's end is its to see): it takes over, and
             * this caller waits on its result. */
            ret = PyLong_FromLong(0);
            break;
        }
        if (cp_ring_news(c)) {
            cp_round_gil(c, 0);
            cp_lock_with_gil(c);
            cp_dispatch_locked(c);
            pthread_mutex_unlock(&c->mu);
            ret = PyLong_FromLong(atomic_load(&c->has_deferred) ? 0 : 1);
            break;
        }
        int64_t slice = cp_slice(deadline, COLLECT_SLICE_NS);
        if (slice == 0) {
            ret = PyLong_FromLong(1);
            break;
        }
        int rc = 0;
        Py_BEGIN_ALLOW_THREADS
        if (!cp_spin_until(ring_news_pred, c)) {
            int steal;
            slice = timers_nap(c, slice, &steal);
            uint32_t seen = cp_event_prepare(&c->ctl->results);
            if (cp_ring_news(c) || cp_collector_owed(c))
                cp_event_cancel(&c->ctl->results);
            else rc = cp_event_sleep(&c->ctl->results, seen, slice);
            if (steal) redispatch(c);
        }
        Py_END_ALLOW_THREADS
        if (rc == ETIMEDOUT && (slept += slice) >= CP_WATCHDOG_NS) {
            slept = 0;
            cp_check_template(c);
        }
        if (PyErr_CheckSignals() < 0) break;
    }
    cp_delivering = NULL;
    cp_give_token(c, 1);
    if (c->interrupt != NULL) {
        Py_CLEAR(ret);
        cp_restore_exc(c->interrupt);
        c->interrupt = NULL;
    }
    return ret;
}

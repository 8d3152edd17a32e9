/* queue.c: where a task is queued and dispatched (the parent's side).
 *
 * Tasks (cp_task: a packed payload, its segment, where it went), the
 * pending queue, and dispatch: which worker's ring each pending task goes
 * to, with how many in flight, and its segment's descriptor handed over on
 * the slot's socket first.  Dispatch runs under `mu` without the GIL.
 *
 * Locking: `mu` guards the pending queue and the per-worker in-flight lists.
 * Nobody holding `mu` ever waits for the GIL, so a thread holding the GIL may
 * wait for `mu` (released GIL first when the lock is contended:
 * cp_lock_with_gil).
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

/* Tasks in flight per worker.  A second queued task only pays off when tasks
 * are short enough that the collector's round trip would leave the worker
 * idle; for long ones it would wait behind a busy worker while another sits
 * idle (the imbalance a shared queue avoids).  So: one, until measured tasks
 * prove short. */
#define DEPTH_SHORT 4
#define SHORT_TASK_NS 1000000   /* 1 ms */

/* ---- tasks --------------------------------------------------------------- */

void cp_blob_decref(cp_blob *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) free(b);
}

void cp_task_free(cp_task *t)
{
    cp_blob_decref(t->func);
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
void cp_task_drop_segment(CoreObject *c, cp_task *t)
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
cp_task *cp_task_pack(CoreObject *c, uint64_t job, uint32_t idx, uint16_t kind,
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
void cp_lock_with_gil(CoreObject *c)
{
    while (pthread_mutex_trylock(&c->mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->mu); /* wait until it is free */
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
    }
}

void cp_kick(CoreObject *c)
{
    atomic_store(&c->kicked, 1);
    cp_event_signal(&c->ctl->results);
    cp_event_signal(&c->tok_ev); /* a collector napping while a waiter collects */
}

void cp_tell_template(CoreObject *c)
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
void cp_close_fsegs(cp_wstate *w, uint64_t upto)
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

void cp_dispatch_locked(CoreObject *c)
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

/* Queue tasks first..last and dispatch what fits; called with the GIL.
 * 0, or -1 with ValueError when the pool no longer takes tasks (the caller
 * lost a race with close() or terminate()); the tasks are freed then. */
int cp_enqueue(CoreObject *c, cp_task *first, cp_task *last, size_t n)
{
    /* Keep the GIL unless the lock is contended: dispatch is short (inline
     * records only; large ones were written to segments already), and
     * releasing the GIL on every submit let the collector take it for a
     * whole batch each time: a GIL hand-off per apply_async. */
    cp_lock_with_gil(c);
    int sealed = c->sealed;
    if (!sealed) {
        if (c->pend_tail) c->pend_tail->next = first;
        else c->pend_head = first;
        c->pend_tail = last;
        c->npend += n;
        cp_dispatch_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (sealed) {
        cp_free_list(c, first);
        PyErr_SetString(PyExc_ValueError, "Pool not running");
        return -1;
    }
    if (atomic_load(&c->is_broken) || atomic_load(&c->phase) == CP_TERMINATE)
        cp_kick(c); /* the collector fails them */
    return 0;
}

/* No task gets in from now on: enqueue refuses under mu. */
void cp_seal(CoreObject *c, int gil)
{
    if (gil) cp_lock_with_gil(c);
    else pthread_mutex_lock(&c->mu);
    c->sealed = 1;
    pthread_mutex_unlock(&c->mu);
}

/* submit.c: where a task is pickled and queued (the parent's side).
 *
 * apply_async's call and map's chunks are pickled here, with the GIL, into
 * tasks (cp_task: the payload inline, or in a segment written already), and
 * queued on the pool's cp_sched (dispatch.c), which puts them on the
 * workers' rings under `mu`.
 *
 * Locking: `mu` guards the cp_sched.  Nobody holding `mu` ever waits for the
 * GIL, so a thread holding the GIL may wait for `mu` (released GIL first
 * when the lock is contended: cp_lock_with_gil).
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <stdlib.h>
#include <string.h>

#define SEND_BATCH_BYTES (256u * 1024u) /* map chunks are sent this much at a time */

/* ---- tasks --------------------------------------------------------------- */

/* A task carrying a packed payload: a copy of its inline bytes, or its
 * segment (written already, so resending the task reuses it).  Consumes
 * pk's reference.  NULL with MemoryError set. */
static cp_task *task_new(CoreObject *c, uint64_t job, uint32_t idx, uint16_t kind,
                         cp_blob *func, cp_packed *pk)
{
    size_t n = pk->has_seg ? 0 : (size_t)PyBytes_GET_SIZE(pk->bytes);
    cp_task *t = malloc(sizeof *t + n);
    if (t == NULL) {
        if (pk->has_seg) cp_drop_packed_segment(c->ctl, &pk->seg);
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

/* Pickle obj (`encoded`: obj is already the payload's bytes) into a new
 * task with options `o` (it may run o->retries more times if its worker
 * dies; with o->timeout_ns, each item may run that long); NULL with the
 * exception.  `wait`: a large one may wait a little
 * for a recycled segment (a map's chunks: see shm.c).  A task that may run
 * again (retries, or a chunk sent again without an item that ran out of
 * time) keeps its payload: a large one goes into a one-shot segment, whose
 * descriptor the parent keeps (a recycled one is the next task's once the
 * worker has loaded it). */
static cp_task *task_pack(CoreObject *c, uint64_t job, uint32_t idx, uint16_t kind,
                          cp_blob *func, PyObject *obj, int encoded, int wait,
                          const cp_taskopts *o)
{
    if (c->sealed) { /* racy read, an early refusal only: enqueue decides */
        PyErr_SetString(PyExc_ValueError, "Pool not running");
        return NULL;
    }
    cp_packed pk;
    cp_segdest dest = {0}; /* one-shot */
    if (o->retries == 0 && o->timeout_ns == 0)
        dest = (cp_segdest){.recy = c->ctl->task_recy,
                            .nrecy = CP_RECY_TASKS,
                            .wait = wait,
                            .maps = c->task_maps,
                            .fds = c->task_fds,
                            .big = &c->ctl->recy_big_mib,
                            .budget = c->ctl->recy_budget_mib};
    size_t inline_max = cp_ring_inline_max(cp_task_ring(c->ctl, 0));
    if ((encoded ? cp_pack_pickled(obj, inline_max, &dest, &pk)
                 : cp_pack(c->st, obj, inline_max, &dest, &pk)) < 0)
        return NULL;
    cp_task *t = task_new(c, job, idx, kind, func, &pk);
    if (t == NULL) return NULL;
    t->retries = o->retries;
    if (o->timeout_ns) {
        t->timing = malloc(sizeof *t->timing);
        if (t->timing == NULL) {
            cp_free_list(c->ctl, t);
            return (cp_task *)PyErr_NoMemory();
        }
        *t->timing =
            (cp_timing){.timeout_ns = o->timeout_ns, .first_item = o->first_item};
    }
    return t;
}

/* ---- queueing ----------------------------------------------------------- */

void cp_dispatch_locked(CoreObject *c)
{
    if (atomic_load(&c->phase) == CP_TERMINATE || atomic_load(&c->is_broken)) return;
    if (cp_sched_dispatch(&c->sd))
        atomic_store(&c->kicked, 1); /* the collector fails them */
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
    /* Before the tasks can run: their first item's wake-up finds it set. */
    if (first->timing != NULL) atomic_store(&c->timed, 1);
    cp_lock_with_gil(c);
    int sealed = c->sealed;
    if (!sealed) {
        cp_sched_push(&c->sd, first, last, n);
        cp_dispatch_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (sealed) {
        cp_free_list(c->ctl, first);
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

/* ---- the submit calls ----------------------------------------------------- */

int cp_submit_call(CoreObject *c, uint64_t job, PyObject *func, PyObject *args,
                   PyObject *kwds, const cp_taskopts *o)
{
    PyObject *t = PyTuple_Pack(3, func, args, kwds);
    if (t == NULL) return -1;
    cp_task *task = task_pack(c, job, 0, CP_K_CALL, NULL, t, 0, 0, o);
    Py_DECREF(t);
    if (task == NULL) return -1;
    return cp_enqueue(c, task, task, 1);
}

static void blob_capsule_free(PyObject *cap)
{
    cp_blob_decref(PyCapsule_GetPointer(cap, "cpool.func"));
}

PyObject *cp_func_blob(CoreObject *c, PyObject *func)
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

Py_ssize_t cp_submit_chunks(CoreObject *c, uint64_t job, PyObject *blob, PyObject *items,
                            Py_ssize_t chunksize, Py_ssize_t nchunks, int star,
                            uint32_t first, int progressive, cp_taskopts o)
{
    cp_blob *func = PyCapsule_GetPointer(blob, "cpool.func");
    if (func == NULL) return -1;
    if (chunksize < 1) {
        PyErr_SetString(PyExc_ValueError, "chunksize must be at least 1");
        return -1;
    }
    /* A range travels as range slices: a chunk pickles in a few bytes,
     * whatever its size (pool.map(f, range(n)) is the commonest map). */
    int ranged = PyRange_Check(items);
    PyObject *seq =
        ranged ? Py_NewRef(items) : PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL) return -1;
    Py_ssize_t n = ranged ? PyObject_Size(seq) : PySequence_Fast_GET_SIZE(seq);
    int bad_cut = n >= 0 && (nchunks < 0 || (nchunks > 0 && (first != 0 || nchunks > n)));
    if (bad_cut)
        PyErr_SetString(
            PyExc_ValueError,
            "nchunks cuts a whole map (first_idx 0) into 1 to len(items) chunks");
    if (n < 0 || bad_cut) {
        Py_DECREF(seq);
        return -1;
    }
    /* nchunks: that many chunks, the first n % nchunks of them one item
     * longer than the rest (MapResult places them so); else chunksize
     * items each, the last one shorter. */
    Py_ssize_t size = chunksize, longer = 0;
    if (nchunks > 0) {
        size = n / nchunks;
        longer = n % nchunks;
    }
    cp_task *head = NULL, *tail = NULL;
    size_t count = 0, queued = 0, batch = 0;
    uint16_t kind = star ? CP_K_STARMAP : CP_K_MAP;
    for (Py_ssize_t lo = 0, hi; lo < n; lo = hi) {
        Py_ssize_t len = size + ((Py_ssize_t)count < longer);
        hi = len < n - lo ? lo + len : n;
        /* Pickling the last chunk ran Python code, and writing it let
         * other threads run: the input list may have shrunk since. */
        if (!ranged && PySequence_Fast_GET_SIZE(seq) < hi) {
            PyErr_SetString(PyExc_RuntimeError,
                            "the input list changed size during the map");
            goto error;
        }
        /* A starmap's rows of numbers travel flat, written straight from
         * the input; else the chunk is a list (or a range) to pack. */
        PyObject *chunk = NULL;
        int encoded = 0;
        if (star && !ranged) {
            chunk = cp_rows_dump(PySequence_Fast_ITEMS(seq) + lo, hi - lo);
            if (chunk == NULL) goto error;
            encoded = chunk != Py_None;
            if (!encoded) Py_CLEAR(chunk);
        }
        if (ranged) chunk = PySequence_GetSlice(seq, lo, hi);
        else if (!encoded && (chunk = PyList_New(hi - lo)) != NULL)
            for (Py_ssize_t k = lo; k < hi; k++)
                PyList_SET_ITEM(chunk, k - lo,
                                Py_NewRef(PySequence_Fast_GET_ITEM(seq, k)));
        if (chunk == NULL) goto error;
        o.first_item = (uint64_t)first * (uint64_t)chunksize + (uint64_t)lo;
        cp_task *t = task_pack(c, job, first + (uint32_t)count, kind, func, chunk,
                               encoded, progressive, &o);
        Py_DECREF(chunk);
        if (t == NULL) goto error;
        t->items = (uint32_t)(hi - lo < UINT32_MAX ? hi - lo : UINT32_MAX);
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
            if (cp_enqueue(c, head, tail, (size_t)(count - queued)) < 0) goto error_sent;
            queued = count;
            head = tail = NULL;
            batch = 0;
        }
    }
    Py_DECREF(seq);
    if (head != NULL && cp_enqueue(c, head, tail, (size_t)(count - queued)) < 0)
        return -1;
    return (Py_ssize_t)count;
error_sent:
    Py_DECREF(seq);
    return -1;
error:
    Py_DECREF(seq);
    cp_free_list(c->ctl, head);
    return -1;
}

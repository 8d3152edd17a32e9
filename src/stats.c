/* stats.c: a snapshot of a pool's counters, for pool.stats().
 *
 * The counters cost nothing worth measuring where they are kept: a worker
 * adds to its slot in the control segment the time it was busy as it
 * finishes each task, the template counts the workers it forks for a slot,
 * and the parent's queue (cp_sched, under its mutex) counts what it sent to
 * each worker, what each answered, what it sent again and what failed.
 * What a task is (queued, running, answered) is the queue's word, so that
 * the counts of one snapshot agree.  Nothing polls: a snapshot reads them, and
 * each live worker's resident memory from /proc.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

static const char *state_name(uint32_t st)
{
    switch (st) {
        case CP_S_SPAWN_REQ:
        case CP_S_SPAWNED: return "starting";
        case CP_S_READY: return "ready";
        case CP_S_DEAD: return "dead";
        default: return "none";
    }
}

static double seconds(int64_t ns) { return ns > 0 ? (double)ns / 1e9 : 0.0; }

/* What the snapshot knows of one slot: from the worker, the time it was
 * busy, when it took its current task and which one it is (0: not named
 * yet, or no more); from the parent's queue, the tasks sent to it and not
 * answered, the first of them (the one it runs, if any: it takes them in
 * order), and the tasks it answered. */
typedef struct {
    int64_t busy, started;
    uint64_t job, head_job;
    uint32_t idx, head_idx;
    int inflight;
    uint64_t answered;
} slot_view;

/* A worker notes its task finished just after posting the result, and the
 * parent may have taken it, and sent the next, by then: the slot runs a
 * task only while the queue has one there, and the worker's clock is that
 * task's, not the last one's. */
static int runs(const slot_view *v)
{
    return v->started > 0 && v->inflight > 0 &&
           (v->job == 0 || (v->job == v->head_job && v->idx == v->head_idx));
}

/* One worker slot as a dict (see cpool.WorkerStats); *running counts it if
 * it runs a task. */
static PyObject *slot_stats(CoreObject *c, int i, int64_t now, const slot_view *v,
                            int *running)
{
    cp_slot *s = &c->ctl->slots[i];
    uint32_t st = atomic_load(&s->state);
    pid_t pid = atomic_load(&s->pid);
    uint32_t spawns = atomic_load(&s->spawns);
    int ready = st == CP_S_READY;
    int64_t started = ready && runs(v) ? v->started : 0;
    int64_t born = ready ? atomic_load(&s->ready_ns) : 0;
    int64_t busy = ready ? v->busy : 0;
    /* A task answered whose worker has yet to add its time: busy, not idle
     * (busy was read before the clock, so it is not in it yet). */
    if (ready && started == 0 && v->started > 0 && now > v->started)
        busy += now - v->started;
    int64_t current = started > 0 && now > started ? now - started : 0;
    int64_t idle = born > 0 ? now - born - busy - current : 0;
    int64_t rss = pid > 0 && st != CP_S_DEAD ? cp_proc_rss(pid) : -1;
    *running += started > 0;
    PyObject *cur =
        started > 0 ? PyFloat_FromDouble(seconds(current)) : Py_NewRef(Py_None);
    PyObject *mem = rss >= 0 ? PyLong_FromLongLong(rss) : Py_NewRef(Py_None);
    PyObject *pido = pid > 0 ? PyLong_FromLong(pid) : Py_NewRef(Py_None);
    if (cur == NULL || mem == NULL || pido == NULL) {
        Py_XDECREF(cur);
        Py_XDECREF(mem);
        Py_XDECREF(pido);
        return NULL;
    }
    return Py_BuildValue("{s:i,s:N,s:s,s:K,s:d,s:d,s:N,s:N,s:I}", "slot", i, "pid", pido,
                         "state", state_name(st), "tasks_done",
                         (unsigned long long)(ready ? v->answered : 0), "busy",
                         seconds(busy), "idle", seconds(idle > 0 ? idle : 0), "current",
                         cur, "rss", mem, "respawns", spawns > 0 ? spawns - 1 : 0);
}

PyObject *cp_core_stats(CoreObject *c)
{
    int64_t now = cp_now_ns();
    slot_view *v = PyMem_Calloc((size_t)c->n, sizeof *v);
    if (v == NULL) return PyErr_NoMemory();
    /* The workers' side before the queue: a task whose result the parent
     * takes in between is answered by then, not running (runs()). */
    for (int i = 0; i < c->n; i++) {
        cp_slot *sl = &c->ctl->slots[i];
        v[i].busy = (int64_t)atomic_load(&sl->busy_ns); /* before the clock: above */
        v[i].started = atomic_load(&sl->started_ns);
        v[i].job = atomic_load(&sl->current_job); /* first: see worker.c's next_task */
        v[i].idx = atomic_load(&sl->current_idx);
    }
    cp_lock_with_gil(c);
    cp_sched *s = &c->sd;
    unsigned long long sent = 0;
    for (int i = 0; i < c->n; i++) {
        const cp_task *head = s->ws[i].head;
        if (head != NULL) {
            v[i].head_job = head->job;
            v[i].head_idx = head->idx;
        }
        v[i].inflight = s->ws[i].n;
        v[i].answered = s->ws[i].sent - (uint64_t)s->ws[i].n;
        sent += (unsigned)s->ws[i].n;
    }
    unsigned long long npend = s->npend, done = s->n_done, failed = s->n_failed,
                       lost = s->lost, retried = s->retried, steals = s->steals;
    pthread_mutex_unlock(&c->mu);
    PyObject *workers = PyList_New(c->n);
    int running = 0;
    for (int i = 0; workers != NULL && i < c->n; i++) {
        PyObject *w = slot_stats(c, i, now, &v[i], &running);
        if (w == NULL) Py_CLEAR(workers);
        else PyList_SET_ITEM(workers, i, w);
    }
    PyMem_Free(v);
    if (workers == NULL) return NULL;
    /* queued: not yet started, in the parent's queue or in a worker's ring */
    unsigned long long queued = npend + sent - (unsigned)running;
    unsigned long long timed_out = atomic_load(&c->ctl->timed_out);
    return Py_BuildValue("{s:K,s:i,s:K,s:K,s:K,s:K,s:K,s:K,s:N}", "queued", queued,
                         "running", running, "done", done, "failed", failed, "lost", lost,
                         "retried", retried, "timed_out", timed_out, "steals", steals,
                         "workers", workers);
}

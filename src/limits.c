/* limits.c: the parent's watch over running tasks, for the limits a pool
 * or a call was given: task_timeout= and max_memory_per_child=.
 *
 * Time: a worker running an item of a timed task writes the item's deadline
 * into its slot (worker.c).  Past it, the parent asks the worker to stop
 * the item: it sets the slot's stop_for to that deadline and sends
 * CP_STOP_SIGNAL, whose handler in the worker raises TaskTimeoutError
 * inside the task (finally: blocks run).  A worker still on that item
 * CP_STOP_GRACE_NS later is killed, noting why: death.c fails the apply
 * with TaskTimeoutError, or sends its chunk again without that item.
 *
 * Memory: a worker checks its own memory after each task and leaves when it
 * is over the cap (worker.c): its task ends normally, and it is replaced
 * before its next one.  During a task the parent looks at the busy workers
 * every LIMITS_POLL_NS and kills one whose resident memory passed twice the
 * cap, noting why; the task it held then fails with a WorkerLostError that
 * says so (death.c), or runs again (retries=).  The kill claims the task
 * it measured first (started_ns, CP_STARTED_KILLED), so that it never
 * fails the next one.
 *
 * Whoever sleeps for results (the collector thread, or a waiter holding the
 * token) looks, one at a time, and sleeps no longer than the next deadline.
 * No GIL: /proc reads, kill() and atomics only.  A pool without limits pays
 * two loads per look.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>

#define LIMITS_POLL_NS 100000000 /* 0.1 s */

/* For the tests, windows held open (see cpool.h's CP_PAUSE_*): how long
 * to wait at each, and how many such waits there were in this process.  A
 * fork pool's workers inherit the values set before the pool was made. */
static _Atomic int64_t test_pause_ns[CP_PAUSES];
static _Atomic uint64_t test_pauses;

void cp_test_pause(int k)
{
    int64_t ns = atomic_load(&test_pause_ns[k]);
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    if (ns <= 0) return;
    atomic_fetch_add(&test_pauses, 1);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* When slot i's timed item next needs a look (cp_now_ns time), or 0: no
 * timed item runs there. */
static int64_t time_due(CoreObject *c, int i)
{
    cp_slot *s = &c->ctl->slots[i];
    int64_t d = atomic_load(&s->deadline_ns);
    if (d <= 0) return 0; /* none, or its worker is being killed */
    if (atomic_load(&s->stop_for) != d) return d;
    return atomic_load(&c->kills[i].stop_ns) + CP_STOP_GRACE_NS;
}

int64_t cp_limits_nap(CoreObject *c)
{
    int mem = c->ctl->max_rss != 0, timed = atomic_load(&c->timed);
    if ((!mem && !timed) || atomic_load(&c->phase) == CP_TERMINATE) return -1;
    int64_t now = cp_now_ns(), due = -1;
    for (int i = 0; i < c->n; i++) {
        cp_slot *s = &c->ctl->slots[i];
        /* A worker killed already needs no look: its death comes. */
        if (atomic_load(&s->state) != CP_S_READY ||
            atomic_load(&c->kills[i].pid) == atomic_load(&s->pid))
            continue;
        int64_t at = mem ? atomic_load(&c->limits_due) : -1; /* (0: at once) */
        int64_t t = timed ? time_due(c, i) : 0;
        if (t != 0 && (at < 0 || t < at)) at = t;
        if (at < 0) continue;
        int64_t left = at > now ? at - now : 0;
        if (due < 0 || left < due) due = left;
    }
    return due;
}

/* Note why slot i's worker `pid` is killed (before the kill: its death may
 * be handled at once), then kill it. */
static void kill_noted(CoreObject *c, int i, pid_t pid, const struct cp_kill *note)
{
    struct cp_kill *k = &c->kills[i];
    k->why = note->why;
    k->rss = note->rss;
    k->tk = note->tk;
    k->timeout_ns = note->timeout_ns;
    atomic_store(&k->pid, pid);
    (void)kill(pid, SIGKILL);
}

/* Slot i runs a timed item: stop it past its deadline, kill its worker past
 * the grace period after that. */
static void check_time(CoreObject *c, int i, pid_t pid, int64_t now)
{
    cp_slot *s = &c->ctl->slots[i];
    int64_t d = atomic_load(&s->deadline_ns);
    if (d <= 0 || now < d) return;
    if (atomic_load(&s->stop_for) != d) {
        atomic_store(&c->kills[i].stop_ns, now);
        atomic_store(&s->stop_for, d);
        CP_DEBUG("slot %d: worker %d ran past its time limit: asked to stop", i,
                 (int)pid);
        (void)kill(pid, CP_STOP_SIGNAL);
        return;
    }
    if (now - atomic_load(&c->kills[i].stop_ns) < CP_STOP_GRACE_NS) return;
    int64_t began = atomic_load(&s->item_ns);
    struct cp_kill note = {.why = CP_KILL_TIMEOUT, .timeout_ns = d - began};
    note.tk.job = atomic_load(&s->current_job); /* first: see worker.c's next_task */
    note.tk.idx = atomic_load(&s->current_idx);
    note.tk.item =
        (cp_skip){.item = atomic_load(&s->item), .pid = pid, .elapsed_ns = now - began};
    /* Still the item it was asked to stop, taken for the kill in one step:
     * a worker that ended it first goes on (the CAS fails); one that ends
     * it now finds the deadline taken, and waits for the kill. */
    if (!atomic_compare_exchange_strong(&s->deadline_ns, &d, CP_DEADLINE_KILLED)) return;
    CP_DEBUG("slot %d: worker %d did not stop within the grace period: killed", i,
             (int)pid);
    kill_noted(c, i, pid, &note);
}

void cp_check_limits(CoreObject *c)
{
    uint64_t cap = c->ctl->max_rss;
    int timed = atomic_load(&c->timed);
    if (cap == 0 && !timed) return;
    /* One sleeper at a time writes the notes. */
    int idle = 0;
    if (!atomic_compare_exchange_strong(&c->checking, &idle, 1)) return;
    int64_t now = cp_now_ns(), due = atomic_load(&c->limits_due);
    /* Memory once per LIMITS_POLL_NS. */
    int mem = cap != 0 && now >= due;
    if (mem) atomic_store(&c->limits_due, now + LIMITS_POLL_NS);
    for (int i = 0; i < c->n; i++) {
        cp_slot *s = &c->ctl->slots[i];
        pid_t pid = atomic_load(&s->pid);
        if (pid <= 0 || atomic_load(&s->state) != CP_S_READY ||
            atomic_load(&c->kills[i].pid) == pid)
            continue;
        if (timed) check_time(c, i, pid, now);
        if (!mem) continue;
        int64_t started = atomic_load(&s->started_ns);
        if (started <= 0 || atomic_load(&c->kills[i].pid) == pid) continue;
        int64_t rss = cp_proc_rss(pid);
        if (rss < 0 || (uint64_t)rss <= 2 * cap) continue;
        cp_test_pause(CP_PAUSE_FOUND);
        /* Still the task it was running, taken for the kill in one step: a
         * worker that ended it first goes on (the CAS fails; it looks at its
         * own memory after each task); one that ends it now posts its
         * result and waits for the kill, which then fails nothing. */
        if (!atomic_compare_exchange_strong(&s->started_ns, &started, CP_STARTED_KILLED))
            continue;
        cp_test_pause(CP_PAUSE_CLAIMED);
        CP_DEBUG("slot %d: worker %d has %lld bytes resident, over twice the cap: killed",
                 i, (int)pid, (long long)rss);
        kill_noted(c, i, pid, &(struct cp_kill){.why = CP_KILL_MEMORY, .rss = rss});
    }
    atomic_store(&c->checking, 0);
}

int cp_take_kill(CoreObject *c, int i, pid_t pid, struct cp_kill *k)
{
    struct cp_kill *n = &c->kills[i];
    if (pid <= 0 || atomic_load(&n->pid) != pid) return CP_KILL_NONE;
    k->why = n->why;
    k->rss = n->rss;
    k->tk = n->tk;
    k->timeout_ns = n->timeout_ns;
    atomic_store(&n->pid, 0);
    return k->why;
}

PyObject *cp_kill_words(CoreObject *c, const struct cp_kill *k)
{
    char why[200];
    if (k->why == CP_KILL_MEMORY)
        snprintf(why, sizeof why,
                 "was killed by cpool: its resident memory, %.1f MiB, passed twice "
                 "max_memory_per_child (%.1f MiB)",
                 (double)k->rss / 1048576.0, (double)c->ctl->max_rss / 1048576.0);
    else if (k->why == CP_KILL_TIMEOUT)
        snprintf(why, sizeof why,
                 "was killed by cpool: task %u of job %llu ran %.3g s, past its time "
                 "limit of %.3g s, and did not stop when asked",
                 k->tk.idx, (unsigned long long)k->tk.job,
                 (double)k->tk.item.elapsed_ns / 1e9, (double)k->timeout_ns / 1e9);
    else return Py_NewRef(Py_None);
    return PyUnicode_FromString(why);
}

static void set_pause(int k, double secs)
{
    atomic_store(&test_pause_ns[k], secs > 0 ? (int64_t)(secs * 1e9) : 0);
}

static PyObject *pause_memory_check(PyObject *Py_UNUSED(m), PyObject *args)
{
    double found, claimed;
    if (!PyArg_ParseTuple(args, "dd", &found, &claimed)) return NULL;
    set_pause(CP_PAUSE_FOUND, found);
    set_pause(CP_PAUSE_CLAIMED, claimed);
    return PyLong_FromUnsignedLongLong(atomic_exchange(&test_pauses, 0));
}

static PyObject *pause_after_result(PyObject *Py_UNUSED(m), PyObject *arg)
{
    double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred()) return NULL;
    set_pause(CP_PAUSE_POSTED, secs);
    Py_RETURN_NONE;
}

int cp_limits_add_functions(PyObject *m)
{
    static PyMethodDef fns[] = {
        {"_pause_memory_check", pause_memory_check, METH_VARARGS,
         PyDoc_STR("_pause_memory_check($module, found, claimed, /)\n--\n\n"
                   "Seconds the parent waits after finding a worker past twice its\n"
                   "memory cap, and after claiming it for the kill (for the tests: the\n"
                   "worker may end its task in either window); how many times it waited\n"
                   "since the last call.")},
        {"_pause_after_result", pause_after_result, METH_O,
         PyDoc_STR("_pause_after_result($module, seconds, /)\n--\n\n"
                   "Seconds each worker of a fork pool made after this call waits\n"
                   "after posting a result, before it notes the task finished (for\n"
                   "the tests: the parent may take the result in that window).")},
        {NULL, NULL, 0, NULL},
    };
    return PyModule_AddFunctions(m, fns);
}

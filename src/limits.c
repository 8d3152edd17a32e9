/* limits.c: the parent's watch over running tasks, for the caps a pool was
 * given (Pool(max_memory_per_child=)).
 *
 * A worker checks its own memory after each task and leaves when it is over
 * the cap (worker.c): its task ends normally, and it is replaced before its
 * next one.  During a task only the parent can act: whoever sleeps for
 * results (the collector thread, or a waiter holding the token) looks at
 * the busy workers every LIMITS_POLL_NS, and kills one whose resident
 * memory passed twice the cap, noting why; the task it held then fails with
 * a WorkerLostError that says so (death.c), or runs again (retries=).  No
 * GIL: /proc reads and kill() only.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <signal.h>
#include <stdio.h>

#define LIMITS_POLL_NS 100000000 /* 0.1 s */

int64_t cp_limits_nap(CoreObject *c)
{
    if (c->ctl->max_rss == 0 || atomic_load(&c->phase) == CP_TERMINATE) return -1;
    for (int i = 0; i < c->n; i++) {
        if (atomic_load(&c->ctl->slots[i].state) != CP_S_READY) continue;
        int64_t left = atomic_load(&c->limits_due) - cp_now_ns();
        return left > 0 ? left : 0;
    }
    return -1;
}

void cp_check_limits(CoreObject *c)
{
    uint64_t cap = c->ctl->max_rss;
    if (cap == 0) return;
    /* Once per LIMITS_POLL_NS, by whichever sleeper gets there first. */
    int64_t now = cp_now_ns(), due = atomic_load(&c->limits_due);
    if (now < due ||
        !atomic_compare_exchange_strong(&c->limits_due, &due, now + LIMITS_POLL_NS))
        return;
    for (int i = 0; i < c->n; i++) {
        cp_slot *s = &c->ctl->slots[i];
        pid_t pid = atomic_load(&s->pid);
        if (pid <= 0 || atomic_load(&s->state) != CP_S_READY ||
            atomic_load(&s->started_ns) == 0)
            continue;
        int64_t rss = cp_proc_rss(pid);
        if (rss < 0 || (uint64_t)rss <= 2 * cap) continue;
        /* The reason first: the death it causes may be handled at once. */
        atomic_store(&c->kills[i].rss, rss);
        atomic_store(&c->kills[i].pid, pid);
        CP_DEBUG("slot %d: worker %d has %lld bytes resident, over twice the cap: killed",
                 i, (int)pid, (long long)rss);
        (void)kill(pid, SIGKILL);
    }
}

PyObject *cp_kill_reason(CoreObject *c, int i, pid_t pid)
{
    if (pid <= 0 || atomic_load(&c->kills[i].pid) != pid) return Py_NewRef(Py_None);
    atomic_store(&c->kills[i].pid, 0);
    char why[160];
    snprintf(why, sizeof why,
             "was killed by cpool: its resident memory, %.1f MiB, passed twice "
             "max_memory_per_child (%.1f MiB)",
             (double)atomic_load(&c->kills[i].rss) / 1048576.0,
             (double)c->ctl->max_rss / 1048576.0);
    return PyUnicode_FromString(why);
}

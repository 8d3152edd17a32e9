/* death.c: a worker died.
 *
 * Fail exactly the tasks it held (with WorkerLostError, saying why when
 * limits.c killed it; an apply killed past its time limit with
 * TaskTimeoutError), unless they may run again (retries=, or a chunk
 * killed past its time limit, without that item); send again the
 * ones it never took, hand back the recycled segments it held, close what it
 * sent but never posted, and ask the template for a replacement unless the
 * pool is broken or ending.
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

/* Slot i's worker is dead and its results drained: fail what it held,
 * resend what it never took, and ask for a replacement if one is needed. */
void cp_handle_death(CoreObject *c, int i)
{
    cp_slot *s = &c->ctl->slots[i];
    pid_t pid = atomic_load(&s->pid);
    int ws = atomic_load(&s->wstatus);
    int inited = atomic_load(&s->inited);
    cp_ring *tr = cp_task_ring(c->ctl, i);
    uint64_t head = cp_ring_head(tr);

    /* Why, if limits.c killed it: taken before the slot is given a new
     * worker, whose kill would note again. */
    struct cp_kill note = {0};
    int killed = cp_take_kill(c, i, pid, &note);

    cp_lock_with_gil(c);
    cp_task *held = cp_sched_worker_lost(&c->sd, i, head,
                                         killed == CP_KILL_TIMEOUT ? &note.tk : NULL);
    cp_ring_reset(tr);
    /* What was sent to it and never read is its successor's to drop. */
    atomic_store(&s->stale_tag, c->sd.tag_seq);
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
        cp_set_broken(c, exc, NULL, 0);
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
        cp_set_broken(c, exc, NULL, 1);
        Py_XDECREF(exc);
    }
    int respawn = c->broken == NULL && phase != CP_TERMINATE && !sealed &&
                  (phase == CP_RUN || c->sd.npend > 0 || PyDict_GET_SIZE(c->cache) > 0);
    CP_DEBUG("slot %d: worker %d died (status %#x), %s", i, (int)pid, ws,
             respawn ? "respawning" : "not replaced");
    atomic_store(&s->inited, 0);
    atomic_store(&s->pid, 0);
    atomic_store(&s->state, respawn ? CP_S_SPAWN_REQ : CP_S_FREE);
    if (respawn) cp_tell_template(c);

    PyObject *why = cp_kill_words(c, &note);
    if (why == NULL) {
        PyErr_WriteUnraisable(NULL);
        why = Py_NewRef(Py_None);
    }
    for (cp_task *t = held, *next; t != NULL; t = next) {
        next = t->next;
        t->next = NULL;
        PyObject *info;
        int status = CP_ST_LOST;
        if (t->timed_out) { /* (pid, item, seconds run, limit) */
            status = CP_ST_TIMEOUT;
            atomic_fetch_add(&c->ctl->timed_out, 1);
            info = Py_BuildValue("(iOdd)", (int)pid, Py_None,
                                 (double)note.tk.item.elapsed_ns / 1e9,
                                 (double)note.timeout_ns / 1e9);
        } else { /* (pid, wait status, how many workers died running it, why) */
            info = Py_BuildValue("(iiIO)", (int)pid, ws, t->lost, why);
        }
        if (info == NULL) PyErr_WriteUnraisable(NULL);
        cp_fail_list(c, t, status, info);
        Py_XDECREF(info);
    }
    Py_DECREF(why);
}

/* dispatch.c: the parent's task queue, and which worker runs what.
 *
 * No Python here.  A cp_sched holds the tasks not yet sent (the pending
 * queue), the tasks each worker holds (in flight, in ring order), and the
 * policy that moves a pending task onto a worker's ring: to the worker with
 * the fewest in flight, at most one while tasks are not known to be short,
 * its segment's descriptor handed over on the slot's socket first.  Every
 * call but init/fini runs under the pool's mutex (submit.c), without the
 * GIL.  A dead worker's tasks are split here too: the ones it had taken
 * fail, the ones it never took go back to the head of the queue.
 */
#include "cpool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Tasks in flight per worker.  A second queued task only pays off when tasks
 * are short enough that the collector's round trip would leave the worker
 * idle; for long ones it would wait behind a busy worker while another sits
 * idle (the imbalance a shared queue avoids).  So: one, until measured tasks
 * prove short, and one again while the worker's current task has run past
 * SHORT_TASK_NS (it is not short, whatever the average says). */
#define DEPTH_SHORT 4
#define SHORT_TASK_NS 1000000 /* 1 ms */
/* A worker running a chunk may hold its job's next chunk too (hold_next),
 * so that it does not idle between them for the collector's round trip:
 * - a chunk this large keeps the collector long enough, turning its results
 *   into objects (~20 ns an item), that a worker done with its own chunk
 *   meanwhile would idle until the collector came round to refill it:
 *   125,000 tiny items, ~2.5 ms;
 * - chunks of 1 ms or more (one in flight) wait for the round trip between
 *   them, a wake-up of the token holder and one of the worker: 0.1-0.5 ms
 *   each on a VM whose two CPUs the workers keep busy (a CPU-bound map's
 *   workers were busy 84-89% of its time; held, 93-97%).  Held only while
 *   the job has more chunks queued than there are workers, so a worker
 *   that comes free finds one queued, not held by another.
 * The held chunk can wait behind a chunk that turns out long: once that one
 * has run twice the usual time, it is taken back (unhold) for the next
 * worker free. */
#define DEEP_CHUNK_ITEMS 8192
/* A task left waiting in a worker's ring this long while another worker is
 * free is taken back and given to the free one (work stealing): it waits
 * behind a long task, a stopped worker, or a worker still starting. */
#define STEAL_AFTER_NS 2000000 /* 2 ms */

/* ---- tasks --------------------------------------------------------------- */

void cp_blob_decref(cp_blob *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) free(b);
}

void cp_task_free(cp_task *t)
{
    cp_blob_decref(t->func);
    free(t->timing);
    free(t);
}

void cp_drop_packed_segment(cp_ctl *ctl, const cp_segref *seg)
{
    if (seg->recy < 0) close(seg->fd);
    else atomic_store(&ctl->task_recy[seg->recy].state, CP_RECY_FREE);
}

void cp_task_drop_segment(cp_ctl *ctl, cp_task *t)
{
    if (!t->has_seg) return;
    if (t->seg.recy < 0 || !t->held) cp_drop_packed_segment(ctl, &t->seg);
    t->has_seg = 0;
}

void cp_free_list(cp_ctl *ctl, cp_task *t)
{
    while (t) {
        cp_task *next = t->next;
        cp_task_drop_segment(ctl, t);
        cp_task_free(t);
        t = next;
    }
}

/* ---- the scheduler's state ---------------------------------------------- */

int cp_sched_init(cp_sched *s, cp_ctl *ctl, int n, uint64_t maxtasks, int *psock)
{
    memset(s, 0, sizeof *s);
    s->ctl = ctl;
    s->n = n;
    s->maxtasks = maxtasks;
    s->psock = psock;
    s->task_ns = -1;
    s->ws = calloc((size_t)n, sizeof *s->ws);
    s->touched = calloc((size_t)n, 1);
    s->full = calloc((size_t)n, 1);
    if (s->ws != NULL && s->touched != NULL && s->full != NULL) return 0;
    cp_sched_fini(s, 0);
    errno = ENOMEM;
    return -1;
}

void cp_sched_fini(cp_sched *s, int drop)
{
    if (drop) {
        cp_free_list(s->ctl, s->pend_head);
        cp_free_list(s->ctl, s->failed);
        for (int i = 0; s->ws && i < s->n; i++) {
            cp_free_list(s->ctl, s->ws[i].head);
            cp_forget_funcs(&s->ws[i], UINT64_MAX);
        }
        s->pend_head = s->pend_tail = s->failed = NULL;
    }
    for (int i = 0; s->ws && i < s->n; i++) free(s->ws[i].funcs);
    free(s->ws);
    free(s->touched);
    free(s->full);
    s->ws = NULL;
    s->touched = s->full = NULL;
}

void cp_sched_push(cp_sched *s, cp_task *first, cp_task *last, size_t n)
{
    if (s->pend_tail) s->pend_tail->next = first;
    else s->pend_head = first;
    s->pend_tail = last;
    s->npend += n;
}

/* Queue the n tasks first..last ahead of the pending ones (tasks that were
 * sent once already: they go first, in their order). */
static void push_front(cp_sched *s, cp_task *first, cp_task *last, size_t n)
{
    last->next = s->pend_head;
    s->pend_head = first;
    if (s->pend_tail == NULL) s->pend_tail = last;
    s->npend += n;
}

int cp_sched_outstanding(const cp_sched *s)
{
    if (s->npend) return 1;
    for (int i = 0; i < s->n; i++)
        if (s->ws[i].n) return 1;
    return 0;
}

cp_task *cp_sched_answered(cp_sched *s, int i)
{
    cp_wstate *w = &s->ws[i];
    cp_task *t = w->head;
    if (t == NULL) return NULL;
    w->head = t->next;
    if (w->head == NULL) w->tail = NULL;
    w->n--;
    w->stalled = 0;
    t->next = NULL;
    cp_forget_funcs(w, t->end_pos); /* the worker has loaded them */
    /* A task sent while another ran there (a short one four deep, a held
     * chunk) started when that one ended, not when it was sent: counted
     * from its sending, the wait would read as its own time. */
    int64_t now = cp_now_ns();
    int64_t took = now - (t->sent_ns > w->answered_ns ? t->sent_ns : w->answered_ns);
    w->answered_ns = now;
    s->task_ns = s->task_ns < 0 ? took : (7 * s->task_ns + took) / 8;
    return t;
}

/* Append list `t` to the list ending at *tailp; return the new tail link. */
static cp_task **append(cp_task **tailp, cp_task *t)
{
    *tailp = t;
    while (*tailp != NULL) tailp = &(*tailp)->next;
    return tailp;
}

cp_task *cp_sched_take_all(cp_sched *s, int inflight)
{
    cp_task *all = NULL, **tp = &all;
    tp = append(tp, s->failed);
    tp = append(tp, s->pend_head);
    s->pend_head = s->pend_tail = s->failed = NULL;
    s->npend = 0;
    for (int i = 0; inflight && i < s->n; i++) {
        cp_wstate *w = &s->ws[i];
        tp = append(tp, w->head);
        w->head = w->tail = NULL;
        w->sent -= (uint64_t)w->n; /* taken, not answered */
        w->n = 0;
    }
    return all;
}

/* Move the tasks of `job` from list *from to the list ending at *to;
 * return the new end of *to, and the count moved in *moved. */
static cp_task **take_job(cp_task **from, uint64_t job, cp_task **to, size_t *moved)
{
    *moved = 0;
    while (*from != NULL) {
        cp_task *t = *from;
        if (t->job != job) {
            from = &t->next;
            continue;
        }
        *from = t->next;
        t->next = NULL;
        *to = t;
        to = &t->next;
        (*moved)++;
    }
    return to;
}

/* Note in a chunk's timing that `item` is not to run again: 0, or -1
 * (ENOMEM). */
static int add_skip(cp_task *t, const cp_skip *item)
{
    uint32_t n = t->timing->nskips + 1;
    cp_timing *tm = realloc(t->timing, sizeof *tm + n * sizeof(cp_skip));
    if (tm == NULL) return -1;
    tm->skips[n - 1] = *item;
    tm->nskips = n;
    t->timing = tm;
    return 0;
}

cp_task *cp_sched_worker_lost(cp_sched *s, int i, uint64_t head, const cp_tkill *tk)
{
    cp_wstate *w = &s->ws[i];
    cp_task *held = NULL, **hp = &held, *again = NULL, **ap = &again;
    size_t nagain = 0, moved;
    /* A FUNC record it consumed last belongs to the first task of its job
     * after it: a function whose unpickling kills the worker fails that
     * task instead of being resent to kill the next worker, and the next. */
    cp_task *victim = NULL;
    uint64_t func_job = 0;
    for (int j = 0; j < w->nfuncs; j++) {
        if (w->funcs[j].end != head) continue;
        func_job = w->funcs[j].job;
        for (cp_task *t = w->head; t != NULL && victim == NULL; t = t->next)
            if (t->job == func_job && t->end_pos > head) victim = t;
    }
    cp_forget_funcs(w, UINT64_MAX);
    for (cp_task *t = w->head, *next; t != NULL; t = next) {
        next = t->next;
        t->next = NULL;
        if (t->end_pos <= head || t == victim) { /* held: failed by the caller */
            t->held = t->end_pos <= head; /* its record (and segment) taken */
            *hp = t;
            hp = &t->next;
        } else {
            *ap = t;
            ap = &t->next;
            nagain++;
        }
    }
    int doomed = victim != NULL && s->func_death_job == func_job;
    if (victim != NULL) {
        /* Its function killed the worker (or a kill landed in that window:
         * one task pays).  Twice for the same job, the job's queued tasks
         * would kill the next workers the same way: they fail too. */
        if (doomed) {
            hp = take_job(&s->pend_head, func_job, hp, &moved);
            s->npend -= moved;
            s->pend_tail = NULL;
            for (cp_task *t = s->pend_head; t != NULL; t = t->next) s->pend_tail = t;
            take_job(&again, func_job, hp, &moved);
            nagain -= moved;
        }
        s->func_death_job = func_job;
    }
    /* The held ones that may run again go first, then the ones it never
     * took, in their order; the others fail. */
    cp_task *retry = NULL, **rp = &retry;
    for (cp_task **pp = &held, *t; (t = *pp) != NULL;) {
        /* Killed for its time limit, not lost: an apply fails with
         * TaskTimeoutError, a chunk runs again without that item. */
        int timed = tk != NULL && t->held && t->timing != NULL && t->job == tk->job &&
                    t->idx == tk->idx;
        if (timed && t->kind == CP_K_CALL) {
            t->timed_out = 1;
            pp = &t->next;
            continue;
        }
        if (timed && add_skip(t, &tk->item) != 0) timed = 0; /* ENOMEM: lost */
        int again_ = timed || (t->lost < t->retries && !(doomed && t->job == func_job));
        if (!timed) t->lost++;
        if (!again_) {
            s->lost++;
            pp = &t->next;
            continue;
        }
        *pp = t->next;
        t->next = NULL;
        t->held = 0; /* sent again: a one-shot segment (see submit.c), still ours */
        *rp = t;
        rp = &t->next;
        if (!timed) s->retried++;
        nagain++;
    }
    *rp = again;
    again = retry;
    if (again != NULL) {
        cp_task *last = again;
        while (last->next != NULL) last = last->next;
        push_front(s, again, last, nagain);
    }
    w->head = w->tail = NULL;
    w->n = 0;
    w->has_func = 0;
    w->sent = 0;
    w->stalled = 0;
    return held;
}

/* ---- dispatch ----------------------------------------------------------- */

static int is_stalled(cp_sched *s, int i);

/* Whether the chunk a worker runs, head, may have t held behind it: both
 * large, or chunks measured long (one in flight) with more of them queued
 * than there are workers (t, the first queued, counts). */
static int holds(const cp_sched *s, const cp_task *head, const cp_task *t)
{
    if (t->job != head->job || head->items == 0) return 0;
    if (t->items >= DEEP_CHUNK_ITEMS && head->items >= DEEP_CHUNK_ITEMS) return 1;
    return s->task_ns >= SHORT_TASK_NS && s->npend > (size_t)s->n;
}

/* Whether slot i's worker, running one chunk, may hold t, the same job's
 * next chunk (holds): not when its tasks were stolen (it may be stopped),
 * nor behind a chunk that has run twice the usual time. */
static int hold_next(cp_sched *s, int i, const cp_task *t, int64_t now)
{
    const cp_wstate *w = &s->ws[i];
    if (w->n != 1 || t == NULL || !holds(s, w->head, t) || is_stalled(s, i)) return 0;
    int64_t started = atomic_load(&s->ctl->slots[i].started_ns);
    return started == 0 || s->task_ns < 0 || now - started < 2 * s->task_ns;
}

/* Whether slot i's worker may take task t (NULL: any task) now. */
static int slot_accepts(cp_sched *s, int i, const cp_task *t, int64_t now)
{
    cp_slot *sl = &s->ctl->slots[i];
    uint32_t st = atomic_load(&sl->state);
    if (st != CP_S_SPAWN_REQ && st != CP_S_SPAWNED && st != CP_S_READY) return 0;
    cp_wstate *w = &s->ws[i];
    if (s->maxtasks != 0 && w->sent >= s->maxtasks) return 0;
    if (w->n == 0) return 1;
    if (hold_next(s, i, t, now)) return 1;
    if (s->task_ns < 0 || s->task_ns >= SHORT_TASK_NS || w->n >= DEPTH_SHORT) return 0;
    int64_t started = atomic_load(&sl->started_ns);
    return started == 0 || now - started < SHORT_TASK_NS;
}

/* Stalled (see cp_wstate); no longer once its worker has gone past the
 * record taken back from it: it is running. */
static int is_stalled(cp_sched *s, int i)
{
    cp_wstate *w = &s->ws[i];
    if (w->stalled && cp_ring_head(cp_task_ring(s->ctl, i)) >= w->stall_end)
        w->stalled = 0;
    return w->stalled;
}

static int slot_ready(cp_sched *s, int i)
{
    return atomic_load(&s->ctl->slots[i].state) == CP_S_READY;
}

/* The first task slot i's worker has not taken (its record still FREE in
 * the ring), or NULL.  A consumed record was taken; past it, the claim word
 * says (the worker takes records in ring order). */
static cp_task *first_untaken(cp_sched *s, int i)
{
    cp_ring *r = cp_task_ring(s->ctl, i);
    uint64_t head = cp_ring_head(r);
    for (cp_task *t = s->ws[i].head; t != NULL; t = t->next) {
        if (t->end_pos <= head) continue; /* consumed: taken */
        if (__atomic_load_n(&cp_ring_at(r, t->pos)->claim, __ATOMIC_ACQUIRE) ==
            CP_CLAIM_FREE)
            return t;
    }
    return NULL;
}

/* 1 if a worker is free to take a stolen task: ready, nothing in flight,
 * and not one whose tasks were stolen (it may be stopped). */
static int someone_idle(cp_sched *s, int64_t now)
{
    for (int i = 0; i < s->n; i++)
        if (s->ws[i].n == 0 && !is_stalled(s, i) && slot_ready(s, i) && !s->full[i] &&
            slot_accepts(s, i, NULL, now))
            return 1;
    return 0;
}

/* The task that has waited longest in a worker's ring, untaken (its slot in
 * *from), or NULL. */
static cp_task *oldest_untaken(cp_sched *s, int *from)
{
    cp_task *best = NULL;
    for (int i = 0; i < s->n; i++) {
        cp_task *t = first_untaken(s, i);
        if (t != NULL && (best == NULL || t->sent_ns < best->sent_ns)) {
            best = t;
            *from = i;
        }
    }
    return best;
}

/* Take task `best`, untaken, back from slot from's ring and queue it
 * first: 1, or 0 if its worker took it meanwhile. */
static int take_back(cp_sched *s, int from, cp_task *best)
{
    if (!cp_claim(cp_ring_at(cp_task_ring(s->ctl, from), best->pos), CP_CLAIM_REVOKED))
        return 0;
    cp_wstate *w = &s->ws[from];
    cp_task **pp = &w->head, *prev = NULL;
    while (*pp != best) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    *pp = best->next;
    if (w->tail == best) w->tail = prev;
    w->n--;
    w->sent--;
    w->stalled = 1; /* tasks go elsewhere first until it is seen running */
    w->stall_end = best->end_pos;
    push_front(s, best, best, 1);
    s->steals++;
    return 1;
}

/* Take back the task that has waited longest in a worker's ring, if it has
 * waited STEAL_AFTER_NS, and queue it first: 1 if one was taken back (or
 * its worker took it meanwhile: look again). */
static int steal_one(cp_sched *s, int64_t now)
{
    int from = -1;
    cp_task *best = oldest_untaken(s, &from);
    if (best == NULL || now - best->sent_ns < STEAL_AFTER_NS) return 0;
    (void)take_back(s, from, best);
    return 1;
}

/* A large chunk held behind one that has now run twice the usual time
 * (hold_next) is taken back and queued first, for the next worker free:
 * it does not wait for that one to end while the others take the job's
 * later chunks. */
static void unhold(cp_sched *s, int64_t now)
{
    for (int i = 0; i < s->n && s->task_ns >= 0; i++) {
        cp_wstate *w = &s->ws[i];
        if (w->n != 2 || w->head->items == 0 ||
            (w->head->items < DEEP_CHUNK_ITEMS && s->task_ns < SHORT_TASK_NS))
            continue;
        int64_t started = atomic_load(&s->ctl->slots[i].started_ns);
        if (started == 0 || now - started < 2 * s->task_ns) continue;
        if (first_untaken(s, i) == w->tail) (void)take_back(s, i, w->tail);
    }
}

int64_t cp_sched_wake_at(cp_sched *s)
{
    int64_t now = cp_now_ns();
    /* Steals wait for the queue to be empty (dispatch_pending serves a
     * free worker first). */
    if (s->pend_head != NULL || !someone_idle(s, now)) return -1;
    int from;
    cp_task *t = oldest_untaken(s, &from);
    return t != NULL ? t->sent_ns + STEAL_AFTER_NS : -1;
}

void cp_forget_funcs(cp_wstate *w, uint64_t upto)
{
    int k = 0;
    for (int j = 0; j < w->nfuncs; j++) {
        if (w->funcs[j].end >= upto) w->funcs[k++] = w->funcs[j];
        else if (w->funcs[j].fd >= 0) close(w->funcs[j].fd);
    }
    w->nfuncs = k;
}

/* Hand slot i's worker the segment of a record about to be put on its
 * ring (which has room for it): 0, 1 when the socket is full (as a full
 * ring: later), -1 failed (errno). */
static int send_segment(cp_sched *s, int i, cp_segref *seg)
{
    seg->tag = ++s->tag_seq;
    if (cp_send_fd(s->psock[i], seg->tag, seg->fd, MSG_DONTWAIT) == 0) return 0;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
}

/* Put one FUNC record, inline or through a new segment of its own, and
 * note it in w->funcs (with the segment, kept open until the worker has
 * loaded it): 0 sent, 1 ring full, -1 failed (errno). */
static int put_func(cp_sched *s, int i, cp_ring *r, cp_rechdr *h, const char *p, size_t n)
{
    cp_wstate *w = &s->ws[i];
    if (w->nfuncs == w->capfuncs) {
        int cap = w->capfuncs ? 2 * w->capfuncs : 4;
        struct cp_frec *f = realloc(w->funcs, (size_t)cap * sizeof *f);
        if (f == NULL) return -1;
        w->funcs = f;
        w->capfuncs = cap;
    }
    cp_segref seg = {.fd = -1};
    int inline_ = n <= cp_ring_inline_max(r);
    if (!cp_ring_fits(r, (inline_ ? n : sizeof seg) + CP_STOP_ROOM)) return 1;
    if (inline_) {
        if (cp_ring_try_put(r, h, p, n) != 0) return 1;
    } else {
        cp_segdest d = {0}; /* one-shot */
        struct iovec piece = {.iov_base = (void *)p, .iov_len = n};
        if (cp_seg_write(&d, &piece, 1, 0, &seg) != 0) return -1;
        h->flags = CP_F_LARGE;
        int rc = send_segment(s, i, &seg);
        if (rc == 0 && cp_ring_try_put(r, h, &seg, sizeof seg) != 0)
            rc = 1; /* cannot be */
        if (rc != 0) {
            int saved = errno;
            close(seg.fd);
            errno = saved;
            return rc;
        }
    }
    w->funcs[w->nfuncs++] =
        (struct cp_frec){.end = cp_ring_tail(r), .job = h->job, .fd = seg.fd};
    return 0;
}

/* The bytes of a task's time limit ahead of its payload (CP_F_TIMED). */
static size_t timing_len(const cp_task *t)
{
    return t->timing ? sizeof *t->timing + t->timing->nskips * sizeof(cp_skip) : 0;
}

/* The payload bytes of a task's record. */
static size_t record_len(const cp_task *t)
{
    return timing_len(t) + (t->has_seg ? sizeof t->seg : t->len);
}

/* Put a task record on slot i's ring: its inline pickle, or a reference to
 * its segment (handed over first), behind its time limit if it has one.
 * 0 sent, 1 full, -1 failed (errno). */
static int put_task(cp_sched *s, int i, cp_ring *r, cp_task *t)
{
    cp_rechdr h = {.kind = t->kind, .job = t->job, .idx = t->idx};
    size_t nt = timing_len(t);
    if (nt) h.flags = CP_F_TIMED;
    if (!cp_ring_fits(r, record_len(t) + CP_STOP_ROOM)) return 1;
    if (!t->has_seg)
        return cp_ring_try_put2(r, &h, t->timing, nt, t->data, t->len) ? 1 : 0;
    int rc = send_segment(s, i, &t->seg);
    if (rc != 0) return rc;
    h.flags |= CP_F_LARGE;
    return cp_ring_try_put2(r, &h, t->timing, nt, &t->seg, sizeof t->seg) ? 1 : 0;
}

/* Whether slot i is a better home for the next task than slot j: one not
 * stalled (a task was stolen from it and it has answered none since: it may
 * be stopped, or slow to start) first, then the fewest in flight, then a
 * ready worker before one still starting. */
static int better(cp_sched *s, int i, int j)
{
    cp_wstate *a = &s->ws[i], *b = &s->ws[j];
    int sa = is_stalled(s, i), sb = is_stalled(s, j);
    if (sa != sb) return sb;
    if (a->n != b->n) return a->n < b->n;
    return slot_ready(s, i) && !slot_ready(s, j);
}

/* Put pending tasks on the rings of the workers that may take more. */
static int dispatch_pending(cp_sched *s, int64_t now)
{
    int failed = 0;
    while (s->pend_head != NULL) {
        cp_task *t = s->pend_head;
        int best = -1;
        for (int i = 0; i < s->n; i++) {
            if (s->full[i] || !slot_accepts(s, i, t, now)) continue;
            if (best < 0 || better(s, i, best)) best = i;
        }
        if (best < 0) break;
        cp_ring *r = cp_task_ring(s->ctl, best);
        cp_wstate *w = &s->ws[best];
        int rc = 0;
        if (t->func != NULL && (!w->has_func || w->func_job != t->job)) {
            /* The function travels once per job and worker, then is cached. */
            cp_rechdr fh = {.kind = CP_K_FUNC, .job = t->job};
            rc = put_func(s, best, r, &fh, t->func->data, t->func->len);
            if (rc == 0) {
                w->has_func = 1;
                w->func_job = t->job;
                s->touched[best] = 1;
            }
        }
        if (rc == 0) rc = put_task(s, best, r, t);
        if (rc > 0) {
            s->full[best] = 1;
            continue;
        }
        s->pend_head = t->next;
        if (s->pend_head == NULL) s->pend_tail = NULL;
        s->npend--;
        t->next = NULL;
        if (rc < 0) {
            t->err = errno;
            t->next = s->failed;
            s->failed = t;
            failed = 1;
            continue;
        }
        t->end_pos = cp_ring_tail(r);
        t->pos = t->end_pos - CP_REC_BYTES(record_len(t));
        t->sent_ns = now;
        if (w->tail) w->tail->next = t;
        else w->head = t;
        w->tail = t;
        w->n++;
        w->sent++;
        s->touched[best] = 1;
    }
    return failed;
}

int cp_sched_dispatch(cp_sched *s)
{
    int64_t now = cp_now_ns();
    unhold(s, now);
    int failed = dispatch_pending(s, now);
    /* Nobody waits behind a busy worker while another is free: a task left
     * in a ring goes to the free worker (at most one steal per worker). */
    for (int k = 0; k < s->n && s->pend_head == NULL && someone_idle(s, now); k++) {
        if (!steal_one(s, now)) break;
        failed |= dispatch_pending(s, now);
    }
    for (int i = 0; i < s->n; i++) {
        if (s->touched[i]) cp_event_signal(&cp_task_ring(s->ctl, i)->data);
        s->touched[i] = s->full[i] = 0;
    }
    return failed;
}

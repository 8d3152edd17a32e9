/* test_dispatch.c: dispatch.c, the parent's task queue and dispatch
 * (cp_sched), against its contract in cpool.h: tasks taken from the queue
 * in order, each to the live slot holding fewest, at most one in flight
 * until tasks prove short, at most maxtasks per incarnation; a job's FUNC
 * record before its first task on each worker, through a one-shot segment
 * when too large, that segment closed once loaded; a full ring or socket
 * stops only its slot and loses nothing; a task that cannot be sent fails
 * alone; a task left waiting in a ring goes to a free worker (stealing);
 * answers, take_all and fini; a dead worker's tasks split into the ones it
 * held and the ones sent again first, in order, with the FUNC rule.
 *
 * Everything is real but the worker: a control segment from cp_ctl_create
 * (small rings), a cp_socketpair per slot, segments from cp_seg_write.  The
 * test plays the worker's side by hand: it reads records off the task ring
 * (cp_ring_peek, cp_claim, cp_ring_consume), takes a large record's
 * descriptor off the slot's socket by its tag (cp_recv_fd), checks every
 * payload, and writes the slot's state.  Time is the test's: a task waits
 * in a ring only as long as a test says (dispatch_now, age).  Descriptors are counted around each test, and ASan's leak
 * check sees every task and function blob freed.  The last test runs random
 * pushes, dispatches, answers and deaths against a model of the queue.
 */
#include "check.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MS 1000000LL
#define MAXSLOTS 4
#define FUNC_IDX UINT32_MAX /* the stamp of a FUNC payload */

/* ---- payloads: stamped, so a record says whose it is ---------------------- */

typedef struct {
    uint64_t job;
    uint32_t idx, len;
} stamp;

static void fill_payload(void *p, size_t n, uint64_t job, uint32_t idx)
{
    if (n < sizeof(stamp)) ct_fail(__FILE__, __LINE__, "a payload of %zu bytes", n);
    stamp s = {job, idx, (uint32_t)n};
    memcpy(p, &s, sizeof s);
    ct_fill((char *)p + sizeof s, n - sizeof s, job * 1000003u + idx);
}

static int payload_ok(const void *p, size_t n, uint64_t job, uint32_t idx)
{
    stamp s;
    if (n < sizeof s) return 0;
    memcpy(&s, p, sizeof s);
    size_t rest = n - sizeof s;
    return s.job == job && s.idx == idx && s.len == n &&
           ct_mismatch((const char *)p + sizeof s, rest, job * 1000003u + idx) == rest;
}

/* ---- the fixture: a control segment, a socketpair per slot, a cp_sched -- */

typedef struct {
    cp_ctl *ctl;
    int n;
    int psock[MAXSLOTS]; /* what s.psock points to: a test may break one */
    int parent[MAXSLOTS], worker[MAXSLOTS]; /* each slot's socketpair (-1: closed) */
    cp_sched s;
    int fds0;
} fx;

static void fx_open(fx *f, int n, uint64_t cap, uint64_t maxtasks)
{
    memset(f, 0, sizeof *f);
    f->fds0 = ct_open_fds();
    f->n = n;
    f->ctl = cp_ctl_create((uint32_t)n, cap, NULL);
    CHECK(f->ctl != NULL);
    for (int i = 0; i < n; i++) {
        int sv[2];
        CHECK_SYS(cp_socketpair(sv));
        f->psock[i] = f->parent[i] = sv[0];
        f->worker[i] = sv[1];
        atomic_store(&f->ctl->slots[i].state, CP_S_READY);
    }
    CHECK_SYS(cp_sched_init(&f->s, f->ctl, n, maxtasks, f->psock));
    CHECK(f->s.task_ns < 0); /* unknown at first */
}

static void fx_close(fx *f)
{
    cp_sched_fini(&f->s, 1); /* every task freed, every segment closed */
    for (int i = 0; i < f->n; i++) {
        if (f->worker[i] >= 0) {
            cp_drop_fds(f->worker[i]);
            close(f->worker[i]);
        }
        close(f->parent[i]);
    }
    cp_ctl_destroy(f->ctl);
    CHECK_EQ(ct_open_fds(), f->fds0);
}

static cp_ring *ring(fx *f, int i) { return cp_task_ring(f->ctl, i); }

static void set_state(fx *f, int i, uint32_t st)
{
    atomic_store(&f->ctl->slots[i].state, st);
}

static uint32_t data_seq(fx *f, int i) { return atomic_load(&ring(f, i)->data.seq); }

/* After cp_sched_worker_lost: the ring forgotten, as death.c does; and the
 * descriptors the dead worker never took dropped (its replacement's
 * cp_recv_fd would close them), so that the counts add up. */
static void reset_slot(fx *f, int i)
{
    cp_ring_reset(ring(f, i));
    cp_drop_fds(f->worker[i]);
}

/* ---- tasks ----------------------------------------------------------------- */

/* A job's pickled function, its one reference ours. */
static cp_blob *blob_new(uint64_t job, size_t len)
{
    cp_blob *b = malloc(sizeof *b + len);
    CHECK(b != NULL);
    atomic_init(&b->refs, 1);
    b->len = len;
    fill_payload(b->data, len, job, FUNC_IDX);
    return b;
}

/* Task idx of job: a CALL with its payload inline, or with `func` a MAP. */
static cp_task *task_new(uint64_t job, uint32_t idx, size_t len, cp_blob *func)
{
    cp_task *t = malloc(sizeof *t + len);
    CHECK(t != NULL);
    memset(t, 0, sizeof *t);
    t->job = job;
    t->idx = idx;
    t->kind = func ? CP_K_MAP : CP_K_CALL;
    t->len = len;
    if (len > 0) fill_payload(t->data, len, job, idx);
    if (func != NULL) {
        atomic_fetch_add(&func->refs, 1);
        t->func = func;
    }
    return t;
}

/* The same with its payload in a one-shot segment (the task's descriptor). */
static cp_task *seg_task_new(uint64_t job, uint32_t idx, size_t len, cp_blob *func)
{
    cp_task *t = task_new(job, idx, 0, func);
    char *buf = malloc(len);
    CHECK(buf != NULL);
    fill_payload(buf, len, job, idx);
    cp_segdest d = {0};
    struct iovec piece = {.iov_base = buf, .iov_len = len};
    CHECK_SYS(cp_seg_write(&d, &piece, 1, 0, &t->seg));
    CHECK_EQ(t->seg.recy, -1);
    t->has_seg = 1;
    free(buf);
    return t;
}

static void push(fx *f, cp_task *t)
{
    t->next = NULL;
    cp_sched_push(&f->s, t, t, 1);
}

/* Tasks from..to-1 of job, inline, queued as one batch. */
static void push_range(fx *f, uint64_t job, uint32_t from, uint32_t to, size_t len,
                       cp_blob *func)
{
    cp_task *first = NULL, *last = NULL;
    for (uint32_t k = from; k < to; k++) {
        cp_task *t = task_new(job, k, len, func);
        if (last) last->next = t;
        else first = t;
        last = t;
    }
    cp_sched_push(&f->s, first, last, to - from);
}

/* cp_sched_dispatch with no time passed since the tasks in flight were
 * sent: a task is taken back from a worker's ring (work stealing) only
 * where a test ages it (age), however slow the run. */
static int dispatch_now(fx *f)
{
    int64_t now = cp_now_ns();
    for (int i = 0; i < f->n; i++)
        for (cp_task *t = f->s.ws[i].head; t != NULL; t = t->next) t->sent_ns = now;
    return cp_sched_dispatch(&f->s);
}

/* Slot i's tasks in flight were sent `ns` ago. */
static void age(fx *f, int i, int64_t ns)
{
    int64_t now = cp_now_ns();
    for (cp_task *t = f->s.ws[i].head; t != NULL; t = t->next) t->sent_ns = now - ns;
}

/* ---- lists, by name ("job.idx ...") --------------------------------------- */

static int list_len(const cp_task *t)
{
    int n = 0;
    for (; t != NULL; t = t->next) n++;
    return n;
}

static const cp_task *list_last(const cp_task *t)
{
    while (t != NULL && t->next != NULL) t = t->next;
    return t;
}

static void list_str(const cp_task *t, char *buf, size_t cap)
{
    size_t k = 0;
    buf[0] = '\0';
    for (; t != NULL; t = t->next) {
        k += (size_t)snprintf(buf + k, cap - k, "%s%llu.%u", k ? " " : "",
                              (unsigned long long)t->job, t->idx);
        if (k >= cap) ct_fail(__FILE__, __LINE__, "list too long to name");
    }
}

static void check_list_at(const char *file, int line, const char *what, const cp_task *t,
                          const char *want)
{
    char got[2048];
    list_str(t, got, sizeof got);
    if (strcmp(got, want) != 0)
        ct_fail(file, line, "%s is \"%s\", want \"%s\"", what, got, want);
}

/* The pending queue, with its count and tail. */
#define CHECK_PENDING(f, want)                                                           \
    do {                                                                                 \
        check_list_at(__FILE__, __LINE__, "the pending queue", (f)->s.pend_head, want);  \
        CHECK_EQ((f)->s.npend, list_len((f)->s.pend_head));                              \
        CHECK((f)->s.pend_tail == list_last((f)->s.pend_head));                          \
    } while (0)

/* Slot i's tasks in flight, with their count and tail. */
#define CHECK_FLIGHT(f, i, want)                                                         \
    do {                                                                                 \
        check_list_at(__FILE__, __LINE__, "in flight on slot " #i, (f)->s.ws[i].head,    \
                      want);                                                             \
        CHECK_EQ((f)->s.ws[i].n, list_len((f)->s.ws[i].head));                           \
        CHECK((f)->s.ws[i].tail == list_last((f)->s.ws[i].head));                        \
    } while (0)

#define CHECK_LIST(t, want) check_list_at(__FILE__, __LINE__, #t, t, want)

/* Each name of want appears in list t exactly once, and nothing else. */
static void check_set_at(const char *file, int line, const cp_task *t, const char *want)
{
    char got[2048], w[2048];
    list_str(t, got, sizeof got);
    snprintf(w, sizeof w, "%s", want);
    int nwant = 0;
    for (char *save = NULL, *tok = strtok_r(w, " ", &save); tok != NULL;
         tok = strtok_r(NULL, " ", &save)) {
        nwant++;
        int seen = 0;
        for (const cp_task *u = t; u != NULL; u = u->next) {
            char name[48];
            snprintf(name, sizeof name, "%llu.%u", (unsigned long long)u->job, u->idx);
            seen += strcmp(name, tok) == 0;
        }
        if (seen != 1) ct_fail(file, line, "%s is in {%s} %d times", tok, got, seen);
    }
    if (nwant != list_len(t)) ct_fail(file, line, "{%s}, want only {%s}", got, want);
}
#define CHECK_SET(t, want) check_set_at(__FILE__, __LINE__, t, want)

static cp_task *find_task(cp_task *t, uint64_t job, uint32_t idx)
{
    for (; t != NULL; t = t->next)
        if (t->job == job && t->idx == idx) return t;
    return NULL;
}

/* ---- the worker's side --------------------------------------------------- */

/* A large record's payload, as a worker gets it: the descriptor tagged as
 * the reference says, off the slot's socket, checked, read. */
static void check_segment(fx *f, int i, const cp_rechdr *h, uint64_t job, uint32_t idx)
{
    CHECK_EQ(h->len, cp_timing_len(h) + sizeof(cp_segref));
    cp_segref ref;
    memcpy(&ref, (const char *)(h + 1) + cp_timing_len(h), sizeof ref);
    int fd = cp_recv_fd(f->worker[i], ref.tag);
    if (fd < 0)
        ct_fail(__FILE__, __LINE__, "slot %d: no descriptor tagged %llu: %s", i,
                (unsigned long long)ref.tag, strerror(errno));
    const char *why = cp_seg_check(fd, ref.ino, ref.size);
    if (why != NULL)
        ct_fail(__FILE__, __LINE__, "segment of %llu.%u: %s", (unsigned long long)job,
                idx, why);
    cp_seghdr sh;
    CHECK_EQ(pread(fd, &sh, sizeof sh, 0), (ssize_t)sizeof sh);
    CHECK_EQ(sh.magic, CP_SEG_MAGIC);
    CHECK_EQ(sh.nbufs, 0);
    char *p = malloc(sh.pickle_len);
    CHECK(p != NULL);
    CHECK_EQ(pread(fd, p, sh.pickle_len, 64), (ssize_t)sh.pickle_len);
    CHECK(payload_ok(p, sh.pickle_len, job, idx));
    free(p);
    close(fd);
}

/* Slot i's worker takes its next record, as worker.c's next_task does: a
 * task record only if it claims it (cp_claim), else it skips it, and the
 * descriptor sent for it; the payload checked, behind the task's time limit
 * if it has one (CP_F_TIMED: the same as the task's).  Appends its name to out:
 * "F<job>" for a FUNC record, "<job>.<idx>" for a task, with "+" when it
 * came through a segment, in parentheses when it was taken back; a task's
 * end position must be where the scheduler says.  Records of job 0
 * (fillers a test put) are taken silently.  0 when the ring is empty.  The
 * slot's started_ns is left 0 (a test sets it where it matters). */
static int take_one(fx *f, int i, char *out, size_t cap)
{
    cp_ring *r = ring(f, i);
    const cp_rechdr *h;
    while ((h = cp_ring_peek(r)) != NULL && h->job == 0) cp_ring_consume(r, h);
    if (h == NULL) return 0;
    int func = h->kind == CP_K_FUNC, large = (h->flags & CP_F_LARGE) != 0;
    uint32_t idx = func ? FUNC_IDX : h->idx;
    int revoked = !func && !cp_claim((cp_rechdr *)h, CP_CLAIM_TAKEN);
    size_t nt = cp_timing_len(h);
    if (!func && !revoked) {
        cp_task *t = find_task(f->s.ws[i].head, h->job, idx);
        CHECK(t != NULL && (t->timing != NULL) == (nt != 0));
        CHECK(nt == 0 || memcmp(h + 1, t->timing, nt) == 0);
    }
    if (revoked) {
        CHECK_EQ(__atomic_load_n(&h->claim, __ATOMIC_ACQUIRE), CP_CLAIM_REVOKED);
        if (large) {
            cp_segref ref;
            memcpy(&ref, (const char *)(h + 1) + nt, sizeof ref);
            int fd = cp_recv_fd(f->worker[i], ref.tag);
            CHECK_SYS(fd);
            close(fd);
        }
    } else if (large) {
        check_segment(f, i, h, h->job, idx);
    } else {
        CHECK(payload_ok((const char *)(h + 1) + nt, h->len - nt, h->job, idx));
    }
    size_t k = strlen(out);
    if (func)
        snprintf(out + k, cap - k, "%sF%llu%s", k ? " " : "", (unsigned long long)h->job,
                 large ? "+" : "");
    else
        snprintf(out + k, cap - k, "%s%s%llu.%u%s%s", k ? " " : "", revoked ? "(" : "",
                 (unsigned long long)h->job, h->idx, large ? "+" : "",
                 revoked ? ")" : "");
    uint64_t job = h->job;
    cp_ring_consume(r, h);
    if (!func && !revoked) {
        cp_task *t = find_task(f->s.ws[i].head, job, idx);
        if (t == NULL)
            ct_fail(__FILE__, __LINE__, "slot %d: record %llu.%u is not in flight there",
                    i, (unsigned long long)job, idx);
        CHECK_EQ(t->end_pos, cp_ring_head(r));
    }
    return 1;
}

/* Take k records (k < 0: all) off slot i's ring: their names. */
static const char *take(fx *f, int i, int k)
{
    static char out[2048];
    out[0] = '\0';
    while (k-- != 0 && take_one(f, i, out, sizeof out)) {
    }
    return out;
}

#define CHECK_TAKE(f, i, k, want)                                                        \
    do {                                                                                 \
        const char *got_ = take(f, i, k);                                                \
        if (strcmp(got_, want) != 0)                                                     \
            ct_fail(__FILE__, __LINE__, "slot %d's worker took \"%s\", want \"%s\"", i,  \
                    got_, want);                                                         \
    } while (0)

/* The collector's part: slot i's answer to its oldest task; that task's
 * name (then freed), or "-" when it held none. */
static const char *answer(fx *f, int i)
{
    static char name[48];
    cp_task *t = cp_sched_answered(&f->s, i);
    if (t == NULL) return "-";
    CHECK(t->next == NULL);
    snprintf(name, sizeof name, "%llu.%u", (unsigned long long)t->job, t->idx);
    t->held = 1;
    cp_free_list(f->ctl, t);
    return name;
}

#define CHECK_ANSWER(f, i, want)                                                         \
    do {                                                                                 \
        const char *got_ = answer(f, i);                                                 \
        if (strcmp(got_, want) != 0)                                                     \
            ct_fail(__FILE__, __LINE__, "slot %d answered %s, want %s", i, got_, want);  \
    } while (0)

/* Fill slot i's empty ring with one filler record up to `room` bytes
 * before its end. */
static void fill_ring(fx *f, int i, size_t room)
{
    cp_ring *r = ring(f, i);
    CHECK(cp_ring_head(r) == cp_ring_tail(r));
    size_t n = (size_t)(r->cap - cp_ring_tail(r) % r->cap) - room - sizeof(cp_rechdr);
    char *junk = calloc(1, n);
    CHECK(junk != NULL);
    cp_rechdr h = {.kind = CP_K_CALL, .job = 0};
    CHECK_EQ(cp_ring_try_put(r, &h, junk, n), 0);
    free(junk);
}

/* Which slot holds job.idx in flight (-1: none). */
static int slot_of(fx *f, uint64_t job, uint32_t idx)
{
    for (int i = 0; i < f->n; i++)
        if (find_task(f->s.ws[i].head, job, idx)) return i;
    return -1;
}

/* Tasks job.from..to-1 were dispatched in that order, from counts n0[] in
 * flight: each went to a slot that held fewest at its turn. */
static void check_least_loaded(fx *f, const int *n0, uint64_t job, uint32_t from,
                               uint32_t to)
{
    int cnt[MAXSLOTS];
    memcpy(cnt, n0, sizeof cnt);
    for (uint32_t k = from; k < to; k++) {
        int i = slot_of(f, job, k);
        CHECK(i >= 0);
        for (int j = 0; j < f->n; j++)
            if (cnt[j] < cnt[i])
                ct_fail(__FILE__, __LINE__,
                        "%llu.%u went to slot %d holding %d, slot %d held %d",
                        (unsigned long long)job, k, i, cnt[i], j, cnt[j]);
        cnt[i]++;
    }
    for (int j = 0; j < f->n; j++) CHECK_EQ(f->s.ws[j].n, cnt[j]);
}

/* ---- order, balance, live slots, depth, maxtasks -------------------------- */

TEST(dispatch_takes_the_queue_in_order_to_the_least_loaded)
{
    fx f;
    fx_open(&f, 3, 4096, 0);
    CHECK_EQ(cp_sched_outstanding(&f.s), 0);
    CHECK_EQ(dispatch_now(&f), 0); /* nothing queued: nothing happens */
    f.s.task_ns = 1000;                   /* short: up to 4 in flight each */
    push_range(&f, 1, 0, 10, 40, NULL);
    CHECK_PENDING(&f, "1.0 1.1 1.2 1.3 1.4 1.5 1.6 1.7 1.8 1.9");
    CHECK_EQ(cp_sched_outstanding(&f.s), 1);
    int zero[MAXSLOTS] = {0};
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_PENDING(&f, "");
    check_least_loaded(&f, zero, 1, 0, 10);
    CHECK_EQ(cp_sched_outstanding(&f.s), 1);
    /* Each ring holds its tasks in queue order, as its list says. */
    for (int i = 0; i < 3; i++) {
        char want[2048];
        list_str(f.s.ws[i].head, want, sizeof want);
        CHECK_TAKE(&f, i, -1, want);
    }
    /* Answers make slot 1 the least loaded: the next tasks go there first. */
    const cp_task *first1 = f.s.ws[1].head;
    char name[48];
    snprintf(name, sizeof name, "1.%u", first1->idx);
    CHECK_ANSWER(&f, 1, name);
    answer(&f, 1);
    int n0[MAXSLOTS] = {f.s.ws[0].n, f.s.ws[1].n, f.s.ws[2].n};
    CHECK(n0[1] < n0[0] && n0[1] < n0[2]);
    push_range(&f, 2, 0, 4, 24, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    check_least_loaded(&f, n0, 2, 0, 4);
    CHECK_EQ(slot_of(&f, 2, 0), 1);
    CHECK_PENDING(&f, ""); /* 12 in flight: 4 each */
    fx_close(&f);
}

TEST(only_live_slots_get_tasks)
{
    static const uint32_t states[] = {CP_S_FREE, CP_S_SPAWN_REQ, CP_S_SPAWNED, CP_S_READY,
                                      CP_S_DEAD};
    for (int k = 0; k < 5; k++) {
        fx f;
        fx_open(&f, 2, 4096, 0);
        set_state(&f, 0, states[k]);
        push_range(&f, 1, 0, 3, 32, NULL);
        CHECK_EQ(dispatch_now(&f), 0);
        int live = states[k] != CP_S_FREE && states[k] != CP_S_DEAD;
        CHECK_EQ(f.s.ws[0].n, live); /* depth 1: task_ns unknown */
        CHECK_EQ(f.s.ws[1].n, 1);
        CHECK_EQ(f.s.npend, live ? 1 : 2);
        CHECK_TAKE(&f, 0, -1, live ? (slot_of(&f, 1, 0) == 0 ? "1.0" : "1.1") : "");
        fx_close(&f);
    }
}

/* Chunks of `items` items each, of job `job`, from..to. */
static void push_chunks(fx *f, uint64_t job, uint32_t from, uint32_t to, uint32_t items)
{
    for (uint32_t k = from; k < to; k++) {
        cp_task *t = task_new(job, k, 32, NULL);
        t->items = items;
        push(f, t);
    }
}

#define DEEP 8192 /* dispatch.c's DEEP_CHUNK_ITEMS */

TEST(a_worker_running_a_large_chunk_holds_the_jobs_next_one)
{
    /* Long tasks, one each; but a worker running a chunk of DEEP items or
     * more may hold the same job's next one as well. */
    fx f;
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 6, DEEP);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(f.s.ws[0].n, 2);
    CHECK_EQ(f.s.ws[1].n, 2);
    CHECK_PENDING(&f, "1.4 1.5"); /* not a third */
    fx_close(&f);

    /* Not another job's chunk behind it. */
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 2, DEEP);
    push_chunks(&f, 2, 0, 2, DEEP);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(f.s.ws[0].n, 1);
    CHECK_EQ(f.s.ws[1].n, 1);
    CHECK_PENDING(&f, "2.0 2.1");
    fx_close(&f);

    /* Smaller chunks, with no more queued than workers once each has one
     * (long_chunks_hold_...), or an apply: one each. */
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 4, DEEP - 1);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(f.s.ws[0].n + f.s.ws[1].n, 2);
    fx_close(&f);
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 5 * MS; /* long, and more queued than workers: still one */
    push_range(&f, 1, 0, 3, 32, NULL); /* items 0: applies */
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(f.s.ws[0].n, 1);
    fx_close(&f);

    /* Not behind a chunk that has run twice the usual time (dated ahead
     * for the other case: a slow run cannot age it), nor on a worker whose
     * tasks were stolen. */
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 3, DEEP);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1");
    CHECK_TAKE(&f, 0, 1, "1.0");
    answer(&f, 0);
    f.s.task_ns = 5 * MS;
    _Atomic int64_t *started = &f.ctl->slots[0].started_ns;
    atomic_store(started, cp_now_ns() - 11 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.1");
    atomic_store(started, cp_now_ns() + 1000 * MS);
    f.s.ws[0].stalled = 1;
    f.s.ws[0].stall_end = UINT64_MAX;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.1");
    f.s.ws[0].stalled = 0;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.1 1.2");
    fx_close(&f);

    /* Held behind a chunk that has since run twice the usual time: taken
     * back, and the next worker to answer gets it before the job's later
     * chunks. */
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 5, DEEP);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.2");
    CHECK_FLIGHT(&f, 1, "1.1 1.3");
    CHECK_TAKE(&f, 0, 1, "1.0");
    CHECK_TAKE(&f, 1, 1, "1.1");
    atomic_store(&f.ctl->slots[1].started_ns, cp_now_ns() + 1000 * MS);
    atomic_store(&f.ctl->slots[0].started_ns, cp_now_ns() - 9 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.2"); /* not yet twice */
    atomic_store(&f.ctl->slots[0].started_ns, cp_now_ns() - 11 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0");
    CHECK_PENDING(&f, "1.2 1.4");
    CHECK_EQ(f.s.steals, 1);
    CHECK_ANSWER(&f, 1, "1.1");
    f.s.task_ns = 5 * MS;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 1, "1.3 1.2");
    CHECK_PENDING(&f, "1.4");
    fx_close(&f);

    /* The chunk held behind a running one goes to a worker that frees up
     * (the queue empty), once it has waited STEAL_AFTER_NS. */
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 5 * MS;
    set_state(&f, 1, CP_S_FREE);
    push_chunks(&f, 1, 0, 2, DEEP);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1");
    CHECK_TAKE(&f, 0, 1, "1.0");
    set_state(&f, 1, CP_S_READY);
    age(&f, 0, 1000 * MS);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_FLIGHT(&f, 0, "1.0");
    CHECK_FLIGHT(&f, 1, "1.1");
    CHECK_EQ(f.s.steals, 1);
    fx_close(&f);
}

TEST(long_chunks_hold_the_next_while_the_queue_has_one_for_every_worker)
{
    /* Chunks measured long (one in flight each): a worker running one holds
     * the job's next as well, so it does not wait between them for the
     * collector's round trip, while more are queued than there are workers
     * (the held one counted); the last ones go one at a time, to whoever
     * comes free. */
    fx f;
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 8, 100);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.2");
    CHECK_FLIGHT(&f, 1, "1.1 1.3");
    CHECK_PENDING(&f, "1.4 1.5 1.6 1.7");
    CHECK_TAKE(&f, 0, 1, "1.0");
    CHECK_ANSWER(&f, 0, "1.0");
    f.s.task_ns = 5 * MS;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.2 1.4");
    CHECK_TAKE(&f, 1, 1, "1.1");
    CHECK_ANSWER(&f, 1, "1.1");
    f.s.task_ns = 5 * MS;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 1, "1.3 1.5");
    CHECK_PENDING(&f, "1.6 1.7"); /* no more than the workers: */
    CHECK_TAKE(&f, 0, 1, "1.2");
    CHECK_ANSWER(&f, 0, "1.2");
    f.s.task_ns = 5 * MS;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.4"); /* one at a time */
    CHECK_PENDING(&f, "1.6 1.7");
    fx_close(&f);

    /* Not while tasks are unmeasured, nor another job's chunk (nor an
     * apply: a_worker_running_a_large_chunk_holds_the_jobs_next_one). */
    fx_open(&f, 2, 4096, 0);
    push_chunks(&f, 1, 0, 8, 100);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(f.s.ws[0].n + f.s.ws[1].n, 2);
    fx_close(&f);
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 1, 100);
    push_chunks(&f, 2, 0, 4, 100);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0");
    fx_close(&f);

    /* Held behind a chunk that has since run twice the usual time: taken
     * back and queued first. */
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 5 * MS;
    push_chunks(&f, 1, 0, 4, 100);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1");
    CHECK_TAKE(&f, 0, 1, "1.0");
    atomic_store(&f.ctl->slots[0].started_ns, cp_now_ns() - 9 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1"); /* not yet twice */
    atomic_store(&f.ctl->slots[0].started_ns, cp_now_ns() - 11 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0");
    CHECK_PENDING(&f, "1.1 1.2 1.3");
    fx_close(&f);
}

TEST(one_in_flight_until_tasks_prove_short)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    push_range(&f, 1, 0, 12, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0); /* unknown: one each */
    CHECK_EQ(f.s.ws[0].n + f.s.ws[1].n, 2);
    CHECK_EQ(f.s.ws[0].n, 1);
    f.s.task_ns = 1 * MS; /* 1 ms is not short */
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(f.s.ws[0].n + f.s.ws[1].n, 2);
    f.s.task_ns = 1 * MS - 1; /* short: up to 4 each */
    CHECK_EQ(dispatch_now(&f), 0);
    int zero[MAXSLOTS] = {0};
    check_least_loaded(&f, zero, 1, 0, 8);
    CHECK_EQ(f.s.ws[0].n, 4);
    CHECK_EQ(f.s.ws[1].n, 4);
    CHECK_PENDING(&f, "1.8 1.9 1.10 1.11");
    fx_close(&f);

    /* Learnt from the answers: the first one's time, then an average. */
    fx_open(&f, 1, 4096, 0);
    push_range(&f, 1, 0, 40, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0");
    CHECK_TAKE(&f, 0, -1, "1.0");
    f.s.ws[0].head->sent_ns = cp_now_ns() - 3 * MS;
    CHECK_ANSWER(&f, 0, "1.0");
    CHECK(f.s.task_ns >= 3 * MS && f.s.task_ns < 3 * MS + 500 * MS);
    int64_t was = f.s.task_ns;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.1"); /* 3 ms: still one */
    /* Quick answers bring the average down; below 1 ms, up to 4. */
    int quick = 0;
    while (f.s.task_ns >= 1 * MS) {
        CHECK(take(&f, 0, -1)[0] != '\0');
        f.s.ws[0].head->sent_ns = cp_now_ns();
        answer(&f, 0);
        CHECK(f.s.task_ns < was); /* an average: it moves toward the quick ones */
        CHECK(f.s.task_ns > was / 2);
        was = f.s.task_ns;
        CHECK_EQ(dispatch_now(&f), 0);
        CHECK_EQ(f.s.ws[0].n, f.s.task_ns < 1 * MS ? 4 : 1);
        CHECK(++quick < 30);
    }
    CHECK(quick >= 5); /* 3 ms * (7/8)^k < 1 ms: k >= 9; an average, not the last */
    fx_close(&f);

    /* A task that waited in the ring behind another counts from that one's
     * answer, not from its sending: four sent together 8 ms ago and
     * answered one after the other are 8 ms of work, not 32. */
    fx_open(&f, 1, 4096, 0);
    push_range(&f, 1, 0, 8, 32, NULL);
    f.s.task_ns = 1000;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, -1, "1.0 1.1 1.2 1.3");
    age(&f, 0, 8 * MS);
    f.s.task_ns = -1;
    CHECK_ANSWER(&f, 0, "1.0");
    int64_t first = f.s.task_ns;
    CHECK(first >= 8 * MS);
    CHECK_ANSWER(&f, 0, "1.1");
    CHECK_ANSWER(&f, 0, "1.2");
    CHECK_ANSWER(&f, 0, "1.3");
    CHECK(f.s.task_ns < first * 3 / 4); /* (7/8)^3 of it, and the answers' moments */
    fx_close(&f);

    /* Short tasks, but the worker's current one has run past 1 ms: it is
     * given no more than the one it runs. */
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 1000;
    push_range(&f, 1, 0, 8, 32, NULL);
    _Atomic int64_t *started = &f.ctl->slots[0].started_ns;
    atomic_store(started, cp_now_ns() - 5 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0");
    /* Just taken (dated ahead: a slow run cannot age it), then none: 4. */
    atomic_store(started, cp_now_ns() + 1000 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2 1.3");
    atomic_store(started, 0);
    CHECK_TAKE(&f, 0, 1, "1.0");
    answer(&f, 0);
    f.s.task_ns = 1000;
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.1 1.2 1.3 1.4");
    fx_close(&f);
}

TEST(maxtasks_bounds_each_incarnation)
{
    fx f;
    fx_open(&f, 2, 4096, 3);
    f.s.task_ns = 1000;
    push_range(&f, 1, 0, 10, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(f.s.ws[0].n, 3);
    CHECK_EQ(f.s.ws[1].n, 3);
    CHECK_PENDING(&f, "1.6 1.7 1.8 1.9");
    for (int i = 0; i < 2; i++) {
        take(&f, i, -1);
        for (int k = 0; k < 3; k++) answer(&f, i);
    }
    CHECK_EQ(dispatch_now(&f), 0); /* both have had their 3: none more */
    CHECK_EQ(f.s.ws[0].n + f.s.ws[1].n, 0);
    CHECK_EQ(f.s.npend, 4);
    /* Slot 1's worker exits (its 3 done); its replacement gets 3 more. */
    CHECK(cp_sched_worker_lost(&f.s, 1, cp_ring_head(ring(&f, 1)), NULL) == NULL);
    reset_slot(&f, 1);
    set_state(&f, 1, CP_S_SPAWN_REQ);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "");
    CHECK_FLIGHT(&f, 1, "1.6 1.7 1.8");
    CHECK_PENDING(&f, "1.9");
    CHECK_TAKE(&f, 1, -1, "1.6 1.7 1.8");
    fx_close(&f);
}

/* ---- a job's function ------------------------------------------------------ */

TEST(func_record_precedes_a_jobs_first_task_on_each_worker)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    cp_blob *a = blob_new(1, 100), *b = blob_new(2, 60);
    /* Each worker gets the function before its first task of the job. */
    push_range(&f, 1, 0, 4, 32, a);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, -1, slot_of(&f, 1, 0) == 0 ? "F1 1.0" : "F1 1.1");
    CHECK_TAKE(&f, 1, -1, slot_of(&f, 1, 0) == 1 ? "F1 1.0" : "F1 1.1");
    CHECK_EQ(atomic_load(&a->refs), 5); /* ours and the 4 tasks' */
    answer(&f, 0);
    answer(&f, 1);
    set_state(&f, 1, CP_S_FREE);
    f.s.task_ns = 1000;
    /* Once per job on a worker: not for the next tasks of the same job, but
     * for another job's, and again for the first job after that. */
    push_range(&f, 2, 0, 1, 32, b);
    push_range(&f, 1, 4, 6, 32, a);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.2 1.3 2.0 1.4");
    CHECK_TAKE(&f, 0, -1, "1.2 1.3 F2 2.0 F1 1.4");
    for (int k = 0; k < 4; k++) answer(&f, 0);
    push_range(&f, 3, 0, 1, 32, NULL); /* a CALL between: the worker keeps job 1's */
    push_range(&f, 1, 6, 7, 32, a);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, -1, "1.5 3.0 1.6");
    for (int k = 0; k < 3; k++) answer(&f, 0);
    /* A new incarnation holds no function. */
    CHECK(cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL) == NULL);
    reset_slot(&f, 0);
    push_range(&f, 1, 7, 8, 32, a);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, -1, "F1 1.7");
    answer(&f, 0);
    CHECK_EQ(atomic_load(&a->refs), 1); /* the tasks let go of it */
    CHECK_EQ(atomic_load(&b->refs), 1);
    cp_blob_decref(a);
    cp_blob_decref(b);
    fx_close(&f);
}

TEST(a_large_func_goes_through_a_one_shot_segment)
{
    fx f;
    fx_open(&f, 1, 1024, 0); /* inline records up to 256 bytes */
    size_t imax = cp_ring_inline_max(ring(&f, 0));
    CHECK_EQ(imax, 256);
    cp_blob *a = blob_new(1, 3000), *b = blob_new(2, imax + 1), *c = blob_new(3, imax);
    f.s.task_ns = 1000;
    push_range(&f, 1, 0, 2, 32, a);
    push_range(&f, 2, 0, 1, 32, b);
    push_range(&f, 3, 0, 1, 32, c);
    int fds = ct_open_fds();
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(ct_open_fds(), fds + 2); /* the two segments, kept until loaded */
    /* Each descriptor came on the socket, tagged as its record says. */
    CHECK_TAKE(&f, 0, -1, "F1+ 1.0 1.1 F2+ 2.0 F3 3.0");
    CHECK_EQ(ct_open_fds(), fds + 2);
    CHECK_ANSWER(&f, 0, "1.0"); /* put after F1: the worker has loaded it */
    CHECK_EQ(ct_open_fds(), fds + 1);
    CHECK_ANSWER(&f, 0, "1.1"); /* put before F2: that one stays */
    CHECK_EQ(ct_open_fds(), fds + 1);
    CHECK_ANSWER(&f, 0, "2.0");
    CHECK_EQ(ct_open_fds(), fds);
    CHECK_ANSWER(&f, 0, "3.0");
    /* Once per job: the next task of job 1 comes without it. */
    push_range(&f, 1, 2, 3, 32, a);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(ct_open_fds(), fds + 1); /* job 3's inline since: job 1's again */
    CHECK_TAKE(&f, 0, -1, "F1+ 1.2");
    /* A worker that dies: its segments are closed with it. */
    cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "1.2");
    cp_free_list(f.ctl, held);
    reset_slot(&f, 0);
    CHECK_EQ(ct_open_fds(), fds);
    /* fini closes the ones still open (fx_close counts). */
    push_range(&f, 1, 3, 4, 32, a);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(ct_open_fds(), fds + 1);
    cp_blob_decref(a);
    cp_blob_decref(b);
    cp_blob_decref(c);
    fx_close(&f);
}

/* ---- full rings and sockets, failed sends --------------------------------- */

TEST(a_full_ring_stops_only_its_slot)
{
    fx f;
    fx_open(&f, 3, 1024, 0);
    f.s.task_ns = 1000;
    set_state(&f, 2, CP_S_FREE);
    fill_ring(&f, 0, 0);
    uint32_t seq[3] = {data_seq(&f, 0), data_seq(&f, 1), data_seq(&f, 2)};
    push_range(&f, 1, 0, 6, 40, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "");
    CHECK_FLIGHT(&f, 1, "1.0 1.1 1.2 1.3");
    CHECK_PENDING(&f, "1.4 1.5"); /* nothing lost */
    CHECK_EQ(data_seq(&f, 0), seq[0]); /* only the worker given tasks is woken */
    CHECK(data_seq(&f, 1) != seq[1]);
    CHECK_EQ(data_seq(&f, 2), seq[2]);
    CHECK_EQ(dispatch_now(&f), 0); /* still full: nothing moves, nobody woken */
    CHECK_PENDING(&f, "1.4 1.5");
    CHECK_EQ(data_seq(&f, 0), seq[0]);
    /* Its worker takes the records there: dispatch resumes, in order. */
    CHECK_TAKE(&f, 0, -1, "");
    seq[1] = data_seq(&f, 1);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.4 1.5");
    CHECK_PENDING(&f, "");
    CHECK(data_seq(&f, 0) != seq[0]);
    CHECK_EQ(data_seq(&f, 1), seq[1]);
    CHECK_TAKE(&f, 0, -1, "1.4 1.5");
    fx_close(&f);

    /* Room for two records: two go, the rest wait (1 slot). */
    fx_open(&f, 1, 1024, 0);
    f.s.task_ns = 1000;
    fill_ring(&f, 0, 136 + CP_STOP_ROOM); /* records of 40 bytes take 64 */
    push_range(&f, 1, 0, 4, 40, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1");
    CHECK_PENDING(&f, "1.2 1.3");
    CHECK_TAKE(&f, 0, -1, "1.0 1.1");
    CHECK_EQ(dispatch_now(&f), 0); /* past the ring's end now: a filler */
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2 1.3");
    CHECK_TAKE(&f, 0, -1, "1.2 1.3");
    fx_close(&f);

    /* Room for the function but not its task: the task waits, and goes
     * later without a second FUNC record. */
    fx_open(&f, 1, 1024, 0);
    cp_blob *a = blob_new(1, 64);
    fill_ring(&f, 0, 24 + 64 + 8 + CP_STOP_ROOM);
    push_range(&f, 1, 0, 1, 40, a);
    uint32_t s0 = data_seq(&f, 0);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_PENDING(&f, "1.0");
    CHECK(data_seq(&f, 0) != s0); /* the FUNC record was put: woken */
    CHECK_TAKE(&f, 0, -1, "F1");
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, -1, "1.0");
    CHECK_PENDING(&f, "");
    cp_blob_decref(a);
    fx_close(&f);
}

/* Send descriptors to slot i's worker until its socket takes no more. */
static int fill_socket(fx *f, int i)
{
    int fd = cp_memfd("ct-dispatch-junk", 4096);
    CHECK_SYS(fd);
    int sent = 0, rc;
    while ((rc = cp_send_fd(f->parent[i], 1u << 30, fd, MSG_DONTWAIT)) == 0)
        CHECK(++sent < 100000);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    close(fd);
    return sent;
}

TEST(a_full_socket_is_a_full_ring)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    set_state(&f, 1, CP_S_FREE);
    cp_blob *big = blob_new(1, 2000);
    CHECK(fill_socket(&f, 0) > 0);
    uint32_t s0 = data_seq(&f, 0);
    push(&f, task_new(1, 0, 32, big)); /* its FUNC needs the socket */
    push(&f, seg_task_new(2, 0, 5000, NULL));
    push(&f, task_new(3, 0, 32, NULL));
    int fds = ct_open_fds();
    CHECK_EQ(dispatch_now(&f), 0); /* not a failure: later */
    CHECK_PENDING(&f, "1.0 2.0 3.0");
    CHECK(f.s.failed == NULL);
    CHECK_EQ(ct_open_fds(), fds); /* the function's segment was not kept */
    CHECK_EQ(cp_ring_tail(ring(&f, 0)), 0);
    CHECK_EQ(data_seq(&f, 0), s0);
    /* Another slot can take them meanwhile. */
    set_state(&f, 1, CP_S_READY);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "");
    CHECK_FLIGHT(&f, 1, "1.0");
    CHECK_PENDING(&f, "2.0 3.0");
    CHECK_TAKE(&f, 1, -1, "F1+ 1.0");
    /* The worker empties its socket: slot 0 takes the rest. */
    cp_drop_fds(f.worker[0]);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "2.0");
    CHECK_PENDING(&f, "3.0");
    CHECK_TAKE(&f, 0, -1, "2.0+");
    cp_blob_decref(big);
    fx_close(&f);
}

TEST(a_task_that_cannot_be_sent_fails_alone)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    set_state(&f, 1, CP_S_FREE);
    cp_blob *big = blob_new(3, 2000);
    f.s.task_ns = 1000;
    f.psock[0] = -1; /* slot 0's socket is unusable: EBADF */
    push(&f, seg_task_new(1, 0, 5000, NULL));
    push(&f, task_new(2, 0, 32, NULL));
    push(&f, task_new(3, 0, 32, big));
    push(&f, task_new(4, 0, 32, NULL));
    int fds = ct_open_fds();
    CHECK_EQ(dispatch_now(&f), 1);
    CHECK_SET(f.s.failed, "1.0 3.0");
    for (cp_task *t = f.s.failed; t != NULL; t = t->next) CHECK_EQ(t->err, EBADF);
    CHECK_FLIGHT(&f, 0, "2.0 4.0"); /* inline: no socket needed */
    CHECK_PENDING(&f, "");
    CHECK_TAKE(&f, 0, -1, "2.0 4.0");
    CHECK_EQ(ct_open_fds(), fds); /* no function segment left open */
    CHECK_EQ(cp_sched_outstanding(&f.s), 1);
    answer(&f, 0);
    answer(&f, 0);
    CHECK_EQ(cp_sched_outstanding(&f.s), 0); /* failed ones are neither */
    push(&f, task_new(5, 0, 32, NULL));
    CHECK_EQ(dispatch_now(&f), 0); /* 1: only when a task failed */
    CHECK_TAKE(&f, 0, -1, "5.0");
    cp_task *all = cp_sched_take_all(&f.s, 0);
    CHECK_SET(all, "1.0 3.0");
    cp_free_list(f.ctl, all);

    /* The worker's end is gone: a send error other than EAGAIN. */
    f.psock[0] = f.parent[0];
    close(f.worker[0]);
    f.worker[0] = -1;
    push(&f, seg_task_new(6, 0, 5000, NULL));
    uint64_t tail = cp_ring_tail(ring(&f, 0));
    CHECK_EQ(dispatch_now(&f), 1);
    CHECK_LIST(f.s.failed, "6.0");
    CHECK(f.s.failed->err != 0 && f.s.failed->err != EAGAIN &&
          f.s.failed->err != EWOULDBLOCK);
    CHECK_EQ(cp_ring_tail(ring(&f, 0)), tail); /* no record for it */
    CHECK_PENDING(&f, "");
    cp_blob_decref(big);
    fx_close(&f);
}

/* ---- work stealing -------------------------------------------------------------- */

TEST(a_task_left_waiting_goes_to_a_free_worker)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 1000;
    set_state(&f, 1, CP_S_FREE);
    push_range(&f, 1, 0, 1, 32, NULL);
    push(&f, seg_task_new(1, 1, 2000, NULL));
    push_range(&f, 1, 2, 4, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2 1.3");
    CHECK_TAKE(&f, 0, 1, "1.0"); /* it runs 1.0, for long */
    /* Nobody free (a slot without a worker, or one still starting): no
     * steal, however long the others wait. */
    age(&f, 0, 1000 * MS);
    CHECK_EQ(cp_sched_wake_at(&f.s), -1);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    set_state(&f, 1, CP_S_SPAWNED);
    CHECK_EQ(cp_sched_wake_at(&f.s), -1);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2 1.3");
    CHECK_EQ(f.s.steals, 0);
    /* A free worker: a steal is due once the oldest task not taken has
     * waited a while; not before. */
    set_state(&f, 1, CP_S_READY);
    age(&f, 0, 0);
    int64_t sent = f.s.ws[0].head->next->sent_ns, at = cp_sched_wake_at(&f.s);
    CHECK(at > sent && at <= sent + 1000 * MS);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2 1.3");
    /* Past it: that task goes to the free worker (one: then it is not
     * free), its record taken back, and the free worker woken. */
    age(&f, 0, at - sent + 1);
    uint32_t seq1 = data_seq(&f, 1);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.2 1.3");
    CHECK_FLIGHT(&f, 1, "1.1");
    CHECK_PENDING(&f, "");
    CHECK_EQ(f.s.steals, 1);
    CHECK(data_seq(&f, 1) != seq1);
    /* The free worker runs it, its descriptor sent again; the first skips
     * the record taken back (and the descriptor sent with it). */
    CHECK_TAKE(&f, 1, -1, "1.1+");
    CHECK_ANSWER(&f, 1, "1.1");
    CHECK_ANSWER(&f, 0, "1.0");
    CHECK_TAKE(&f, 0, 1, "(1.1+)");
    /* A record its worker has claimed, not yet consumed, stays its own;
     * the next one goes. */
    const cp_rechdr *h = cp_ring_peek(ring(&f, 0));
    CHECK(h != NULL && h->idx == 2);
    CHECK(cp_claim((cp_rechdr *)h, CP_CLAIM_TAKEN));
    age(&f, 0, 1000 * MS);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_FLIGHT(&f, 0, "1.2");
    CHECK_FLIGHT(&f, 1, "1.3");
    CHECK_EQ(f.s.steals, 2);
    cp_ring_consume(ring(&f, 0), h);
    CHECK_TAKE(&f, 0, -1, "(1.3)");
    CHECK_TAKE(&f, 1, -1, "1.3");
    /* Nothing left to take back: none due. */
    CHECK_EQ(cp_sched_wake_at(&f.s), -1);
    fx_close(&f);

    /* Two free workers, one busy with four: each free one gets one. */
    fx_open(&f, 3, 4096, 0);
    f.s.task_ns = 1000;
    set_state(&f, 1, CP_S_FREE);
    set_state(&f, 2, CP_S_FREE);
    push_range(&f, 1, 0, 4, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "1.0");
    set_state(&f, 1, CP_S_READY);
    set_state(&f, 2, CP_S_READY);
    age(&f, 0, 1000 * MS);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_EQ(f.s.steals, 2);
    CHECK_FLIGHT(&f, 0, "1.0 1.3");
    CHECK_EQ(f.s.ws[1].n, 1);
    CHECK_EQ(f.s.ws[2].n, 1);
    CHECK_TAKE(&f, 0, -1, "(1.1) (1.2) 1.3");
    fx_close(&f);

    /* A task its worker runs is never taken back, though a later record
     * lies where its record was (the ring went round). */
    fx_open(&f, 2, 1024, 0);
    f.s.task_ns = 1000;
    set_state(&f, 1, CP_S_FREE);
    push_range(&f, 1, 0, 1, 40, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "1.0");
    fill_ring(&f, 0, 0);
    CHECK_TAKE(&f, 0, -1, "");
    push_range(&f, 1, 1, 2, 40, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1");
    CHECK_EQ(f.s.ws[0].head->next->pos % 1024, f.s.ws[0].head->pos % 1024);
    set_state(&f, 1, CP_S_READY);
    age(&f, 0, 1000 * MS);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_FLIGHT(&f, 0, "1.0");
    CHECK_FLIGHT(&f, 1, "1.1");
    CHECK_TAKE(&f, 0, -1, "(1.1)");
    fx_close(&f);

    /* A task taken back does not count toward its first worker's maxtasks. */
    fx_open(&f, 2, 4096, 2);
    f.s.task_ns = 1000;
    set_state(&f, 1, CP_S_FREE);
    push_range(&f, 1, 0, 2, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "1.0");
    set_state(&f, 1, CP_S_READY);
    age(&f, 0, 1000 * MS);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_FLIGHT(&f, 1, "1.1");
    set_state(&f, 1, CP_S_FREE);
    push_range(&f, 2, 0, 2, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 2.0"); /* its second */
    CHECK_PENDING(&f, "2.1");
    CHECK_TAKE(&f, 0, -1, "(1.1) 2.0");
    fx_close(&f);
}

/* ---- answers, outstanding, take_all ----------------------------------------- */

TEST(answered_pops_the_oldest_of_that_slot)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    CHECK_ANSWER(&f, 0, "-");
    CHECK_EQ(f.s.task_ns, -1); /* no answer: nothing learnt */
    f.s.task_ns = 1000;
    set_state(&f, 1, CP_S_FREE);
    push_range(&f, 1, 0, 3, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    set_state(&f, 1, CP_S_READY);
    push_range(&f, 1, 3, 5, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2");
    CHECK_FLIGHT(&f, 1, "1.3 1.4");
    CHECK_ANSWER(&f, 1, "1.3");
    CHECK_ANSWER(&f, 1, "1.4");
    CHECK_ANSWER(&f, 1, "-");
    CHECK_EQ(cp_sched_outstanding(&f.s), 1);
    CHECK_ANSWER(&f, 0, "1.0");
    CHECK_FLIGHT(&f, 0, "1.1 1.2");
    CHECK_ANSWER(&f, 0, "1.1");
    CHECK_ANSWER(&f, 0, "1.2");
    CHECK_FLIGHT(&f, 0, "");
    CHECK_EQ(cp_sched_outstanding(&f.s), 0);
    /* Queued with no live slot: outstanding too. */
    set_state(&f, 0, CP_S_FREE);
    set_state(&f, 1, CP_S_DEAD);
    push_range(&f, 2, 0, 1, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_EQ(cp_sched_outstanding(&f.s), 1);
    fx_close(&f);
}

TEST(take_all_returns_every_task_once)
{
    for (int inflight = 0; inflight < 2; inflight++) {
        fx f;
        fx_open(&f, 3, 4096, 0);
        f.psock[2] = -1;
        set_state(&f, 0, CP_S_FREE);
        set_state(&f, 1, CP_S_FREE);
        push(&f, seg_task_new(1, 0, 3000, NULL)); /* to slot 2: fails */
        push_range(&f, 1, 1, 8, 32, NULL);
        CHECK_EQ(dispatch_now(&f), 1);
        set_state(&f, 0, CP_S_READY);
        set_state(&f, 1, CP_S_READY);
        CHECK_EQ(dispatch_now(&f), 0);
        CHECK_LIST(f.s.failed, "1.0");
        CHECK_EQ(f.s.ws[0].n + f.s.ws[1].n + f.s.ws[2].n, 3);
        CHECK_PENDING(&f, "1.4 1.5 1.6 1.7");
        cp_task *all = cp_sched_take_all(&f.s, inflight);
        CHECK_PENDING(&f, "");
        CHECK(f.s.failed == NULL);
        if (inflight) {
            CHECK_SET(all, "1.0 1.1 1.2 1.3 1.4 1.5 1.6 1.7");
            for (int i = 0; i < 3; i++) CHECK_FLIGHT(&f, i, "");
            CHECK_EQ(cp_sched_outstanding(&f.s), 0);
        } else {
            CHECK_SET(all, "1.0 1.4 1.5 1.6 1.7");
            CHECK_EQ(f.s.ws[0].n + f.s.ws[1].n + f.s.ws[2].n, 3);
            CHECK_EQ(cp_sched_outstanding(&f.s), 1);
        }
        cp_free_list(f.ctl, all);
        push_range(&f, 2, 0, 1, 32, NULL); /* the queue works on */
        CHECK_PENDING(&f, "2.0");
        fx_close(&f);
    }
}

/* ---- a dead worker ---------------------------------------------------------- */

TEST(worker_lost_holds_what_it_took_and_requeues_the_rest_first)
{
    /* Tasks 1.1 and 1.3 are in segments: sent again, their descriptor
     * comes again. */
    for (int k = 0; k <= 4; k++) {
        fx f;
        fx_open(&f, 2, 4096, 0);
        set_state(&f, 1, CP_S_FREE);
        f.s.task_ns = 1000;
        for (uint32_t j = 0; j < 6; j++)
            push(&f, j % 2 ? seg_task_new(1, j, 2000, NULL) : task_new(1, j, 32, NULL));
        CHECK_EQ(dispatch_now(&f), 0);
        CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2 1.3");
        CHECK_PENDING(&f, "1.4 1.5");
        static const char *const took[] = {"", "1.0", "1.0 1.1+", "1.0 1.1+ 1.2",
                                           "1.0 1.1+ 1.2 1.3+"};
        CHECK_TAKE(&f, 0, k, took[k]);
        cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
        static const char *const h[] = {"", "1.0", "1.0 1.1", "1.0 1.1 1.2",
                                        "1.0 1.1 1.2 1.3"};
        static const char *const p[] = {"1.0 1.1 1.2 1.3 1.4 1.5", "1.1 1.2 1.3 1.4 1.5",
                                        "1.2 1.3 1.4 1.5", "1.3 1.4 1.5", "1.4 1.5"};
        CHECK_LIST(held, h[k]);
        for (cp_task *t = held; t != NULL; t = t->next) CHECK_EQ(t->held, 1);
        cp_free_list(f.ctl, held);
        CHECK_PENDING(&f, p[k]);
        CHECK_FLIGHT(&f, 0, "");
        CHECK_EQ(cp_sched_outstanding(&f.s), 1);
        push_range(&f, 2, 0, 1, 32, NULL); /* behind all of them */
        reset_slot(&f, 0);
        CHECK_EQ(dispatch_now(&f), 0);
        static const char *const again[] = {"1.0 1.1+ 1.2 1.3+", "1.1+ 1.2 1.3+ 1.4",
                                            "1.2 1.3+ 1.4 1.5+", "1.3+ 1.4 1.5+ 2.0",
                                            "1.4 1.5+ 2.0"};
        CHECK_TAKE(&f, 0, -1, again[k]);
        fx_close(&f);
    }

    /* Nothing pending before: the requeued ones make the queue, and its
     * tail is right. */
    fx f;
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 1000;
    push_range(&f, 1, 0, 3, 32, NULL);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "1.0");
    cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "1.0");
    cp_free_list(f.ctl, held);
    CHECK_PENDING(&f, "1.1 1.2");
    push_range(&f, 2, 0, 2, 32, NULL);
    CHECK_PENDING(&f, "1.1 1.2 2.0 2.1");
    /* Nothing in flight: nothing held, the queue as it was. */
    held = cp_sched_worker_lost(&f.s, 0, 0, NULL);
    CHECK(held == NULL);
    CHECK_PENDING(&f, "1.1 1.2 2.0 2.1");
    fx_close(&f);
}

TEST(a_task_that_may_run_again_goes_first_until_its_retries_are_spent)
{
    fx f;
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 1000;
    cp_task *a = task_new(1, 0, 32, NULL), *b = seg_task_new(1, 1, 2000, NULL);
    a->retries = 1;
    b->retries = 2;
    push(&f, a);
    push(&f, b);
    push_range(&f, 1, 2, 3, 32, NULL); /* 1.2: no retries, never taken */
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2");
    CHECK_TAKE(&f, 0, 2, "1.0 1.1+");
    /* Both taken, both may run again: nothing held, they go first. */
    CHECK(cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL) == NULL);
    CHECK_PENDING(&f, "1.0 1.1 1.2");
    CHECK_EQ(a->lost, 1);
    CHECK_EQ(a->held, 0);
    CHECK_EQ(f.s.retried, 2);
    reset_slot(&f, 0);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 2, "1.0 1.1+"); /* the segment comes again */
    /* 1.0's one retry is spent: held; 1.1 goes again. */
    cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "1.0");
    CHECK_EQ(held->lost, 2);
    CHECK_EQ(held->held, 1);
    cp_free_list(f.ctl, held);
    CHECK_PENDING(&f, "1.1 1.2");
    CHECK_EQ(f.s.retried, 3);
    CHECK_EQ(f.s.lost, 1);
    reset_slot(&f, 0);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "1.1+");
    held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "1.1");
    CHECK_EQ(held->lost, 3);
    cp_free_list(f.ctl, held);
    CHECK_PENDING(&f, "1.2");
    CHECK_EQ(f.s.lost, 2);
    reset_slot(&f, 0);
    fx_close(&f);
}

/* Give task t a time limit (task_timeout=), as submit.c does. */
static cp_task *timed(cp_task *t, uint64_t timeout_ns, uint64_t first_item)
{
    t->timing = malloc(sizeof *t->timing);
    CHECK(t->timing != NULL);
    *t->timing = (cp_timing){.timeout_ns = timeout_ns, .first_item = first_item};
    return t;
}

TEST(a_timed_task_travels_with_its_limit_and_is_taken_back_whole)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    f.s.task_ns = 1000;
    set_state(&f, 1, CP_S_FREE);
    push_range(&f, 1, 0, 1, 32, NULL);
    push(&f, timed(task_new(1, 1, 40, NULL), 500 * MS, 3));
    push(&f, timed(seg_task_new(1, 2, 2000, NULL), 7, 1));
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2");
    CHECK_TAKE(&f, 0, 1, "1.0"); /* it runs 1.0, for long */
    /* The record carries the limit ahead of the payload (take checks
     * both); stolen for a free worker, the record taken back is the whole
     * record: its worker's claim fails. */
    const cp_rechdr *h = cp_ring_peek(ring(&f, 0));
    CHECK(h != NULL && h->idx == 1 && (h->flags & CP_F_TIMED));
    CHECK_EQ(cp_timing_len(h), sizeof(cp_timing));
    set_state(&f, 1, CP_S_READY);
    age(&f, 0, 1000 * MS);
    CHECK_EQ(cp_sched_dispatch(&f.s), 0);
    CHECK_EQ(f.s.steals, 1);
    CHECK_EQ(__atomic_load_n(&h->claim, __ATOMIC_ACQUIRE), CP_CLAIM_REVOKED);
    CHECK_TAKE(&f, 0, -1, "(1.1) 1.2+");
    CHECK_TAKE(&f, 1, -1, "1.1");
    fx_close(&f);
}

TEST(a_task_killed_past_its_limit_is_not_lost)
{
    fx f;
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 1000;
    cp_blob *fn = blob_new(1, 24);
    cp_task *chunk = timed(task_new(1, 0, 32, fn), 100 * MS, 4);
    chunk->retries = 2;
    push(&f, chunk);
    push(&f, timed(task_new(2, 0, 32, NULL), 100 * MS, 0));
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 2, "F1 1.0");
    /* Killed running item 2 of chunk 1.0: the chunk goes first, to run
     * again without it; not lost, not a retry. */
    cp_tkill tk = {.job = 1, .idx = 0, .item = {.item = 2, .pid = 99, .elapsed_ns = 5}};
    CHECK(cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), &tk) == NULL);
    CHECK_PENDING(&f, "1.0 2.0");
    CHECK_EQ(chunk->timing->nskips, 1);
    CHECK(chunk->timing->skips[0].item == 2 && chunk->timing->skips[0].pid == 99 &&
          chunk->timing->skips[0].elapsed_ns == 5);
    CHECK(chunk->lost == 0 && f.s.lost == 0 && f.s.retried == 0);
    reset_slot(&f, 0);
    /* Again, killed running item 3: both skipped; the apply after it,
     * killed past its limit, is held, marked, not counted lost. */
    CHECK_EQ(dispatch_now(&f), 0);
    const cp_rechdr *h = cp_ring_peek(ring(&f, 0));
    CHECK(h != NULL && h->kind == CP_K_FUNC);
    CHECK_TAKE(&f, 0, 2, "F1 1.0");
    tk.item.item = 3;
    CHECK(cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), &tk) == NULL);
    CHECK_EQ(chunk->timing->nskips, 2);
    reset_slot(&f, 0);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 3, "F1 1.0 2.0");
    cp_tkill tk2 = {.job = 2, .idx = 0, .item = {.item = UINT32_MAX, .pid = 98}};
    cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), &tk2);
    CHECK_LIST(held, "2.0");
    CHECK(held->timed_out == 1 && held->lost == 0);
    cp_free_list(f.ctl, held);
    /* ...and 1.0, lost this time (not the one killed for its limit), may
     * run again: it has retries left. */
    CHECK_PENDING(&f, "1.0");
    CHECK(chunk->lost == 1 && chunk->timed_out == 0);
    CHECK(f.s.lost == 0 && f.s.retried == 1);
    reset_slot(&f, 0);
    cp_blob_decref(fn);
    fx_close(&f);
}

TEST(a_function_that_kills_its_worker_fails_one_task_then_its_job)
{
    fx f;
    fx_open(&f, 2, 4096, 0);
    set_state(&f, 1, CP_S_FREE);
    f.s.task_ns = 1000;
    cp_blob *j = blob_new(1, 100);
    push_range(&f, 1, 0, 3, 32, j);
    push_range(&f, 2, 0, 2, 32, NULL);
    push_range(&f, 1, 3, 5, 32, j);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1 1.2 2.0");
    CHECK_PENDING(&f, "2.1 1.3 1.4");
    /* It took the function and died: the task after it is held (not
     * taken), the rest go first again. */
    CHECK_TAKE(&f, 0, 1, "F1");
    cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "1.0");
    CHECK_EQ(held->held, 0);
    cp_free_list(f.ctl, held);
    CHECK_PENDING(&f, "1.1 1.2 2.0 2.1 1.3 1.4");
    reset_slot(&f, 0);
    set_state(&f, 0, CP_S_SPAWN_REQ);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "F1");
    CHECK_FLIGHT(&f, 0, "1.1 1.2 2.0 2.1");
    /* Twice: all of job 1's tasks are returned; job 2's wait, in order. */
    held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_SET(held, "1.1 1.2 1.3 1.4");
    for (cp_task *t = held; t != NULL; t = t->next) CHECK_EQ(t->held, 0);
    cp_free_list(f.ctl, held);
    CHECK_PENDING(&f, "2.0 2.1");
    push_range(&f, 3, 0, 1, 32, NULL);
    CHECK_PENDING(&f, "2.0 2.1 3.0");
    reset_slot(&f, 0);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, -1, "2.0 2.1 3.0");
    for (int k = 0; k < 3; k++) answer(&f, 0);

    /* A worker that died past the function (in a task) is no such death:
     * the next one that dies on it fails one task only. */
    cp_blob *k5 = blob_new(5, 100);
    push_range(&f, 5, 0, 4, 32, k5);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 2, "F5 5.0");
    held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "5.0");
    CHECK_EQ(held->held, 1);
    cp_free_list(f.ctl, held);
    reset_slot(&f, 0);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "F5");
    held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "5.1");
    cp_free_list(f.ctl, held);
    CHECK_PENDING(&f, "5.2 5.3");
    reset_slot(&f, 0);
    /* A worker that died before taking anything: nothing held. */
    CHECK_EQ(dispatch_now(&f), 0);
    held = cp_sched_worker_lost(&f.s, 0, 0, NULL);
    CHECK(held == NULL);
    CHECK_PENDING(&f, "5.2 5.3");
    cp_blob_decref(j);
    cp_blob_decref(k5);
    fx_close(&f);
}

/* ---- fini -------------------------------------------------------------------- */

TEST(fini_frees_every_task_and_closes_every_segment)
{
    fx f;
    fx_open(&f, 3, 1024, 0);
    int fds = ct_open_fds();
    f.s.task_ns = 1000;
    f.psock[2] = -1;
    set_state(&f, 1, CP_S_FREE);
    set_state(&f, 2, CP_S_FREE);
    cp_blob *big = blob_new(1, 3000);
    /* A task in a recycled segment: given back to the recycler. */
    int rfds[CP_RECY_TASKS];
    for (int k = 0; k < CP_RECY_TASKS; k++) rfds[k] = -1;
    cp_segdest rd = {.recy = f.ctl->task_recy, .nrecy = CP_RECY_TASKS, .fds = rfds};
    char buf[600];
    fill_payload(buf, sizeof buf, 9, 0);
    struct iovec piece = {.iov_base = buf, .iov_len = sizeof buf};
    cp_task *rt = task_new(9, 0, 16, NULL);
    rt->len = 0;
    CHECK_SYS(cp_seg_write(&rd, &piece, 1, 0, &rt->seg));
    CHECK(rt->seg.recy >= 0);
    rt->has_seg = 1;
    int recy = rt->seg.recy;
    CHECK_EQ(atomic_load(&f.ctl->task_recy[recy].state), CP_RECY_BUSY);
    /* In flight on slot 0: a large function's segment and a task's. */
    push(&f, task_new(1, 0, 32, big));
    push(&f, seg_task_new(1, 1, 2000, big));
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_FLIGHT(&f, 0, "1.0 1.1");
    /* Failed on slot 2, and pending. */
    set_state(&f, 0, CP_S_FREE);
    set_state(&f, 2, CP_S_READY);
    push(&f, seg_task_new(2, 0, 2000, NULL));
    CHECK_EQ(dispatch_now(&f), 1);
    set_state(&f, 2, CP_S_FREE);
    push(&f, seg_task_new(3, 0, 2000, NULL));
    push(&f, task_new(3, 1, 32, big));
    push(&f, rt);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_PENDING(&f, "3.0 3.1 9.0");
    CHECK_EQ(ct_open_fds(), fds + 1 + 3 + 1); /* the FUNC's, 3 tasks', the recycler's */
    CHECK_EQ(atomic_load(&big->refs), 4);
    cp_sched_fini(&f.s, 1);
    CHECK_EQ(ct_open_fds(), fds + 1); /* the recycler keeps its file */
    CHECK_EQ(atomic_load(&f.ctl->task_recy[recy].state), CP_RECY_FREE);
    CHECK_EQ(atomic_load(&big->refs), 1);
    CHECK(f.s.ws == NULL);
    close(rfds[recy]);
    cp_blob_decref(big);
    /* fx_close's fini finds nothing left (a second fini is harmless). */
    fx_close(&f);
}

/* ---- the model: random pushes, dispatches, answers and deaths ------------------
 *
 * Three slots whose workers behave as worker.c's: take a record, run it,
 * post its result before taking the next (the collector answers it then),
 * and may die at any point, or before they start.  The model knows each
 * task's state (pending in an order, in flight on a slot in ring order,
 * answered, held by a dead worker, failed, taken by take_all) and checks
 * after every step that the scheduler's lists say the same; a dispatch
 * takes a prefix of the queue, appends each taken task to one slot's list
 * or fails it (only where a socket is broken), and stops only when no slot
 * could take the next task.  At the end take_all returns what is left:
 * every task once, none lost, none twice. */

#define M_SLOTS 3
#define M_MAX 96 /* tasks alive at once */
#define M_JOBS 512

enum { M_NONE, M_PEND, M_FLIGHT, M_ANSWERED, M_HELD, M_FAILED, M_GONE };

typedef struct {
    fx f;
    uint64_t rng, maxtasks;
    /* per task (idx is its id, unique; job one of a few live ones) */
    cp_task **t;
    uint64_t *job;
    unsigned char *state;
    uint32_t ntasks, cap;
    /* the model's lists */
    uint32_t pend[M_MAX];
    int npend;
    uint32_t fl[M_SLOTS][M_MAX];
    int nfl[M_SLOTS];
    /* each slot's worker */
    uint32_t st[M_SLOTS];
    int taken[M_SLOTS];        /* of fl[]: 0 or 1 (the one it runs) */
    uint64_t wfunc[M_SLOTS];   /* the job whose function it holds, 0 none */
    int last_func[M_SLOTS];    /* the last record it took was a FUNC */
    uint64_t sent[M_SLOTS];    /* tasks sent to this incarnation */
    int broken[M_SLOTS];       /* its psock is -1 */
    uint64_t death_job;
    /* jobs */
    cp_blob *blob[M_JOBS];
    uint64_t live_jobs[4], next_job;
    /* counts */
    int alive, answered, held, failed, deaths, func_deaths, job_fails, dispatches;
} model;

static uint32_t m_rand(model *m, uint32_t n) { return (uint32_t)(ct_rand(&m->rng) % n); }

/* The most tasks slot i may hold (dispatch.c's rule): 4 while tasks are
 * short, else 1, or 2 when the second is the next chunk of the first's job,
 * both large, or tasks measured long and npend queued (the second among
 * them) more than the workers (started_ns stays 0 in the model: never
 * running long). */
static int m_depth(const cp_sched *s, int i, const cp_task *first, const cp_task *second,
                   int npend)
{
    if (s->task_ns >= 0 && s->task_ns < 1 * MS) return 4;
    if (first == NULL || second == NULL || s->ws[i].stalled ||
        second->job != first->job || first->items == 0)
        return 1;
    if (first->items >= DEEP && second->items >= DEEP) return 2;
    return s->task_ns >= 1 * MS && npend > M_SLOTS ? 2 : 1;
}

static cp_task *m_task(model *m, uint32_t id) { return m->t[id]; }

static void m_new_job(model *m, int slot)
{
    uint64_t j = ++m->next_job;
    CHECK(j < M_JOBS);
    m->live_jobs[slot] = j;
    /* j % 3: a CALL job (no function), an inline function, a large one */
    if (j % 3 == 1) m->blob[j] = blob_new(j, 16 + m_rand(m, 200));
    else if (j % 3 == 2) m->blob[j] = blob_new(j, 300 + m_rand(m, 3000));
}

static void m_push(model *m)
{
    int n = 1 + (int)m_rand(m, 3);
    if (m->alive + n > M_MAX) return;
    if (m_rand(m, 16) == 0) m_new_job(m, (int)m_rand(m, 4));
    uint64_t job = m->live_jobs[m_rand(m, 4)];
    cp_task *first = NULL, *last = NULL;
    for (int k = 0; k < n; k++) {
        if (m->ntasks == m->cap) {
            m->cap = m->cap ? 2 * m->cap : 1024;
            m->t = realloc(m->t, m->cap * sizeof *m->t);
            m->job = realloc(m->job, m->cap * sizeof *m->job);
            m->state = realloc(m->state, m->cap);
            CHECK(m->t && m->job && m->state);
        }
        uint32_t id = m->ntasks++;
        cp_task *t = m_rand(m, 5) == 0
                         ? seg_task_new(job, id, 300 + m_rand(m, 2000), m->blob[job])
                         : task_new(job, id, 16 + m_rand(m, 240), m->blob[job]);
        if (m->blob[job] != NULL && job % 2 == 0) t->items = DEEP; /* large chunks */
        m->t[id] = t;
        m->job[id] = job;
        m->state[id] = M_PEND;
        m->pend[m->npend++] = id;
        m->alive++;
        if (last) last->next = t;
        else first = t;
        last = t;
    }
    cp_sched_push(&m->f.s, first, last, (size_t)n);
}

/* The scheduler's lists are the model's. */
static void m_check(model *m)
{
    cp_sched *s = &m->f.s;
    int k = 0;
    for (cp_task *t = s->pend_head; t != NULL; t = t->next, k++) {
        CHECK(k < m->npend);
        CHECK_EQ(t->idx, m->pend[k]);
    }
    CHECK_EQ(k, m->npend);
    CHECK_EQ(s->npend, (size_t)m->npend);
    CHECK(s->pend_tail == (m->npend ? m_task(m, m->pend[m->npend - 1]) : NULL));
    for (int i = 0; i < M_SLOTS; i++) {
        k = 0;
        for (cp_task *t = s->ws[i].head; t != NULL; t = t->next, k++) {
            CHECK(k < m->nfl[i]);
            CHECK_EQ(t->idx, m->fl[i][k]);
        }
        CHECK_EQ(k, m->nfl[i]);
        CHECK_EQ(s->ws[i].n, m->nfl[i]);
        CHECK(s->ws[i].tail == (k ? m_task(m, m->fl[i][k - 1]) : NULL));
    }
    k = 0;
    for (cp_task *t = s->failed; t != NULL; t = t->next, k++)
        CHECK_EQ(m->state[t->idx], M_FAILED);
    CHECK_EQ(k, m->failed);
    CHECK_EQ(cp_sched_outstanding(s),
             m->npend > 0 || m->nfl[0] || m->nfl[1] || m->nfl[2]);
}

static int m_accepting(uint32_t st)
{
    return st == CP_S_SPAWN_REQ || st == CP_S_SPAWNED || st == CP_S_READY;
}

/* Payload bytes of t's record, and of its FUNC record (0: none). */
static size_t rec_size(const cp_task *t)
{
    return t->has_seg ? sizeof(cp_segref) : t->len;
}
static size_t func_size(const cp_task *t, size_t imax)
{
    if (t->func == NULL) return 0;
    return t->func->len > imax ? sizeof(cp_segref) : t->func->len;
}

static void m_dispatch(model *m)
{
    fx *f = &m->f;
    cp_sched *s = &f->s;
    uint64_t tail0[M_SLOTS];
    uint32_t seq0[M_SLOTS];
    int nfl0[M_SLOTS];
    for (int i = 0; i < M_SLOTS; i++) {
        tail0[i] = cp_ring_tail(ring(f, i));
        seq0[i] = data_seq(f, i);
        nfl0[i] = m->nfl[i];
    }
    /* The model's clock: no time passes for a task in a ring (what
     * dispatch.c learns from time, the model decides: m_answer), so that a
     * seed replays the same steps. */
    int64_t now = cp_now_ns();
    for (int i = 0; i < M_SLOTS; i++)
        for (cp_task *t = s->ws[i].head; t != NULL; t = t->next) t->sent_ns = now;
    int rc = cp_sched_dispatch(s);
    m->dispatches++;
    /* The queue left is a suffix of the one before: the prefix was taken. */
    int left = list_len(s->pend_head), ntaken = m->npend - left;
    CHECK(ntaken >= 0);
    uint32_t prefix[M_MAX];
    memcpy(prefix, m->pend, (size_t)ntaken * sizeof prefix[0]);
    memmove(m->pend, m->pend + ntaken, (size_t)left * sizeof m->pend[0]);
    m->npend = left;
    /* Each taken task went to one slot's list (after what it had, in queue
     * order) or failed. */
    unsigned char where[M_MAX];
    memset(where, 0, sizeof where);
    for (int i = 0; i < M_SLOTS; i++) {
        int k = 0, pos = -1;
        for (cp_task *t = s->ws[i].head; t != NULL; t = t->next, k++) {
            if (k < nfl0[i]) continue; /* m_check below compares these */
            int p = 0;
            while (p < ntaken && prefix[p] != t->idx) p++;
            if (p == ntaken)
                ct_fail(__FILE__, __LINE__,
                        "task %u on slot %d was not at the queue's head", t->idx, i);
            CHECK(p > pos); /* in queue order */
            pos = p;
            CHECK(where[p] == 0);
            where[p] = 1;
            CHECK(k < M_MAX);
            m->fl[i][k] = t->idx;
            m->state[t->idx] = M_FLIGHT;
            m->sent[i]++;
            CHECK(t->end_pos <= cp_ring_tail(ring(f, i)));
        }
        m->nfl[i] = k;
        /* Only a worker given records is woken. */
        int put = cp_ring_tail(ring(f, i)) != tail0[i];
        CHECK_EQ(data_seq(f, i) != seq0[i], put);
        if (m->nfl[i] > nfl0[i]) CHECK(put);
        /* Only to a live slot, within its depth and its maxtasks. */
        if (m->nfl[i] > nfl0[i]) {
            /* The queue when the second was its head (taken now, or before
             * this dispatch: then the whole queue is an upper bound). */
            const cp_task *second = s->ws[i].head->next;
            int p2 = 0;
            while (second != NULL && p2 < ntaken && prefix[p2] != second->idx) p2++;
            if (p2 == ntaken) p2 = 0;
            int depth = m_depth(s, i, s->ws[i].head, second, ntaken + left - p2);
            CHECK(m_accepting(m->st[i]));
            CHECK(m->nfl[i] <= depth);
            CHECK(m->maxtasks == 0 || m->sent[i] <= m->maxtasks);
        }
    }
    int newly_failed = 0, any_broken = m->broken[0] || m->broken[1] || m->broken[2];
    size_t imax = cp_ring_inline_max(ring(f, 0));
    for (cp_task *t = s->failed; t != NULL; t = t->next) {
        if (m->state[t->idx] == M_FAILED) continue;
        int p = 0;
        while (p < ntaken && prefix[p] != t->idx) p++;
        CHECK(p < ntaken && where[p] == 0);
        where[p] = 1;
        /* Only a task that needed a broken socket. */
        CHECK(any_broken);
        CHECK_EQ(t->err, EBADF);
        CHECK(t->has_seg || (t->func != NULL && t->func->len > imax));
        m->state[t->idx] = M_FAILED;
        m->failed++;
        newly_failed++;
    }
    for (int p = 0; p < ntaken; p++) CHECK(where[p] == 1); /* nothing lost */
    CHECK_EQ(rc, newly_failed > 0);
    /* It stopped only when no slot could take the next task: each slot is
     * not live, at its depth or its maxtasks, or its ring lacks room for a
     * record it was asked to take (this task's or a taken one's; a ring
     * only fills during a dispatch). */
    if (left > 0) {
        for (int i = 0; i < M_SLOTS; i++) {
            int depth = m_depth(s, i, s->ws[i].head, m_task(m, m->pend[0]), left);
            if (!m_accepting(m->st[i]) || m->nfl[i] >= depth) continue;
            if (m->maxtasks && m->sent[i] >= m->maxtasks) continue;
            cp_ring *r = ring(f, i);
            int no_room = 0;
            for (int p = -1; p < ntaken && !no_room; p++) {
                const cp_task *t = m_task(m, p < 0 ? m->pend[0] : prefix[p]);
                size_t fs = func_size(t, imax);
                /* (each record leaves room for a STOP behind it) */
                no_room = !cp_ring_fits(r, rec_size(t) + CP_STOP_ROOM) ||
                          (fs && !cp_ring_fits(r, fs + CP_STOP_ROOM));
            }
            if (!no_room)
                ct_fail(__FILE__, __LINE__,
                        "task %u left queued while slot %d (%d in flight) had room",
                        m->pend[0], i, m->nfl[i]);
        }
    }
    m_check(m);
}

static void m_death(model *m, int i);

/* Slot i's worker takes its next record, if it runs nothing. */
static void m_work(model *m, int i)
{
    if (m->st[i] != CP_S_SPAWNED && m->st[i] != CP_S_READY) return;
    if (m->taken[i] > 0) return; /* it runs one: its result comes first */
    cp_ring *r = ring(&m->f, i);
    const cp_rechdr *h = cp_ring_peek(r);
    if (h == NULL) {
        CHECK_EQ(m->nfl[i], 0); /* every task sent has its record */
        return;
    }
    int large = (h->flags & CP_F_LARGE) != 0;
    if (h->kind == CP_K_FUNC) {
        /* Once per job and worker, before the job's first task there. */
        CHECK(h->job != m->wfunc[i]);
        if (large) check_segment(&m->f, i, h, h->job, FUNC_IDX);
        else CHECK(payload_ok(h + 1, h->len, h->job, FUNC_IDX));
        m->wfunc[i] = h->job;
        m->last_func[i] = 1;
        cp_ring_consume(r, h);
        if (m_rand(m, 6) == 0) m_death(m, i); /* loading it killed the worker */
        return;
    }
    CHECK(m->nfl[i] > 0);
    uint32_t id = m->fl[i][0];
    cp_task *t = m_task(m, id);
    CHECK(cp_claim((cp_rechdr *)h, CP_CLAIM_TAKEN)); /* none taken back here */
    CHECK_EQ(h->job, m->job[id]);
    CHECK_EQ(h->idx, id);
    CHECK_EQ(h->kind, t->kind);
    if (t->func != NULL) CHECK_EQ(m->wfunc[i], h->job); /* its function came first */
    if (large) check_segment(&m->f, i, h, h->job, id);
    else CHECK(payload_ok(h + 1, h->len, h->job, id));
    CHECK_EQ(large, t->has_seg);
    cp_ring_consume(r, h);
    CHECK_EQ(cp_ring_head(r), t->end_pos);
    m->taken[i] = 1;
    m->last_func[i] = 0;
}

/* The collector reads slot i's result: its running task is answered. */
static void m_answer(model *m, int i)
{
    if (m->nfl[i] == 0) {
        CHECK(cp_sched_answered(&m->f.s, i) == NULL);
        return;
    }
    if (m->taken[i] == 0 || m->st[i] == CP_S_DEAD) return;
    uint32_t id = m->fl[i][0];
    cp_task *t = cp_sched_answered(&m->f.s, i);
    CHECK(t == m_task(m, id));
    CHECK(t->next == NULL);
    CHECK(m->f.s.task_ns >= 0);
    /* What it learnt depends on the clock: the model decides instead (short
     * mostly), so that a seed replays the same steps. */
    m->f.s.task_ns = m_rand(m, 8) ? 50000 : 2 * MS;
    memmove(m->fl[i], m->fl[i] + 1, (size_t)(--m->nfl[i]) * sizeof m->fl[i][0]);
    m->taken[i] = 0;
    m->state[id] = M_ANSWERED;
    m->t[id] = NULL;
    m->answered++;
    m->alive--;
    t->held = 1;
    cp_free_list(m->f.ctl, t);
    m_check(m);
}

/* Descriptors: the segments of the tasks alive, and the FUNC segments not
 * yet loaded (none of a dead worker's). */
static void m_check_fds(model *m)
{
    int want = m->f.fds0 + 2 * M_SLOTS; /* the socketpairs */
    for (uint32_t id = 0; id < m->ntasks; id++)
        if (m->t[id] != NULL && m->t[id]->has_seg) want++;
    for (int i = 0; i < M_SLOTS; i++)
        for (int j = 0; j < m->f.s.ws[i].nfuncs; j++)
            want += m->f.s.ws[i].funcs[j].fd >= 0;
    CHECK_EQ(ct_open_fds(), want);
}

/* Slot i's worker dies: held = what it took (and the FUNC rule's); the rest
 * first in the queue, in order. */
static void m_death(model *m, int i)
{
    fx *f = &m->f;
    cp_sched *s = &f->s;
    uint64_t head = cp_ring_head(ring(f, i));
    int k = m->taken[i];
    /* Expected: the taken ones held (held=1); with the function's record
     * taken last, the task after it held too (held=0); the second time for
     * a job, all of the job's queued tasks. */
    unsigned char want_held[M_MAX], want_flag[M_MAX];
    memset(want_held, 0, sizeof want_held);
    memset(want_flag, 0, sizeof want_flag);
    for (int j = 0; j < k; j++) want_held[j] = want_flag[j] = 1;
    uint64_t fj = 0;
    if (m->last_func[i]) {
        /* The task whose function's record it took: the job's first one
         * in flight (the others before it go again). */
        CHECK_EQ(k, 0);
        for (int j = 0; j < m->nfl[i]; j++) {
            if (m->job[m->fl[i][j]] != m->wfunc[i]) continue;
            fj = m->wfunc[i];
            want_held[j] = 1;
            want_flag[j] = 0;
            break;
        }
    }
    int second = fj != 0 && m->death_job == fj;
    if (fj != 0) {
        m->death_job = fj;
        m->func_deaths++;
    }
    cp_task *held = cp_sched_worker_lost(s, i, head, NULL);
    m->deaths++;
    CHECK_EQ(s->ws[i].nfuncs, 0); /* its FUNC records forgotten, segments closed */
    /* the new queue: the unheld ones of fl, then the old queue */
    uint32_t q[2 * M_MAX];
    int nq = 0, nheld = 0;
    for (int j = 0; j < m->nfl[i]; j++) {
        uint32_t id = m->fl[i][j];
        if (want_held[j] || (second && m->job[id] == fj)) {
            m->state[id] = M_HELD;
            if (!want_held[j]) want_flag[j] = 0;
            nheld++;
        } else {
            q[nq++] = id;
        }
    }
    for (int j = 0; j < m->npend; j++) {
        uint32_t id = m->pend[j];
        if (second && m->job[id] == fj) {
            m->state[id] = M_HELD;
            nheld++;
        } else {
            q[nq++] = id;
        }
    }
    if (second) m->job_fails++;
    CHECK(nq <= M_MAX);
    int got = 0;
    for (cp_task *t = held, *next; t != NULL; t = next, got++) {
        next = t->next;
        uint32_t id = t->idx;
        if (m->state[id] != M_HELD)
            ct_fail(__FILE__, __LINE__, "slot %d died: task %u returned as held", i, id);
        int j = 0;
        while (j < m->nfl[i] && m->fl[i][j] != id) j++;
        CHECK_EQ(t->held, j < m->nfl[i] ? want_flag[j] : 0);
        m->t[id] = NULL;
        m->alive--;
        m->held++;
        t->next = NULL;
        cp_free_list(f->ctl, t);
    }
    CHECK_EQ(got, nheld);
    memcpy(m->pend, q, (size_t)nq * sizeof q[0]);
    m->npend = nq;
    for (int j = 0; j < nq; j++) m->state[q[j]] = M_PEND;
    m->nfl[i] = 0;
    m->taken[i] = 0;
    m->wfunc[i] = 0;
    m->last_func[i] = 0;
    m->sent[i] = 0;
    reset_slot(f, i);
    m->st[i] = m_rand(m, 4) ? CP_S_SPAWN_REQ : CP_S_FREE;
    set_state(f, i, m->st[i]);
    m_check(m);
    m_check_fds(m);
}

/* The pool fails what could not be sent and what is queued. */
static void m_take_all(model *m, int inflight)
{
    cp_task *all = cp_sched_take_all(&m->f.s, inflight);
    int want = m->failed + m->npend, got = 0;
    for (int i = 0; inflight && i < M_SLOTS; i++) want += m->nfl[i];
    for (cp_task *t = all; t != NULL; t = t->next, got++) {
        unsigned char st = m->state[t->idx];
        CHECK(st == M_FAILED || st == M_PEND || (inflight && st == M_FLIGHT));
        m->state[t->idx] = M_GONE; /* a second time would fail the check above */
        m->t[t->idx] = NULL;
    }
    CHECK_EQ(got, want);
    m->alive -= got;
    cp_free_list(m->f.ctl, all);
    m->failed = 0;
    m->npend = 0;
    for (int i = 0; inflight && i < M_SLOTS; i++) m->nfl[i] = m->taken[i] = 0;
    m_check(m);
    m_check_fds(m);
}

static void m_run(uint64_t seed, uint64_t maxtasks, int steps)
{
    model *m = calloc(1, sizeof *m);
    CHECK(m != NULL);
    m->rng = seed;
    m->maxtasks = maxtasks;
    fx_open(&m->f, M_SLOTS, 1024, maxtasks);
    for (int i = 0; i < M_SLOTS; i++) {
        m->st[i] = CP_S_READY;
        m->f.psock[i] = m->f.parent[i];
    }
    for (int j = 0; j < 4; j++) m_new_job(m, j);
    for (int step = 0; step < steps; step++) {
        int i = (int)m_rand(m, M_SLOTS);
        uint32_t r = m_rand(m, 1000);
        if (r < 40) m_push(m);
        else if (r < 250) m_dispatch(m);
        else if (r < 590) m_work(m, i);
        else if (r < 900) m_answer(m, i);
        else if (r < 915) {
            /* a worker dies: the template reaps it (DEAD), then the
             * collector handles the death; or both at once */
            if (m->st[i] == CP_S_DEAD || (m->st[i] != CP_S_FREE && m_rand(m, 2))) {
                m_death(m, i);
            } else if (m->st[i] != CP_S_FREE) {
                m->st[i] = CP_S_DEAD;
                set_state(&m->f, i, CP_S_DEAD);
            }
        } else if (r < 975) {
            /* life of a slot: spawned, ready; retired when idle; wanted */
            uint32_t st = m->st[i];
            if (m->maxtasks && m->sent[i] >= m->maxtasks && m->nfl[i] == 0 &&
                st != CP_S_FREE) {
                m_death(m, i); /* it exits after its last task */
                continue;
            }
            if (st == CP_S_SPAWN_REQ) st = CP_S_SPAWNED;
            else if (st == CP_S_SPAWNED) st = CP_S_READY;
            else if (st == CP_S_READY && m->nfl[i] == 0 && m_rand(m, 4) == 0)
                st = CP_S_FREE;
            else if (st == CP_S_FREE) st = CP_S_SPAWN_REQ;
            m->st[i] = st;
            set_state(&m->f, i, st);
        } else if (r < 985) {
            /* a slot's socket breaks (EBADF), or is mended */
            m->broken[i] = !m->broken[i];
            m->f.psock[i] = m->broken[i] ? -1 : m->f.parent[i];
        } else if (r < 995) {
            /* what the scheduler learnt: tasks long, or unknown */
            m->f.s.task_ns = m_rand(m, 2) ? -1 : 2 * MS;
        } else if (r < 997) {
            m_take_all(m, 0);
        } else {
            m_check(m);
        }
    }
    /* The end: every task answered, held by a dead worker, failed and
     * taken, or still there for take_all: once each. */
    int left = m->alive;
    m_take_all(m, 1);
    CHECK_EQ(m->alive, 0);
    int by_state[M_GONE + 1] = {0};
    for (uint32_t id = 0; id < m->ntasks; id++) by_state[m->state[id]]++;
    CHECK_EQ(by_state[M_ANSWERED], m->answered);
    CHECK_EQ(by_state[M_HELD], m->held);
    CHECK_EQ(by_state[M_PEND] + by_state[M_FLIGHT] + by_state[M_FAILED], 0);
    CHECK_EQ(by_state[M_ANSWERED] + by_state[M_HELD] + by_state[M_GONE], (int)m->ntasks);
    printf("     (seed %#llx, maxtasks %llu: %u tasks, %d answered, %d held, %d "
           "taken, %d left at the end; %d dispatches, %d deaths, %d by a "
           "function, %d jobs failed whole)\n",
           (unsigned long long)seed, (unsigned long long)maxtasks, m->ntasks, m->answered,
           m->held, by_state[M_GONE] - left, left, m->dispatches, m->deaths,
           m->func_deaths, m->job_fails);
    for (uint64_t j = 0; j < M_JOBS; j++) {
        if (m->blob[j] == NULL) continue;
        CHECK_EQ(atomic_load(&m->blob[j]->refs), 1); /* every task let go */
        cp_blob_decref(m->blob[j]);
    }
    fx_close(&m->f);
    free(m->t);
    free(m->job);
    free(m->state);
    free(m);
}

TEST(model_random_pushes_dispatches_answers_and_deaths)
{
    m_run(0xd15a7c4, 0, 20000);
    m_run(0xfeed5, 5, 10000);
}

/* ---- a worker killed loading a function --------------------------------------
 *
 * cp_sched_worker_lost's FUNC rule: the FUNC record a worker consumed last
 * belongs to the first task of its job after it, wherever the last FUNC
 * record put lies, and no other task is held with it.  (Both were bugs:
 * the rule once looked at the last FUNC record put only, and held every
 * task up to the job's.) */

/* A function that kills its worker when loaded, followed in the ring by
 * another job's FUNC record (depth 4, short tasks): the death is the
 * function's (else its task went first again, with its function, to the
 * next worker, which died the same way: a respawn loop; seen from Python:
 * Pool(1), a few quick maps, then map_async(evil, [1]) and
 * map_async(abs, range(10))). */
TEST(a_later_func_record_does_not_hide_a_func_death)
{
    fx f;
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 1000;
    cp_blob *evil = blob_new(1, 100), *good = blob_new(2, 100);
    push_range(&f, 1, 0, 1, 32, evil);
    push_range(&f, 2, 0, 3, 32, good);
    CHECK_EQ(dispatch_now(&f), 0);
    CHECK_TAKE(&f, 0, 1, "F1"); /* loading it kills the worker */
    cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "1.0");
    CHECK_PENDING(&f, "2.0 2.1 2.2");
    cp_free_list(f.ctl, held);
    cp_blob_decref(evil);
    cp_blob_decref(good);
    fx_close(&f);
}

/* The task after a FUNC record could not be sent (or did not fit): the
 * next record is another job's task, never taken: it is sent again, not
 * failed with the worker. */
TEST(a_func_death_holds_no_untaken_task_of_another_job)
{
    fx f;
    fx_open(&f, 1, 4096, 0);
    f.s.task_ns = 1000;
    cp_blob *evil = blob_new(1, 100);
    f.psock[0] = -1;
    push(&f, seg_task_new(1, 0, 2000, evil)); /* FUNC put, then EBADF */
    push(&f, task_new(2, 0, 32, NULL));
    push(&f, task_new(1, 1, 32, evil));
    CHECK_EQ(dispatch_now(&f), 1);
    CHECK_LIST(f.s.failed, "1.0");
    CHECK_FLIGHT(&f, 0, "2.0 1.1");
    CHECK_TAKE(&f, 0, 1, "F1");
    cp_task *held = cp_sched_worker_lost(&f.s, 0, cp_ring_head(ring(&f, 0)), NULL);
    CHECK_LIST(held, "1.1");
    CHECK_PENDING(&f, "2.0"); /* never taken: sent again */
    cp_free_list(f.ctl, held);
    cp_blob_decref(evil);
    fx_close(&f);
}

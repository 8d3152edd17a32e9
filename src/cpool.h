/* cpool.h: the one internal header of cpool._cpool.
 *
 * Every C file includes it.  It declares the shared-memory layout (the control
 * segment, its worker slots and rings), the record format that travels through
 * the rings, and the cp_* functions that cross file boundaries.  Files that do
 * not touch Python (shm.c, sync.c, ring.c) only need the part above the
 * CP_NEED_PYTHON line.
 */
#ifndef CPOOL_H
#define CPOOL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* as pyconfig.h defines it: no redefinition */
#endif
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>

/* Linux 5.14's; older kernels say EINVAL to it (every use is best effort). */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

#define CP_HIDDEN __attribute__((visibility("hidden")))

/* Constants both languages use are defined here once; the module exports
 * them (module.c) and the package reads them from there. */

/* An object holding a buffer this large goes out of band (_cpool.OOB_MIN). */
#define CP_OOB_MIN (64 * 1024)
/* Descriptors an exec'ed template is given (_cpool.TEMPLATE_FD_*): the
 * control segment, the request eventfd, the boot memfd cpool/_template.py
 * writes, then one socket per worker slot, then the rest _template.py
 * asks for. */
#define CP_TFD_CTL 3
#define CP_TFD_EVENT 4
#define CP_TFD_BOOT 5
#define CP_TFD_SOCKS 6
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* older libc headers */
#endif

/* Debug trace, switched on by CPOOL_DEBUG=1 in the environment; free when off. */
extern int cp_debug_enabled;
#define CP_DEBUG(...)                                                                    \
    do {                                                                                 \
        if (cp_debug_enabled) cp_debug_print(__VA_ARGS__);                               \
    } while (0)
CP_HIDDEN void cp_debug_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- sync.c: futex-backed wake-up channels ----------------------------- */

/* A wake-up channel in shared memory.  `seq` is the futex word, bumped on
 * every signal; `waiters` counts sleepers so a signal costs no system call
 * when nobody sleeps.  Both are sequentially consistent: the waiter writes
 * `waiters` then reads the condition, the signaller writes the condition then
 * reads `waiters`, so one of them always sees the other (no lost wake-up). */
typedef struct {
    _Atomic uint32_t seq;
    _Atomic uint32_t waiters;
} cp_event;

/* Monotonic clock in nanoseconds. */
CP_HIDDEN int64_t cp_now_ns(void);
/* Waits in slices toward one deadline (cp_now_ns time; -1: none).  The
 * deadline `timeout_ns` from now (<0: none). */
CP_HIDDEN int64_t cp_deadline(int64_t timeout_ns);
/* How long the next sleep of such a wait is: `slice`, or less so as to end
 * at the deadline; 0 once it has passed. */
CP_HIDDEN int64_t cp_slice(int64_t deadline, int64_t slice);
/* Wake every sleeper of `e` (a system call only when someone sleeps). */
CP_HIDDEN void cp_event_signal(cp_event *e);
/* Register as a sleeper and return the sequence to sleep on.  The caller
 * must re-check its condition after this and then call cp_event_sleep. */
CP_HIDDEN uint32_t cp_event_prepare(cp_event *e);
/* Sleep until `e` moves past `seen` or `timeout_ns` passes (<0: forever),
 * then unregister.  Returns 0, or ETIMEDOUT, or EINTR (a signal arrived:
 * the caller checks for Ctrl-C and loops). */
CP_HIDDEN int cp_event_sleep(cp_event *e, uint32_t seen, int64_t timeout_ns);
/* Undo cp_event_prepare when the condition became true. */
CP_HIDDEN void cp_event_cancel(cp_event *e);
/* Short spin before sleeping: calls pred(arg) up to a bound, 1 if it held. */
CP_HIDDEN int cp_spin_until(int (*pred)(void *), void *arg);
CP_HIDDEN void cp_cpu_relax(void);

/* ---- copy.c: large copies into fresh memory ------------------------------ */

/* memcpy(dst, src, n) into memory not yet touched (a new bytes object):
 * its pages faulted in at once, and a large copy done in two halves at the
 * same time, one on a thread of its own.  No Python: call it without the
 * GIL. */
CP_HIDDEN void cp_copy_fresh(char *dst, const char *src, size_t n);

/* ---- ring.c: single-producer single-consumer record rings -------------- */

/* Record kinds. */
enum {
    CP_K_WRAP = 1,   /* filler: the next record starts at offset 0 */
    /* parent -> worker */
    CP_K_FUNC,       /* pickled function of a job, cached by the worker */
    CP_K_CALL,       /* pickled (func, args, kwds): apply */
    CP_K_MAP,        /* pickled list of items: func(item) for each */
    CP_K_STARMAP,    /* pickled list of items: func(*item) for each */
    CP_K_STOP,       /* leave the loop and exit */
    /* worker -> parent */
    CP_K_OK,         /* pickled result (a list for MAP/STARMAP) */
    CP_K_ERR,        /* pickled (exception, traceback text) */
    CP_K_INITERR,    /* the initializer raised: pickled (exception, tb) */
};
/* Outcome of a task as the collector hands it to job._set(idx, status,
 * value); exported as cpool._cpool.ST_*. */
enum {
    CP_ST_OK = 0,         /* value: the result */
    CP_ST_ERR = 1,        /* value: (exception, traceback text) from the worker */
    CP_ST_LOCAL = 2,      /* value: an exception raised in the parent */
    CP_ST_LOST = 3,       /* value: (pid, wait status, deaths) of the dead worker */
    CP_ST_TERMINATED = 4, /* value: None */
    CP_ST_INITFAIL = 5,   /* value: the broken pool's (exception, tb, by initializer) */
    CP_ST_UNPICKLE = 6,   /* value: (why, whether it was an error report) */
    CP_ST_MIXED = 7,      /* value: (results, {i: (exception, traceback text)}):
                           * a chunk some of whose items ran out of time */
    CP_ST_TIMEOUT = 8,    /* value: (pid, item or None, seconds run, limit): the
                           * worker was killed for running past the limit */
};
#define CP_F_LARGE 1u /* payload is a cp_segref: the bytes are in a segment */
/* A task record with a time limit: its payload starts with a cp_timing and
 * its cp_skip entries, then the pickle (or cp_segref).  Untimed records
 * carry nothing of it. */
#define CP_F_TIMED 2u
/* A chunk's result record whose items did not all finish: the payload is
 * (results, {item: (exception, traceback text)}), the results None there. */
#define CP_F_MIXED 4u

typedef struct {
    uint32_t len;   /* payload bytes that follow the header */
    uint16_t kind;
    uint16_t flags;
    uint32_t idx;   /* chunk index within the job */
    uint32_t claim; /* a task record's: CP_CLAIM_*, changed only by CAS */
    uint64_t job;
} cp_rechdr;        /* 24 bytes; records are 8-byte aligned */
/* A timed task's limit (task_timeout=), and the items of its chunk that
 * are not to run again: a worker running one of them was killed for
 * running past the limit, and the chunk was sent again without it. */
typedef struct {
    uint32_t item;      /* index in the chunk */
    int32_t pid;        /* the worker that was killed running it */
    int64_t elapsed_ns; /* how long it had run */
} cp_skip;
typedef struct {
    uint64_t timeout_ns;
    uint64_t first_item; /* the index of the chunk's first item in the input */
    uint32_t nskips;
    cp_skip skips[];
} cp_timing;
/* Bytes of a record's cp_timing prefix (0 unless CP_F_TIMED). */
static inline size_t cp_timing_len(const cp_rechdr *h)
{
    if (!(h->flags & CP_F_TIMED)) return 0;
    const cp_timing *t = (const cp_timing *)(h + 1);
    return sizeof *t + (size_t)t->nskips * sizeof(cp_skip);
}
/* Bytes a record of an n-byte payload takes in a ring. */
#define CP_REC_BYTES(n) (sizeof(cp_rechdr) + (((uint64_t)(n) + 7u) & ~(uint64_t)7u))

/* Who has a task record that is still in a worker's ring.  The worker takes
 * it (FREE to TAKEN) before it copies it out and runs it; the parent may
 * take it back (FREE to REVOKED) until then, to give the task to a worker
 * that is free (dispatch.c), and the worker skips a revoked record.  One
 * compare-and-swap decides: a task runs at most once. */
enum { CP_CLAIM_FREE = 0, CP_CLAIM_TAKEN, CP_CLAIM_REVOKED };
/* Compare-and-swap a record's claim from FREE to `to`: 1 if it was free. */
static inline int cp_claim(cp_rechdr *h, uint32_t to)
{
    uint32_t free_ = CP_CLAIM_FREE;
    return __atomic_compare_exchange_n(&h->claim, &free_, to, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

/* A large record's payload: where its segment is.  Segments are memfds, so
 * they have no name another user could predict, take first or open: the
 * producer's descriptor travels instead (see shm.c). */
typedef struct {
    uint64_t size;
    int32_t recy;   /* index in the producer's recycler, or -1: one-shot */
    uint32_t flags; /* CP_SEG_COPIED */
    int32_t fd;     /* the producer's descriptor (its own bookkeeping) */
    uint32_t pad;
    uint64_t ino;   /* the file's inode: the consumer checks it got that one */
    uint64_t tag;   /* the message on the slot's socket carrying the descriptor */
} cp_segref;
/* Every object is copied out of the segment as it is loaded (no view into it
 * outlives the load): a consumer may read it through a mapping it keeps. */
#define CP_SEG_COPIED 1u

/* Recyclable segments.  A fresh segment costs far more than the copy into
 * it (the kernel allocates and zeroes every page), so each direction keeps a
 * few segments and reuses them: the producer takes a free one (CAS FREE or
 * NONE to BUSY), grows it if needed, writes, sends a reference; the consumer
 * hands it back (BUSY to FREE) once nothing maps it any more, or retires it
 * (NONE: the producer makes a new file) when an object still lives on its
 * memory. */
enum { CP_RECY_NONE = 0, CP_RECY_FREE, CP_RECY_BUSY };
#define CP_RECY_RESULTS 4 /* per worker */
#define CP_RECY_TASKS 8   /* per pool */
/* An entry grows freely up to this; past it, only within the pool's budget
 * (cp_ctl.recy_budget_mib), and it gets a new, small file when a much
 * smaller record reuses it: the segments follow the recent records' sizes,
 * and a record the budget cannot hold goes into a one-shot segment. */
#define CP_RECY_MAX_BYTES (16u << 20)
typedef struct {
    _Atomic uint32_t state;
    uint32_t big_mib; /* MiB its file holds past CP_RECY_MAX_BYTES (its producer's) */
} cp_recy;

/* One process's own mapping of one recycled segment, kept from record to
 * record (MAP_SHARED, not inherited by fork): the producer writes through
 * it and the consumer reads through it, where mapping 4 MiB anew costs
 * ~0.7 ms here and pwrite ~0.7 ms against a memcpy's ~0.2 ms.  It is valid
 * while the entry's file is the same (st_ino: a retired entry gets a new
 * file), and is used only while its cp_recy entry is held (BUSY). */
typedef struct {
    uint64_t ino;
    size_t len;
    size_t ready; /* written through: bytes from 0 allocated and faulted in */
    char *addr;   /* NULL: none */
} cp_segmap;

/* Where a producer puts large records: one-shot segments, or the entries
 * of a recycler (recy != NULL), whose files this process keeps open in
 * fds[] (-1: none yet) and maps in maps[]. */
typedef struct {
    cp_recy *recy;
    int nrecy;
    int wait;               /* wait (bounded) for a recycled one to come back */
    cp_segmap *maps;        /* the producer's mappings of recy[], or NULL */
    int *fds;               /* the producer's descriptors of recy[] */
    uint64_t tag;           /* goes into the reference (worker -> parent) */
    _Atomic uint32_t *big;  /* the pool's MiB held past CP_RECY_MAX_BYTES, or NULL */
    uint32_t budget;        /* ...and how many it may hold */
} cp_segdest;

/* Where a consumer finds a large record's file: a new descriptor of
 * ref's file (checked by the caller), or -1 with errno. */
typedef int (*cp_segget_fn)(void *arg, const cp_segref *ref);
typedef struct {
    cp_segget_fn get;
    void *arg;
    cp_recy *recy;              /* the producer's recycler, or NULL */
    cp_segmap *maps;            /* this process's kept mappings of recy[], or NULL */
    _Atomic int32_t *loading;   /* the recycler entry being loaded, or NULL */
} cp_segsrc;

/* A large record's segment: this header, then the pickle, then its
 * out-of-band buffers, each at a 64-byte boundary. */
#define CP_SEG_MAGIC 0x63706b31u /* "cpk1" */
typedef struct {
    uint32_t magic;
    uint32_t nbufs;
    uint64_t pickle_len;
    uint64_t lens[];
} cp_seghdr;
#define CP_ALIGN64(n) (((n) + 63u) & ~(uint64_t)63u)

typedef struct {
    _Atomic uint64_t head; /* bytes consumed; written by the consumer */
    char pad0[56];
    _Atomic uint64_t tail; /* bytes published; written by the producer */
    char pad1[56];
    /* Each event on a line of its own, as head and tail are: the producer
     * bumps data.seq at every record, the consumer space.seq at every
     * consume; on one line they took it from each other twice a task. */
    cp_event data; /* the consumer sleeps here for records */
    char pad2[56];
    cp_event space; /* the producer sleeps here for room */
    char pad3[56];
    uint64_t cap;          /* power of two */
    uint64_t data_off;     /* offset of the data area from the ring */
} cp_ring;

/* Initialise a ring of `cap` bytes whose data area lies right after it. */
CP_HIDDEN void cp_ring_init(cp_ring *r, uint64_t cap);
/* Forget every record (both ends must be quiescent: the other side dead). */
CP_HIDDEN void cp_ring_reset(cp_ring *r);
/* Largest payload a record may carry inline; bigger ones go in a segment. */
CP_HIDDEN size_t cp_ring_inline_max(const cp_ring *r);
/* Producer: append a record whose payload is p[0..n); 0, or -1 if full.
 * Does not wake the consumer: call cp_event_signal(&r->data) after a batch. */
CP_HIDDEN int cp_ring_try_put(cp_ring *r, const cp_rechdr *h, const void *p, size_t n);
/* The same with a payload in two pieces: p0 (n0 bytes, 8-aligned), then p. */
CP_HIDDEN int cp_ring_try_put2(cp_ring *r, const cp_rechdr *h, const void *p0, size_t n0,
                               const void *p, size_t n);
/* Producer: the ring position just past the last record put. */
CP_HIDDEN uint64_t cp_ring_tail(const cp_ring *r);
/* The record at ring position `pos` (a producer's record not yet consumed). */
CP_HIDDEN cp_rechdr *cp_ring_at(cp_ring *r, uint64_t pos);
/* Consumer: the next record, or NULL if none (skips fillers). */
CP_HIDDEN const cp_rechdr *cp_ring_peek(cp_ring *r);
/* Consumer: drop the record peek returned and wake a waiting producer. */
CP_HIDDEN void cp_ring_consume(cp_ring *r, const cp_rechdr *h);
CP_HIDDEN uint64_t cp_ring_head(const cp_ring *r);
/* 1 if a record is waiting. */
CP_HIDDEN int cp_ring_has_data(cp_ring *r);
/* 1 if a payload of n bytes fits now. */
CP_HIDDEN int cp_ring_fits(cp_ring *r, size_t n);

/* ---- shm.c: the control segment and large-record segments -------------- */

/* Map `size` bytes of anonymous shared memory (a memfd: no name to leak),
 * inherited by every child forked after.  NULL with errno on failure. */
CP_HIDDEN void *cp_shared_map(size_t size);
/* The same; with fd_out, the memfd stays open (close-on-exec) in *fd_out. */
CP_HIDDEN void *cp_shared_map_fd(size_t size, int *fd_out);
/* A new segment: a memfd, mode 0600, sealed against shrinking (so no
 * process, ours included, can truncate it under a mapping: no SIGBUS); with
 * fixed_size > 0, that large and sealed against growing too.  A
 * descriptor, or -1 with errno. */
CP_HIDDEN int cp_memfd(const char *name, uint64_t fixed_size);
/* Check the file open on fd before it is mapped or read: a regular file of
 * this user, mode 0600, sealed against shrinking, at least `size` bytes,
 * and (ino != 0) that inode.  NULL if it passes, else why not. */
CP_HIDDEN const char *cp_seg_check(int fd, uint64_t ino, uint64_t size);
/* Open the descriptor `fd` of process `pid` (/proc/<pid>/fd/<fd>): a
 * descriptor, or -1 with errno. */
CP_HIDDEN int cp_open_proc_fd(pid_t pid, int fd, int flags);
/* Resident memory of process pid in bytes (/proc/<pid>/statm), or -1. */
CP_HIDDEN int64_t cp_proc_rss(pid_t pid);
/* Segments change hands over a worker slot's socketpair (AF_UNIX datagrams,
 * SCM_RIGHTS): one message per record, sent before the record is put, in
 * ring order, tagged as the record's cp_segref.  Make one (close-on-exec;
 * past the soft descriptor limit, raised to the hard one): 0, or -1 with
 * errno. */
CP_HIDDEN int cp_socketpair(int sv[2]);
/* Send fd with `tag` (flags: MSG_DONTWAIT to never block): 0, or -1 with
 * errno. */
CP_HIDDEN int cp_send_fd(int sock, uint64_t tag, int fd, int flags);
/* Receive the descriptor tagged `tag`, closing the ones before it (sent for
 * records a dead worker left in its rings): a descriptor, or -1 with errno
 * (ENOENT: not there).  Never blocks. */
CP_HIDDEN int cp_recv_fd(int sock, uint64_t tag);
/* Close every descriptor waiting on sock. */
CP_HIDDEN void cp_drop_fds(int sock);
/* Close the descriptors waiting on sock whose tags are at most `upto`
 * (those after it are left). */
CP_HIDDEN void cp_drop_fds_upto(int sock, uint64_t upto);
/* Write pieces[0] (a pickle) and pieces[1..n-1] (its out-of-band buffers)
 * into a segment in the cp_seghdr layout: one of d's recycled segments if
 * one is free or frees up soon, else a new one-shot segment, whose
 * descriptor (ref->fd) the caller then owns; fill *ref.  copied: every
 * object is copied out as it loads (CP_SEG_COPIED), so the segment goes
 * through the producer's kept mapping; else with pwrite, and the producer
 * keeps no mapping of a file its consumer may retire.  No Python: call it
 * without the GIL.  0, or -1 with errno. */
struct iovec;
CP_HIDDEN int cp_seg_write(const cp_segdest *d, const struct iovec *pieces, int n,
                           int copied, cp_segref *ref);
/* The kept mapping of the segment open on fd, at least `need` bytes long:
 * *m's, or made anew when the file changed or grew.  A writer's file is
 * allocated whole first, so that writing through the mapping cannot fault
 * for want of memory (fallocate says ENOSPC or ENOMEM instead).  NULL with
 * errno. */
CP_HIDDEN char *cp_segmap_get(cp_segmap *m, int fd, int writable, uint64_t need);
CP_HIDDEN void cp_segmap_drop(cp_segmap *m);
/* The MiB a pool's recycled segments may hold past CP_RECY_MAX_BYTES in
 * all: a sixteenth of the machine's memory, at most 1 GiB. */
CP_HIDDEN uint32_t cp_recy_budget_mib(void);

/* ---- the control segment ----------------------------------------------- */

/* Worker slot states.  The template writes SPAWNED/DEAD; the parent writes
 * SPAWN_REQ/FREE; the worker writes READY. */
enum {
    CP_S_FREE = 0,   /* no worker, none wanted */
    CP_S_SPAWN_REQ,  /* the parent asks the template for a worker */
    CP_S_SPAWNED,    /* forked; running the initializer */
    CP_S_READY,      /* in its loop */
    CP_S_DEAD,       /* exited and reaped; status in wstatus */
};

/* Exported to Python as _cpool.S_* (cpool/pool.py reads worker states). */

/* wstatus of a slot whose fork failed: -errno. */
#define CP_WS_FORKFAIL_BASE (-1000)

typedef struct {
    _Atomic int32_t pid;
    _Atomic uint32_t state;
    _Atomic int32_t wstatus;   /* waitpid status once DEAD */
    uint32_t pad1;
    _Atomic uint64_t current_job;
    _Atomic uint32_t inited;   /* the worker's initializer succeeded */
    _Atomic uint32_t current_idx; /* the chunk index of current_job's task */
    uint64_t task_off, result_off; /* ring offsets from the segment start */
    cp_recy res_recy[CP_RECY_RESULTS]; /* this worker's result segments */
    _Atomic int32_t loading_recy;      /* task recycler entry being loaded, or -1 */
    char pad[4];
    /* When the worker took its current task; 0: none; CP_STARTED_KILLED:
     * limits.c is killing it for its memory. */
    _Atomic int64_t started_ns;
    /* The parent's messages to this slot up to this tag were for a dead
     * worker: its successor drops them before it starts (a socket left
     * full of them would refuse every segment sent to the slot). */
    _Atomic uint64_t stale_tag;
    /* For pool.stats(): when this worker became ready, how long it has run
     * tasks, and how many workers the template has forked for the slot. */
    _Atomic int64_t ready_ns;
    _Atomic uint64_t busy_ns;
    _Atomic uint32_t spawns;
    /* A timed task's current item (task_timeout=), written by the worker
     * as it calls the function: its index in the chunk (UINT32_MAX: an
     * apply), when it started, and when it is out of time (0: no item with
     * a limit is running).  limits.c stops it by setting stop_for to that
     * deadline and signalling CP_STOP_SIGNAL: the worker's handler raises
     * TaskTimeoutError only while the deadline is still stop_for, so a
     * late signal never stops the next item. */
    _Atomic uint32_t item;
    _Atomic int64_t item_ns;
    _Atomic int64_t deadline_ns;
    _Atomic int64_t stop_for;
} cp_slot;

/* The signal that asks a worker to stop an item past its time limit (its
 * Python handler raises TaskTimeoutError inside the task). */
#define CP_STOP_SIGNAL (SIGRTMIN + 3)
/* deadline_ns once limits.c has decided to kill the worker for it (a
 * compare-and-swap from the deadline: the worker, ending that item, waits
 * for the kill instead of going on to the next). */
#define CP_DEADLINE_KILLED (-1)
/* started_ns once limits.c has decided to kill the worker for its memory
 * (a compare-and-swap from the start of the task it measured: the worker,
 * ending that task, posts its result and waits for the kill instead of
 * taking the next, which the kill would blame). */
#define CP_STARTED_KILLED (-1)

#define CP_MAGIC 0x63706f6f6cu
enum { CP_CMD_NONE = 0, CP_CMD_EXIT, CP_CMD_TERMINATE };

typedef struct {
    uint64_t magic;
    uint32_t nslots;
    uint32_t pad;
    uint64_t size;
    cp_event results;          /* workers signal; the collector sleeps */
    _Atomic uint32_t tmpl_cmd; /* CP_CMD_* for the template */
    _Atomic int32_t tmpl_pid;
    int32_t parent_pid;
    int32_t pad2;
    /* Pool(max_memory_per_child=): a worker above it after a task leaves
     * (and is replaced); one above twice it during a task is killed by the
     * parent (limits.c).  0: none. */
    uint64_t max_rss;
    _Atomic uint64_t timed_out; /* items that ran past their time limit */
    /* Recycled segments past CP_RECY_MAX_BYTES: the MiB all of them hold
     * beyond it, and the budget (cp_recy_budget_mib()). */
    _Atomic uint32_t recy_big_mib;
    uint32_t recy_budget_mib;
    cp_recy task_recy[CP_RECY_TASKS];
    cp_slot slots[];
} cp_ctl;

static inline cp_ring *cp_task_ring(cp_ctl *c, int i)
{
    return (cp_ring *)((char *)c + c->slots[i].task_off);
}
static inline cp_ring *cp_result_ring(cp_ctl *c, int i)
{
    return (cp_ring *)((char *)c + c->slots[i].result_off);
}
/* Lay out a control segment for n slots with rings of ring_cap bytes; with
 * fd_out, its memfd is left open there (for an exec'ed template). */
CP_HIDDEN cp_ctl *cp_ctl_create(uint32_t n, uint64_t ring_cap, int *fd_out);
CP_HIDDEN void cp_ctl_destroy(cp_ctl *c);

/* ---- template.c --------------------------------------------------------- */

/* How the template forks a worker for a slot: returns the child's pid, or -1
 * with errno; the child never returns from it.  Lives on the Python side
 * (worker.c), since a fork must run the interpreter's fork hooks. */
typedef pid_t (*cp_spawn_fn)(void *arg, int slot);

/* The template's loop: forks workers on request, reaps them, and goes (with
 * its workers and the pool's segments) when the parent goes.  Never returns.
 * cmd_fd is an eventfd the parent writes after setting a request. */
CP_HIDDEN void cp_template_main(cp_ctl *ctl, int cmd_fd, pid_t parent, cp_spawn_fn spawn,
                                void *arg) __attribute__((noreturn));

/* ---- dispatch.c: the parent's task queue and dispatch -------------------- */

/* The parent's private bookkeeping of a task: its pickled payload stays here
 * until the result arrives, so a task a dead worker never took can be sent
 * again, and one it took can be failed by name. */
typedef struct cp_blob {
    _Atomic long refs;
    size_t len;
    char data[];
} cp_blob;

typedef struct cp_task {
    struct cp_task *next;
    uint64_t job;
    uint32_t idx;
    uint16_t kind;
    uint16_t has_seg;  /* sent through a segment (seg; a one-shot's seg.fd is ours) */
    uint32_t items;    /* MAP/STARMAP: the chunk's items (0: an apply) */
    cp_blob *func;     /* MAP/STARMAP: the job's pickled function (shared) */
    uint64_t pos;      /* task-ring position of this record */
    uint64_t end_pos;  /* task-ring position just past this record */
    int64_t sent_ns;   /* when it went into a ring */
    int err;           /* errno when it could not be sent */
    int held;          /* a dead worker had taken it: its segment is not ours */
    uint32_t retries;  /* how often it may be run again after its worker died */
    uint32_t lost;     /* workers that died running it */
    int timed_out;     /* an apply killed for running past its time limit */
    cp_timing *timing; /* its time limit, or NULL (see CP_F_TIMED) */
    cp_segref seg;
    size_t len;
    char data[];
} cp_task;

typedef struct {
    cp_task *head, *tail; /* in flight, in ring order */
    int n;
    int has_func;
    uint64_t func_job;    /* the job whose function the worker holds */
    /* FUNC records put and not yet known loaded (the worker answered a task
     * put after it): the task-ring position past each, its job, and its
     * one-shot segment's descriptor (-1: inline), closed then.  A worker
     * that dies having consumed one and nothing after was killed loading
     * that function. */
    struct cp_frec {
        uint64_t end;
        uint64_t job;
        int fd;
    } *funcs;
    int nfuncs, capfuncs;
    uint64_t sent;        /* tasks sent to the current incarnation */
    int64_t answered_ns;  /* when its last answer was taken (cp_sched_answered) */
    /* A task was stolen from it, and it has neither answered one nor
     * consumed the revoked record (ring position stall_end) since: it may
     * be stopped or slow to start. */
    int stalled;
    uint64_t stall_end;
} cp_wstate;

/* Room a task or FUNC record leaves behind it in a ring: a STOP record
 * (and the filler before it) always fits, even in a ring a stopped worker
 * left full of records taken back from it. */
#define CP_STOP_ROOM (2 * sizeof(cp_rechdr))

/* The parent's task queue and dispatch state.  Every call below but
 * init/fini is made under the pool's mutex, without the GIL. */
typedef struct {
    cp_ctl *ctl;
    int n;
    uint64_t maxtasks;          /* tasks per worker incarnation; 0: unlimited */
    int *psock;                 /* the parent's end of each slot's socketpair */
    uint64_t tag_seq;           /* tags of the parent's messages */
    cp_task *pend_head, *pend_tail; /* not yet sent */
    size_t npend;
    cp_task *failed;            /* could not be sent: t->err says why */
    cp_wstate *ws;              /* one per slot: what its worker holds */
    int64_t task_ns;            /* moving average of a task's round trip; <0 unknown */
    uint64_t func_death_job;    /* the last job whose function killed a worker */
    unsigned char *touched, *full; /* dispatch scratch, one per slot */
    uint64_t steals;            /* tasks taken back from a worker's ring */
    uint64_t retried;           /* tasks sent again after their worker died */
    uint64_t lost;              /* tasks failed because their worker died */
    uint64_t n_done, n_failed;  /* tasks answered with a result, with an error
                                 * (counted by the collector, under the mutex) */
} cp_sched;

/* 0, or -1 with errno (ENOMEM). */
CP_HIDDEN int cp_sched_init(cp_sched *s, cp_ctl *ctl, int n, uint64_t maxtasks,
                            int *psock);
/* Free the per-slot state; with `drop`, every task too (their segments
 * given up: only the process that owns the pool may). */
CP_HIDDEN void cp_sched_fini(cp_sched *s, int drop);
/* Queue the n tasks first..last behind the pending ones. */
CP_HIDDEN void cp_sched_push(cp_sched *s, cp_task *first, cp_task *last, size_t n);
/* Put pending tasks on the rings of the workers that may take more (each to
 * the one holding fewest), take back a task left waiting in a worker's
 * ring when another worker is free (work stealing: cp_claim), and wake the
 * workers given some.  1 when a task
 * could not be sent (moved to s->failed, with t->err), else 0. */
CP_HIDDEN int cp_sched_dispatch(cp_sched *s);
/* When dispatch should look again, to give a free worker a task left
 * waiting in another's ring (cp_now_ns time), or -1: no need. */
CP_HIDDEN int64_t cp_sched_wake_at(cp_sched *s);
/* Slot i's worker answered its oldest task: take it off its list (NULL if
 * it held none), and learn how long it took. */
CP_HIDDEN cp_task *cp_sched_answered(cp_sched *s, int i);
/* 1 while a task is pending or in flight. */
CP_HIDDEN int cp_sched_outstanding(const cp_sched *s);
/* Take every task that could not be sent and every pending one (and, with
 * `inflight`, every one sent), as one list. */
CP_HIDDEN cp_task *cp_sched_take_all(cp_sched *s, int inflight);
/* Task (job, idx) was killed running item `item` of it, past its time limit. */
typedef struct {
    uint64_t job;
    uint32_t idx;
    cp_skip item;
} cp_tkill;
/* Slot i's worker died, having consumed its task ring up to `head`: send
 * again (first, in their order) the tasks it never took and the ones it
 * held that may be retried (t->lost < t->retries; t->lost counts the
 * deaths), and return the other ones it held (t->held set when it had
 * taken the record), which the caller fails.  When the last record it consumed was a FUNC record, the first
 * task of that job after it is held too (the function may be what killed
 * it); the second time in a row a job's function does that, all of that
 * job's queued tasks are returned with it.  With tk (limits.c killed it
 * for a time limit), that task is not counted lost: an apply is returned
 * with t->timed_out set (it fails with TaskTimeoutError), a chunk is sent
 * again first, with the item noted to skip (cp_timing). */
CP_HIDDEN cp_task *cp_sched_worker_lost(cp_sched *s, int i, uint64_t head,
                                        const cp_tkill *tk);
/* Forget w's FUNC records put before ring position `upto` (loaded),
 * closing their segments. */
CP_HIDDEN void cp_forget_funcs(cp_wstate *w, uint64_t upto);
/* Drop a reference to a job's pickled function (freed with the last). */
CP_HIDDEN void cp_blob_decref(cp_blob *b);
/* Free a task (not its segment: cp_task_drop_segment). */
CP_HIDDEN void cp_task_free(cp_task *t);
/* Give up a packed segment nobody will read: a recycled one goes back to
 * the task recycler, a one-shot one is closed (its memory goes with the
 * last descriptor or mapping of it). */
CP_HIDDEN void cp_drop_packed_segment(cp_ctl *ctl, const cp_segref *seg);
/* A task that will not be sent (again) gives up its segment; a recycled one
 * not when a worker had taken the task (it hands the segment back itself,
 * or the parent does for a dead one, and someone else may have it since). */
CP_HIDDEN void cp_task_drop_segment(cp_ctl *ctl, cp_task *t);
/* Free a list of tasks that will not be sent, their segments given up. */
CP_HIDDEN void cp_free_list(cp_ctl *ctl, cp_task *t);

#ifdef CP_NEED_PYTHON
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#endif

/* Module state. */
typedef struct {
    PyTypeObject *core_type;
    PyTypeObject *lock_type;
    PyTypeObject *arena_type;
    PyTypeObject *sync_type;
    PyObject *str_value;   /* interned "value" */
    PyObject *str_set;     /* interned "_set" */
    PyObject *str_defer;   /* interned "_defer" */
    PyTypeObject *mapping_type;
    /* What C needs of the package, handed to it by _cpool._set_hooks when
     * the package is imported (C never imports the package): */
    PyObject *pack_oob;     /* cpool._worker._pack_oob */
    PyObject *load_oob;     /* cpool._worker._load_oob */
    PyObject *attach_arena; /* cpool.sharedctypes._attach_arena */
    PyObject *synchronized; /* cpool.sharedctypes.synchronized */
    PyObject *timed_out;    /* cpool._worker._timed_out */
    PyObject *dumps;   /* pickle.dumps */
    PyObject *loads;   /* pickle.loads */
    PyObject *protocol;/* int 5 */
} cpool_state;

CP_HIDDEN cpool_state *cp_get_state(PyObject *module);
/* A hook the package registered (borrowed), or NULL with RuntimeError. */
CP_HIDDEN PyObject *cp_hook(PyObject *hook, const char *name);

/* wait.c.  A timeout argument in seconds (None: none; negative: 0) as
 * nanoseconds (-1: none); 0, or -1 with the exception. */
CP_HIDDEN int cp_parse_timeout(PyObject *o, int64_t *ns);
/* Wait until ready(arg) (called with and without the GIL: it must not touch
 * Python), sleeping on `e` with the GIL released, at most until `deadline`
 * (cp_deadline), checking for signals at least every 100 ms.  1 ready, 0
 * the deadline passed, -1 with the exception a signal handler raised. */
CP_HIDDEN int cp_wait_event(cp_event *e, int (*ready)(void *), void *arg,
                            int64_t deadline);

/* The raised exception, normalised, with its traceback; clears it.  New
 * reference, or NULL when none is set. */
static inline PyObject *cp_fetch_exc(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL) return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL) PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
#endif
}
/* Set OSError from errno, naming the failing call; returns NULL. */
CP_HIDDEN PyObject *cp_oserror(const char *what);
/* Pickle obj (protocol 5): new bytes reference, or NULL. */
CP_HIDDEN PyObject *cp_dumps(cpool_state *st, PyObject *obj);
/* pack.c.  A pickled payload ready for a record: inline bytes, or a
 * segment already written. */
typedef struct {
    PyObject *bytes; /* new reference, or NULL when has_seg */
    int has_seg;
    cp_segref seg;
} cp_packed;
CP_HIDDEN int cp_pack_add_types(PyObject *module, cpool_state *st);
/* Pickle obj for a ring whose records carry at most inline_max bytes; a
 * larger pickle, or one with large buffers (sent out of band), goes into a
 * segment of dest's.  0, or -1 with the exception. */
CP_HIDDEN int cp_pack(cpool_state *st, PyObject *obj, size_t inline_max,
                      const cp_segdest *dest, cp_packed *out);
/* A starmap chunk's argument tuples items[0..n) as one flat record, when
 * they are all numbers in rows of one shape: new bytes, or None (they are
 * not: pack them as a list), or NULL with an exception. */
CP_HIDDEN PyObject *cp_rows_dump(PyObject *const *items, Py_ssize_t n);
/* A starmap chunk written by cp_rows_dump (which cp_load_payload hands
 * over as its bytes): func's results, called on each row's values with no
 * tuple made, as cp_results_done gives them (*flat), or NULL with the
 * exception of the first call that raised. */
CP_HIDDEN PyObject *cp_rows_call(PyObject *func, PyObject *rows, int *flat);
/* The list a flat record (rows, or cp_results_done's) holds, rows as
 * tuples: a new reference, or NULL. */
CP_HIDDEN PyObject *cp_flat_list(PyObject *flat);
/* A map chunk's results, collected as they come (pack.c): numbers of one
 * kind are written straight into the flat layout a list of them travels
 * in, and freed at once; anything else, a list. */
typedef struct {
    PyObject *flat; /* the flat list being written, or NULL */
    PyObject *list; /* or the list, once a result is not such a number */
    Py_ssize_t n, i;
    char kind;
} cp_results;
/* For n results: 0, or -1 with an exception. */
CP_HIDDEN int cp_results_init(cp_results *c, Py_ssize_t n);
/* The next result (stolen): 0, or -1 with an exception. */
CP_HIDDEN int cp_results_put(cp_results *c, PyObject *r);
/* The n results put: new bytes, flat (*flat = 1: cp_pack_pickled sends
 * them as they are), or a list (*flat = 0); c is empty after. */
CP_HIDDEN PyObject *cp_results_done(cp_results *c, int *flat);
CP_HIDDEN void cp_results_clear(cp_results *c);
/* cp_pack for an already pickled bytes object (no out-of-band buffers). */
CP_HIDDEN int cp_pack_pickled(PyObject *pickled, size_t inline_max,
                              const cp_segdest *dest, cp_packed *out);
/* Unpickle a record's payload (a starmap chunk of rows: its bytes, for
 * cp_rows_call): inline, or from its segment, got from
 * src->get and checked (cp_seg_check: a file that fails is never mapped,
 * let alone unpickled), then handed back to src->recy (the producer's
 * recycler) if it came from there.  src->maps (NULL, or one per entry of
 * src->recy): this process's kept mappings, for a segment whose objects are
 * all copied out (CP_SEG_COPIED).  With `interrupt` (a thread where signal
 * handlers run), a KeyboardInterrupt raised by Python code during the load
 * is stored there (if empty) and the load made again, so the payload is not
 * lost.  New reference, or NULL. */
CP_HIDDEN PyObject *cp_load_payload(cpool_state *st, const cp_rechdr *h,
                                    const cp_segsrc *src, PyObject **interrupt);

enum { CP_RUN = 0, CP_CLOSE = 1, CP_TERMINATE = 2 };

typedef struct CoreObject {
    PyObject_HEAD
    PyObject *module;
    cpool_state *st;
    cp_ctl *ctl;
    int n;
    pid_t owner;                /* the process that made the pool */
    pid_t tmpl;
    int evfd;                   /* eventfd: requests to the template */
    /* A socketpair per worker slot, whose messages carry segments both ways
     * (cp_send_fd): the parent's ends, and the workers' (closed in the
     * parent once the template has them; a worker keeps its own only). */
    int *psock, *wsock;
    PyObject *initializer, *initargs, *cache, *bootstrap, *pack_error;
    PyObject *broken;           /* (exc, tb) of a failed initializer */
    pthread_mutex_t mu;         /* guards sd and sealed */
    cp_sched sd;                /* (mu) the task queue and dispatch (dispatch.c) */
    cp_segmap task_maps[CP_RECY_TASKS]; /* written through, as a task's producer */
    int task_fds[CP_RECY_TASKS];        /* the task recycler's files */
    cp_segmap *res_maps;        /* read through: CP_RECY_RESULTS per slot */
    _Atomic int phase;
    _Atomic int kicked;
    _Atomic int done;
    _Atomic int thread_started;
    _Atomic int is_broken;
    cp_event done_ev;
    /* The collection token: whoever holds it drains, delivers and handles
     * deaths.  0 when free, else the monotonic time it was taken.  The
     * collector thread holds it for its rounds; a thread waiting for a
     * result takes it to collect by itself (no hand-off between threads). */
    _Atomic int64_t tok;
    cp_event tok_ev;            /* the token was given back */
    _Atomic int64_t waiter_seen; /* when a waiter last gave the token back */
    _Atomic int has_deferred;   /* c->deferred is not empty (read without the GIL) */
    /* Outcomes handed to result objects (_set called), by any thread: a
     * waiter notes it before it looks at its result, and collect() returns
     * at once if it moved meanwhile (see cp_collect_waiting). */
    _Atomic uint64_t delivered;
    PyObject *interrupt;        /* Ctrl-C that hit a delivery in a waiter */
    PyObject *deferred;         /* list of (obj, idx, status, value, nbytes): outcomes
                                 * with callbacks, for the collector thread */
    pthread_t thread;
    PyThreadState *cts;         /* the collector's, while it runs without the GIL */
    /* limits.c killed slot i's worker `pid` (published last): why, and
     * when it asked the item it is stopping to stop (stop_ns). */
    struct cp_kill {
        _Atomic int32_t pid;
        int why;                /* CP_KILL_* */
        int64_t rss;            /* MEMORY: its resident memory */
        cp_tkill tk;            /* TIMEOUT: the task and item */
        int64_t timeout_ns;     /* TIMEOUT: the item's limit */
        _Atomic int64_t stop_ns;
    } *kills;
    _Atomic int64_t limits_due; /* when cp_check_limits looks at memory next */
    _Atomic int checking;       /* a sleeper is in cp_check_limits */
    _Atomic int timed;          /* a task with a time limit was ever queued */
    int stopping;               /* collector: STOP records sent */
    int sealed;                 /* (mu) no more tasks: the pool is ending */
} CoreObject;

/* Set `exc` (a reference stolen) as the raised exception. */
static inline void cp_restore_exc(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
#endif
}

/* ---- the parent's side of a pool: submit.c, deliver.c, collect.c, death.c,
 * pool.c (CoreObject above) -------------------------------------------- */

/* submit.c */
/* cp_sched_dispatch, unless the pool is terminating or broken; a task that
 * could not be sent kicks the collector, which fails it (mu held, no GIL). */
CP_HIDDEN void cp_dispatch_locked(CoreObject *c);
/* Queue tasks first..last and dispatch what fits; called with the GIL.
 * 0, or -1 with ValueError when the pool no longer takes tasks (the caller
 * lost a race with close() or terminate()); the tasks are freed then. */
CP_HIDDEN int cp_enqueue(CoreObject *c, cp_task *first, cp_task *last, size_t n);
/* No task gets in from now on: enqueue refuses under mu. */
CP_HIDDEN void cp_seal(CoreObject *c, int gil);
/* A call's options for its tasks: how often one may run again after its
 * worker died (retries=), how long one item may run (task_timeout=; 0:
 * no limit), and where a chunk's items start in the input (set for each
 * chunk by cp_submit_chunks). */
typedef struct {
    uint32_t retries;
    uint64_t timeout_ns;
    uint64_t first_item;
} cp_taskopts;
/* apply_async: pickle (func, args, kwds) as task 0 of `job` and queue it
 * with options o.  0, or -1 with the exception (a pickling error raises
 * here). */
CP_HIDDEN int cp_submit_call(CoreObject *c, uint64_t job, PyObject *func, PyObject *args,
                             PyObject *kwds, const cp_taskopts *o);
/* A map-like job's function, pickled once: a capsule for cp_submit_chunks. */
CP_HIDDEN PyObject *cp_func_blob(CoreObject *c, PyObject *func);
/* Cut the sequence `items` into chunks of chunksize items (or, nchunks > 0,
 * into nchunks chunks whose sizes differ by one item at most), pickle each,
 * and queue them as tasks first, first+1, ... of `job` (progressive: a
 * batch at a time, as they are packed; else all or nothing).  The number
 * of chunks, or -1 with the exception. */
CP_HIDDEN Py_ssize_t cp_submit_chunks(CoreObject *c, uint64_t job, PyObject *blob,
                                      PyObject *items, Py_ssize_t chunksize,
                                      Py_ssize_t nchunks, int star, uint32_t first,
                                      int progressive, cp_taskopts o);

/* deliver.c */
/* Hand one outcome to the job's result object: job._set(idx, status, value,
 * nbytes), nbytes the size of its pickle (0 when none came from a worker).
 * In a waiter collecting for itself, an object with callbacks (obj._defer)
 * is left to the collector thread: callbacks run on cpool's thread, as
 * multiprocessing's run on its result handler, never inside a caller's
 * get(). */
CP_HIDDEN void cp_deliver(CoreObject *c, uint64_t job, uint32_t idx, int status,
                          PyObject *value, size_t nbytes);
/* The collector thread: deliver what waiters left for it. */
CP_HIDDEN void cp_deliver_deferred(CoreObject *c);
/* _place(dst, lo, src): a chunk's results moved into a map's list. */
CP_HIDDEN int cp_deliver_add_functions(PyObject *module);
/* Take and fail the pending queue (and, if `inflight`, everything sent). */
CP_HIDDEN void cp_fail_all(CoreObject *c, int status, PyObject *value, int inflight);
/* Deliver `status` to every task of the list and free them. */
CP_HIDDEN void cp_fail_list(CoreObject *c, cp_task *t, int status, PyObject *value);
/* Break the pool: (exc, traceback text, 1 if the initializer raised). */
CP_HIDDEN void cp_set_broken(CoreObject *c, PyObject *exc, PyObject *tb, int init);

/* limits.c */
/* How long whoever sleeps for results may sleep before cp_check_limits is
 * due (<0: no limit to watch). */
CP_HIDDEN int64_t cp_limits_nap(CoreObject *c);
/* Stop the items past their time limits, kill the workers that did not
 * stop within CP_STOP_GRACE_NS or are over their memory limit, if a look
 * is due (cheap when not; no GIL). */
CP_HIDDEN void cp_check_limits(CoreObject *c);
enum { CP_KILL_NONE = 0, CP_KILL_MEMORY, CP_KILL_TIMEOUT };
/* How long a worker asked to stop an item past its time limit has before
 * it is killed. */
#define CP_STOP_GRACE_NS 1000000000 /* 1 s */
/* Whether limits.c killed slot i's worker `pid` (CP_KILL_*); the note is
 * taken (copied to *k). */
CP_HIDDEN int cp_take_kill(CoreObject *c, int i, pid_t pid, struct cp_kill *k);
/* Why a worker died, from its note: the words after "worker <pid> " (a new
 * str), else None. */
CP_HIDDEN PyObject *cp_kill_words(CoreObject *c, const struct cp_kill *k);

/* stats.c */
/* pool.stats(): the pool's counters and one dict per worker slot. */
CP_HIDDEN PyObject *cp_core_stats(CoreObject *c);

/* collect.c */
/* Wake the collector thread, wherever it sleeps, for work only it does. */
CP_HIDDEN void cp_kick(CoreObject *c);
/* How often whoever sleeps on the results while the pool has workers
 * checks that the template is alive. */
#define CP_WATCHDOG_NS 1000000000
/* The collector's nap after a waiter collected (a waiter back within it
 * keeps collecting by itself). */
#define CP_TOKEN_NAP_NS 1000000
/* The core whose results this thread is delivering (callbacks run inside):
 * such a thread must not wait for the pool. */
CP_HIDDEN extern _Thread_local CoreObject *cp_delivering;
/* Sleep (no GIL) until the token is given back, at most `limit_ns` (<0: no
 * limit) and a nap while the hold is young: a waiter that holds it long
 * wakes us when it gives it back, a short holder does not. */
CP_HIDDEN void cp_await_token(CoreObject *c, int64_t limit_ns);
/* The template reports worker deaths; if it is gone (with its workers),
 * nobody would: the pool is over.  Checked by whoever sleeps long on the
 * results without news. */
CP_HIDDEN void cp_check_template(CoreObject *c);
/* Work only the collector thread does: a kick (a phase change, tasks that
 * could not be sent, a finished job of a closing pool) or deliveries left
 * to it by waiters. */
CP_HIDDEN int cp_collector_owed(CoreObject *c);
/* Unmap the kept mappings of the pool's recycled segments and close the
 * task recycler's files, so that their memory goes when the pool ends.  The
 * token holder reads the result ones; a task one is skipped while a
 * producer holds its entry (a submit racing the pool's end), and dealloc
 * frees it later (all: nothing else runs). */
CP_HIDDEN void cp_drop_maps(CoreObject *c, int all);
/* Give the token back.  A waiting collector thread is woken when it has
 * work: news arrived, the pool is changing phase, or it has napped on a
 * long hold without a timeout. */
CP_HIDDEN void cp_give_token(CoreObject *c, int by_waiter);
/* Results to deliver or a death to handle: what a waiter collects. */
CP_HIDDEN int cp_ring_news(CoreObject *c);
/* Deliver what the rings hold, handle deaths, fail what must fail; GIL and
 * the token held.  With `closing` (the collector thread only), also stop
 * the workers once a closed pool is idle: 1 when they are all gone. */
CP_HIDDEN int cp_round_gil(CoreObject *c, int closing);
/* Take the collection token without waiting: 1 taken, 0 held elsewhere. */
CP_HIDDEN int cp_take_token(CoreObject *c);
/* Wait for the template to exit (no GIL), killing it past a grace. */
CP_HIDDEN void cp_wait_template(CoreObject *c);
/* Core.collect(timeout, seen): collect in this thread, for a caller waiting
 * for a result (timeout_ns <0: none).  1 after a round that delivered, on
 * timeout, or when c->delivered is no longer *mark (the caller's note,
 * taken before it looked at its result; NULL: none); 0 when another thread
 * collects; -1 when this one cannot; NULL with an exception. */
CP_HIDDEN PyObject *cp_collect_waiting(CoreObject *c, int64_t timeout_ns,
                                       const uint64_t *mark);
/* The collector thread (arg: the CoreObject, whose reference it owns). */
CP_HIDDEN void *cp_collector_main(void *arg);

/* death.c */
/* Slot i's worker is dead and its results drained: fail what it held,
 * resend what it never took, and ask for a replacement if one is needed. */
CP_HIDDEN void cp_handle_death(CoreObject *c, int i);

/* pool.c */
CP_HIDDEN int cp_core_add_type(PyObject *module, cpool_state *st);
/* Take `mu` while holding the GIL: drop the GIL only to wait, and never
 * hold `mu` while waiting to get the GIL back (a thread ended there, at
 * interpreter exit, would leave `mu` locked for good). */
CP_HIDDEN void cp_lock_with_gil(CoreObject *c);
/* Tell the template to look at the slots (a request is set there). */
CP_HIDDEN void cp_tell_template(CoreObject *c);

/* lock.c: robust process-shared mutexes in an arena. */
typedef struct {
    PyObject_HEAD
    PyObject *arena;
    pthread_mutex_t *m;
    Py_ssize_t offset;
    int recursive;
    int owner_died;   /* the last acquire took over from a dead holder */
} LockObject;
CP_HIDDEN int cp_lock_add_type(PyObject *module, cpool_state *st);
/* 1 acquired, 0 not (non-blocking or timed out), -1 with an exception.
 * timeout_ns < 0: no limit.  Releases the GIL while it waits. */
CP_HIDDEN int cp_lock_acquire(LockObject *l, int block, int64_t timeout_ns);
CP_HIDDEN int cp_lock_release(LockObject *l);
/* Parse acquire's (block=True, timeout=None); 0 or -1. */
CP_HIDDEN int cp_parse_acquire(PyObject *args, PyObject *kwds, int *block,
                               int64_t *timeout_ns);

/* worker.c: what a worker needs of its pool.  The parent fills one in
 * before it forks the template (which inherits it), an exec'ed template
 * from what the parent sent it (spawn.c); it lives as long as the
 * template. */
typedef struct {
    cpool_state *st;
    cp_ctl *ctl;
    int n;
    uint64_t maxtasks;  /* tasks before the worker exits; 0: unlimited */
    const int *wsock;   /* every slot's worker end: a worker keeps its own */
    PyObject *initializer, *initargs, *bootstrap, *pack_error;
    /* A forked template: it never runs Python, nor calls PyOS_AfterFork_Child
     * itself, so that it stays as fork() left it, the parent's state at
     * Pool().  A worker forked from it is then what os.fork() at Pool() would
     * have made, and calls PyOS_AfterFork_Child (the fork hooks run once, in
     * the worker).  0: an exec'ed template, a live interpreter that wraps
     * each fork in PyOS_BeforeFork / PyOS_AfterFork_Parent. */
    int snapshot;
} cp_wconfig;
/* The template's way to fork a worker (a cp_spawn_fn; arg is the
 * cp_wconfig).  The child never returns. */
CP_HIDDEN pid_t cp_spawn_worker(void *arg, int slot);

/* spawn.c: the template of the "spawn" and "forkserver" start methods, a
 * fresh interpreter; and os.fork()'s warning about threads. */
/* os.fork() warns about threads from Python 3.12 on. */
#define CP_FORK_WARNS (PY_VERSION_HEX >= 0x030C0000)
/* This process's OS threads, from /proc/self/stat; 0 when unknown. */
CP_HIDDEN Py_ssize_t cp_count_threads(void);
/* Python 3.12+: os.fork()'s DeprecationWarning, when the process had other
 * threads when it forked (os_threads: cp_count_threads() taken right after
 * the fork; <= 0 falls back to the threading module's count).  0, or -1 with
 * the exception where CPython's os.fork() would raise it (3.15+). */
CP_HIDDEN int cp_warn_fork_with_threads(Py_ssize_t os_threads);
/* Start the template as a fresh interpreter: spec is (executable, argv,
 * fds) from cpool._template; the control segment's memfd, the eventfd, the
 * boot memfd (spec's first fd), the n slots' worker sockets and the rest of
 * spec's fds become the child's descriptors from CP_TFD_CTL on.  The
 * child's pid, or -1 with an exception. */
CP_HIDDEN pid_t cp_exec_template(int ctl_fd, int evfd, const int *wsock, int n,
                                 PyObject *spec);
CP_HIDDEN int cp_spawn_add_functions(PyObject *module);
/* worker.c: _stop_requested() and STOP_SIGNAL, for a worker's stop-signal
 * handler.  0, or -1 with the exception. */
CP_HIDDEN int cp_worker_add_functions(PyObject *module);
/* limits.c: _pause_memory_check() and _pause_after_result(), for the
 * tests: windows held open by cp_test_pause(k), where the parent found a
 * worker past twice its memory cap, where it claimed it for the kill, and
 * where a worker posted a result and has yet to note its task finished. */
enum { CP_PAUSE_FOUND, CP_PAUSE_CLAIMED, CP_PAUSE_POSTED, CP_PAUSES };
CP_HIDDEN void cp_test_pause(int k);
CP_HIDDEN int cp_limits_add_functions(PyObject *module);

/* floor.c: the benchmark's physical limits. */
CP_HIDDEN int cp_floor_add_functions(PyObject *module);

/* arena.c: shared memory for Value/Array and the locks. */
CP_HIDDEN int cp_arena_add_type(PyObject *module, cpool_state *st);
/* Pointer to n bytes at offset of an arena, or NULL with an exception. */
CP_HIDDEN char *cp_arena_at(PyObject *arena, Py_ssize_t offset, size_t n);

/* value.c: the Synchronized wrapper of Value/Array. */
CP_HIDDEN int cp_value_add_type(PyObject *module, cpool_state *st);

/* worker.c: the worker's life after the template forks it.  Never returns. */
CP_HIDDEN void cp_worker_main(const cp_wconfig *cfg, int slot, pid_t tmpl)
    __attribute__((noreturn));
#endif

#endif

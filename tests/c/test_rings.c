/* test_rings.c: ring.c, the single-producer single-consumer record rings,
 * as cpool.h states their contract: records come out in order and intact,
 * whatever the wrap-around; a full ring refuses and stays intact;
 * cp_ring_fits says what cp_ring_try_put will do; a record of
 * cp_ring_inline_max() always goes into a drained ring; and a producer and
 * a consumer on two threads (or two processes) that sleep on the ring's
 * events move every record across.
 */
#include "check.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define HDR ((uint64_t)sizeof(cp_rechdr))
#define REC(n) (HDR + (((uint64_t)(n) + 7) & ~(uint64_t)7)) /* a record's bytes */
#define SEC 1000000000LL

static cp_rechdr hdr_for(uint64_t seq)
{
    cp_rechdr h = {0};
    h.kind = (uint16_t)(CP_K_FUNC + seq % (CP_K_INITERR - CP_K_FUNC + 1));
    h.flags = (uint16_t)(seq * 7);
    h.idx = (uint32_t)seq;
    h.job = seq * 0x100000001ull;
    h.len = 0xdeadbeef; /* put sets it from n */
    return h;
}

/* Check the record peek gave: header, payload, and that it lies whole
 * inside the data area. */
static void check_record(const cp_ring *r, const cp_rechdr *h, uint64_t seq, size_t n)
{
    cp_rechdr want = hdr_for(seq);
    CHECK(h != NULL);
    const unsigned char *d = ct_ring_data(r), *p = (const unsigned char *)h;
    CHECK(p >= d && p + HDR + h->len <= d + r->cap);
    CHECK_EQ((uintptr_t)p % 8, 0);
    CHECK(h->kind != CP_K_WRAP);
    CHECK_EQ(h->kind, want.kind);
    CHECK_EQ(h->flags, want.flags);
    CHECK_EQ(h->idx, want.idx);
    CHECK_EQ(h->job, want.job);
    CHECK_EQ(h->len, n);
    CHECK_EQ(ct_mismatch(h + 1, n, seq), n);
}

TEST(records_come_out_in_order)
{
    cp_ring *r = ct_ring_new(4096);
    unsigned char buf[512];
    CHECK(cp_ring_peek(r) == NULL);
    CHECK_EQ(cp_ring_has_data(r), 0);
    CHECK_EQ(cp_ring_head(r), cp_ring_tail(r));
    uint64_t tail = cp_ring_tail(r);
    for (uint64_t s = 0; s < 20; s++) {
        size_t n = (size_t)(s * 13);
        ct_fill(buf, n, s);
        cp_rechdr h = hdr_for(s);
        CHECK_EQ(cp_ring_try_put(r, &h, buf, n), 0);
        CHECK(cp_ring_tail(r) > tail); /* the position just past it */
        tail = cp_ring_tail(r);
        CHECK_EQ(cp_ring_has_data(r), 1);
    }
    uint64_t head = cp_ring_head(r);
    for (uint64_t s = 0; s < 20; s++) {
        const cp_rechdr *h = cp_ring_peek(r);
        check_record(r, h, s, (size_t)(s * 13));
        CHECK(cp_ring_peek(r) == h); /* until consumed, the same one */
        cp_ring_consume(r, h);
        CHECK(cp_ring_head(r) > head);
        head = cp_ring_head(r);
    }
    CHECK(cp_ring_peek(r) == NULL);
    CHECK_EQ(cp_ring_has_data(r), 0);
    CHECK_EQ(cp_ring_head(r), cp_ring_tail(r));
    free(r);
}

TEST(full_ring_refuses_and_stays_intact)
{
    uint64_t cap = 1024;
    cp_ring *r = ct_ring_new(cap);
    unsigned char buf[64];
    size_t n = 40; /* 64-byte records: exactly 16 fill the ring */
    uint64_t s = 0;
    for (;; s++) {
        ct_fill(buf, n, s);
        cp_rechdr h = hdr_for(s);
        int fits = cp_ring_fits(r, n);
        uint64_t tail = cp_ring_tail(r);
        int rc = cp_ring_try_put(r, &h, buf, n);
        CHECK_EQ(rc, fits ? 0 : -1);
        if (rc != 0) {
            CHECK_EQ(cp_ring_tail(r), tail); /* nothing written */
            break;
        }
        CHECK(s < 100);
    }
    CHECK(s * REC(n) <= cap); /* no more than there is room for */
    /* Refused for want of room: less than a record is left (the records
     * tile the ring, no filler needed). */
    CHECK(cap - (cp_ring_tail(r) - cp_ring_head(r)) < REC(n));
    CHECK_EQ(cp_ring_fits(r, 0), s * REC(n) + HDR <= cap);
    cp_rechdr h = hdr_for(999);
    CHECK_EQ(cp_ring_try_put(r, &h, buf, cap), -1); /* larger than the ring */
    CHECK_EQ(cp_ring_fits(r, cap), 0);
    /* Room comes back as records go, and the refused ones left no trace. */
    const cp_rechdr *first = cp_ring_peek(r);
    check_record(r, first, 0, n);
    cp_ring_consume(r, first);
    CHECK_EQ(cp_ring_fits(r, n), 1);
    ct_fill(buf, n, s);
    h = hdr_for(s);
    CHECK_EQ(cp_ring_try_put(r, &h, buf, n), 0);
    for (uint64_t k = 1; k <= s; k++) {
        const cp_rechdr *rec = cp_ring_peek(r);
        check_record(r, rec, k, n);
        cp_ring_consume(r, rec);
    }
    CHECK(cp_ring_peek(r) == NULL);
    free(r);
}

/* Reach ring position `pos` (mod cap) with the ring empty: one record that
 * ends there (positions 8 and 16 after a wrap are not reachable: a record
 * is at least a header). */
static void drain_at(cp_ring *r, uint64_t pos)
{
    if (pos == 0) return;
    static unsigned char zero[1 << 18];
    CHECK(pos >= HDR && pos - HDR <= sizeof zero);
    cp_rechdr h = hdr_for(0);
    CHECK_EQ(cp_ring_try_put(r, &h, zero, pos - HDR), 0);
    cp_ring_consume(r, cp_ring_peek(r));
    CHECK_EQ(cp_ring_tail(r) % r->cap, pos);
    CHECK(cp_ring_peek(r) == NULL);
}

TEST(inline_max_always_fits_a_drained_ring)
{
    static unsigned char buf[1 << 16];
    /* From 128 bytes up (see the report on 64-byte rings); the pool's rings
     * are 256 KiB. */
    for (uint64_t cap = 128; cap <= (1u << 18); cap *= 2) {
        cp_ring *r = ct_ring_new(cap);
        size_t max = cp_ring_inline_max(r);
        CHECK(max > 0 && max < cap);
        CHECK(max <= sizeof buf);
        ct_fill(buf, max, cap);
        uint64_t step = cap <= 4096 ? 8 : cap / 512;
        for (uint64_t pos = 0; pos < cap; pos += step) {
            if (pos > 0 && pos < HDR) continue;
            cp_ring_init(r, cap);
            drain_at(r, pos);
            cp_rechdr h = hdr_for(cap);
            if (!cp_ring_fits(r, max))
                ct_fail(__FILE__, __LINE__, "ring of %llu at %llu: no room for %zu",
                        (unsigned long long)cap, (unsigned long long)pos, max);
            CHECK_EQ(cp_ring_try_put(r, &h, buf, max), 0);
            check_record(r, cp_ring_peek(r), cap, max);
        }
        free(r);
    }
}

/* Random puts and takes against a model of the queue, in rings of many
 * sizes: every record comes out intact and in order, wherever it wrapped;
 * fits agrees with put every time; head and tail only grow, at most a ring
 * apart. */
TEST(wrap_around_with_fillers)
{
    static unsigned char buf[1 << 14];
    uint64_t rng = 12345;
    uint64_t small_fillers = 0, big_fillers = 0, records = 0;
    for (uint64_t cap = 128; cap <= (1u << 16); cap *= 2) {
        cp_ring *r = ct_ring_new(cap);
        size_t max = cp_ring_inline_max(r);
        enum { Q = 4096 };
        static uint64_t qseq[Q];
        static size_t qlen[Q];
        size_t qh = 0, qt = 0; /* the model: records put, not yet consumed */
        uint64_t seq = 0;
        for (int step = 0; step < 60000; step++) {
            uint64_t x = ct_rand(&rng);
            uint64_t head = cp_ring_head(r), tail = cp_ring_tail(r);
            CHECK(tail - head <= cap);
            if (x % 8 < 5) {
                /* sizes of every residue, small ones often, up to max */
                size_t n = (size_t)((x >> 8) % 4 == 0 ? (x >> 16) % (max + 1)
                                                      : (x >> 16) % (max / 8 + 1));
                ct_fill(buf, n, seq);
                cp_rechdr h = hdr_for(seq);
                int fits = cp_ring_fits(r, n);
                int rc = cp_ring_try_put(r, &h, buf, n);
                CHECK_EQ(rc, fits ? 0 : -1);
                if (rc != 0) {
                    CHECK(qt != qh); /* a drained ring takes max */
                    CHECK_EQ(cp_ring_tail(r), tail);
                    continue;
                }
                uint64_t moved = cp_ring_tail(r) - tail;
                CHECK(moved >= REC(n));
                if (moved > REC(n)) {
                    uint64_t filler = moved - REC(n);
                    CHECK_EQ((tail + filler) % cap, 0); /* to the start, no further */
                    if (filler < HDR) small_fillers++;
                    else big_fillers++;
                }
                CHECK(qt - qh < Q);
                qseq[qt % Q] = seq++;
                qlen[qt % Q] = n;
                qt++;
            } else {
                const cp_rechdr *h = cp_ring_peek(r);
                if (qh == qt) {
                    CHECK(h == NULL);
                    CHECK_EQ(cp_ring_has_data(r), 0);
                    continue;
                }
                CHECK_EQ(cp_ring_has_data(r), 1);
                check_record(r, h, qseq[qh % Q], qlen[qh % Q]);
                cp_ring_consume(r, h);
                CHECK(cp_ring_head(r) > head);
                qh++;
                records++;
            }
        }
        free(r);
    }
    /* Both kinds of filler were met: a full header, and the 8 or 16 bytes
     * left before the end where no header fits. */
    CHECK(small_fillers > 0);
    CHECK(big_fillers > 0);
    printf("     (%llu records; fillers: %llu shorter than a header, %llu not)\n",
           (unsigned long long)records, (unsigned long long)small_fillers,
           (unsigned long long)big_fillers);
}

TEST(reset_forgets_everything)
{
    cp_ring *r = ct_ring_new(1024);
    unsigned char buf[100];
    cp_rechdr h = hdr_for(1);
    ct_fill(buf, sizeof buf, 1);
    for (int i = 0; i < 5; i++) CHECK_EQ(cp_ring_try_put(r, &h, buf, sizeof buf), 0);
    cp_ring_consume(r, cp_ring_peek(r));
    /* sleepers that died registered */
    (void)cp_event_prepare(&r->data);
    (void)cp_event_prepare(&r->space);
    cp_ring_reset(r);
    CHECK(cp_ring_peek(r) == NULL);
    CHECK_EQ(cp_ring_has_data(r), 0);
    CHECK_EQ(cp_ring_head(r), cp_ring_tail(r));
    CHECK_EQ(atomic_load(&r->data.waiters), 0);
    CHECK_EQ(atomic_load(&r->space.waiters), 0);
    CHECK_EQ(r->cap, 1024);
    for (int i = 0; i < 8; i++) CHECK_EQ(cp_ring_try_put(r, &h, buf, sizeof buf), 0);
    for (int i = 0; i < 8; i++) {
        const cp_rechdr *rec = cp_ring_peek(r);
        check_record(r, rec, 1, sizeof buf);
        cp_ring_consume(r, rec);
    }
    free(r);
}

/* ---- a producer and a consumer, sleeping on the ring's events ------------ */

typedef struct {
    cp_ring *r;
    uint64_t n;       /* records to move */
    uint64_t pause;   /* every so many records, the side pauses (the other sleeps) */
    uint64_t sum;     /* the payload bytes' checksum, each side's own */
    uint64_t sleeps;  /* sleeps that ended in a wake-up */
} side;

static uint64_t payload_len(uint64_t seq, size_t max)
{
    uint64_t x = seq * 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    return (x & 7) == 0 ? (x >> 8) % (max + 1) : (x >> 8) % 64; /* mostly small */
}

static void produce(side *s)
{
    cp_ring *r = s->r;
    size_t max = cp_ring_inline_max(r);
    unsigned char *buf = malloc(max + 1);
    CHECK(buf != NULL);
    int unsignalled = 0;
    for (uint64_t seq = 0; seq < s->n; seq++) {
        size_t n = (size_t)payload_len(seq, max);
        ct_fill(buf, n, seq);
        s->sum = ct_sum(s->sum, buf, n);
        cp_rechdr h = hdr_for(seq);
        while (cp_ring_try_put(r, &h, buf, n) != 0) {
            /* Full: first wake the consumer for what is there (records
             * are signalled in batches), then sleep for room. */
            cp_event_signal(&r->data);
            unsignalled = 0;
            uint32_t seen = cp_event_prepare(&r->space);
            if (cp_ring_fits(r, n)) {
                cp_event_cancel(&r->space);
                continue;
            }
            int rc = cp_event_sleep(&r->space, seen, 5 * SEC);
            if (rc == ETIMEDOUT)
                ct_fail(__FILE__, __LINE__, "lost wake-up: no room in 5 s");
            s->sleeps += rc == 0;
        }
        if (++unsignalled == 16) {
            cp_event_signal(&r->data);
            unsignalled = 0;
        }
        if (seq % s->pause == s->pause / 2) {
            cp_event_signal(&r->data);
            unsignalled = 0;
            ct_sleep_us(300); /* the consumer drains the ring and sleeps */
        }
    }
    cp_event_signal(&r->data);
    free(buf);
}

static void consume(side *s)
{
    cp_ring *r = s->r;
    for (uint64_t seq = 0; seq < s->n; seq++) {
        const cp_rechdr *h;
        while ((h = cp_ring_peek(r)) == NULL) {
            uint32_t seen = cp_event_prepare(&r->data);
            if (cp_ring_has_data(r)) {
                cp_event_cancel(&r->data);
                continue;
            }
            int rc = cp_event_sleep(&r->data, seen, 5 * SEC);
            if (rc == ETIMEDOUT)
                ct_fail(__FILE__, __LINE__, "lost wake-up: no record %llu in 5 s",
                        (unsigned long long)seq);
            s->sleeps += rc == 0;
        }
        size_t n = (size_t)payload_len(seq, cp_ring_inline_max(r));
        if (h->idx != (uint32_t)seq || h->len != n || ct_mismatch(h + 1, n, seq) != n)
            check_record(r, h, seq, n); /* says what differs */
        s->sum = ct_sum(s->sum, h + 1, h->len);
        cp_ring_consume(r, h); /* wakes the producer if it sleeps */
        if (seq % s->pause == 0 && seq > 0) ct_sleep_us(300); /* the producer fills it */
    }
    CHECK(cp_ring_peek(r) == NULL);
}

static void *producer_main(void *arg)
{
    produce(arg);
    return NULL;
}

TEST(threads_move_a_million_records)
{
    cp_ring *r = ct_ring_new(4096);
    side p = {.r = r, .n = 1000000, .pause = 100000};
    side c = p;
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, producer_main, &p), 0);
    consume(&c);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_EQ(c.sum, p.sum);
    CHECK_EQ(cp_ring_head(r), cp_ring_tail(r));
    /* Both ends slept and were woken, on data and on space. */
    CHECK(p.sleeps > 0);
    CHECK(c.sleeps > 0);
    printf("     (producer woken %llu times, consumer %llu)\n",
           (unsigned long long)p.sleeps, (unsigned long long)c.sleeps);
    free(r);
}

static void producer_process(void *arg)
{
    side *p = arg;
    produce(p);
    CHECK(p->sleeps > 0);
}

TEST(processes_move_records_through_shared_memory)
{
    uint64_t cap = 8192;
    size_t size = sizeof(cp_ring) + cap;
    cp_ring *r = cp_shared_map(size);
    CHECK(r != NULL);
    cp_ring_init(r, cap);
    side *p = cp_shared_map(sizeof *p); /* its checksum comes back here */
    CHECK(p != NULL);
    *p = (side){.r = r, .n = 200000, .pause = 50000};
    side c = *p;
    pid_t pid = ct_fork(producer_process, p);
    consume(&c);
    ct_wait_ok(pid, 30000);
    CHECK_EQ(c.sum, p->sum);
    CHECK(c.sleeps > 0);
    munmap(p, sizeof *p);
    munmap(r, size);
}

/* ring.c: single-producer single-consumer rings of length-prefixed records.
 *
 * No Python here.  A ring is a byte area of power-of-two size with a head
 * (consumed) and a tail (published) counter that only grow.  Each record is a
 * cp_rechdr plus its payload, padded to 8 bytes, and never straddles the end:
 * a producer that would straddle writes a CP_K_WRAP filler and starts again at
 * offset 0.  The producer publishes with a release store of the tail; the
 * consumer frees room with a release store of the head.  Who waits on what is
 * up to the caller (see cp_event); nothing here blocks.
 */
#include "cpool.h"

#include <string.h>

#define ALIGN8(n) (((n) + 7u) & ~(uint64_t)7u)
#define HDR ((uint64_t)sizeof(cp_rechdr))

static inline unsigned char *ring_data(const cp_ring *r)
{
    return (unsigned char *)r + r->data_off;
}

void cp_ring_init(cp_ring *r, uint64_t cap)
{
    memset(r, 0, sizeof *r);
    r->cap = cap;
    r->data_off = ALIGN8(sizeof *r);
}

void cp_ring_reset(cp_ring *r)
{
    atomic_store(&r->head, 0);
    atomic_store(&r->tail, 0);
    atomic_store(&r->data.waiters, 0);
    atomic_store(&r->space.waiters, 0);
}

size_t cp_ring_inline_max(const cp_ring *r) { return (size_t)(r->cap / 4); }

uint64_t cp_ring_tail(const cp_ring *r)
{
    return atomic_load_explicit(&((cp_ring *)r)->tail, memory_order_relaxed);
}

uint64_t cp_ring_head(const cp_ring *r)
{
    return atomic_load_explicit(&((cp_ring *)r)->head, memory_order_acquire);
}

/* Bytes a payload of n needs, with the worst-case filler before it. */
static int fits_at(const cp_ring *r, uint64_t tail, uint64_t head, size_t n,
                   uint64_t *skip)
{
    uint64_t need = CP_REC_BYTES(n);
    uint64_t off = tail & (r->cap - 1);
    *skip = (off + need > r->cap) ? r->cap - off : 0;
    return (tail - head) + *skip + need <= r->cap;
}

int cp_ring_fits(cp_ring *r, size_t n)
{
    uint64_t skip;
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    return fits_at(r, tail, head, n, &skip);
}

int cp_ring_try_put(cp_ring *r, const cp_rechdr *h, const void *p, size_t n)
{
    return cp_ring_try_put2(r, h, NULL, 0, p, n);
}

int cp_ring_try_put2(cp_ring *r, const cp_rechdr *h, const void *p0, size_t n0,
                     const void *p, size_t n)
{
    uint64_t skip;
    n += n0;
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (!fits_at(r, tail, head, n, &skip)) return -1;
    unsigned char *d = ring_data(r);
    if (skip) {
        /* Offsets are 8-aligned, so at least 8 bytes remain; when fewer
         * than a header remain the consumer knows a filler by position. */
        cp_rechdr wrap = {0};
        wrap.kind = CP_K_WRAP;
        uint64_t off = tail & (r->cap - 1);
        memcpy(d + off, &wrap, skip < HDR ? (size_t)skip : HDR);
        tail += skip;
    }
    uint64_t off = tail & (r->cap - 1);
    cp_rechdr hh = *h;
    hh.len = (uint32_t)n;
    memcpy(d + off, &hh, HDR);
    if (n0) memcpy(d + off + HDR, p0, n0);
    if (n > n0) memcpy(d + off + HDR + n0, p, n - n0);
    atomic_store_explicit(&r->tail, tail + CP_REC_BYTES(n), memory_order_release);
    return 0;
}

cp_rechdr *cp_ring_at(cp_ring *r, uint64_t pos)
{
    return (cp_rechdr *)(ring_data(r) + (pos & (r->cap - 1)));
}

const cp_rechdr *cp_ring_peek(cp_ring *r)
{
    for (;;) {
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (head == tail) return NULL;
        uint64_t off = head & (r->cap - 1);
        const cp_rechdr *h = (const cp_rechdr *)(ring_data(r) + off);
        /* A filler is recognised by position alone when it is shorter than
         * a header (the producer wrote only what fitted). */
        if (r->cap - off < HDR || h->kind == CP_K_WRAP) {
            atomic_store_explicit(&r->head, head + (r->cap - off), memory_order_release);
            continue;
        }
        return h;
    }
}

void cp_ring_consume(cp_ring *r, const cp_rechdr *h)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    atomic_store_explicit(&r->head, head + CP_REC_BYTES(h->len), memory_order_release);
    cp_event_signal(&r->space);
}

int cp_ring_has_data(cp_ring *r)
{
    return atomic_load_explicit(&r->head, memory_order_relaxed) !=
           atomic_load_explicit(&r->tail, memory_order_acquire);
}

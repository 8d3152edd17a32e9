/* test_copy.c: copy.c's cp_copy_fresh, which must be memcpy into fresh
 * memory whatever it does underneath (pages faulted in ahead, a large copy
 * split over two threads): every size from 0 up past the split, at every
 * misalignment of source and destination, and not a byte outside dst.
 */
#include "check.h"

#include <stdlib.h>
#include <sys/mman.h>

#define MiB ((size_t)1 << 20)
#define GUARD 64

/* Copy n bytes of seed's from src+so to a fresh mapping at +doff (so dst
 * starts anywhere in a page), with guard bytes either side. */
static void copy_and_check(const char *src, size_t n, size_t doff, uint64_t seed)
{
    size_t len = doff + GUARD + n + GUARD;
    char *map =
        mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(map != MAP_FAILED);
    char *dst = map + doff + GUARD;
    memset(dst - GUARD, 0xa5, GUARD);
    memset(dst + n, 0xa5, GUARD);
    cp_copy_fresh(dst, src, n);
    size_t bad = ct_mismatch(dst, n, seed);
    if (bad != n)
        ct_fail(__FILE__, __LINE__,
                "copy of %zu bytes to page offset %zu: byte %zu differs", n,
                (size_t)((uintptr_t)dst % 4096), bad);
    for (int g = 0; g < GUARD; g++) {
        CHECK_EQ((unsigned char)dst[-1 - g], 0xa5);
        CHECK_EQ((unsigned char)dst[n + (size_t)g], 0xa5);
    }
    munmap(map, len);
}

TEST(copy_every_small_size_and_alignment)
{
    enum { MAX = 300 };
    char *src = malloc(MAX + 16);
    CHECK(src != NULL);
    for (size_t so = 0; so < 8; so++) {
        for (size_t n = 0; n <= MAX; n++) {
            ct_fill(src + so, n, n * 8 + so);
            copy_and_check(src + so, n, (n * 3 + so) % 16, n * 8 + so);
        }
    }
    free(src);
}

TEST(copy_large_sizes_unaligned)
{
    /* Around a page, the prefault threshold (1 MiB), the split (2 MiB),
     * and well past it. */
    static const size_t sizes[] = {
        4095,        4096,           4097,           65536 + 3,     MiB - 1,
        MiB,         MiB + 1,        2 * MiB - 4096, 2 * MiB - 1,   2 * MiB,
        2 * MiB + 1, 2 * MiB + 4095, 2 * MiB + 4097, 3 * MiB + 123, 8 * MiB + 7,
    };
    size_t maxn = 8 * MiB + 7;
    char *src = malloc(maxn + 64);
    CHECK(src != NULL);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i], so = i % 8, doff = (i * 1237) % 4096;
        ct_fill(src + so, n, 1000 + i);
        copy_and_check(src + so, n, doff, 1000 + i);
    }
    free(src);
}

TEST(copy_into_malloc_memory)
{
    /* Into a heap block of exactly n (ASan sees a byte past it). */
    for (size_t n = 1; n <= 5 * MiB; n = n * 3 + 1) {
        char *src = malloc(n), *dst = malloc(n);
        CHECK(src != NULL && dst != NULL);
        ct_fill(src, n, n);
        cp_copy_fresh(dst, src, n);
        CHECK_EQ(ct_mismatch(dst, n, n), n);
        free(src);
        free(dst);
    }
}

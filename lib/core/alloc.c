/* Aligned allocation: 64 bytes, one cache line and one AVX-512 register. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

#define MLA_ALIGN 64

/* Allocations left before one fails (tests only, mla__alloc_fail_after); −1: none fails. */
static _Atomic long long fail_after = -1;

void mla__alloc_fail_after(long long n)
{
    atomic_store(&fail_after, n < 0 ? -1 : n);
}

long long mla__alloc_fail_pending(void)
{
    return atomic_load(&fail_after);
}

void *mla_alloc(size_t size)
{
    /* One relaxed load on the common path. The decrement that takes the count from 0 to −1
     * fails this allocation: every thread's allocations count, in whatever order they come. */
    if (atomic_load_explicit(&fail_after, memory_order_relaxed) >= 0 &&
        atomic_fetch_sub(&fail_after, 1) == 0)
        return NULL;
    if (size == 0)
        size = 1;
    size_t rounded = (size + MLA_ALIGN - 1) / MLA_ALIGN * MLA_ALIGN;
    if (rounded < size)
        return NULL;
    return aligned_alloc(MLA_ALIGN, rounded);
}

void *mla_calloc(size_t count, size_t size)
{
    size_t total;
    if (!mla_mul_size(count, size, &total))
        return NULL;
    void *p = mla_alloc(total);
    if (p)
        memset(p, 0, total);
    return p;
}

void mla_free(void *p)
{
    free(p);
}

float *mla_dup_f32(const float *src, size_t n)
{
    size_t bytes;
    if (!mla_mul_size(n, sizeof(float), &bytes))
        return NULL;
    float *p = mla_alloc(bytes);
    if (p)
        memcpy(p, src, bytes);
    return p;
}

int mla_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

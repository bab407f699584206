/* Aligned allocation: 64 bytes, one cache line and one AVX-512 register. */
#include <stdlib.h>
#include <string.h>

#include "core.h"

#define MLA_ALIGN 64

void *mla_alloc(size_t size)
{
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

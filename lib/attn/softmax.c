/* Merging partial softmaxes of one query row computed over disjoint token ranges (split-K). */
#include <math.h>

#include "attn/internal.h"

void mla__softmax_merge(int64_t rows, int64_t dv, float *mx_a, float *l_a, float *o_a,
                        ptrdiff_t ldo_a, const float *mx_b, const float *l_b, const float *o_b,
                        ptrdiff_t ldo_b)
{
    for (int64_t i = 0; i < rows; i++) {
        if (l_b[i] == 0.0f)
            continue; /* b saw no token of this row */
        float *oa = o_a + i * ldo_a;
        const float *ob = o_b + i * ldo_b;
        if (l_a[i] == 0.0f) {
            mx_a[i] = mx_b[i];
            l_a[i] = l_b[i];
            for (int64_t j = 0; j < dv; j++)
                oa[j] = ob[j];
            continue;
        }
        float m = fmaxf(mx_a[i], mx_b[i]);
        float sa = expf(mx_a[i] - m), sb = expf(mx_b[i] - m);
        mx_a[i] = m;
        l_a[i] = l_a[i] * sa + l_b[i] * sb;
        for (int64_t j = 0; j < dv; j++)
            oa[j] = oa[j] * sa + ob[j] * sb;
    }
}

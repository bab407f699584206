/* Partial RoPE: which frequency pairs each KV head keeps (../shared/mha2mla.md, step 1). */
#include <stdlib.h>
#include <string.h>

#include <mla/convert.h>

#include "convert/internal.h"

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The k highest-scoring indices of s[0, n), ascending by index. Ties go to the lower index
 * (a stable choice; the reference's topk leaves them unspecified). */
static void top_k(const double *s, int32_t n, int32_t k, int32_t *out)
{
    for (int32_t m = 0; m < k; m++) {
        int32_t best = -1;
        for (int32_t i = 0; i < n; i++) {
            int taken = 0;
            for (int32_t q = 0; q < m; q++)
                taken |= out[q] == i;
            if (!taken && (best < 0 || s[i] > s[best]))
                best = i;
        }
        out[m] = best;
    }
    qsort(out, (size_t)k, sizeof *out, cmp_i32);
}

mla_status mla__select_freqs(const mla_geometry *g, const mla_convert_params *p,
                             const mla_calib *calib, int32_t *freqs)
{
    const int32_t r = p->rope_dim, d_h = g->head_dim, half = d_h / 2, kp = r / 2;
    const int32_t n_kv = g->n_kv_heads;
    switch (p->rope_strategy) {
    case MLA_ROPE_HIGH:
        for (int32_t j = 0; j < n_kv; j++)
            for (int32_t k = 0; k < kp; k++)
                freqs[j * kp + k] = k;
        return MLA_OK;
    case MLA_ROPE_LOW:
        for (int32_t j = 0; j < n_kv; j++)
            for (int32_t k = 0; k < kp; k++)
                freqs[j * kp + k] = half - kp + k;
        return MLA_OK;
    case MLA_ROPE_UNIFORM: {
        if (r == 0)
            return MLA_OK;
        /* Step t = d_h / r; with t dividing d_h/2 and start < t this yields exactly r/2 pairs. */
        if (d_h % r != 0 || half % (d_h / r) != 0)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "params.rope_dim = %d with MLA_ROPE_UNIFORM: the step head_dim/rope_dim "
                            "must be an integer dividing head_dim/2 = %d", (int)r, (int)half);
        const int32_t t = d_h / r;
        if (p->uniform_start < 0 || p->uniform_start >= t)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "params.uniform_start is %d, must be in [0, %d) (the step "
                            "head_dim/rope_dim)", (int)p->uniform_start, (int)t);
        for (int32_t j = 0; j < n_kv; j++)
            for (int32_t k = 0; k < kp; k++)
                freqs[j * kp + k] = p->uniform_start + k * t;
        return MLA_OK;
    }
    case MLA_ROPE_2NORM: {
        if (r == 0)
            return MLA_OK;
        if (!calib)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "params.rope_strategy is MLA_ROPE_2NORM, which needs calib (NULL)");
        double *score = mla_alloc((size_t)n_kv * (size_t)half * sizeof(double));
        if (!score)
            return mla_fail(MLA_ERR_OUT_OF_MEMORY, "2-norm scores");
        mla_status st = mla__calib_score(calib, score);
        if (st != MLA_OK) {
            mla_free(score);
            return mla_fail_context(st, "params.rope_strategy MLA_ROPE_2NORM: ");
        }
        for (int32_t j = 0; j < n_kv; j++)
            top_k(score + (size_t)j * (size_t)half, half, kp, freqs + j * kp);
        mla_free(score);
        return MLA_OK;
    }
    case MLA_ROPE_EXPLICIT: {
        if (r == 0)
            return MLA_OK;
        if (!p->explicit_freqs)
            return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                            "params.explicit_freqs is NULL with MLA_ROPE_EXPLICIT");
        for (int32_t j = 0; j < n_kv; j++) {
            const int32_t *e = p->explicit_freqs + j * kp;
            for (int32_t k = 0; k < kp; k++) {
                if (e[k] < 0 || e[k] >= half)
                    return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                                    "params.explicit_freqs[%d][%d] is %d, must be in [0, %d)",
                                    (int)j, (int)k, (int)e[k], (int)half);
                for (int32_t q = 0; q < k; q++)
                    if (e[q] == e[k])
                        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                                        "params.explicit_freqs[%d]: frequency %d appears twice",
                                        (int)j, (int)e[k]);
            }
            memcpy(freqs + j * kp, e, (size_t)kp * sizeof *freqs);
            qsort(freqs + j * kp, (size_t)kp, sizeof *freqs, cmp_i32);
        }
        return MLA_OK;
    }
    }
    return mla_fail(MLA_ERR_INVALID_ARGUMENT, "params.rope_strategy is %d, unknown",
                    (int)p->rope_strategy);
}

void mla__freqs_to_dims(const mla_geometry *g, int32_t r, const int32_t *freqs, int32_t *dims)
{
    const int32_t half = g->head_dim / 2, kp = r / 2;
    for (int32_t j = 0; j < g->n_kv_heads; j++)
        for (int32_t k = 0; k < kp; k++) {
            dims[j * r + k] = freqs[j * kp + k];
            dims[j * r + kp + k] = freqs[j * kp + k] + half;
        }
}

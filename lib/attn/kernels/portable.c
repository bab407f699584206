/* Portable float32 kernels: the reference every vectorized variant is tested against. */
#include <math.h>
#include <string.h>

#include "attn/kernels/kernels.h"

static void gemm_bc(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                    ptrdiff_t csa, const float *b, ptrdiff_t ldb, float beta, float *c,
                    ptrdiff_t ldc)
{
    for (int64_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        if (beta == 0.0f)
            memset(ci, 0, (size_t)n * sizeof *ci);
        for (int64_t kk = 0; kk < k; kk++) {
            float aik = a[i * rsa + kk * csa];
            const float *bk = b + kk * ldb;
            for (int64_t j = 0; j < n; j++)
                ci[j] += aik * bk[j];
        }
    }
}

static void gemm_dot(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
                     const float *b, ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            const float *ai = a + i * lda, *bj = b + j * ldb;
            float s = 0.0f;
            for (int64_t kk = 0; kk < k; kk++)
                s += ai[kk] * bj[kk];
            c[i * ldc + j] = (beta == 0.0f ? 0.0f : c[i * ldc + j]) + s;
        }
}

static void softmax_step(int64_t n_rows, int64_t t_len, float *s, ptrdiff_t s_row,
                         ptrdiff_t s_col, const int64_t *nvis, int64_t rows_per_nvis, float *mx,
                         float *l, ptrdiff_t ms, float *o, ptrdiff_t ldo, int64_t dv)
{
    for (int64_t i = 0; i < n_rows; i++) {
        float *si = s + i * s_row;
        int64_t nv = nvis[i / rows_per_nvis];
        float m_old = mx[i * ms], m_new = m_old;
        for (int64_t t = 0; t < nv; t++)
            m_new = fmaxf(m_new, si[t * s_col]);
        float sum = 0.0f;
        for (int64_t t = 0; t < nv; t++) {
            float p = expf(si[t * s_col] - m_new);
            si[t * s_col] = p;
            sum += p;
        }
        for (int64_t t = nv; t < t_len; t++)
            si[t * s_col] = 0.0f;
        if (nv == 0)
            continue;
        /* The first visible tile of a row has m_old = −inf: the scale is exp(−inf) = 0. */
        float scale = expf(m_old - m_new);
        mx[i * ms] = m_new;
        l[i * ms] = l[i * ms] * scale + sum;
        if (scale != 1.0f) {
            float *oi = o + i * ldo;
            for (int64_t j = 0; j < dv; j++)
                oi[j] *= scale;
        }
    }
}

float mla__src_get(const mla__src *s, int64_t t, int64_t k)
{
    const unsigned char *row = s->p + t * s->ld;
    uint16_t h;
    float f;
    switch (s->t) {
    case MLA_DTYPE_F16:
        memcpy(&h, row + 2 * k, sizeof h);
        return mla_f16_to_f32(h);
    case MLA_DTYPE_BF16:
        memcpy(&h, row + 2 * k, sizeof h);
        return mla_bf16_to_f32(h);
    case MLA_DTYPE_I8:
        return (float)(int8_t)row[k] * s->sc[t * s->lds + k / s->group];
    default:
        memcpy(&f, row + 4 * k, sizeof f);
        return f;
    }
}

static void load_t(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                   float *dst, ptrdiff_t ldd)
{
    for (int64_t t = 0; t < n; t++)
        for (int64_t k = 0; k < kw; k++)
            dst[k * ldd + t] = mla__src_get(s, t0 + t, col0 + k);
}

static void load_t16(const mla__src *s, int64_t t0, int64_t n, int64_t col0, int64_t kw,
                     uint16_t *dst, ptrdiff_t ldd)
{
    for (int64_t t = 0; t < n; t++) {
        const unsigned char *row = s->p + (t0 + t) * s->ld + 2 * col0;
        for (int64_t k = 0; k < kw; k++)
            memcpy(dst + k * ldd + t, row + 2 * k, 2);
    }
}

static void gemm_bc_src(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t rsa,
                        ptrdiff_t csa, const mla__src *b, int64_t t0, int64_t col0, float beta,
                        float *c, ptrdiff_t ldc)
{
    for (int64_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        if (beta == 0.0f)
            memset(ci, 0, (size_t)n * sizeof *ci);
        for (int64_t kk = 0; kk < k; kk++) {
            float aik = a[i * rsa + kk * csa];
            for (int64_t j = 0; j < n; j++)
                ci[j] += aik * mla__src_get(b, t0 + kk, col0 + j);
        }
    }
}

static void gemm_dot_src(int64_t m, int64_t n, int64_t k, const float *a, ptrdiff_t lda,
                         const mla__src *b, int64_t t0, int64_t col0, float beta, float *c,
                         ptrdiff_t ldc)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (int64_t kk = 0; kk < k; kk++)
                s += a[i * lda + kk] * mla__src_get(b, t0 + j, col0 + kk);
            c[i * ldc + j] = (beta == 0.0f ? 0.0f : c[i * ldc + j]) + s;
        }
}

static void gemm_bc_asrc(int64_t m, int64_t n, int64_t k, const mla__src *a, int64_t t0,
                         int64_t col0, const float *b, ptrdiff_t ldb, float beta, float *c,
                         ptrdiff_t ldc)
{
    for (int64_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        if (beta == 0.0f)
            memset(ci, 0, (size_t)n * sizeof *ci);
        for (int64_t kk = 0; kk < k; kk++) {
            float aik = mla__src_get(a, t0 + i, col0 + kk);
            const float *bk = b + kk * ldb;
            for (int64_t j = 0; j < n; j++)
                ci[j] += aik * bk[j];
        }
    }
}

static void mha_scores(int64_t n_kv, int64_t d, int64_t n, const float *q, const mla__src *k,
                       int64_t t0, float *s, ptrdiff_t lds)
{
    for (int64_t j = 0; j < n_kv; j++)
        gemm_dot_src(1, n, d, q + j * d, d, k, t0, j * d, 0.0f, s + j * lds, lds);
}

static void mha_values(int64_t n_kv, int64_t d, int64_t n, const float *p, ptrdiff_t lds,
                       const mla__src *v, int64_t t0, float *o, ptrdiff_t ldo)
{
    for (int64_t j = 0; j < n_kv; j++)
        gemm_bc_src(1, d, n, p + j * lds, lds, 1, v, t0, j * d, 1.0f, o + j * ldo, ldo);
}

static float bf(const uint16_t *p)
{
    return mla_bf16_to_f32(*p);
}

static void gemm_bf16(int64_t m, int64_t n, int64_t kp, const uint16_t *a, ptrdiff_t rsa,
                      ptrdiff_t csa, const uint16_t *b, ptrdiff_t ldb, float beta, float *c,
                      ptrdiff_t ldc)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            /* The odd element first, then the even one, as vdpbf16ps is specified. */
            for (int64_t p = 0; p < kp; p++) {
                const uint16_t *ap = a + i * rsa + p * csa, *bp = b + p * ldb + 2 * j;
                s += bf(ap + 1) * bf(bp + 1);
                s += bf(ap) * bf(bp);
            }
            c[i * ldc + j] = (beta == 0.0f ? 0.0f : c[i * ldc + j]) + s;
        }
}

static void pack_pairs(const mla__src *s, int64_t n, int64_t col0, int64_t w, uint16_t *dst,
                       ptrdiff_t ldd, int64_t t)
{
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *row = s->p + i * s->ld + 2 * col0;
        uint16_t *d = dst + ((t + i) / 2) * ldd + (t + i) % 2;
        for (int64_t k = 0; k < w; k++)
            memcpy(d + 2 * k, row + 2 * k, sizeof *d);
    }
}

static void to_bf16(const float *x, int64_t n, uint16_t *dst)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = mla_f32_to_bf16(x[i]);
}

static void round_bf16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = mla_bf16_to_f32(mla_f32_to_bf16(x[i]));
}

void mla__seg_dots_portable(int64_t n, int64_t n_kv, int64_t g, int64_t r, const float *x,
                            ptrdiff_t ldx, const float *q, float beta, float *s, ptrdiff_t lds)
{
    for (int64_t u = 0; u < n; u++)
        for (int64_t j = 0; j < n_kv; j++)
            for (int64_t i = 0; i < g; i++) {
                const float *xj = x + u * ldx + j * r, *qi = q + (j * g + i) * r;
                float acc = 0.0f;
                for (int64_t kk = 0; kk < r; kk++)
                    acc += xj[kk] * qi[kk];
                float *sp = s + u * lds + j * g + i;
                *sp = beta != 0.0f ? *sp + acc : acc;
            }
}

const mla__attn_kernels mla__attn_kernels_portable = {
    "portable", gemm_bc, gemm_dot, softmax_step, load_t, load_t16, gemm_bc_src, gemm_dot_src,
    gemm_bc_asrc, mha_scores, mha_values, gemm_bf16, pack_pairs, to_bf16, round_bf16,
    mla__seg_dots_portable,
    0, 1, /* the oracle keeps the bf16 products everywhere (tests: attn/quant-portable) */
    "portable", 0, 0, /* weights products: BLIS */
    NULL, NULL,       /* I8 keys dequantized by load_t */
};

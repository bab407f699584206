/*
 * Each vectorized kernel against the portable one (the oracle), over shapes that hit every
 * block size and tail: products to float32 rounding of the sums, the online-softmax step in both
 * score layouts with rows seeing different numbers of tokens, including none.
 */
#include <math.h>
#include <string.h>

#include "attn/kernels/kernels.h"
#include "../tap.h"

static float *randv(size_t n, unsigned long long *seed)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)tap_rand(seed);
    return p;
}

/* max |a − b| / (k · max|b|): the error a sum of k products may carry in float32. */
static double prod_err(const float *a, const float *b, size_t n, int64_t k)
{
    return tap_rel_diff(a, b, n) / (double)(k > 0 ? k : 1);
}

static void test_products(const mla__attn_kernels *v, const mla__attn_kernels *p)
{
    static const int64_t ms[] = {1, 3, 9, 12, 13, 32};
    static const int64_t ns[] = {1, 5, 16, 17, 31, 48, 70};
    static const int64_t ks[] = {0, 1, 7, 16, 33};
    unsigned long long seed = 5;
    double worst_bc = 0, worst_dot = 0;
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 7; b++)
            for (size_t c = 0; c < 5; c++) {
                int64_t m = ms[a], n = ns[b], k = ks[c];
                for (int variant = 0; variant < 2; variant++) {
                    float beta = variant ? 1.0f : 0.0f;
                    /* A with a column stride (transposed probabilities) or row-contiguous. */
                    ptrdiff_t rsa = variant ? 1 : k + 3, csa = variant ? m + 2 : 1;
                    ptrdiff_t ldb = n + 5, ldc = n + 2;
                    float *A = randv((size_t)((m + 2) * (k + 3) + 8), &seed);
                    float *B = randv((size_t)(k * ldb + 1), &seed);
                    float *C0 = randv((size_t)(m * ldc), &seed);
                    float *C1 = malloc((size_t)(m * ldc) * sizeof *C1);
                    memcpy(C1, C0, (size_t)(m * ldc) * sizeof *C1);
                    v->gemm_bc(m, n, k, A, rsa, csa, B, ldb, beta, C0, ldc);
                    p->gemm_bc(m, n, k, A, rsa, csa, B, ldb, beta, C1, ldc);
                    double e = prod_err(C0, C1, (size_t)(m * ldc), k + 1);
                    worst_bc = e > worst_bc || e != e ? e : worst_bc;
                    /* gemm_dot: A m × k (lda k + 3), B n × k (ldb k + 1). */
                    float *Bd = randv((size_t)(n * (k + 1) + 1), &seed);
                    memcpy(C1, C0, (size_t)(m * ldc) * sizeof *C1);
                    v->gemm_dot(m, n, k, A, k + 3, Bd, k + 1, beta, C0, ldc);
                    p->gemm_dot(m, n, k, A, k + 3, Bd, k + 1, beta, C1, ldc);
                    e = prod_err(C0, C1, (size_t)(m * ldc), k + 1);
                    worst_dot = e > worst_dot || e != e ? e : worst_dot;
                    free(A);
                    free(B);
                    free(Bd);
                    free(C0);
                    free(C1);
                }
            }
    CHECK(worst_bc < 1e-6, "%s gemm_bc equals portable (max rel err per term %.2e)", v->name,
          worst_bc);
    CHECK(worst_dot < 1e-6, "%s gemm_dot equals portable (max rel err per term %.2e)", v->name,
          worst_dot);
}

static void test_softmax(const mla__attn_kernels *v, const mla__attn_kernels *p, int columns)
{
    unsigned long long seed = 9;
    double worst = 0;
    for (int64_t rows = 1; rows <= 40; rows += 13)
        for (int64_t t_len = 1; t_len <= 70; t_len += 23) {
            int64_t dv = 19, per = 3;
            ptrdiff_t s_row = columns ? 1 : t_len + 1, s_col = columns ? rows : 1;
            size_t sn = (size_t)(rows * (t_len + 1));
            float *s0 = randv(sn, &seed), *s1 = malloc(sn * sizeof *s1);
            for (size_t i = 0; i < sn; i++)
                s0[i] *= 8.0f;
            memcpy(s1, s0, sn * sizeof *s1);
            int64_t nvis[64];
            for (int64_t i = 0; i < (rows + per - 1) / per; i++)
                nvis[i] = (i * 7) % (t_len + 1); /* includes 0 and t_len */
            float mx0[64], l0[64], mx1[64], l1[64];
            for (int64_t i = 0; i < rows; i++) {
                /* Half the rows start fresh, half carry a previous tile's state. */
                mx0[i] = mx1[i] = i % 2 ? -INFINITY : (float)tap_rand(&seed) * 4.0f;
                l0[i] = l1[i] = i % 2 ? 0.0f : 2.0f;
            }
            float *o0 = randv((size_t)(rows * dv), &seed), *o1 = malloc((size_t)(rows * dv) * sizeof *o1);
            for (int64_t i = 1; i < rows; i += 2)
                memset(o0 + i * dv, 0, (size_t)dv * sizeof *o0);
            memcpy(o1, o0, (size_t)(rows * dv) * sizeof *o1);
            v->softmax_step(rows, t_len, s0, s_row, s_col, nvis, per, mx0, l0, 1, o0, dv, dv);
            p->softmax_step(rows, t_len, s1, s_row, s_col, nvis, per, mx1, l1, 1, o1, dv, dv);
            double e = tap_rel_diff(s0, s1, sn);
            double e2 = tap_rel_diff(o0, o1, (size_t)(rows * dv));
            double e3 = tap_rel_diff(l0, l1, (size_t)rows);
            int same_mx = 1;
            for (int64_t i = 0; i < rows; i++)
                same_mx &= mx0[i] == mx1[i] || (isinf(mx0[i]) && isinf(mx1[i]));
            if (!same_mx)
                e = INFINITY;
            e = e > e2 ? e : e2;
            e = e > e3 ? e : e3;
            worst = e > worst || e != e ? e : worst;
            free(s0);
            free(s1);
            free(o0);
            free(o1);
        }
    CHECK(worst < 1e-6, "%s softmax step, %s layout, equals portable (max rel err %.2e)",
          v->name, columns ? "column" : "row", worst);
}

int main(void)
{
    const mla__attn_kernels *p = &mla__attn_kernels_portable;
    const mla__attn_kernels *best = mla__attn_kernels_best();
    CHECK(best != NULL && best->gemm_bc && best->gemm_dot && best->softmax_step,
          "kernel table chosen (%s)", best ? best->name : "none");
#ifdef MLA_ATTN_HAVE_AVX512
    const mla_cpu_features *f = mla_cpu();
    if (f->avx512f && f->avx512bw && f->avx512vl && f->fma) {
        test_products(&mla__attn_kernels_avx512, p);
        test_softmax(&mla__attn_kernels_avx512, p, 1);
        test_softmax(&mla__attn_kernels_avx512, p, 0);
    } else {
        printf("ok %d # SKIP this CPU has no AVX-512\n", ++tap_count);
    }
#else
    printf("ok %d # SKIP no AVX-512 kernels in this build\n", ++tap_count);
#endif
    return tap_done();
}

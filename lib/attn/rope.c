/* RoPE on the kept dimensions, Hugging Face rotate_half pairing, original frequencies. */
#include <math.h>
#include <string.h>

#include "attn/internal.h"

void mla__rope_rotate(float *x, ptrdiff_t ldx, int64_t n, const int64_t *pos, int32_t heads,
                      int32_t group, int32_t r, const float *freqs, int32_t n_freq_heads,
                      double scale, double *work)
{
    int32_t half = r / 2;
    if (half == 0)
        return;
    /* Heads that kept the same frequencies (always, unless the 2-norm or explicit strategy chose
     * per head) share one set of sines and cosines. */
    int shared = 1;
    for (int32_t f = 1; f < n_freq_heads && shared; f++)
        shared = memcmp(freqs, freqs + (size_t)f * half, (size_t)half * sizeof *freqs) == 0;
    int32_t n_sets = shared ? 1 : n_freq_heads;
    double *cs = work, *sn = work + (size_t)n_sets * half;
    for (int64_t t = 0; t < n; t++) {
        double p = (double)pos[t] * scale;
        for (int32_t f = 0; f < n_sets * half; f++) {
            double a = p * (double)freqs[f];
            cs[f] = cos(a);
            sn[f] = sin(a);
        }
        float *xt = x + t * ldx;
        for (int32_t h = 0; h < heads; h++) {
            float *xh = xt + (size_t)h * r;
            size_t set = shared ? 0 : (size_t)(h / group) * half;
            for (int32_t i = 0; i < half; i++) {
                double c = cs[set + i], s = sn[set + i];
                double a = xh[i], b = xh[i + half];
                xh[i] = (float)(a * c - b * s);
                xh[i + half] = (float)(b * c + a * s);
            }
        }
    }
}

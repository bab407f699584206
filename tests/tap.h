/*
 * A minimal TAP producer for libmla's C tests (meson runs them with protocol: 'tap').
 * CHECK(cond, fmt, ...) records one test point; tap_done() prints the plan and returns the exit code.
 */
#ifndef MLA_TESTS_TAP_H
#define MLA_TESTS_TAP_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_count;
static int tap_failed;

static inline void tap_point(int ok, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    tap_count++;
    if (!ok)
        tap_failed++;
    printf("%s %d - ", ok ? "ok" : "not ok", tap_count);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!ok)
        printf("#   at %s:%d\n", file, line);
    fflush(stdout);
}

#define CHECK(cond, ...) tap_point(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* Relative difference of two arrays in the max norm: max|a−b| / max(max|b|, tiny). */
static inline double tap_rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num || d != d)
            num = d;
        if (fabs((double)b[i]) > den)
            den = fabs((double)b[i]);
    }
    return num / (den > 1e-30 ? den : 1e-30);
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_count);
    return tap_failed ? 1 : 0;
}

/* Deterministic random numbers for tests (xorshift64*), uniform in [-1, 1). */
static inline double tap_rand(unsigned long long *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    unsigned long long r = *s * 2685821657736338717ULL;
    return (double)(r >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

#endif /* MLA_TESTS_TAP_H */

/* CPU feature detection, once, for run-time kernel selection: features are detected, never
 * assumed, and an instruction set counts only if the OS saves its registers (xgetbv). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include "core.h"

#if defined(__x86_64__) || defined(__i386__)
#  include <cpuid.h>
#  define MLA_X86 1
#endif

static mla_cpu_features features;
static pthread_once_t features_once = PTHREAD_ONCE_INIT;

#ifdef MLA_X86
static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static void detect(void)
{
#ifdef MLA_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return;
    features.amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u; /* "AuthenticAMD" */
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    int osxsave = (c >> 27) & 1;
    if (!osxsave)
        return;
    uint64_t xcr0 = read_xcr0();
    int ymm_ok = (xcr0 & 0x6) == 0x6;      /* SSE and AVX state */
    int zmm_ok = (xcr0 & 0xe6) == 0xe6;    /* plus opmask and ZMM state */
    int avx = (c >> 28) & 1;
    features.fma = ymm_ok && avx && ((c >> 12) & 1);
    features.f16c = ymm_ok && avx && ((c >> 29) & 1);
    if (__get_cpuid_max(0, NULL) < 7)
        return;
    __cpuid_count(7, 0, a, b, c, d);
    features.avx2 = ymm_ok && avx && ((b >> 5) & 1);
    features.avx512f = zmm_ok && ((b >> 16) & 1);
    features.avx512bw = features.avx512f && ((b >> 30) & 1);
    features.avx512vl = features.avx512f && ((b >> 31) & 1);
    features.avx512_vnni = features.avx512f && ((c >> 11) & 1);
    int tiles_ok = (xcr0 & 0x60000) == 0x60000; /* XTILECFG and XTILEDATA state */
    features.amx_bf16 = features.avx512f && tiles_ok && ((d >> 24) & 1) && ((d >> 22) & 1);
    __cpuid_count(7, 1, a, b, c, d);
    features.avx512_bf16 = features.avx512f && ((a >> 5) & 1);
#endif
}

const mla_cpu_features *mla_cpu(void)
{
    pthread_once(&features_once, detect);
    return &features;
}

int mla_cpu_count(void)
{
#ifdef CPU_COUNT
    /* The CPUs this process may run on (taskset, cgroups), not every CPU online. */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

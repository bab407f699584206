/*
 * The handle's internals (links the static library): the scratch a forward reserves depends on
 * the work, not on n_threads alone (small work carves one per-thread area), a parallel run of
 * enough work gives the serial result, MLA_ATTN_STREAM_BYTES and MLA_ATTN_STREAM_PREFETCH are
 * read only when they are whole non-negative integers, and over a BF16 cache the few-rows
 * float32 loop multiplies what the bf16 products do (the kernel table's threshold both ways),
 * the AMD few-rows blocks and tiles give the portable decode, next-tile hints change no result,
 * the loops for rows out of DRAM are chosen by what the whole call reads (a batch of sequences
 * streams where each alone would not, with the same result), and the cut of a forward's work
 * into blocks and split-K parts keeps its promises.
 */
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#  include <cpuid.h>
#endif

#include "attn/internal.h"
#include "run.h"

#define D 32

/* One forward of n tokens of sequence `seq` from position pos0 on a fresh handle; the scratch
 * size it reserved, out filled. */
static size_t run_at(mla_layer *layer, mla_cache *c, int n_threads, int32_t seq, int64_t pos0,
                     const float *x, int n, float *out, mla_status *st)
{
    mla_attn *a = make_attn(n_threads, MLA_ATTN_PATH_AUTO);
    if (!a) {
        *st = MLA_ERR_OUT_OF_MEMORY;
        return 0;
    }
    *st = forward_seqs(a, layer, c, 1, seq, pos0, x, n, out);
    size_t bytes = a->scratch_size;
    mla_attn_destroy(a);
    return bytes;
}

static size_t run_once(mla_layer *layer, mla_cache *c, int n_threads, int32_t seq,
                       const float *x, int n, float *out, mla_status *st)
{
    return run_at(layer, c, n_threads, seq, 0, x, n, out, st);
}

static void stream_env(const char *value, int64_t want)
{
    setenv("MLA_ATTN_STREAM_BYTES", value, 1);
    mla_attn *a = make_attn(1, MLA_ATTN_PATH_AUTO);
    CHECK(a && a->stream_bytes == want, "MLA_ATTN_STREAM_BYTES=\"%s\": %lld (want %lld)", value,
          a ? (long long)a->stream_bytes : -1LL, (long long)want);
    mla_attn_destroy(a);
}

/* The CPU vendor as the process sees it (CPUID leaf 0): 1 AMD, 0 another, -1 unknown (not x86).
 * Not /proc/cpuinfo: under valgrind, whose synthetic CPUID says GenuineIntel on an AMD host,
 * the kernel's vendor and the process's differ, and the library rightly follows the latter. */
static int cpuid_amd(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return -1;
    char vendor[13];
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    return strcmp(vendor, "AuthenticAMD") == 0;
#else
    return -1;
#endif
}

static void prefetch_env(const char *value, int want)
{
    if (value)
        setenv("MLA_ATTN_STREAM_PREFETCH", value, 1);
    else
        unsetenv("MLA_ATTN_STREAM_PREFETCH");
    mla_attn *a = make_attn(1, MLA_ATTN_PATH_AUTO);
    CHECK(a && a->stream_prefetch == want, "MLA_ATTN_STREAM_PREFETCH=\"%s\": %d (want %d)",
          value ? value : "(unset)", a ? a->stream_prefetch : -1, want);
    mla_attn_destroy(a);
}

/*
 * Over a BF16 cache, the float32 paths (few query rows: a 16-bit transposed tile; many: the
 * float32 tile) must multiply exactly the operands job_bf16 multiplies (bf16-rounded queries
 * and probabilities). The kernel table's bf16_few_rows_min_k and bf16_many_rows pick the path,
 * so the test gives a handle a copy of the table set each way in turn and compares
 * prefill-and-decode outputs. Only the summation order may differ; a path that skipped either
 * rounding differs by ~1e-3 here (bf16's unit roundoff 3.9e-3). many: 16 heads, so that a
 * decode's rows take the many-rows loop too.
 */
static void bf16_paths_agree(int many)
{
    src_layer src;
    src_init(&src, 64, many ? 16 : 8, 2, 16, 1, 301);
    mla_layer *l = convert(&src, 4, 8, MLA_FACTOR_JOINT);
    /* A handle's own copy of the table: the chosen one may be read-only (the portable). */
    mla__attn_kernels kc = *mla__attn_kernels_best();
    seqdata s[2][2];
    mla_status st[2] = {MLA_ERR_INTERNAL, MLA_ERR_INTERNAL};
    for (int v = 0; v < 2; v++) {
        seq_init(&s[v][0], 0, 150, 120, 64, 0, 1);
        seq_init(&s[v][1], 1, 40, 10, 64, 0, 2);
        if (many)
            kc.bf16_many_rows = v == 0;
        else
            kc.bf16_few_rows_min_k = v == 0 ? 0 : INT64_MAX;
        mla_cache *c = l ? make_cache(&l, 1, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 1024, 16) : NULL;
        mla_attn *a = make_attn(2, MLA_ATTN_PATH_ABSORBED);
        if (a)
            a->k = &kc;
        if (c && a)
            st[v] = run_seqs(a, l, c, 0, s[v], 2, 64);
        mla_attn_destroy(a);
        mla_cache_destroy(c);
    }
    double worst = 0;
    for (int i = 0; i < 2; i++)
        for (int q = 0; q < s[0][i].n * 64; q++) {
            double e = fabs((double)s[0][i].out[q] - s[1][i].out[q]) /
                       (fabs((double)s[0][i].out[q]) + 1e-2);
            worst = e > worst || e != e ? e : worst;
        }
    CHECK(l && st[0] == MLA_OK && st[1] == MLA_OK && worst < 2e-5,
          "BF16 cache, %s query rows: the float32 path equals the bf16 products "
          "(max relative difference %.2e)", many ? "many" : "few", worst);
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < 2; i++)
            seq_free(&s[v][i]);
    mla_layer_destroy(l);
    src_free(&src);
}

/*
 * The AMD choice of kernels.c (9 query rows in 9 × 48 blocks, few-rows tiles of 192 tokens),
 * wherever AVX-512 runs: a 9-head layer with a 96-wide latent over an F16 cache, prefilled and
 * decoded past several tiles (tails of 48-multiples and not), against the portable kernels.
 * Only the order of the float32 sums differs.
 */
static void few_rows_w48_agrees(void)
{
#ifdef MLA_ATTN_HAVE_AVX512
    const mla_cpu_features *f = mla_cpu();
    if (!(f->avx512f && f->avx512bw && f->avx512vl && f->fma)) {
        printf("ok %d # SKIP this CPU has no AVX-512\n", ++tap_count);
        return;
    }
    src_layer src;
    src_init(&src, 128, 9, 3, 32, 1, 401);
    mla_layer *l = convert(&src, 4, 32, MLA_FACTOR_JOINT);
    mla__attn_kernels kc = mla__attn_kernels_avx512;
    kc.gemm_bc_src = mla__gemm_bc_src_w48_avx512;
    kc.nine_rows_tile = 192;
    const mla__attn_kernels *tables[2] = {&kc, &mla__attn_kernels_portable};
    seqdata s[2];
    mla_status st[2] = {MLA_ERR_INTERNAL, MLA_ERR_INTERNAL};
    for (int v = 0; v < 2; v++) {
        seq_init(&s[v], 0, 480, 450, 128, 0, 3);
        mla_cache *c = l ? make_cache(&l, 1, MLA_DTYPE_F16, MLA_DTYPE_F16, 1024, 16) : NULL;
        mla_attn *a = make_attn(1, MLA_ATTN_PATH_AUTO);
        if (a)
            a->k = tables[v];
        if (c && a)
            st[v] = run_seqs(a, l, c, 0, &s[v], 1, 128);
        mla_attn_destroy(a);
        mla_cache_destroy(c);
    }
    /* The decoded tokens' outputs, relative to their norm (tap_rel_diff). */
    size_t from = (size_t)450 * 128, cnt = (size_t)(s[0].n - 450) * 128;
    double e = tap_rel_diff(s[0].out + from, s[1].out + from, cnt);
    CHECK(l && st[0] == MLA_OK && st[1] == MLA_OK && e < 1e-5,
          "9 rows in 9 x 48 blocks over 192-token F16 tiles equal the portable decode "
          "(relative difference %.2e)", e);
    for (int v = 0; v < 2; v++)
        seq_free(&s[v]);
    mla_layer_destroy(l);
    src_free(&src);
#else
    printf("ok %d # SKIP no AVX-512 kernels in this build\n", ++tap_count);
#endif
}

/*
 * Few rows over more than 3 MiB of cached rows on one thread: with stream_prefetch the job hints
 * the next tile's rows into L2 while it loads this one, and loads in chunks of 16 rows
 * (absorbed.c). Hints change no result, so the decode is the same bit for bit with and without
 * them, over F16 and F32 caches (load_t16, load_t) in blocks of 40 tokens, which end inside the
 * chunks and tiles.
 */
static void few_rows_prefetch_same(void)
{
    src_layer src;
    src_init(&src, 128, 9, 3, 32, 0, 409);
    mla_layer *l = convert(&src, 4, 32, MLA_FACTOR_JOINT);
    mla_cache_layer_desc desc;
    int ok = l && mla_layer_cache_desc(l, &desc, sizeof desc) == MLA_OK;
    static const mla_dtype dts[] = {MLA_DTYPE_F16, MLA_DTYPE_F32};
    for (int di = 0; ok && di < 2; di++) {
        int64_t L = desc.latent_dim, W = (int64_t)desc.rope_heads * desc.rope_dim;
        int64_t row = (L + W) * (dts[di] == MLA_DTYPE_F16 ? 2 : 4);
        int64_t ctx = ((int64_t)3 << 20) / row + 1000, chunk = 1000;
        mla_cache *c = make_cache(&l, 1, dts[di], dts[di], ctx + 64, 40);
        mla_attn *a = make_attn(1, MLA_ATTN_PATH_ABSORBED);
        unsigned long long seed = 11;
        float *lat = rand_floats((size_t)(chunk * L), &seed, 1.0);
        float *rope = rand_floats((size_t)(chunk * W + 1), &seed, 1.0);
        float *x = rand_floats(128, &seed, 1.0), out[2][128];
        mla_status st = c && a ? MLA_OK : MLA_ERR_INTERNAL;
        for (int64_t p0 = 0; st == MLA_OK && p0 < ctx; p0 += chunk)
            st = mla_cache_write(c, 0, 0, p0, ctx - p0 < chunk ? ctx - p0 : chunk, lat,
                                 W ? rope : NULL);
        for (int v = 0; v < 2 && st == MLA_OK; v++) {
            int32_t seq = 0;
            int64_t pos = ctx;
            a->stream_prefetch = v;
            st = mla_attn_forward(a, l, c, 0, x, 1, &seq, &pos, out[v]);
            if (st == MLA_OK)
                st = mla_cache_seq_rm(c, 0, ctx, -1);
        }
        double e = st == MLA_OK ? tap_rel_diff(out[0], out[1], 128) : 1.0;
        CHECK(st == MLA_OK && memcmp(out[0], out[1], sizeof out[0]) == 0,
              "%s cache, %lld tokens of %lld bytes, few rows: the decode with next-tile hints "
              "equals the one without, bit for bit (relative difference %.2e)",
              dts[di] == MLA_DTYPE_F16 ? "F16" : "F32", (long long)ctx, (long long)row, e);
        free(lat);
        free(rope);
        free(x);
        mla_attn_destroy(a);
        mla_cache_destroy(c);
    }
    CHECK(ok, "a 9-head layer with a 96-wide latent");
    mla_layer_destroy(l);
    src_free(&src);
}

/*
 * The loops for rows out of DRAM are chosen by the cached bytes the whole call reads a thread
 * (mla__attn_thread_bytes), not by one job's: a batch of sequences reads all of theirs. Closed
 * forms of the count, then a batch decode of an MHA (GQA) layer whose call passes the threshold
 * while each sequence alone stays under it: the batch (streaming loop) gives what each sequence
 * decoded alone (cache-resident loop) does.
 */
static void thread_bytes_rule(void)
{
    mla__job jobs[16];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < 16; i++)
        jobs[i].c1 = 4096;
    /* SmolLM-135M's MHA baseline: values 3 × 64 and keys 3 × 64 wide, F16: 768 bytes a token. */
    mla_cache_layer_format f = {192, 192, MLA_DTYPE_F16, MLA_DTYPE_F16, 0};
    CHECK(mla__attn_thread_bytes(&f, jobs, 16, 2) == 16 * 4096 * 768 / 2 &&
              mla__attn_thread_bytes(&f, jobs, 1, 2) == 4096 * 768 / 2 &&
              mla__attn_thread_bytes(&f, jobs, 16, 1) == 16 * 4096 * 768 &&
              mla__attn_thread_bytes(&f, jobs, 16, 0) == 16 * 4096 * 768,
          "16 sequences of 4096 tokens of 768 bytes: all of them a thread (%lld on 2 threads)",
          (long long)mla__attn_thread_bytes(&f, jobs, 16, 2));
    /* One sequence of 16384 tokens cut in two parts (split-K): each thread reads its part. */
    jobs[0].c1 = 8192;
    jobs[1].c0 = 8192;
    jobs[1].c1 = 16384;
    CHECK(mla__attn_thread_bytes(&f, jobs, 2, 2) == 8192 * 768,
          "one sequence of 16384 tokens in two parts on 2 threads: 8192 × 768 bytes a thread");
    /* I8 latents of 96 in groups of 32 (3 float scales), F16 RoPE part of 24: 156 bytes; I4 in
     * groups of 16: 48 + 6 · 4 + 48 = 120. */
    mla_cache_layer_format i8 = {96, 24, MLA_DTYPE_I8, MLA_DTYPE_F16, 32};
    mla_cache_layer_format i4 = {96, 24, MLA_DTYPE_I4, MLA_DTYPE_F16, 16};
    CHECK(mla__attn_thread_bytes(&i8, jobs, 1, 1) == 8192 * 156 &&
              mla__attn_thread_bytes(&i4, jobs, 1, 1) == 8192 * 120,
          "I8 latents 156 bytes a token with their scales, I4 120 (%lld, %lld for 8192 tokens)",
          (long long)mla__attn_thread_bytes(&i8, jobs, 1, 1),
          (long long)mla__attn_thread_bytes(&i4, jobs, 1, 1));

    enum { DM = 32, NSEQ = 6, CTX = 300 };
    src_layer src;
    src_init(&src, DM, 4, 2, 16, 0, 71);
    mla_layer *mha = NULL;
    mla_status st = mla_layer_from_mha(&src.g, &src.w, &mha);
    mla_cache *c = st == MLA_OK ? make_cache(&mha, 1, MLA_DTYPE_F16, MLA_DTYPE_F16,
                                             NSEQ * (CTX + 16), 16) : NULL;
    mla_attn *a = make_attn(1, MLA_ATTN_PATH_AUTO);
    unsigned long long seed = 23;
    float *x = rand_floats((size_t)(CTX + 1) * DM, &seed, 1.0);
    float batch[NSEQ][DM], alone[NSEQ][DM];
    int32_t seq[NSEQ];
    int64_t pos[NSEQ];
    st = c && a ? MLA_OK : MLA_ERR_INTERNAL;
    /* The same prompt in every sequence, shifted by s tokens: different contexts. */
    for (int s = 0; s < NSEQ && st == MLA_OK; s++) {
        float *o = malloc((size_t)CTX * DM * sizeof *o);
        int32_t *sq = malloc(CTX * sizeof *sq);
        int64_t *ps = malloc(CTX * sizeof *ps);
        for (int i = 0; i < CTX; i++) {
            sq[i] = s;
            ps[i] = i;
        }
        st = o && sq && ps ? mla_attn_forward(a, mha, c, 0, x + s * DM, CTX - s, sq, ps, o)
                           : MLA_ERR_OUT_OF_MEMORY;
        seq[s] = s;
        pos[s] = CTX - s;
        free(o);
        free(sq);
        free(ps);
    }
    /* Keys and values: 2 heads of 16, F16. One sequence reads at most 300 · 128 bytes, the
     * batch about 6 times that: the threshold between the two. */
    int64_t row = 2 * 2 * 16 * 2;
    for (int pf = 0; pf < 2 && st == MLA_OK; pf++) {
        a->stream_bytes = 2 * CTX * row;
        a->stream_prefetch = pf;
        st = mla_attn_forward(a, mha, c, 0, x + CTX * DM - NSEQ * DM, NSEQ, seq, pos,
                              &batch[0][0]);
        for (int s = 0; s < NSEQ && st == MLA_OK; s++)
            st = mla_cache_seq_rm(c, s, pos[s], -1);
        for (int s = 0; s < NSEQ && st == MLA_OK; s++) {
            st = mla_attn_forward(a, mha, c, 0, x + CTX * DM - (NSEQ - s) * DM, 1, &seq[s],
                                  &pos[s], alone[s]);
            if (st == MLA_OK)
                st = mla_cache_seq_rm(c, s, pos[s], -1);
        }
        double e = st == MLA_OK ? tap_rel_diff(&batch[0][0], &alone[0][0], NSEQ * DM) : 1.0;
        CHECK(st == MLA_OK && e < 1e-5,
              "%d sequences of ~%d tokens decoded in one call (the call over the streaming "
              "threshold, each sequence under it; prefetch %d) = each decoded alone: relative "
              "difference %.2e (%s)", NSEQ, CTX, pf, e, st == MLA_OK ? "" : mla_last_error());
    }
    free(x);
    mla_attn_destroy(a);
    mla_cache_destroy(c);
    mla_layer_destroy(mha);
    src_free(&src);
}

/* How a forward cuts its work (internal.h), against the properties it promises: a chunk's blocks
 * cover it in order, hold at most qb tokens each, are as few as that allows and equal within one
 * token; split-K parts are the fewest that fill rounds of nt threads to within an eighth. */
static void planner_cuts(void)
{
    int bad = 0;
    for (int64_t qb = 1; qb <= 70; qb += 23)
        for (int64_t m = 1; m <= 600; m++) {
            int64_t nb = mla__chunk_blocks(m, qb);
            bad += nb < 1 || (nb - 1) * qb >= m || mla__block_start(m, nb, 0) != 0 ||
                   mla__block_start(m, nb, nb) != m;
            for (int64_t i = 0; i < nb; i++) {
                int64_t len = mla__block_start(m, nb, i + 1) - mla__block_start(m, nb, i);
                bad += len > qb || len < m / nb || len > (m + nb - 1) / nb;
            }
        }
    CHECK(bad == 0, "chunks of 1..600 tokens: blocks cover them, at most qb, fewest, equal "
                    "within a token (%d violations)", bad);
    CHECK(mla__chunk_blocks(64, 512 / 9) == 2 && mla__block_start(64, 2, 1) == 32,
          "64 tokens of 9 heads (blocks of at most 56): two blocks of 32, not 56 + 8");
    bad = 0;
    for (int64_t nb = 1; nb <= 40; nb++)
        for (int nt = 1; nt <= 8; nt++) {
            int64_t parts = mla__block_parts(nb, nt);
            for (int64_t q = 1; q <= parts; q++) {
                int64_t jobs = nb * q, rounds = (jobs + nt - 1) / nt;
                int fills = nt == 1 || 8 * rounds * nt <= 9 * jobs;
                bad += q == parts ? !fills : fills; /* the first that fills */
            }
            bad += parts < 1 || parts > (nt > 1 ? nt : 1);
        }
    CHECK(bad == 0, "split-K parts: the fewest that fill rounds of threads (%d violations)", bad);
    /* Block sizes (block_tokens): a causal chunk at least 4 blocks a thread within [64, 256];
     * after a longer context, blocks of 1024 to 4096 tokens whose split-K states stay within
     * one chunk's output (at most 2 parts a block) from 1024·nt/2 tokens on (even nt), and past
     * 4096·nt/2 for any nt with at most nt − 1 blocks more than 4096-token ones would take. */
    bad = 0;
    int64_t worst_parts = 0;
    for (int nt = 1; nt <= 16; nt++) {
        for (int64_t m = 1; m <= 5000; m++) {
            int64_t qb = mla__mat_block_tokens(1, m, nt), want = (m + 4 * nt - 1) / (4 * nt);
            want = want < 64 ? 64 : want > 256 ? 256 : want;
            bad += qb != want;
        }
        int64_t pairs = nt > 1 ? nt / 2 : 1;
        for (int64_t m = 1; m <= 80000; m += 37) {
            int64_t qb = mla__mat_block_tokens(0, m, nt), nb = mla__chunk_blocks(m, qb);
            int64_t parts = mla__block_parts(nb, nt);
            bad += qb < 1024 || qb > 4096;
            if (m > 4096 * pairs) {
                bad += parts > 2 || nb > (m + 4095) / 4096 + nt - 1;
                worst_parts = parts > worst_parts ? parts : worst_parts;
            } else if (m >= 1024 * pairs && nt % 2 == 0) {
                bad += nb != pairs || parts != 2;
            }
        }
    }
    CHECK(bad == 0 && worst_parts <= 2,
          "block sizes for 1..16 threads: causal within [64, 256], after a longer context at most "
          "2 split-K parts a block (%d violations)", bad);
    CHECK(mla__block_parts(mla__chunk_blocks(28000, mla__mat_block_tokens(0, 28000, 8)), 8) <= 2,
          "28000 tokens after a longer context on 8 threads: at most 2 parts a block (7 blocks "
          "of 4096 took 8)");
    CHECK(mla__block_parts(1, 2) == 2 && mla__block_parts(2, 2) == 1 &&
              mla__block_parts(3, 2) == 2 && mla__block_parts(9, 2) == 1,
          "parts on 2 threads: 1 block 2, 2 blocks 1, 3 blocks 2, 9 blocks 1");

    /* Split-K boundaries: in order, on multiples of 16, covering the context. A materialized
     * block of m queries after pre tokens: each part's work (token i < pre seen by all m
     * queries, the block's own token pre + j by m − j, each token's up-projection worth u more
     * rows: none, SmolLM-135M d_kv 32's 30, Llama-2-7B d_kv 16's 506), summed token by token,
     * within 16 tokens' worth of the mean; absorbed and decode blocks: equal token counts. */
    static const int64_t shapes[][2] = {{1024, 0}, {4096, 0}, {2048, 4096}, {300, 20},
                                        {64, 0},   {1040, 1060}, {16, 5000}, {4096, 9000}};
    bad = 0;
    double worst = 0;
    static const double ups[] = {0, 30, 506};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] * 3; i++)
        for (int64_t parts = 1; parts <= 5; parts++) {
            mla__qblock b;
            memset(&b, 0, sizeof b);
            b.m = shapes[i / 3][0];
            b.n_ctx = shapes[i / 3][0] + shapes[i / 3][1];
            b.up_rows = ups[i % 3];
            int64_t pre = shapes[i / 3][1];
            double total = 0;
            for (int64_t t = 0; t < b.n_ctx; t++)
                total += b.up_rows + (t < pre ? b.m : b.m - (t - pre));
            int64_t c0 = 0;
            for (int64_t k = 0; k < parts; k++) {
                int64_t c1 = mla__block_part_end(&b, k, parts);
                bad += c1 < c0 || (c1 % 16 != 0 && c1 != b.n_ctx) ||
                       (k == parts - 1 && c1 != b.n_ctx);
                double work = 0;
                for (int64_t t = c0; t < c1; t++)
                    work += b.up_rows + (t < pre ? b.m : b.m - (t - pre));
                double off = fabs(work - total / parts) / (16.0 * (b.m + b.up_rows));
                worst = off > worst ? off : worst;
                c0 = c1;
            }
        }
    CHECK(bad == 0 && worst <= 1.0,
          "materialized split-K parts: in order, on multiples of 16, equal work (causal, and "
          "the up-projections) to within 16 tokens of a full row (%d violations, worst %.2f)",
          bad, worst);
    mla__qblock d;
    memset(&d, 0, sizeof d);
    d.m = 1;
    d.n_ctx = 16384;
    mla__qblock ab = d;
    ab.absorbed = 1;
    ab.m = 56;
    ab.n_ctx = 4096 + 56;
    CHECK(mla__block_part_end(&d, 0, 2) == 8192 && mla__block_part_end(&ab, 0, 2) == 2080 &&
              mla__block_part_end(&ab, 1, 2) == 4152,
          "decode and absorbed blocks: equal parts of whole vectors (16384 tokens: 8192 + "
          "8192; 4152: 2080 + 2072, not the causal shares, 2064 + 2088)");
}

/* AUTO's path for a chunk of m tokens after len0 cached ones, on layer shape sh. */
typedef struct shape_t {
    const char *name;
    int64_t n_h, n_kv, d_h, r, lat;
} shape_t;

static int auto_mat_w(const shape_t *sh, int32_t crossover, int bf16, int64_t len0, int64_t m)
{
    return mla__attn_auto_materialized(crossover, bf16, sh->n_h, sh->n_kv, sh->d_h, sh->r,
                                       sh->lat, sh->lat, len0, m);
}

static int auto_mat(const shape_t *sh, int32_t crossover, int64_t len0, int64_t m)
{
    return auto_mat_w(sh, crossover, 0, len0, m);
}

/*
 * The default crossover against the model solved another way: with S = 2·lat + r, U the
 * up-projection of a token for one KV head and P = m·len0 + m(m+1)/2 query-key pairs,
 * materialized is taken when w·(n_kv·(len0 + m)·U + 2·n_h·d_h·P) < n_h·(S·P + m·U): a
 * quadratic in m whose positive root is the switch. Then the measured facts the weight was
 * fitted to (doc/attention.md, "Crossover"), and the rules that need no weight.
 */
static void test_auto_path(void)
{
    static const shape_t shapes[] = {
        {"Llama-2-7B d_kv 8", 32, 32, 128, 4, 256},   {"Llama-2-7B d_kv 16", 32, 32, 128, 4, 512},
        {"Llama-2-7B d_kv 32", 32, 32, 128, 4, 1024}, {"SmolLM-135M d_kv 32", 9, 3, 64, 8, 96},
        {"GQA 8 of 2, d_h 16", 8, 2, 16, 4, 40},
    };
    static const int64_t lens[] = {0, 100, 1000, 4096, 32768};
    int bad = 0, checked = 0;
    for (int bf16 = 0; bf16 <= 1; bf16++)
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++) {
            const double w = bf16 ? MLA_ATTN_MAT_WEIGHT_BF16 : MLA_ATTN_MAT_WEIGHT;
            const shape_t *sh = &shapes[i];
            double L0 = (double)lens[j], S = 2.0 * sh->lat + sh->r;
            double U = (double)(sh->d_h - sh->r) * sh->lat + (double)sh->d_h * sh->lat;
            double k = sh->n_h * S - w * 2.0 * sh->n_h * sh->d_h; /* per pair */
            double qa = k / 2, qb = k * (L0 + 0.5) + U * (sh->n_h - w * sh->n_kv),
                   qc = -w * sh->n_kv * U * L0;
            if (qa <= 0)
                continue; /* not one of these shapes */
            double root = (-qb + sqrt(qb * qb - 4 * qa * qc)) / (2 * qa);
            int64_t below = (int64_t)floor(root) - 1, above = (int64_t)ceil(root) + 1;
            if (below >= 1) {
                bad += auto_mat_w(sh, 0, bf16, lens[j], below) != 0;
                checked++;
            }
            bad += auto_mat_w(sh, 0, bf16, lens[j], above) != 1;
            checked++;
        }
    CHECK(bad == 0 && checked > 60,
          "default crossover = the quadratic's root within a token (%d of %d off)", bad, checked);

    const shape_t *l8 = &shapes[0], *l16 = &shapes[1], *l32 = &shapes[2], *s32 = &shapes[3];
    /* After 4096 cached tokens (bench_decode --crossover --dkv N, two runs each, with the
     * materialized path's in-place products and gemm_bc values): Llama-2-7B d_kv 16 switched
     * between 128 and 160 in both, d_kv 8 between 160 and 256 (192 once each way), d_kv 32
     * between 96 and 160 (128 once each way); SmolLM-135M d_kv 32 between 32 and 64. */
    CHECK(!auto_mat(l16, 0, 4096, 128) && auto_mat(l16, 0, 4096, 160),
          "Llama-2-7B d_kv 16 after 4096: absorbed at 128, materialized at 160");
    CHECK(!auto_mat(l8, 0, 4096, 160) && auto_mat(l8, 0, 4096, 256),
          "Llama-2-7B d_kv 8 after 4096: absorbed at 160, materialized at 256");
    CHECK(!auto_mat(l32, 0, 4096, 96) && auto_mat(l32, 0, 4096, 160),
          "Llama-2-7B d_kv 32 after 4096: absorbed at 96, materialized at 160");
    CHECK(!auto_mat(s32, 0, 4096, 32) && auto_mat(s32, 0, 4096, 64),
          "SmolLM-135M d_kv 32 after 4096: absorbed at 32, materialized at 64");
    /* Over a BF16 cache (--dtype bf16, vdpbf16ps), in both runs: after 4096 cached tokens
     * absorbed ran faster for Llama-2-7B d_kv 16 up to m = 384 (at 512 once each way) and for
     * SmolLM-135M d_kv 32 at every m up to 512; on a fresh SmolLM-135M prompt materialized ran
     * faster up to 384, 192 included. */
    CHECK(!auto_mat_w(l16, 0, 1, 4096, 384) && !auto_mat_w(s32, 0, 1, 4096, 512) &&
              auto_mat_w(s32, 0, 1, 0, 192),
          "vdpbf16ps: after 4096, Llama-2-7B d_kv 16 absorbed at 384, SmolLM-135M d_kv 32 at "
          "512; a fresh SmolLM-135M prompt of 192 materialized");
    /* A fresh prompt (--ctx 0): materialized ran faster at every m from 128 for d_kv 16 and
     * from 160 for d_kv 32, in both runs (below, the two within 5% of each other but once). */
    CHECK(auto_mat(l16, 0, 0, 128) && auto_mat(l32, 0, 0, 160),
          "Llama-2-7B fresh prompts: d_kv 16 materialized at 128, d_kv 32 at 160");

    /* Nearly no weight needed: a decode token after any context is absorbed on Llama-2-7B's
     * shapes (for any weight above 0.51: its own up-projection alone costs the materialized
     * path what the absorbed one pays for the token; a one-token fresh prompt is no decode); a
     * latent narrower than a head's key and value (SmolLM-135M d_kv 16: 2·48 + 8 ≤ 128) is
     * absorbed at any length, explicit crossover or not; an explicit crossover switches
     * exactly there otherwise. */
    const shape_t s16 = {"SmolLM-135M d_kv 16", 9, 3, 64, 8, 48};
    int ok = 1;
    for (int64_t len0 = 0; len0 <= (1 << 20); len0 = len0 ? len0 * 4 : 1) {
        ok &= len0 == 0 || (!auto_mat(l32, 0, len0, 1) && !auto_mat(l8, 0, len0, 1));
        ok &= !auto_mat(&s16, 0, len0, 100000) && !auto_mat(&s16, 1, len0, 100000);
        ok &= !auto_mat(l16, 224, len0, 223) && auto_mat(l16, 224, len0, 224);
    }
    CHECK(ok, "decode tokens absorbed; narrow latents absorbed; crossover_tokens 224 exact");
}

int main(void)
{
    test_auto_path();

    src_layer src;
    src_init(&src, D, 4, 2, 8, 0, 7);
    mla_layer *layer = convert(&src, 4, 4, MLA_FACTOR_JOINT);
    CHECK(layer != NULL, "conversion");
    if (!layer)
        return tap_done();
    unsigned long long seed = 5;
    float *x = rand_floats(256 * D, &seed, 1.0);
    float *o1 = malloc(256 * D * sizeof *o1), *o2 = malloc(256 * D * sizeof *o2);
    mla_cache *c = make_cache(&layer, 1, MLA_DTYPE_F16, MLA_DTYPE_F16, 1024, 16);
    CHECK(c != NULL, "cache");

    /* A one-token decode is below the parallel threshold: 1024 threads reserve what 1 does. */
    mla_status st1, st2;
    size_t s1 = run_once(layer, c, 1, 0, x, 1, o1, &st1);
    size_t s2 = run_once(layer, c, 1024, 1, x, 1, o2, &st2);
    CHECK(st1 == MLA_OK && st2 == MLA_OK, "one-token decodes (%s)", mla_last_error());
    CHECK(s2 == s1, "one-token decode: scratch with 1024 threads %zu bytes, with 1 thread %zu",
          s2, s1);
    CHECK(memcmp(o1, o2, D * sizeof *o1) == 0, "one-token decode: same output");
    /* The per-thread areas follow the chunk: a decode reserves less than a 128-token chunk. */
    size_t s3 = run_once(layer, c, 1, 2, x, 128, o2, &st1);
    CHECK(st1 == MLA_OK && s1 < s3, "scratch of a decode %zu < of a 128-token chunk %zu", s1, s3);

    /* Enough work to run in parallel: a 200-token chunk (absorbed, two blocks, each split over
     * its context of ~700 tokens) after 600 cached tokens. 4 threads give the serial result and
     * carve more work areas. */
    mla_cache *c2 = make_cache(&layer, 1, MLA_DTYPE_F16, MLA_DTYPE_F16, 2048, 16);
    float *xl = rand_floats(800 * D, &seed, 1.0), *ol = malloc(600 * D * sizeof *ol);
    run_once(layer, c2, 1, 0, xl, 600, ol, &st1);
    run_once(layer, c2, 1, 1, xl, 600, ol, &st2);
    CHECK(st1 == MLA_OK && st2 == MLA_OK, "600-token prefills (%s)", mla_last_error());
    s1 = run_at(layer, c2, 1, 0, 600, xl + 600 * D, 200, o1, &st1);
    s2 = run_at(layer, c2, 4, 1, 600, xl + 600 * D, 200, o2, &st2);
    double worst = 0;
    for (int i = 0; i < 200 * D; i++) {
        double e = fabs((double)o1[i] - o2[i]) / (fabs((double)o1[i]) + 1e-3);
        worst = e > worst ? e : worst;
    }
    CHECK(st1 == MLA_OK && st2 == MLA_OK && worst < 1e-4,
          "200-token chunk after 600, 4 threads vs 1: max relative difference %.3g (%s)", worst,
          mla_last_error());
    CHECK(s2 > s1, "200-token chunk: 4 threads reserve more (%zu bytes) than 1 (%zu)", s2, s1);
    /* The same on OpenMP's threads: the same plan, each item the same computation wherever it
     * runs, so the same bits as the pool's. */
    mla_attn_params ap;
    mla_attn_default_params(&ap, sizeof ap);
    ap.n_threads = 4;
    ap.threads = MLA_ATTN_THREADS_OPENMP;
    mla_attn *omp = NULL;
    st1 = mla_attn_create(&ap, &omp);
    if (st1 == MLA_OK) {
        mla_cache_seq_rm(c2, 1, 600, -1);
        st1 = forward_seqs(omp, layer, c2, 1, 1, 600, xl + 600 * D, 200, o1);
    }
    CHECK(st1 == MLA_OK && memcmp(o1, o2, 200 * D * sizeof *o1) == 0,
          "200-token chunk after 600 on 4 OpenMP threads: the pool's output bit for bit (%s)",
          mla_last_error());
    mla_attn_destroy(omp);
    free(xl);
    free(ol);
    mla_cache_destroy(c2);

    stream_env("0", 0);
    stream_env("123", 123);
    stream_env("abc", MLA_ATTN_STREAM_BYTES);
    stream_env("12abc", MLA_ATTN_STREAM_BYTES);
    stream_env("-5", MLA_ATTN_STREAM_BYTES);
    stream_env("+7", MLA_ATTN_STREAM_BYTES);
    stream_env(" 7", MLA_ATTN_STREAM_BYTES);
    stream_env("", MLA_ATTN_STREAM_BYTES);
    stream_env("99999999999999999999", MLA_ATTN_STREAM_BYTES);
    unsetenv("MLA_ATTN_STREAM_BYTES");

    /* Small rows are prefetched by default on AMD CPUs only; 0 and 1 override, nothing else. */
    int amd = cpuid_amd();
    if (amd >= 0) {
        prefetch_env(NULL, amd);
        prefetch_env("2", amd);
        prefetch_env("abc", amd);
        prefetch_env("-1", amd);
    }
    prefetch_env("0", 0);
    prefetch_env("1", 1);
    unsetenv("MLA_ATTN_STREAM_PREFETCH");

    bf16_paths_agree(0);
    bf16_paths_agree(1);
    few_rows_w48_agrees();
    few_rows_prefetch_same();
    thread_bytes_rule();
    planner_cuts();

    free(x);
    free(o1);
    free(o2);
    mla_cache_destroy(c);
    mla_layer_destroy(layer);
    src_free(&src);
    return tap_done();
}

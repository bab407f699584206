/*
 * Against the original attention (float64, full RoPE, straight from the formulas):
 * - the MHA/GQA baseline layer (mla_layer_from_mha) behind mla_attn_forward;
 * - the full-rank conversion (every RoPE dimension kept, R = n_kv·d_h): MLA reproduces MHA,
 *   on both paths, for MHA and GQA geometries, with and without biases.
 * Each run is a mixed prefill batch of two sequences followed by decode steps; the MHA
 * baseline also with its streaming decode loop forced (MLA_ATTN_STREAM_BYTES=0), with and
 * without its software prefetch (MLA_ATTN_STREAM_PREFETCH), and both with prompts long enough
 * to be cut into several query blocks on 2 threads.
 */
#include "run.h"

static const struct {
    int d, n_h, n_kv, d_h;
    const char *name;
    int baseline_only; /* d below 2·n_kv·d_h: no full-rank conversion */
} geoms[] = {
    {32, 4, 4, 8, "MHA", 0},
    {48, 6, 2, 8, "GQA", 0},
    /* Float32 rows of 4 KiB: the streaming loop's page-sized-row branch. */
    {64, 8, 8, 128, "MHA 4 KiB rows", 1},
};

/* Two sequences: n0 and n1 tokens, of which the first p0 and p1 are one mixed prefill batch,
 * the rest decoded one by one. */
static double run_seqs_of(const src_layer *src, mla_layer *l, int n_threads,
                          mla_attn_path path, int n0, int p0, int n1, int p1)
{
    int d = src->g.d_model;
    seqdata s[2];
    seq_init(&s[0], 0, n0, p0, d, 0, 11);
    seq_init(&s[1], 3, n1, p1, d, 0, 12);
    for (int i = 0; i < 2; i++)
        ref_mha(src, s[i].x, s[i].pos, s[i].n, NULL, NULL, s[i].ref);
    mla_cache *c = make_cache(&l, 1, MLA_DTYPE_F32, MLA_DTYPE_F32, 512, 8);
    mla_attn *a = make_attn(n_threads, path);
    mla_status st = c && a ? run_seqs(a, l, c, 0, s, 2, d) : MLA_ERR_INTERNAL;
    double e = st == MLA_OK ? seqs_diff(s, 2, d) : INFINITY;
    if (st != MLA_OK)
        printf("# forward failed: %s\n", mla_last_error());
    mla_attn_destroy(a);
    mla_cache_destroy(c);
    for (int i = 0; i < 2; i++)
        seq_free(&s[i]);
    return e;
}

static double run_case(const src_layer *src, mla_layer *l, int n_threads, mla_attn_path path)
{
    return run_seqs_of(src, l, n_threads, path, 23, 17, 9, 4);
}

/* Prompts of 290 and 140 tokens: on 2 threads cut into 5 and 3 query blocks (forward.c,
 * block_tokens), whose context a full-rank MLA layer's materialized path up-projects once for
 * all (share_up). */
static double run_long(const src_layer *src, mla_layer *l, mla_attn_path path)
{
    return run_seqs_of(src, l, 2, path, 300, 290, 150, 140);
}

int main(void)
{
    for (size_t gi = 0; gi < sizeof geoms / sizeof geoms[0]; gi++)
        for (int bias = 0; bias <= 1; bias++) {
            src_layer src;
            src_init(&src, geoms[gi].d, geoms[gi].n_h, geoms[gi].n_kv, geoms[gi].d_h, bias,
                     100 + gi * 2 + bias);
            const char *gn = geoms[gi].name, *bn = bias ? "with biases" : "no biases";

            mla_layer *mha = NULL;
            CHECK(mla_layer_from_mha(&src.g, &src.w, &mha) == MLA_OK, "%s %s: baseline layer",
                  gn, bn);
            if (mha) {
                double e1 = run_case(&src, mha, 1, MLA_ATTN_PATH_AUTO);
                CHECK(e1 < 1e-4, "%s %s: MHA baseline equals the reference (rel %.2e)", gn, bn,
                      e1);
                double e2 = run_case(&src, mha, 2, MLA_ATTN_PATH_AUTO);
                CHECK(e2 < 1e-4, "%s %s: MHA baseline on 2 threads (rel %.2e)", gn, bn, e2);
                if (!geoms[gi].baseline_only) {
                    double el = run_long(&src, mha, MLA_ATTN_PATH_AUTO);
                    CHECK(el < 1e-4, "%s %s: MHA baseline, prompts of 290 and 140 tokens in "
                          "blocks, 2 threads (rel %.2e)", gn, bn, el);
                }
                /* Decode's streaming loop (prefetching 4-row steps, or 8-row steps for rows of
                 * a page), normally taken only for contexts of megabytes, forced for this
                 * small cache. */
                setenv("MLA_ATTN_STREAM_BYTES", "0", 1);
                for (int pf = 0; pf <= 1; pf++) {
                    setenv("MLA_ATTN_STREAM_PREFETCH", pf ? "1" : "0", 1);
                    double e3 = run_case(&src, mha, 1, MLA_ATTN_PATH_AUTO);
                    double e4 = run_case(&src, mha, 2, MLA_ATTN_PATH_AUTO);
                    CHECK(e3 < 1e-4 && e4 < 1e-4,
                          "%s %s: MHA baseline, streaming decode loop, %s, 1 and 2 threads "
                          "(rel %.2e, %.2e)", gn, bn, pf ? "prefetching" : "no prefetch", e3, e4);
                }
                unsetenv("MLA_ATTN_STREAM_PREFETCH");
                unsetenv("MLA_ATTN_STREAM_BYTES");
            }
            mla_layer_destroy(mha);
            if (geoms[gi].baseline_only) {
                src_free(&src);
                continue;
            }

            mla_layer *full = convert(&src, geoms[gi].d_h, geoms[gi].d_h, MLA_FACTOR_JOINT);
            CHECK(full != NULL, "%s %s: full-rank conversion (%s)", gn, bn,
                  full ? "" : mla_last_error());
            if (full) {
                double ea = run_case(&src, full, 1, MLA_ATTN_PATH_ABSORBED);
                CHECK(ea < 1e-4, "%s %s: full-rank MLA, absorbed, equals MHA (rel %.2e)", gn,
                      bn, ea);
                double em = run_case(&src, full, 2, MLA_ATTN_PATH_MATERIALIZED);
                CHECK(em < 1e-4, "%s %s: full-rank MLA, materialized, equals MHA (rel %.2e)",
                      gn, bn, em);
                double el = run_long(&src, full, MLA_ATTN_PATH_MATERIALIZED);
                CHECK(el < 1e-4, "%s %s: full-rank MLA, materialized, prompts of 290 and 140 "
                      "tokens (up-projected once for their blocks), equals MHA (rel %.2e)", gn,
                      bn, el);
            }
            mla_layer_destroy(full);
            src_free(&src);
        }
    return tap_done();
}

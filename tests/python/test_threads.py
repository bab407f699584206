"""Two threads decoding two sequences of one cache, each with its own Attn (the documented
concurrency), give what one thread doing both gives."""
import threading

import numpy as np

import mha2mla_ref as ref
import mla
from util import assert_close, geometry, layer_tensors, weights

G = ref.Geom(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16)
STEPS = 24


def decode(attn, layer, cache, seq, x, out):
    attn.forward(layer, cache, 0, x[:4], seq, 0, out=out[:4])
    for t in range(4, len(x)):
        attn.forward(layer, cache, 0, x[t:t + 1], seq, t, out=out[t:t + 1])


def test_two_threads_two_sequences():
    rng = np.random.default_rng(60)
    w = ref.random_layer(rng, G, bias=True)
    xs = [rng.standard_normal((STEPS, G.d_model)).astype(np.float32) for _ in range(2)]
    layer = mla.convert(geometry(G, True), weights(w), rope_dim=4, d_kv=4)

    def make_cache():
        return mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=128,
                         block_tokens=4, n_seq_max=2)

    serial = [np.empty_like(x) for x in xs]
    with make_cache() as cache, mla.Attn() as attn:
        for s in (0, 1):
            decode(attn, layer, cache, s, xs[s], serial[s])

    parallel = [np.empty_like(x) for x in xs]
    errors = []
    with make_cache() as cache:
        attns = [mla.Attn(), mla.Attn()]
        barrier = threading.Barrier(2)

        def run(s):
            try:
                barrier.wait()
                decode(attns[s], layer, cache, s, xs[s], parallel[s])
            except BaseException as e:  # reported below, not lost in the thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(s,)) for s in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for s in (0, 1):
            assert cache.seq_length(s) == STEPS
            np.testing.assert_array_equal(cache.read(0, s)[2], np.arange(STEPS))
        for a in attns:
            a.close()
    t = layer_tensors(layer)
    for s in (0, 1):
        np.testing.assert_allclose(parallel[s], serial[s], rtol=0, atol=1e-6)
        assert_close(parallel[s], ref.mla_forward(t, G, xs[s], np.arange(STEPS)), 1e-4,
                     f"sequence {s}")


def test_threads_sharing_one_attn_are_serialized():
    # mla_attn is one thread at a time and grows its scratch memory inside forward: without the
    # binding's lock, two threads in one Attn corrupt each other's scratch (ASan: use after free).
    rng = np.random.default_rng(61)
    w = ref.random_layer(rng, G, bias=False)
    layer = mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=4)
    chunks = list(range(1, 40))  # every forward grows the scratch: frees what the other uses
    n = sum(chunks)
    xs = [rng.standard_normal((n, G.d_model)).astype(np.float32) for _ in range(2)]
    outs = [np.empty_like(x) for x in xs]
    errors = []
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=2 * n + 64,
                   block_tokens=16, n_seq_max=2) as cache, \
            mla.Attn(path="materialized") as attn:
        barrier = threading.Barrier(2)

        def run(s):
            try:
                barrier.wait()
                p = 0
                for c in chunks:
                    attn.forward(layer, cache, 0, xs[s][p:p + c], s, p, out=outs[s][p:p + c])
                    p += c
            except BaseException as e:  # reported below, not lost in the thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(s,)) for s in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    t = layer_tensors(layer)
    for s in (0, 1):
        assert_close(outs[s], ref.mla_forward(t, G, xs[s], np.arange(n)), 1e-4, f"sequence {s}")

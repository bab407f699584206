"""Two threads decoding two sequences of one cache, each with its own Attn (the documented
concurrency), give what one thread doing both gives; the binding enforces the C threading rules
of mla.Cache and mla.Calib."""
import collections
import threading
import time

import numpy as np
import pytest

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



# ---- the binding enforces mla.Cache's and mla.Calib's threading rules --------------------------
#
# A Probe wraps C functions at the Python level (on the Library object a handle calls through),
# sleeps inside the wrapper so that a call stays in flight long enough for another thread to
# collide with it, and records every overlap between groups of calls that must not run at once.

class Probe:
    def __init__(self, lib):
        self.lib = lib
        self.guard = threading.Lock()
        self.active = collections.Counter()
        self.calls = collections.Counter()
        self.overlaps = []

    def wrap(self, monkeypatch, name, group, excludes=(), sleep=0.02, before=None):
        """Replace lib.<name>: its calls form `group`; entering while a call of a group in
        `excludes` is in flight is an overlap. before(): run inside the call, before the C."""
        real = getattr(self.lib, name)

        def call(*args):
            with self.guard:
                self.overlaps += [(group, g) for g in excludes if self.active[g]]
                self.active[group] += 1
                self.calls[group] += 1
            try:
                if before is not None:
                    before()
                time.sleep(sleep)
                return real(*args)
            finally:
                with self.guard:
                    self.active[group] -= 1

        monkeypatch.setattr(self.lib, name, call)

    def wait_active(self, group, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not self.active[group]:
            assert time.monotonic() < deadline, f"no {group} call started"
            time.sleep(0.001)


def run_threads(*targets):
    """Run each target on its own thread, started together; re-raise the first exception."""
    errors = []
    barrier = threading.Barrier(len(targets))

    def run(f):
        try:
            barrier.wait()
            f()
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a thread is stuck: deadlock"
    if errors:
        raise errors[0]


@pytest.fixture()
def small():
    """A layer; a cache (f32, blocks of 4 tokens, 8 sequences) whose sequences 0 and 1 hold a
    4-token prompt; per sequence STEPS inputs (the prompt, then decode tokens)."""
    rng = np.random.default_rng(62)
    w = ref.random_layer(rng, G, bias=True)
    layer = mla.convert(geometry(G, True), weights(w), rope_dim=4, d_kv=4)
    xs = [rng.standard_normal((STEPS, G.d_model)).astype(np.float32) for _ in range(2)]
    cache = mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=512,
                      block_tokens=4, n_seq_max=8)
    with mla.Attn() as attn:
        for s in (0, 1):
            attn.forward(layer, cache, 0, xs[s][:4], s, 0)
    yield layer, cache, xs
    cache.close()
    layer.close()


def test_structural_calls_beside_forwards_give_the_serial_answer():
    # Two threads decode sequences 0 and 1 while a third copies, forks, shifts, saves, loads and
    # removes other sequences and reads the stats, over and over. Each structural call waits for
    # the forwards in flight, so the outputs are the serial run's, and every copy taken
    # mid-decode is an exact prefix of its source.
    steps = 48
    rng = np.random.default_rng(63)
    w = ref.random_layer(rng, G, bias=True)
    layer = mla.convert(geometry(G, True), weights(w), rope_dim=4, d_kv=4)
    xs = [rng.standard_normal((steps, G.d_model)).astype(np.float32) for _ in range(2)]

    def make_cache():
        return mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=1024,
                         block_tokens=4, n_seq_max=8)

    serial = [np.empty_like(x) for x in xs]
    with make_cache() as cache, mla.Attn() as attn:
        for s in (0, 1):
            decode(attn, layer, cache, s, xs[s], serial[s])

    parallel = [np.empty_like(x) for x in xs]
    copies = []  # (seq 2 = copy of 0, seq 3 = fork of 1 shifted by 1000, seq 4 = 2 reloaded)
    finished = []
    with make_cache() as cache:
        attns = [mla.Attn(), mla.Attn()]

        def decoder(s):
            def run():
                decode(attns[s], layer, cache, s, xs[s], parallel[s])
                finished.append(s)
            return run

        def structural():
            while len(finished) < 2 or len(copies) < 20:
                cache.seq_cp(0, 2)
                cache.seq_fork(1, 3)
                cache.seq_shift(3, -1, -1, 1000)
                stats = cache.stats  # seq 3 is this thread's: its length holds still
                assert cache.seq_length(3) <= stats.tokens_used <= stats.capacity_tokens
                cache.load(cache.save(2), 4)
                copies.append((cache.read(0, 2), cache.read(0, 3), cache.read(0, 4)))
                cache.seq_rm(3)
                cache.seq_rm(4, 0, 2)
                cache.seq_rm(4)

        run_threads(decoder(0), decoder(1), structural)
        for a in attns:
            a.close()
        final = [cache.read(0, s) for s in (0, 1)]
        assert cache.seq_length(3) == 0 and cache.seq_length(4) == 0
    t = layer_tensors(layer)
    for s in (0, 1):
        np.testing.assert_allclose(parallel[s], serial[s], rtol=0, atol=1e-6)
        assert_close(parallel[s], ref.mla_forward(t, G, xs[s], np.arange(steps)), 1e-4,
                     f"sequence {s}")
        np.testing.assert_array_equal(final[s][2], np.arange(steps))
    for c2, c3, c4 in copies:
        n2, n3 = len(c2[2]), len(c3[2])
        assert n2 <= steps and n3 <= steps
        for got, want in zip(c2, final[0]):  # latent, rope, positions: a prefix of seq 0
            np.testing.assert_array_equal(got, want[:n2])
        np.testing.assert_array_equal(c3[0], final[1][0][:n3])  # a shift keeps the latents
        np.testing.assert_array_equal(c3[2], np.arange(n3) + 1000)
        for got, want in zip(c4, c2):  # the snapshot round trip is exact
            np.testing.assert_array_equal(got, want)


# Every Cache method that needs the whole cache: (the C function it calls, the call).
EXCLUSIVE = {
    "reserve": ("mla_cache_reserve", lambda c, d: c.reserve(5, c.seq_pos_max(5) + 1, 1)),
    "seq_rm": ("mla_cache_seq_rm", lambda c, d: c.seq_rm(5)),
    "seq_cp": ("mla_cache_seq_cp", lambda c, d: c.seq_cp(0, 5)),
    "seq_fork": ("mla_cache_seq_fork", lambda c, d: c.seq_fork(1, 5)),
    "seq_keep": ("mla_cache_seq_keep", lambda c, d: c.seq_keep(0)),
    "seq_shift": ("mla_cache_seq_shift", lambda c, d: c.seq_shift(0, 0, 2, -0)),
    "clear": ("mla_cache_clear", lambda c, d: c.clear()),
    "stats": ("mla_cache_get_stats", lambda c, d: c.stats),
    "save": ("mla_cache_save_size", lambda c, d: c.save(0)),
    "save_file": ("mla_cache_save_file", lambda c, d: c.save_file(d / "out.mla", 1)),
    "load": ("mla_cache_load", lambda c, d: c.load((d / "seq0.mla").read_bytes(), 5)),
    "load_file": ("mla_cache_load_file", lambda c, d: c.load_file(d / "seq0.mla", 6)),
}


@pytest.mark.parametrize("method", sorted(EXCLUSIVE))
def test_exclusive_calls_never_overlap_a_forward(small, monkeypatch, tmp_path, method):
    # Two threads decode sequences 0 and 1; a third calls the method whenever a forward is in
    # flight. Without the binding's lock the call would start inside the forward's window.
    layer, cache, xs = small
    cache.save_file(tmp_path / "seq0.mla", 0)
    fn, call = EXCLUSIVE[method]
    probe = Probe(cache._own().lib)
    probe.wrap(monkeypatch, "mla_attn_forward", "forward", excludes=("exclusive",))
    probe.wrap(monkeypatch, fn, "exclusive", excludes=("forward",))
    attns = [mla.Attn(), mla.Attn()]
    n = 6

    def decoder(s):
        def run():
            for t in range(4, 4 + n):
                attns[s].forward(layer, cache, 0, xs[s][t:t + 1], s, t)
        return run

    def structural():
        for _ in range(3):
            probe.wait_active("forward")
            call(cache, tmp_path)

    run_threads(decoder(0), decoder(1), structural)
    for a in attns:
        a.close()
    assert probe.calls == {"forward": 2 * n, "exclusive": 3}
    assert probe.overlaps == []


# Calls that run concurrently on distinct sequences: (the C function, the call on sequence s at
# its k-th time; sequences 0 and 1 hold 4 tokens).
def _forward(ctx, s, k):
    layer, cache, xs, attns = ctx
    attns[s].forward(layer, cache, 0, xs[s][4 + k:5 + k], s, 4 + k)


def _write(ctx, s, k):
    _, cache, _, _ = ctx
    d = cache.layers[0]
    rng = np.random.default_rng(k)
    cache.write(0, s, 4 + k, rng.standard_normal((1, d.latent_dim)).astype(np.float32),
                rng.standard_normal((1, d.rope_width)).astype(np.float32))


SHARED = {
    "forward": ("mla_attn_forward", _forward),
    "write": ("mla_cache_write", _write),
    "read": ("mla_cache_seq_read", lambda ctx, s, k: ctx[1].read(0, s)),
    "seq_length": ("mla_cache_seq_length", lambda ctx, s, k: ctx[1].seq_length(s)),
    "seq_pos_max": ("mla_cache_seq_pos_max", lambda ctx, s, k: ctx[1].seq_pos_max(s)),
}


@pytest.mark.parametrize("a, b", [("forward", "forward"), ("forward", "write"),
                                  ("forward", "read"), ("write", "seq_length"),
                                  ("read", "seq_pos_max")])
def test_calls_on_distinct_sequences_run_at_once(small, monkeypatch, a, b):
    # Each call waits inside the C function for the other thread's call to be there too: if the
    # binding serialized them (one lock for the whole cache), the barrier would time out.
    layer, cache, xs = small
    rendezvous = threading.Barrier(2, timeout=10)
    probe = Probe(cache._own().lib)
    for name in {SHARED[a][0], SHARED[b][0]}:
        probe.wrap(monkeypatch, name, name, sleep=0, before=rendezvous.wait)
    attns = [mla.Attn(), mla.Attn()]
    ctx = (layer, cache, xs, attns)

    def worker(s, op):
        def run():
            for k in range(3):
                SHARED[op][1](ctx, s, k)
        return run

    run_threads(worker(0, a), worker(1, b))
    for at in attns:
        at.close()
    assert sum(probe.calls.values()) == 6


def test_calls_on_one_sequence_run_one_at_a_time(small, monkeypatch):
    # A forward over a batch holding sequences 1 and 0 locks both: reads of sequence 0 and of
    # sequence 1, issued while it is in flight, never run inside it.
    layer, cache, xs = small
    probe = Probe(cache._own().lib)
    probe.wrap(monkeypatch, "mla_attn_forward", "forward", excludes=("read",))
    probe.wrap(monkeypatch, "mla_cache_seq_read", "read", excludes=("forward",))
    n = 6

    finished = threading.Event()

    def batches():
        with mla.Attn() as attn:
            for t in range(4, 4 + n):
                x = np.stack([xs[1][t], xs[0][t]])
                attn.forward(layer, cache, 0, x, np.array([1, 0], np.int32),
                             np.array([t, t], np.int64))
        finished.set()

    def reader():
        k = 0
        probe.wait_active("forward")
        while True:  # a read whenever a forward is in flight, alternating sequences
            cache.read(0, k % 2, 0, 2)
            k += 1
            while not probe.active["forward"]:
                if finished.wait(0.001):
                    return

    run_threads(batches, reader)
    assert probe.calls["forward"] == n and probe.calls["read"] >= 1
    assert probe.overlaps == []
    assert cache.seq_length(0) == cache.seq_length(1) == 4 + n


def test_calib_feeds_from_two_threads_match_serial_feeding():
    rng = np.random.default_rng(64)
    w = ref.random_layer(rng, G, bias=True)
    x = rng.standard_normal((600, G.d_model)).astype(np.float32)
    chunks = [x[i:i + 25] for i in range(0, len(x), 25)]
    g = geometry(G, True)
    with mla.Calib(g, weights(w)) as serial, mla.Calib(g, weights(w)) as shared:
        for c in chunks:
            serial.feed(c)

        def feeder(part):
            def run():
                for c in chunks[part::2]:
                    shared.feed(c)
            return run

        run_threads(feeder(0), feeder(1))
        assert shared.token_count == serial.token_count == len(x)
        for got, want in zip(shared.qk_stats(), serial.qk_stats()):
            np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(shared.covariance(), serial.covariance(), rtol=1e-12)
        rq, rk, rs = ref.qk_stats(x, w["wq"], w["wk"], G, w["bq"], w["bk"])
        for got, want, what in zip(shared.qk_stats(), (rq, rk, rs), ("q_norm", "k_norm", "score")):
            assert_close(got, want, 1e-5, what)
        x64 = x.astype(np.float64)
        assert_close(shared.covariance(), x64.T @ x64, 1e-12, "XᵀX")


def test_calib_calls_run_one_at_a_time(monkeypatch):
    # Two threads feed one Calib while a third converts with it: no two of these C calls overlap.
    rng = np.random.default_rng(65)
    w = ref.random_layer(rng, G, bias=False)
    x = rng.standard_normal((8, G.d_model)).astype(np.float32)
    with mla.Calib(geometry(G, False), weights(w)) as calib:
        calib.feed(x)
        probe = Probe(calib._own().lib)
        probe.wrap(monkeypatch, "mla_calib_feed", "feed", excludes=("feed", "convert"))
        probe.wrap(monkeypatch, "mla_layer_convert", "convert", excludes=("feed",))
        layers = []

        def feeder():
            for _ in range(4):
                calib.feed(x)

        def converter():
            probe.wait_active("feed")
            layers.append(mla.convert(geometry(G, False), weights(w), calib,
                                      rope_strategy="2-norm", rope_dim=4, d_kv=4))

        run_threads(feeder, feeder, converter)
        assert probe.calls == {"feed": 8, "convert": 1}
        assert probe.overlaps == []
        assert calib.token_count == 9 * len(x)
        layers[0].close()

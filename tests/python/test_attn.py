"""Attention forward (converted layer + cache + mla_attn_forward) against the numpy forwards."""
import numpy as np
import pytest

import mha2mla_ref as ref
import mla
from util import assert_close, geometry, layer_tensors, weights

G = ref.Geom(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, rope_theta=10000.0)
G_MHA = ref.Geom(d_model=48, n_heads=3, n_kv_heads=3, head_dim=16, rope_theta=500.0)
N_PREFILL, N_DECODE = 12, 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20)
    w = ref.random_layer(rng, G, bias=True)
    wm = ref.random_layer(rng, G_MHA, bias=False)
    x = rng.standard_normal((N_PREFILL + N_DECODE, G.d_model)).astype(np.float32)
    xm = rng.standard_normal((N_PREFILL + N_DECODE, G_MHA.d_model)).astype(np.float32)
    xc = rng.standard_normal((100, G.d_model)).astype(np.float32)
    return w, wm, x, xm, xc


def prefill_decode(layer, x, path="auto", latent_dtype="f32", rope_dtype="f32", seq=0):
    """Prefill N_PREFILL tokens in one call, then decode the rest one by one."""
    with mla.Cache([layer], latent_dtype=latent_dtype, rope_dtype=rope_dtype,
                   capacity_tokens=256, block_tokens=8) as cache, mla.Attn(path=path) as attn:
        out = np.empty_like(x)
        attn.forward(layer, cache, 0, x[:N_PREFILL], seq, 0, out=out[:N_PREFILL])
        for t in range(N_PREFILL, len(x)):
            out[t:t + 1] = attn.forward(layer, cache, 0, x[t:t + 1], seq, t)
        assert cache.seq_length(seq) == len(x)
        return out, cache.read(0, seq)


@pytest.mark.parametrize("path", ["absorbed", "materialized", "auto"])
@pytest.mark.parametrize("method", ["joint", "split"])
def test_reduced_rank_forward_matches_numpy(data, path, method):
    w, _, x, _, xc = data
    with mla.Calib(geometry(G, True), weights(w)) as c:
        c.feed(xc)
        layer = mla.convert(geometry(G, True), weights(w), c, rope_strategy="2-norm", rope_dim=4,
                            d_kv=4, factorization=method)
    pos = np.arange(len(x))
    got, (latent, rope, cpos) = prefill_decode(layer, x, path)
    t = layer_tensors(layer)
    # The library's tensors through numpy's forward: checks attention alone.
    assert_close(got, ref.mla_forward(t, G, x, pos), 1e-4, f"{path} vs numpy on lib tensors")
    # numpy's own conversion: checks conversion and attention together.
    mine = ref.convert(w, G, t["rope_dims"], 4, method)
    assert_close(got, ref.mla_forward(mine, G, x, pos), 1e-4, f"{path} vs numpy conversion")
    # The cache holds the latents and the rotated RoPE keys, nothing else.
    want_c, want_r = ref.mla_latents(t, G, x, pos)
    assert_close(latent, want_c, 1e-5, "cached latents")
    assert_close(rope, want_r, 1e-5, "cached RoPE keys")
    np.testing.assert_array_equal(cpos, pos)
    # Not a vacuous comparison: at this rank the output is far from the MHA one.
    assert np.max(np.abs(got - ref.mha_forward(w, G, x, pos))) > 1e-2


def test_full_rank_conversion_reproduces_mha(data):
    w, _, x, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="high", rope_dim=G.head_dim,
                        d_kv=G.head_dim)
    got, _ = prefill_decode(layer, x)
    assert_close(got, ref.mha_forward(w, G, x, np.arange(len(x))), 1e-4, "full rank vs MHA")


def test_mha_baseline_layer(data):
    _, wm, _, xm, _ = data
    layer = mla.Layer.from_mha(geometry(G_MHA, False), weights(wm))
    assert layer.info.kind == mla.LayerKind.MHA
    assert layer.info.latent_dim == G_MHA.n_kv_heads * G_MHA.head_dim
    got, _ = prefill_decode(layer, xm)
    assert_close(got, ref.mha_forward(wm, G_MHA, xm, np.arange(len(xm))), 1e-4, "MHA layer")


def test_half_precision_cache_is_close(data):
    w, _, x, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="high", rope_dim=4, d_kv=6)
    got, _ = prefill_decode(layer, x, latent_dtype="f16", rope_dtype="f16")
    assert_close(got, ref.mla_forward(layer_tensors(layer), G, x, np.arange(len(x))), 5e-3,
                 "f16 cache")


def test_linear_rope_scaling(data):
    w, _, x, _, _ = data
    g = mla.Geometry(G.d_model, G.n_heads, G.n_kv_heads, G.head_dim, rope_theta=G.rope_theta,
                     rope_scaling="linear", rope_scaling_factor=4.0, qkv_bias=True)
    layer = mla.convert(g, weights(w), rope_strategy="low", rope_dim=6, d_kv=6)
    got, _ = prefill_decode(layer, x)
    gs = ref.Geom(G.d_model, G.n_heads, G.n_kv_heads, G.head_dim, G.rope_theta,
                  position_scale=0.25)
    assert_close(got, ref.mla_forward(layer_tensors(layer), gs, x, np.arange(len(x))), 1e-4,
                 "linear scaling")


def test_mixed_batch_of_two_sequences(data):
    w, _, x, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="high", rope_dim=4, d_kv=4)
    seq = np.array([0, 1] * 5, np.int32)
    pos = np.repeat(np.arange(5), 2).astype(np.int64)
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=64,
                   block_tokens=4) as cache, mla.Attn() as attn:
        got = attn.forward(layer, cache, 0, x[:10], seq, pos)
        assert (cache.seq_length(0), cache.seq_length(1)) == (5, 5)
    want = ref.mla_forward(layer_tensors(layer), G, x[:10], pos, seq)
    assert_close(got, want, 1e-4, "two sequences in one batch")


def test_seq_shift_rerotates_cached_keys(data):
    w, _, x, _, xc = data
    with mla.Calib(geometry(G, True), weights(w)) as c:
        c.feed(xc)
        layer = mla.convert(geometry(G, True), weights(w), c, rope_strategy="2-norm", rope_dim=6,
                            d_kv=4)
    t = layer_tensors(layer)
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=64) as cache, \
            mla.Attn() as attn:
        attn.forward(layer, cache, 0, x[:8], 0, 0)
        cache.seq_rm(0, 0, 3)  # drop the first 3 tokens, then close the gap
        cache.seq_shift(0, 3, -1, -3)
        latent, rope, pos = cache.read(0, 0)
        np.testing.assert_array_equal(pos, np.arange(5))
        want_c, want_r = ref.mla_latents(t, G, x[3:8], np.arange(5))
        assert_close(latent, want_c, 1e-5, "latents after shift")
        assert_close(rope, want_r, 1e-5, "RoPE keys after shift")
        # Decoding on after the shift is the forward of the shortened sequence.
        y = attn.forward(layer, cache, 0, x[8:9], 0, 5)
    assert_close(y, ref.mla_forward(t, G, x[3:9], np.arange(6))[-1:], 1e-4, "decode after shift")


def test_repeated_position_refused_and_rewind_recomputes(data):
    """A position the cache layer already holds is refused (nothing changes); after seq_rm the
    same positions compute again to the numpy forward."""
    w, _, x, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_dim=4, d_kv=4)
    t = layer_tensors(layer)
    pos = np.arange(len(x))
    want = ref.mla_forward(t, G, x, pos)
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=64,
                   block_tokens=8) as cache, mla.Attn() as attn:
        first = attn.forward(layer, cache, 0, x, 0, 0)
        latent0 = cache.read(0, 0)[0].copy()
        with pytest.raises(mla.MlaError) as e:
            attn.forward(layer, cache, 0, x[5:7], 0, 5)
        assert e.value.status == mla.Status.INVALID_ARGUMENT and "repeat" in str(e.value)
        assert cache.seq_length(0) == cache.seq_written(0, 0) == len(x)
        np.testing.assert_array_equal(cache.read(0, 0)[0], latent0)
        cache.seq_rm(0, 10)
        assert cache.seq_written(0, 0) == 10
        again = attn.forward(layer, cache, 0, x[10:], 0, 10)
        assert_close(again, first[10:], 1e-6, "recomputed after seq_rm")
        assert_close(again, want[10:], 1e-4, "recomputed vs numpy")


@pytest.mark.parametrize("kind", ["absorbed", "materialized", "mha"])
def test_positions_with_a_gap_are_attended_by_position(data, kind):
    """After seq_rm in the middle, the cached positions jump (0-2, 7-11); a prefill chunk and a
    decode after them see exactly the tokens at or before their positions, over tiles whose
    segments are the cache's 4-token blocks."""
    w, wm, _, _, xc = data
    if kind == "mha":
        g, layer = G_MHA, mla.Layer.from_mha(geometry(G_MHA, False), weights(wm))
        x = np.ascontiguousarray(xc[:, :G_MHA.d_model])
        want_of = lambda keep: ref.mha_forward(wm, g, x[keep], keep)
        path = "auto"
    else:
        g, layer = G, mla.convert(geometry(G, True), weights(w), rope_dim=4, d_kv=4)
        x = xc
        t = layer_tensors(layer)
        want_of = lambda keep: ref.mla_forward(t, g, x[keep], keep)
        path = kind
    keep = np.r_[0:3, 7:21]
    with mla.Cache([layer], latent_dtype="f16", rope_dtype="f16", capacity_tokens=64,
                   block_tokens=4) as cache, mla.Attn(path=path) as attn:
        attn.forward(layer, cache, 0, x[:12], 0, 0)
        cache.seq_rm(0, 3, 7)
        np.testing.assert_array_equal(cache.read(0, 0)[2], keep[:8])
        chunk = attn.forward(layer, cache, 0, x[12:20], 0, 12)
        step = attn.forward(layer, cache, 0, x[20:21], 0, 20)
    want = want_of(keep)
    assert_close(chunk, want[8:16], 2e-3, f"{kind}: chunk after the gap")
    assert_close(step, want[16:], 2e-3, f"{kind}: decode after the gap")
    # Not vacuous: without the gap the outputs differ.
    assert np.max(np.abs(step - want_of(np.arange(21))[-1:])) > 1e-2


def test_scratch_limit_and_release(data):
    """max_scratch_bytes bounds the handle's scratch (a prompt over the fastest plan's need takes
    one of less scratch, same numbers); below every plan's need: MlaError CAPACITY naming it,
    nothing appended; release_scratch frees it and the next forward computes the same."""
    w, _, _, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="high", rope_dim=4, d_kv=4)
    t = layer_tensors(layer)
    x = np.random.default_rng(5).standard_normal((301, G.d_model)).astype(np.float32)
    want = ref.mla_forward(t, G, x, np.arange(len(x)))
    n = 300  # materialized, several blocks: the fastest plan shares its up-projection

    def run(attn, seq):
        with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=512,
                       block_tokens=16) as cache:
            got = attn.forward(layer, cache, 0, x[:n], seq, 0)
            return got, cache.seq_length(seq)

    with mla.Attn(path="materialized") as free:
        assert free.scratch_bytes == 0
        got, _ = run(free, 0)
        full = free.scratch_bytes
        assert full > 0
        assert_close(got, want[:n], 1e-4, "unlimited")
        free.release_scratch()
        assert free.scratch_bytes == 0
    with mla.Attn(path="materialized", max_scratch_bytes=full - 1) as low:
        got, _ = run(low, 1)
        least = low.scratch_bytes
        assert 0 < least < full
        assert_close(got, want[:n], 1e-4, "least scratch")
    with mla.Attn(path="materialized", max_scratch_bytes=least - 1) as tiny:
        with mla.Cache([layer], capacity_tokens=512, block_tokens=16) as cache:
            with pytest.raises(mla.MlaError) as e:
                tiny.forward(layer, cache, 0, x[:n], 0, 0)
            assert e.value.status == mla.Status.CAPACITY
            assert f"needs {least} bytes" in str(e.value)
            assert cache.seq_length(0) == 0
        assert tiny.scratch_bytes == 0
    with pytest.raises(ValueError):
        mla.Attn(max_scratch_bytes=2**63)
    with pytest.raises(mla.MlaError) as e:
        mla.Attn(max_scratch_bytes=-1)
    assert "max_scratch_bytes" in str(e.value)


def test_forward_progress_and_cancel(data):
    """progress(done, total) in (query, context token) pairs: the closed form n(n+1)/2 for a fresh
    prompt, done never decreasing and ending at total, the output unchanged; True cancels
    (CANCELLED, nothing appended, out untouched); an exception cancels and is re-raised."""
    w, _, _, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="high", rope_dim=4, d_kv=4)
    n = 200
    x = np.random.default_rng(6).standard_normal((n, G.d_model)).astype(np.float32)
    want = ref.mla_forward(layer_tensors(layer), G, x, np.arange(n))
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=1024,
                   block_tokens=16) as cache, mla.Attn(n_threads=2) as attn:
        calls = []
        got = attn.forward(layer, cache, 0, x, 0, 0,
                           progress=lambda d, t: calls.append((d, t)))
        assert_close(got, want, 1e-4, "forward with a progress callback")
        total = n * (n + 1) // 2
        assert calls and all(t == total for _, t in calls)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert calls[-1][0] == total
        out = np.full((n, G.d_model), 3.0, np.float32)
        with pytest.raises(mla.MlaError) as e:
            attn.forward(layer, cache, 0, x, 1, 0, out=out, progress=lambda d, t: True)
        assert e.value.status == mla.Status.CANCELLED
        assert cache.seq_length(1) == 0 and np.all(out == 3.0)

        def boom(d, t):
            raise KeyError("from the callback")
        with pytest.raises(KeyError):
            attn.forward(layer, cache, 0, x, 1, 0, progress=boom)
        assert cache.seq_length(1) == 0
        # The callback is gone afterwards.
        assert_close(attn.forward(layer, cache, 0, x, 1, 0), want, 1e-4, "after the cancels")


def _bf16_bits(a):
    """float32 → bf16 bit patterns, nearest with ties to even (finite values)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


WEIGHTS = ("q_proj.weight", "k_r_proj.weight", "kv_proj.down_kv.weight", "kv_proj.up_k.weight",
           "kv_proj.up_v.weight", "o_proj.weight")


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_weights_in_16_bits(data, dtype):
    w, _, x, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="high", rope_dim=4, d_kv=4)
    f32 = layer_tensors(layer)
    layer.set_weight_dtype(dtype)
    assert layer.info.weight_dtype == mla.DType(mla.DType.BF16 if dtype == "bf16" else
                                                mla.DType.F16)
    # The stored values: numpy's own rounding of the float32 ones; the rest unchanged.
    want = dict(f32)
    for name in WEIGHTS:
        got = layer.tensor(name)
        if dtype == "bf16":
            bits = _bf16_bits(f32[name])
            np.testing.assert_array_equal(got, bits, err_msg=name)
            want[name] = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            np.testing.assert_array_equal(got, f32[name].astype(np.float16), err_msg=name)
            want[name] = f32[name].astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(layer.tensor("kv_proj.up_v.bias"), f32["kv_proj.up_v.bias"])
    # Forwards (prompt, then decode) against numpy's forward over the rounded weights, and
    # visibly away from the float32 weights' output.
    pos = np.arange(len(x))
    got, _ = prefill_decode(layer, x)
    assert_close(got, ref.mla_forward(want, G, x, pos), 1e-4, f"{dtype} weights vs numpy")
    assert np.max(np.abs(got - ref.mla_forward(f32, G, x, pos))) > 1e-5
    # Back to float32: the rounded values, widened exactly.
    layer.set_weight_dtype("f32")
    assert layer.info.weight_dtype == mla.DType.F32
    for name in WEIGHTS:
        np.testing.assert_array_equal(layer.tensor(name), want[name].astype(np.float32))


def test_weight_dtype_refusals(data):
    w, _, _, _, _ = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="high", rope_dim=4, d_kv=4)
    view = layer.tensor("q_proj.weight")
    with pytest.raises(RuntimeError, match="numpy view"):
        layer.set_weight_dtype("bf16")  # would free the memory `view` reads
    kept = view.copy()
    del view
    other = layer.tensor("kv_proj.up_v.bias")
    layer.set_weight_dtype("bf16")  # views of tensors that stay are no obstacle
    assert layer.info.weight_dtype == mla.DType.BF16
    np.testing.assert_array_equal(layer.tensor("q_proj.weight"), _bf16_bits(kept))
    np.testing.assert_array_equal(other, layer.tensor("kv_proj.up_v.bias"))
    with pytest.raises(mla.MlaError, match="weight dtype"):
        layer.set_weight_dtype("i8")
    # Beyond f16's range: NUMERICAL naming the tensor, the layer unchanged.
    wb = {k: (None if v is None else v.copy()) for k, v in w.items()}
    wb["wo"][2, 5] = 1e5
    big = mla.convert(geometry(G, True), weights(wb), rope_strategy="high", rope_dim=4, d_kv=4)
    with pytest.raises(mla.MlaError, match=r"o_proj.weight.*row 2, column 5") as e:
        big.set_weight_dtype("f16")
    assert e.value.status == mla.Status.NUMERICAL
    assert big.info.weight_dtype == mla.DType.F32
    assert big.tensor("o_proj.weight")[2, 5] == np.float32(1e5)


@pytest.mark.parametrize("threads", ["pool", "openmp", mla.AttnThreads.POOL])
def test_forward_on_either_threads(data, threads):
    """Two threads of the handle's pool or of OpenMP: a 100-token prompt (its projections above
    the line for threads) and decodes against numpy's forward."""
    w, _, _, _, xc = data
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="uniform", rope_dim=4,
                        d_kv=4)
    pos = np.arange(len(xc))
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=256,
                   block_tokens=16) as cache, mla.Attn(n_threads=2, threads=threads) as attn:
        got = np.empty_like(xc)
        got[:96] = attn.forward(layer, cache, 0, xc[:96], 0, 0)
        for t in range(96, len(xc)):
            got[t:t + 1] = attn.forward(layer, cache, 0, xc[t:t + 1], 0, t)
    assert_close(got, ref.mla_forward(layer_tensors(layer), G, xc, pos), 1e-4, f"{threads}")


def test_unknown_threads_refused():
    with pytest.raises(ValueError, match="threads"):
        mla.Attn(threads="tbb")
    with pytest.raises(ValueError, match="threads: 7 is not"):
        mla.Attn(threads=7)

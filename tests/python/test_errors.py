"""Error mapping: every failed C call raises mla.MlaError(status, mla_last_error())."""
import ctypes

import numpy as np
import pytest

import mha2mla_ref as ref
import mla
from mla import _ffi
from util import geometry, weights

G = ref.Geom(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8)


@pytest.fixture(scope="module")
def w():
    return ref.random_layer(np.random.default_rng(40), G)


def test_status_strings_and_exception_fields():
    lib = mla.library()
    for s in mla.Status:
        assert mla.status_string(s) and mla.status_string(s) != "unknown status"
    assert mla.status_string(999)  # never NULL, also for unknown values
    p = _ffi.mla_convert_params()
    status = lib.mla_convert_default_params(ctypes.byref(p), 1)  # struct_size too small
    assert status == mla.Status.INVALID_ARGUMENT
    with pytest.raises(mla.MlaError) as e:
        mla.errors.check(lib, status)
    assert e.value.status is mla.Status.INVALID_ARGUMENT
    assert e.value.message == lib.mla_last_error().decode() and "struct_size" in e.value.message
    assert str(e.value).startswith("[INVALID_ARGUMENT]")


def expect(status, fn, *args, match=None, **kw):
    with pytest.raises(mla.MlaError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value
    assert e.value.message, "an empty message"
    if match:
        assert match in e.value.message, e.value.message
    return e.value


def test_conversion_errors(w):
    bad_geom = mla.Geometry(G.d_model, 4, 3, G.head_dim)  # 3 does not divide 4
    expect(mla.Status.INVALID_ARGUMENT, mla.convert, bad_geom,
           mla.LayerWeights(w["wq"], np.zeros((24, 32), np.float32),
                            np.zeros((24, 32), np.float32), w["wo"]))
    expect(mla.Status.INVALID_ARGUMENT, mla.convert, geometry(G, False), weights(w), rope_dim=3,
           d_kv=2, match="rope_dim")
    expect(mla.Status.INVALID_ARGUMENT, mla.convert, geometry(G, False), weights(w), rope_dim=4,
           d_kv=13, match="d_kv")  # R = 26 > 24, the rank of [W_k_nope; W_v]
    expect(mla.Status.INVALID_ARGUMENT, mla.convert, geometry(G, False), weights(w),
           rope_strategy="2-norm", rope_dim=4, d_kv=2)  # needs calibration
    nan = dict(w, wv=w["wv"].copy())
    nan["wv"][3, 5] = np.nan
    expect(mla.Status.NUMERICAL, mla.convert, geometry(G, False), weights(nan), rope_dim=4,
           d_kv=2)
    with mla.Calib(geometry(G, False), weights(w)) as c:
        expect(mla.Status.INVALID_ARGUMENT, c.qk_stats)  # nothing fed yet
        x = np.ones((3, G.d_model), np.float32)
        x[2, 7] = np.inf
        expect(mla.Status.NUMERICAL, c.feed, x)


def test_progress_can_cancel(w):
    calls = []
    expect(mla.Status.CANCELLED, mla.convert, geometry(G, False), weights(w), rope_dim=4, d_kv=2,
           progress=lambda done, total: calls.append((done, total)) or True)
    assert calls and all(t > 0 for _, t in calls)

    def boom(done, total):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):  # the original exception
        mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2, progress=boom)
    seen = []
    mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2,
                progress=lambda d, t: seen.append((d, t)))
    assert seen and all(0 <= d <= t for d, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_from_tensors_names_the_bad_tensor(w):
    layer = mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2)
    t = dict(layer.tensors())
    t["kv_proj.up_v.weight"] = np.zeros((5, 4), np.float32)
    expect(mla.Status.SHAPE_MISMATCH, mla.Layer.from_tensors, geometry(G, False), 4, 2, t,
           match="up_v")
    del t["kv_proj.up_v.weight"]
    expect(mla.Status.INVALID_ARGUMENT, mla.Layer.from_tensors, geometry(G, False), 4, 2, t,
           match="up_v")
    expect(mla.Status.INVALID_ARGUMENT, layer.tensor, "no_such.weight")
    expect(mla.Status.INVALID_ARGUMENT, layer.tensor, 99)


def test_cache_and_attn_errors(w):
    layer = mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2)
    expect(mla.Status.INVALID_ARGUMENT, mla.Cache, [layer], capacity_tokens=64, block_tokens=0)
    with mla.Cache([layer], capacity_tokens=16, block_tokens=8, n_seq_max=2) as cache, \
            mla.Attn() as attn:
        expect(mla.Status.CAPACITY, cache.reserve, 0, 0, 17)
        assert cache.seq_length(0) == 0  # nothing changed
        expect(mla.Status.INVALID_ARGUMENT, cache.reserve, 2, 0, 1)  # no sequence 2
        x = np.ones((2, G.d_model), np.float32)
        attn.forward(layer, cache, 0, x, 0, 0)
        expect(mla.Status.INVALID_ARGUMENT, attn.forward, layer, cache, 0, x, 0, 5)  # a gap
        expect(mla.Status.INVALID_ARGUMENT, attn.forward, layer, cache, 1, x, 0, 2)  # no layer 1
        x[1, 1] = np.nan
        expect(mla.Status.NUMERICAL, attn.forward, layer, cache, 0, x, 0, 2)
        assert cache.seq_length(0) == 2  # nothing appended on error
        expect(mla.Status.CAPACITY, attn.forward, layer, cache, 0,
               np.ones((15, G.d_model), np.float32), 0, 2)
    expect(mla.Status.INVALID_ARGUMENT, mla.Attn, n_threads=-1)
    # crossover_tokens: 0 is the cost model (the default), N > 0 a fixed switch, < 0 refused
    expect(mla.Status.INVALID_ARGUMENT, mla.Attn, crossover_tokens=-1,
           match="crossover_tokens is -1")
    for n in (0, 224):
        mla.Attn(crossover_tokens=n).close()


def test_errors_are_per_thread(w):
    import threading
    msgs = {}

    def fail(i):
        try:
            mla.convert(geometry(G, False), weights(w), rope_dim=2 * i + 1, d_kv=2)
        except mla.MlaError as e:
            msgs[i] = e.message
        except BaseException as e:  # noqa: B902 - reported by the assert below
            msgs[i] = repr(e)

    threads = [threading.Thread(target=fail, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(msgs) == 4 and all(str(2 * i + 1) in msgs[i] for i in range(4)), msgs


def test_arrays_are_checked_before_c_sees_them(w):
    with pytest.raises(TypeError, match="dtype is float64"):
        mla.convert(geometry(G, False), mla.LayerWeights(**{k: v.astype(np.float64)
                                                          for k, v in w.items()}))
    with pytest.raises(ValueError, match="shape"):
        mla.convert(geometry(G, False), weights(dict(w, wk=w["wk"][:-1])))
    with pytest.raises(ValueError, match="C-contiguous"):
        mla.convert(geometry(G, False), weights(dict(w, wo=np.asfortranarray(w["wo"]))))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        mla.convert(geometry(G, False), weights(dict(w, wq=w["wq"].tolist())))
    with pytest.raises(TypeError, match="weights must be"):
        mla.convert(geometry(G, False), weights({k: v.astype(np.int32) for k, v in w.items()}))
    with pytest.raises(ValueError, match="rope_strategy"):
        mla.convert(geometry(G, False), weights(w), rope_strategy="fastest")


def test_ints_that_do_not_fit_the_c_type_are_refused(w):
    # ctypes wraps such ints silently: 2**32 passed as int32_t is 0, so each call below would
    # address sequence, layer, position or tensor 0 instead of failing.
    layer = mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2)
    big = 2**32
    with pytest.raises(ValueError, match="index: 4294967296 does not fit"):
        layer.tensor(big)
    with pytest.raises(ValueError, match="kv_head"):
        layer.rope_dims(big)
    with pytest.raises(ValueError, match="d_model"):
        mla.convert(mla.Geometry(G.d_model + big, 4, 2, 8), weights(w))
    with pytest.raises(ValueError, match="d_kv"):
        mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2 + big)
    with pytest.raises(ValueError, match="n_seq_max"):
        mla.Cache([layer], capacity_tokens=16, n_seq_max=2 + big)
    with pytest.raises(ValueError, match="n_threads"):
        mla.Attn(n_threads=1 + big)
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=16,
                   n_seq_max=2) as cache, mla.Attn() as attn:
        latent = np.ones((1, layer.info.latent_dim), np.float32)
        rope = np.ones((1, layer.info.rope_width), np.float32)
        with pytest.raises(ValueError, match="seq"):
            cache.write(0, big, 0, latent, rope)
        with pytest.raises(ValueError, match="pos"):
            cache.write(0, 0, 2**64, latent, rope)
        with pytest.raises(ValueError, match="seq"):
            cache.reserve(big + 1, 0, 1)
        with pytest.raises(ValueError, match="n_tokens"):
            cache.reserve(0, 0, 2**64 + 1)
        with pytest.raises(ValueError, match="delta"):
            cache.seq_shift(0, -1, -1, 2**64)
        x = np.ones((2, G.d_model), np.float32)
        with pytest.raises(ValueError, match="cache_layer"):
            attn.forward(layer, cache, big, x, 0, 0)
        with pytest.raises(ValueError, match="seq"):
            attn.forward(layer, cache, 0, x, big, 0)
        with pytest.raises(ValueError, match="pos"):
            attn.forward(layer, cache, 0, x, 0, 2**63 - 1)  # the second token's position
        assert cache.seq_length(0) == 0 and cache.seq_length(1) == 0  # nothing went to seq 0
        with pytest.raises(TypeError, match="expected an int"):
            cache.reserve(0, 1.5, 1)
        cache.reserve(np.int32(1), np.int64(0), 1)  # numpy integers are ints
        assert cache.seq_length(1) == 1


def test_strings_with_a_nul_are_refused(w, tmp_path):
    # C would read "q_proj.weight\0x" as "q_proj.weight", and a path up to its NUL.
    layer = mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2)
    with pytest.raises(ValueError, match="null byte"):
        layer.tensor("q_proj.weight\0x")
    with pytest.raises(ValueError, match="null byte"):
        mla.Layer.from_tensors(geometry(G, False), 4, 2,
                               {k + "\0x": v for k, v in layer.tensors().items()})
    with mla.Cache([layer], capacity_tokens=16) as cache:
        target = tmp_path / "snap"
        with pytest.raises(ValueError, match="null byte"):
            cache.save_file(str(target) + "\0.bak")
        assert not target.exists()
        with pytest.raises(ValueError, match="null byte"):
            cache.load_file(str(target) + "\0.bak")

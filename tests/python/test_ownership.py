"""Ownership: one C destroy per handle, no use after close, views keep their layer alive."""
import collections.abc
import gc
import weakref

import numpy as np
import pytest

import mha2mla_ref as ref
import mla
from util import geometry, weights

G = ref.Geom(d_model=32, n_heads=2, n_kv_heads=2, head_dim=8)


@pytest.fixture()
def layer():
    w = ref.random_layer(np.random.default_rng(50), G)
    return mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2)


def test_close_destroys_once_and_use_after_close_raises(layer):
    cache = mla.Cache([layer], capacity_tokens=16)
    attn = mla.Attn()
    calib = mla.Calib(geometry(G, False), weights(ref.random_layer(np.random.default_rng(1), G)))
    x = np.ones((1, G.d_model), np.float32)
    for obj in (calib, cache, attn, layer):
        fin = obj._owned.finalizer
        assert fin.alive and not obj.closed
        obj.close()
        assert not fin.alive, "close() must destroy at once when nothing else holds the handle"
        assert obj.closed
        obj.close()  # a second close is a no-op, not a double free
        assert "closed" in repr(obj)
    with pytest.raises(ValueError, match="closed Layer"):
        layer.info
    with pytest.raises(ValueError, match="closed Cache"):
        cache.seq_length(0)
    with pytest.raises(ValueError, match="closed Attn"):
        attn.forward(layer, cache, 0, x, 0, 0)
    with pytest.raises(ValueError, match="closed Calib"):
        calib.feed(x)
    with pytest.raises(ValueError, match="closed Layer"):
        mla.Attn().forward(layer, mla.Cache([_desc()], capacity_tokens=8), 0, x, 0, 0)
    with pytest.raises(ValueError):
        with layer:
            pass


def _desc():
    return mla.CacheLayerDesc(2, 0, 0, np.zeros(0, np.float32), 1.0, 4)


def test_context_managers_close(layer):
    with mla.Cache([layer], capacity_tokens=16) as cache, mla.Attn() as attn:
        fins = [cache._owned.finalizer, attn._owned.finalizer]
    assert cache.closed and attn.closed and not any(f.alive for f in fins)
    with layer:
        pass
    assert layer.closed


def test_garbage_collection_destroys():
    w = ref.random_layer(np.random.default_rng(51), G)
    layer = mla.convert(geometry(G, False), weights(w), rope_dim=4, d_kv=2)
    owned = weakref.ref(layer._owned)
    fin = layer._owned.finalizer
    del layer
    gc.collect()
    assert owned() is None and not fin.alive


def test_tensor_views_keep_the_layer_alive(layer):
    fin = layer._owned.finalizer
    view = layer.tensor("kv_proj.up_v.weight")
    copy = view.copy()
    assert not view.flags.writeable and not view.flags.owndata
    with pytest.raises(ValueError):
        view[0, 0] = 1.0
    layer.close()
    assert fin.alive  # the view still reads the layer's memory
    np.testing.assert_array_equal(view, copy)
    derived = view[1:]  # a view of the view holds it too
    del view
    gc.collect()
    assert fin.alive
    np.testing.assert_array_equal(derived, copy[1:])
    del derived
    gc.collect()
    assert not fin.alive


def test_cache_does_not_need_its_layer(layer):
    # rope_freqs are borrowed for mla_cache_create only: the cache outlives the layer.
    with mla.Cache([layer], latent_dtype="f32", rope_dtype="f32", capacity_tokens=16) as cache:
        with mla.Attn() as attn:
            attn.forward(layer, cache, 0, np.ones((3, G.d_model), np.float32), 0, 0)
        before = cache.read(0, 0)[1]
        layer.close()
        gc.collect()
        cache.seq_shift(0, -1, -1, 0)  # reads the copied frequencies
        cache.seq_shift(0, -1, -1, 2)
        cache.seq_shift(0, -1, -1, -2)
        np.testing.assert_allclose(cache.read(0, 0)[1], before, atol=1e-5)


class _Poisoned(np.ndarray):
    """An array that overwrites its memory when it dies: reading it after that gives NaN."""

    def __del__(self):
        self.fill(-1 if self.dtype == np.int32 else np.nan)


class _LazyTensors(collections.abc.Mapping):
    """A checkpoint reader that makes a new array on every access, as lazy loaders do."""

    def __init__(self, tensors):
        self._t = tensors

    def __getitem__(self, key):
        return self._t[key].copy().view(_Poisoned)

    def __iter__(self):
        return iter(self._t)

    def __len__(self):
        return len(self._t)


def test_from_tensors_keeps_the_arrays_of_a_lazy_mapping_alive(layer):
    # Only the loop variable referred to each array: it died (and C read freed memory) before
    # mla_layer_from_tensors ran.
    tensors = {k: v.copy() for k, v in layer.tensors().items()}
    with mla.Layer.from_tensors(geometry(G, False), 4, 2, _LazyTensors(tensors)) as rebuilt:
        for k, v in tensors.items():
            np.testing.assert_array_equal(rebuilt.tensor(k), v, err_msg=k)

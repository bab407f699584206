"""The cache through the binding: sequence operations, accounting, snapshots."""
import numpy as np
import pytest

import mla

DESC = mla.CacheLayerDesc(latent_dim=16, rope_heads=2, rope_dim=4,
                          rope_freqs=np.array([[1.0, 0.1], [0.5, 0.01]], np.float32),
                          rope_position_scale=1.0, mha_kv_dim=32)


def filled(n0=5, n1=3, **kw):
    kw.setdefault("latent_dtype", "f32")
    kw.setdefault("rope_dtype", "f32")
    cache = mla.Cache([DESC, DESC], capacity_tokens=64, block_tokens=4, n_seq_max=4, **kw)
    rng = np.random.default_rng(30)
    data = {}
    for seq, n in ((0, n0), (1, n1)):
        for layer in (0, 1):
            lat = rng.standard_normal((n, 16)).astype(np.float32)
            rope = rng.standard_normal((n, 8)).astype(np.float32)
            cache.write(layer, seq, 0, lat, rope)
            data[seq, layer] = (lat, rope)
    return cache, data


def test_write_read_and_sequence_operations():
    cache, data = filled()
    with cache:
        lat, rope, pos = cache.read(1, 0)
        np.testing.assert_array_equal(lat, data[0, 1][0])
        np.testing.assert_array_equal(rope, data[0, 1][1])
        np.testing.assert_array_equal(pos, np.arange(5))
        lat, _, pos = cache.read(0, 0, first=2, n_tokens=2)
        np.testing.assert_array_equal(lat, data[0, 0][0][2:4])
        cache.seq_fork(0, 2)  # (src, dst) in that order
        np.testing.assert_array_equal(cache.read(0, 2)[0], data[0, 0][0])
        cache.seq_cp(1, 3, 1, 3)
        np.testing.assert_array_equal(cache.read(0, 3)[2], [1, 2])
        cache.seq_rm(0, 1, 3)
        assert (cache.seq_length(0), cache.seq_pos_min(0), cache.seq_pos_max(0)) == (3, 0, 4)
        np.testing.assert_array_equal(cache.read(0, 0)[0], data[0, 0][0][[0, 3, 4]])
        cache.seq_keep(1)
        assert [cache.seq_length(s) for s in range(4)] == [0, 3, 0, 0]
        assert cache.seq_pos_max(0) == -1
        cache.reserve(0, 10, 2)
        lat, _, pos = cache.read(0, 0)
        np.testing.assert_array_equal(pos, [10, 11])
        np.testing.assert_array_equal(lat, 0)  # reserved slots read as zeros
        cache.clear()
        assert cache.stats.tokens_used == 0


@pytest.mark.parametrize("latent,rope,group,latent_bytes,rope_bytes",
                         [("f32", "f32", 32, 64, 32), ("f16", "f16", 32, 32, 16),
                          ("bf16", "f32", 32, 32, 32), ("i8", "f16", 8, 16 + 2 * 4, 16),
                          ("i4", "bf16", 8, 8 + 2 * 4, 16)])
def test_stats_count_bytes_as_stored(latent, rope, group, latent_bytes, rope_bytes):
    with mla.Cache([DESC, DESC], latent_dtype=latent, rope_dtype=rope, quant_group=group,
                   capacity_tokens=64, block_tokens=16) as cache:
        s = cache.stats
        assert s.bytes_per_token == 2 * (latent_bytes + rope_bytes)
        assert s.quant_group == (group if latent in ("i8", "i4") else 0)
        assert s.mha_bytes_per_token == 2 * 2 * 32 * (4 if rope == "f32" else 2)
        assert s.saving == pytest.approx(1 - s.bytes_per_token / s.mha_bytes_per_token)
        assert s.capacity_tokens == 64 == s.blocks_total * 16
        assert s.blocks_free == s.blocks_total and s.tokens_used == 0
        cache.reserve(0, 0, 20)
        s = cache.stats
        assert (s.tokens_used, s.blocks_free) == (20, s.blocks_total - 2)
        assert s.bytes_used == 2 * s.block_bytes


@pytest.mark.parametrize("latent,widths,group",
                         [("i8", (24,), 8), ("i8", (64, 96), 32), ("i4", (48, 40), 8)])
def test_quant_group_left_out_is_chosen_from_the_widths(latent, widths, group):
    # the largest of 32, 16, .. dividing every latent width; bytes as stored with it
    descs = [mla.CacheLayerDesc(latent_dim=w, rope_heads=0, rope_dim=0,
                                rope_freqs=np.zeros((0, 0), np.float32), rope_position_scale=1.0,
                                mha_kv_dim=32) for w in widths]
    with mla.Cache(descs, latent_dtype=latent, capacity_tokens=16) as cache:
        s = cache.stats
        assert s.quant_group == group
        bits = 8 if latent == "i8" else 4
        assert s.bytes_per_token == sum(w * bits // 8 + w // group * 4 for w in widths)


def test_snapshot_round_trips(tmp_path):
    cache, data = filled()
    with cache:
        whole = cache.save()
        one = cache.save(1)
        assert isinstance(whole, bytes) and len(one) < len(whole)
        cache.save_file(tmp_path / "c.snap")
        assert (tmp_path / "c.snap").read_bytes() == whole
        cache.clear()
        cache.load(whole)
        np.testing.assert_array_equal(cache.read(1, 1)[0], data[1, 1][0])
        cache.seq_rm(1)
        cache.load(bytearray(one), 1)  # any bytes-like object
        np.testing.assert_array_equal(cache.read(0, 1)[1], data[1, 0][1])
        cache.clear()
        cache.load_file(tmp_path / "c.snap")
        assert cache.seq_length(0) == 5


def test_bad_snapshot_leaves_the_cache_unchanged(tmp_path):
    cache, data = filled()
    with cache:
        snap = bytearray(cache.save())
        cache.seq_rm(0, 3, -1)
        before = cache.save()
        snap[len(snap) // 2] ^= 0x55
        for bad in (bytes(snap), bytes(snap[:len(snap) // 3]), b"", b"not a snapshot"):
            with pytest.raises(mla.MlaError) as e:
                cache.load(bad)
            assert e.value.status in (mla.Status.BAD_FORMAT, mla.Status.INVALID_ARGUMENT)
            assert cache.save() == before
        with pytest.raises(mla.MlaError) as e:
            cache.load_file(tmp_path / "missing.snap")
        assert e.value.status == mla.Status.IO
        # Another geometry is refused too.
        other = mla.CacheLayerDesc(8, 0, 0, np.zeros(0, np.float32), 1.0, 16)
        with mla.Cache([other], capacity_tokens=16) as c2:
            with pytest.raises(mla.MlaError) as e:
                c2.load(before)
            assert e.value.status in (mla.Status.BAD_FORMAT, mla.Status.INVALID_ARGUMENT)

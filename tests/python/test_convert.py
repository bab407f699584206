"""Conversion through the binding against the numpy reference (tests/reference/mha2mla_ref.py)."""
import numpy as np
import pytest

import mha2mla_ref as ref
import mla
from util import assert_close, geometry, layer_tensors, weights

G = ref.Geom(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, rope_theta=10000.0)


@pytest.fixture(scope="module")
def gqa():
    rng = np.random.default_rng(10)
    w = ref.random_layer(rng, G, bias=True)
    x = rng.standard_normal((200, G.d_model)).astype(np.float32)
    return w, x


@pytest.fixture(scope="module")
def calib(gqa):
    w, x = gqa
    c = mla.Calib(geometry(G, True), weights(w))
    c.feed(x[:70])
    c.feed(x[70:])
    yield c
    c.close()


def test_calibration_statistics_match_numpy(gqa, calib):
    w, x = gqa
    assert calib.token_count == len(x)
    q, k, s = calib.qk_stats()
    rq, rk, rs = ref.qk_stats(x, w["wq"], w["wk"], G, w["bq"], w["bk"])
    assert_close(q, rq, 1e-5, "q_norm")
    assert_close(k, rk, 1e-5, "k_norm")
    assert_close(s, rs, 1e-5, "score")
    x64 = x.astype(np.float64)
    assert_close(calib.covariance(), x64.T @ x64, 1e-12, "XᵀX")


@pytest.mark.parametrize("r", [2, 4, 8])
def test_2norm_ranks_match_numpy(gqa, calib, r):
    w, x = gqa
    _, _, score = ref.qk_stats(x, w["wq"], w["wk"], G, w["bq"], w["bk"])
    ordered = -np.sort(-score, axis=1)
    # The premise: no near-tie at the cut, so float32 and float64 must rank alike.
    assert np.all(ordered[:, r // 2 - 1] - ordered[:, r // 2] > 1e-4 * ordered[:, 0])
    want = ref.kept_dims(ref.freqs_2norm(score, r), G)
    layer = mla.convert(geometry(G, True), weights(w), calib, rope_strategy="2-norm",
                        rope_dim=r, d_kv=4)
    np.testing.assert_array_equal(layer.rope_dims(), want)
    np.testing.assert_array_equal(layer.tensor("rope_dims"), want)
    assert layer.info.rope_strategy == mla.RopeStrategy.NORM2


@pytest.mark.parametrize("strategy,r,start", [("high", 4, 0), ("low", 6, 0), ("uniform", 4, 0),
                                              ("uniform", 4, 3), ("high", 16, 0), ("low", 0, 0)])
def test_fixed_strategies_keep_the_documented_dims(gqa, strategy, r, start):
    w, _ = gqa
    freqs = {"high": lambda: ref.freqs_high(G, r), "low": lambda: ref.freqs_low(G, r),
             "uniform": lambda: ref.freqs_uniform(G, r, start)}[strategy]()
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy=strategy, rope_dim=r,
                        uniform_start=start, d_kv=4)
    np.testing.assert_array_equal(layer.rope_dims(), ref.kept_dims(freqs, G))


def test_explicit_frequencies(gqa):
    w, _ = gqa
    f = np.array([[6, 1], [3, 4]], np.int32)
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="explicit", rope_dim=4,
                        explicit_freqs=f, d_kv=4)
    np.testing.assert_array_equal(layer.rope_dims(), ref.kept_dims(np.sort(f, axis=1), G))


@pytest.mark.parametrize("method", ["joint", "split", "activation_joint"])
def test_converted_tensors_match_numpy_svd(gqa, calib, method):
    w, x = gqa
    d_kv = 6
    layer = mla.convert(geometry(G, True), weights(w), calib, rope_strategy="2-norm",
                        rope_dim=4, d_kv=d_kv, factorization=method)
    got = layer_tensors(layer)
    want = ref.convert(w, G, got["rope_dims"], d_kv, method, x_calib=x)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
    # Row selections and reorders are exact.
    for name in ("q_proj.weight", "q_proj.bias", "k_r_proj.weight", "k_r_proj.bias",
                 "kv_proj.up_k.bias", "kv_proj.up_v.bias", "o_proj.weight"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # Singular vectors are defined up to sign: compare the products, which are not.
    downs = {"joint": ("down_kv", "down_kv"), "activation_joint": ("down_kv", "down_kv"),
             "split": ("down_k", "down_v")}[method]
    for up, down in zip(("up_k", "up_v"), downs):
        a = got[f"kv_proj.{up}.weight"] @ got[f"kv_proj.{down}.weight"]
        b = want[f"kv_proj.{up}.weight"] @ want[f"kv_proj.{down}.weight"]
        tol = 1e-5 if method != "activation_joint" else 1e-4
        assert_close(a, b, tol, f"{up}·{down}")
        # Also where it matters, on the activations.
        assert_close(x @ a.T, x @ b.T, tol, f"x·({up}·{down})ᵀ")
    if method != "activation_joint":  # V_Rᵀ has orthonormal rows; all of Σ goes up
        for down in set(downs):
            d = got[f"kv_proj.{down}.weight"]
            assert_close(d @ d.T, np.eye(d.shape[0]), 1e-5, f"{down} rows orthonormal")
    info = layer.info
    R = d_kv * G.n_kv_heads
    assert info.kind == mla.LayerKind.MLA
    assert info.factorization == mla.Factorization[method.upper()]
    assert (info.rope_dim, info.d_kv, info.rope_width) == (4, d_kv, G.n_kv_heads * 4)
    assert info.latent_dim == (2 * R if method == "split" else R)
    assert info.n_tensors == len(got)
    g = layer.geometry
    assert (g.d_model, g.n_heads, g.n_kv_heads, g.head_dim, g.rope_theta, g.qkv_bias) == \
        (G.d_model, G.n_heads, G.n_kv_heads, G.head_dim, G.rope_theta, True)


def test_layer_geometry_is_the_given_one(gqa):
    """Layer.geometry (mla_layer_get_geometry) gives back every field of the geometry the layer
    was built from, with no field at its default, for converted, MHA and rebuilt layers."""
    w, _ = gqa
    given = mla.Geometry(d_model=G.d_model, n_heads=G.n_heads, n_kv_heads=G.n_kv_heads,
                         head_dim=G.head_dim, rope_theta=123456.0,
                         rope_scaling=mla.RopeScaling.LINEAR, rope_scaling_factor=2.5,
                         qkv_bias=True)
    a = mla.convert(given, weights(w), rope_strategy="high", rope_dim=4, d_kv=6)
    b = mla.Layer.from_mha(given, weights(w))
    c = mla.Layer.from_tensors(given, 4, 6, a.tensors())
    for layer in (a, b, c):
        assert layer.geometry == given
    assert a.cache_desc().rope_position_scale == pytest.approx(1 / 2.5, rel=1e-15)
    a.close()
    with pytest.raises(ValueError, match="closed"):
        a.geometry


def test_report_is_eckart_young(gqa):
    w, _ = gqa
    d_kv = 5
    layer = mla.convert(geometry(G, True), weights(w), rope_strategy="low", rope_dim=4, d_kv=d_kv)
    dims = layer.rope_dims()
    s = ref.singular_values(w, G, dims)
    R = d_kv * G.n_kv_heads
    rep = layer.report
    assert rep.kept_energy == pytest.approx(np.sum(s[:R] ** 2) / np.sum(s ** 2), rel=1e-5)
    t = ref.convert(w, G, dims, d_kv)
    nope = ref.nope_dims(dims, G)
    rows = np.concatenate([j * G.head_dim + nope[j] for j in range(G.n_kv_heads)])
    wk_nope = w["wk"][rows].astype(np.float64)
    err_k = np.linalg.norm(wk_nope - t["kv_proj.up_k.weight"] @ t["kv_proj.down_kv.weight"])
    err_v = np.linalg.norm(w["wv"] - t["kv_proj.up_v.weight"] @ t["kv_proj.down_kv.weight"])
    assert rep.k_nope_rel_error == pytest.approx(err_k / np.linalg.norm(wk_nope), rel=1e-4)
    assert rep.v_rel_error == pytest.approx(err_v / np.linalg.norm(w["wv"]), rel=1e-4)
    assert np.isnan(rep.k_nope_act_rel_error)  # no calibration given
    assert rep.seconds >= 0


def test_half_precision_weights(gqa):
    w, _ = gqa
    w16 = {k: v.astype(np.float16) for k, v in w.items()}
    layer = mla.convert(geometry(G, True), weights(w16), rope_strategy="high", rope_dim=4,
                        d_kv=6)
    want = ref.convert({k: v.astype(np.float64) for k, v in w16.items()}, G,
                       ref.kept_dims(ref.freqs_high(G, 4), G), 6)
    got = layer_tensors(layer)
    np.testing.assert_array_equal(got["q_proj.weight"], want["q_proj.weight"])
    assert_close(got["kv_proj.up_v.weight"] @ got["kv_proj.down_kv.weight"],
                 want["kv_proj.up_v.weight"] @ want["kv_proj.down_kv.weight"], 1e-5, "up_v·down")


def test_from_tensors_round_trip(gqa):
    w, _ = gqa
    a = mla.convert(geometry(G, True), weights(w), rope_strategy="uniform", rope_dim=4, d_kv=6,
                    factorization="split")
    tensors = a.tensors()
    b = mla.Layer.from_tensors(geometry(G, True), 4, 6, tensors)
    assert b.tensor_names == a.tensor_names or set(b.tensor_names) == set(a.tensor_names)
    for name, t in tensors.items():
        np.testing.assert_array_equal(b.tensor(name), t, err_msg=name)
    assert b.info.factorization == mla.Factorization.SPLIT
    assert b.info.latent_dim == a.info.latent_dim
    np.testing.assert_array_equal(b.rope_dims(), a.rope_dims())

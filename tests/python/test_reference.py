"""The numpy oracle checked against closed forms, before it judges the library."""
import numpy as np

import mha2mla_ref as ref

G = ref.Geom(d_model=48, n_heads=4, n_kv_heads=2, head_dim=12, rope_theta=500.0)


def test_rope_preserves_pair_norms_and_relative_positions():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 1, G.head_dim))
    k = rng.standard_normal((1, 1, G.head_dim))
    # q·k after rotating both depends on the position difference only.
    dots = [float(np.sum(ref.rope_full(q, np.array([p + 5]), G)
                         * ref.rope_full(k, np.array([p]), G))) for p in (0, 3, 17)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-12)
    y = ref.rope_full(q, np.array([7]), G)
    h = G.half
    np.testing.assert_allclose(np.hypot(y[..., :h], y[..., h:]), np.hypot(q[..., :h], q[..., h:]))


def test_selections_follow_their_definitions():
    assert ref.freqs_high(G, 4).tolist() == [[0, 1], [0, 1]]
    assert ref.freqs_low(G, 4).tolist() == [[4, 5], [4, 5]]
    assert ref.freqs_uniform(G, 4, 1).tolist() == [[1, 4], [1, 4]]
    assert ref.kept_dims(np.array([[0, 3]]), G).tolist() == [[0, 3, 6, 9]]


def test_full_rank_full_rope_conversion_is_mha():
    rng = np.random.default_rng(2)
    w = ref.random_layer(rng, G, bias=True)
    dims = ref.kept_dims(ref.freqs_high(G, G.head_dim), G)
    t = ref.convert(w, G, dims, d_kv=G.head_dim)
    x = rng.standard_normal((9, G.d_model))
    pos = np.arange(9)
    np.testing.assert_allclose(ref.mla_forward(t, G, x, pos), ref.mha_forward(w, G, x, pos),
                               atol=1e-10)


def test_truncation_error_is_eckart_young():
    rng = np.random.default_rng(3)
    w = ref.random_layer(rng, G)
    dims = ref.kept_dims(ref.freqs_high(G, 4), G)
    t = ref.convert(w, G, dims, d_kv=5)
    s = ref.singular_values(w, G, dims)
    up = np.concatenate([t["kv_proj.up_k.weight"], t["kv_proj.up_v.weight"]])
    nope = ref.nope_dims(dims, G)
    rows = np.concatenate([j * G.head_dim + nope[j] for j in range(G.n_kv_heads)])
    m = np.concatenate([w["wk"][rows], w["wv"]]).astype(np.float64)
    err = np.sum((m - up @ t["kv_proj.down_kv.weight"]) ** 2)
    np.testing.assert_allclose(err, np.sum(s[10:] ** 2), rtol=1e-9)


def test_activation_joint_with_identity_covariance_is_joint():
    rng = np.random.default_rng(4)
    w = ref.random_layer(rng, G)
    dims = ref.kept_dims(ref.freqs_low(G, 4), G)
    x = np.eye(G.d_model) * 3.0  # XᵀX = 9·I: the damping adds a multiple of I too
    a = ref.convert(w, G, dims, 5, "activation_joint", x_calib=x)
    j = ref.convert(w, G, dims, 5, "joint")
    for name in ("kv_proj.up_k.weight", "kv_proj.up_v.weight"):
        np.testing.assert_allclose(a[name] @ a["kv_proj.down_kv.weight"],
                                   j[name] @ j["kv_proj.down_kv.weight"], atol=1e-10)


def test_two_sequences_do_not_see_each_other():
    rng = np.random.default_rng(5)
    w = ref.random_layer(rng, G)
    x = rng.standard_normal((6, G.d_model))
    pos = np.array([0, 0, 1, 1, 2, 2])
    seq = np.array([0, 1, 0, 1, 0, 1])
    both = ref.mha_forward(w, G, x, pos, seq)
    np.testing.assert_allclose(both[0::2], ref.mha_forward(w, G, x[0::2], pos[0::2]), atol=1e-12)
    np.testing.assert_allclose(both[1::2], ref.mha_forward(w, G, x[1::2], pos[1::2]), atol=1e-12)

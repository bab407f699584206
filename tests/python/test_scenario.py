"""The cross-language scenario (bindings/scenario/README.md): the binding must print what the C
program prints on the same library, and both must agree with the numpy reference."""
import subprocess

import numpy as np
import pytest

import mha2mla_ref as ref
import mla
from util import ROOT, SplitMix64, assert_close, compile_c, format_scenario, parse_scenario


def run_python_scenario() -> str:
    """The scenario through the binding, step for step as scenario.c does it."""
    rng = SplitMix64()
    w = {"wq": rng.fill((64, 64), 0.125), "wk": rng.fill((32, 64), 0.125),
         "wv": rng.fill((32, 64), 0.125), "wo": rng.fill((64, 64), 0.125),
         "bq": rng.fill((64,), 0.0625), "bk": rng.fill((32,), 0.0625),
         "bv": rng.fill((32,), 0.0625)}
    x_calib = rng.fill((48, 64), 1.0)
    x_prefill = rng.fill((10, 64), 1.0)
    x_decode = rng.fill((3, 64), 1.0)

    geom = mla.Geometry(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, rope_theta=10000.0,
                        qkv_bias=True)
    weights = mla.LayerWeights(**w)
    with mla.Calib(geom, weights) as calib:
        calib.feed(x_calib)
        layer = mla.convert(geom, weights, calib, rope_strategy="2-norm", rope_dim=4, d_kv=8,
                            factorization="joint")
    with layer, mla.Cache([layer], capacity_tokens=256, block_tokens=16, n_seq_max=4) as cache, \
            mla.Attn(n_threads=1, path="auto") as attn:
        rows = [attn.forward(layer, cache, 0, x_prefill, seq=0, pos=0)]
        for t in range(3):
            rows.append(attn.forward(layer, cache, 0, x_decode[t:t + 1], seq=0, pos=10 + t))
        stats = cache.stats
        return format_scenario(layer.rope_dims().ravel().tolist(), stats.bytes_per_token,
                               stats.mha_bytes_per_token, cache.seq_length(0),
                               np.concatenate(rows))


@pytest.fixture(scope="module")
def c_output(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenario")
    exe = compile_c(ROOT / "bindings" / "scenario" / "scenario.c", d / "scenario")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_python_matches_c(c_output):
    py = parse_scenario(run_python_scenario())
    c = parse_scenario(c_output)
    assert py["rope_dims"] == c["rope_dims"]
    for key in ("bytes_per_token", "mha_bytes_per_token", "seq_length"):
        assert py[key] == c[key], key
    assert c["seq_length"] == 13 and c["out"].shape == (13, 64)
    # Same library, same inputs, same calls, one thread: the same bits.
    np.testing.assert_array_equal(py["out"], c["out"])


def test_c_scenario_matches_numpy(c_output):
    c = parse_scenario(c_output)
    rng = SplitMix64()
    w = {"wq": rng.fill((64, 64), 0.125), "wk": rng.fill((32, 64), 0.125),
         "wv": rng.fill((32, 64), 0.125), "wo": rng.fill((64, 64), 0.125),
         "bq": rng.fill((64,), 0.0625), "bk": rng.fill((32,), 0.0625),
         "bv": rng.fill((32,), 0.0625)}
    x_calib = rng.fill((48, 64), 1.0)
    x = np.concatenate([rng.fill((10, 64), 1.0), rng.fill((3, 64), 1.0)])
    g = ref.Geom(64, 4, 2, 16, 10000.0)
    _, _, score = ref.qk_stats(x_calib, w["wq"], w["wk"], g, w["bq"], w["bk"])
    dims = ref.kept_dims(ref.freqs_2norm(score, 4), g)
    assert c["rope_dims"] == dims.ravel().tolist()
    t = ref.convert(w, g, dims, 8)
    # The default cache stores f16: compare at f16 accuracy.
    assert_close(c["out"], ref.mla_forward(t, g, x, np.arange(13)), 5e-3, "scenario vs numpy")
    # Per token: latent R = 16 and RoPE keys 2·4, f16 each; MHA: K and V, 2·2·16 in f16.
    assert c["bytes_per_token"] == (16 + 8) * 2
    assert c["mha_bytes_per_token"] == 2 * 32 * 2

"""Helpers shared by the Python tests: random layers in both worlds, tolerances, C builds."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Dict, List

import numpy as np

import mha2mla_ref as ref
import mla

ROOT = pathlib.Path(__file__).resolve().parents[2]


def geometry(g: ref.Geom, bias: bool) -> mla.Geometry:
    return mla.Geometry(d_model=g.d_model, n_heads=g.n_heads, n_kv_heads=g.n_kv_heads,
                        head_dim=g.head_dim, rope_theta=g.rope_theta, qkv_bias=bias)


def weights(w: Dict[str, np.ndarray]) -> mla.LayerWeights:
    return mla.LayerWeights(**w)


def layer_tensors(layer: mla.Layer) -> Dict[str, np.ndarray]:
    """The library's converted tensors, copied out as float64 (rope_dims stays int)."""
    return {k: (v.copy() if k == "rope_dims" else v.astype(np.float64))
            for k, v in layer.tensors().items()}


def assert_close(got: np.ndarray, want: np.ndarray, tol: float, what: str) -> None:
    """max |got − want| ≤ tol · max(1, max |want|), with the worst entry in the message."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    bound = tol * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    assert err.size == 0 or err.max() <= bound, (
        f"{what}: max error {err.max():.3g} at {worst} > {bound:.3g} "
        f"(got {got[worst]:.6g}, want {want[worst]:.6g})")


def include_flags() -> List[str]:
    """-I flags for <mla/mla.h> and the generated <mla/version.h> of the library under test:
    $MLA_INCLUDE, else this tree's include/ plus the build tree's (next to lib/), else
    pkg-config."""
    if os.environ.get("MLA_INCLUDE"):
        return [f"-I{d}" for d in os.environ["MLA_INCLUDE"].split(os.pathsep)]
    build = pathlib.Path(os.environ["MLA_LIBRARY"]).resolve().parent.parent
    if (build / "include" / "mla" / "version.h").exists():
        return [f"-I{ROOT / 'include'}", f"-I{build / 'include'}"]
    out = subprocess.run(["pkg-config", "--cflags", "mla"], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def compile_c(src: pathlib.Path, exe: pathlib.Path, link: bool = True) -> pathlib.Path:
    """Compile a C file against the library under test (linked by path, rpath to its dir)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (set CC)"
    lib = pathlib.Path(os.environ["MLA_LIBRARY"]).resolve()
    cmd = [cc, "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Werror", *include_flags(),
           str(src), "-o", str(exe)]
    if link:
        cmd += [str(lib), f"-Wl,-rpath,{lib.parent}"]
    # A sanitizer runtime preloaded for the tests is not for the compiler.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return exe


def parse_scenario(text: str) -> Dict[str, object]:
    """The scenario's printed output (bindings/scenario/README.md) as a dict."""
    res: Dict[str, object] = {}
    rows = []
    for line in text.splitlines():
        key, *vals = line.split()
        if key == "out":
            rows.append([np.float32(v) for v in vals[1:]])
        elif key == "rope_dims":
            res[key] = [int(v) for v in vals]
        else:
            res[key] = int(vals[0])
    res["out"] = np.array(rows, np.float32)
    return res


def format_scenario(rope_dims: List[int], bytes_per_token: int, mha_bytes: int, seq_len: int,
                    rows: np.ndarray) -> str:
    lines = ["rope_dims " + " ".join(str(int(d)) for d in rope_dims),
             f"bytes_per_token {bytes_per_token}", f"mha_bytes_per_token {mha_bytes}",
             f"seq_length {seq_len}"]
    for t, row in enumerate(rows):
        lines.append(f"out {t} " + " ".join(f"{float(v):.9g}" for v in row))
    return "\n".join(lines) + "\n"


class SplitMix64:
    """The scenario's input generator (bindings/scenario/README.md)."""

    def __init__(self, seed: int = 0x6D6C61) -> None:
        self.state = seed

    def next(self) -> int:
        m = (1 << 64) - 1
        self.state = (self.state + 0x9E3779B97F4A7C15) & m
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    def fill(self, shape, scale: float) -> np.ndarray:
        n = int(np.prod(shape))
        v = np.array([self.next() >> 40 for _ in range(n)], np.float64)
        return ((v * 2.0 ** -23 - 1.0) * scale).astype(np.float32).reshape(shape)

"""An independent numpy implementation of MHA2MLA (../shared/mha2mla.md), the oracle of the Python
tests. Written from the method's description only, in float64, with no libmla code or data.

Layouts follow the method page: weights are nn.Linear (out × in); x is (tokens, d_model); RoPE
pairs dimensions (i, i + head_dim/2) of a head ("rotate_half"). A converted layer is a dict keyed
by the reference checkpoint's tensor names (what mla_layer_tensor exposes), so the same forward
runs on numpy's conversion and on the library's tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np


@dataclass(frozen=True)
class Geom:
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    position_scale: float = 1.0  # 1 / rope_scaling_factor for linear RoPE scaling

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def half(self) -> int:
        return self.head_dim // 2


# ---- RoPE ---------------------------------------------------------------------------------------
def inv_freq(g: Geom) -> np.ndarray:
    """θ_i = base^(−2i/d_h), i in [0, d_h/2)."""
    i = np.arange(g.half, dtype=np.float64)
    return g.rope_theta ** (-2.0 * i / g.head_dim)


def rotate_pairs(x: np.ndarray, positions: np.ndarray, theta: np.ndarray,
                 position_scale: float = 1.0) -> np.ndarray:
    """Rotate pairs (j, j + m) of the last axis (2m wide) by angle position·θ_j.

    x: (T, heads, 2m); theta: (heads, m) or (m,) angular frequencies; positions: (T,).
    y_j = x_j c − x_{j+m} s, y_{j+m} = x_{j+m} c + x_j s (Hugging Face rotate_half).
    """
    m = x.shape[-1] // 2
    ang = (positions.astype(np.float64) * position_scale)[:, None, None] * np.broadcast_to(
        theta, (x.shape[1], m))[None]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :m], x[..., m:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def rope_full(x: np.ndarray, positions: np.ndarray, g: Geom) -> np.ndarray:
    """Full RoPE on (T, heads, head_dim)."""
    return rotate_pairs(x, positions, inv_freq(g), g.position_scale)


# ---- partial-RoPE selection ---------------------------------------------------------------------
def freqs_high(g: Geom, r: int) -> np.ndarray:
    return np.tile(np.arange(r // 2), (g.n_kv_heads, 1))


def freqs_low(g: Geom, r: int) -> np.ndarray:
    return np.tile(np.arange(g.half - r // 2, g.half), (g.n_kv_heads, 1))


def freqs_uniform(g: Geom, r: int, start: int) -> np.ndarray:
    step = g.head_dim // r
    f = np.arange(start, g.half, step)[: r // 2]
    return np.tile(f, (g.n_kv_heads, 1))


def pair_norms(v: np.ndarray, heads: int, g: Geom) -> np.ndarray:
    """Mean over tokens of ‖(v_i, v_{i+d_h/2})‖₂ per head: v (T, heads·d_h) → (heads, d_h/2)."""
    v = v.reshape(v.shape[0], heads, g.head_dim)
    n = np.sqrt(v[..., : g.half] ** 2 + v[..., g.half:] ** 2)
    return n.mean(axis=0)


def qk_stats(x: np.ndarray, wq: np.ndarray, wk: np.ndarray, g: Geom,
             bq: Optional[np.ndarray] = None, bk: Optional[np.ndarray] = None):
    """(q_norm (n_h, d_h/2), k_norm (n_kv, d_h/2), score (n_kv, d_h/2)) of the 2-norm strategy:
    pair norms of q and k straight out of their projections, score S_{j,i} = Σ_{h in group j}
    a_{h,i}·b_{j,i}."""
    x = x.astype(np.float64)
    q = x @ wq.astype(np.float64).T + (0 if bq is None else bq.astype(np.float64))
    k = x @ wk.astype(np.float64).T + (0 if bk is None else bk.astype(np.float64))
    a = pair_norms(q, g.n_heads, g)
    b = pair_norms(k, g.n_kv_heads, g)
    score = a.reshape(g.n_kv_heads, g.group, g.half).sum(axis=1) * b
    return a, b, score


def freqs_2norm(score: np.ndarray, r: int) -> np.ndarray:
    """Per KV head, the r/2 frequencies of highest score, ascending."""
    top = np.argsort(-score, axis=1, kind="stable")[:, : r // 2]
    return np.sort(top, axis=1)


def kept_dims(freqs: np.ndarray, g: Geom) -> np.ndarray:
    """(n_kv, r) kept dimensions: {i, i + d_h/2 : i in F}, ascending."""
    return np.sort(np.concatenate([freqs, freqs + g.half], axis=1), axis=1)


def nope_dims(dims: np.ndarray, g: Geom) -> np.ndarray:
    return np.array([[d for d in range(g.head_dim) if d not in set(row)] for row in dims],
                    dtype=np.int64).reshape(g.n_kv_heads, g.head_dim - dims.shape[1])


# ---- conversion ---------------------------------------------------------------------------------
def convert(w: Dict[str, np.ndarray], g: Geom, dims: np.ndarray, d_kv: int,
            method: str = "joint", x_calib: Optional[np.ndarray] = None,
            damping: float = 1e-3) -> Dict[str, np.ndarray]:
    """The converted layer, as the reference checkpoint's tensors (float64).

    w: wq, wk, wv, wo and optional bq, bk, bv. dims: (n_kv, r) kept dimensions per KV head.
    method: "joint", "split" or "activation_joint" (needs x_calib, tokens × d_model).
    """
    f = {k: (None if v is None else np.asarray(v, np.float64)) for k, v in w.items()}
    n_h, n_kv, d_h, gs = g.n_heads, g.n_kv_heads, g.head_dim, g.group
    r = dims.shape[1]
    nope = nope_dims(dims, g)
    q_rope_rows = np.concatenate([h * d_h + dims[h // gs] for h in range(n_h)]).astype(int)
    q_nope_rows = np.concatenate([h * d_h + nope[h // gs] for h in range(n_h)]).astype(int)
    q_rows = np.concatenate([q_rope_rows, q_nope_rows])
    k_rope_rows = np.concatenate([j * d_h + dims[j] for j in range(n_kv)]).astype(int)
    k_nope_rows = np.concatenate([j * d_h + nope[j] for j in range(n_kv)]).astype(int)
    out: Dict[str, np.ndarray] = {
        "q_proj.weight": f["wq"][q_rows],
        "k_r_proj.weight": f["wk"][k_rope_rows],
        "o_proj.weight": f["wo"],
        "rope_dims": dims.astype(np.int32),
    }
    if f.get("bq") is not None:
        out["q_proj.bias"] = f["bq"][q_rows]
    if f.get("bk") is not None:
        out["k_r_proj.bias"] = f["bk"][k_rope_rows]
        out["kv_proj.up_k.bias"] = f["bk"][k_nope_rows]
    if f.get("bv") is not None:
        out["kv_proj.up_v.bias"] = f["bv"]
    wk_nope = f["wk"][k_nope_rows]
    wv = f["wv"]
    R = d_kv * n_kv
    if method == "split":
        for name, m in (("k", wk_nope), ("v", wv)):
            u, s, vt = np.linalg.svd(m, full_matrices=False)
            out[f"kv_proj.down_{name}.weight"] = vt[:R]
            out[f"kv_proj.up_{name}.weight"] = u[:, :R] * s[:R]
        return out
    m = np.concatenate([wk_nope, wv], axis=0)
    if method == "joint":
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        down = vt[:R]
    elif method == "activation_joint":
        xc = np.asarray(x_calib, np.float64)
        c = xc.T @ xc
        c = c + damping * np.mean(np.diag(c)) * np.eye(c.shape[0])
        chol = np.linalg.cholesky(c)
        u, s, vt = np.linalg.svd(m @ chol, full_matrices=False)
        # V_Rᵀ L⁻¹ = (L⁻ᵀ V_R)ᵀ: a solve, not an inverse.
        down = np.linalg.solve(chol.T, vt[:R].T).T
    else:
        raise ValueError(method)
    up = u[:, :R] * s[:R]
    out["kv_proj.down_kv.weight"] = down
    out["kv_proj.up_k.weight"] = up[: wk_nope.shape[0]]
    out["kv_proj.up_v.weight"] = up[wk_nope.shape[0]:]
    return out


def singular_values(w: Dict[str, np.ndarray], g: Geom, dims: np.ndarray) -> np.ndarray:
    """σ of [W_k_nope; W_v] (the joint matrix), descending."""
    nope = nope_dims(dims, g)
    rows = np.concatenate([j * g.head_dim + nope[j] for j in range(g.n_kv_heads)]).astype(int)
    m = np.concatenate([np.asarray(w["wk"], np.float64)[rows], np.asarray(w["wv"], np.float64)])
    return np.linalg.svd(m, compute_uv=False)


# ---- forwards -----------------------------------------------------------------------------------
def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, g: Geom,
            seq: Optional[np.ndarray] = None) -> np.ndarray:
    """Causal softmax attention. q: (T, n_h, e), k: (T, n_kv, e), v: (T, n_kv, d_h) →
    (T, n_h·d_h). Token t sees tokens s of its sequence with positions[s] ≤ positions[t]."""
    T = q.shape[0]
    kh = np.repeat(k, g.group, axis=1)  # query head h uses KV head h / g
    vh = np.repeat(v, g.group, axis=1)
    scores = np.einsum("thd,shd->hts", q, kh) / np.sqrt(g.head_dim)
    seq = np.zeros(T, np.int64) if seq is None else seq
    allowed = (positions[None, :] <= positions[:, None]) & (seq[None, :] == seq[:, None])
    scores = np.where(allowed[None], scores, -np.inf)
    scores -= scores.max(axis=2, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=2, keepdims=True)
    o = np.einsum("hts,shd->thd", p, vh)
    return o.reshape(T, g.n_heads * g.head_dim)


def mha_forward(w: Dict[str, np.ndarray], g: Geom, x: np.ndarray, positions: np.ndarray,
                seq: Optional[np.ndarray] = None) -> np.ndarray:
    """The original MHA/GQA layer: (T, d_model) → (T, d_model), float64."""
    f = {k: (None if v is None else np.asarray(v, np.float64)) for k, v in w.items()}
    x = np.asarray(x, np.float64)
    T = x.shape[0]
    q = x @ f["wq"].T + (0 if f.get("bq") is None else f["bq"])
    k = x @ f["wk"].T + (0 if f.get("bk") is None else f["bk"])
    v = x @ f["wv"].T + (0 if f.get("bv") is None else f["bv"])
    q = rope_full(q.reshape(T, g.n_heads, g.head_dim), positions, g)
    k = rope_full(k.reshape(T, g.n_kv_heads, g.head_dim), positions, g)
    v = v.reshape(T, g.n_kv_heads, g.head_dim)
    return _attend(q, k, v, positions, g, seq) @ f["wo"].T


def mla_latents(t: Dict[str, np.ndarray], g: Geom, x: np.ndarray, positions: np.ndarray):
    """What the cache stores per token: (latent (T, R or 2R), rotated k_rope (T, n_kv·r))."""
    x = np.asarray(x, np.float64)
    T = x.shape[0]
    dims = np.asarray(t["rope_dims"]).astype(int)
    r = dims.shape[1]
    if "kv_proj.down_kv.weight" in t:
        c = x @ np.asarray(t["kv_proj.down_kv.weight"], np.float64).T
    else:
        c = np.concatenate([x @ np.asarray(t["kv_proj.down_k.weight"], np.float64).T,
                            x @ np.asarray(t["kv_proj.down_v.weight"], np.float64).T], axis=1)
    k_rope = x @ np.asarray(t["k_r_proj.weight"], np.float64).T
    if "k_r_proj.bias" in t:
        k_rope = k_rope + np.asarray(t["k_r_proj.bias"], np.float64)
    theta = inv_freq(g)[dims[:, : r // 2]] if r else np.zeros((g.n_kv_heads, 0))
    k_rope = rotate_pairs(k_rope.reshape(T, g.n_kv_heads, r), positions, theta, g.position_scale)
    return c, k_rope.reshape(T, g.n_kv_heads * r)


def mla_forward(t: Dict[str, np.ndarray], g: Geom, x: np.ndarray, positions: np.ndarray,
                seq: Optional[np.ndarray] = None) -> np.ndarray:
    """The converted layer's forward (materialized: k_nope and v up-projected from the latents),
    partial RoPE with each kept pair's original frequency. (T, d_model) → (T, d_model), float64."""
    t64 = {k: np.asarray(v, np.float64) for k, v in t.items() if k != "rope_dims"}
    dims = np.asarray(t["rope_dims"]).astype(int)
    n_h, n_kv, d_h, gs = g.n_heads, g.n_kv_heads, g.head_dim, g.group
    r = dims.shape[1]
    n = d_h - r
    x = np.asarray(x, np.float64)
    T = x.shape[0]
    q = x @ t64["q_proj.weight"].T + t64.get("q_proj.bias", 0)
    q_rope = q[:, : n_h * r].reshape(T, n_h, r)
    q_nope = q[:, n_h * r:].reshape(T, n_h, n)
    theta_kv = inv_freq(g)[dims[:, : r // 2]] if r else np.zeros((n_kv, 0))
    q_rope = rotate_pairs(q_rope, positions, np.repeat(theta_kv, gs, axis=0), g.position_scale)
    c, k_rope = mla_latents(t, g, x, positions)
    k_rope = k_rope.reshape(T, n_kv, r)
    R = c.shape[1] if "kv_proj.down_kv.weight" in t else c.shape[1] // 2
    c_k, c_v = (c, c) if "kv_proj.down_kv.weight" in t else (c[:, :R], c[:, R:])
    k_nope = (c_k @ t64["kv_proj.up_k.weight"].T + t64.get("kv_proj.up_k.bias", 0))
    v = c_v @ t64["kv_proj.up_v.weight"].T + t64.get("kv_proj.up_v.bias", 0)
    k = np.concatenate([k_rope, k_nope.reshape(T, n_kv, n)], axis=2)
    qq = np.concatenate([q_rope, q_nope], axis=2)
    o = _attend(qq, k, v.reshape(T, n_kv, d_h), positions, g, seq)
    return o @ t64["o_proj.weight"].T


def _decaying(rng: np.random.Generator, rows: int, d: int, scale: float) -> np.ndarray:
    """A random matrix with a decaying spectrum, as trained K/V projections have: the truncated
    SVD is then well separated (σ_R clearly above σ_{R+1}), so float32 and float64 agree."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    decay = np.exp(-np.arange(d) / (d / 6.0))
    return (rng.standard_normal((rows, d)) * decay) @ q.T * scale


def random_layer(rng: np.random.Generator, g: Geom, bias: bool = False,
                 dtype=np.float32) -> Dict[str, np.ndarray]:
    """Random weights scaled so that attention scores stay O(1) (softmax neither flat nor
    one-hot), K and V with decaying spectra."""
    s = 1.0 / np.sqrt(g.d_model)
    hq, hk = g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim
    w = {
        "wq": rng.standard_normal((hq, g.d_model)) * s * 2,
        "wk": _decaying(rng, hk, g.d_model, 4 * s),
        "wv": _decaying(rng, hk, g.d_model, 2 * s),
        "wo": rng.standard_normal((g.d_model, hq)) * (1.0 / np.sqrt(hq)),
    }
    if bias:
        w["bq"] = rng.standard_normal(hq) * 0.1
        w["bk"] = rng.standard_normal(hk) * 0.1
        w["bv"] = rng.standard_normal(hk) * 0.1
    return {k: np.ascontiguousarray(v.astype(dtype)) for k, v in w.items()}

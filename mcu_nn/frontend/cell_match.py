"""Which recurrent cell a step is: its affine forms (frontend.step_forms) matched against the LSTM
(also peephole and coupled-gate), GRU (also reset-before and MGU) and RNN equations, giving the cell
kind and PyTorch-layout weights for frontend.loops to fold onto."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .step_forms import Aff, Eval, NotCell, diag, leaf, single

@dataclass
class Match:
    """A step recognised as a cell: PyTorch-layout weights and which state input is h (and c)."""
    kind: str
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    h: str                                   # leaf name of h in the step ("s0" / "s1")
    c: str = ""
    outs: dict = field(default_factory=dict)   # "h"/"c" -> index into the step's state outputs
    extra: dict = field(default_factory=dict)  # the cell's own parameters (cells.Cell.extra_params)


def _pre(e: Eval, key: Any, op: str, x_size: int, h: str, h_size: int, c: str = "",
         peep: Optional[Aff] = None) -> tuple:
    """(W_x, W_h, b) of the pre-activation of atom ``key`` = op(W_x x + W_h h + b), and with ``peep``
    (a form of c) the diagonal p of a peephole term p * c in it (zeros when there is none)."""
    kind, args = e.atoms.get(key, (None, ()))
    if kind != op:
        raise NotCell(f"a gate is {kind or 'not an activation'} where {op} was expected")
    pre = args[0]
    p = np.zeros(pre.size)
    if peep is not None:
        pre, p = _peephole(e, pre, peep)
    if c and c in pre.terms:
        raise NotCell("its gates read c other than through a diagonal peephole p * c")
    extra = set(pre.terms) - {"x", h}
    if extra:
        raise NotCell("a gate's pre-activation reads a nonlinear value (" + _describe(e, next(iter(extra))) + ")")
    n = pre.size
    return (pre.terms.get("x", np.zeros((n, x_size))), pre.terms.get(h, np.zeros((n, h_size))), pre.bias, p)


def _peephole(e: Eval, pre: Aff, c: Aff) -> tuple[Aff, np.ndarray]:
    """pre = rest + p * c with p a vector (Gers & Schmidhuber's peephole): (rest, p); (pre, 0) when
    pre has no term of c, or the terms are not a diagonal multiple of c."""
    shared = [k for k in c.terms if k in pre.terms]
    if not shared:
        return pre, np.zeros(pre.size)
    dp, dc = diag(pre.terms[shared[0]]), diag(c.terms[shared[0]])
    if dp is None or dc is None or not dc.all():
        return pre, np.zeros(pre.size)
    p = dp / dc
    rest = e.add(pre, e.scale(c, p), -1.0)
    return (rest, p) if not set(rest.terms) & set(c.terms) else (pre, np.zeros(pre.size))


def _describe(e: Eval, key: Any) -> str:
    if isinstance(key, str):
        return {"x": "the input"}.get(key, "the state")
    op, args = e.atoms[key]
    return f"{op} of " + " and ".join(", ".join(_describe(e, k) for k in a.terms) or "a constant" for a in args)


def _eye_coef(a: Aff, key: Any) -> Optional[float]:
    m = a.terms.get(key)
    if m is None or m.shape[0] != m.shape[1]:
        return None
    for s in (1.0, -1.0):
        if np.array_equal(m, s * np.eye(m.shape[0])):
            return s
    return None


def _products(e: Eval, a: Aff) -> dict:
    """{frozenset of the two factor keys: coefficient} of a's product atoms (coefficients +-1)."""
    out = {}
    for k in a.terms:
        if isinstance(k, tuple) and k[0] == "mul" and e.atoms[k][0] == "mul":
            factors = [single(f) for f in e.atoms[k][1]]
            if None not in factors:
                out[frozenset(factors)] = (k, _eye_coef(a, k))
    return out


def _match_rnn(e: Eval, h_out: Aff, xs: int, hs: int) -> Match:
    key = single(h_out)
    op = e.atoms.get(key, ("",))[0] if key is not None else ""
    if op not in ("tanh", "relu"):
        raise NotCell("its new state is not tanh or relu of an affine map")
    wx, wh, b, _ = _pre(e, key, op, xs, "s0", hs)
    return Match("rnn_" + op, wx, wh, b, np.zeros_like(b), "s0", outs={"h": 0})


def _match_gru(e: Eval, h_out: Aff, xs: int, hs: int) -> Match:
    """h' = (1 - z) * n + z * h (PyTorch) or z * n + (1 - z) * h (then z is negated);
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""
    prods = _products(e, h_out)
    tanhs = {k for f in prods for k in f if e.atoms.get(k, ("",))[0] == "tanh"}
    if len(tanhs) != 1 or len(h_out.terms) != 3 or h_out.bias.any():
        raise NotCell("its new state is not a gated mix of h and a tanh candidate")
    n_key = next(iter(tanhs))
    zh = [(f, v) for f, v in prods.items() if "s0" in f]
    zn = [(f, v) for f, v in prods.items() if n_key in f]
    if len(zh) != 1 or len(zn) != 1:
        raise NotCell("its new state is not a gated mix of h and a tanh candidate")
    (fh, (_, ch)), (fn, (_, cn)) = zh[0], zn[0]
    z_key = next(iter(fh - {"s0"}))
    if z_key != next(iter(fn - {n_key}), None):
        raise NotCell("the mix of h and the candidate uses two different gates")
    flipped = (_eye_coef(h_out, n_key), ch, cn) == (None, -1.0, 1.0) and _eye_coef(h_out, "s0") == 1.0
    if not flipped and (_eye_coef(h_out, n_key), ch, cn) != (1.0, 1.0, -1.0):
        raise NotCell("its new state is not (1 - z) * n + z * h")
    wz_x, wz_h, bz, _ = _pre(e, z_key, "sigmoid", xs, "s0", hs)
    if flipped:                                # 1 - sigmoid(a) = sigmoid(-a)
        wz_x, wz_h, bz = -wz_x, -wz_h, -bz
    pre_n = e.atoms[n_key][1][0]
    gated = [k for k in pre_n.terms if k != "x"]
    before = _reset_before(e, pre_n, gated)
    if before is not None:                     # textbook GRU / MGU: n = tanh(W x + U (r * h) + b)
        r_key, wn_h = before
        wr_x, wr_h, br, _ = _pre(e, r_key, "sigmoid", xs, "s0", hs)
        wn_x = pre_n.terms.get("x", np.zeros((hs, xs)))
        return Match("gru_reset_before", np.concatenate([wr_x, wz_x, wn_x]), np.concatenate([wr_h, wz_h, wn_h]),
                     np.concatenate([br, bz, pre_n.bias]), np.zeros(3 * hs), "s0", outs={"h": 0})
    if len(gated) != 1 or e.atoms.get(gated[0], ("",))[0] != "mul" or _eye_coef(pre_n, gated[0]) is None:
        if any(isinstance(k, tuple) and k[0] == "mul" for k in gated):
            raise NotCell("the reset gate multiplies h before the recurrent matmul, U(r * h), where nn.GRU "
                           "computes r * (U h)")
        raise NotCell("its candidate is not tanh(W x + r * (U h))")
    fa, fb = e.atoms[gated[0]][1]
    r_key = single(fa) if single(fa) is not None and e.atoms.get(single(fa), ("",))[0] == "sigmoid" else single(fb)
    u = fb if r_key == single(fa) else fa
    if r_key is None or set(u.terms) - {"s0"}:
        raise NotCell("the reset gate multiplies h before the recurrent matmul, U(r * h), where nn.GRU "
                       "computes r * (U h)")
    wr_x, wr_h, br, _ = _pre(e, r_key, "sigmoid", xs, "s0", hs)
    wn_x, b_in = pre_n.terms.get("x", np.zeros((hs, xs))), pre_n.bias
    wn_h, b_hn = u.terms.get("s0", np.zeros((hs, hs))), u.bias
    zeros = np.zeros(hs)
    return Match("gru", np.concatenate([wr_x, wz_x, wn_x]), np.concatenate([wr_h, wz_h, wn_h]),
                 np.concatenate([br, bz, b_in]), np.concatenate([zeros, zeros, b_hn]), "s0", outs={"h": 0})


def _reset_before(e: Eval, pre_n: Aff, gated: list) -> Optional[tuple[Any, np.ndarray]]:
    """(r's key, U) when the candidate's pre-activation reads h only as U (r * h), r a sigmoid gate."""
    if len(gated) != 1 or e.atoms.get(gated[0], ("",))[0] != "mul":
        return None
    factors = [single(f) for f in e.atoms[gated[0]][1]]
    if None in factors or "s0" not in factors:
        return None
    r_key = next((k for k in factors if k != "s0"), None)
    if r_key is None or e.atoms.get(r_key, ("",))[0] != "sigmoid":
        return None
    return r_key, pre_n.terms[gated[0]]


def _match_lstm(e: Eval, outs: list[Aff], xs: int, hs: int) -> Match:
    """c' = f * c + i * g, h' = o * tanh(c'); i, f, o sigmoid and g tanh of W x + U h + b."""
    for ci in (0, 1):
        c_out, h_out = outs[ci], outs[1 - ci]
        prods = _products(e, h_out)
        if len(prods) != 1 or len(h_out.terms) != 1 or h_out.bias.any():
            continue
        (factors, (_, coef)), = prods.items()
        t_key = next((k for k in factors if e.atoms[k][0] == "tanh" and e.atoms[k][1][0].sig() == c_out.sig()), None)
        if coef != 1.0 or t_key is None:
            continue
        o_key = next(iter(factors - {t_key}))
        leaves = ["s0", "s1"]
        cprods = _products(e, c_out)
        fc = [(f, v) for f, v in cprods.items() if f & set(leaves)]
        if len(fc) != 1 or fc[0][1][1] != 1.0:
            raise NotCell("its cell state is not f * c + i * g")
        c_leaf = next(iter(fc[0][0] & set(leaves)))
        h_leaf = "s1" if c_leaf == "s0" else "s0"
        f_key = next(iter(fc[0][0] - {c_leaf}))
        rest = [(f, v) for f, v in cprods.items() if f != fc[0][0]]
        coupled = _coupled_candidate(e, c_out, f_key, rest)
        if coupled is None and (len(rest) != 1 or rest[0][1][1] != 1.0 or len(c_out.terms) != 2
                                or c_out.bias.any()):
            raise NotCell("its cell state is not f * c + i * g")
        if coupled is not None:                # CIFG: i = 1 - f = sigmoid(-a_f), the LSTM with negated f rows
            i_key, g_key = f_key, coupled
        else:
            a, b = rest[0][0]
            i_key, g_key = (a, b) if e.atoms[b][0] == "tanh" else (b, a)
        c_prev = leaf(c_leaf, hs)
        w = [_pre(e, k, op, xs, h_leaf, hs, c_leaf, peep)
             for k, op, peep in ((i_key, "sigmoid", c_prev), (f_key, "sigmoid", c_prev), (g_key, "tanh", None),
                                 (o_key, "sigmoid", c_out))]
        if coupled is not None:
            w[0] = tuple(-m for m in w[0])
        b_ih = np.concatenate([g[2] for g in w])
        peepholes = np.stack([w[0][3], w[1][3], w[3][3]])
        return Match("peephole_lstm" if peepholes.any() else "lstm", np.concatenate([g[0] for g in w]),
                     np.concatenate([g[1] for g in w]), b_ih, np.zeros_like(b_ih), h_leaf, c_leaf,
                     outs={"h": 1 - ci, "c": ci}, extra={"peephole": peepholes} if peepholes.any() else {})
    raise NotCell("no state is o * tanh(c) of the other")


def _coupled_candidate(e: Eval, c_out: Aff, f_key: Any, rest: list) -> Optional[Any]:
    """The tanh candidate g of c' = f * c + (1 - f) * g (coupled input and forget gates), else None.
    Expanded, (1 - f) * g is g - f * g: one identity term g and one product f * g of coefficient -1."""
    gs = [k for k in c_out.terms if isinstance(k, tuple) and e.atoms.get(k, ("",))[0] == "tanh"
          and _eye_coef(c_out, k) == 1.0]
    if len(gs) != 1 or len(rest) != 1 or rest[0][0] != frozenset((f_key, gs[0])) or rest[0][1][1] != -1.0 \
            or len(c_out.terms) != 3 or c_out.bias.any():
        return None
    return gs[0]


def match_cell(e: Eval, outs: list[Aff], xs: int, hs: int) -> Match:
    if len(outs) == 2:
        return _match_lstm(e, outs, xs, hs)
    if len(outs) != 1:
        raise NotCell(f"it carries {len(outs)} state tensors")
    key = single(outs[0])
    if key is not None and e.atoms.get(key, ("",))[0] in ("tanh", "relu"):
        return _match_rnn(e, outs[0], xs, hs)
    return _match_gru(e, outs[0], xs, hs)

"""Random but valid float Graphs and QModels, built straight from ir.py dataclasses.

``make_graph`` draws float weights; ``quantize_graph`` is a small test-only quantiser
(per-row weight scales, one shift per requantisation, the accumulator bounds of
fixedpoint.py respected) so the simulator and the C can be tested without the real
quantiser. ``float_forward`` is a float32 numpy reference of a Graph (PyTorch formulas).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from mcu_nn.cells import GATES
from mcu_nn.ir import (Activation, DirectionWeights, Embedding, FinalHidden, Graph, Linear,
                       QActivation, QDirection, QEmbedding, QLinear, QMatrix, QModel, QRecurrent,
                       Recurrent, SelectLast)

Q15 = 2.0 ** -15
Q312 = 2.0 ** -12


# ----------------------------------------------------------------------------- float graphs
def make_graph(kind: str = "lstm", *, layers: int = 1, hidden: int = 6, input_size: int = 4,
               bidirectional: bool = False, proj: int = 0, bias: bool = True, vocab: int = 0,
               readout: Optional[str] = None, head: tuple = (), seq_len: int = 5,
               gain: float = 2.0, seed: int = 0, name: str = "model") -> Graph:
    """A chain embedding? -> ``layers`` recurrent layers -> readout -> head.

    readout: None (per-step output), "last" (SelectLast) or "final:0,1" (FinalHidden).
    head: items "linear:<out>" or "relu"/"tanh"/"sigmoid".
    """
    rng = np.random.default_rng(seed)
    ops: list = []
    size = input_size
    if vocab:
        ops.append(Embedding(rng.normal(0, 1, (vocab, input_size)).astype(np.float32), source="emb"))
    for li in range(layers):
        g, h = GATES[kind], hidden
        r = proj or hidden
        k = gain / math.sqrt(hidden)
        dirs = []
        for _ in range(2 if bidirectional else 1):
            u = lambda *shape: rng.uniform(-k, k, shape).astype(np.float32)  # noqa: E731
            dirs.append(DirectionWeights(
                w_ih=u(g * h, size), w_hh=u(g * h, r),
                b_ih=u(g * h) if bias else None, b_hh=u(g * h) if bias else None,
                w_hr=u(proj, h) if proj else None))
        op = Recurrent(kind, size, hidden, proj, bidirectional, dirs, source=f"rnn (layer {li})")
        ops.append(op)
        size = op.output_size
    if readout == "last":
        ops.append(SelectLast(source="out[:, -1]"))
    elif readout and readout.startswith("final:"):
        ds = [int(v) for v in readout[6:].split(",")]
        ops.append(FinalHidden(ds, source="h_n"))
        size = size // (2 if bidirectional else 1) * len(ds)
    for item in head:
        if item.startswith("linear:"):
            o = int(item[7:])
            k = 1.0 / math.sqrt(size)
            ops.append(Linear(rng.uniform(-k, k, (o, size)).astype(np.float32),
                              rng.uniform(-k, k, o).astype(np.float32), source="fc"))
            size = o
        else:
            ops.append(Activation(item, source=item))
    return Graph(name=name, input_kind="tokens" if vocab else "float",
                 input_size=vocab or input_size, seq_len=seq_len, ops=ops)


def make_input(g: Graph, n: int = 3, steps: Optional[int] = None, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = steps or g.seq_len
    if g.input_kind == "tokens":
        return rng.integers(-1, g.input_size + 1, (n, t)).astype(np.int64)  # includes out-of-range ids
    return (rng.normal(0, 1.5, (n, t, g.input_size))).astype(np.float32)


# ----------------------------------------------------------------------------- float reference
def _sig(v):
    return (1.0 / (1.0 + np.exp(-v))).astype(np.float32)


def _float_dir(op: Recurrent, d: int, x: np.ndarray):
    dw = op.directions[d]
    n, t_len, _ = x.shape
    hdim, s = op.hidden_size, op.state_size
    b_ih = dw.b_ih if dw.b_ih is not None else np.zeros(dw.w_ih.shape[0], np.float32)
    b_hh = dw.b_hh if dw.b_hh is not None else np.zeros(dw.w_ih.shape[0], np.float32)
    h = np.zeros((n, s), np.float32)
    c = np.zeros((n, hdim), np.float32)
    out = np.zeros((n, t_len, s), np.float32)
    for t in (range(t_len) if d == 0 else range(t_len - 1, -1, -1)):
        gx = x[:, t] @ dw.w_ih.T + b_ih
        gh = h @ dw.w_hh.T + b_hh
        if op.kind == "lstm":
            a = gx + gh
            i, f, gg, o = (a[:, k * hdim:(k + 1) * hdim] for k in range(4))
            c = _sig(f) * c + _sig(i) * np.tanh(gg)
            h = _sig(o) * np.tanh(c)
            if dw.w_hr is not None:
                h = h @ dw.w_hr.T
        elif op.kind == "gru":
            r = _sig(gx[:, :hdim] + gh[:, :hdim])
            z = _sig(gx[:, hdim:2 * hdim] + gh[:, hdim:2 * hdim])
            nn_ = np.tanh(gx[:, 2 * hdim:] + r * gh[:, 2 * hdim:])
            h = (1 - z) * nn_ + z * h
        elif op.kind == "rnn_tanh":
            h = np.tanh(gx + gh)
        else:
            h = np.maximum(gx + gh, 0)
        h = h.astype(np.float32)
        out[:, t] = h
    return out


def float_forward(g: Graph, x: np.ndarray) -> np.ndarray:
    """float32 forward pass of ``g`` (PyTorch's formulas) on (N,T,F) floats or (N,T) ids."""
    finals: list = []
    if g.input_kind == "tokens":
        x = np.asarray(x, np.int64)
    else:
        x = np.asarray(x, np.float32)
    for op in g.ops:
        if isinstance(op, Embedding):
            v = op.weight.shape[0]
            ok = (x >= 0) & (x < v)
            x = np.where(ok[..., None], op.weight[np.where(ok, x, 0)], 0).astype(np.float32)
        elif isinstance(op, Recurrent):
            outs = [_float_dir(op, d, x) for d in range(len(op.directions))]
            finals = [outs[0][:, -1]] + ([outs[1][:, 0]] if len(outs) > 1 else [])
            x = np.concatenate(outs, -1)
        elif isinstance(op, Linear):
            x = x @ op.weight.T + (op.bias if op.bias is not None else 0)
        elif isinstance(op, Activation):
            x = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "sigmoid": _sig}[op.kind](x)
        elif isinstance(op, SelectLast):
            x = x[:, -1]
        elif isinstance(op, FinalHidden):
            x = np.concatenate([finals[d] for d in op.directions], -1)
        x = x.astype(np.float32)
    return x


# ----------------------------------------------------------------------------- test quantiser
def _qweights(w: np.ndarray, qmax: int):
    """Per-row symmetric quantisation -> (int weights, per-row float scales)."""
    amax = np.maximum(np.abs(w).max(axis=1), 1e-8)
    s = amax / qmax
    return np.clip(np.round(w / s[:, None]), -qmax, qmax).astype(np.int64), s


def _acc_bits(w: np.ndarray, force64: bool) -> int:
    proven = int((np.abs(w).sum(axis=1) * 32768).max(initial=0)) < 2 ** 31
    return 32 if proven and not force64 else 64


def _shift_for(ms: list[np.ndarray]) -> int:
    """Largest shift keeping every multiplier below 2^15 (accumulator * mult stays far below 2^62)."""
    m = max(float(np.max(a, initial=0)) for a in ms) or 1.0
    return max(0, min(50, int(math.floor(math.log2((2 ** 15 - 1) / m)))))


def _mult(m: np.ndarray, shift: int) -> np.ndarray:
    return np.round(m * 2.0 ** shift).astype(np.int64)


def _bias(b: Optional[np.ndarray], out_scale: float, shift: int, n: int) -> np.ndarray:
    if b is None:
        return np.zeros(n, np.int64)
    return np.round(b.astype(np.float64) / out_scale * 2.0 ** shift).astype(np.int64)


def quantize_graph(g: Graph, precision: str = "int16", *, force64: bool = False,
                   cell_frac: int = 11, relu_scale: float = 2.0 ** -10,
                   input_scale: float = 2.0 ** -12) -> QModel:
    """Test-only quantiser: a plausible QModel respecting fixedpoint's overflow bounds."""
    if precision == "float32":
        return QModel(g.name, "float32", g.input_kind, g.input_size, g.seq_len, list(g.ops),
                      1.0, 1.0, g.output_per_step, g.output_size,
                      max_steps=g.seq_len * 2 if g.bidirectional else 0, postprocess=g.postprocess)
    qmax = 127 if precision == "int8" else 32767
    scale = 1.0 if g.input_kind == "tokens" else input_scale
    ops: list = []
    for op in g.ops:
        if isinstance(op, Embedding):
            amax = float(np.abs(op.weight).max())
            out_scale = amax / qmax
            ops.append(QEmbedding(np.round(op.weight / out_scale).astype(np.int64), out_scale, op.source))
            scale = out_scale
        elif isinstance(op, Recurrent):
            hdim = op.hidden_size
            h_scale = relu_scale if op.kind == "rnn_relu" else Q15
            if op.proj_size:
                h_scale = float(max(np.abs(d.w_hr).sum(axis=1).max() for d in op.directions)) / 32767 * 0.75
            gate_scale = h_scale if op.kind == "rnn_relu" else Q312
            qdirs = []
            for d in op.directions:
                wx, sx = _qweights(d.w_ih, qmax)
                wh, sh = _qweights(d.w_hh, qmax)
                mx, mh = sx * scale / gate_scale, sh * h_scale / gate_scale
                shift = _shift_for([mx, mh])
                b_ih = d.b_ih if d.b_ih is not None else np.zeros(wx.shape[0], np.float32)
                b_hh = d.b_hh if d.b_hh is not None else np.zeros(wx.shape[0], np.float32)
                has_b = d.b_ih is not None
                if op.kind == "gru":
                    b = np.concatenate([b_ih[:2 * hdim] + b_hh[:2 * hdim], b_ih[2 * hdim:]])
                    bias_h = _bias(b_hh[2 * hdim:] if has_b else None, gate_scale, shift, hdim)
                else:
                    b, bias_h = b_ih + b_hh, None
                proj, proj_shift = None, 0
                if op.proj_size:
                    wr, sr = _qweights(d.w_hr, qmax)
                    mr = sr * Q15 / h_scale
                    proj_shift = _shift_for([mr])
                    proj = QMatrix(wr, _mult(mr, proj_shift), _acc_bits(wr, force64))
                qdirs.append(QDirection(
                    QMatrix(wx, _mult(mx, shift), _acc_bits(wx, force64)),
                    QMatrix(wh, _mult(mh, shift), _acc_bits(wh, force64)),
                    _bias(b if has_b else None, gate_scale, shift, wx.shape[0]), bias_h, shift,
                    proj, proj_shift))
            ops.append(QRecurrent(op.kind, op.input_size, hdim, op.proj_size, op.bidirectional,
                                  qdirs, scale, h_scale, cell_frac, op.source))
            scale = h_scale
        elif isinstance(op, Linear):
            w, sw = _qweights(op.weight, qmax)
            bound = np.abs(op.weight).sum(axis=1).max() * 32767 * scale
            bmax = float(np.abs(op.bias).max()) if op.bias is not None else 0.0
            out_scale = (bound / 1.5 + bmax) / 32767   # saturation is possible but rare
            m = sw * scale / out_scale
            shift = _shift_for([m])
            ops.append(QLinear(QMatrix(w, _mult(m, shift), _acc_bits(w, force64)),
                               _bias(op.bias, out_scale, shift, w.shape[0]), shift, scale, out_scale,
                               op.source))
            scale = out_scale
        elif isinstance(op, Activation):
            if op.kind == "relu":
                ops.append(QActivation("relu", 1, 0, scale, scale, op.source))
            else:
                shift = 20
                mult = int(round(scale / Q312 * 2 ** shift))
                ops.append(QActivation(op.kind, mult, shift, scale, Q15, op.source))
                scale = Q15
        else:  # SelectLast / FinalHidden pass through unchanged
            ops.append(op)
    return QModel(g.name, precision, g.input_kind, g.input_size, g.seq_len, ops,
                  input_scale=1.0 if g.input_kind == "tokens" else input_scale,
                  output_scale=scale, output_per_step=g.output_per_step, output_size=g.output_size,
                  max_steps=g.seq_len * 2 if g.bidirectional else 0, postprocess=g.postprocess)


def make_qmodel(kind: str = "lstm", precision: str = "int16", *, force64: bool = False,
                cell_frac: int = 11, **graph_kw) -> QModel:
    return quantize_graph(make_graph(kind, **graph_kw), precision, force64=force64, cell_frac=cell_frac)

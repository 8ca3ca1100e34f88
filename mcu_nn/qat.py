"""Quantisation-aware training: fine-tune a model in PyTorch through the chip's arithmetic.

``QATModel`` holds the float parameters of a ``Graph`` as torch Parameters. Its forward
pass runs the *integer* model the chip would run with the current weights — the same
``quantize_with_stats`` scheme, the same :mod:`mcu_nn.fixedpoint` primitives (Q3.12
gate rounding, saturation, the Q15 activation tables, the LSTM cell format), so its
outputs are bit for bit ``run_quant``'s, dequantised. Gradients flow straight through:
every quantised tensor is ``exact_value + (float_formula - float_formula.detach())``, whose
value is exactly the integer result and whose gradient is the float formula's evaluated at
the quantised operands (weights included: per-row fake-quant with a straight-through
round). Saturated values pass no gradient.

    qat = QATModel.from_module(model, example_x, calib_x, precision="int8")
    opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
    loss = F.cross_entropy(qat(x), y); loss.backward(); opt.step()
    qat.recalibrate(calib_x)          # ranges follow the new weights (optional, per epoch)
    q = qat.qmodel()                  # the QModel to export: write_export / verify as usual
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .cells import cell_of
from .cells.base import Q15_SCALE, unsat16
from .errors import McuNnError
from .ir import (DirectionWeights, Embedding, FinalHidden, Graph, Linear,
                 QActivation, QEmbedding, QLinear, QModel, QRecurrent, Recurrent, SelectLast)
from . import fixedpoint as fp
from .quant.calibrate import DEFAULT_RANGE_METHOD, collect_ranges, validate_calibration
from .quant.quantize import QMAX, quantize_rows, quantize_with_stats

F64 = torch.float64


def _ste(exact: np.ndarray, scale: float, surrogate: torch.Tensor,
         passes: Optional[np.ndarray] = None) -> torch.Tensor:
    """A tensor whose value is exactly ``exact * scale`` and whose gradient is the
    surrogate's (masked where ``passes`` is False, e.g. saturated values)."""
    value = torch.from_numpy(np.asarray(exact, np.float64) * scale)
    delta = surrogate - surrogate.detach()            # exactly 0.0 in the forward pass
    if passes is not None:
        delta = delta * torch.from_numpy(np.asarray(passes, np.float64))
    return value + delta


class _Rows(nn.Module):
    """One float matrix with its per-row fake quantisation (straight-through round)."""

    def __init__(self, w: np.ndarray) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(np.asarray(w, np.float32)))

    def fake(self, qmax: int) -> torch.Tensor:
        rq = quantize_rows(self.w.detach().numpy(), qmax)
        exact = torch.from_numpy(rq.wq.astype(np.float64) * rq.scale[:, None])
        w = self.w.to(F64)
        return exact + (w - w.detach())


def _vec(b: Optional[np.ndarray], size: int) -> nn.Parameter:
    return nn.Parameter(torch.tensor(np.zeros(size, np.float32) if b is None else np.asarray(b, np.float32)))


def _wiring(op) -> dict:
    """The tensor names an op reads and writes, for a copy of it with trained weights."""
    return {"inputs": list(op.inputs), "outputs": list(op.outputs)}


class QATModel(nn.Module):
    """A ``Graph`` made trainable, with the chip's integer forward (see module docstring).

    Supports embeddings, LSTM (without projection), GRU, RNN (tanh/relu), uni- and
    bidirectional, Linear, relu/tanh/sigmoid, out[:, -1] and h_n readouts."""

    def __init__(self, graph: Graph, calib: np.ndarray, precision: str = "int8", *,
                 ranges: str = DEFAULT_RANGE_METHOD) -> None:
        super().__init__()
        if precision not in QMAX:
            raise McuNnError(f"QAT needs an integer precision (int8 or int16), not {precision!r}")
        self.template, self.precision, self.range_method = graph, precision, ranges
        self.layers = nn.ModuleList()
        for i, op in enumerate(graph.ops):
            m = nn.Module()
            if isinstance(op, Recurrent):
                if op.proj_size:
                    raise McuNnError(f"{op.source or f'op {i}'}: QAT does not support LSTM projections "
                                     f"(proj_size); export it with post-training quantisation")
                rows = cell_of(op.kind).n_gates * op.hidden_size
                m.dirs = nn.ModuleList()
                for dw in op.directions:
                    d = nn.Module()
                    d.wx, d.wh = _Rows(dw.w_ih), _Rows(dw.w_hh)
                    d.b_ih, d.b_hh = _vec(dw.b_ih, rows), _vec(dw.b_hh, rows)
                    m.dirs.append(d)
            elif isinstance(op, Linear):
                m.w = _Rows(op.weight)
                m.b = _vec(op.bias, op.weight.shape[0])
            elif isinstance(op, Embedding):
                m.table = nn.Parameter(torch.tensor(np.asarray(op.weight, np.float32)))
            self.layers.append(m)
        self.stats: dict = {}
        self.recalibrate(calib)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(cls, module: nn.Module, example_input: torch.Tensor, calib: np.ndarray,
                    precision: str = "int8", *, ranges: str = DEFAULT_RANGE_METHOD,
                    name: str = "model") -> "QATModel":
        """Read ``module`` through mcu-nn's frontend (torch.export, as ``mcu-nn export`` does)."""
        from .frontend import load_model
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.pt2"
            torch.export.save(torch.export.export(module.eval(), (example_input,)), str(path))
            graph = load_model(path, name=name)
        return cls(graph, calib, precision, ranges=ranges)

    def graph(self) -> Graph:
        """The float Graph with the current (trained) weights."""
        ops = []
        for op, m in zip(self.template.ops, self.layers):
            if isinstance(op, Recurrent):
                dirs = [DirectionWeights(w_ih=d.wx.w.detach().numpy().copy(), w_hh=d.wh.w.detach().numpy().copy(),
                                         b_ih=d.b_ih.detach().numpy().copy(), b_hh=d.b_hh.detach().numpy().copy(),
                                         extra=dict(dw.extra))   # a cell's own parameters are not trained
                        for d, dw in zip(m.dirs, op.directions)]
                ops.append(Recurrent(op.kind, op.input_size, op.hidden_size, 0, op.bidirectional, dirs, op.source,
                                     **_wiring(op)))
            elif isinstance(op, Linear):
                ops.append(Linear(m.w.w.detach().numpy().copy(), m.b.detach().numpy().copy(), op.source,
                                  **_wiring(op)))
            elif isinstance(op, Embedding):
                ops.append(Embedding(m.table.detach().numpy().copy(), op.source, **_wiring(op)))
            else:
                ops.append(op)
        t = self.template
        return Graph(name=t.name, input_kind=t.input_kind, input_size=t.input_size, seq_len=t.seq_len,
                     ops=ops, postprocess=t.postprocess, source_file=t.source_file, inputs=list(t.inputs),
                     outputs=list(t.outputs))

    def recalibrate(self, calib: np.ndarray) -> None:
        """Choose the int16 ranges again from the float model with the current weights."""
        graph = self.graph()
        calib = validate_calibration(calib, graph)
        self.stats = collect_ranges(graph, calib, method=self.range_method)
        self._max_steps = int(calib.shape[1])

    def qmodel(self) -> QModel:
        """The integer model of the current weights and ranges — what gets exported."""
        return quantize_with_stats(self.graph(), self.stats, self.precision, max_steps_hint=self._max_steps)

    # ------------------------------------------------------------------ forward
    def forward(self, x) -> torch.Tensor:
        """Dequantised outputs (float64), exactly ``run(self.qmodel(), x) * output_scale``."""
        return self._forward(x)[0]

    def forward_int(self, x) -> np.ndarray:
        """The integer outputs (int64 holding int16), to compare with ``run_quant``."""
        return self._forward(x)[1]

    def _forward(self, x) -> tuple[torch.Tensor, np.ndarray]:
        q = self.qmodel()
        xn = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if q.input_kind == "tokens":
            xq = fp._i64(xn)
            xv = torch.zeros(0)
        else:
            xq = fp.quantize_input(xn, 1.0 / q.input_scale)
            xv = torch.from_numpy(xq.astype(np.float64) * q.input_scale)
        finals: list[tuple[np.ndarray, torch.Tensor]] = []
        for op, qop, m in zip(self.template.ops, q.ops, self.layers):
            if isinstance(qop, QEmbedding):
                xq, xv = self._embedding(qop, m, xq)
            elif isinstance(qop, QRecurrent):
                outs = [self._direction(qop, m.dirs[d], d, xq, xv) for d in range(len(qop.directions))]
                finals = [(outs[0][0][:, -1], outs[0][1][:, -1])]
                if len(outs) > 1:
                    finals.append((outs[1][0][:, 0], outs[1][1][:, 0]))
                xq = np.concatenate([o[0] for o in outs], axis=-1)
                xv = torch.cat([o[1] for o in outs], dim=-1)
            elif isinstance(qop, QLinear):
                w = m.w.fake(QMAX[self.precision])
                yq = fp.sat16(fp.requant([(fp.matvec(qop.mat.w, xq), qop.mat.mult)], qop.bias, qop.shift))
                xv, xq = _ste(yq, qop.out_scale, xv @ w.T + m.b.to(F64), unsat16(yq)), yq
            elif isinstance(qop, QActivation):
                xq, xv = self._activation(qop, xq, xv)
            elif isinstance(qop, SelectLast):
                xq, xv = xq[:, -1], xv[:, -1]
            elif isinstance(qop, FinalHidden):
                xq = np.concatenate([finals[d][0] for d in qop.directions], axis=-1)
                xv = torch.cat([finals[d][1] for d in qop.directions], dim=-1)
            else:
                raise McuNnError(f"QAT: unsupported op {type(op).__name__} ({getattr(op, 'source', '')})")
        return xv, xq

    def _embedding(self, qop: QEmbedding, m: nn.Module, ids: np.ndarray):
        table = fp._i64(qop.table)
        ok = (ids >= 0) & (ids < table.shape[0])
        safe = np.where(ok, ids, 0)
        yq = np.where(ok[..., None], table[safe], 0)
        rq = quantize_rows(m.table.detach().numpy().reshape(1, -1), QMAX[self.precision])
        wf = m.table.to(F64)
        surrogate = (wf + (torch.from_numpy(rq.wq.reshape(table.shape) * float(rq.scale[0])) - wf.detach()))
        sur = surrogate[torch.from_numpy(safe)] * torch.from_numpy(ok[..., None].astype(np.float64))
        return yq, _ste(yq, qop.out_scale, sur)

    def _activation(self, qop: QActivation, xq: np.ndarray, xv: torch.Tensor):
        if qop.kind == "relu":
            yq = fp.relu(xq)
            return yq, _ste(yq, qop.out_scale, torch.relu(xv))
        x312 = fp.sat16(fp.rshift_round(fp._i64(xq) * qop.mult, qop.shift))
        if qop.kind == "tanh":
            yq = fp.tanh_q15(x312)
            return yq, _ste(yq, Q15_SCALE, torch.tanh(xv), unsat16(x312))
        yq = fp.sigmoid_q15(x312)
        return yq, _ste(yq, Q15_SCALE, torch.sigmoid(xv), unsat16(x312))

    def _direction(self, layer: QRecurrent, m: nn.Module, d: int, xq: np.ndarray, xv: torch.Tensor):
        """One direction over the sequence: (h ints (N,T,H), h values (N,T,H)). The values are the
        cell's integer step; its QAT surrogate only supplies the gradients."""
        cell, qd, qmax = cell_of(layer.kind), layer.directions[d], QMAX[self.precision]
        n, t_len, _ = xq.shape
        wx, wh = m.wx.fake(qmax), m.wh.fake(qmax)
        b_ih, b_hh = m.b_ih.to(F64), m.b_hh.to(F64)
        acc_x = fp.matvec(qd.wx.w, xq)
        xw = xv @ wx.T + b_ih                                 # float surrogate of the input part

        def rec(v: torch.Tensor) -> torch.Tensor:             # ... and of the recurrent part, of v
            return v @ wh.T + b_hh

        state = {s: np.zeros((n, cell.state_size(layer, s)), np.int64) for s in cell.states}
        values = {s: torch.zeros((n, cell.state_size(layer, s)), dtype=F64) for s in cell.states}
        outs_q: list = [None] * t_len
        outs_v: list = [None] * t_len
        steps = range(t_len) if d == 0 else range(t_len - 1, -1, -1)
        for t in steps:
            hw = rec(values["h"])
            new, parts = cell.int_step(layer, qd, acc_x[:, t], fp.matvec(qd.wh.w, state["h"]), state, detail=True)
            values = cell.qat_step(layer, new, parts, xw[:, t], hw, values, _ste, rec)
            state = new
            outs_q[t], outs_v[t] = state["h"], values["h"]
        return np.stack(outs_q, axis=1), torch.stack(outs_v, dim=1)


def fine_tune(qat: QATModel, x: np.ndarray, y: np.ndarray, *, epochs: int = 5, lr: float = 1e-3,
              batch: int = 32, calib: Optional[np.ndarray] = None, seed: int = 0,
              input_lr: Optional[float] = None, log=print) -> QATModel:
    """A plain QAT loop for classifiers: cross-entropy on ``qat(x)`` with Adam; ranges are
    re-chosen from ``calib`` (default ``x``) after every epoch, so export matches training.

    ``input_lr`` (default ``lr``) is the learning rate of the first recurrent layer's input
    weights. Adam moves every weight by about ``lr`` per step whatever its units, so when the
    model takes raw values of magnitude M (e.g. ADC codes around 2048) a step of ``lr`` on
    those weights moves the gates by ``lr * M``; pass about ``lr / M`` there."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    first = next((m for op, m in zip(qat.template.ops, qat.layers) if isinstance(op, Recurrent)), None)
    special = [d.wx.w for d in first.dirs] if first is not None and input_lr is not None else []
    ids = {id(p) for p in special}
    groups = [{"params": [p for p in qat.parameters() if id(p) not in ids], "lr": lr}]
    if special:
        groups.append({"params": special, "lr": input_lr})
    opt = torch.optim.Adam(groups, lr=lr)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for s in range(0, len(x), batch):
            idx = order[s:s + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(qat(x[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        qat.recalibrate(x if calib is None else calib)
        log(f"  QAT epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    return qat

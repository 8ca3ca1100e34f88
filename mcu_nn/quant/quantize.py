"""Graph (float) -> QModel (integers): the quantisation scheme of docs/numerics.md.

Activations and states are symmetric int16; weights are per-row symmetric int8/int16;
every matrix-vector product is requantised as rshift_round(sum(acc_s * mult_s) + bias,
shift) with the multipliers, bias and shift chosen here and proven free of overflow.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..cells import cell_of
from ..cells.base import GATE_SCALE, Q15_SCALE
from ..errors import McuNnError
from ..ir import (Activation, Embedding, FinalHidden, Graph, Linear, QActivation,
                  QDirection, QEmbedding, QLinear, QMatrix, QModel, QRecurrent, Recurrent,
                  SelectLast, Tensor, state_inputs, whole_sequence)
from ..ops import unit_of
from ..progress import track
from .calibrate import DEFAULT_RANGE_METHOD, collect_ranges, validate_calibration, validate_calibration_set

QMAX = {"int8": 127, "int16": 32767}
WDTYPE = {"int8": np.int8, "int16": np.int16}
ACT_MAX = 32767                  # int16 activations are symmetric: [-32767, 32767] by scale
ACT_BOUND = 32768                # |x| of any int16 input (the bound proofs use -32768)
MAX_SHIFT = 62
MULT_LIMIT = 1 << 31             # |mult| < 2^31
SUM_LIMIT = 1 << 62              # |sum(acc * mult) + bias| < 2^62
MIN_MULT_BITS = 12               # fewer significant bits in the largest multiplier = too coarse


def act_scale(absmax: float) -> float:
    """Symmetric int16 scale of a tensor whose calibrated max |value| is ``absmax``."""
    return absmax / ACT_MAX if absmax > 0 and np.isfinite(absmax) else 1.0


@dataclass
class RowQuant:
    """Per-row symmetric quantisation of a float matrix."""
    wq: np.ndarray          # (rows, cols) int64 values in [-qmax, qmax]
    scale: np.ndarray       # (rows,) float64; 1.0 for all-zero rows
    zero: np.ndarray        # (rows,) bool: all-zero row (its multiplier is set to 0)

    @property
    def bound(self) -> list[int]:
        """max |acc[r]| over every int16 input: sum_j |w[r,j]| * 32768 (exact ints)."""
        return [int(v) * ACT_BOUND for v in np.abs(self.wq).sum(axis=1)]

    def acc_bits(self) -> int:
        return 32 if max(self.bound, default=0) < MULT_LIMIT else 64


def quantize_rows(w: np.ndarray, qmax: int) -> RowQuant:
    w = np.asarray(w, np.float64)
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0])
    zero = amax == 0
    scale = np.where(zero, 1.0, amax / qmax)
    wq = np.clip(np.round(w / scale[:, None]), -qmax, qmax).astype(np.int64)
    return RowQuant(wq, scale, zero)


def choose_shift(mults: Sequence[np.ndarray], bounds: Sequence[list[int]],
                 biases: Sequence[np.ndarray], where: str) -> int:
    """The largest shift in [0, 62] with every |round(m * 2^shift)| < 2^31 and, for every
    row, sum_s bound_s * |m_s int| + sum_b |b int| < 2^62 (so int64 never overflows).
    Raises if none exists or if the largest multiplier keeps fewer than 12 bits."""
    mmax = max((float(np.abs(m).max()) for m in mults if m.size), default=0.0)
    rows = len(bounds[0]) if bounds else 0
    for shift in range(MAX_SHIFT, -1, -1):
        if mmax * 2.0 ** shift >= MULT_LIMIT - 0.5:
            continue
        mi = [[int(v) for v in np.round(m * 2.0 ** shift)] for m in mults]
        if max((abs(v) for m in mi for v in m), default=0) >= MULT_LIMIT:
            continue
        bi = [[int(v) for v in np.round(np.asarray(b, np.float64) * 2.0 ** shift)] for b in biases]
        ok = all(sum(bs[r] * abs(m[r]) for bs, m in zip(bounds, mi)) + sum(abs(b[r]) for b in bi)
                 < SUM_LIMIT for r in range(rows))
        if not ok:
            continue
        largest = max((abs(v) for m in mi for v in m), default=0)
        if mmax > 0 and largest < (1 << (MIN_MULT_BITS - 1)):
            raise McuNnError(f"{where}: the requantisation multiplier keeps only {largest.bit_length()} bits "
                             f"at shift {shift} (need {MIN_MULT_BITS}); the scales span too wide a range "
                             f"(overflow risk) — check the calibration data and the layer's weights/bias")
        return shift
    raise McuNnError(f"{where}: no requantisation shift in [0, {MAX_SHIFT}] keeps the int64 accumulator "
                     f"from overflowing (overflow risk); the bias or weights are too large for the "
                     f"activation scales — check the calibration data and the layer's parameters")


def _mult_ints(m: np.ndarray, shift: int) -> np.ndarray:
    return np.round(np.asarray(m, np.float64) * 2.0 ** shift).astype(np.int64)


def _qmatrix(rq: RowQuant, mult_real: np.ndarray, shift: int, precision: str) -> QMatrix:
    return QMatrix(w=rq.wq.astype(WDTYPE[precision]), mult=_mult_ints(mult_real, shift),
                   acc_bits=rq.acc_bits())


def _bias(b: Optional[np.ndarray], rows: int) -> np.ndarray:
    return np.zeros(rows) if b is None else np.asarray(b, np.float64)


# ----------------------------------------------------------------------------- ops
def _quant_direction(op: Recurrent, d: int, in_scale: float, h_scale: float, precision: str,
                     where: str) -> QDirection:
    dw, cell = op.directions[d], cell_of(op.kind)
    qmax, hsz = QMAX[precision], op.hidden_size
    rows = cell.n_gates * hsz
    s_z = cell.pre_scale(h_scale)
    rx, rh = quantize_rows(dw.w_ih, qmax), quantize_rows(dw.w_hh, qmax)
    mx = np.where(rx.zero, 0.0, rx.scale * in_scale / s_z)
    mh = np.where(rh.zero, 0.0, rh.scale * h_scale / s_z)
    bias, bias_h = cell.biases(_bias(dw.b_ih, rows), _bias(dw.b_hh, rows), hsz)
    bias_real = bias / s_z
    bias_h_real = None if bias_h is None else bias_h / s_z
    biases = [bias_real]
    if bias_h_real is not None:                # kept apart, aligned with the rows it ends in
        biases.append(np.concatenate([np.zeros(rows - len(bias_h_real)), bias_h_real]))
    x_bound = _picked_bound(rx) if op.input_ids else rx.bound
    shift = choose_shift([mx, mh], [x_bound, rh.bound], biases, f"{where} (direction {d})")
    wx = _qmatrix(rx, mx, shift, precision)
    if op.input_ids:
        wx.acc_bits = 32                       # one picked weight, |acc| <= 32767
    qd = QDirection(wx=wx, wh=_qmatrix(rh, mh, shift, precision),
                    bias=_mult_ints(bias_real, shift),
                    bias_h=None if bias_h_real is None else _mult_ints(bias_h_real, shift),
                    shift=shift)
    if dw.w_hr is not None:                    # projection: Q15 hfull -> h_scale
        rp = quantize_rows(dw.w_hr, qmax)
        mp = np.where(rp.zero, 0.0, rp.scale * Q15_SCALE / h_scale)
        pshift = choose_shift([mp], [rp.bound], [], f"{where} (direction {d} projection)")
        qd.proj, qd.proj_shift = _qmatrix(rp, mp, pshift, precision), pshift
    return qd


_CLIPPED = {"over_q312": lambda s: _frac(s, "over_q312"), "over_q15": lambda s: _frac(s, "over_q15"),
            "clipped": lambda s: _clip(s), "none": lambda s: 0.0}


def _quant_recurrent(op: Recurrent, key: str, where: str, in_scale: float, stats: dict, cal: dict,
                     precision: str, wiring: dict) -> QRecurrent:
    """A recurrent op at input scale ``in_scale``, with its tensors' calibration entries added to ``cal``."""
    cell, dirs = cell_of(op.kind), range(len(op.directions))
    h_scale, cell_frac = cell.quant_state(op, lambda name: max(_range(stats[f"{key}.d{d}.{name}"]) for d in dirs))
    qdirs = [_quant_direction(op, d, in_scale, h_scale, precision, where) for d in dirs]
    for dw, qd in zip(op.directions, qdirs):
        qd.extra = cell.quant_extra(dw, h_scale, cell_frac, where)
    qop = QRecurrent(kind=op.kind, input_size=op.input_size, hidden_size=op.hidden_size,
                     proj_size=op.proj_size, bidirectional=op.bidirectional, directions=qdirs,
                     in_scale=in_scale, h_scale=h_scale, cell_frac=cell_frac, source=op.source,
                     input_ids=op.input_ids, **wiring)
    traced = {**cell.traced(qop), "h": (h_scale, "over_q15" if h_scale == Q15_SCALE else "clipped")}
    for d in dirs:
        for name, (tscale, clipped) in traced.items():
            stat = stats.get(f"{key}.d{d}.{name}")
            cal[f"{key}.d{d}.{name}"] = _entry(stat, tscale, _CLIPPED[clipped](stat))
    return qop


def _picked_bound(rq: RowQuant) -> list[int]:
    """max |acc[r]| when the input is one-hot (the integer 1 at one column): max_j |w[r, j]|."""
    return [int(v) for v in (np.abs(rq.wq).max(axis=1) if rq.wq.shape[1] else np.zeros(rq.wq.shape[0]))]


def _entry(stat: Optional[dict], scale: float, clipped: float = 0.0) -> dict:
    lo = float(stat["min"]) if stat and stat["count"] else 0.0
    hi = float(stat["max"]) if stat and stat["count"] else 0.0
    return {"min": lo, "max": hi, "scale": float(scale), "clipped_fraction": float(clipped)}


def _range(stat: dict) -> float:
    """The |value| the tensor's int16 scale covers (chosen in calibrate.choose_range)."""
    return float(stat.get("range", stat["absmax"]))


def _clip(stat: Optional[dict]) -> float:
    return float(stat.get("clipped", 0.0)) if stat else 0.0


def _frac(stat: Optional[dict], key: str) -> float:
    return stat[key] / stat["count"] if stat and stat["count"] else 0.0


def _check_graph(graph: Graph) -> None:
    seen_rec = False
    for i, op in enumerate(graph.ops):
        if isinstance(op, Embedding) and i != 0:
            raise McuNnError(f"{op.source or f'op {i}'}: an embedding is only supported as the first op")
        if isinstance(op, Recurrent):
            seen_rec = True
        if isinstance(op, FinalHidden) and not seen_rec:
            raise McuNnError(f"{op.source or f'op {i}'}: h_n readout with no recurrent layer before it")
    first = graph.ops[0] if graph.ops else None
    reads_ids = isinstance(first, Embedding) or (isinstance(first, Recurrent) and first.input_ids)
    if (graph.input_kind == "tokens") != reads_ids:
        raise McuNnError(f"{graph.name}: a token model must start with an embedding or a one-hot recurrent "
                         f"layer (and only a token model may); the graph's input kind is {graph.input_kind}")
    for i, op in enumerate(graph.ops[1:], 1):
        if isinstance(op, Recurrent) and op.input_ids:
            raise McuNnError(f"{op.source or f'op {i}'}: a one-hot input is only supported for the first op")


def quantize(graph: Graph, calib: np.ndarray, precision: str, *, ranges: str = DEFAULT_RANGE_METHOD,
             head_all_steps: bool = True, lengths: Optional[np.ndarray] = None) -> QModel:
    """Quantise ``graph`` with ranges measured on ``calib`` (see load_calibration).

    precision: "int8" (8-bit weights per row), "int16" (16-bit weights) — activations and
    state are int16 in both — or "float32" (the graph's float ops, every scale 1.0).
    ranges: how each free int16 range is chosen from the calibration values ("max",
    "headroom", "percentile" or "search", see calibrate.choose_range); head_all_steps:
    calibrate a streaming classifier's head over every step, as the chip's _step runs it;
    lengths: (N,) steps of each padded sequence (calibrate.CalibrationSet), None = all."""
    if precision not in ("int8", "int16", "float32"):
        raise McuNnError(f"unknown precision {precision!r}; choose int8, int16 or float32")
    if not graph.ops:
        raise McuNnError(f"{graph.name}: the model has no ops to quantise")
    _check_graph(graph)
    calib = validate_calibration_set(calib, lengths, graph).x
    stats = collect_ranges(graph, calib, method=ranges, head_all_steps=head_all_steps, lengths=lengths)
    return quantize_with_stats(graph, stats, precision, max_steps_hint=calib.shape[1])


def quantize_with_stats(graph: Graph, stats: dict[str, dict], precision: str, *,
                        max_steps_hint: int = 0) -> QModel:
    """Quantise ``graph`` with given ranges (``collect_ranges`` output, or ranges learned
    by mcu_nn.qat: each tensor needs "absmax"/"count" and optionally "range", "min", "max")."""
    if precision not in ("int8", "int16", "float32"):
        raise McuNnError(f"unknown precision {precision!r}; choose int8, int16 or float32")
    _check_graph(graph)
    max_steps = (graph.seq_len if graph.seq_len > 0 else max_steps_hint) if whole_sequence(graph) else 0
    common = dict(name=graph.name, precision=precision, input_kind=graph.input_kind,
                  input_size=graph.input_size, seq_len=graph.seq_len,
                  output_per_step=graph.output_per_step, output_size=graph.output_size,
                  max_steps=max_steps, postprocess=graph.postprocess,
                  inputs=list(graph.inputs), outputs=list(graph.outputs))
    if precision == "float32":
        cal = {k: _entry(v, 1.0) for k, v in stats.items()}
        return QModel(ops=list(graph.ops), input_scale=1.0, output_scale=1.0, calibration=cal, **common)

    qmax = QMAX[precision]
    cal: dict[str, dict] = {}
    if graph.input_kind == "tokens":
        input_scale = 1.0
    else:
        input_scale = act_scale(_range(stats["input"]))
        cal["input"] = _entry(stats["input"], input_scale, _clip(stats["input"]))
    scales = {graph.input_names[0]: input_scale}     # tensor name -> scale of its int16 values
    ops: list = []
    t0 = time.perf_counter()
    for i, op in track(list(enumerate(graph.ops)), desc=f"quantising ({precision})", unit="op"):
        key, where = f"op{i}", op.source or f"op {i} ({type(op).__name__})"
        scale = scales[op.inputs[0]]
        wiring = dict(inputs=list(op.inputs), outputs=list(op.outputs))
        if isinstance(op, Embedding):
            table = np.asarray(op.weight, np.float64)
            amax = float(np.abs(table).max()) if table.size else 0.0
            scale = amax / qmax if amax > 0 else 1.0
            tq = np.clip(np.round(table / scale), -qmax, qmax).astype(np.int16)
            ops.append(QEmbedding(table=tq, out_scale=scale, source=op.source, **wiring))
        elif isinstance(op, Recurrent):
            qop = _quant_recurrent(op, key, where, scale, stats, cal, precision, wiring)
            ops.append(qop)
            scale = qop.h_scale
            states = [cell_of(op.kind).state_scale(qop, s) for s in cell_of(op.kind).states]
            scales.update(zip(op.outputs[1:], states))
            scales.update(zip(state_inputs(op), states))
        elif isinstance(op, Linear):
            out_scale = act_scale(_range(stats[f"{key}.out"]))
            rq = quantize_rows(op.weight, qmax)
            m = np.where(rq.zero, 0.0, rq.scale * scale / out_scale)
            b = _bias(op.bias, rq.wq.shape[0]) / out_scale
            shift = choose_shift([m], [rq.bound], [b], where)
            ops.append(QLinear(mat=_qmatrix(rq, m, shift, precision), bias=_mult_ints(b, shift),
                               shift=shift, in_scale=scale, out_scale=out_scale, source=op.source, **wiring))
            scale = out_scale
        elif isinstance(op, Activation):
            if op.kind == "relu":
                ops.append(QActivation(kind="relu", mult=1, shift=0, in_scale=scale, out_scale=scale,
                                       source=op.source, **wiring))
            else:
                m = np.array([scale / GATE_SCALE])
                shift = choose_shift([m], [[ACT_BOUND]], [], where)
                ops.append(QActivation(kind=op.kind, mult=int(_mult_ints(m, shift)[0]), shift=shift,
                                       in_scale=scale, out_scale=Q15_SCALE, source=op.source, **wiring))
                s = stats.get(f"{key}.in")
                cal[f"{key}.q312"] = _entry(s, GATE_SCALE, _frac(s, "over_q312"))
                scale = Q15_SCALE
        elif isinstance(op, (SelectLast, FinalHidden)):
            ops.append(op)
        elif hasattr(op, "quantize"):         # an op over time of mcu_nn.ops
            ins = [scales[n] for n in op.inputs]
            qop = op.quantize(ins, stats, key, precision, where)
            ops.append(qop)
            scale = qop.outs([Tensor(n, 0, True, s) for n, s in zip(op.inputs, ins)])[0][2]
        elif unit_of(op) is not None:             # an op unit (mcu_nn/ops): its own rule
            from ..ops.unit import QuantCtx
            ctx = QuantCtx(key, where, precision, [scales[n] for n in op.inputs], stats)
            qop = unit_of(op).quantize(op, ctx)
            qop.inputs, qop.outputs = list(op.inputs), list(op.outputs)
            ops.append(qop)
            scale = qop.out_scale
            scales[op.outputs[0]] = scale
            cal[f"{key}.out"] = _entry(stats.get(f"{key}.out"), scale, ctx.clipped)
            continue
        else:
            raise McuNnError(f"{where}: cannot quantise op type {type(op).__name__}")
        scales[op.outputs[0]] = scale
        out_stat = stats.get(f"{key}.out")
        cal[f"{key}.out"] = _entry(out_stat, scale, _clip(out_stat) if isinstance(op, Linear) else 0.0)
    logging.getLogger("mcu_nn").debug("quantisation: %d ops to %s in %.2f s", len(ops), precision,
                                      time.perf_counter() - t0)
    return QModel(ops=ops, input_scale=input_scale, output_scale=scales[graph.output_names[0]],
                  calibration=cal, **common)

"""Bit-exact integer simulation of a ``QModel``: exactly what the generated C computes.

Vectorised over the batch with numpy; every arithmetic step is a primitive of
:mod:`mcu_nn.fixedpoint`, so this file only says *which* primitive runs *when*.

Two paths give the same integers and saturation counts (tests/test_sim_fast.py,
scripts/render_snapshot.py). The fast one (the default) computes the matrix products with
``fp.matmul_exact`` (float64 BLAS where that is provably exact, int64 otherwise), one step at a
time, and, when nothing is traced, steps a cell through its fused form (``Cell.int_steps``:
constants prepared once per run, activations by table lookup). The reference one
(``reference_path()``) is the plain reading: ``fp.matvec`` in int64 over all steps at once and
``Cell.int_step`` each step. docs/performance.md ("Host simulator") has the figures.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import numpy as np

from ..cells import cell_of
from ..errors import McuNnError
from ..ops import unit_of
from ..ir import (Activation, Embedding, FinalHidden, Graph, Linear, QActivation,
                  QEmbedding, QLinear, QModel, QRecurrent, Recurrent, SelectLast, producers,
                  split_state, tensors)
from .. import fixedpoint as fp
from .float_sim import pick_columns

_reference = False


@contextlib.contextmanager
def reference_path(on: bool = True) -> Iterator[None]:
    """Inside the block the simulator runs its reference path (int64 ``fp.matvec``, ``Cell.int_step``
    every step): the same integers and saturation counts, 5-10x slower. For tests and benchmarks."""
    global _reference
    outer, _reference = _reference, on
    try:
        yield
    finally:
        _reference = outer


class Product:
    """``fp.matvec(w, .)`` for one matrix over a run: w's bound and float64 copy prepared once,
    each call ``fp.matmul_exact`` (float64 when provably exact, int64 otherwise)."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = fp._i64(w)
        self.bound = fp.matmul_bound(self.w)
        self.w64 = self.w.astype(np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return fp.matmul_exact(x, self.w, self.bound, w64=self.w64)


_blas = None     # threadpoolctl's controller, made on first use (False: not installed)


def _one_blas_thread():
    """One BLAS thread while the simulator runs (when threadpoolctl is installed): its float64
    products are small (tens of microseconds each, one per step), where BLAS threads only add
    hand-off, and on a busy machine spinning threads made them 10-20x slower (docs/performance.md)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController()
        except ImportError:
            _blas = False
    if _reference or _blas is False:
        return contextlib.nullcontext()
    return _blas.limit(limits=1, user_api="blas")


def _product(w: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return (lambda x: fp.matvec(w, x)) if _reference else Product(w)


def _input_part(layer: QRecurrent, qd, x: np.ndarray) -> Callable[[int], np.ndarray]:
    """t -> W_ih x[:, t] (N, G*H) int64. The reference path computes every step's at once; the
    fast path one step at a time, as the loop needs it (pieces that stay in cache: twice as fast
    as all steps at once and a (N, T, G*H) array)."""
    if layer.input_ids:                                 # one-hot ids: the integer 1 times column id
        acc_x = pick_columns(fp._i64(qd.wx.w), x)
    elif _reference:
        acc_x = fp.matvec(qd.wx.w, x)
    else:
        wx = Product(qd.wx.w)
        return lambda t: wx(x[:, t])
    return lambda t: acc_x[:, t]


def _direction(layer: QRecurrent, d: int, x: np.ndarray, init: dict[str, Optional[np.ndarray]],
               trace: Optional[dict] = None, key: str = "") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run direction ``d`` of ``layer`` over x (N,T,I) int from the initial states ``init``
    (None = zeros); returns (h per step (N,T,S), final state of each of the cell's states).
    With ``trace``, also records the dequantised tensors the cell traces (gate pre-activations,
    an LSTM's c) and h under run_float's names (f"{key}.d{d}.gates" / ".c" / ".h") for the
    quantisation report."""
    cell = cell_of(layer.kind)
    qd = layer.directions[d]
    n, t_len = x.shape[:2]
    input_part = _input_part(layer, qd, x)
    state = {s: fp._i64(init[s]) if init.get(s) is not None else np.zeros((n, cell.state_size(layer, s)), np.int64)
             for s in cell.states}
    out = np.zeros((n, t_len, layer.state_size), dtype=np.int64)
    traced = cell.traced(layer) if trace is not None else {}
    rec = {name: None for name in traced}
    steps = range(t_len) if d == 0 else range(t_len - 1, -1, -1)
    rec_product = _product(qd.wh.w)
    fused = None if _reference or trace is not None else cell.int_steps(layer, qd, Product)
    for t in steps:
        if fused is not None:
            state = fused(input_part(t), rec_product(state["h"]), state)
        else:
            state, parts = cell.int_step(layer, qd, input_part(t), rec_product(state["h"]), state,
                                         detail=trace is not None)
        out[:, t] = state["h"]
        for name, (scale, _) in traced.items():
            if rec[name] is None:
                rec[name] = np.zeros((n, t_len) + parts[name].shape[1:])
            rec[name][:, t] = parts[name] * scale
    if trace is not None:
        for name, arr in rec.items():
            trace[f"{key}.d{d}.{name}"] = arr
        trace[f"{key}.d{d}.h"] = out * layer.h_scale
    return out, state


def _linear(op: QLinear, x: np.ndarray) -> np.ndarray:
    return fp.sat16(fp.requant([(_product(op.mat.w)(x), op.mat.mult)], op.bias, op.shift))


def _activation(op: QActivation, x: np.ndarray) -> np.ndarray:
    if op.kind == "relu":
        return fp.relu(x)
    x312 = fp.sat16(fp.rshift_round(fp._i64(x) * op.mult, op.shift))
    return fp.tanh_q15(x312) if op.kind == "tanh" else fp.sigmoid_q15(x312)


def run_quant(q: QModel, xq: np.ndarray, trace: Optional[dict] = None,
              state: Optional[np.ndarray] = None) -> np.ndarray:
    """Run ``q`` on quantised inputs: (N,T,F) int16 values, or (N,T) token ids.

    ``state``: the initial recurrent state as int16 values in the flat layout of
    ``ir.state_slots`` ((N, total) or (total,)), what ``_set_state`` takes; None = zeros.
    Returns the main output, int64 holding int16 values: (N,T,O) if ``q.output_per_step``
    else (N,O). With ``trace``, fills it with dequantised float arrays under run_float's
    trace names ("input", f"op{i}.out", f"op{i}.d{d}.gates" / ".c" / ".h"), so the two can
    be compared.
    """
    return run_quant_all(q, xq, trace, state)[q.output_names[0]]


def run_quant_all(q: QModel, xq: np.ndarray, trace: Optional[dict] = None,
                  state: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """As :func:`run_quant`, returning every named tensor (int64 holding int16 values)."""
    if q.precision == "float32":
        raise McuNnError(f"run_quant: model {q.name!r} is float32; use mcu_nn.sim.run for float models")
    x = fp._i64(xq)
    want = 2 if q.input_kind == "tokens" else 3
    if x.ndim != want:
        raise McuNnError(f"run_quant: model {q.name!r} takes a {want}-d input "
                         f"({'N,T token ids' if want == 2 else 'N,T,F'}), got shape {tuple(x.shape)}")
    info = tensors(q)
    env: dict[str, np.ndarray] = {q.input_names[0]: x}
    if trace is not None and q.input_kind != "tokens":
        trace["input"] = x * q.input_scale
    init = split_state(q, state, x.shape[0], np.int64)
    with _one_blas_thread():
        env = _run_ops(q, env, init, trace, info)
    assert info[q.output_names[0]].per_step == q.output_per_step, "QModel.output_per_step disagrees with its ops"
    return env


def _run_ops(q: QModel, env: dict, init: dict, trace: Optional[dict], info: dict) -> dict:
    outer_site = fp.set_saturation_site("?")
    for i, op in enumerate(q.ops):
        fp.set_saturation_site(f"op{i}")              # clips are tallied per op (fp.count_saturation)
        cur = env[op.inputs[0]]
        if isinstance(op, QEmbedding):
            table = fp._i64(op.table)
            ok = (cur >= 0) & (cur < table.shape[0])
            outs = [np.where(ok[..., None], table[np.where(ok, cur, 0)], 0)]
        elif isinstance(op, QRecurrent):
            states = cell_of(op.kind).states
            runs = [_direction(op, d, cur, {s: init.get((i, d, s)) for s in states}, trace, f"op{i}")
                    for d in range(len(op.directions))]
            outs = [np.concatenate([r[0] for r in runs], axis=-1)]
            outs += [np.concatenate([r[1][s] for r in runs], axis=-1) for s in states]
        elif isinstance(op, QLinear):
            outs = [_linear(op, cur)]
        elif isinstance(op, QActivation):
            outs = [_activation(op, cur)]
        elif hasattr(op, "run_int"):          # an op of mcu_nn.ops
            outs = op.run_int([env[n] for n in op.inputs])
        elif isinstance(op, SelectLast):
            outs = [cur[:, -1]]
        elif isinstance(op, FinalHidden):
            _, rec = producers(q)[op.inputs[0]]
            size = cur.shape[-1] // len(rec.directions)
            outs = [np.concatenate([cur[:, d * size:(d + 1) * size] for d in op.directions], axis=-1)]
        elif unit_of(op) is not None:
            outs = unit_of(op).int_step(op, [env[n] for n in op.inputs])
        else:
            raise McuNnError(f"run_quant: unsupported op {type(op).__name__} in model {q.name!r}")
        env.update(zip(op.outputs, outs))
        if trace is not None:
            trace[f"op{i}.out"] = outs[0] * info[op.outputs[0]].scale
    fp.set_saturation_site(outer_site)
    return env


def as_graph(q: QModel) -> Graph:
    """The float ``Graph`` view of a float32 QModel (whose ops are the float ops)."""
    for op in q.ops:
        unit = unit_of(op)
        if not isinstance(op, (Embedding, Recurrent, Linear, Activation, SelectLast, FinalHidden)) and \
                not hasattr(op, "run_float") and not (unit and isinstance(op, unit.float_types)):
            raise McuNnError(f"model {q.name!r} is float32 but holds integer op {type(op).__name__}")
    return Graph(name=q.name, input_kind=q.input_kind, input_size=q.input_size, seq_len=q.seq_len,
                 ops=list(q.ops), postprocess=q.postprocess, inputs=list(q.inputs), outputs=list(q.outputs))


def quantize_model_input(q: QModel, x: np.ndarray) -> np.ndarray:
    """What the chip receives: int16 values for float models, int64 ids for token models."""
    if q.input_kind == "tokens":
        return fp._i64(x)
    with fp.saturation_site("input"):
        return fp.quantize_input(x, 1.0 / q.input_scale)


def saturation(q: QModel, x: np.ndarray, state: Optional[np.ndarray] = None) -> dict[str, dict]:
    """Where the integer model clips on inputs ``x``: {"input" | "op<i>": {"clipped", "values",
    "source"}} for every site that clipped at least one value (the chip clips the same values:
    it computes the same bits)."""
    if q.precision == "float32":
        return {}
    with fp.count_saturation() as tally:
        run(q, x, state)
    out = {}
    for site, (clipped, total) in sorted(tally.items()):
        if clipped:
            src = "model input" if site == "input" else _site_source(q, site)
            out[site] = {"clipped": clipped, "values": total, "source": src}
    return out


def _site_source(q: QModel, site: str) -> str:
    try:
        op = q.ops[int(site[2:])]
    except (ValueError, IndexError):
        return site
    return op.source or type(op).__name__


def run(q: QModel, x: np.ndarray, state: Optional[np.ndarray] = None) -> np.ndarray:
    """Run ``q`` on float inputs (N,T,F) or token ids (N,T), as the generated C does.

    ``state``: the initial recurrent state in the flat layout of ``ir.state_slots`` as the
    C ``_set_state`` takes it (int16 values; float values for float32 models); None = zeros.

    Integer precisions return int64 arrays of int16 values (multiply by
    ``q.output_scale`` to dequantise); float32 returns float32 (via ``run_float``).
    """
    if q.precision == "float32":
        from .float_sim import run_float  # written separately; imported only when needed
        return np.asarray(run_float(as_graph(q), x, state=state), dtype=np.float32)
    return run_quant(q, quantize_model_input(q, x), state=state)

"""The float reference: a ``Graph`` computed in float32 with PyTorch's formulas.

It is what quantisation is measured against and where calibration gets its ranges:
with ``trace`` given, every intermediate tensor calibration needs is recorded under a
stable name (see :func:`run_float`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..cells import cell_of
from ..cells.base import sigmoid
from ..errors import McuNnError
from ..ops import unit_of
from ..ir import (Activation, Embedding, FinalHidden, Graph, Linear, Recurrent,
                  SelectLast, producers, split_state)

F32 = np.float32


def _act(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "relu":
        return np.maximum(x, F32(0))
    if kind == "tanh":
        return np.tanh(x)
    if kind == "sigmoid":
        return sigmoid(x, F32)
    raise McuNnError(f"float simulator: unknown activation {kind!r}; expected relu, tanh or sigmoid")


def _f32(a: Optional[np.ndarray], size: int) -> np.ndarray:
    return np.zeros(size, F32) if a is None else np.asarray(a, F32)


def _direction(op: Recurrent, d: int, x: np.ndarray, trace: Optional[dict], key: str,
               init: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run direction ``d`` of ``op`` over x (N, T, I) from the initial states ``init`` (absent =
    zeros). Returns (h sequence (N,T,S), final state of each of the cell's states)."""
    cell = cell_of(op.kind)
    dw = op.directions[d]
    n, t_len = x.shape[:2]
    rows = cell.n_gates * op.hidden_size
    w_ih, w_hh = np.asarray(dw.w_ih, F32), np.asarray(dw.w_hh, F32)
    b_ih, b_hh = _f32(dw.b_ih, rows), _f32(dw.b_hh, rows)

    xw = (input_part(op, w_ih, x) + b_ih).astype(F32)   # (N, T, G*H): input part of every step
    state = {s: np.array(init[s], F32) if init.get(s) is not None else np.zeros((n, cell.state_size(op, s)), F32)
             for s in cell.states}
    out = np.zeros((n, t_len, op.state_size), F32)
    rec: dict[str, np.ndarray] = {}
    steps = range(t_len) if d == 0 else range(t_len - 1, -1, -1)
    for t in steps:
        hw = (state["h"] @ w_hh.T + b_hh).astype(F32)
        state, traced = cell.float_step(op, dw, xw[:, t], hw, state, F32)
        state["h"] = state["h"].astype(F32)
        out[:, t] = state["h"]
        if trace is not None:
            for name, arr in traced.items():
                rec.setdefault(name, np.zeros((n, t_len) + arr.shape[1:], F32))[:, t] = arr
    if trace is not None:
        for name, arr in rec.items():
            trace[f"{key}.d{d}.{name}"] = arr
        trace[f"{key}.d{d}.h"] = out
    return out, state


def pick_columns(w: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """w @ one_hot(ids) for (N, T) ids: column id of w per step, zeros for ids outside
    [0, w.shape[1]) (as F.one_hot would refuse them, the embedding's zero vector instead)."""
    valid = (ids >= 0) & (ids < w.shape[1])
    return np.where(valid[..., None], w.T[np.where(valid, ids, 0)], 0).astype(w.dtype)


def input_part(op: Recurrent, w_ih: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W_ih x of every step: a column pick when x is token ids fed one-hot."""
    return pick_columns(w_ih, x) if op.input_ids else x @ w_ih.T


def _check_input(graph: Graph, x: np.ndarray) -> None:
    if graph.input_kind == "tokens":
        if x.ndim != 2:
            raise McuNnError(f"float simulator: token input must be (N, T) ids, got shape {x.shape}")
    elif x.ndim != 3 or x.shape[2] != graph.input_size:
        raise McuNnError(f"float simulator: input must be (N, T, {graph.input_size}), got shape {x.shape}")


def run_float(graph: Graph, x: np.ndarray, trace: Optional[dict] = None,
              state: Optional[np.ndarray] = None) -> np.ndarray:
    """Run ``graph`` on x ((N,T,F) float or (N,T) token ids) in float32.

    ``state``: the initial recurrent state in the flat layout of ``ir.state_slots``
    ((N, total) or (total,)); None = zeros, as ``_reset`` leaves the C state.
    Returns the main output: (N,T,O) if ``graph.output_per_step`` else (N,O), before any
    postprocess. The ops run in graph order over a dict of named tensors.
    With ``trace`` a dict, records float32 arrays: "input", f"op{i}.in", f"op{i}.out" and,
    per recurrent op and direction d, f"op{i}.d{d}.gates" (pre-activations (N,T,G*H); for a
    GRU the n rows hold W_in x + b_in + r*(W_hn h + b_hn)), ".h" and what the cell traces
    besides (mcu_nn.cells: ".c" of an LSTM, ".hfull" of a projected one: h before the
    projection, ".nx"/".nh" of a GRU: the n rows' halves).
    """
    return run_float_all(graph, x, trace, state)[graph.output_names[0]]


def run_float_all(graph: Graph, x: np.ndarray, trace: Optional[dict] = None,
                  state: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """As :func:`run_float`, returning every named tensor of the graph."""
    x = np.asarray(x)
    _check_input(graph, x)
    first = x.astype(np.int64) if graph.input_kind == "tokens" else x.astype(F32)
    env: dict[str, np.ndarray] = {graph.input_names[0]: first}
    if trace is not None:
        trace["input"] = first
    init = split_state(graph, state, x.shape[0], F32)
    for i, op in enumerate(graph.ops):
        key = f"op{i}"
        cur = env[op.inputs[0]]
        if trace is not None:
            trace[f"{key}.in"] = cur
        if isinstance(op, Embedding):
            table = np.asarray(op.weight, F32)
            valid = (cur >= 0) & (cur < table.shape[0])
            outs = [np.where(valid[..., None], table[np.where(valid, cur, 0)], F32(0)).astype(F32)]
        elif isinstance(op, Recurrent):
            runs = [_direction(op, d, cur, trace, key, {s: init.get((i, d, s)) for s in cell_of(op.kind).states})
                    for d in range(len(op.directions))]
            outs = [np.concatenate([r[0] for r in runs], axis=-1)]
            outs += [np.concatenate([r[1][s] for r in runs], axis=-1) for s in cell_of(op.kind).states]
        elif isinstance(op, Linear):
            w = np.asarray(op.weight, F32)
            outs = [(cur @ w.T + _f32(op.bias, w.shape[0])).astype(F32)]
        elif isinstance(op, Activation):
            outs = [_act(op.kind, cur).astype(F32)]
        elif hasattr(op, "run_float"):        # an op of mcu_nn.ops
            outs = op.run_float([env[n] for n in op.inputs])
        elif isinstance(op, SelectLast):
            outs = [cur[:, -1]]
        elif isinstance(op, FinalHidden):
            size = cur.shape[-1] // _ndirs(graph, op.inputs[0])
            outs = [np.concatenate([cur[:, d * size:(d + 1) * size] for d in op.directions], axis=-1)]
        elif unit_of(op) is not None:
            outs = unit_of(op).float_step(op, [env[n] for n in op.inputs])
        else:
            raise McuNnError(f"float simulator: unsupported op {type(op).__name__} at {key}")
        env.update(zip(op.outputs, outs))
        if trace is not None:
            trace[f"{key}.out"] = outs[0]
    return env


def run_float64(graph: Graph, x: np.ndarray, state: Optional[np.ndarray] = None) -> np.ndarray:
    """The same computation in float64: its distance from :func:`run_float` is how much
    float32 rounding moves this model's outputs (the export's float32 tolerance uses it)."""
    global F32
    saved = F32
    F32 = np.float64          # every F32 of this module is looked up at call time
    try:
        return run_float(graph, x, state=state)
    finally:
        F32 = saved


def _ndirs(graph: Graph, tensor: str) -> int:
    """Directions of the recurrent op that wrote ``tensor`` (an h_n)."""
    _, op = producers(graph)[tensor]
    if not isinstance(op, Recurrent):
        raise McuNnError(f"float simulator: FinalHidden reads {tensor!r}, which is not a recurrent op's h_n")
    return len(op.directions)

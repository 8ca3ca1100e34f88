"""The two intermediate representations every stage shares.

``Graph`` is the float model as the frontend understood it: a dataflow graph (a DAG) of
ops over named tensors. Every op lists the tensor names it reads (``inputs``) and writes
(``outputs``); ``Graph.ops`` is in a topological order, so evaluating the ops in list
order over a dict of named tensors runs the model. ``QModel`` is the same graph after
quantisation: integer weights, multipliers and shifts whose meaning is defined by
:mod:`mcu_nn.fixedpoint` (see docs/numerics.md).

Tensor names: the model input is "input"; op ``i`` writes "op{i}.out" and a recurrent
op also the final value of each state of its cell (mcu_nn.cells), every direction
concatenated: "op{i}.h_n" and, for an LSTM, "op{i}.c_n". A recurrent op reads [x] or
[x, h0] or [x, h0, c0] (states given by the caller; shapes as h_n / c_n). Ops built without names (a chain, as most code and tests
write them) are wired in list order by :func:`wire_chain` when the model is made.
Sizes, per-step-ness and scales of tensors are derived from the ops (:func:`tensors`),
so they never disagree with them.

Plain dataclasses over numpy arrays; no torch, no C. Weight matrices keep PyTorch's
gate order and shapes (rows = gate*hidden + unit); codegen chooses its own layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import numpy as np

from .cells import cell_of
from .errors import McuNnError

CellKind = str                            # a kind of mcu_nn.cells: "lstm", "gru", "rnn_tanh", ...


# ----------------------------------------------------------------------------- float IR
@dataclass
class DirectionWeights:
    """Float parameters of one direction of one recurrent layer (PyTorch shapes)."""
    w_ih: np.ndarray                      # (G*H, I)
    w_hh: np.ndarray                      # (G*H, R) where R = proj_size or H
    b_ih: Optional[np.ndarray] = None     # (G*H,) or None when bias=False
    b_hh: Optional[np.ndarray] = None     # (G*H,)
    w_hr: Optional[np.ndarray] = None     # (P, H) LSTM projection, None when proj_size=0
    extra: dict = field(default_factory=dict)   # a cell's own parameters (mcu_nn.cells), e.g. peepholes


@dataclass
class Recurrent:
    """One layer of a recurrent cell (mcu_nn.cells; a num_layers=N nn.LSTM/GRU/RNN becomes N of these)."""
    kind: CellKind
    input_size: int
    hidden_size: int
    proj_size: int                        # 0 = no projection (LSTM only)
    bidirectional: bool
    directions: list[DirectionWeights]    # 1 or 2 (forward, reverse)
    source: str = ""                      # module path, e.g. "encoder.rnn (layer 1)"
    inputs: list[str] = field(default_factory=list)    # [x] or [x, h0(, c0)]
    outputs: list[str] = field(default_factory=list)   # [out, h_n(, c_n)]
    input_ids: bool = False               # x is a token id fed one-hot (F.one_hot): W_ih @ onehot(id)
    # is column id of W_ih (zeros for ids outside [0, input_size)), picked rather than multiplied

    @property
    def state_size(self) -> int:          # size of h per direction
        return self.proj_size or self.hidden_size

    @property
    def output_size(self) -> int:         # per time step, directions concatenated
        return self.state_size * (2 if self.bidirectional else 1)


@dataclass
class Embedding:
    weight: np.ndarray                    # (V, D); only as the first op; input = token ids
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


@dataclass
class Linear:
    weight: np.ndarray                    # (O, I)
    bias: Optional[np.ndarray] = None     # (O,)
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


@dataclass
class Activation:
    kind: Literal["relu", "tanh", "sigmoid"]
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


@dataclass
class SelectLast:
    """``out[:, -1]`` of the preceding recurrent layer: sequence -> one vector.
    For a bidirectional layer that is concat(forward at T-1, reverse at T-1)."""
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


@dataclass
class FinalHidden:
    """``h_n`` of the last recurrent layer: concat of the final states of the listed
    directions (0 = forward, 1 = reverse), e.g. [0] for ``h_n[-1]`` of a unidirectional
    layer, [1] for ``h_n[-1]`` of a bidirectional one, [0, 1] for
    ``cat(h_n[-2], h_n[-1])``. Sequence -> one vector."""
    directions: list[int]
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


Op = Union[Embedding, Recurrent, Linear, Activation, SelectLast, FinalHidden]   # + the float types of mcu_nn/ops units


class _Named:
    """What Graph and QModel share: chains wired by name, and the names of the model's inputs and
    outputs (empty ``inputs``/``outputs`` mean the sequence alone / the last op's first output).
    Not a dataclass: the subclasses declare the fields."""
    ops: list
    inputs: list[str]
    outputs: list[str]

    def __post_init__(self) -> None:
        wire_chain(self.ops)

    @property
    def input_names(self) -> list[str]:
        return self.inputs or [INPUT]

    @property
    def output_names(self) -> list[str]:
        return self.outputs or ([self.ops[-1].outputs[0]] if self.ops else [INPUT])


@dataclass
class Graph(_Named):
    name: str
    input_kind: Literal["float", "tokens"]
    input_size: int                       # features F (float) or vocabulary V (tokens)
    seq_len: int                          # T of the example/declared input shape
    ops: list[Op]                         # topological order
    postprocess: Optional[Literal["softmax", "log_softmax"]] = None  # applied on the host
    source_file: str = ""
    inputs: list[str] = field(default_factory=list)   # forward's order: "input", then state inputs
    outputs: list[str] = field(default_factory=list)  # main output first, then returned states;
    # empty = only the main output, the first output of the last op
    layout: dict = field(default_factory=dict)   # the model's own axes for mcu-nn's data, see MODEL_LAYOUT


    @property
    def output_per_step(self) -> bool:
        return tensors(self)[self.output_names[0]].per_step

    @property
    def bidirectional(self) -> bool:
        return any(isinstance(o, Recurrent) and o.bidirectional for o in self.ops)

    @property
    def output_size(self) -> int:
        return tensors(self)[self.output_names[0]].size


# ----------------------------------------------------------------------------- tensors
INPUT = "input"

# mcu-nn's data is always (N, T, F) floats or (N, T) token ids, outputs (N, T, O) per step or (N, O).
# Graph.layout says where those axes sit in the model's own forward, e.g. {"input": "T,N,F",
# "output": "T*N,O"}: "T,F" / "T" is an unbatched sequence, "T*N" the rows of out.reshape(-1, H)
# (row t*N + n). It documents the model; the ops do not depend on it.
MODEL_LAYOUT = ("N,T,F", "T,N,F", "T,F", "N,T", "T,N", "T")


@dataclass
class Tensor:
    """A named value between ops: ``size`` numbers per time step (``per_step``) or once per
    sequence; ``scale`` is value = q * scale in a QModel (1.0 in a float Graph)."""
    name: str
    size: int
    per_step: bool
    scale: float = 1.0


def default_outputs(op, index: int) -> list[str]:
    names = [f"op{index}.out"]
    if is_recurrent(op):
        names += [f"op{index}.{s}_n" for s in cell_of(op.kind).states]
    return names


def wire_chain(ops: list) -> None:
    """Give ops built without tensor names the names of a chain: each reads the previous
    op's main output (the model input for the first), a FinalHidden the h_n of the last
    recurrent op before it. Ops that already have names keep them."""
    prev, last_hn = INPUT, None
    for i, op in enumerate(ops):
        if not op.outputs:
            op.outputs = default_outputs(op, i)
        if not op.inputs:
            if isinstance(op, FinalHidden):
                if last_hn is None:
                    raise McuNnError(f"{op.source or f'op {i}'}: h_n readout with no recurrent layer before it")
                op.inputs = [last_hn]
            else:
                op.inputs = [prev]
        prev = op.outputs[0]
        if is_recurrent(op):
            last_hn = op.outputs[1]


def is_recurrent(op) -> bool:
    return isinstance(op, (Recurrent, QRecurrent))


def producers(model) -> dict[str, tuple[int, object]]:
    """tensor name -> (index, op) of the op that writes it."""
    return {name: (i, op) for i, op in enumerate(model.ops) for name in op.outputs}


def state_inputs(op) -> list[str]:
    """The caller-given initial states a recurrent op reads ([] = zeros): [h0] or [h0, c0]."""
    return [n for n in op.inputs[1:] if n]


@dataclass
class StateSlot:
    """One array of the recurrent state the C state struct keeps and ``_get_state`` /
    ``_set_state`` copy: h or c of one direction of one recurrent op."""
    op_index: int
    direction: int
    what: str                             # a state of the op's cell: "h", "c"
    size: int
    scale: float                          # value = q * scale (1.0 for float models)


def state_slots(model) -> list[StateSlot]:
    """The recurrent state in its one flat layout: ops in graph order, then directions,
    then the cell's states (h before c)."""
    slots = []
    for i, op in enumerate(model.ops):
        if not is_recurrent(op):
            continue
        cell = cell_of(op.kind)
        for d in range(len(op.directions)):
            slots += [StateSlot(i, d, s, cell.state_size(op, s), cell.state_scale(op, s)) for s in cell.states]
    return slots


def split_state(model, state, batch: int, dtype) -> dict[tuple[int, int, str], np.ndarray]:
    """A flat state ((total,) or (N, total), see state_slots) -> {(op, direction, "h"|"c"): (N, size)};
    zeros for every slot when ``state`` is None."""
    slots = state_slots(model)
    total = sum(s.size for s in slots)
    if state is None:
        flat = np.zeros((batch, total), dtype)
    else:
        flat = np.asarray(state).astype(dtype)
        if flat.ndim == 1:
            flat = np.broadcast_to(flat, (batch, flat.shape[0]))
        if flat.shape != (batch, total):
            raise McuNnError(f"initial state has shape {tuple(np.shape(state))}; the model's state is {total} "
                             f"values ((N, {total}) or ({total},))")
    out, at = {}, 0
    for s in slots:
        out[(s.op_index, s.direction, s.what)] = flat[:, at:at + s.size]
        at += s.size
    return out


def tensors(model) -> dict[str, Tensor]:
    """Every tensor of a Graph or QModel by name, derived from the ops."""
    quant = hasattr(model, "input_scale") and model.precision != "float32"
    tokens = model.input_kind == "tokens"
    out = {INPUT: Tensor(INPUT, 1 if tokens else model.input_size, True,
                         model.input_scale if quant and not tokens else 1.0)}
    from .ops import unit_of               # op units (mcu_nn/ops) say their own output shapes
    for i, op in enumerate(model.ops):
        unit = unit_of(op)
        missing = [n for n in (op.inputs if unit or hasattr(op, "outs") else op.inputs[:1]) if n and n not in out]
        if missing:
            raise McuNnError(f"{getattr(op, 'source', '') or f'op {i}'} reads tensor {missing[0]!r}, which no "
                             f"earlier op writes (the ops are not in topological order)")
        x = out[op.inputs[0]]
        sizes: list[tuple[int, bool, float]]
        if isinstance(op, (Embedding, QEmbedding)):
            table = op.weight if isinstance(op, Embedding) else op.table
            sizes = [(int(table.shape[1]), x.per_step, getattr(op, "out_scale", 1.0))]
        elif is_recurrent(op):
            cell, ndir = cell_of(op.kind), len(op.directions)
            sizes = [(op.output_size, True, cell.state_scale(op, "h"))]
            sizes += [(cell.state_size(op, s) * ndir, False, cell.state_scale(op, s)) for s in cell.states]
            for name, (size, _, scale) in zip(op.inputs[1:], sizes[1:]):
                if name:
                    out[name] = Tensor(name, size, False, scale)
        elif isinstance(op, (Linear, QLinear)):
            rows = op.weight.shape[0] if isinstance(op, Linear) else op.mat.w.shape[0]
            sizes = [(int(rows), x.per_step, getattr(op, "out_scale", 1.0))]
        elif isinstance(op, (Activation, QActivation)):
            sizes = [(x.size, x.per_step, getattr(op, "out_scale", x.scale))]
        elif hasattr(op, "outs"):             # an op of mcu_nn.ops
            sizes = op.outs([out[n] for n in op.inputs])
        elif isinstance(op, SelectLast):
            sizes = [(x.size, False, x.scale)]
        elif isinstance(op, FinalHidden):
            ndir = len(producers(model)[op.inputs[0]][1].directions)
            sizes = [(x.size // ndir * len(op.directions), False, x.scale)]
        elif unit is not None:
            sizes = unit.out_shapes(op, [out[n] for n in op.inputs])
        else:
            raise McuNnError(f"unknown op {type(op).__name__} at op {i}")
        for name, (size, per_step, scale) in zip(op.outputs, sizes):
            out[name] = Tensor(name, int(size), per_step, float(scale))
    return out


def whole_sequence(model) -> bool:
    """The model needs whole sequences (no ``_step``): a bidirectional layer or an op over time
    that reads future steps or changes the rate (an op of mcu_nn.ops whose ``bidirectional``
    says so; the export manifest's "bidirectional" flag is this)."""
    return any(getattr(op, "bidirectional", False) for op in model.ops)


def macs_per_step(op: Op) -> int:
    """Multiply-accumulates one time step costs (the benchmark's definition)."""
    if is_recurrent(op):
        g, h, r = cell_of(op.kind).n_gates, op.hidden_size, op.state_size
        x_part = 0 if op.input_ids else op.input_size        # a picked column costs no multiplies
        per_dir = g * h * (x_part + r) + (op.proj_size * h if op.proj_size else 0)
        return per_dir * len(op.directions)
    if isinstance(op, Linear):
        return int(op.weight.shape[0] * op.weight.shape[1])
    if hasattr(op, "macs"):
        return op.macs()
    return 0


def param_count(op: Op) -> int:
    arrays: list[Optional[np.ndarray]] = []
    if isinstance(op, Recurrent):
        for d in op.directions:
            arrays += [d.w_ih, d.w_hh, d.b_ih, d.b_hh, d.w_hr]
    elif isinstance(op, Linear):
        arrays += [op.weight, op.bias]
    elif isinstance(op, Embedding):
        arrays += [op.weight]
    elif hasattr(op, "weight"):           # an op over time of mcu_nn.ops with parameters
        arrays += [op.weight, getattr(op, "bias", None)]
    else:
        from .ops import unit_of
        unit = unit_of(op)
        arrays += unit.params(op) if unit else []
    return int(sum(a.size for a in arrays if a is not None))


# ----------------------------------------------------------------------------- integer IR
# Every integer vector between ops is int16 with a float scale (value = q * scale).
# Scales of bounded activations are fixed: Q15 (2^-15) for h of tanh/sigmoid cells,
# Q3.12 (2^-12) for gate pre-activations. See docs/numerics.md.

@dataclass
class QMatrix:
    """A requantising matrix-vector product over one input segment:
    acc[r] = sum_j w[r, j] * x[j]   (int32 if ``acc_bits == 32`` is proven, else int64).
    The caller combines segments as rshift_round(sum(acc_s * mult_s) + bias, shift)."""
    w: np.ndarray                         # (rows, cols) int8 or int16
    mult: np.ndarray                      # (rows,) int64 holding values with |m| < 2^31
    acc_bits: int                         # 32 or 64: proven accumulator width


@dataclass
class QDirection:
    wx: QMatrix                           # input segment
    wh: QMatrix                           # recurrent segment
    bias: np.ndarray                      # (G*H,) int64 for LSTM/RNN/GRU r,z rows: b_ih+b_hh
    bias_h: Optional[np.ndarray]          # GRU only: (H,) int64 for the n rows' b_hn (bias holds b_in there)
    shift: int                            # common right shift of the gate requantisation
    proj: Optional[QMatrix] = None        # LSTM projection (P, H)
    proj_shift: int = 0
    extra: dict = field(default_factory=dict)   # a cell's own integer parameters (Cell.quant_extra)


@dataclass
class QRecurrent:
    kind: CellKind
    input_size: int
    hidden_size: int
    proj_size: int
    bidirectional: bool
    directions: list[QDirection]
    in_scale: float                       # scale of the int16 input vector
    h_scale: float                        # scale of h (2^-15 unless relu RNN or projected LSTM)
    cell_frac: int                        # LSTM: c is stored with this many fractional bits
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written
    input_ids: bool = False               # as Recurrent.input_ids: the x part is column id of wx

    @property
    def state_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def output_size(self) -> int:
        return self.state_size * (2 if self.bidirectional else 1)


@dataclass
class QLinear:
    mat: QMatrix                          # (O, I)
    bias: np.ndarray                      # (O,) int64 pre-shift
    shift: int
    in_scale: float
    out_scale: float
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


@dataclass
class QEmbedding:
    table: np.ndarray                     # (V, D) int16 (int8 values when precision=int8)
    out_scale: float
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


@dataclass
class QActivation:
    """relu keeps the scale. tanh/sigmoid: x312 = sat16(rshift_round(q * mult, shift)),
    then the Q15 table function; out_scale = 2^-15."""
    kind: Literal["relu", "tanh", "sigmoid"]
    mult: int
    shift: int
    in_scale: float
    out_scale: float
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # tensor names read
    outputs: list[str] = field(default_factory=list)   # tensor names written


QOp = Union[QEmbedding, QRecurrent, QLinear, QActivation, SelectLast, FinalHidden]   # + the quant types of mcu_nn/ops units


@dataclass
class QModel(_Named):
    name: str
    precision: Literal["int8", "int16", "float32"]
    input_kind: Literal["float", "tokens"]
    input_size: int
    seq_len: int
    ops: list                             # list[QOp]; for float32 the float ``Op``s themselves
    input_scale: float                    # float -> int16 scale of the model input (1.0 for tokens)
    output_scale: float                   # int16 -> float scale of the model output
    output_per_step: bool
    output_size: int
    max_steps: int = 0                    # >0 only for bidirectional models (buffer length)
    postprocess: Optional[str] = None
    calibration: dict = field(default_factory=dict)   # tensor name -> {min, max, scale, clipped}
    inputs: list[str] = field(default_factory=list)   # as Graph.inputs
    outputs: list[str] = field(default_factory=list)  # as Graph.outputs


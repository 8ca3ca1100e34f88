"""The two intermediate representations every stage shares.

``Graph`` is the float model as the frontend understood it: a straight chain of ops
(recurrent models deployed on MCUs are "embedding? -> RNN layers -> readout? -> head").
``QModel`` is the same chain after quantisation: integer weights, multipliers and shifts
whose meaning is defined by :mod:`mcu_nn.quant.fixedpoint` (see docs/numerics.md).

Plain dataclasses over numpy arrays; no torch, no C. Weight matrices keep PyTorch's
gate order and shapes (rows = gate*hidden + unit); codegen chooses its own layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import numpy as np

CellKind = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}  # PyTorch orders: i,f,g,o / r,z,n


# ----------------------------------------------------------------------------- float IR
@dataclass
class DirectionWeights:
    """Float parameters of one direction of one recurrent layer (PyTorch shapes)."""
    w_ih: np.ndarray                      # (G*H, I)
    w_hh: np.ndarray                      # (G*H, R) where R = proj_size or H
    b_ih: Optional[np.ndarray] = None     # (G*H,) or None when bias=False
    b_hh: Optional[np.ndarray] = None     # (G*H,)
    w_hr: Optional[np.ndarray] = None     # (P, H) LSTM projection, None when proj_size=0


@dataclass
class Recurrent:
    """One layer of an nn.LSTM/GRU/RNN (a num_layers=N module becomes N of these)."""
    kind: CellKind
    input_size: int
    hidden_size: int
    proj_size: int                        # 0 = no projection (LSTM only)
    bidirectional: bool
    directions: list[DirectionWeights]    # 1 or 2 (forward, reverse)
    source: str = ""                      # module path, e.g. "encoder.rnn (layer 1)"

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


@dataclass
class Linear:
    weight: np.ndarray                    # (O, I)
    bias: Optional[np.ndarray] = None     # (O,)
    source: str = ""


@dataclass
class Activation:
    kind: Literal["relu", "tanh", "sigmoid"]
    source: str = ""


@dataclass
class SelectLast:
    """``out[:, -1]`` of the preceding recurrent layer: sequence -> one vector.
    For a bidirectional layer that is concat(forward at T-1, reverse at T-1)."""
    source: str = ""


@dataclass
class FinalHidden:
    """``h_n`` of the last recurrent layer: concat of the final states of the listed
    directions (0 = forward, 1 = reverse), e.g. [0] for ``h_n[-1]`` of a unidirectional
    layer, [1] for ``h_n[-1]`` of a bidirectional one, [0, 1] for
    ``cat(h_n[-2], h_n[-1])``. Sequence -> one vector."""
    directions: list[int]
    source: str = ""


Op = Union[Embedding, Recurrent, Linear, Activation, SelectLast, FinalHidden]


@dataclass
class Graph:
    name: str
    input_kind: Literal["float", "tokens"]
    input_size: int                       # features F (float) or vocabulary V (tokens)
    seq_len: int                          # T of the example/declared input shape
    ops: list[Op]
    postprocess: Optional[Literal["softmax", "log_softmax"]] = None  # applied on the host
    source_file: str = ""

    @property
    def output_per_step(self) -> bool:
        return not any(isinstance(o, (SelectLast, FinalHidden)) for o in self.ops)

    @property
    def bidirectional(self) -> bool:
        return any(isinstance(o, Recurrent) and o.bidirectional for o in self.ops)

    @property
    def output_size(self) -> int:
        size = self.input_size
        for op in self.ops:
            if isinstance(op, Embedding):
                size = op.weight.shape[1]
            elif isinstance(op, Recurrent):
                size = op.output_size
            elif isinstance(op, Linear):
                size = op.weight.shape[0]
            elif isinstance(op, FinalHidden):
                size = size // (2 if _last_recurrent(self.ops).bidirectional else 1) * len(op.directions)
        return size


def _last_recurrent(ops: list[Op]) -> Recurrent:
    return [o for o in ops if isinstance(o, Recurrent)][-1]


def macs_per_step(op: Op) -> int:
    """Multiply-accumulates one time step costs (the benchmark's definition)."""
    if isinstance(op, Recurrent):
        g, h, r = GATES[op.kind], op.hidden_size, op.state_size
        per_dir = g * h * (op.input_size + r) + (op.proj_size * h if op.proj_size else 0)
        return per_dir * len(op.directions)
    if isinstance(op, Linear):
        return int(op.weight.shape[0] * op.weight.shape[1])
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


@dataclass
class QEmbedding:
    table: np.ndarray                     # (V, D) int16 (int8 values when precision=int8)
    out_scale: float
    source: str = ""


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


QOp = Union[QEmbedding, QRecurrent, QLinear, QActivation, SelectLast, FinalHidden]


@dataclass
class QModel:
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

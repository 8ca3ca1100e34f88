"""What every recurrent cell kind says about itself; the stages ask, never branch on the kind.

A cell runs one direction of one layer, one step at a time. The stages own what all cells share:
the input part ``W_ih x`` of every step (a matrix product, or a picked column for one-hot ids),
the recurrent product ``W_hh h`` of each step, the loop over time and directions, state wiring,
calibration and C scheduling. The cell owns the rest: how the gate rows combine into the next
state, in float (numpy, PyTorch's formulas) and in integers (:mod:`mcu_nn.fixedpoint` calls, the
specification the C template mirrors), plus how it is quantised and trained.

Names: the states of a direction are ``states`` (h first; an LSTM also has c), the traced
tensors (calibration, report) are "gates" (pre-activations, PyTorch's row order) and whatever
``traced`` adds (an LSTM's "c").
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import fixedpoint as fp

GATE_SCALE = 2.0 ** -fp.GATE_FRAC      # Q3.12 gate pre-activations
Q15_SCALE = 2.0 ** -fp.Q15_FRAC        # h and gate outputs of bounded cells

Arrays = dict[str, np.ndarray]
_REGISTRY: dict[str, "Cell"] = {}


def register(cell: "Cell") -> "Cell":
    _REGISTRY[cell.kind] = cell
    return cell


def registry() -> dict[str, "Cell"]:
    return _REGISTRY


def sigmoid(x: np.ndarray, dtype: type) -> np.ndarray:
    """PyTorch's sigmoid in ``dtype`` (exp(+large) -> inf -> 0, as torch)."""
    with np.errstate(over="ignore"):
        return (dtype(1) / (dtype(1) + np.exp(-x))).astype(dtype)


def unsat16(q: np.ndarray) -> np.ndarray:
    """Values that did not saturate to int16 (where QAT passes a gradient)."""
    return (q > fp.INT16_MIN) & (q < fp.INT16_MAX)


def gate_rows(pre: np.ndarray, n: int) -> list[np.ndarray]:
    """(N, n*H) rows in gate order -> n arrays (N, H)."""
    h = pre.shape[-1] // n
    return [pre[..., k * h:(k + 1) * h] for k in range(n)]


def requant_gates(qd: Any, ax: np.ndarray, ah: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """Saturated pre-activations of ``rows``: sat16(rshift_round(ax*mx + ah*mh + bias, shift))."""
    mx, mh = fp._i64(qd.wx.mult), fp._i64(qd.wh.mult)
    return fp.sat16(fp.requant([(ax[:, rows], mx[rows]), (ah[:, rows], mh[rows])], qd.bias[rows], qd.shift))


def shift_folded(v: np.ndarray, shift: int) -> np.ndarray:
    """rshift_round(u + bias, shift) from v = u + fp.rounding_bias(bias, shift): the rounding
    constant is already in v (rounding_bias and rshift_round add nothing for shift <= 0).
    Shifts v in place (the callers' own temporary)."""
    if shift > 0:
        v >>= shift
    return v


class GateRows:
    """``requant_gates(qd, ax, ah, rows)`` with what does not change from step to step prepared
    once: the multipliers as int64 and rshift_round's rounding constant folded into the bias,
      sat16(shift_folded(ax * mx + ah * mh + fp.rounding_bias(bias, shift), shift)),
    the same integers as requant's rshift_round(bias + ax * mx + ah * mh, shift) (int64 addition
    is associative, even wrapping), and the same values go through sat16 (the same counts)."""

    def __init__(self, qd: Any) -> None:
        self.shift = qd.shift
        self.mx, self.mh = fp._i64(qd.wx.mult), fp._i64(qd.wh.mult)
        self.bias = fp.rounding_bias(qd.bias, qd.shift)

    def x_only(self, ax: np.ndarray, rows: slice) -> np.ndarray:
        """requant([(ax[:, rows], mx[rows])], bias[rows], shift): rows without a recurrent term."""
        v = ax[:, rows] * self.mx[rows]
        v += self.bias[rows]
        return shift_folded(v, self.shift)

    def unsaturated(self, ax: np.ndarray, ah: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """The requantised rows before sat16."""
        v = ah[:, rows] * self.mh[rows]
        v += ax[:, rows] * self.mx[rows]
        v += self.bias[rows]
        return shift_folded(v, self.shift)

    def __call__(self, ax: np.ndarray, ah: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        return fp.sat16(self.unsaturated(ax, ah, rows))

    def activated(self, ax: np.ndarray, ah: np.ndarray, fns: tuple, hidden: int) -> list[np.ndarray]:
        """[fns[k](block k of self(ax, ah))]: row block k (``hidden`` rows) through fns[k] (a
        function of int16, e.g. fp.sigmoid_q15), by fp.sat16_lut when shift >= 1 (then
        |v >> shift| <= 2^62, as it needs). sat16's tally adds up over the blocks as over the whole."""
        rows = slice(0, len(fns) * hidden)
        pre = self.unsaturated(ax, ah, rows) if self.shift >= 1 else self(ax, ah, rows)
        act = fp.sat16_lut if self.shift >= 1 else fp.lut16
        return [act(fn, pre[:, k * hidden:(k + 1) * hidden]) for k, fn in enumerate(fns)]


# a fused step: (ax = W_ih x, ah = W_hh h, state) -> new state (see Cell.int_steps)
Step = Callable[[np.ndarray, np.ndarray, Arrays], Arrays]

# ste(exact ints, scale, float surrogate, passes=None) -> a torch tensor valued exactly
# exact * scale whose gradient is the surrogate's (see mcu_nn.qat)
Ste = Callable[..., Any]
# rec(v) = v @ W_hh^T + b_hh in torch: the recurrent product of a vector other than h (a cell
# whose recurrent matmul reads a gated h)
Rec = Callable[[Any], Any]


class Cell:
    """A recurrent cell kind. Subclasses set the class attributes and the steps; the defaults
    fit a cell whose gates are Q3.12 pre-activations and whose h is Q15."""

    kind: str = ""
    aten: tuple[str, ...] = ()          # ops of an exported graph it comes from (aten.lstm.input, ...)
    torch_module: str = ""              # nn.Module class name (TorchScript/pickled models), "" = none
    gates: tuple[str, ...] = ()         # gate names in PyTorch's row order (rows = gate * H + unit)
    states: tuple[str, ...] = ("h",)    # state tensors of a direction, h first
    template: str = ""                  # the C kernel, under templates/
    rq_type: str = "mcunn_rq_t"         # C record of one gate row's requantisation
    extra_params: tuple[str, ...] = ()  # parameters after PyTorch's (w_ih, w_hh, b_ih, b_hh) in the op's
    # list, read into DirectionWeights.extra under these names (a peephole LSTM's "peephole")

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    def state_size(self, op: Any, name: str) -> int:
        """Values per direction of state ``name`` (h has proj_size when projected)."""
        return op.state_size if name == "h" else op.hidden_size

    def state_scale(self, layer: Any, name: str) -> float:
        """value = q * scale of state ``name`` of a QRecurrent (1.0 for float ops)."""
        if not hasattr(layer, "h_scale"):
            return 1.0
        return layer.h_scale if name == "h" else 2.0 ** -layer.cell_frac

    # ---------------------------------------------------------------- float
    def float_step(self, op: Any, dw: Any, xw: np.ndarray, hw: np.ndarray, state: Arrays,
                   dtype: type) -> tuple[Arrays, Arrays]:
        """One step in ``dtype``: xw = W_ih x + b_ih, hw = W_hh h + b_hh (N, G*H).
        Returns (new state, traced tensors: "gates" first)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- quantisation
    def quant_state(self, op: Any, calibrated: Callable[[str], float]) -> tuple[float, int]:
        """(h_scale, cell_frac) from ``calibrated(name)``, the |value| range of a traced tensor."""
        return Q15_SCALE, 0

    def pre_scale(self, h_scale: float) -> float:
        """Scale of the requantised gate rows."""
        return GATE_SCALE

    def biases(self, b_ih: np.ndarray, b_hh: np.ndarray, hidden: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(bias of every gate row, a second bias kept apart or None), both float."""
        return b_ih + b_hh, None

    def quant_extra(self, dw: Any, h_scale: float, cell_frac: int, where: str) -> dict:
        """The integer form of the cell's own parameters (``dw.extra``), for ``QDirection.extra``."""
        return {}

    def traced(self, layer: Any) -> dict[str, tuple[float, str]]:
        """Traced tensors besides h: name -> (scale, what counts as clipped in the calibration
        report: "over_q312", "over_q15", "clipped" or "none")."""
        return {"gates": (GATE_SCALE, "over_q312")}

    # ---------------------------------------------------------------- integers
    def int_step(self, layer: Any, qd: Any, ax: np.ndarray, ah: np.ndarray, state: Arrays,
                 detail: bool = False) -> tuple[Arrays, Arrays]:
        """One integer step from the accumulators ax = W_ih x, ah = W_hh h (int64, (N, G*H)).
        Returns (new state, parts): parts holds the traced tensors' integers and, with
        ``detail``, every intermediate the QAT surrogate reads."""
        raise NotImplementedError

    def int_steps(self, layer: Any, qd: Any, product: Callable) -> Optional[Step]:
        """A fused form of ``int_step`` for a run that traces nothing, or None (then the simulator
        calls ``int_step`` each step). Returns step(ax, ah, state) -> new state, the same integers
        as int_step(layer, qd, ax, ah, state)[0] with the same values through fp.sat16 (the same
        saturation counts), from constants prepared once per run (GateRows), activations looked
        up in fp.int16_lut tables and no intermediates kept. ``product(w)`` prepares the exact
        product v -> fp.matvec(w, v) of a matrix of the cell's own (a projection). Checked
        against int_step by tests/test_sim_fast.py."""
        return None

    def qat_step(self, layer: Any, new: Arrays, parts: Arrays, xw: Any, hw: Any, values: dict,
                 ste: Ste, rec: Rec) -> dict:
        """The float torch formula of one step, only for gradients: each result is
        ``ste(exact ints, scale, surrogate, passes)`` of ``int_step``'s integers. xw, hw: torch
        surrogates of the two products; values: the previous state's tensors; rec: the recurrent
        product's surrogate of another vector in h's place (hw is rec(values["h"]))."""
        raise NotImplementedError

    # ---------------------------------------------------------------- C
    def c_arrays(self, b: Any, name: str, qd: Any, what: str) -> dict:
        """Template names of the cell's own parameter arrays, added with ``b.arr(ctype, name + suffix,
        values, what)`` (``qd``: a QDirection, or DirectionWeights in a float32 model)."""
        return {}

    def rq_records(self, rq: np.ndarray, qd: Any, hidden: int) -> np.ndarray:
        """The requantisation records of one direction in kernel order, from ``rq`` (rows in
        group order: rounded bias, mx, mh)."""
        return rq

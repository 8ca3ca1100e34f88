"""The peephole LSTM (Gers & Schmidhuber): an LSTM whose i and f gates also see c_{t-1} and
whose o gate sees c_t, through diagonal weights p_i, p_f, p_o (``DirectionWeights.extra
["peephole"]``, (3, H) in that order). No projection.

Integers: the LSTM's saturated Q3.12 pre-activations plus fixedpoint.peephole terms: p is int16
per gate with its own shift, chosen so that p * c (c in the cell format) lands in Q3.12."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import fixedpoint as fp
from ..errors import McuNnError
from .base import GATE_SCALE, Q15_SCALE, Arrays, Rec, Ste, gate_rows, register, requant_gates, sigmoid, unsat16
from .lstm import LSTM

MAX_SHIFT = 30            # fixedpoint.peephole keeps p * c and its rounding add inside int32


def _weights(dw: Any, dtype: type) -> np.ndarray:
    p = dw.extra.get("peephole")
    if p is None or np.shape(p)[0] != 3:
        raise McuNnError("a peephole_lstm direction needs extra['peephole']: the (3, H) weights p_i, p_f, p_o")
    return np.asarray(p, dtype)


class PeepholeLSTM(LSTM):
    kind = "peephole_lstm"
    aten = ("mcu_nn.peephole_lstm.input",)   # no torch module: the op a folded hand-written loop becomes
    torch_module = ""
    extra_params = ("peephole",)
    template = "cells/peephole_lstm.c.j2"

    def float_step(self, op: Any, dw: Any, xw: np.ndarray, hw: np.ndarray, state: Arrays,
                   dtype: type) -> tuple[Arrays, Arrays]:
        p = _weights(dw, dtype)
        c = state["c"]
        pre = xw + hw
        pre_i, pre_f, pre_g, pre_o = gate_rows(pre, 4)
        pre_i, pre_f = pre_i + p[0] * c, pre_f + p[1] * c
        c = sigmoid(pre_f, dtype) * c + sigmoid(pre_i, dtype) * np.tanh(pre_g)
        pre_o = pre_o + p[2] * c
        h = sigmoid(pre_o, dtype) * np.tanh(c)
        return {"h": h, "c": c}, {"gates": np.concatenate([pre_i, pre_f, pre_g, pre_o], axis=1), "c": c}

    def quant_extra(self, dw: Any, h_scale: float, cell_frac: int, where: str) -> dict:
        if dw.w_hr is not None:
            raise McuNnError(f"{where}: a peephole LSTM has no projection (proj_size must be 0)")
        p = _weights(dw, np.float64)
        # p * c_q * 2^(12 - cell_frac) is the term in Q3.12: p = p_q * 2^-(12 - cell_frac + shift)
        shifts = []
        for row in p:
            amax = float(np.abs(row).max(initial=0.0))
            fits = [s for s in range(MAX_SHIFT + 1) if amax * 2.0 ** (fp.GATE_FRAC - cell_frac + s) <= fp.INT16_MAX]
            if not fits:
                raise McuNnError(f"{where}: peephole weight {amax:g} does not fit int16 against the cell format "
                                 f"(2^-{cell_frac}); the weights or the calibrated cell range are too large")
            shifts.append(fits[-1])
        scale = np.array([2.0 ** (fp.GATE_FRAC - cell_frac + s) for s in shifts])[:, None]
        return {"p": np.round(p * scale).astype(np.int64), "shift": shifts}

    def int_step(self, layer: Any, qd: Any, ax: np.ndarray, ah: np.ndarray, state: Arrays,
                 detail: bool = False) -> tuple[Arrays, Arrays]:
        p, shift, frac = qd.extra["p"], qd.extra["shift"], layer.cell_frac
        pre_i, pre_f, pre_g, pre_o = gate_rows(requant_gates(qd, ax, ah), 4)
        pre_i = fp.peephole(pre_i, p[0], state["c"], shift[0])
        pre_f = fp.peephole(pre_f, p[1], state["c"], shift[1])
        c = fp.lstm_c(pre_i, pre_f, pre_g, state["c"], frac)
        pre_o = fp.peephole(pre_o, p[2], c, shift[2])
        parts = {"gates": np.concatenate([pre_i, pre_f, pre_g, pre_o], axis=1), "c": c}
        if detail:       # the activations and the peepholes' values, for the QAT surrogate
            parts.update(i=fp.sigmoid_q15(pre_i), f=fp.sigmoid_q15(pre_f), g=fp.tanh_q15(pre_g),
                         o=fp.sigmoid_q15(pre_o),
                         peep=p * np.array([2.0 ** -(fp.GATE_FRAC - frac + s) for s in shift])[:, None])
        return {"h": fp.lstm_h(pre_o, c, frac), "c": c}, parts

    def int_steps(self, layer: Any, qd: Any, product: Any) -> None:
        return None      # no fused form (LSTM's would leave the peepholes out): int_step runs each step

    def qat_step(self, layer: Any, new: Arrays, parts: Arrays, xw: Any, hw: Any, values: dict,
                 ste: Ste, rec: Rec) -> dict:
        p = values["c"].new_tensor(parts["peep"])
        s = gate_rows(xw + hw, 4)
        q = gate_rows(parts["gates"], 4)

        def gate(k: int, surrogate: Any) -> Any:
            return ste(q[k], GATE_SCALE, surrogate, unsat16(q[k]))

        i = ste(parts["i"], Q15_SCALE, gate(0, s[0] + p[0] * values["c"]).sigmoid())
        f = ste(parts["f"], Q15_SCALE, gate(1, s[1] + p[1] * values["c"]).sigmoid())
        g = ste(parts["g"], Q15_SCALE, gate(2, s[2]).tanh())
        c = ste(new["c"], 2.0 ** -layer.cell_frac, f * values["c"] + i * g, unsat16(new["c"]))
        o = ste(parts["o"], Q15_SCALE, gate(3, s[3] + p[2] * c).sigmoid())
        return {"h": ste(new["h"], Q15_SCALE, o * c.tanh()), "c": c}

    def c_arrays(self, b: Any, name: str, qd: Any, what: str) -> dict:
        if b.fp:
            return {"peep": b.arr("float", name + "_peep", _weights(qd, np.float32), what)}
        return {"peep": b.arr("int16_t", name + "_peep", qd.extra["p"], what + " peepholes"),
                "peep_shift": [int(s) for s in qd.extra["shift"]]}


register(PeepholeLSTM())

"""nn.LSTM: gates i, f, g, o; states h and c (c in its own fixed-point format, ``cell_frac``
fractional bits chosen from calibration); an optional projection h = W_hr (o * tanh(c))."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import fixedpoint as fp
from ..quant.quantize import ACT_MAX, act_scale
from .base import (GATE_SCALE, Q15_SCALE, Arrays, Cell, GateRows, Rec, Ste, Step, gate_rows,
                   register, requant_gates, sigmoid, unsat16)


def cell_frac_for(cmax: float) -> int:
    """Most fractional bits (0..15) that hold |c| <= cmax in int16."""
    return max([f for f in range(16) if cmax * 2.0 ** f <= ACT_MAX], default=0)


class LSTM(Cell):
    kind = "lstm"
    aten = ("aten.lstm.input",)
    torch_module = "LSTM"
    gates = ("i", "f", "g", "o")
    states = ("h", "c")
    template = "cells/lstm.c.j2"

    def float_step(self, op: Any, dw: Any, xw: np.ndarray, hw: np.ndarray, state: Arrays,
                   dtype: type) -> tuple[Arrays, Arrays]:
        pre = xw + hw
        i, f, g, o = gate_rows(pre, 4)
        i, f, g, o = sigmoid(i, dtype), sigmoid(f, dtype), np.tanh(g), sigmoid(o, dtype)
        c = f * state["c"] + i * g
        hfull = o * np.tanh(c)
        traced = {"gates": pre, "c": c}
        if dw.w_hr is None:
            return {"h": hfull, "c": c}, traced
        traced["hfull"] = hfull
        return {"h": hfull @ np.asarray(dw.w_hr, dtype).T, "c": c}, traced

    def quant_state(self, op: Any, calibrated: Callable[[str], float]) -> tuple[float, int]:
        h_scale = act_scale(calibrated("h")) if op.proj_size else Q15_SCALE
        return h_scale, cell_frac_for(calibrated("c"))

    def traced(self, layer: Any) -> dict[str, tuple[float, str]]:
        frac = layer.cell_frac
        return {"gates": (GATE_SCALE, "over_q312"), "c": (2.0 ** -frac, "over_q15" if frac == 15 else "clipped")}

    def int_step(self, layer: Any, qd: Any, ax: np.ndarray, ah: np.ndarray, state: Arrays,
                 detail: bool = False) -> tuple[Arrays, Arrays]:
        pre = requant_gates(qd, ax, ah)
        g = gate_rows(pre, 4)
        c, hfull = fp.lstm_cell(g[0], g[1], g[2], g[3], state["c"], layer.cell_frac)
        parts = {"gates": pre, "c": c}
        if detail:       # the activations inside lstm_cell, for the QAT surrogate
            parts.update(i=fp.sigmoid_q15(g[0]), f=fp.sigmoid_q15(g[1]), g=fp.tanh_q15(g[2]),
                         o=fp.sigmoid_q15(g[3]))
        h = hfull
        if qd.proj is not None:
            h = fp.sat16(fp.requant([(fp.matvec(qd.proj.w, hfull), qd.proj.mult)], 0, qd.proj_shift))
        return {"h": h, "c": c}, parts

    def int_steps(self, layer: Any, qd: Any, product: Callable) -> Optional[Step]:
        # int_step with fp.lstm_cell spelled out (lstm_c, lstm_h), activations looked up
        gates = GateRows(qd)
        fns = (fp.sigmoid_q15, fp.sigmoid_q15, fp.tanh_q15, fp.sigmoid_q15)
        frac, hid = layer.cell_frac, layer.hidden_size
        proj = product(qd.proj.w) if qd.proj is not None else None

        def step(ax: np.ndarray, ah: np.ndarray, state: Arrays) -> Arrays:
            i, f, g, o = gates.activated(ax, ah, fns, hid)
            c = fp.sat16(fp.mul_q15(f, state["c"]) + fp.rshift_round(i * g, 2 * fp.Q15_FRAC - frac))  # lstm_c
            h = fp.sat16(fp.mul_q15(o, fp.lut16(fp.tanh_q15, fp.frac_to_q312(c, frac))))             # lstm_h
            if proj is not None:
                h = fp.sat16(fp.requant([(proj(h), qd.proj.mult)], 0, qd.proj_shift))
            return {"h": h, "c": c}
        return step

    def qat_step(self, layer: Any, new: Arrays, parts: Arrays, xw: Any, hw: Any, values: dict,
                 ste: Ste, rec: Rec) -> dict:
        pre = parts["gates"]
        gv = gate_rows(ste(pre, GATE_SCALE, xw + hw, unsat16(pre)), 4)
        i = ste(parts["i"], Q15_SCALE, gv[0].sigmoid())
        f = ste(parts["f"], Q15_SCALE, gv[1].sigmoid())
        g = ste(parts["g"], Q15_SCALE, gv[2].tanh())
        o = ste(parts["o"], Q15_SCALE, gv[3].sigmoid())
        c = ste(new["c"], 2.0 ** -layer.cell_frac, f * values["c"] + i * g, unsat16(new["c"]))
        return {"h": ste(new["h"], Q15_SCALE, o * c.tanh()), "c": c}


register(LSTM())

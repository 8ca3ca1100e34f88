"""nn.GRU: gates r, z, n with PyTorch's n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); the n rows'
two halves are requantised apart (to int32, so that r * n_h may cancel a large n_x)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import fixedpoint as fp
from .base import (GATE_SCALE, Q15_SCALE, Arrays, Cell, GateRows, Rec, Ste, Step, register, requant_gates,
                   shift_folded, sigmoid, unsat16)


class GRU(Cell):
    kind = "gru"
    aten = ("aten.gru.input",)
    torch_module = "GRU"
    gates = ("r", "z", "n")
    template = "cells/gru.c.j2"
    rq_type = "mcunn_rq_gru_t"

    def float_step(self, op: Any, dw: Any, xw: np.ndarray, hw: np.ndarray, state: Arrays,
                   dtype: type) -> tuple[Arrays, Arrays]:
        hsz = op.hidden_size
        rz = xw[:, :2 * hsz] + hw[:, :2 * hsz]
        r, z = sigmoid(rz[:, :hsz], dtype), sigmoid(rz[:, hsz:], dtype)
        nx, nh = xw[:, 2 * hsz:], hw[:, 2 * hsz:]
        npre = nx + r * nh
        h = (dtype(1) - z) * np.tanh(npre) + z * state["h"]
        return {"h": h}, {"gates": np.concatenate([rz, npre], axis=1), "nx": nx, "nh": nh}

    def biases(self, b_ih: np.ndarray, b_hh: np.ndarray, hidden: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        # the n rows keep b_hn apart: it is multiplied by r
        rz = slice(0, 2 * hidden)
        return np.concatenate([b_ih[rz] + b_hh[rz], b_ih[2 * hidden:]]), b_hh[2 * hidden:]

    def int_step(self, layer: Any, qd: Any, ax: np.ndarray, ah: np.ndarray, state: Arrays,
                 detail: bool = False) -> tuple[Arrays, Arrays]:
        hid = layer.hidden_size
        nr = slice(2 * hid, 3 * hid)
        mx, mh = fp._i64(qd.wx.mult), fp._i64(qd.wh.mult)
        pre = requant_gates(qd, ax, ah, slice(0, 2 * hid))
        n_x = fp.sat32(fp.requant([(ax[:, nr], mx[nr])], qd.bias[nr], qd.shift))
        n_h = fp.sat32(fp.requant([(ah[:, nr], mh[nr])], qd.bias_h, qd.shift))
        parts = {"pre": pre, "nx": n_x, "nh": n_h}
        if detail:       # the n gate as gru_cell forms it: the traced gates and the QAT surrogate
            r, z = fp.sigmoid_q15(pre[:, :hid]), fp.sigmoid_q15(pre[:, hid:])
            n_pre = fp.sat16(n_x + fp.rshift_round(r * n_h, 15))
            parts.update(gates=np.concatenate([pre, n_pre], axis=1), r=r, z=z, n_pre=n_pre,
                         n=fp.tanh_q15(n_pre))
        return {"h": fp.gru_cell(pre[:, :hid], pre[:, hid:], n_x, n_h, state["h"])}, parts

    def int_steps(self, layer: Any, qd: Any, product: Callable) -> Optional[Step]:
        # int_step with fp.gru_cell and fp.gru_mix spelled out, activations looked up
        hid = layer.hidden_size
        nr = slice(2 * hid, 3 * hid)
        gates = GateRows(qd)
        mh_n, bias_h = fp._i64(qd.wh.mult)[nr], fp.rounding_bias(qd.bias_h, qd.shift)

        def step(ax: np.ndarray, ah: np.ndarray, state: Arrays) -> Arrays:
            r, z = gates.activated(ax, ah, (fp.sigmoid_q15, fp.sigmoid_q15), hid)
            n_x = fp.sat32(gates.x_only(ax, nr))
            n_h = fp.sat32(shift_folded(ah[:, nr] * mh_n + bias_h, qd.shift))
            # gru_cell's n (|n_x + rshift_round(r * n_h, 15)| < 2^32, as sat16_lut needs), then gru_mix
            n = fp.sat16_lut(fp.tanh_q15, n_x + fp.rshift_round(r * n_h, 15))
            return {"h": fp.sat16(n + fp.rshift_round(z * (state["h"] - n), 15))}
        return step

    def qat_step(self, layer: Any, new: Arrays, parts: Arrays, xw: Any, hw: Any, values: dict,
                 ste: Ste, rec: Rec) -> dict:
        hid = layer.hidden_size
        rz, nr = slice(0, 2 * hid), slice(2 * hid, 3 * hid)
        pre = ste(parts["pre"], GATE_SCALE, xw[:, rz] + hw[:, rz], unsat16(parts["pre"]))
        nx = ste(parts["nx"], GATE_SCALE, xw[:, nr])
        nh = ste(parts["nh"], GATE_SCALE, hw[:, nr])
        r = ste(parts["r"], Q15_SCALE, pre[:, :hid].sigmoid())
        z = ste(parts["z"], Q15_SCALE, pre[:, hid:].sigmoid())
        n = ste(parts["n"], Q15_SCALE, (nx + r * nh).tanh(), unsat16(parts["n_pre"]))
        return {"h": ste(new["h"], Q15_SCALE, (1 - z) * n + z * values["h"])}

    def rq_records(self, rq: np.ndarray, qd: Any, hidden: int) -> np.ndarray:
        # one record block per unit: r, z, n, then the n row's bias_h
        return np.concatenate([rq.reshape(hidden, 9),
                               fp.rounding_bias(qd.bias_h, qd.shift).reshape(hidden, 1)], axis=1)


register(GRU())

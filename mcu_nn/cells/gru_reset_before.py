"""The textbook GRU (Cho et al. 2014; Keras reset_after=False): the reset gate multiplies h
before the candidate's recurrent matmul, n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
Parameters in nn.GRU's layout (rows r, z, n); no torch module: the op a folded loop becomes.

Integers: r, z as the GRU's (saturated Q3.12 rows of the fused product). r * h is rounded to
Q15, h's own scale (r <= 1), so the n rows' recurrent product W_hn (r * h) reuses h's weights
and multipliers, and b_hn (not gated by r here) folds into the n rows' bias: n's pre-activation
is one ordinary requantisation. Then fixedpoint.gru_mix. The stage's W_hn h is not used."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import fixedpoint as fp
from .base import GATE_SCALE, Q15_SCALE, Arrays, Cell, Rec, Ste, register, requant_gates, sigmoid, unsat16


class GRUResetBefore(Cell):
    kind = "gru_reset_before"
    aten = ("mcu_nn.gru_reset_before.input",)
    torch_module = ""
    gates = ("r", "z", "n")
    template = "cells/gru_reset_before.c.j2"

    def float_step(self, op: Any, dw: Any, xw: np.ndarray, hw: np.ndarray, state: Arrays,
                   dtype: type) -> tuple[Arrays, Arrays]:
        hsz, h = op.hidden_size, state["h"]
        nr = slice(2 * hsz, 3 * hsz)
        rz = xw[:, :2 * hsz] + hw[:, :2 * hsz]
        r, z = sigmoid(rz[:, :hsz], dtype), sigmoid(rz[:, hsz:], dtype)
        nh = (r * h) @ np.asarray(dw.w_hh, dtype)[nr].T
        if dw.b_hh is not None:
            nh = nh + np.asarray(dw.b_hh, dtype)[nr]
        npre = (xw[:, nr] + nh).astype(dtype)
        h = (dtype(1) - z) * np.tanh(npre) + z * h
        return {"h": h}, {"gates": np.concatenate([rz, npre], axis=1)}

    def int_step(self, layer: Any, qd: Any, ax: np.ndarray, ah: np.ndarray, state: Arrays,
                 detail: bool = False) -> tuple[Arrays, Arrays]:
        hid, h = layer.hidden_size, state["h"]
        nr = slice(2 * hid, 3 * hid)
        pre = requant_gates(qd, ax, ah, slice(0, 2 * hid))
        r = fp.sigmoid_q15(pre[:, :hid])
        rh = fp.mul_q15(r, h)                             # |r * h| rounds to <= 32767: no saturation
        ah_n = fp.matvec(qd.wh.w[nr], rh)
        n_pre = fp.sat16(fp.requant([(ax[:, nr], fp._i64(qd.wx.mult)[nr]), (ah_n, fp._i64(qd.wh.mult)[nr])],
                                    qd.bias[nr], qd.shift))
        parts = {"gates": np.concatenate([pre, n_pre], axis=1)}
        if detail:       # the activations, for the QAT surrogate
            parts.update(r=r, z=fp.sigmoid_q15(pre[:, hid:]), rh=rh, n=fp.tanh_q15(n_pre))
        return {"h": fp.gru_mix(pre[:, hid:], n_pre, h)}, parts

    def qat_step(self, layer: Any, new: Arrays, parts: Arrays, xw: Any, hw: Any, values: dict,
                 ste: Ste, rec: Rec) -> dict:
        hid = layer.hidden_size
        rz, nr = slice(0, 2 * hid), slice(2 * hid, 3 * hid)
        q = parts["gates"]
        pre = ste(q[:, rz], GATE_SCALE, xw[:, rz] + hw[:, rz], unsat16(q[:, rz]))
        r = ste(parts["r"], Q15_SCALE, pre[:, :hid].sigmoid())
        z = ste(parts["z"], Q15_SCALE, pre[:, hid:].sigmoid())
        rh = ste(parts["rh"], Q15_SCALE, r * values["h"])
        n = ste(parts["n"], Q15_SCALE, (xw[:, nr] + rec(rh)[:, nr]).tanh(), unsat16(q[:, nr]))
        return {"h": ste(new["h"], Q15_SCALE, (1 - z) * n + z * values["h"])}


register(GRUResetBefore())

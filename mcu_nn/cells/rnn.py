"""nn.RNN (Elman), both nonlinearities: one gate row per unit, h = tanh(pre) in Q15, or
h = relu(pre), unbounded, so h and the requantised rows share one calibrated scale."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import fixedpoint as fp
from ..quant.quantize import act_scale
from .base import (GATE_SCALE, Q15_SCALE, Arrays, Cell, GateRows, Rec, Ste, Step, register, requant_gates,
                   unsat16)


class Elman(Cell):
    torch_module = "RNN"
    gates = ("a",)
    template = "cells/rnn.c.j2"

    def __init__(self, nonlinearity: str) -> None:
        self.relu = nonlinearity == "relu"
        self.kind = f"rnn_{nonlinearity}"
        self.aten = (f"aten.rnn_{nonlinearity}.input",)

    def float_step(self, op: Any, dw: Any, xw: np.ndarray, hw: np.ndarray, state: Arrays,
                   dtype: type) -> tuple[Arrays, Arrays]:
        pre = xw + hw
        return {"h": np.maximum(pre, dtype(0)) if self.relu else np.tanh(pre)}, {"gates": pre}

    def quant_state(self, op: Any, calibrated: Callable[[str], float]) -> tuple[float, int]:
        return (act_scale(calibrated("h")) if self.relu else Q15_SCALE), 0

    def pre_scale(self, h_scale: float) -> float:
        return h_scale if self.relu else GATE_SCALE

    def traced(self, layer: Any) -> dict[str, tuple[float, str]]:
        return {"gates": (layer.h_scale, "none")} if self.relu else super().traced(layer)

    def int_step(self, layer: Any, qd: Any, ax: np.ndarray, ah: np.ndarray, state: Arrays,
                 detail: bool = False) -> tuple[Arrays, Arrays]:
        pre = requant_gates(qd, ax, ah)
        return {"h": fp.relu(pre) if self.relu else fp.tanh_q15(pre)}, {"gates": pre}

    def int_steps(self, layer: Any, qd: Any, product: Callable) -> Optional[Step]:
        gates = GateRows(qd)
        if self.relu:
            return lambda ax, ah, state: {"h": fp.relu(gates(ax, ah))}
        return lambda ax, ah, state: {"h": gates.activated(ax, ah, (fp.tanh_q15,), layer.hidden_size)[0]}

    def qat_step(self, layer: Any, new: Arrays, parts: Arrays, xw: Any, hw: Any, values: dict,
                 ste: Ste, rec: Rec) -> dict:
        passes = unsat16(parts["gates"])
        if self.relu:
            return {"h": ste(new["h"], layer.h_scale, (xw + hw).relu(), passes)}
        return {"h": ste(new["h"], Q15_SCALE, ste(parts["gates"], GATE_SCALE, xw + hw, passes).tanh())}


register(Elman("tanh"))
register(Elman("relu"))

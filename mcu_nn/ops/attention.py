"""Attention pooling over time: softmax over the TIME axis of one score per step, then the
weighted sum of the value vectors (``torch.sum(softmax(score(out), dim=1) * out, dim=1)`` or
``torch.bmm(weights.transpose(1, 2), out)``).

The scores come from ordinary per-step ops (Linear(H, 1), or a small MLP with tanh); this op
reads [values, scores]. The integer op is fixedpoint's one-pass softmax_pool (running max,
running sum of Q30 weights, weighted sum): O(H) state, so it streams, and a stream cut
anywhere gives the bits of the whole sequence. Output in the values' scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import McuNnError
from .. import fixedpoint as fp
from ._common import MAX_ACC_STEPS

F32 = np.float32


@dataclass
class AttentionPool:
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # [values (per step, H), scores (per step, 1)]
    outputs: list[str] = field(default_factory=list)
    template = "ops/attention.c.j2"
    exp_mult: int = 0                     # integer op: exp_neg_q30's multiplier and shift for the
    exp_shift: int = 0                    # scores' scale
    scale: float = 0.0                    # integer op: the values' scale (0: float op)

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(xs[0].size, False, self.scale or xs[0].scale)]

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        v, x = np.asarray(xs[0], F32), np.asarray(xs[1], F32)[..., 0]
        v, x = v[:, :MAX_ACC_STEPS], x[:, :MAX_ACC_STEPS]
        if x.shape[1] == 0:
            return [np.zeros((v.shape[0], v.shape[2]), F32)]
        e = np.exp(x - x.max(axis=1, keepdims=True))
        w = e / e.sum(axis=1, keepdims=True)
        return [(w[..., None] * v).sum(axis=1, dtype=F32).astype(F32)]

    def run_int(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        v, x = fp._i64(xs[0])[:, :MAX_ACC_STEPS], fp._i64(xs[1])[:, :MAX_ACC_STEPS, 0]
        return [fp.softmax_pool(x, v, self.exp_mult, self.exp_shift)]

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str,
                 where: str) -> "AttentionPool":
        mult, shift = exp_params(in_scales[1], where)
        return AttentionPool(self.source, list(self.inputs), list(self.outputs), mult, shift, in_scales[0])


def exp_params(score_scale: float, where: str) -> tuple[int, int]:
    """mult, shift of fixedpoint.exp_neg_q30 for int16 scores of scale ``score_scale``:
    mult = round(s * log2(e) * 2^(12 + shift)), the largest shift keeping mult < 2^30."""
    real = score_scale * math.log2(math.e) * 2.0 ** fp.EXP2_FRAC
    for shift in range(40, -1, -1):
        mult = round(real * 2.0 ** shift)
        if 0 < mult < (1 << 30):
            return int(mult), shift
    raise McuNnError(f"{where}: attention scores of scale {score_scale:g} are out of the exp's range")

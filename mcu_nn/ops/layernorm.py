"""nn.LayerNorm over the feature axis (e.g. GRU -> LayerNorm -> Linear).

Integer scheme: fixedpoint.layernorm normalises the int16 input (any scale; eps enters as
eps_q = eps * n^2 / s^2) to ``out_frac`` fractional bits, where out_frac is the most that
max |(x - mean) / std| = sqrt(n - 1) allows, so normalising never saturates; then
fixedpoint.layernorm_affine applies gamma / beta and requantises into the output scale, which
comes from the calibrated range of the result."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import McuNnError
from .. import fixedpoint as fp
from . import register
from .unit import EmitCtx, OpUnit, QuantCtx


@dataclass
class LayerNorm:
    size: int                             # n, the normalised (last) axis
    eps: float
    weight: Optional[np.ndarray] = None   # (n,) gamma; None = ones (elementwise_affine=False)
    bias: Optional[np.ndarray] = None     # (n,) beta; None = zeros
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class QLayerNorm:
    eps_q: int
    out_frac: int                         # fractional bits of the normalised values
    gamma_m: np.ndarray                   # (n,) int64 holding |m| < 2^31
    beta_b: np.ndarray                    # (n,) int64
    shift: int
    in_scale: float
    out_scale: float
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def norm_frac(n: int) -> int:
    """Fractional bits of the normalised values: sqrt(n - 1) * 2^f must fit int16."""
    bound = math.sqrt(max(n - 1, 0))
    return max([f for f in range(16) if bound * 2.0 ** f <= fp.INT16_MAX], default=0)


class LayerNormUnit(OpUnit):
    float_types = (LayerNorm,)
    quant_types = (QLayerNorm,)

    def out_shapes(self, op, ins):
        n = len(op.gamma_m) if isinstance(op, QLayerNorm) else op.size
        if n != ins[0].size:
            raise McuNnError(f"{op.source or 'LayerNorm'}: normalises {n} features but its input has {ins[0].size}")
        return [(ins[0].size, ins[0].per_step, getattr(op, "out_scale", 1.0))]

    def float_step(self, op: LayerNorm, ins):
        x = np.asarray(ins[0], np.float64)
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        y = (x - mean) / np.sqrt(var + op.eps)
        if op.weight is not None:
            y = y * np.asarray(op.weight, np.float64)
        if op.bias is not None:
            y = y + np.asarray(op.bias, np.float64)
        return [y.astype(np.float32)]

    def params(self, op):
        return [op.weight, op.bias]

    def quantize(self, op: LayerNorm, ctx: QuantCtx) -> QLayerNorm:
        from ..quant.quantize import ACT_BOUND, _mult_ints, choose_shift
        s = ctx.in_scales[0]
        n = op.size
        frac = norm_frac(n)
        eps_q = int(min(max(round(op.eps * n * n / (s * s)), 1), fp.LN_EPS_MAX))
        so = ctx.out_scale()
        gamma = np.ones(n) if op.weight is None else np.asarray(op.weight, np.float64)
        beta = np.zeros(n) if op.bias is None else np.asarray(op.bias, np.float64)
        gm, bb = gamma * 2.0 ** -frac / so, beta / so
        shift = choose_shift([gm], [[ACT_BOUND] * n], [bb], ctx.where)
        return QLayerNorm(eps_q, frac, _mult_ints(gm, shift), _mult_ints(bb, shift), shift, s, so, source=op.source)

    def int_step(self, op: QLayerNorm, ins):
        y = fp.layernorm(ins[0], op.eps_q, op.out_frac)
        return [fp.layernorm_affine(y, op.gamma_m, op.beta_b, op.shift)]

    def render(self, op, ctx: EmitCtx) -> str:
        from ..codegen.emit import f32_literal
        n = ctx.out_size
        L = {"source": op.source or f"op {ctx.k}"}
        if ctx.fp:
            gamma = np.ones(n, np.float32) if op.weight is None else op.weight
            beta = np.zeros(n, np.float32) if op.bias is None else op.bias
            L.update(eps=f32_literal(op.eps), gamma=ctx.arr("float", "gamma", gamma, L["source"]),
                     beta=ctx.arr("float", "beta", beta, L["source"]))
        else:
            L.update(eps_q=int(op.eps_q), out_frac=int(op.out_frac), shift=int(op.shift),
                     gamma=ctx.arr("int32_t", "gamma_m", np.asarray(op.gamma_m, np.int64), L["source"]),
                     beta=ctx.arr("int64_t", "beta_b", np.asarray(op.beta_b, np.int64), L["source"]))
            ctx.info.update(in_scale=op.in_scale, out_scale=op.out_scale, out_frac=int(op.out_frac),
                            shift=int(op.shift))
        return ctx.render("ops/layernorm.c.j2", L=L)


register(LayerNormUnit())

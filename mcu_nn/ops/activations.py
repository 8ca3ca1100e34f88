"""Element-wise activations beyond ReLU/Tanh/Sigmoid (those stay ``ir.Activation``): LeakyReLU,
Hardtanh/ReLU6, Hardsigmoid, GELU, SiLU, Softsign.

Integer scheme (docs/numerics.md, "ops around the cells"):
- leaky_relu, hardtanh: the output keeps the input's scale (the slope / bounds are in that scale);
- hardsigmoid: input rescaled to Q3.12 (as tanh/sigmoid), output Q15;
- gelu, silu: input rescaled to the most fractional bits its range allows (``frac``), the output
  is in that format (|gelu(x)|, |silu(x)| <= |x|, so it never saturates);
- softsign: input rescaled to ``frac`` bits as above, output Q15.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import McuNnError
from .. import fixedpoint as fp
from . import register
from .unit import EmitCtx, OpUnit, QuantCtx, frac_for, rescale, rescale_mult

F32 = np.float32
Kind = Literal["leaky_relu", "hardtanh", "hardsigmoid", "gelu", "silu", "softsign"]
KINDS = ("leaky_relu", "hardtanh", "hardsigmoid", "gelu", "silu", "softsign")


@dataclass
class Pointwise:
    """One float activation, applied to every value of its input."""
    kind: Kind
    slope: float = 0.01                   # leaky_relu: negative_slope
    lo: float = -1.0                      # hardtanh bounds (ReLU6: 0, 6)
    hi: float = 1.0
    approximate: str = "none"             # gelu: "none" (erf) or "tanh"
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class QPointwise:
    """kind as Pointwise. leaky_relu: y = fp.leaky_relu(x, mult, shift) (slope = mult / 2^shift);
    hardtanh: fp.hardtanh(x, lo, hi); the others first rescale x by mult / 2^shift (to Q3.12 for
    hardsigmoid, to ``frac`` fractional bits for gelu/silu/softsign), then apply the primitive."""
    kind: Kind
    mult: int
    shift: int
    frac: int
    lo: int
    hi: int
    in_scale: float
    out_scale: float
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64))


def float_activation(op: Pointwise, x: np.ndarray) -> np.ndarray:
    """PyTorch's formula in float32 (GELU's erf in float64, rounded once)."""
    x = np.asarray(x, F32)
    k = op.kind
    if k == "leaky_relu":
        return np.where(x >= 0, x, x * F32(op.slope)).astype(F32)
    if k == "hardtanh":
        return np.minimum(np.maximum(x, F32(op.lo)), F32(op.hi)).astype(F32)
    if k == "hardsigmoid":
        return (np.minimum(np.maximum(x + F32(3), F32(0)), F32(6)) / F32(6)).astype(F32)
    if k == "gelu":
        if op.approximate == "tanh":
            inner = F32(math.sqrt(2.0 / math.pi)) * (x + F32(0.044715) * x * x * x)
            return (F32(0.5) * x * (F32(1) + np.tanh(inner))).astype(F32)
        return (0.5 * x.astype(np.float64) * (1.0 + _erf(x / math.sqrt(2.0)))).astype(F32)
    if k == "silu":
        with np.errstate(over="ignore"):
            return (x / (F32(1) + np.exp(-x))).astype(F32)
    if k == "softsign":
        return (x / (F32(1) + np.abs(x))).astype(F32)
    raise McuNnError(f"unknown activation {k!r}; expected one of {', '.join(KINDS)}")


class PointwiseUnit(OpUnit):
    float_types = (Pointwise,)
    quant_types = (QPointwise,)

    def out_shapes(self, op, ins):
        return [(ins[0].size, ins[0].per_step, getattr(op, "out_scale", 1.0))]

    def float_step(self, op, ins):
        return [float_activation(op, ins[0])]

    def quantize(self, op: Pointwise, ctx: QuantCtx) -> QPointwise:
        from ..quant.quantize import GATE_SCALE, Q15_SCALE
        s = ctx.in_scales[0]
        common = dict(kind=op.kind, in_scale=s, source=op.source)
        if op.kind == "leaky_relu":
            mult, shift = rescale_mult(op.slope, ctx.where)
            return QPointwise(mult=mult, shift=shift, frac=0, lo=0, hi=0, out_scale=s, **common)
        if op.kind == "hardtanh":
            lo, hi = (int(np.clip(np.round(v / s), fp.INT16_MIN, fp.INT16_MAX)) for v in (op.lo, op.hi))
            return QPointwise(mult=1, shift=0, frac=0, lo=lo, hi=hi, out_scale=s, **common)
        if op.kind == "hardsigmoid":
            mult, shift = rescale_mult(s / GATE_SCALE, ctx.where)
            return QPointwise(mult=mult, shift=shift, frac=fp.GATE_FRAC, lo=0, hi=0, out_scale=Q15_SCALE, **common)
        frac = frac_for(s)
        mult, shift = rescale_mult(s * 2.0 ** frac, ctx.where)
        out = Q15_SCALE if op.kind == "softsign" else 2.0 ** -frac
        return QPointwise(mult=mult, shift=shift, frac=frac, lo=0, hi=0, out_scale=out, **common)

    def int_step(self, op: QPointwise, ins):
        x = ins[0]
        if op.kind == "leaky_relu":
            return [fp.leaky_relu(x, op.mult, op.shift)]
        if op.kind == "hardtanh":
            return [fp.hardtanh(x, op.lo, op.hi)]
        xr = rescale(x, op.mult, op.shift)
        fn = {"hardsigmoid": lambda v: fp.hardsigmoid_q15(v), "gelu": lambda v: fp.gelu(v, op.frac),
              "silu": lambda v: fp.silu(v, op.frac), "softsign": lambda v: fp.softsign_q15(v, op.frac)}
        return [fn[op.kind](xr)]

    def render(self, op, ctx: EmitCtx) -> str:
        from ..codegen.emit import f32_literal
        L = {"source": op.source or f"op {ctx.k}", "kind": op.kind}
        if ctx.fp:
            L.update(slope=f32_literal(op.slope), lo=f32_literal(op.lo), hi=f32_literal(op.hi),
                     approximate=op.approximate)
        else:
            L.update(mult=int(op.mult), shift=int(op.shift), frac=int(op.frac), lo=int(op.lo), hi=int(op.hi))
            ctx.info.update(activation=op.kind, in_scale=op.in_scale, out_scale=op.out_scale, mult=int(op.mult),
                            shift=int(op.shift), frac=int(op.frac))
        return ctx.render("ops/pointwise.c.j2", L=L)


register(PointwiseUnit())

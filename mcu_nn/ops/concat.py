"""torch.cat along the feature axis: two (or more) branches joined, e.g. two recurrent layers
side by side, or a recurrent branch and a linear one.

Integer scheme: the output takes the coarsest input scale, so no part can saturate; the parts
already at that scale are copied, the others rescaled by s_i / s_y <= 1 (mult / 2^shift)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import register
from .unit import EmitCtx, OpUnit, QuantCtx, rescale, rescale_mult, same_per_step


@dataclass
class Concat:
    """Concatenation of the input tensors' features, in input order."""
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class QConcat:
    mults: list[int]                      # per input: (1, 0) = copy
    shifts: list[int]
    in_scales: list[float]
    out_scale: float
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


class ConcatUnit(OpUnit):
    float_types = (Concat,)
    quant_types = (QConcat,)

    def out_shapes(self, op, ins):
        return [(sum(t.size for t in ins), same_per_step(op, ins, "cat"), getattr(op, "out_scale", 1.0))]

    def float_step(self, op, ins):
        return [np.concatenate([np.asarray(v, np.float32) for v in ins], axis=-1)]

    def quantize(self, op: Concat, ctx: QuantCtx) -> QConcat:
        so = max(ctx.in_scales)
        mults, shifts = [], []
        for i, s in enumerate(ctx.in_scales):
            m, sh = (1, 0) if s == so else rescale_mult(s / so, f"{ctx.where} (input {i})")
            mults.append(m)
            shifts.append(sh)
        return QConcat(mults, shifts, list(ctx.in_scales), so, source=op.source)

    def int_step(self, op: QConcat, ins):
        return [np.concatenate([rescale(x, m, s) for x, m, s in zip(ins, op.mults, op.shifts)], axis=-1)]

    def render(self, op, ctx: EmitCtx) -> str:
        parts, at = [], 0
        for i, n in enumerate(ctx.in_sizes):
            plain = ctx.fp or (op.mults[i], op.shifts[i]) == (1, 0)
            parts.append({"n": n, "at": at, "plain": plain,
                          "mult": 0 if ctx.fp else op.mults[i], "shift": 0 if ctx.fp else op.shifts[i]})
            at += n
        if not ctx.fp:
            ctx.info.update(in_scales=list(op.in_scales), out_scale=op.out_scale)
        return ctx.render("ops/concat.c.j2", L={"source": op.source or f"op {ctx.k}"}, parts=parts)


register(ConcatUnit())

"""Element-wise add / sub / mul of two tensors of the same size: residual connections
(``lstm2(out1)[0] + out1``) and gating (``a * torch.sigmoid(b)``).

Integer scheme: each input keeps its own scale; the output scale comes from the calibrated range
of the result. add/sub: y = sat16(rshift_round(a * ma +- b * mb, shift)), ma = s_a / s_y,
mb = alpha * s_b / s_y; mul: y = sat16(rshift_round(a * b * m, shift)), m = s_a * s_b / s_y
(fixedpoint.add / sub / mul)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import McuNnError
from .. import fixedpoint as fp
from . import register
from .unit import EmitCtx, OpUnit, QuantCtx, same_per_step

F32 = np.float32


@dataclass
class Elementwise:
    """a + alpha * b, a - alpha * b or a * b (PyTorch's add/sub ``alpha``); inputs [a, b]."""
    kind: Literal["add", "sub", "mul"]
    alpha: float = 1.0
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class QElementwise:
    kind: Literal["add", "sub", "mul"]
    ma: int                               # add/sub: multiplier of a; mul: the one multiplier
    mb: int                               # add/sub: multiplier of b (alpha folded in); mul: 0
    shift: int
    in_scales: list[float]
    out_scale: float
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


class ElementwiseUnit(OpUnit):
    float_types = (Elementwise,)
    quant_types = (QElementwise,)

    def out_shapes(self, op, ins):
        if len(ins) != 2 or ins[0].size != ins[1].size:
            raise McuNnError(f"{op.source or op.kind}: {op.kind} of tensors of sizes "
                             f"{[t.size for t in ins]}; two tensors of the same size are supported")
        return [(ins[0].size, same_per_step(op, ins, op.kind), getattr(op, "out_scale", 1.0))]

    def float_step(self, op: Elementwise, ins):
        a, b = (np.asarray(v, F32) for v in ins)
        if op.kind == "mul":
            return [(a * b).astype(F32)]
        if op.alpha != 1.0:
            b = b * F32(op.alpha)
        return [(a + b if op.kind == "add" else a - b).astype(F32)]

    def quantize(self, op: Elementwise, ctx: QuantCtx) -> QElementwise:
        from ..quant.quantize import ACT_BOUND, _mult_ints, choose_shift
        sa, sb = ctx.in_scales
        so = ctx.out_scale()
        if op.kind == "mul":
            m = np.array([sa * sb / so])
            shift = choose_shift([m], [[1 << 30]], [], ctx.where)      # |a * b| <= 2^30
            ma, mb = int(_mult_ints(m, shift)[0]), 0
        else:
            m_a, m_b = np.array([sa / so]), np.array([op.alpha * sb / so])
            shift = choose_shift([m_a, m_b], [[ACT_BOUND], [ACT_BOUND]], [], ctx.where)
            ma, mb = int(_mult_ints(m_a, shift)[0]), int(_mult_ints(m_b, shift)[0])
        return QElementwise(op.kind, ma, mb, shift, [sa, sb], so, source=op.source)

    def int_step(self, op: QElementwise, ins):
        a, b = ins
        if op.kind == "mul":
            return [fp.mul(a, b, op.ma, op.shift)]
        fn = fp.add if op.kind == "add" else fp.sub
        return [fn(a, b, op.ma, op.mb, op.shift)]

    def render(self, op, ctx: EmitCtx) -> str:
        from ..codegen.emit import f32_literal
        L = {"source": op.source or f"op {ctx.k}", "kind": op.kind}
        if ctx.fp:
            L["alpha"] = None if op.alpha == 1.0 else f32_literal(op.alpha)
        else:
            L.update(ma=op.ma, mb=op.mb, shift=op.shift)
            ctx.info.update(in_scales=list(op.in_scales), out_scale=op.out_scale, shift=int(op.shift))
        return ctx.render("ops/elementwise.c.j2", L=L)


register(ElementwiseUnit())

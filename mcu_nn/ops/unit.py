"""The shape of an op unit and the small contexts the stages hand it. Every method works on plain
IR dataclasses and numpy; nothing here knows torch or writes C outside the unit's template."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import McuNnError
from .. import fixedpoint as fp


@dataclass
class QuantCtx:
    """What quantisation knows when it reaches an op: its trace key ("op{i}"), where it comes
    from (for messages), the precision, the scales of its input tensors and the calibration stats."""
    key: str
    where: str
    precision: str
    in_scales: list[float]
    stats: dict
    clipped: float = 0.0                  # set by out_scale(): calibration values past the range

    def out_scale(self) -> float:
        """The int16 scale of the op's output, from its calibrated range."""
        from ..quant.quantize import _clip, _range, act_scale
        stat = self.stats.get(f"{self.key}.out")
        if stat is None:
            raise McuNnError(f"{self.where}: no calibration range for its output")
        self.clipped = _clip(stat)
        return act_scale(_range(stat))


@dataclass
class EmitCtx:
    """What codegen hands a unit: its builder (arrays, precision, template environment), the
    kernel's C name and the sizes of the op's inputs and output. The kernel's signature is
    ``static void fn(const vt *in0, [const vt *in1, ...] vt *out)``."""
    builder: Any
    k: int
    fn: str
    in_sizes: list[int]
    out_size: int
    info: dict = field(default_factory=dict)   # extra manifest fields for the layer

    @property
    def fp(self) -> bool:
        return self.builder.fp

    def arr(self, ctype: str, name: str, values, what: str) -> str:
        return self.builder.arr(ctype, f"op{self.k}_{name}", values, what)

    def render(self, template: str, **kw) -> str:
        return self.builder.env.get_template(template).render(
            fn=self.fn, fp=self.fp, vt=self.builder.vt, in_sizes=self.in_sizes, N=self.out_size, **kw)


class OpUnit:
    """Base of an op family. Subclasses set the two type tuples and implement the five steps."""
    float_types: tuple = ()
    quant_types: tuple = ()

    def out_shapes(self, op, ins: list) -> list[tuple[int, bool, float]]:
        """(size, per_step, scale) of each output, from the input ``ir.Tensor``s."""
        raise NotImplementedError

    def float_step(self, op, ins: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def quantize(self, op, ctx: QuantCtx):
        raise NotImplementedError

    def int_step(self, op, ins: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def render(self, op, ctx: EmitCtx) -> str:
        raise NotImplementedError

    def params(self, op) -> list:
        """The float parameter arrays (for parameter counts)."""
        return []


def same_per_step(op, ins: list, what: str) -> bool:
    """Inputs of a multi-input op must all be per step or all per sequence (no broadcasting over time)."""
    kinds = {t.per_step for t in ins}
    if len(kinds) != 1:
        names = ", ".join(f"{t.name} ({'per step' if t.per_step else 'per sequence'})" for t in ins)
        raise McuNnError(f"{op.source or what}: combines {names}; broadcasting a per-sequence vector over "
                         "time is not supported")
    return kinds.pop()


def rescale_mult(ratio: float, where: str) -> tuple[int, int]:
    """(mult, shift) with mult / 2^shift ~= ratio for ``rescale``: an int16 value times ratio."""
    from ..quant.quantize import ACT_BOUND, _mult_ints, choose_shift
    m = np.array([ratio], np.float64)
    shift = choose_shift([m], [[ACT_BOUND]], [], where)
    return int(_mult_ints(m, shift)[0]), shift


def rescale(x, mult: int, shift: int) -> np.ndarray:
    """sat16(rshift_round(x * mult, shift)): an int16 value into another scale (as QActivation does
    before a table). C: mcunn_sat16(mcunn_rshift_round64((int64_t)x * mult, shift)), |x * mult| < 2^46."""
    return fp.sat16(fp.rshift_round(fp._i64(x) * mult, shift))


def frac_for(scale: float) -> int:
    """The most fractional bits (0..15) an int16 at ``scale`` can be re-expressed in without
    saturating: 32767 * scale <= 2^(15 - frac) * (1 + 2^-15)."""
    f = int(np.floor(-np.log2(scale))) if scale > 0 else 15
    return int(min(max(f, 0), 15))

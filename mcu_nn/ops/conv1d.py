"""nn.Conv1d over time (stride, padding, dilation, groups incl. depthwise), BatchNorm1d folded in.

mcu-nn's layout is (N, T, C): the conv reads taps of C features at steps t*stride + k*dilation
- pad_left. A conv whose left padding is its whole history ((K-1)*dilation), with no right
padding and stride 1, is causal: it streams, keeping the last (K-1)*dilation input steps in
the state struct (zero at reset = the zero padding). Any other conv needs future steps or
changes the rate, so the model runs over whole sequences (no ``_step``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import fixedpoint as fp
from ._common import out_len, windows

F32 = np.float32


@dataclass
class _Geometry:
    stride: int = 1
    pad_left: int = 0
    pad_right: int = 0
    dilation: int = 1
    groups: int = 1

    @property
    def kernel(self) -> int:
        return int(self._w().shape[2])

    @property
    def history(self) -> int:
        """Input steps before the current one that an output step reads."""
        return (self.kernel - 1) * self.dilation

    @property
    def causal(self) -> bool:
        return self.stride == 1 and self.pad_right == 0 and self.pad_left == self.history

    @property
    def bidirectional(self) -> bool:
        """True when the conv needs the whole sequence: the export manifest's "bidirectional"
        flag, which means "no _step" (HAS_STEP 0)."""
        return not self.causal

    @property
    def in_size(self) -> int:
        return int(self._w().shape[1]) * self.groups

    @property
    def out_size(self) -> int:
        return int(self._w().shape[0])

    def out_len(self, n: int) -> int:
        return out_len(n, self.kernel, self.stride, self.dilation, self.pad_left, self.pad_right)

    def same_rate(self) -> bool:
        """Output length == input length for every input length."""
        return self.stride == 1 and self.pad_left + self.pad_right == self.history

    def taps(self, x: np.ndarray) -> np.ndarray:
        return windows(x, self.kernel, self.stride, self.dilation, self.pad_left, self.pad_right)

    def macs(self) -> int:
        return int(self._w().size)

    def _w(self) -> np.ndarray:
        raise NotImplementedError


def _grouped(win: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """sum_k sum_j w[o, j, k] * win[n, t, k, g(o)*Ig + j] with the dtype of the inputs."""
    o, ig, _ = w.shape
    og = o // groups
    parts = [np.einsum("ntkj,ojk->nto", win[..., g * ig:(g + 1) * ig], w[g * og:(g + 1) * og])
             for g in range(groups)]
    return np.concatenate(parts, axis=-1)


@dataclass
class Conv1d(_Geometry):
    weight: np.ndarray = None             # (O, I/groups, K)
    bias: Optional[np.ndarray] = None     # (O,)
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    template = "ops/conv1d.c.j2"

    def _w(self) -> np.ndarray:
        return self.weight

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(self.out_size, True, 1.0)]

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        y = _grouped(self.taps(np.asarray(xs[0], F32)), np.asarray(self.weight, F32), self.groups)
        b = np.zeros(self.out_size, F32) if self.bias is None else np.asarray(self.bias, F32)
        return [(y + b).astype(F32)]

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str, where: str) -> "QConv1d":
        from ..quant.quantize import QMAX, WDTYPE, _mult_ints, _range, act_scale, choose_shift, quantize_rows
        out_scale = act_scale(_range(stats[f"{key}.out"]))
        o = self.out_size
        rq = quantize_rows(self.weight.reshape(o, -1), QMAX[precision])
        m = np.where(rq.zero, 0.0, rq.scale * in_scales[0] / out_scale)
        b = (np.zeros(o) if self.bias is None else np.asarray(self.bias, np.float64)) / out_scale
        shift = choose_shift([m], [rq.bound], [b], where)
        return QConv1d(stride=self.stride, pad_left=self.pad_left, pad_right=self.pad_right,
                       dilation=self.dilation, groups=self.groups,
                       w=rq.wq.reshape(self.weight.shape).astype(WDTYPE[precision]), mult=_mult_ints(m, shift),
                       bias_q=_mult_ints(b, shift), shift=shift, in_scale=in_scales[0], out_scale=out_scale,
                       source=self.source, inputs=list(self.inputs), outputs=list(self.outputs))


@dataclass
class QConv1d(_Geometry):
    """y[t, o] = sat16(rshift_round(bias_q[o] + acc * mult[o], shift)), acc the int64 sum of
    w[o, j, k] * x[t*stride + k*dilation - pad_left, g(o)*Ig + j] (taps outside the sequence 0)."""
    w: np.ndarray = None                  # (O, I/groups, K) int8/int16 values
    mult: np.ndarray = None               # (O,) |mult| < 2^31
    bias_q: np.ndarray = None             # (O,) int64
    shift: int = 0
    in_scale: float = 1.0
    out_scale: float = 1.0
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    template = "ops/conv1d.c.j2"

    def _w(self) -> np.ndarray:
        return self.w

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(self.out_size, True, self.out_scale)]

    def run_int(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        acc = _grouped(self.taps(fp._i64(xs[0])), fp._i64(self.w), self.groups)
        return [fp.sat16(fp.requant([(acc, fp._i64(self.mult))], self.bias_q, self.shift))]


def fold_batchnorm(conv: Conv1d, gamma: Optional[np.ndarray], beta: Optional[np.ndarray], mean: np.ndarray,
                   var: np.ndarray, eps: float) -> None:
    """An eval-mode BatchNorm1d after ``conv``, folded into its weights and bias (in place):
    y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta, per output channel."""
    o = conv.out_size
    g = np.ones(o) if gamma is None else np.asarray(gamma, np.float64)
    k = g / np.sqrt(np.asarray(var, np.float64) + eps)
    b = np.zeros(o) if conv.bias is None else np.asarray(conv.bias, np.float64)
    conv.weight = (np.asarray(conv.weight, np.float64) * k[:, None, None]).astype(np.float32)
    conv.bias = ((b - np.asarray(mean, np.float64)) * k + (0.0 if beta is None else np.asarray(beta, np.float64))
                 ).astype(np.float32)

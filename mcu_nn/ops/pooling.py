"""Pooling and selection over the time axis.

- ``TimePool``: MaxPool1d / AvgPool1d windows over time (kernel, stride, no padding). A window
  needs later steps and the stride lowers the rate, so a model with one runs whole sequences.
- ``TimeReduce``: mean / max / sum over all steps (global pooling, ``out.mean(dim=1)``). It
  streams: an accumulator in the state struct updated every step, finalised by the head.
- ``TimeSelect``: ``out[:, i]``. Streams for i >= 0 (the vector is kept when step i passes);
  a negative i other than -1 (``SelectLast``) needs the whole sequence.
- ``TimeSlice``: ``out[:, a:b]`` of the time axis, whole-sequence only.
Integer ops keep their input's scale except the sum, which is requantised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from .. import fixedpoint as fp
from ._common import MAX_ACC_STEPS, out_len, rescale, windows

F32 = np.float32


@dataclass
class TimePool:
    kind: Literal["max", "avg"]
    kernel: int
    stride: int
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    template = "ops/pool1d.c.j2"
    bidirectional = True                  # whole sequence only (manifest: no _step)
    scale: float = 1.0                    # integer op: the input's scale, kept

    def out_len(self, n: int) -> int:
        return out_len(n, self.kernel, self.stride, 1, 0, 0)

    def same_rate(self) -> bool:
        return self.kernel == 1 and self.stride == 1

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(xs[0].size, True, xs[0].scale)]

    def _taps(self, x: np.ndarray) -> np.ndarray:
        return windows(x, self.kernel, self.stride, 1, 0, 0)

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        taps = self._taps(np.asarray(xs[0], F32))
        if self.kind == "max":
            return [taps.max(axis=2)]
        return [(taps.sum(axis=2, dtype=F32) / F32(self.kernel)).astype(F32)]

    def run_int(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        taps = self._taps(fp._i64(xs[0]))
        if self.kind == "max":
            return [taps.max(axis=2)]
        return [fp.sat16(fp.div_round(taps.sum(axis=2), self.kernel))]

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str, where: str) -> "TimePool":
        return TimePool(self.kind, self.kernel, self.stride, self.source, list(self.inputs), list(self.outputs),
                        scale=in_scales[0])


def _steps(t: int) -> int:
    return min(t, MAX_ACC_STEPS)


@dataclass
class TimeReduce:
    """mean / max / sum over time: per-step in, one vector per sequence out. Integer:
    mean = sat16(div_round(sum, count)) and max keep the input's scale; sum is requantised,
    sat16(rshift_round(sum * mult, shift)). Only the first 65535 steps count (int32 sums)."""
    kind: Literal["mean", "max", "sum"]
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    template = "ops/reduce.c.j2"
    mult: int = 1                         # integer sum only
    shift: int = 0
    scale: Optional[float] = None         # integer op: output scale (None: float op)

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(xs[0].size, False, xs[0].scale if self.scale is None else self.scale)]

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        x = np.asarray(xs[0], F32)[:, :_steps(xs[0].shape[1])]
        if self.kind == "max":
            return [x.max(axis=1)]
        total = x.sum(axis=1, dtype=F32)
        return [total if self.kind == "sum" else (total / F32(max(x.shape[1], 1))).astype(F32)]

    def run_int(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        x = fp._i64(xs[0])[:, :_steps(xs[0].shape[1])]
        if self.kind == "max":
            return [fp.time_max(x)]
        if self.kind == "mean":
            return [fp.time_mean(x)]
        return [fp.sat16(fp.requant([(x.sum(axis=1), self.mult)], 0, self.shift))]

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str, where: str) -> "TimeReduce":
        from ..quant.quantize import _range, act_scale
        mult, shift, scale = 1, 0, in_scales[0]
        if self.kind == "sum":
            scale = act_scale(_range(stats[f"{key}.out"]))
            mult, shift = rescale(in_scales[0], scale, MAX_ACC_STEPS * 32768, where)
        return TimeReduce(self.kind, self.source, list(self.inputs), list(self.outputs), mult=mult, shift=shift,
                          scale=scale)


@dataclass
class TimeSelect:
    """``out[:, index]``: the vector of one step; zeros while the sequence is shorter."""
    index: int
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def bidirectional(self) -> bool:      # counting from the end needs the whole sequence
        return self.index < 0

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(xs[0].size, False, xs[0].scale)]

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        t = x.shape[1]
        i = self.index if self.index >= 0 else t + self.index
        return [x[:, i] if 0 <= i < t else np.zeros((x.shape[0], x.shape[2]), x.dtype)]

    run_int = run_float

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str, where: str) -> "TimeSelect":
        return self


@dataclass
class TimeFlatten:
    """``x.reshape(N, k * F)`` of a sequence of a fixed k steps (``out[:, -k:]``, ``out[:, a:a+k]``):
    the steps side by side in one vector, in time order. A run with fewer steps leaves the
    missing ones 0 (PyTorch would refuse such a reshape)."""
    steps: int
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    bidirectional = True                  # whole sequence only

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(xs[0].size * self.steps, False, xs[0].scale)]

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        k = min(self.steps, x.shape[1])
        out = np.zeros((x.shape[0], self.steps * x.shape[2]), x.dtype)
        out[:, :k * x.shape[2]] = x[:, :k].reshape(x.shape[0], -1)
        return [out]

    run_int = run_float

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str, where: str) -> "TimeFlatten":
        return self


@dataclass
class TimeSlice:
    """``out[:, start:stop]`` of the time axis (Python slice semantics, step 1)."""
    start: Optional[int]
    stop: Optional[int]
    source: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    bidirectional = True                  # whole sequence only

    def bounds(self, n: int) -> tuple[int, int]:
        a, b, _ = slice(self.start, self.stop).indices(n)
        return a, max(a, b)

    def out_len(self, n: int) -> int:
        a, b = self.bounds(n)
        return b - a

    def same_rate(self) -> bool:
        return False

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(xs[0].size, True, xs[0].scale)]

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        a, b = self.bounds(xs[0].shape[1])
        return [xs[0][:, a:b]]

    run_int = run_float

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str, where: str) -> "TimeSlice":
        return self

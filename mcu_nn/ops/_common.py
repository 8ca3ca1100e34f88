"""Helpers the op modules share: the sequence windows of conv/pool ops and requantisation."""
from __future__ import annotations

import numpy as np

# Sums and counts over time are int32 in C: |sum| <= 65535 * 32768 < 2^31 (fixedpoint.sum_pool_update),
# so accumulating ops stop accumulating after this many steps, in C and in the simulator alike.
MAX_ACC_STEPS = 65535


def out_len(n: int, kernel: int, stride: int, dilation: int, pad_left: int, pad_right: int) -> int:
    """Output steps of a window op over n input steps (PyTorch's floor formula; 0 if too short)."""
    m = n + pad_left + pad_right - dilation * (kernel - 1)
    return 0 if m <= 0 else (m - 1) // stride + 1


def windows(x: np.ndarray, kernel: int, stride: int, dilation: int, pad_left: int, pad_right: int,
            fill=0) -> np.ndarray:
    """(N, T, C) -> (N, T', K, C): the K taps of every output step; taps outside the
    sequence read ``fill`` (the zero padding)."""
    n, t, c = x.shape
    t_out = out_len(t, kernel, stride, dilation, pad_left, pad_right)
    idx = np.arange(t_out)[:, None] * stride + np.arange(kernel)[None, :] * dilation - pad_left
    ok = (idx >= 0) & (idx < t)
    taps = x[:, np.clip(idx, 0, max(t - 1, 0))] if t else np.zeros((n, t_out, kernel, c), x.dtype)
    return np.where(ok[None, :, :, None], taps, np.asarray(fill, x.dtype))


def rescale(in_scale: float, out_scale: float, bound: int, where: str) -> tuple[int, int]:
    """mult, shift with v_out = sat16(rshift_round(v_in_acc * mult, shift)) for an integer
    accumulator of |acc| <= bound in scale ``in_scale`` -> int16 in ``out_scale``."""
    from ..quant.quantize import _mult_ints, choose_shift
    m = np.array([in_scale / out_scale])
    shift = choose_shift([m], [[bound]], [], where)
    return int(_mult_ints(m, shift)[0]), shift

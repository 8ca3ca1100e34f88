"""How far a quantised model's outputs are from the float reference."""
from __future__ import annotations

import numpy as np


def _pair(ref, test) -> tuple[np.ndarray, np.ndarray]:
    r, t = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if r.shape != t.shape:
        raise ValueError(f"shapes differ: reference {r.shape}, test {t.shape}")
    return r, t


def snr_db(ref, test) -> float:
    """10*log10(sum ref^2 / sum (ref - test)^2); inf when identical, -inf for a zero reference."""
    r, t = _pair(ref, test)
    noise = float(np.sum((r - t) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def max_abs_error(ref, test) -> float:
    r, t = _pair(ref, test)
    return float(np.max(np.abs(r - t))) if r.size else 0.0


def top1_agreement(ref, test) -> float:
    """Fraction of vectors (last axis = classes) whose argmax is the same."""
    r, t = _pair(ref, test)
    if r.size == 0:
        return 1.0
    return float(np.mean(np.argmax(r, axis=-1) == np.argmax(t, axis=-1)))

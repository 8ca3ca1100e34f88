"""How a device's (or the host C's) outputs are compared with the simulator's: one rule,
used by verify, serial-test and bench.

Integer precisions: equal, bit for bit. float32: the C and the simulator sum in different
orders, and over many steps and layers float32 rounding drifts by an amount that depends on
the model (depth, steps, magnitudes): a fixed relative tolerance either hides bugs in small
models or fails correct char-level models (about 130 dB from PyTorch, yet over 1e-5
relative on some logit after 35 steps). So the export measures, per test vector, how far
the simulator's own float32 result lies from the same computation in float64 (its
``float_drift``), and the comparison allows ``DRIFT_FACTOR`` times that, never less than
``FLOAT_RTOL`` relative: a different but correct summation order stays within a few
times the drift; a wrong weight, gate or index does not.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

FLOAT_RTOL = 1e-5          # the floor: |got - expected| <= FLOAT_RTOL * max(1, |expected|)
DRIFT_FACTOR = 8.0         # times the simulator's own float32-vs-float64 drift of the vector


def float_tolerance(expected: np.ndarray, drift: Optional[np.ndarray] = None) -> np.ndarray:
    """Allowed |got - expected| for each value of float32 ``expected`` ((N, ...) vectors);
    ``drift`` is the per-vector float32-vs-float64 drift stored with the test vectors."""
    exp = np.abs(np.asarray(expected, np.float64))
    tol = FLOAT_RTOL * np.maximum(1.0, exp)
    if drift is not None:
        d = np.asarray(drift, np.float64).reshape((-1,) + (1,) * (exp.ndim - 1))
        tol = np.maximum(tol, DRIFT_FACTOR * d)
    return tol


def differing(got: np.ndarray, expected: np.ndarray, precision: str,
              drift: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask of the values of ``got`` that do not match ``expected`` (same shape)."""
    if precision != "float32":
        return np.asarray(got).astype(np.int64) != np.asarray(expected).astype(np.int64)
    err = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    return ~(err <= float_tolerance(expected, drift))     # NaN compares as differing


def describe_rule(precision: str, drift: Optional[np.ndarray] = None) -> str:
    """What was compared against what, for the output."""
    if precision != "float32":
        return "0 differing bits"
    worst = float(np.max(drift)) if drift is not None and np.size(drift) else 0.0
    return (f"float32 within max({FLOAT_RTOL:g} relative, {DRIFT_FACTOR:g} x the simulator's float32-vs-float64 "
            f"drift, at most {worst:.2g})")


def saturation_line(manifest: dict, which: str, where: str) -> str:
    """'saturation <where>: none' or where the simulator clipped, from the manifest's counts
    (``which``: "calibration" or "test_vectors"); bit-exact hardware clips the same values."""
    sat = manifest.get("saturation", {}).get(which) or {}
    if not sat:
        return f"saturation {where}: none"
    parts = [f"{site} ({e.get('source', '?')}): {e['clipped']:,} of {e['values']:,} values "
             f"({100 * e['clipped'] / max(e['values'], 1):.2g}%)" for site, e in sat.items()]
    return f"saturation {where}: " + "; ".join(parts)

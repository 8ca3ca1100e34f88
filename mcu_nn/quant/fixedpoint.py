"""The integer primitives that *define* mcu-nn's arithmetic.

The generated C (``mcu_nn/runtime/mcunn_fixedpoint.h``) mirrors each function here line
for line, and the tests compare each pair on the host, exhaustively where the domain
allows. Everything works on numpy integer arrays (vectorised over any batch shape) and
uses int64 internally; the docstrings state the C types and the ranges that make the C
free of overflow.

Rounding is round-half-up everywhere: ``(x + 2^(n-1)) >> n`` with an arithmetic shift.
"""
from __future__ import annotations

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

Q15_FRAC = 15          # h, gate outputs: value = q / 2^15
GATE_FRAC = 12         # gate pre-activations, activation-table input: Q3.12
TABLE_STEP_BITS = 6    # tables sample f(k / 64) for k = 0..512, i.e. [0, 8]
TABLE_LEN = 514        # 513 samples + one guard entry so idx+1 never reads past the end


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def rshift_round(x, n: int) -> np.ndarray:
    """C: ``mcunn_rshift_round32/64(x, n)`` = (x + (1 << (n-1))) >> n, or x when n == 0."""
    x = _i64(x)
    if n <= 0:
        return x
    return (x + (np.int64(1) << np.int64(n - 1))) >> np.int64(n)


def sat16(x) -> np.ndarray:
    """C: ``mcunn_sat16(int32 or int64)``: clamp to [-32768, 32767]."""
    return np.clip(_i64(x), INT16_MIN, INT16_MAX)


def sat32(x) -> np.ndarray:
    """C: ``mcunn_sat32(int64)``."""
    return np.clip(_i64(x), INT32_MIN, INT32_MAX)


def mul_q15(a, b) -> np.ndarray:
    """Q15 x Qk -> Qk, rounded: rshift_round(a * b, 15). C: int32 product (|a|,|b| <= 2^15)."""
    return rshift_round(_i64(a) * _i64(b), 15)


def requant(acc_terms, bias, shift: int) -> np.ndarray:
    """The requantisation of a matrix-vector product.

    ``acc_terms`` is a list of (acc, mult) pairs; returns
    rshift_round(sum(acc * mult) + bias, shift) as int64 (the caller saturates).
    C: int64 arithmetic; export proves |sum| < 2^62 so nothing overflows.
    """
    total = _i64(bias)
    for acc, mult in acc_terms:
        total = total + _i64(acc) * _i64(mult)
    return rshift_round(total, shift)


def matvec(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """acc[..., r] = sum_j w[r, j] * x[..., j] in int64 (the C uses int32 when the export
    proved sum_j |w[r, j]| * 32768 < 2^31, else int64 — equal results either way)."""
    return _i64(x) @ _i64(w).T


def frac_to_q312(x, frac: int) -> np.ndarray:
    """Re-express an int16 with ``frac`` fractional bits in Q3.12 (saturating).
    C: frac > 12: rshift_round(x, frac - 12); else sat16(x * (1 << (12 - frac)))."""
    if frac >= GATE_FRAC:
        return rshift_round(x, frac - GATE_FRAC)
    return sat16(_i64(x) * (1 << (GATE_FRAC - frac)))


# ----------------------------------------------------------------------------- activations
def _table(fn) -> np.ndarray:
    k = np.arange(TABLE_LEN, dtype=np.float64)
    k[-1] = TABLE_LEN - 2                      # guard entry repeats f(8)
    v = np.floor(fn(k / (1 << TABLE_STEP_BITS)) * 32768.0 + 0.5)
    return np.minimum(v, INT16_MAX).astype(np.int64)


SIGMOID_TABLE = _table(lambda v: 1.0 / (1.0 + np.exp(-v)))   # sigmoid on [0, 8] in Q15
TANH_TABLE = _table(np.tanh)                                 # tanh on [0, 8] in Q15


def _interp_abs(x, table: np.ndarray) -> np.ndarray:
    """f(|x|) for x in Q3.12, linear interpolation between table samples.
    a = |x| in [0, 32768]; idx = a >> 6 in [0, 512]; frac = a & 63.
    Tables are non-decreasing so the interpolation term is never negative."""
    a = np.abs(_i64(x))
    idx = a >> TABLE_STEP_BITS
    frac = a & ((1 << TABLE_STEP_BITS) - 1)
    lo = table[idx]
    hi = table[idx + 1]
    return lo + (((hi - lo) * frac + (1 << (TABLE_STEP_BITS - 1))) >> TABLE_STEP_BITS)


def sigmoid_q15(x) -> np.ndarray:
    """Q3.12 int16 -> Q15 int16 in [1, 32767]. sigmoid(-v) = 1 - sigmoid(v)."""
    x = _i64(x)
    y = _interp_abs(x, SIGMOID_TABLE)
    return np.where(x < 0, np.minimum(32768 - y, INT16_MAX), y)


def tanh_q15(x) -> np.ndarray:
    """Q3.12 int16 -> Q15 int16 in [-32767, 32767]. tanh(-v) = -tanh(v)."""
    x = _i64(x)
    y = _interp_abs(x, TANH_TABLE)
    return np.where(x < 0, -y, y)


def relu(x) -> np.ndarray:
    return np.maximum(_i64(x), 0)


# ----------------------------------------------------------------------------- float <-> int
def quantize_input(x: np.ndarray, inv_scale: float) -> np.ndarray:
    """float32 -> int16, as the C ``<name>_quantize_input``: v = x * inv_scale in float32,
    rounded half away from zero (``(int32)(v + (v >= 0 ? 0.5f : -0.5f))`` after clamping
    to [-32768, 32767]); NaN -> 0."""
    v = np.asarray(x, dtype=np.float32) * np.float32(inv_scale)
    v = np.where(np.isnan(v), np.float32(0), v).astype(np.float32)
    v = np.clip(v, np.float32(INT16_MIN), np.float32(INT16_MAX)).astype(np.float32)
    v = (v + np.where(v >= 0, np.float32(0.5), np.float32(-0.5))).astype(np.float32)
    return np.clip(np.trunc(v), INT16_MIN, INT16_MAX).astype(np.int64)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    """int16 -> float32: q * scale in float32, as the C ``<name>_dequantize_output``."""
    return np.asarray(q, dtype=np.float32) * np.float32(scale)


# ----------------------------------------------------------------------------- cells
def lstm_cell(pre_i, pre_f, pre_g, pre_o, c, cell_frac: int):
    """One LSTM update from saturated Q3.12 pre-activations.
    c (int16, ``cell_frac`` fractional bits) -> (c_new, h) with h in Q15.
      c_new = sat16(rshift_round(f*c, 15) + rshift_round(i*g, 30 - cell_frac))
      h     = sat16(rshift_round(o * tanh(q312(c_new)), 15))
    C: both products fit int32 (|f|,|i|,|g| <= 32767, |c| <= 32768)."""
    i, f = sigmoid_q15(pre_i), sigmoid_q15(pre_f)
    g, o = tanh_q15(pre_g), sigmoid_q15(pre_o)
    c_new = sat16(mul_q15(f, c) + rshift_round(i * g, 2 * Q15_FRAC - cell_frac))
    h = sat16(mul_q15(o, tanh_q15(frac_to_q312(c_new, cell_frac))))
    return c_new, h


def gru_cell(pre_r, pre_z, n_x, n_h, h):
    """One GRU update (PyTorch's formula). pre_r, pre_z: saturated Q3.12 int16.
    n_x = W_in x + b_in, n_h = W_hn h + b_hn: Q.12 in int32 (saturated, not to 16 bits,
    so that r * n_h may cancel a large n_x). h: Q15.
      n     = tanh(sat16(n_x + rshift_round(r * n_h, 15)))
      h_new = sat16(n + rshift_round(z * (h - n), 15))      ((1-z)*n + z*h)
    C: r * n_h in int64; z * (h - n) fits int32."""
    r, z = sigmoid_q15(pre_r), sigmoid_q15(pre_z)
    n = tanh_q15(sat16(_i64(n_x) + rshift_round(r * _i64(n_h), 15)))
    return sat16(n + rshift_round(z * (_i64(h) - n), 15))

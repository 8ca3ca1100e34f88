"""The integer primitives that *define* mcu-nn's arithmetic.

The generated C runtime (``mcunn_fixedpoint.h`` and ``mcunn_fixedpoint.c``, rendered from
``templates/mcunn_fixedpoint.[ch].j2`` into every export) mirrors each function here line
for line, and the tests compare each pair on the host, exhaustively where the domain
allows. Everything works on numpy integer arrays (vectorised over any batch shape) and
uses int64 internally; the docstrings state the C types and the ranges that make the C
free of overflow.

Rounding is round-half-up everywhere: ``(x + 2^(n-1)) >> n`` with an arithmetic shift.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator, Optional

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

Q15_FRAC = 15          # h, gate outputs: value = q / 2^15
GATE_FRAC = 12         # gate pre-activations, activation-table input: Q3.12
TABLE_STEP_BITS = 6    # tables sample f(k / 64) for k = 0..512, i.e. [0, 8]
TABLE_LEN = 514        # 513 samples + one guard entry so idx+1 never reads past the end


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


# ----------------------------------------------------------------------------- saturation accounting
# Saturation is counted, never silent: inside count_saturation(), every sat16 and
# quantize_input adds the values it clipped to a tally under the current site (the
# simulator names each op's site). No effect on any result; a no-op outside the block.
_tally: Optional[dict[str, list[int]]] = None
_site = "model"


@contextlib.contextmanager
def count_saturation() -> Iterator[dict[str, list[int]]]:
    """Yields {site: [clipped values, values checked]}, filled while the block runs."""
    global _tally
    outer, _tally = _tally, {}
    try:
        yield _tally
    finally:
        inner, _tally = _tally, outer
        if outer is not None:                     # nested: the outer block sees these too
            for k, (c, n) in inner.items():
                e = outer.setdefault(k, [0, 0])
                e[0] += c
                e[1] += n


def set_saturation_site(name: str) -> str:
    """Name the site later clips are tallied under; returns the previous name."""
    global _site
    outer, _site = _site, name
    return outer


@contextlib.contextmanager
def saturation_site(name: str) -> Iterator[None]:
    outer = set_saturation_site(name)
    try:
        yield
    finally:
        set_saturation_site(outer)


def _count(x: np.ndarray, lo, hi) -> None:
    if _tally is not None and x.size:
        e = _tally.setdefault(_site, [0, 0])
        e[0] += int(np.count_nonzero((x < lo) | (x > hi)))
        e[1] += int(x.size)


def rshift_round(x, n: int) -> np.ndarray:
    """C: ``mcunn_rshift_round32/64(x, n)`` = (x + (1 << (n-1))) >> n, or x when n == 0."""
    x = _i64(x)
    if n <= 0:
        return x
    return (x + (np.int64(1) << np.int64(n - 1))) >> np.int64(n)


def rounding_bias(bias, shift: int) -> np.ndarray:
    """bias + 2^(shift-1): rshift_round's rounding constant folded into a bias, so the C's
    requantisation records compute rshift_round(acc + bias, shift) as (acc + that) >> shift."""
    b = _i64(bias)
    return b + (np.int64(1) << np.int64(shift - 1)) if shift > 0 else b


def sat16(x) -> np.ndarray:
    """C: ``mcunn_sat16(int32 or int64)``: clamp to [-32768, 32767]."""
    x = _i64(x)
    _count(x, INT16_MIN, INT16_MAX)
    return np.clip(x, INT16_MIN, INT16_MAX)


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
    with np.errstate(over="ignore", invalid="ignore"):     # inf and NaN are defined below, as in C
        v = np.array(x, dtype=np.float32, ndmin=1) * np.float32(inv_scale)
    v[np.isnan(v)] = 0
    _count(v, np.float32(INT16_MIN) - np.float32(0.5), np.float32(INT16_MAX) + np.float32(0.5))
    np.clip(v, np.float32(INT16_MIN), np.float32(INT16_MAX), out=v)
    # + 0.5f or - 0.5f by the sign (-0 gets -0.5f where C adds +0.5f: both truncate to 0), in float32
    v += np.copysign(np.float32(0.5), v)
    q = np.trunc(v, out=v).astype(np.int64)         # within [-32768, 32767] after the clamp
    return q.reshape(np.shape(x))


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    """int16 -> float32: q * scale in float32, as the C ``<name>_dequantize_output``."""
    return np.asarray(q, dtype=np.float32) * np.float32(scale)


# ----------------------------------------------------------------------------- cells
def lstm_cell(pre_i, pre_f, pre_g, pre_o, c, cell_frac: int):
    """One LSTM update from saturated Q3.12 pre-activations.
    c (int16, ``cell_frac`` fractional bits) -> (c_new, h) with h in Q15:
    lstm_c, then lstm_h of c_new."""
    c_new = lstm_c(pre_i, pre_f, pre_g, c, cell_frac)
    return c_new, lstm_h(pre_o, c_new, cell_frac)


def lstm_c(pre_i, pre_f, pre_g, c, cell_frac: int) -> np.ndarray:
    """The cell state update: c_new = sat16(rshift_round(f*c, 15) + rshift_round(i*g, 30 - cell_frac)).
    C: both products fit int32 (|f|,|i|,|g| <= 32767, |c| <= 32768)."""
    i, f, g = sigmoid_q15(pre_i), sigmoid_q15(pre_f), tanh_q15(pre_g)
    return sat16(mul_q15(f, c) + rshift_round(i * g, 2 * Q15_FRAC - cell_frac))


def lstm_h(pre_o, c_new, cell_frac: int) -> np.ndarray:
    """The output: h = sat16(rshift_round(o * tanh(q312(c_new)), 15)), Q15."""
    return sat16(mul_q15(sigmoid_q15(pre_o), tanh_q15(frac_to_q312(c_new, cell_frac))))


def peephole(pre, p, c, shift: int) -> np.ndarray:
    """A peephole connection onto a saturated Q3.12 pre-activation:
    sat16(pre + rshift_round(p * c, shift)), p an int16 weight per unit, c the int16 cell state
    (the export chooses p's scale and ``shift`` so p * c lands in Q3.12). C: |p * c| <= 2^30 and
    shift in [0, 30], so the product, its rounding add and the sum fit int32."""
    return sat16(_i64(pre) + rshift_round(_i64(p) * _i64(c), shift))


def gru_cell(pre_r, pre_z, n_x, n_h, h):
    """One GRU update (PyTorch's formula). pre_r, pre_z: saturated Q3.12 int16.
    n_x = W_in x + b_in, n_h = W_hn h + b_hn: Q.12 in int32 (saturated, not to 16 bits,
    so that r * n_h may cancel a large n_x). h: Q15.
      n_pre = sat16(n_x + rshift_round(r * n_h, 15)), then gru_mix(pre_z, n_pre, h).
    C: r * n_h in int64."""
    r = sigmoid_q15(pre_r)
    return gru_mix(pre_z, sat16(_i64(n_x) + rshift_round(r * _i64(n_h), 15)), h)


def gru_mix(pre_z, pre_n, h) -> np.ndarray:
    """A GRU's new state from saturated Q3.12 pre-activations of z and n, h in Q15:
      z, n  = sigmoid(pre_z), tanh(pre_n)
      h_new = sat16(n + rshift_round(z * (h - n), 15))      ((1-z)*n + z*h)
    C: |z * (h - n)| <= 32767 * 65535, so it and its rounding add fit int32."""
    z, n = sigmoid_q15(pre_z), tanh_q15(pre_n)
    return sat16(n + rshift_round(z * (_i64(h) - n), 15))


# ----------------------------------------------------------------------------- exact fast forms
# Faster ways to compute *the same functions* as the primitives above, for the host simulator.
# Each is exact by an argument stated next to it (never "close enough"); the C has no counterpart
# (it computes the primitives themselves), and tests/test_sim_fast.py compares each with its
# primitive.
FLOAT64_EXACT = 1 << 53        # every integer of magnitude <= 2^53 is a float64


def matmul_bound(w: np.ndarray) -> int:
    """max_r sum_j |w[r, j]|, as a Python int (no overflow): with |x| <= x_max it bounds every
    partial sum of every row's product, whatever order the terms are added in."""
    w = _i64(w)
    if w.size == 0:
        return 0
    a = np.abs(w.astype(object)) if int(np.abs(w).max()) * w.shape[-1] >= 1 << 62 else np.abs(w)
    return int(a.sum(axis=-1).max())     # object dtype: Python ints, for weights whose sum could overflow


def matmul_exact(x: np.ndarray, w: np.ndarray, bound: Optional[int] = None, x_max: Optional[int] = None,
                 w64: Optional[np.ndarray] = None) -> np.ndarray:
    """``matvec(w, x)`` (acc[..., r] = sum_j w[r, j] * x[..., j], int64), computed with a float64
    matrix product when that is provably exact, else with ``matvec`` itself.

    Why it is exact: with ``bound`` = matmul_bound(w) and |x| <= x_max, every product w[r, j] * x[j]
    and every partial sum of them, in any order and grouping (BLAS blocks, threads, fused
    multiply-adds), is an integer of magnitude <= bound * x_max. When that is < 2^53 each of those
    values is a float64 and each float64 operation on them is exact (its exact result is
    representable, so rounding does nothing): the float64 result is the integer sum, and its
    conversion to int64 is exact too.
    (Standard GEMM only multiplies and adds the terms; no Strassen-style recombination.)
    ``x_max`` defaults to max |x|, measured; ``bound`` to matmul_bound(w); ``w64``: w as float64,
    for a caller that reuses it."""
    if bound is None:
        bound = matmul_bound(w)
    if x_max is None:
        x = _i64(x)
        x_max = max(int(x.max(initial=0)), -int(x.min(initial=0)))     # Python ints: no overflow
    if bound * x_max >= FLOAT64_EXACT:
        return matvec(w, x)
    if w64 is None:
        w64 = _i64(w).astype(np.float64)
    return (np.asarray(x, dtype=np.float64) @ w64.T).astype(np.int64)


@functools.lru_cache(maxsize=None)
def int16_lut(fn) -> np.ndarray:
    """``fn`` (a function of one int16 argument, e.g. sigmoid_q15) evaluated at every int16 value,
    indexed by x + 32768: ``int16_lut(fn)[x + 32768] == fn(x)`` for every int16 x, exhaustively,
    so ``lut16`` is the same function as ``fn`` on int16 inputs (read-only; built once)."""
    t = _i64(fn(np.arange(INT16_MIN, INT16_MAX + 1, dtype=np.int64)))
    t.flags.writeable = False
    return t


def lut16(fn, x) -> np.ndarray:
    """fn(x) for int16-valued x (e.g. the output of sat16) by one table lookup (see int16_lut)."""
    return np.take(int16_lut(fn), _i64(x) + (-INT16_MIN))


def sat16_lut(fn, x) -> np.ndarray:
    """fn(sat16(x)) by one table lookup, for |x| < 2^62 (so that x + 32768 cannot wrap): np.take's
    mode="clip" clamps the index x + 32768 into [0, 65535], which is clamping x into
    [-32768, 32767], i.e. sat16; the clipped values are counted as sat16 counts them."""
    x = _i64(x)
    _count(x, INT16_MIN, INT16_MAX)
    return np.take(int16_lut(fn), x + (-INT16_MIN), mode="clip")


# ============================================================================= ops around the cells
# Integer primitives for the ops that sit around the recurrent layers (activations, element-wise,
# LayerNorm, pooling over time). Same conventions as above: int16 activations, multiplier+shift
# requantisation through ``requant``, round-half-up shifts, explicit saturation. Divisions (only
# where a ratio of run-time values is needed) round half away from zero via ``div_round``.
PHI_TABLE = _table(lambda v: 0.5 * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0))))  # Phi on [0, 8], Q15
EXP2_FRAC = 12         # exp argument: base-2 octaves with 12 fractional bits
EXP2_TABLE_LEN = 65    # 1 - 2^-v on [0, 1] at steps of 1/64: the first 65 samples of the usual grid
EXP2_TABLE = _table(lambda v: 1.0 - np.exp2(-v))[:EXP2_TABLE_LEN]   # non-decreasing, in [0, 16384]
Q30_ONE = 1 << 30
EXP_MAX_OCTAVES = 31   # 2^-31 in Q30 rounds to 0 or 1: weights at or beyond it are 0


def rshift_round_each(x, n) -> np.ndarray:
    """rshift_round with a shift per element (n >= 0 array). C: ``mcunn_rshift_round64``."""
    x, n = np.broadcast_arrays(_i64(x), _i64(n))
    half = np.where(n > 0, np.int64(1) << np.maximum(n - 1, 0), 0)
    return (x + half) >> n


def div_round(num, den) -> np.ndarray:
    """num / den rounded to nearest, ties away from zero (den > 0; |num|, den < 2^62):
    q = |num| // den, plus 1 when the remainder r has r >= den - r (i.e. 2r >= den without
    forming 2r + ... that could overflow). C: ``mcunn_div_round64`` in uint64."""
    num, den = _i64(num), _i64(den)
    a = np.abs(num)
    q, r = a // den, a % den
    q = q + (r >= den - r)
    return np.where(num < 0, -q, q)


# ----------------------------------------------------------------------------- activations (2)
def leaky_relu(x, mult: int, shift: int) -> np.ndarray:
    """x >= 0: x; else sat16(rshift_round(x * mult, shift)): slope = mult / 2^shift, same scale
    in and out. C: int64 product (|x * mult| <= 2^46), shift in [0, 62]."""
    x = _i64(x)
    return np.where(x >= 0, x, sat16(rshift_round(x * mult, shift)))


def hardtanh(x, lo: int, hi: int) -> np.ndarray:
    """clamp(x, lo, hi) with int16 bounds in x's scale (lo <= hi); ReLU6 is hardtanh(x, 0, q(6))."""
    return np.minimum(np.maximum(_i64(x), lo), hi)


HSIG_LIM = 3 << GATE_FRAC        # hardsigmoid is flat beyond |x| = 3
HSIG_MULT = 87381                # round(2^16 * 2^15 / (6 * 2^12)) = round(2^16 * 4/3)


def hardsigmoid_q15(x) -> np.ndarray:
    """Q3.12 -> Q15 in [0, 32767]: clamp(x/6 + 1/2, 0, 1) as PyTorch. x is clamped to +-3 first
    so |x * HSIG_MULT| <= 12288 * 87381 < 2^31 (int32 in C)."""
    c = np.clip(_i64(x), -HSIG_LIM, HSIG_LIM)
    return np.clip(rshift_round(c * HSIG_MULT, 16) + (1 << 14), 0, INT16_MAX)


def phi_q15(x) -> np.ndarray:
    """Q3.12 -> Q15: the standard normal CDF (GELU's gate), erf form; Phi(-v) = 1 - Phi(v)."""
    x = _i64(x)
    y = _interp_abs(x, PHI_TABLE)
    return np.where(x < 0, np.minimum(32768 - y, INT16_MAX), y)


def _gated(x, frac: int, gate) -> np.ndarray:
    """x * gate(x) in x's format (``frac`` fractional bits, 0..15): the gate is looked up on x in
    Q3.12 and is in [0, 32767] so |result| <= |x|. Beyond |x| = 8 (reachable only for frac < 12)
    the gate is taken as exactly 1 or 0: the table's flat tail would scale x by gate(8) != 1."""
    x = _i64(x)
    y = mul_q15(x, gate(frac_to_q312(x, frac)))
    if frac < GATE_FRAC:
        lim = 8 << frac
        y = np.where(x > lim, x, np.where(x < -lim, 0, y))
    return y


def gelu(x, frac: int) -> np.ndarray:
    """GELU, erf form (PyTorch's default approximate='none'): x * Phi(x), table-based."""
    return _gated(x, frac, phi_q15)


def silu(x, frac: int) -> np.ndarray:
    """SiLU / swish: x * sigmoid(x) through the existing sigmoid table."""
    return _gated(x, frac, sigmoid_q15)


def softsign_q15(x, frac: int) -> np.ndarray:
    """x / (1 + |x|), x with ``frac`` fractional bits (0..15) -> Q15, correctly rounded (ties away
    from zero): div_round(x * 2^15, 2^frac + |x|). |result| <= 32767 (shown in docs/numerics.md)."""
    x = _i64(x)
    return div_round(x << Q15_FRAC, (1 << frac) + np.abs(x))


# ----------------------------------------------------------------------------- element-wise
def add(a, b, ma: int, mb: int, shift: int) -> np.ndarray:
    """sat16(rshift_round(a * ma + b * mb, shift)): a, b int16 with their own scales, ma/mb =
    round(s_a / s_y * 2^shift) etc. (|m| < 2^31). C: int64, |sum| <= 2^47."""
    return sat16(requant([(a, ma), (b, mb)], 0, shift))


def sub(a, b, ma: int, mb: int, shift: int) -> np.ndarray:
    """sat16(rshift_round(a * ma - b * mb, shift)); as ``add``."""
    return sat16(rshift_round(_i64(a) * ma - _i64(b) * mb, shift))


def mul(a, b, m: int, shift: int) -> np.ndarray:
    """sat16(rshift_round(a * b * m, shift)), m = round(s_a * s_b / s_y * 2^shift).
    C: a * b in int32 (|a * b| <= 2^30), times m in int64 (< 2^61)."""
    return sat16(rshift_round(_i64(a) * _i64(b) * m, shift))


def one_minus_q15(x) -> np.ndarray:
    """1 - x for a Q15 gate: sat16(32768 - x); exact for sigmoid outputs ([1, 32767] -> [1, 32767])."""
    return sat16(32768 - _i64(x))


# ----------------------------------------------------------------------------- LayerNorm
def isqrt64(v) -> np.ndarray:
    """floor(sqrt(v)) for 0 <= v < 2^62, bit by bit (31 fixed iterations, no division).
    C: ``mcunn_isqrt64`` on uint64; the result is < 2^31."""
    v = _i64(v).copy()
    r = np.zeros_like(v)
    bit = np.int64(1) << np.int64(60)
    for _ in range(31):
        t = r + bit
        ge = v >= t
        v = np.where(ge, v - t, v)
        r = np.where(ge, (r >> 1) + bit, r >> 1)
        bit = bit >> 2
    return r


def rsqrt_q(u):
    """(inv, e) with 1/sqrt(u) ~= inv * 2^-e, for 1 <= u < 2^62 (smaller u is taken as 1).
    u is shifted left by an even k until it lies in [2^60, 2^62), r = isqrt64(u << k) in
    [2^30, 2^31), inv = round(2^60 / r) in [2^29, 2^30], e = 60 - k/2 in [30, 60].
    Relative error < 2^-29."""
    v = np.maximum(_i64(u), 1)
    k = np.zeros_like(v)
    for _ in range(30):
        small = v < (np.int64(1) << np.int64(60))
        v = np.where(small, v << 2, v)
        k = k + 2 * small
    r = isqrt64(v)
    inv = ((np.int64(1) << np.int64(60)) + (r >> 1)) // r
    return inv, 60 - k // 2


LN_EPS_MAX = (1 << 61) - 1


def layernorm(x, eps_q: int, out_frac: int) -> np.ndarray:
    """Normalise the last axis (n <= 32767 values, int16, any one scale s) to int16 with
    ``out_frac`` fractional bits (0..15), before gamma/beta:
      S = sum x, d_i = n x_i - S, U = n sum x^2 - S^2 + eps_q  (= n^2 (var + eps/s^2))
      y_i = sat16(rshift_round(d_i * inv, e - out_frac)),  (inv, e) = rsqrt_q(U)
    eps_q = round(eps * n^2 / s^2) clamped to [1, 2^61 - 1] so U >= 1 and U < 2^62.
    C: S int32 (|S| <= 2^30), sum x^2 and U int64 (n sum x^2, S^2 <= 2^60), d int32 (< 2^31),
    d * inv int64 (< 2^61)."""
    x = _i64(x)
    n = x.shape[-1]
    s = x.sum(axis=-1, keepdims=True)
    u = n * (x * x).sum(axis=-1, keepdims=True) - s * s + int(min(max(eps_q, 1), LN_EPS_MAX))
    inv, e = rsqrt_q(u)
    return sat16(rshift_round_each((n * x - s) * inv, e - out_frac))


def layernorm_affine(y, gamma_m, beta_b, shift: int) -> np.ndarray:
    """gamma * y + beta into the output scale s_o, per channel (last axis): the requantisation
    sat16(rshift_round(y * gamma_m + beta_b, shift)), gamma_m = round(gamma * 2^-out_frac / s_o
    * 2^shift) (|.| < 2^31), beta_b = round(beta / s_o * 2^shift) (|.| < 2^61)."""
    return sat16(requant([(y, gamma_m)], beta_b, shift))


# ----------------------------------------------------------------------------- pooling over time
def exp_neg_q30(d, mult: int, shift: int) -> np.ndarray:
    """exp(-d * s_x) in Q30 ([0, 2^30], 2^30 = 1.0) for a score difference d = m - x >= 0 (int32,
    <= 65535) of int16 scores with scale s_x; mult = round(s_x * log2(e) * 2^(12 + shift)) > 0.
      z = clip(rshift_round(d * mult, shift), 0, 31 * 2^12)     base-2 octaves, Q.12
      mant = 32768 - interp(z & 4095, EXP2_TABLE)               2^-(z & 4095)/4096 in Q15
      w = 0 if z >> 12 >= 31 else rshift_round(mant * 2^15, z >> 12)
    C: d * mult int64 (< 2^47); mant * 2^15 <= 2^30."""
    z = np.clip(requant([(d, mult)], 0, shift), 0, EXP_MAX_OCTAVES << EXP2_FRAC)
    q = z >> EXP2_FRAC
    mant = 32768 - _interp_abs(z & ((1 << EXP2_FRAC) - 1), EXP2_TABLE)
    return np.where(q >= EXP_MAX_OCTAVES, 0, rshift_round_each(mant << Q15_FRAC, q))


def mul_q30_wide(x, r) -> np.ndarray:
    """rshift_round(x * r, 30) exactly for |x| < 2^62, 0 <= r <= 2^30, without a 92-bit product:
    x = hi * 2^30 + lo (0 <= lo < 2^30), so the result is hi * r + rshift_round(lo * r, 30).
    Never increases |x| (r <= 1.0)."""
    x, r = _i64(x), _i64(r)
    hi, lo = x >> 30, x & (Q30_ONE - 1)
    return hi * r + ((lo * r + (1 << 29)) >> 30)


def softmax_pool_init(shape: tuple, dim: int):
    """State of the streaming softmax-weighted sum over time: (m, s, acc) =
    (running max score int32, sum of Q30 weights int64, weighted sum of values int64[dim])."""
    return (np.full(shape, INT16_MIN, np.int64), np.zeros(shape, np.int64),
            np.zeros(tuple(shape) + (dim,), np.int64))


def softmax_pool_update(state, x, v, mult: int, shift: int):
    """One step: score x (int16), value vector v (int16[dim]). When x beats the running max, s and
    acc are first rescaled by exp(m_old - x) (r = 2^30 otherwise, which mul_q30_wide leaves exact);
    then w = exp(m - x) is added: s += w, acc += w * v.
    Bounds for T <= 65535 steps: rescaling never grows a magnitude, so s <= T * 2^30 < 2^46 and
    |acc| <= T * 2^30 * 2^15 < 2^61 (int64 in C)."""
    m, s, acc = state
    x, v = _i64(x), _i64(v)
    grow = x > m
    r = np.where(grow, exp_neg_q30(np.where(grow, x - m, 0), mult, shift), Q30_ONE)
    s, acc = mul_q30_wide(s, r), mul_q30_wide(acc, r[..., None])
    m = np.maximum(m, x)
    w = exp_neg_q30(m - x, mult, shift)
    return m, s + w, acc + w[..., None] * v


def softmax_pool_final(state) -> np.ndarray:
    """sat16(div_round(acc, s)): the softmax-weighted mean of the values, in the values' scale
    (0 before any step)."""
    _, s, acc = state
    s = s[..., None]
    return np.where(s > 0, sat16(div_round(acc, np.maximum(s, 1))), 0)


def softmax_pool(x, v, mult: int, shift: int) -> np.ndarray:
    """A whole sequence (time on axis -2 of v, -1 of x): the fold of ``softmax_pool_update``,
    so chunked streaming and the whole sequence agree bit for bit by construction."""
    x, v = _i64(x), _i64(v)
    state = softmax_pool_init(x.shape[:-1], v.shape[-1])
    for t in range(x.shape[-1]):
        state = softmax_pool_update(state, x[..., t], v[..., t, :], mult, shift)
    return softmax_pool_final(state)


def sum_pool_update(acc, v) -> np.ndarray:
    """Running sum over time; C int32: |sum| <= 65535 * 32768 < 2^31 for T <= 65535."""
    return _i64(acc) + _i64(v)


def mean_pool_final(acc, count: int) -> np.ndarray:
    """sat16(div_round(sum, count)), ties away from zero; 0 when count == 0."""
    if count <= 0:
        return np.zeros_like(_i64(acc))
    return sat16(div_round(acc, count))


def max_pool_update(m, v) -> np.ndarray:
    """Running max over time, started at INT16_MIN."""
    return np.maximum(_i64(m), _i64(v))


def time_mean(v) -> np.ndarray:
    """Mean over axis -2 (time) of int16 values: the running sum, then mean_pool_final."""
    v = _i64(v)
    return mean_pool_final(v.sum(axis=-2), v.shape[-2])


def time_max(v) -> np.ndarray:
    """Max over axis -2 (time)."""
    return _i64(v).max(axis=-2)


# ----------------------------------------------------------------------------- sampling (generate)
# How `mcu-nn generate` picks the next token from int16 logits z[0..V) with scale s (value = q * s),
# the same on the chip and in the simulator. Greedy: the first index of the largest logit.
# At temperature T: weight w_i ~ exp((z_i - max z) * s / T) from exp_neg_q30 (Q30) rounded to Q16
# (the largest weighs 65536, so V <= 65535 tokens sum below 2^32), a uniform draw r in
# [0, sum w) by rejection (no modulo bias), and the first i whose running sum exceeds r.
# Tokens weighing under 2^-17 of the largest are never drawn.
SAMPLE_K_FRAC = 40              # logit constant k = round(s * log2(e) * 2^40)
SAMPLE_SHIFT = SAMPLE_K_FRAC - EXP2_FRAC     # mult / 2^shift = k / 2^40 octaves per logit unit, in Q.12
SAMPLE_W_SHIFT = 30 - 16        # Q30 weight -> Q16
SAMPLE_MAX_VOCAB = 65535
SAMPLE_MAX_TEMPERATURE_MILLI = 1_000_000
FLOAT_LOGIT_INV_SCALE = 256.0   # float32 models: logits enter the sampler as quantize_input(y, 256): Q8.8
PRNG_DEFAULT = 0x9E3779B9       # xorshift32 must not start at 0
U32 = (1 << 32) - 1


def sample_logit_k(scale: float) -> int:
    """The one float step of sampling, done on the host once per model: k = round(s * log2(e) * 2^40)
    for logits of scale s. 1 <= k < 2^52 (s below about 2800) keeps k * 1000 inside int64."""
    k = int(round(float(scale) * math.log2(math.e) * 2.0 ** SAMPLE_K_FRAC))
    if not 1 <= k < (1 << 52):
        raise ValueError(f"logit scale {scale!r} is outside what the sampler handles (k = {k})")
    return k


def sample_params(k: int, temperature_milli: int) -> tuple[int, int]:
    """(mult, shift) for exp_neg_q30 at temperature T = temperature_milli / 1000 (1 .. 10^6):
    mult / 2^shift = k * 1000 / (temperature_milli * 2^40) * 2^12, with mult an int32. Start at
    shift = 28 and give up precision one bit at a time while mult does not fit; at shift 0 mult
    saturates (a temperature so low that sampling is greedy in effect).
    C: ``mcunn_sample_params`` (int64 arithmetic, div_round)."""
    num = k * 1000
    shift = SAMPLE_SHIFT
    mult = int(div_round(num, temperature_milli))
    while mult > INT32_MAX and shift > 0:
        shift -= 1
        mult = int(div_round(num, temperature_milli << (SAMPLE_SHIFT - shift)))
    return min(mult, INT32_MAX), shift


def prng_seed(seed: int) -> int:
    """A user's seed (uint32) -> the xorshift32 state: MurmurHash3's fmix32, so nearby seeds give
    unrelated streams; 0 (the one state xorshift never leaves) becomes PRNG_DEFAULT."""
    h = seed & U32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & U32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & U32
    h ^= h >> 16
    return h or PRNG_DEFAULT


def prng_next(state: int) -> tuple[int, int]:
    """xorshift32 (Marsaglia 13, 17, 5): (new state, value); the value is the new state."""
    x = state
    x ^= (x << 13) & U32
    x ^= x >> 17
    x ^= (x << 5) & U32
    return x, x


def draw_below(state: int, total: int) -> tuple[int, int]:
    """(new state, r) with r uniform in [0, total), 1 <= total <= 2^32 - 1: values at or above the
    largest multiple of total below 2^32 are rejected and drawn again (no modulo bias).
    C: rem = (0u - total) % total is 2^32 mod total; accept r <= UINT32_MAX - rem."""
    rem = (1 << 32) % total
    while True:
        state, r = prng_next(state)
        if r <= U32 - rem:
            return state, r % total


def argmax_first(z) -> int:
    """Index of the largest value; ties go to the lowest index."""
    return int(np.argmax(_i64(z)))


def sample_weights(z, mult: int, shift: int) -> np.ndarray:
    """Q16 weights of the logits z (int16, 1-d): rshift_round(exp_neg_q30(max z - z_i), 14)."""
    z = _i64(z)
    return rshift_round(exp_neg_q30(z.max() - z, mult, shift), SAMPLE_W_SHIFT)


def sample_token(z, mult: int, shift: int, state: int) -> tuple[int, int]:
    """(token, new PRNG state): the first i whose running weight sum exceeds a uniform draw."""
    w = sample_weights(z, mult, shift)
    state, r = draw_below(state, int(w.sum()))
    return int(np.argmax(np.cumsum(w) > r)), state


class Sampler:
    """The C ``mcunn_sampler_t``: greedy at temperature 0, else sample_token with its own PRNG."""

    def __init__(self, logit_k: int, temperature_milli: int = 0, seed: int = 0) -> None:
        if not 0 <= temperature_milli <= SAMPLE_MAX_TEMPERATURE_MILLI:
            raise ValueError(f"temperature {temperature_milli / 1000:g} is outside 0..1000")
        self.greedy = temperature_milli == 0
        self.mult, self.shift = (0, 0) if self.greedy else sample_params(logit_k, temperature_milli)
        self.prng = prng_seed(seed)

    def next(self, z) -> int:
        if self.greedy:
            return argmax_first(z)
        token, self.prng = sample_token(z, self.mult, self.shift, self.prng)
        return token


def lm_generate(step, sampler: Sampler, prefix: list[int], n: int) -> list[int]:
    """The generation loop of ``mcunn_lm_generate``: feed every prefix token (``step(token)``
    returns the int16 logits after it), then n times draw a token and feed it back (all but the
    last, whose logits nobody reads). Continuing a generation is calling it again with the last
    token as the prefix and the same sampler."""
    if not prefix:
        raise ValueError("generation needs at least one prefix token")
    for t in prefix:
        logits = step(t)
    out: list[int] = []
    for k in range(n):
        out.append(sampler.next(logits))
        if k + 1 < n:
            logits = step(out[-1])
    return out

"""mcunn_fixedpoint.h against fixedpoint.py, on the host under ASan/UBSan:
exhaustive over int16 where the domain allows, large random + edge sets elsewhere."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from runtime_program import RUNTIME_TEXT, build_runtime_program

from mcu_nn import fixedpoint as fp

ALL16 = np.arange(-32768, 32768, dtype=np.int64)
RNG = np.random.default_rng(1234)

# One program, one primitive per mode: reads int64 rows of `arity` columns, writes int64 rows.
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mcunn_fixedpoint.h"

int main(int argc, char **argv)
{
    const char *m = argv[1];
    long long v[6];
    int arity = atoi(argv[2]);
    (void)argc;
    while (fread(v, sizeof v[0], (size_t)arity, stdin) == (size_t)arity) {
        long long r[2] = {0, 0};
        int nout = 1;
        if (!strcmp(m, "sigmoid")) r[0] = mcunn_sigmoid_q15((int32_t)v[0]);
        else if (!strcmp(m, "tanh")) r[0] = mcunn_tanh_q15((int32_t)v[0]);
        else if (!strcmp(m, "frac")) r[0] = mcunn_frac_to_q312((int32_t)v[0], (int)v[1]);
        else if (!strcmp(m, "sat16")) r[0] = mcunn_sat16(v[0]);
        else if (!strcmp(m, "sat32")) r[0] = mcunn_sat32(v[0]);
        else if (!strcmp(m, "rr32")) r[0] = mcunn_rshift_round32((int32_t)v[0], (int)v[1]);
        else if (!strcmp(m, "rr64")) r[0] = mcunn_rshift_round64(v[0], (int)v[1]);
        else if (!strcmp(m, "mulq15")) r[0] = mcunn_mul_q15((int32_t)v[0], (int32_t)v[1]);
        else if (!strcmp(m, "lstm")) {
            int16_t c = (int16_t)v[4];
            r[1] = mcunn_lstm_cell((int16_t)v[0], (int16_t)v[1], (int16_t)v[2], (int16_t)v[3], &c, (int)v[5]);
            r[0] = c;
            nout = 2;
        } else if (!strcmp(m, "gru")) r[0] = mcunn_gru_cell((int16_t)v[0], (int16_t)v[1], (int32_t)v[2], (int32_t)v[3], (int16_t)v[4]);
        else if (!strcmp(m, "quant")) {
            float x, inv;
            int32_t xb = (int32_t)v[0], ib = (int32_t)v[1];
            memcpy(&x, &xb, 4);
            memcpy(&inv, &ib, 4);
            r[0] = mcunn_quantize_f32(x, inv);
        } else return 3;
        fwrite(r, sizeof r[0], (size_t)nout, stdout);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def prog(tmp_path_factory) -> Path:
    return build_runtime_program(tmp_path_factory.mktemp("prim"), "prim", PROGRAM)


def c_eval(exe: Path, mode: str, *cols: np.ndarray, nout: int = 1) -> np.ndarray:
    rows = np.stack([np.asarray(c, np.int64) for c in cols], axis=1)
    r = subprocess.run([str(exe), mode, str(len(cols))], input=rows.tobytes(), capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[:500]
    out = np.frombuffer(r.stdout, np.int64)
    return out.reshape(-1, nout) if nout > 1 else out


def test_header_tables_equal_fixedpoint_tables():
    text = RUNTIME_TEXT
    for name, table in (("mcunn_sigmoid_table", fp.SIGMOID_TABLE), ("mcunn_tanh_table", fp.TANH_TABLE)):
        body = text.split(f"{name}[MCUNN_TABLE_LEN] = {{", 1)[1].split("};", 1)[0]
        values = np.array([int(v) for v in body.replace("\n", " ").split(",") if v.strip()])
        assert np.array_equal(values, table) and len(values) == fp.TABLE_LEN


@pytest.mark.parametrize("mode,fn", [("sigmoid", fp.sigmoid_q15), ("tanh", fp.tanh_q15)])
def test_activations_exhaustive(prog, mode, fn):
    assert np.array_equal(c_eval(prog, mode, ALL16), fn(ALL16))


def test_frac_to_q312_every_frac_exhaustive(prog):
    x = np.tile(ALL16, 16)
    frac = np.repeat(np.arange(16), ALL16.size)
    got = c_eval(prog, "frac", x, frac)
    want = np.concatenate([fp.frac_to_q312(ALL16, f) for f in range(16)])
    assert np.array_equal(got, want)


def _edges(bits: int) -> np.ndarray:
    lim = 1 << (bits - 1)
    e = [0, 1, -1, 2, -2, lim - 1, -lim, lim - 2, -lim + 1, 32767, 32768, -32768, -32769, 65535, -65536]
    return np.array([v for v in e if -lim <= v < lim], np.int64)


def test_saturation(prog):
    x = np.concatenate([_edges(64), (1 << 40) - 1, -(1 << 40), RNG.integers(-(1 << 62), 1 << 62, 100_000),
                        RNG.integers(-70000, 70000, 100_000), ALL16], axis=None)
    x = np.clip(x, -(1 << 62), 1 << 62)
    assert np.array_equal(c_eval(prog, "sat16", x), fp.sat16(x))
    assert np.array_equal(c_eval(prog, "sat32", x), fp.sat32(x))


def test_rshift_round32(prog):
    x = np.concatenate([np.repeat(_edges(32), 32), RNG.integers(-(1 << 31), 1 << 31, 200_000)])
    n = np.concatenate([np.tile(np.arange(32), _edges(32).size), RNG.integers(0, 32, 200_000)])
    assert np.array_equal(c_eval(prog, "rr32", x, n), _np_rr(x, n))


def _np_rr(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """fp.rshift_round with a per-element shift (it takes one n); grouped by n."""
    out = np.empty_like(x)
    for k in np.unique(n):
        sel = n == k
        out[sel] = fp.rshift_round(x[sel], int(k))
    return out


def test_rshift_round64(prog):
    lim = 1 << 62   # callers guarantee |x| < 2^62
    e = np.array([0, 1, -1, lim - 1, -lim + 1, 1 << 40, -(1 << 40) - 1], np.int64)
    x = np.concatenate([np.repeat(e, 63), RNG.integers(-lim + 1, lim, 200_000)])
    n = np.concatenate([np.tile(np.arange(63), e.size), RNG.integers(0, 63, 200_000)])
    assert np.array_equal(c_eval(prog, "rr64", x, n), _np_rr(x, n))


def test_mul_q15(prog):
    vals = np.array([-32768, -32767, -1, 0, 1, 16384, 32767, 32768])
    a = np.concatenate([np.repeat(vals, vals.size), RNG.integers(-32768, 32769, 200_000)])
    b = np.concatenate([np.tile(vals, vals.size), RNG.integers(-32768, 32769, 200_000)])
    assert np.array_equal(c_eval(prog, "mulq15", a, b), fp.mul_q15(a, b))


def _int16_mix(n: int) -> np.ndarray:
    extremes = np.array([-32768, -32767, -1, 0, 1, 32766, 32767])
    return np.where(RNG.random(n) < 0.2, RNG.choice(extremes, n), RNG.integers(-32768, 32768, n))


@pytest.mark.parametrize("cell_frac", [8, 11, 12, 13, 15])
def test_lstm_cell(prog, cell_frac):
    n = 100_000
    i, f, g, o, c = (_int16_mix(n) for _ in range(5))
    got = c_eval(prog, "lstm", i, f, g, o, c, np.full(n, cell_frac), nout=2)
    c_new, h = fp.lstm_cell(i, f, g, o, c, cell_frac)
    assert np.array_equal(got[:, 0], c_new) and np.array_equal(got[:, 1], h)


def test_gru_cell(prog):
    n = 200_000
    big = np.array([fp.INT32_MIN, fp.INT32_MAX, -(1 << 20), 1 << 20, 0])
    nx = np.where(RNG.random(n) < 0.2, RNG.choice(big, n), RNG.integers(-(1 << 17), 1 << 17, n))
    nh = np.where(RNG.random(n) < 0.2, RNG.choice(big, n), RNG.integers(-(1 << 17), 1 << 17, n))
    r, z, h = _int16_mix(n), _int16_mix(n), _int16_mix(n)
    assert np.array_equal(c_eval(prog, "gru", r, z, nx, nh, h), fp.gru_cell(r, z, nx, nh, h))


def test_quantize_input(prog):
    x = np.concatenate([RNG.normal(0, 4, 100_000), RNG.normal(0, 1e5, 10_000),
                        [np.nan, np.inf, -np.inf, 0.5, -0.5, 1.5, -1.5, 8.0, -8.0, 7.99987793, -0.0]]).astype(np.float32)
    # and every kind of float32 (subnormals, NaN payloads, huge): random bit patterns
    x = np.concatenate([x, RNG.integers(0, 1 << 32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    inv = np.float32(1 / 2 ** -12) * np.ones_like(x)
    inv[::3] = np.float32(1 / 0.0123)
    got = c_eval(prog, "quant", x.view(np.int32).astype(np.int64), inv.view(np.int32).astype(np.int64))
    ref = np.empty(x.size, np.int64)
    for v in np.unique(inv):
        sel = inv == v
        ref[sel] = fp.quantize_input(x[sel], float(v))
    assert np.array_equal(got, ref)

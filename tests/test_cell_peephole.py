"""The peephole LSTM cell (mcu_nn/cells/peephole_lstm.py), built straight in the IR: float
simulator vs a torch reference of Gers & Schmidhuber's equations, int8/int16 exports bit-exact
in host C (sanitizers) and on the emulated Cortex-M4, accuracy vs float, QAT forward ==
run_quant, and fixedpoint.peephole vs its C mirror."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cellcheck
from mcu_nn import fixedpoint as fp
from mcu_nn.ir import DirectionWeights, Graph, Linear, Recurrent, SelectLast
from mcu_nn.sim import run_float
from runtime_program import build_runtime_program

I, H, T = 5, 12, 20


def make_graph(*, bidirectional: bool = False, head: bool = False, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(np.float32)

    dirs = [DirectionWeights(u(4 * H, I), u(4 * H, H), u(4 * H), u(4 * H),
                             extra={"peephole": rng.uniform(-0.5, 0.5, (3, H)).astype(np.float32)})
            for _ in range(2 if bidirectional else 1)]
    ops = [Recurrent("peephole_lstm", I, H, 0, bidirectional, dirs, source="peephole")]
    if head:
        ops += [SelectLast(), Linear(u(3, ops[0].output_size), u(3))]
    return Graph(name="peephole", input_kind="float", input_size=I, seq_len=T, ops=ops)


def torch_peephole(dw: DirectionWeights, x: np.ndarray, reverse: bool = False) -> np.ndarray:
    """Gers & Schmidhuber: i, f see c_{t-1}, o sees c_t; h = o * tanh(c). x (N, T, I) -> h (N, T, H)."""
    t = {k: torch.tensor(np.asarray(v)) for k, v in
         dict(w_ih=dw.w_ih, w_hh=dw.w_hh, b_ih=dw.b_ih, b_hh=dw.b_hh, p=dw.extra["peephole"]).items()}
    xs = torch.tensor(x)
    h, c = torch.zeros(x.shape[0], H), torch.zeros(x.shape[0], H)
    out = [None] * x.shape[1]
    for s in (reversed(range(x.shape[1])) if reverse else range(x.shape[1])):
        gi, gf, gg, go = (xs[:, s] @ t["w_ih"].T + t["b_ih"] + h @ t["w_hh"].T + t["b_hh"]).chunk(4, dim=1)
        i = torch.sigmoid(gi + t["p"][0] * c)
        f = torch.sigmoid(gf + t["p"][1] * c)
        c = f * c + i * torch.tanh(gg)
        o = torch.sigmoid(go + t["p"][2] * c)
        h = o * torch.tanh(c)
        out[s] = h
    return torch.stack(out, dim=1).numpy()


def inputs(n: int, seed: int) -> np.ndarray:
    return cellcheck.inputs(n, seed, T, I)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_float_simulator_equals_torch(bidirectional):
    g = make_graph(bidirectional=bidirectional)
    x = inputs(8, 1)
    ref = np.concatenate([torch_peephole(dw, x, reverse=d == 1) for d, dw in enumerate(g.ops[0].directions)], -1)
    np.testing.assert_allclose(run_float(g, x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision,floor", [("int16", 60.0), ("int8", 40.0)])
def test_integer_export_bit_exact_and_accurate(tmp_path, precision, floor):
    # vectors beyond the calibration: saturation too
    cellcheck.integer_export(tmp_path, make_graph(), inputs(64, 2), inputs(32, 3), inputs(4, 4) * 1.5,
                             precision, floor)


def test_float32_export_within_tolerance(tmp_path):
    cellcheck.float32_export(tmp_path, make_graph(bidirectional=True, head=True), inputs(16, 2), inputs(4, 5))


@pytest.mark.qemu
@pytest.mark.parametrize("precision", ["int8", "int16"])
def test_bit_exact_on_cortex_m4(tmp_path, precision):
    cellcheck.board(tmp_path, make_graph(head=True), inputs(64, 2), inputs(4, 6), precision)


@pytest.mark.parametrize("precision", ["int8", "int16"])
def test_qat_forward_equals_run_quant(precision):
    cellcheck.qat_forward(make_graph(bidirectional=True, head=True), inputs(32, 2), inputs(6, 7), precision)


PROGRAM = r"""
#include <stdio.h>
#include "mcunn_fixedpoint.h"
int main(void)
{
    long long v[4];
    while (fread(v, sizeof v[0], 4, stdin) == 4) {
        long long r = mcunn_peephole((int16_t)v[0], (int16_t)v[1], (int16_t)v[2], (int)v[3]);
        fwrite(&r, sizeof r, 1, stdout);
    }
    return 0;
}
"""


def test_peephole_primitive_equals_c(tmp_path):
    import subprocess
    exe = build_runtime_program(tmp_path, "peep", PROGRAM)
    rng = np.random.default_rng(0)
    n = 200_000
    ext = np.array([-32768, -32767, -1, 0, 1, 32767])
    cols = [np.where(rng.random(n) < 0.2, rng.choice(ext, n), rng.integers(-32768, 32768, n)) for _ in range(3)]
    shift = rng.integers(0, 31, n)
    rows = np.stack([*cols, shift], axis=1).astype(np.int64)
    r = subprocess.run([str(exe)], input=rows.tobytes(), capture_output=True, check=True)
    got = np.frombuffer(r.stdout, np.int64)
    for s in range(31):                                  # fp.peephole takes one shift (a per-gate constant)
        at = shift == s
        np.testing.assert_array_equal(got[at], fp.peephole(*(c[at] for c in cols), s))

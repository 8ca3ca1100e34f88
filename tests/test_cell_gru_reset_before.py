"""The reset-before GRU cell (mcu_nn/cells/gru_reset_before.py), built straight in the IR: float
simulator vs a torch reference of Cho et al.'s equations, int8/int16 exports bit-exact in host C
(sanitizers) and on the emulated Cortex-M4, accuracy vs float, QAT forward == run_quant, and
fixedpoint.gru_mix vs its C mirror. H and I are not multiples of the weight chunks (4 int8
columns, 2 int16), so the kernel's walk over the padded stream is exercised."""
from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import torch

import cellcheck
from mcu_nn import fixedpoint as fp
from mcu_nn.ir import DirectionWeights, Graph, Linear, Recurrent, SelectLast
from mcu_nn.sim import run_float
from runtime_program import build_runtime_program

I, H, T, V = 5, 10, 20, 7


def make_graph(*, bidirectional: bool = False, head: bool = False, tokens: bool = False, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(H)
    width = V if tokens else I

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(np.float32)

    dirs = [DirectionWeights(u(3 * H, width), u(3 * H, H), u(3 * H), u(3 * H))
            for _ in range(2 if bidirectional else 1)]
    ops = [Recurrent("gru_reset_before", width, H, 0, bidirectional, dirs, source="grurb", input_ids=tokens)]
    if head:
        ops += [SelectLast(), Linear(u(3, ops[0].output_size), u(3))]
    return Graph(name="grurb", input_kind="tokens" if tokens else "float", input_size=width, seq_len=T, ops=ops)


def torch_gru_reset_before(dw: DirectionWeights, x: np.ndarray, reverse: bool = False) -> np.ndarray:
    """d2l.ai 10.2 / Keras reset_after=False, from linear maps: x (N, T, I) -> h (N, T, H)."""
    w_ih, w_hh, b_ih, b_hh = (torch.tensor(np.asarray(v)) for v in (dw.w_ih, dw.w_hh, dw.b_ih, dw.b_hh))
    (wir, wiz, win), (whr, whz, whn) = w_ih.chunk(3), w_hh.chunk(3)
    (bir, biz, bin_), (bhr, bhz, bhn) = b_ih.chunk(3), b_hh.chunk(3)
    xs = torch.tensor(x)
    h = torch.zeros(x.shape[0], H)
    out = [None] * x.shape[1]
    for s in (reversed(range(x.shape[1])) if reverse else range(x.shape[1])):
        xt = xs[:, s]
        r = torch.sigmoid(xt @ wir.T + bir + h @ whr.T + bhr)
        z = torch.sigmoid(xt @ wiz.T + biz + h @ whz.T + bhz)
        n = torch.tanh(xt @ win.T + bin_ + (r * h) @ whn.T + bhn)
        h = (1 - z) * n + z * h
        out[s] = h
    return torch.stack(out, dim=1).numpy()


def inputs(n: int, seed: int) -> np.ndarray:
    return cellcheck.inputs(n, seed, T, I)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_float_simulator_equals_torch(bidirectional):
    g = make_graph(bidirectional=bidirectional)
    x = inputs(8, 1)
    ref = np.concatenate([torch_gru_reset_before(dw, x, reverse=d == 1)
                          for d, dw in enumerate(g.ops[0].directions)], -1)
    np.testing.assert_allclose(run_float(g, x), ref, atol=1e-5, rtol=1e-5)


def test_reset_gate_acts_before_the_matmul():
    """Not nn.GRU: with the same weights, PyTorch's reset-after formula gives other states."""
    g = make_graph()
    dw = g.ops[0].directions[0]
    gru = torch.nn.GRU(I, H, batch_first=True)
    with torch.no_grad():
        for name, v in dict(weight_ih_l0=dw.w_ih, weight_hh_l0=dw.w_hh, bias_ih_l0=dw.b_ih, bias_hh_l0=dw.b_hh).items():
            getattr(gru, name).copy_(torch.tensor(v))
    x = inputs(4, 1)
    after = gru(torch.tensor(x))[0].detach().numpy()
    assert np.abs(run_float(g, x) - after).max() > 1e-3


@pytest.mark.parametrize("precision,floor", [("int16", 60.0), ("int8", 40.0)])
def test_integer_export_bit_exact_and_accurate(tmp_path, precision, floor):
    # vectors beyond the calibration: saturation too
    cellcheck.integer_export(tmp_path, make_graph(), inputs(64, 2), inputs(32, 3), inputs(4, 4) * 1.5,
                             precision, floor)


def test_int8_wide_layout_bit_exact(tmp_path):
    """int8 weights streamed as 2-column int16 chunks (weight_layout="wide"): the other stream walk."""
    cellcheck.integer_export(tmp_path, make_graph(bidirectional=True), inputs(64, 2), inputs(32, 3), inputs(4, 4),
                             "int8", 40.0, weight_layout="wide")


def test_token_input_bit_exact(tmp_path):
    """One-hot token ids: the input columns are picked, so the stream holds only W_hh."""
    ids = np.random.default_rng(3).integers(0, V, (68, T))
    cellcheck.integer_export(tmp_path, make_graph(tokens=True, head=True), ids[:64], ids[:64], ids[64:],
                             "int8", 40.0)


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
    long long v[3];
    while (fread(v, sizeof v[0], 3, stdin) == 3) {
        long long r = mcunn_gru_mix((int16_t)v[0], (int16_t)v[1], (int16_t)v[2]);
        fwrite(&r, sizeof r, 1, stdout);
    }
    return 0;
}
"""


def test_gru_mix_primitive_equals_c(tmp_path):
    exe = build_runtime_program(tmp_path, "mix", PROGRAM)
    rng = np.random.default_rng(0)
    n = 300_000
    ext = np.array([-32768, -32767, -1, 0, 1, 32767])
    cols = [np.where(rng.random(n) < 0.2, rng.choice(ext, n), rng.integers(-32768, 32768, n)) for _ in range(3)]
    r = subprocess.run([str(exe)], input=np.stack(cols, axis=1).astype(np.int64).tobytes(),
                       capture_output=True, check=True)
    np.testing.assert_array_equal(np.frombuffer(r.stdout, np.int64), fp.gru_mix(*cols))

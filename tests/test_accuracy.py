"""End-to-end accuracy of the quantisation scheme: PyTorch vs the bit-exact integer
simulator (dequantised), on held-out inputs drawn like the calibration set.
Run with ``pytest -s`` to see the figures."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.quant import max_abs_error, quantize, snr_db, top1_agreement
from mcu_nn.fixedpoint import dequantize, quantize_input
from mcu_nn.sim import run, run_quant
from test_float_sim import CASES, TorchChain

CALIB_N, HELD_OUT_N = 512, 32        # max calibration: the calibration set must be large enough that held-out
#                                    data rarely exceeds its ranges (256 was not, for the token classifier)
FLOOR_DB = {"int16": 60.0, "int8": 40.0}


def _quantised_output(chain: TorchChain, precision: str, x: np.ndarray) -> np.ndarray:
    q = quantize(chain.graph(), chain.inputs(CALIB_N, seed=100), precision)
    xq = x.astype(np.int64) if q.input_kind == "tokens" else quantize_input(x, 1.0 / q.input_scale)
    y = run_quant(q, xq)
    assert y.min() >= -32768 and y.max() <= 32767
    return dequantize(y, q.output_scale)


def _single(kind: str, hidden: int) -> TorchChain:
    torch.manual_seed(hidden)
    return TorchChain((nn.LSTM if kind == "lstm" else nn.GRU)(8, hidden, batch_first=True), seq_len=20)


@pytest.mark.parametrize("precision", ["int16", "int8"])
@pytest.mark.parametrize("kind,hidden", [("lstm", 32), ("lstm", 64), ("gru", 32), ("gru", 64)])
def test_single_layer_snr(kind: str, hidden: int, precision: str) -> None:
    chain = _single(kind, hidden)
    x = chain.inputs(HELD_OUT_N, seed=200)
    ref = chain.torch_out(x)
    got = _quantised_output(chain, precision, x)
    snr = snr_db(ref, got)
    print(f"\n{kind} H={hidden} {precision}: SNR {snr:.1f} dB, max |err| {max_abs_error(ref, got):.2e}")
    assert snr >= FLOOR_DB[precision]


@pytest.mark.parametrize("precision", ["int16", "int8"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_zoo_snr(name: str, precision: str) -> None:
    chain = CASES[name]
    x = chain.inputs(HELD_OUT_N, seed=200)
    ref = chain.torch_out(x)
    got = _quantised_output(chain, precision, x)
    snr = snr_db(ref, got)
    line = f"\n{name} {precision}: SNR {snr:.1f} dB, max |err| {max_abs_error(ref, got):.2e}"
    if not chain.graph().output_per_step and ref.shape[-1] > 1:
        line += f", top-1 agreement {top1_agreement(ref, got):.3f}"
    print(line)
    assert snr >= FLOOR_DB[precision]


def test_classifier_top1() -> None:
    chain = CASES["emb_lstm_last"]
    x = chain.inputs(HELD_OUT_N, seed=201)
    ref = chain.torch_out(x)
    assert top1_agreement(ref, _quantised_output(chain, "int16", x)) >= 0.95


def test_float32_precision_is_pytorch() -> None:
    chain = CASES["lstm_proj_bi_last_head"]
    x = chain.inputs(8, seed=202)
    q = quantize(chain.graph(), chain.inputs(16, seed=100), "float32")
    ref = chain.torch_out(x)
    got = run(q, x)
    assert max_abs_error(ref, got) <= 1e-5 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_quantised_models_are_bit_exact_in_c(tmp_path, name: str, precision: str) -> None:
    """What quantize() produces (64-bit accumulators, large shifts, projections, GRU bias_h)
    compiles and runs in the generated C (sanitizers on) with zero differing bits."""
    from mcu_nn.codegen import write_export
    from mcu_nn.verify import verify
    chain = CASES[name]
    q = quantize(chain.graph(), chain.inputs(64, seed=100), precision)
    x = chain.inputs(4, seed=203)
    write_export(q, tmp_path / "out", x, run(q, x))
    result = verify(tmp_path / "out", cross=False, log=lambda _: None)
    assert result.ok and result.mismatches == 0 and result.vectors > 0


def test_metrics_values() -> None:
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert snr_db(ref, ref) == float("inf")
    assert snr_db(ref, ref * 0.9) == pytest.approx(20.0)
    assert max_abs_error(ref, ref + [[0, 0.5], [0, 0]]) == 0.5
    assert top1_agreement(ref, np.array([[5.0, 4.0], [1.0, 0.0]])) == 0.5

"""The export matrix: every model-file format x every cell kind x every precision, through
the public pipeline (export_model -> verify) and against PyTorch on held-out inputs.

Floors (issue 2): verify finds 0 differing bits (integer) or stays within its float
tolerance; against PyTorch, float32 within 1e-5 relative, int16 SNR >= 60 dB, int8 SNR
>= 40 dB. Layer options (layers, bidirectional, projection, batch_first, bias, readouts)
rotate across the cells so every format and precision meets several of them; the full
option sweep per precision is in test_accuracy.py."""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from mcu_nn.pipeline import export_model, quantised_outputs
from mcu_nn.quant.metrics import snr_db
from mcu_nn.verify import verify

FORMATS = ["pt2", "torchscript_trace", "pickle"]
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
PRECISIONS = ["int8", "int16", "float32"]
OPTIONS = [
    dict(readout="last", head="linear"),
    dict(readout="seq", head=None, batch_first=False),
    dict(readout="h_n", head="mlp", bias=False),
    dict(readout="h_n_cat", head="linear", bidirectional=True, num_layers=2),
]
T, F, CALIB_N, HELD_OUT_N = 12, 6, 512, 32


def _options(kind: str, fmt: str) -> dict:
    opts = dict(OPTIONS[(KINDS.index(kind) + FORMATS.index(fmt)) % len(OPTIONS)])
    if kind == "lstm" and fmt == "pickle":
        opts.update(proj_size=16)       # LSTM projection, once per precision
    return opts


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    return (rng.standard_normal((CALIB_N, T, F)).astype(np.float32),
            rng.standard_normal((HELD_OUT_N, T, F)).astype(np.float32))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_verify_and_accuracy(fmt, kind, precision, data, tmp_path):
    calib, held_out = data
    opts = _options(kind, fmt)
    model = zoo.make_model(kind, input_size=F, hidden=32, **opts)
    path = zoo.save_model(model, tmp_path / f"m.{fmt}", fmt, zoo.example_input(model, T=T))
    np.save(tmp_path / "calib.npy", calib)
    result = export_model(path, tmp_path / "out", precision=precision, calib=str(tmp_path / "calib.npy"),
                          input_shape=(T, F), allow_pickle=(fmt == "pickle"), log=lambda s: None)

    checked = verify(tmp_path / "out", cross=False, log=lambda s: None)
    assert checked.ok, checked.first_mismatch
    if precision != "float32":
        assert checked.mismatches == 0

    ref = zoo.torch_reference(model, held_out)
    got = quantised_outputs(result.qmodel, held_out)
    assert got.shape == ref.shape
    if precision == "float32":
        rel = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
        assert rel <= 1e-5, f"{fmt} {kind} {opts}: float32 relative error {rel:.2e}"
    else:
        floor = 60.0 if precision == "int16" else 40.0
        snr = snr_db(ref, got)
        assert snr >= floor, f"{fmt} {kind} {opts}: {precision} SNR {snr:.1f} dB < {floor}"

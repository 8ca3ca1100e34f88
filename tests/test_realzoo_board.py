"""A representative subset of the real-world zoo on the emulated Cortex-M4 (QEMU mps2-an386,
DSP kernels): export int8, build the firmware, serial-test over the emulated UART, every
output bit-exact with the simulator (RUN and, for streaming models, STEP)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from mcu_nn.onboard import serial_test
from mcu_nn.pipeline import export_model
from realzoo import BY_NAME, save

pytestmark = pytest.mark.qemu            # skipped without the emulator (tests/conftest.py)

SUBSET = ["d2l_concise_gru",          # one-hot column pick, state in/out, per-step head on reshaped rows
          "kws_conv_gru",             # Conv1d + BatchNorm + MaxPool before a GRU (whole sequence)
          "ds_tcn_gru",               # causal depthwise dilated Conv1d (streaming history)
          "cnn_attention_gru",        # attention pooling over time
          "gru_layernorm", "residual_lstm", "lstm_mobile_head_acts", "kaggle_bigru_mean_max_pool",
          "lstm_autoencoder_repeat", "tutorial_lstm_tagger",
          # issue 9: hand-written loops folded (a fused kernel, and the two cell units)
          "examples_lstmcell_sine", "peephole_lstm", "textbook_gru_linear"]


@pytest.mark.parametrize("name", SUBSET)
def test_zoo_case_on_the_emulated_cortex_m4(name, tmp_path):
    case = BY_NAME[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = save(case, "pt2", tmp_path / f"{name}.pt2")
    np.savez(tmp_path / "calib.npz", x=case.calib(32, 0)["x"])
    export_model(model, tmp_path / "e", precision="int8", calib=str(tmp_path / "calib.npz"), log=lambda s: None)
    r = serial_test(tmp_path / "e", board="qemu-mps2-an386", log=lambda s: None, progress=False)
    assert r.ok and r.passed == r.vectors == 8, r.first_mismatch

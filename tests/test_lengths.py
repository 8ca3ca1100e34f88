"""Sequences of different lengths: calibration data with `lengths` (or one array per
sequence) gives test vectors that keep their lengths; verify, serial-test and bench run
each vector for its own number of steps (the padding never runs) and match bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.device import serial_test
from mcu_nn.exportdir import open_export, vector_lengths
from mcu_nn.export import export_model
from mcu_nn.verify import verify


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 12, batch_first=True)
        self.out = nn.Linear(12, 4)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.out(y)                       # one output per step


class Classifier(Tagger):
    def forward(self, x):
        y, _ = self.rnn(x)
        return self.out(y[:, -1])


@pytest.fixture(scope="module")
def ragged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ragged")
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 11, 24)
    x = np.zeros((24, 10, 3), np.float32)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.standard_normal((n, 3))
        x[i, n:] = 99.0                          # padding that would be visible if it ran
    np.savez(tmp / "calib.npz", x=x, lengths=lengths)
    return tmp, lengths


@pytest.mark.parametrize("model_cls", [Tagger, Classifier])
@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_ragged_vectors_keep_their_lengths_and_verify(ragged, model_cls, precision, tmp_path):
    tmp, lengths = ragged
    torch.manual_seed(0)
    m = model_cls().eval()
    torch.export.save(torch.export.export(m, (torch.zeros(1, 10, 3),)), tmp_path / "m.pt2")
    out = tmp_path / "e"
    r = export_model(tmp_path / "m.pt2", out, precision=precision, calib=str(tmp / "calib.npz"), log=lambda s: None)
    ex = open_export(out)
    assert vector_lengths(ex.vectors).tolist() == lengths[:8].tolist()
    exp = ex.vectors["expected"]
    # the simulator's expected output of each vector is PyTorch's on that sequence alone
    for i, n in enumerate(lengths[:8]):
        with torch.no_grad():
            ref = m(torch.from_numpy(ex.vectors["input"][i:i + 1, :n])).numpy()[0]
        got = exp[i, :n] if model_cls is Tagger else exp[i]
        scale = 1.0 if precision == "float32" else r.qmodel.output_scale
        assert np.allclose(got * scale, ref, atol=2e-2 if precision == "int8" else 1e-5), i
        if model_cls is Tagger:
            assert not exp[i, n:].any()                   # nothing after the sequence
    assert "input" not in r.manifest["saturation"]["calibration"]   # the 99s of the padding never ran
    v = verify(out, cross=False, log=lambda s: None)
    assert v.ok, v.first_mismatch


def test_ragged_vectors_on_the_host_board(ragged, tmp_path):
    tmp, lengths = ragged
    torch.manual_seed(1)
    torch.export.save(torch.export.export(Tagger().eval(), (torch.zeros(1, 10, 3),)), tmp_path / "m.pt2")
    export_model(tmp_path / "m.pt2", tmp_path / "e", precision="int16", calib=str(tmp / "calib.npz"),
                 log=lambda s: None)
    r = serial_test(tmp_path / "e", board="host", log=lambda s: None, progress=False)
    assert r.ok and r.passed == 8, r.first_mismatch
    assert r.outputs.shape == (8, 10, 4)

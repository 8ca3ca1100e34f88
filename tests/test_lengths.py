"""Sequences of different lengths: calibration data with `lengths` (or one array per
sequence) gives test vectors that keep their lengths; verify, serial-test and bench run
each vector for its own number of steps (the padding never runs) and match bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.onboard import serial_test
from mcu_nn.exportdir import open_export, vector_lengths
from mcu_nn.pipeline import export_model
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


@pytest.mark.parametrize("name", ["packed_lstm_hn", "packed_gru_pad_packed"])
def test_packed_sequence_models_run_each_sequence_for_its_length(name, tmp_path):
    """pack_padded_sequence models, pickled as their projects save them: each test vector runs its
    own length on the chip, as PyTorch's packed batch computes it."""
    import warnings

    from realzoo import BY_NAME, save
    case = BY_NAME[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = save(case, "pickle", tmp_path / "m.pt")
    cal = case.calib(32, 0)
    np.savez(tmp_path / "calib.npz", x=cal["x"], lengths=cal["lengths"])
    r = export_model(f, tmp_path / "e", precision="float32", calib=str(tmp_path / "calib.npz"),
                     input_shape=cal["x"].shape[1:], allow_pickle=True, log=lambda s: None)
    assert verify(tmp_path / "e", cross=False, log=lambda s: None).ok
    held = case.heldout(6, 0)
    from mcu_nn.pipeline import quantised_outputs
    model = case.build()
    with torch.no_grad():
        ref = model(torch.from_numpy(held["x"]), torch.from_numpy(held["lengths"])).numpy()
    for i, n in enumerate(held["lengths"]):
        got = np.asarray(quantised_outputs(r.qmodel, held["x"][i:i + 1, :n])[0])
        want = ref[i, :n] if got.ndim == 2 else ref[i]
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5), (i, int(n))


def test_the_saved_length_is_only_the_example(tmp_path):
    """A model exported with 10 steps (torch.export specialises an RNN's time axis even when it
    is marked dynamic) is calibrated and verified on 20-step sequences: the C runs any length."""
    torch.manual_seed(2)
    m = Tagger().eval()
    ep = torch.export.export(m, (torch.zeros(1, 10, 3),), dynamic_shapes=({1: torch.export.Dim.AUTO},))
    torch.export.save(ep, tmp_path / "m.pt2")
    x = np.random.default_rng(0).standard_normal((16, 20, 3)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    r = export_model(tmp_path / "m.pt2", tmp_path / "e", precision="float32", calib=str(tmp_path / "calib.npz"),
                     log=lambda s: None)
    assert open_export(tmp_path / "e").vectors["input_q"].shape[1] == 20
    assert verify(tmp_path / "e", cross=False, log=lambda s: None).ok
    from mcu_nn.pipeline import quantised_outputs
    with torch.no_grad():
        ref = m(torch.from_numpy(x[:2])).numpy()
    assert np.allclose(quantised_outputs(r.qmodel, x[:2]), ref, rtol=1e-5, atol=1e-5)

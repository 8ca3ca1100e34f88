"""The Python API (docs/api.md): models and data in memory, results as objects, no files
written unless asked; the docs' worked example runs here as written."""
from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mcu_nn
from mcu_nn import McuNnError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


class Tiny(torch.nn.Module):
    def __init__(self, cell: str = "GRU") -> None:
        super().__init__()
        self.rnn = getattr(torch.nn, cell)(3, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((24, 10, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


def _in_empty_cwd(tmp_path: Path, monkeypatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_module_and_arrays_in_results_out_no_files(tmp_path, monkeypatch, model, data):
    cwd = _in_empty_cwd(tmp_path, monkeypatch)
    m = mcu_nn.export(model, torch.from_numpy(data[:1]), calib=data, name="tiny")
    assert m.name == "tiny" and m.precision == "int8" and m.dir is None
    assert m.manifest["source_model"] == "<Tiny in memory>" and m.manifest["source_sha256"] is None
    with torch.no_grad():
        ref = model(torch.from_numpy(data)).numpy()
    np.testing.assert_allclose(m.float_outputs(data), ref, atol=1e-5)
    chip = m.simulate(data)
    assert chip.shape == ref.shape and np.abs(chip - ref).max() < 0.05
    ints = m.simulate(data, integer=True)
    assert ints.dtype == np.int16
    np.testing.assert_array_equal(m.simulate(data[0]), chip[:1])       # one sequence, unbatched
    assert "SNR" in repr(m) and "<table>" in m._repr_html_()
    assert list(cwd.iterdir()) == []                                   # nothing where the user looks
    temporary = m._dir
    assert temporary.is_dir()
    del m
    gc.collect()
    assert not temporary.exists()                                      # the private copy goes with it


def test_verify_and_save(tmp_path, monkeypatch, model, data):
    _in_empty_cwd(tmp_path, monkeypatch)
    m = mcu_nn.export(model, data[:1], calib=torch.from_numpy(data), precision="int16", name="tiny16")
    r = m.verify(cross=False)
    assert r.ok and r.vectors == 8 and r.mismatches == 0
    temporary = m._dir
    out = m.save("saved/tiny16")
    assert out == Path("saved/tiny16") and m.dir == out and not temporary.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*m.manifest["files"], "model.json"])
    from mcu_nn.exportdir import open_export
    assert open_export(out).digest == m.manifest["sha256"]             # the hashes still hold
    (tmp_path / "cwd" / "other").mkdir()
    (tmp_path / "cwd" / "other" / "notes.txt").write_text("mine")
    with pytest.raises(McuNnError, match="not empty|refus|replace"):
        m.save("other")
    assert (tmp_path / "cwd" / "other" / "notes.txt").read_text() == "mine"


def test_exported_program_path_and_ragged_calibration(tmp_path, model, data):
    ep = torch.export.export(model, (torch.from_numpy(data[:1]),))
    ragged = [data[0, :4], data[1], data[2, :7], data[3, :9]]
    m = mcu_nn.export(ep, calib=ragged, out=tmp_path / "ep")
    assert m.dir == tmp_path / "ep" and (tmp_path / "ep" / "model.json").is_file()
    assert m.accuracy.sequences == 4
    np.testing.assert_array_equal(m.simulate(ragged)[0], m.simulate(data[:1, :4])[0])
    torch.export.save(ep, tmp_path / "tiny.pt2")
    f = mcu_nn.export(tmp_path / "tiny.pt2", calib=(np.stack([np.pad(s, ((0, 10 - len(s)), (0, 0)))
                                                             for s in ragged]), np.array([4, 10, 7, 9])))
    assert f.manifest["source_model"] == "tiny.pt2" and len(f.manifest["source_sha256"]) == 64
    np.testing.assert_array_equal(f.simulate(ragged, integer=True), m.simulate(ragged, integer=True))


def test_input_shape_instead_of_example_and_state_models(data):
    class WithState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 5, batch_first=True)

        def forward(self, x, state):
            y, state = self.lstm(x, state)
            return y, state

    torch.manual_seed(2)
    lstm = Tiny("LSTM").eval()
    a = mcu_nn.export(lstm, input_shape=(10, 3), calib=data)
    b = mcu_nn.export(lstm, data[:1], calib=data)
    np.testing.assert_array_equal(a.simulate(data, integer=True), b.simulate(data, integer=True))
    s = WithState().eval()
    h = (torch.zeros(1, 1, 5), torch.zeros(1, 1, 5))
    m = mcu_nn.export(s, (torch.from_numpy(data[:1]), h), calib=data)
    assert m.manifest["state"]["inputs"] and m.manifest["state"]["outputs"]


EX = np.zeros((1, 10, 3), np.float32)
CAL = np.zeros((2, 10, 3), np.float32)


@pytest.mark.parametrize("kwargs, message", [
    ({"calib": CAL}, "example_input"),                                # neither example nor shape
    ({"example_input": np.array(["a"]), "calib": CAL}, "numeric"),
    ({"example_input": EX, "calib": np.zeros((4, 10, 5), np.float32)}, "5 features per step, the model takes 3"),
    ({"example_input": EX, "calib": [np.zeros((4, 3)), np.zeros((4,))]}, "per-sequence arrays"),
    ({"example_input": EX, "calib": np.full((2, 10, 3), np.nan, np.float32)}, "NaN"),
    ({"example_input": EX, "calib": CAL, "precision": "int4"}, "unknown precision"),
    ({"example_input": EX}, "needs calibration data"),                 # int8 without calib
])
def test_bad_input_is_one_clear_error(model, kwargs, message):
    with pytest.raises(McuNnError, match=message) as e:
        mcu_nn.export(model, **kwargs)
    assert "\n" not in str(e.value)


def test_not_a_model():
    with pytest.raises(McuNnError, match="cannot read a model from a dict"):
        mcu_nn.export({"weight": torch.zeros(2)}, calib=np.zeros((1, 2, 2)))


def _doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return blocks[-1]              # the worked example (the first block is a fragment)


@pytest.mark.qemu
@pytest.mark.slow
def test_the_docs_worked_example_runs(tmp_path, monkeypatch, one_torch_thread):
    cwd = _in_empty_cwd(tmp_path, monkeypatch)
    exec(compile(_doc_example(), str(DOC), "exec"), {"__name__": "api_doc_example"})
    written = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file())
    assert written and all(p.startswith("build/har/") for p in written), written   # only what save() asked
    assert "build/har/model.json" in written
    assert not os.environ.get("MCUNN_DEBUG")

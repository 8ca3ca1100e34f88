"""The real-world zoo (tests/realzoo) through the whole export path, compared with PyTorch.

Every case whose forward takes the sequence alone is saved as a .pt2, exported at float32,
int16 and int8, verified (host C == simulator, 0 differing bits) and compared with PyTorch
run on each held-out sequence alone, in the model's own input layout (the graph records it):
float32 within 1e-5 relative, int16 >= 60 dB, int8 >= 40 dB. Cases with state or length
inputs are covered with their own inputs in test_signatures*.py and test_dag.py.
`scripts/zoo_pipeline.py` runs every case in every format it saves in."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mcu_nn.pipeline import export_model
from mcu_nn.quant import metrics
from mcu_nn.verify import verify
from realzoo import CASES, save

SINGLE = [c for c in CASES if c.input_names == ("x",) and "pt2" in c.formats]
FLOOR = {"int8": 40.0, "int16": 60.0}
# held-out inputs deliberately beyond the calibration range (the later third of a growing
# series, calibrated on shuffled windows of the first two thirds): issue 8 asks >= 30 dB
BEYOND_CALIBRATION = {"airline_lstm_forecast": 30.0}


def _to_model(x: np.ndarray, axes: str, dtype: torch.dtype) -> torch.Tensor:
    """One sequence (T, F) or (T,) in the model's own input layout (graph.layout["input"])."""
    t = torch.from_numpy(x).to(dtype)
    lead = axes.split(",")
    if axes == "N,T" and t.dim() == 2:            # one feature without its axis (pytorch/examples' sine)
        return t[:, 0].unsqueeze(0)
    if "N" not in lead:
        return t
    t = t.unsqueeze(0)                            # (1, T, ...)
    return t.transpose(0, 1) if lead[0] == "T" else t


def _from_model(y: torch.Tensor, axes: str) -> np.ndarray:
    """The model's output for one sequence -> (T, O) per step or (O,) per sequence."""
    y = y[0] if isinstance(y, (tuple, list)) else y
    y = y.detach().double().numpy()
    if axes == "N,T":                              # per-step outputs of one feature, its axis gone
        return y[0][:, None]
    lead = axes.split(",")[:-1]
    if lead in (["N", "T"], ["T", "N"]):
        return y[0] if lead[0] == "N" else y[:, 0]
    if lead == ["N"]:
        return y[0]
    return y                                      # "T,O", "T*N,O"/"N*T,O" of one sequence, or "O"


def _postprocess(y: np.ndarray, kind) -> np.ndarray:
    if kind is None:
        return y
    z = y - y.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return p if kind == "softmax" else np.log(p)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("realzoo")
    cache = {}

    def get(case):
        if case.name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = save(case, "pt2", tmp / f"{case.name}.pt2")
            np.savez(tmp / f"{case.name}.npz", x=case.calib(64, 0)["x"])
            cache[case.name] = (model, tmp / f"{case.name}.npz")
        return cache[case.name]
    return get


@pytest.mark.parametrize("case", SINGLE, ids=lambda c: c.name)
@pytest.mark.parametrize("precision", ["float32", "int16", "int8"])
def test_zoo_case_exports_verifies_and_matches_pytorch(case, precision, saved, tmp_path):
    model_file, calib = saved(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = export_model(model_file, tmp_path / "e", precision=precision, calib=str(calib), log=lambda s: None)
    v = verify(tmp_path / "e", cross=False, log=lambda s: None)
    assert v.ok, v.first_mismatch
    from mcu_nn.pipeline import quantised_outputs
    x = case.heldout(6, 0)["x"]
    model = case.build()
    dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32
    lay = r.graph.layout or {}
    got, ref = [], []
    with torch.no_grad():
        for i in range(len(x)):
            xi = _to_model(x[i], lay.get("input", "N,T,F" if x.ndim == 3 else "N,T"),
                           torch.int64 if x.dtype.kind == "i" else dtype)
            ref.append(_from_model(model(xi), lay.get("output", "N,T,O" if r.graph.output_per_step else "N,O")))
            got.append(_postprocess(np.asarray(quantised_outputs(r.qmodel, x[i:i + 1])[0], np.float64),
                                    r.graph.postprocess))
    ref_a, got_a = np.stack(ref).reshape(len(x), -1), np.stack(got).reshape(len(x), -1)
    if precision == "float32":
        err = np.abs(got_a - ref_a)
        assert np.all(err <= 1e-5 * np.maximum(1.0, np.abs(ref_a)) + 1e-6), float(err.max())
    else:
        snr = metrics.snr_db(ref_a, got_a)
        floor = BEYOND_CALIBRATION.get(case.name, FLOOR[precision])
        assert snr >= floor, f"{case.name} {precision}: {snr:.1f} dB vs PyTorch"

"""Saturation is counted, never silent: the simulator tallies clipped values per op, export
stores the counts for the calibration data and the test vectors, verify and serial-test
print them, and calibration that trends (later inputs larger) gets a warning and headroom."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import qmodels as Q
from mcu_nn import ir
from mcu_nn.codegen import write_export
from mcu_nn.errors import McuNnWarning
from mcu_nn.pipeline import warn_if_trending
from mcu_nn import fixedpoint as fp
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from mcu_nn.sim.int_sim import saturation
from mcu_nn.verify import verify


def test_tally_counts_exactly_the_clipped_values():
    with fp.count_saturation() as tally:
        with fp.saturation_site("a"):
            fp.sat16(np.array([40000, -40000, 5, 32767, -32768]))
        fp.sat16(np.array([1, 2]))                      # outside any named site
    assert tally["a"] == [2, 5]
    assert sum(c for c, _ in tally.values()) == 2
    assert fp.sat16(np.array([99999])).tolist() == [32767]   # and nothing is tallied outside the block


def test_simulator_reports_where_out_of_range_inputs_clip():
    g = Q.make_graph("lstm", seq_len=6, readout="last", head=("linear:2",))
    calib = Q.make_input(g, n=16, seed=3)
    q = quantize(g, calib, "int8")
    assert "input" not in saturation(q, calib)            # the calibrated range holds the calibration data
    far = saturation(q, calib * 50)
    assert far["input"]["clipped"] > 0 and far["input"]["source"] == "model input"
    assert far["input"]["values"] == calib.size
    # saturation never changes a result: the same bits with and without counting
    with fp.count_saturation():
        counted = run(q, calib * 50)
    assert np.array_equal(counted, run(q, calib * 50))


def test_verify_prints_the_test_vectors_saturation(tmp_path):
    g = Q.make_graph("lstm", seq_len=6, readout="last", head=("linear:2",))
    calib = Q.make_input(g, n=16, seed=3)
    q = quantize(g, calib, "int8")
    x = calib[:4] * 50                                    # test vectors far outside the calibration
    m = write_export(q, tmp_path / "e", x, run(q, x))
    assert m["saturation"]["test_vectors"]["input"]["clipped"] > 0
    assert json.loads((tmp_path / "e" / "model.json").read_text())["saturation"] == m["saturation"]
    lines: list[str] = []
    assert verify(tmp_path / "e", cross=False, log=lines.append).ok
    sat = [ln for ln in lines if ln.startswith("saturation on these 4 vectors")]
    assert sat and "input (model input)" in sat[0] and "values" in sat[0], lines


@pytest.mark.parametrize("order,warns", [("growing", True), ("shuffled", False)])
def test_trending_calibration_warns(order, warns):
    g = ir.Graph(name="g", input_kind="float", input_size=1, seq_len=12, ops=[])
    series = np.linspace(1, 4, 120, dtype=np.float32)
    x = np.stack([series[i:i + 12] for i in range(100)])[..., None]
    if order == "shuffled":
        x = x[np.random.default_rng(0).permutation(len(x))]
        x = x[:, np.random.default_rng(1).permutation(12)]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        warn_if_trending(g, x)
    got = [str(m.message) for m in w if issubclass(m.category, McuNnWarning)]
    assert bool(got) == warns, got
    if warns:
        assert "grow" in got[0] and "saturate" in got[0]

"""Range choice per tensor (calibrate.choose_range) and the streaming head's all-step ranges."""
from __future__ import annotations

import numpy as np
import pytest

from mcu_nn.errors import McuNnError
from mcu_nn.quant import collect_ranges
from mcu_nn.quant.calibrate import HEADROOM, choose_range
from mcu_nn.fixedpoint import dequantize
from mcu_nn.quant.metrics import snr_db
from mcu_nn.quant.quantize import quantize
from mcu_nn.sim import run, run_float
from qmodels import make_graph, make_input


def _stat(values: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    a = np.abs(values)
    folds = [a[0::2], a[1::2]]
    return {"absmax": float(a.max()), "fold_absmax": [float(f.max()) for f in folds]}, folds


def test_methods_on_known_values() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(20000)
    stat, folds = _stat(v)
    assert choose_range(stat, folds, "max") == stat["absmax"]
    assert choose_range(stat, folds, "headroom") == stat["absmax"] * HEADROOM
    assert choose_range(stat, folds, "percentile") < stat["absmax"]            # clips the tail
    s = choose_range(stat, folds, "search")
    assert 2 ** 0.5 * stat["absmax"] <= s <= 4 * stat["absmax"]


def test_search_adds_headroom_beyond_its_floor_only_when_unseen_data_needs_it() -> None:
    # identical folds: nothing held out ever exceeds the fitted max: the floor, sqrt(2)
    v = np.tile(np.linspace(-3, 3, 1001), 2)
    stat = {"absmax": 3.0, "fold_absmax": [3.0, 3.0]}
    assert choose_range(stat, [np.abs(v[:1001]), np.abs(v[1001:])], "search") == pytest.approx(3.0 * 2 ** 0.5)
    # one fold reaches 1.5x the other: the search covers it
    a, b = np.abs(np.linspace(-2, 2, 1001)), np.abs(np.linspace(-3, 3, 1001))
    stat = {"absmax": 3.0, "fold_absmax": [2.0, 3.0]}
    assert choose_range(stat, [a, b], "search") >= 3.0 * 1.4


def test_unknown_method_is_one_line_error() -> None:
    g = make_graph(kind="gru", readout="last", head=("linear:3",))
    with pytest.raises(McuNnError, match="unknown range method"):
        collect_ranges(g, make_input(g, n=4), method="median")


def test_head_after_select_last_is_calibrated_over_every_step() -> None:
    g = make_graph(kind="lstm", readout="last", head=("linear:4",), seq_len=12, seed=3)
    x = make_input(g, n=32, steps=12, seed=4)
    last_only = collect_ranges(g, x, method="max", head_all_steps=False)
    all_steps = collect_ranges(g, x, method="max", head_all_steps=True)
    trace: dict = {}
    run_float(g, x, trace=trace)
    per_step = trace["op0.out"] @ g.ops[2].weight.T + g.ops[2].bias       # the head at every step
    assert last_only["op2.out"]["absmax"] == pytest.approx(np.abs(trace["op2.out"]).max(), rel=1e-6)
    assert all_steps["op2.out"]["absmax"] == pytest.approx(np.abs(per_step).max(), rel=1e-5)
    assert all_steps["op2.out"]["absmax"] > last_only["op2.out"]["absmax"]
    # the streaming outputs (head on every step) saturate with last-step ranges, not with all-step ones
    q_last = quantize(g, x, "int16", ranges="max", head_all_steps=False)
    q_all = quantize(g, x, "int16", ranges="max", head_all_steps=True)
    assert q_all.ops[2].out_scale > q_last.ops[2].out_scale


def test_search_beats_plain_max_on_held_out_data() -> None:
    """The measured weakness: held-out values past the calibration max saturate."""
    g = make_graph(kind="gru", readout="last", head=("linear:4",), seq_len=10, seed=5)
    calib = make_input(g, n=24, steps=10, seed=6)
    held = make_input(g, n=400, steps=10, seed=7)
    ref = run_float(g, held)
    snr = {m: snr_db(ref, dequantize(run(q := quantize(g, calib, "int16", ranges=m), held), q.output_scale))
           for m in ("max", "search")}
    assert snr["search"] > snr["max"] + 3.0, snr

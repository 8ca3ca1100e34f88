"""quantize(): the scheme of docs/numerics.md re-derived independently here, the overflow
proof re-checked with exact integers, and load_calibration's one-line errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.errors import McuNnError
from mcu_nn.cells import GATES
from mcu_nn.ir import (FinalHidden, Graph, Linear, QActivation, QEmbedding, QLinear, QMatrix,
                       QRecurrent, Recurrent, SelectLast)
from mcu_nn.quant import load_calibration, quantize
from mcu_nn.sim.float_sim import run_float
from test_float_sim import CASES, TorchChain

QMAX = {"int8": 127, "int16": 32767}
CALIB_N = 48


def _calib(name: str) -> np.ndarray:
    return CASES[name].inputs(CALIB_N, seed=11)


@pytest.fixture(scope="module")
def quantised() -> dict:
    # the scheme below re-derives plain calibration maxima; range choice has its own tests
    return {(n, p): quantize(CASES[n].graph(), _calib(n), p, ranges="max", head_all_steps=False)
            for n in CASES for p in ("int8", "int16")}


def _expected_shift(mults: list[np.ndarray], bounds: list[list[int]], biases: list[np.ndarray]) -> int:
    """Independent statement of the shift rule (exact Python integers)."""
    for shift in range(62, -1, -1):
        mi = [[round(float(v) * 2 ** shift) for v in m] for m in mults]
        if any(abs(v) >= 2 ** 31 for m in mi for v in m):
            continue
        bi = [[round(float(v) * 2 ** shift) for v in b] for b in biases]
        if all(sum(bd[r] * abs(m[r]) for bd, m in zip(bounds, mi)) + sum(abs(b[r]) for b in bi) < 2 ** 62
               for r in range(len(bounds[0]))):
            return shift
    raise AssertionError("no shift")


def _row_scales(w: np.ndarray, qmax: int) -> np.ndarray:
    amax = np.abs(np.asarray(w, np.float64)).max(axis=1)
    return np.where(amax == 0, 1.0, amax / qmax)


def _bound(m: QMatrix) -> list[int]:
    return [int(s) * 32768 for s in np.abs(m.w.astype(np.int64)).sum(axis=1)]


def _check_matrix(m: QMatrix, w_float: np.ndarray, precision: str) -> np.ndarray:
    qmax = QMAX[precision]
    assert m.w.dtype == (np.int8 if precision == "int8" else np.int16)
    assert m.w.shape == w_float.shape and m.mult.dtype == np.int64
    assert np.abs(m.w.astype(np.int64)).max(initial=0) <= qmax
    assert np.all(np.abs(m.mult) < 2 ** 31)
    scales = _row_scales(w_float, qmax)
    np.testing.assert_array_equal(m.w, np.clip(np.round(w_float / scales[:, None]), -qmax, qmax))
    assert m.acc_bits == (32 if max(_bound(m)) < 2 ** 31 else 64)
    return scales


def _proof(mats: list[QMatrix], biases: list[np.ndarray]) -> None:
    """The int64 accumulation can never overflow: re-proved with exact integers."""
    for r in range(mats[0].w.shape[0]):
        total = sum(_bound(m)[r] * abs(int(m.mult[r])) for m in mats) + sum(abs(int(b[r])) for b in biases)
        assert total < 2 ** 62


@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_structure_and_rules(quantised, name: str, precision: str) -> None:
    graph = CASES[name].graph()
    q = quantised[(name, precision)]
    trace: dict = {}
    run_float(graph, _calib(name), trace=trace)
    assert (q.name, q.precision, q.input_kind, q.input_size, q.seq_len) == \
        (graph.name, precision, graph.input_kind, graph.input_size, graph.seq_len)
    assert q.output_per_step == graph.output_per_step and q.output_size == graph.output_size
    assert q.max_steps == (graph.seq_len if graph.bidirectional else 0)
    if graph.input_kind == "tokens":
        assert q.input_scale == 1.0
    else:
        assert q.input_scale == pytest.approx(np.abs(trace["input"]).max() / 32767, rel=1e-12)
    scale = q.input_scale
    assert len(q.ops) == len(graph.ops)
    for i, (op, fop) in enumerate(zip(q.ops, graph.ops)):
        if isinstance(op, QEmbedding):
            assert op.table.dtype == np.int16
            assert np.abs(op.table).max() == QMAX[precision]
            assert op.out_scale == pytest.approx(np.abs(fop.weight).max() / QMAX[precision])
            scale = op.out_scale
        elif isinstance(op, QRecurrent):
            assert isinstance(fop, Recurrent) and op.in_scale == scale
            dirs = range(len(fop.directions))
            if fop.kind == "rnn_relu" or fop.proj_size:
                hmax = max(np.abs(trace[f"op{i}.d{d}.h"]).max() for d in dirs)
                assert op.h_scale == pytest.approx(hmax / 32767, rel=1e-12)
            else:
                assert op.h_scale == 2.0 ** -15
            if fop.kind == "lstm":
                cmax = max(np.abs(trace[f"op{i}.d{d}.c"]).max() for d in dirs)
                assert cmax * 2.0 ** op.cell_frac <= 32767
                assert op.cell_frac == 15 or cmax * 2.0 ** (op.cell_frac + 1) > 32767
            s_z = op.h_scale if fop.kind == "rnn_relu" else 2.0 ** -12
            hsz = fop.hidden_size
            for qd, fd in zip(op.directions, fop.directions):
                sx = _check_matrix(qd.wx, fd.w_ih, precision)
                sh = _check_matrix(qd.wh, fd.w_hh, precision)
                mx, mh = sx * scale / s_z, sh * op.h_scale / s_z
                rows = GATES[fop.kind] * hsz
                b_ih = np.zeros(rows) if fd.b_ih is None else fd.b_ih.astype(np.float64)
                b_hh = np.zeros(rows) if fd.b_hh is None else fd.b_hh.astype(np.float64)
                assert qd.bias.dtype == np.int64
                if fop.kind == "gru":
                    bias = np.concatenate([b_ih[:2 * hsz] + b_hh[:2 * hsz], b_ih[2 * hsz:]]) / s_z
                    bias_h = b_hh[2 * hsz:] / s_z
                    assert qd.bias_h is not None and qd.bias_h.dtype == np.int64 and qd.bias_h.shape == (hsz,)
                    np.testing.assert_array_equal(qd.bias_h, np.round(bias_h * 2.0 ** qd.shift))
                    extra = [np.concatenate([np.zeros(2 * hsz), bias_h])]
                else:
                    bias, extra = (b_ih + b_hh) / s_z, []
                    assert qd.bias_h is None
                assert 0 <= qd.shift <= 62
                assert qd.shift == _expected_shift([mx, mh], [_bound(qd.wx), _bound(qd.wh)], [bias] + extra)
                np.testing.assert_array_equal(qd.wx.mult, np.round(mx * 2.0 ** qd.shift))
                np.testing.assert_array_equal(qd.wh.mult, np.round(mh * 2.0 ** qd.shift))
                np.testing.assert_array_equal(qd.bias, np.round(bias * 2.0 ** qd.shift))
                _proof([qd.wx, qd.wh], [qd.bias] + ([np.concatenate([np.zeros(2 * hsz), qd.bias_h])]
                                                    if qd.bias_h is not None else []))
                assert max(abs(int(v)) for v in np.concatenate([qd.wx.mult, qd.wh.mult])) >= 2 ** 11
                if fd.w_hr is not None:
                    sp = _check_matrix(qd.proj, fd.w_hr, precision)
                    mp = sp * 2.0 ** -15 / op.h_scale
                    assert qd.proj_shift == _expected_shift([mp], [_bound(qd.proj)], [])
                    np.testing.assert_array_equal(qd.proj.mult, np.round(mp * 2.0 ** qd.proj_shift))
                    _proof([qd.proj], [])
                else:
                    assert qd.proj is None
            scale = op.h_scale
        elif isinstance(op, QLinear):
            assert isinstance(fop, Linear) and op.in_scale == scale
            assert op.out_scale == pytest.approx(np.abs(trace[f"op{i}.out"]).max() / 32767, rel=1e-12)
            sw = _check_matrix(op.mat, fop.weight, precision)
            m = sw * scale / op.out_scale
            b = (np.zeros(len(sw)) if fop.bias is None else fop.bias.astype(np.float64)) / op.out_scale
            assert op.shift == _expected_shift([m], [_bound(op.mat)], [b])
            np.testing.assert_array_equal(op.bias, np.round(b * 2.0 ** op.shift))
            assert op.bias.dtype == np.int64
            _proof([op.mat], [op.bias])
            scale = op.out_scale
        elif isinstance(op, QActivation):
            assert op.in_scale == scale
            if op.kind == "relu":
                assert op.out_scale == scale
            else:
                m = scale / 2.0 ** -12
                assert op.shift == _expected_shift([np.array([m])], [[32768]], [])
                assert op.mult == round(m * 2 ** op.shift) and op.out_scale == 2.0 ** -15
                scale = op.out_scale
        else:
            assert isinstance(op, (SelectLast, FinalHidden)) and op == fop
    assert q.output_scale == scale
    for name_, entry in q.calibration.items():
        assert set(entry) == {"min", "max", "scale", "clipped_fraction"}, name_
        assert entry["min"] <= entry["max"] and entry["scale"] > 0 and 0 <= entry["clipped_fraction"] <= 1
    assert f"op{len(graph.ops) - 1}.out" in q.calibration


def test_float32_keeps_float_ops() -> None:
    chain = CASES["gru_bi_final01"]
    graph = chain.graph()
    q = quantize(graph, _calib("gru_bi_final01"), "float32")
    assert q.ops == graph.ops and q.input_scale == 1.0 and q.output_scale == 1.0
    assert q.precision == "float32" and q.max_steps == graph.seq_len and q.calibration


def test_gate_clipping_is_reported() -> None:
    torch.manual_seed(0)
    rnn = nn.GRU(3, 4, batch_first=True)
    with torch.no_grad():
        rnn.weight_ih_l0.mul_(20.0)                    # pre-activations far beyond Q3.12's +-8
    chain = TorchChain(rnn)
    q = quantize(chain.graph(), chain.inputs(8, seed=0), "int16")
    assert q.calibration["op0.d0.gates"]["clipped_fraction"] > 0.1


def _linear_graph(weight: np.ndarray, bias: np.ndarray) -> Graph:
    recurrent = CASES["rnn_relu_head"].graph().ops[0]
    return Graph("g", "float", recurrent.input_size, 4, [recurrent, Linear(weight, bias, source="head.fc")])


def test_multiplier_without_bits_is_an_error() -> None:
    # weights ~1e-20 next to a bias of 1: the bias sets the output scale, the multiplier vanishes
    g = _linear_graph(np.full((2, 7), 1e-20, np.float32), np.ones(2, np.float32))
    with pytest.raises(McuNnError, match=r"head\.fc.*overflow risk") as e:
        quantize(g, np.random.default_rng(0).standard_normal((4, 4, 4)).astype(np.float32), "int16")
    assert "\n" not in str(e.value)


def test_no_shift_is_an_error() -> None:
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, batch_first=True)
    with torch.no_grad():
        rnn.bias_ih_l0.fill_(1e16)                     # b / 2^-12 >= 2^62 even at shift 0
    chain = TorchChain(rnn)
    with pytest.raises(McuNnError, match=r"rnn \(layer 0\) \(direction 0\).*no requantisation shift"):
        quantize(chain.graph(), chain.inputs(2, seed=0), "int8")


def test_unknown_precision() -> None:
    with pytest.raises(McuNnError, match="int8, int16 or float32"):
        quantize(CASES["rnn_relu_head"].graph(), _calib("rnn_relu_head"), "int4")


# ----------------------------------------------------------------------------- calibration files
GRAPH = CASES["lstm_2layer_perstep_bf"].graph()          # 5 features
TOKENS = CASES["emb_lstm_last"].graph()                  # vocabulary 11


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_load_formats(tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, other=np.zeros(2))
    np.savez(tmp_path / "b.npz", x)                      # the only array, under arr_0
    np.save(tmp_path / "c.npy", x[0])                    # (T, F) -> N = 1
    torch.save(torch.from_numpy(x), tmp_path / "d.pt")
    torch.save({"calib": torch.from_numpy(x)}, tmp_path / "e.pt")
    np.savez(tmp_path / "f.npz", input=x.astype(np.float64))
    for f in ("a.npz", "b.npz", "d.pt", "e.pt", "f.npz"):
        got = load_calibration(tmp_path / f, GRAPH)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(load_calibration(str(tmp_path / "c.npy"), GRAPH), x[:1])
    np.save(tmp_path / "t.npy", np.array([[1, 2, 10], [0, 0, 3]]))
    ids = load_calibration(tmp_path / "t.npy", TOKENS)
    assert ids.dtype == np.int64 and ids.shape == (2, 3)
    np.save(tmp_path / "tf.npy", np.array([[1.0, 2.0]]))   # integral floats are ids too
    assert load_calibration(tmp_path / "tf.npy", TOKENS).tolist() == [[1, 2]]


def test_random_warns() -> None:
    with pytest.warns(UserWarning, match="random"):
        x = load_calibration("random", GRAPH)
    assert x.shape == (32, GRAPH.seq_len, 5) and x.dtype == np.float32
    with pytest.warns(UserWarning):
        ids = load_calibration("random", TOKENS)
    assert ids.shape == (32, TOKENS.seq_len) and ids.min() >= 0 and ids.max() < 11


@pytest.mark.parametrize("data,pattern", [
    (np.zeros((2, 3, 6), np.float32), r"has 6 features per step, the model takes 5"),
    (np.zeros((2, 3, 5, 1), np.float32), r"shape \(2, 3, 5, 1\); expected \(N, T, 5\)"),
    (np.zeros(5, np.float32), r"shape \(5,\)"),
    (np.zeros((0, 3, 5), np.float32), r"is empty"),
    (np.zeros((2, 0, 5), np.float32), r"is empty"),
    (np.array(["a"]), r"dtype <U1"),
])
def test_bad_float_calibration(tmp_path, data, pattern) -> None:
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(McuNnError, match=pattern) as e:
        load_calibration(tmp_path / "x.npy", GRAPH)
    assert str(tmp_path / "x.npy") in _one_line(e)


def test_nan_inf_located(tmp_path) -> None:
    x = np.zeros((3, 4, 5), np.float32)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(McuNnError, match=r"2 NaN/Inf values \(first at sequence 1, step 2, feature 3\)") as e:
        load_calibration(tmp_path / "x.npy", GRAPH)
    _one_line(e)


@pytest.mark.parametrize("data,pattern", [
    (np.array([[1, 11, 2]]), r"1 token ids outside \[0, 11\) \(first 11 at sequence 0, step 1\)"),
    (np.array([[-1, 0]]), r"outside \[0, 11\)"),
    (np.array([[1.5, 2.0]]), r"non-integer values"),
    (np.zeros((2, 3, 4), np.int64), r"takes \(N, T\)"),
])
def test_bad_token_calibration(tmp_path, data, pattern) -> None:
    np.save(tmp_path / "t.npy", data)
    with pytest.raises(McuNnError, match=pattern) as e:
        load_calibration(tmp_path / "t.npy", TOKENS)
    _one_line(e)


def test_missing_unreadable_and_ambiguous_files(tmp_path) -> None:
    with pytest.raises(McuNnError, match="does not exist") as e:
        load_calibration(tmp_path / "nope.npz", GRAPH)
    _one_line(e)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(McuNnError, match="could not be read") as e:
        load_calibration(tmp_path / "bad.npz", GRAPH)
    _one_line(e)
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(McuNnError, match=r"key 'x'") as e:
        load_calibration(tmp_path / "two.npz", GRAPH)
    _one_line(e)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(McuNnError, match=r"unknown type \.csv") as e:
        load_calibration(tmp_path / "x.csv", GRAPH)
    _one_line(e)


def test_quantize_validates_calibration() -> None:
    bad = np.zeros((2, 3, 5), np.float32)
    bad[0, 1, 2] = np.nan
    with pytest.raises(McuNnError, match="NaN/Inf"):
        quantize(GRAPH, bad, "int8")
    assert math.isfinite(quantize(GRAPH, np.zeros((1, 2, 5), np.float32), "int8").input_scale)

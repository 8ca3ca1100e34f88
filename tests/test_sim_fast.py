"""The simulator's fast path (float64 products where provably exact, fused cell steps, table
lookups) against its reference path (int64 ``fp.matvec``, ``Cell.int_step`` every step): the same
integers everywhere, the same saturation counts, including weights so large that the products
fall back to int64 and inputs that clip everywhere."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import qmodels as Q
import test_cell_gru_reset_before as GRB
import test_cell_peephole as PEEP
from mcu_nn import fixedpoint as fp
from mcu_nn.ir import state_slots
from mcu_nn.quant import quantize
from mcu_nn.sim.int_sim import quantize_model_input, reference_path, run_quant_all, saturation


# ----------------------------------------------------------------------------- the helpers
def test_matmul_exact_equals_matvec_at_the_edges_of_int16():
    rng = np.random.default_rng(0)
    for qmax in (127, 32767):
        w = rng.integers(-qmax, qmax + 1, (37, 53))
        w[0] = qmax                       # a row at the largest |sum|
        x = rng.integers(-32768, 32768, (5, 7, 53))
        x[0, 0] = -32768
        x[1, 0] = np.where(w[0] > 0, 32767, -32768)
        assert np.array_equal(fp.matmul_exact(x, w), fp.matvec(w, x))


def test_matmul_exact_falls_back_to_int64_where_float64_would_round():
    # one row whose sum is 2^53 + 1: float64 cannot hold it, the bound says so, int64 runs
    w = np.array([[1 << 38, 1 << 38, 1]], np.int64)
    x = np.array([[1 << 14, 1 << 14, 1]], np.int64)
    assert fp.matmul_bound(w) * (1 << 14) >= fp.FLOAT64_EXACT
    exact = fp.matvec(w, x)
    assert int(exact[0, 0]) == (1 << 53) + 1
    assert int((x.astype(np.float64) @ w.T.astype(np.float64))[0, 0]) != (1 << 53) + 1   # what float64 would give
    assert np.array_equal(fp.matmul_exact(x, w), exact)
    # just below the bound float64 is used and exact
    w2 = np.array([[(1 << 38) - 1, 1 << 38, 0]], np.int64)
    x2 = np.array([[1 << 14, (1 << 14) - 1, -1]], np.int64)
    assert fp.matmul_bound(w2) * (1 << 14) < fp.FLOAT64_EXACT
    assert np.array_equal(fp.matmul_exact(x2, w2), fp.matvec(w2, x2))


def test_matmul_bound_does_not_overflow():
    w = np.full((2, 4), 1 << 62, np.int64)
    assert fp.matmul_bound(w) == 4 << 62
    assert fp.matmul_bound(np.zeros((0, 3), np.int64)) == 0


@pytest.mark.parametrize("fn", [fp.sigmoid_q15, fp.tanh_q15])
def test_lut16_is_the_function_on_every_int16(fn):
    x = np.arange(-32768, 32768, dtype=np.int64)
    assert np.array_equal(fp.lut16(fn, x), fn(x))
    assert np.array_equal(fp.lut16(fn, x[::-1].reshape(256, 256)), fn(x[::-1].reshape(256, 256)))


# ----------------------------------------------------------------------------- whole models
def both_paths(q, x, state=None):
    """(fast, reference): every named tensor and the saturation tally of each path."""
    out = []
    for ref in (False, True):
        with reference_path(ref), fp.count_saturation() as tally:
            env = run_quant_all(q, quantize_model_input(q, x), state=state)
        out.append((env, dict(tally)))
    return out


def assert_same(q, x, state=None):
    (fast, sat_f), (ref, sat_r) = both_paths(q, x, state)
    assert fast.keys() == ref.keys()
    for k in ref:
        assert fast[k].dtype == ref[k].dtype and np.array_equal(fast[k], ref[k]), k
    assert sat_f == sat_r
    return sat_r


CASES = [
    ("lstm", {}), ("lstm", {"proj": 3}), ("lstm", {"layers": 2, "bidirectional": True}),
    ("lstm", {"proj": 4, "layers": 2, "readout": "final:0"}),
    ("gru", {}), ("gru", {"bias": False}), ("gru", {"layers": 2, "bidirectional": True}),
    ("rnn_tanh", {"bidirectional": True}), ("rnn_relu", {"layers": 2}),
    ("lstm", {"vocab": 9, "readout": "final:0", "head": ("linear:3",)}),
    ("gru", {"vocab": 7, "layers": 2}),
    ("gru", {"readout": "last", "head": ("linear:4", "relu", "linear:2", "sigmoid")}),
]


@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("kind,kw", CASES)
def test_fast_equals_reference(kind, kw, precision):
    g = Q.make_graph(kind, **kw, hidden=8, input_size=5, seq_len=9, seed=4)
    x = Q.make_input(g, n=6, seed=2)
    calib = np.abs(x) % g.input_size if g.input_kind == "tokens" else x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(g, calib, precision)
    assert_same(q, x)
    for force64, cell_frac in ((False, 11), (True, 13), (False, 15)):   # the test quantiser's other formats
        assert_same(Q.quantize_graph(g, precision, force64=force64, cell_frac=cell_frac), x)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_fast_equals_reference_where_everything_saturates(kind):
    g = Q.make_graph(kind, layers=2, bidirectional=True, gain=12.0, hidden=8, seq_len=8, seed=1)
    q = Q.quantize_graph(g, "int16", cell_frac=15)
    x = Q.make_input(g, n=5, seed=3) * 40.0          # clips at the input, in the gates and in c
    sat = assert_same(q, x)
    assert sat["input"][0] > 0 and sat["op0"][0] > 0
    with reference_path():
        ref = saturation(q, x)
    assert saturation(q, x) == ref


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_fast_equals_reference_with_weights_beyond_float64(kind):
    """Weights no export would make (2^38): the products' bound passes 2^53, so they run in int64;
    int64 arithmetic wraps in both paths alike, so even then the bits agree."""
    g = Q.make_graph(kind, proj=3 if kind == "lstm" else 0, hidden=6, seq_len=6, seed=5)
    q = copy.deepcopy(Q.quantize_graph(g, "int16"))
    for qd in q.ops[0].directions:
        qd.wh.w = qd.wh.w.astype(np.int64) << 24
        qd.wx.w = qd.wx.w.astype(np.int64) << 23
        if qd.proj is not None:
            qd.proj.w = qd.proj.w.astype(np.int64) << 24
        assert fp.matmul_bound(qd.wh.w) * 32768 >= fp.FLOAT64_EXACT
    assert_same(q, Q.make_input(g, n=4, seed=6))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_fast_equals_reference_from_a_given_state(kind):
    g = Q.make_graph(kind, layers=2, bidirectional=True, hidden=7, seed=2)
    q = Q.quantize_graph(g, "int8")
    x = Q.make_input(g, n=3, seed=4)
    total = sum(s.size for s in state_slots(q))
    state = np.random.default_rng(0).integers(-32768, 32768, (3, total))
    assert_same(q, x, state)


@pytest.mark.parametrize("module,precision", [(PEEP, "int8"), (PEEP, "int16"), (GRB, "int8"), (GRB, "int16")])
def test_cells_without_a_fused_step(module, precision):
    """Peephole LSTM and the reset-before GRU step through int_step with the fast products."""
    g = module.make_graph(bidirectional=True, head=True)
    x = module.inputs(6, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(g, x, precision)
    assert_same(q, x)


def test_trace_is_the_same_on_both_paths():
    from mcu_nn.sim.int_sim import run_quant
    g = Q.make_graph("lstm", layers=2, bidirectional=True, head=("linear:3",), hidden=8)
    q = Q.quantize_graph(g, "int8")
    xq = quantize_model_input(q, Q.make_input(g, n=4))
    traces = []
    for ref in (False, True):
        tr: dict = {}
        with reference_path(ref):
            run_quant(q, xq, trace=tr)
        traces.append(tr)
    assert traces[0].keys() == traces[1].keys()
    for k in traces[0]:
        assert np.array_equal(traces[0][k], traces[1][k]), k


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_fast_equals_reference_without_a_requantisation_shift(kind):
    """shift 0: rshift_round and the folded rounding constant add nothing, and the fused steps
    saturate before their lookups (GateRows.activated's other branch)."""
    g = Q.make_graph(kind, bidirectional=True, hidden=6, seq_len=6, seed=7)
    q = copy.deepcopy(Q.quantize_graph(g, "int8"))
    for qd in q.ops[0].directions:
        qd.shift = 0
        qd.wx.mult = np.ones_like(qd.wx.mult)
        qd.wh.mult = np.ones_like(qd.wh.mult)
        qd.bias = qd.bias >> 20
        if qd.bias_h is not None:
            qd.bias_h = qd.bias_h >> 20
    assert_same(q, Q.make_input(g, n=4, seed=8))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_the_common_cells_have_a_fused_step(kind):
    """Else the comparisons above would compare int_step with itself."""
    from mcu_nn.cells import cell_of
    from mcu_nn.sim.int_sim import Product
    q = Q.make_qmodel(kind, proj=3 if kind == "lstm" else 0)
    assert cell_of(kind).int_steps(q.ops[0], q.ops[0].directions[0], Product) is not None

"""The integer simulator: agrees with a float reference, and its structural properties hold
(batch independence, causality, direction symmetry, readouts, embedding edge cases)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import qmodels as Q
from mcu_nn.errors import McuNnError
from mcu_nn.ir import FinalHidden, QEmbedding, QModel, SelectLast
from mcu_nn.sim import run, run_quant
from mcu_nn.sim.int_sim import quantize_model_input

CASES = [
    ("lstm", {}), ("lstm", {"proj": 3}), ("lstm", {"layers": 2, "bidirectional": True}),
    ("gru", {}), ("gru", {"bias": False}), ("gru", {"layers": 2, "bidirectional": True}),
    ("rnn_tanh", {}), ("rnn_relu", {}),
    ("lstm", {"vocab": 9, "readout": "final:0", "head": ("linear:3",)}),
    ("gru", {"readout": "last", "head": ("linear:4", "relu", "linear:2", "sigmoid")}),
]


@pytest.mark.parametrize("precision,tol", [("int16", 2e-3), ("int8", 3e-2)])
@pytest.mark.parametrize("kind,kw", CASES)
def test_matches_float_reference(kind, kw, precision, tol):
    g = Q.make_graph(kind, **kw)
    q = Q.quantize_graph(g, precision)
    x = Q.make_input(g, n=4)
    y = run(q, x)
    assert y.dtype == np.int64 and y.min() >= -32768 and y.max() <= 32767
    ref = Q.float_forward(g, x)
    assert y.shape == ref.shape
    err = np.abs(y * q.output_scale - ref).max()
    assert err <= tol * max(1.0, np.abs(ref).max()), f"max error {err}"


@pytest.mark.parametrize("kind,kw", CASES)
def test_batch_rows_are_independent(kind, kw):
    g = Q.make_graph(kind, **kw)
    q = Q.quantize_graph(g, "int16")
    xq = quantize_model_input(q, Q.make_input(g, n=5))
    whole = run_quant(q, xq)
    for i in range(5):
        assert np.array_equal(run_quant(q, xq[i:i + 1])[0], whole[i])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_unidirectional_is_causal(kind):
    g = Q.make_graph(kind, layers=2, seq_len=8)
    q = Q.quantize_graph(g, "int16")
    xq = quantize_model_input(q, Q.make_input(g))
    full = run_quant(q, xq)
    for k in (1, 4, 7):
        assert np.array_equal(run_quant(q, xq[:, :k]), full[:, :k])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_reverse_direction_is_forward_on_flipped_input(kind):
    g = Q.make_graph(kind, bidirectional=True, seq_len=6)
    q = Q.quantize_graph(g, "int16")
    swapped = dataclasses.replace(q, ops=[dataclasses.replace(q.ops[0], directions=q.ops[0].directions[::-1])])
    xq = quantize_model_input(q, Q.make_input(g))
    a = run_quant(q, xq)
    b = run_quant(swapped, xq[:, ::-1])[:, ::-1]
    h = g.ops[0].state_size
    assert np.array_equal(a[..., :h], b[..., h:]) and np.array_equal(a[..., h:], b[..., :h])


def test_readouts_pick_the_documented_steps():
    g = Q.make_graph("lstm", bidirectional=True, seq_len=6)
    q = Q.quantize_graph(g, "int16")
    xq = quantize_model_input(q, Q.make_input(g))
    seq = run_quant(q, xq)
    h = g.ops[0].state_size

    def with_op(op, size):
        return dataclasses.replace(q, ops=q.ops + [op], output_per_step=False, output_size=size)

    assert np.array_equal(run_quant(with_op(SelectLast(), 2 * h), xq), seq[:, -1])
    assert np.array_equal(run_quant(with_op(FinalHidden([0]), h), xq), seq[:, -1, :h])
    assert np.array_equal(run_quant(with_op(FinalHidden([1]), h), xq), seq[:, 0, h:])
    assert np.array_equal(run_quant(with_op(FinalHidden([1, 0]), 2 * h), xq),
                          np.concatenate([seq[:, 0, h:], seq[:, -1, :h]], -1))


def test_embedding_rows_and_out_of_range_ids():
    table = np.arange(12, dtype=np.int64).reshape(4, 3) - 5
    q = QModel("emb", "int16", "tokens", 4, 3, [QEmbedding(table, 0.1)], 1.0, 0.1, True, 3)
    ids = np.array([[0, 3, -1], [4, 2, 1 << 40]])
    y = run_quant(q, ids)
    assert np.array_equal(y[0, 0], table[0]) and np.array_equal(y[0, 1], table[3])
    assert np.array_equal(y[1, 1], table[2])
    assert not y[0, 2].any() and not y[1, 0].any() and not y[1, 2].any()


def test_saturation_is_reached_and_respected():
    g = Q.make_graph("rnn_relu", gain=6.0, seq_len=10)
    q = Q.quantize_graph(g, "int16", relu_scale=2.0 ** -13)
    y = run(q, Q.make_input(g) * 4)
    assert y.max() == 32767 and y.min() == 0


def test_bad_input_shape_is_one_line_error():
    q = Q.make_qmodel("gru")
    with pytest.raises(McuNnError, match="takes a 3-d input") as e:
        run_quant(q, np.zeros((2, 3), np.int64))
    assert "\n" not in str(e.value)

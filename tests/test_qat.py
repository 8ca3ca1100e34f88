"""mcu_nn.qat: the fake-quant forward IS the chip's integer forward (bit for bit with
run_quant), gradients reach the weights, and training through it keeps exports exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.errors import McuNnError
from mcu_nn.qat import QATModel, fine_tune
from mcu_nn.sim import run, run_quant
from mcu_nn.sim.int_sim import quantize_model_input
from qmodels import make_graph, make_input

CASES = {
    "lstm_last": dict(kind="lstm", readout="last", head=("linear:4",)),
    "gru_last_tanh": dict(kind="gru", readout="last", head=("linear:5", "tanh")),
    "gru_bi_final01": dict(kind="gru", bidirectional=True, readout="final:0,1", head=("linear:3",)),
    "lstm_2layer_perstep": dict(kind="lstm", layers=2, head=("linear:3", "sigmoid")),
    "rnn_tanh_bi_final1": dict(kind="rnn_tanh", bidirectional=True, layers=2, readout="final:1", head=("linear:3",)),
    "rnn_relu_mlp": dict(kind="rnn_relu", head=("linear:4", "relu", "linear:2")),
    "emb_lstm": dict(kind="lstm", vocab=11, readout="last", head=("linear:3",)),
    "gru_nobias_saturating": dict(kind="gru", bias=False, gain=6.0, readout="last", head=("linear:3",)),
}


def _data(graph, n: int, seed: int) -> np.ndarray:
    x = make_input(graph, n=n, steps=7, seed=seed)
    return x % graph.input_size if graph.input_kind == "tokens" else x


@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fake_quant_forward_equals_integer_simulator(case: str, precision: str) -> None:
    g = make_graph(**CASES[case], seq_len=7)
    qat = QATModel(g, _data(g, 40, 2), precision)
    x = _data(g, 9, 3)
    q = qat.qmodel()
    ints = qat.forward_int(x)
    expected = run_quant(q, quantize_model_input(q, x))
    assert ints.dtype == np.int64 and np.array_equal(ints, expected)       # every bit of every value
    out = qat(x).detach().numpy()
    assert np.array_equal(out, expected * q.output_scale)                   # value = q * scale exactly
    # the saturating case must really saturate, or it would test nothing
    if case == "gru_nobias_saturating":
        assert q.calibration["op0.d0.gates"]["clipped_fraction"] > 0


@pytest.mark.parametrize("case", ["lstm_last", "gru_bi_final01", "emb_lstm"])
def test_gradients_reach_the_weights_and_training_stays_bit_exact(case: str) -> None:
    g = make_graph(**CASES[case], seq_len=7)
    calib = _data(g, 32, 2)
    qat = QATModel(g, calib, "int8")
    before = [p.detach().clone() for p in qat.parameters()]
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        loss = qat(calib).pow(2).mean()
        loss.backward()
        for name, p in qat.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
    moved = [not torch.equal(a, b.detach()) for a, b in zip(before, qat.parameters())]
    assert sum(moved) >= len(moved) - 2      # only unused directions may stay put
    qat.recalibrate(calib)
    x = _data(g, 5, 4)
    assert np.array_equal(qat.forward_int(x), run(qat.qmodel(), x))


def test_straight_through_gradient_matches_float_formula_where_nothing_saturates() -> None:
    """Through a Linear head alone the STE gradient is the float gradient at the fake-quant weights."""
    g = make_graph(kind="gru", readout="last", head=("linear:3",), seq_len=7)
    qat = QATModel(g, _data(g, 32, 2), "int16")
    x = _data(g, 6, 5)
    qat(x).sum().backward()
    head = qat.layers[-1]
    assert torch.allclose(head.b.grad, torch.full((3,), 6.0))            # d sum / d bias = N


def test_fine_tune_lowers_the_loss_of_the_integer_model() -> None:
    g = make_graph(kind="lstm", readout="last", head=("linear:3",), seq_len=7, hidden=8)
    rng = np.random.default_rng(0)
    x = _data(g, 48, 6)
    y = rng.integers(0, 3, 48)
    x[np.arange(48), :, 0] += (y[:, None] - 1) * 1.5          # a learnable signal in feature 0
    qat = QATModel(g, x, "int8")
    ce = lambda: float(nn.functional.cross_entropy(qat(x), torch.from_numpy(y)))  # noqa: E731
    start = ce()
    fine_tune(qat, x, y, epochs=4, lr=1e-2, batch=16, log=lambda s: None)
    assert ce() < start * 0.9


def test_input_lr_applies_to_the_first_layers_input_weights_only() -> None:
    g = make_graph(kind="gru", layers=2, readout="last", head=("linear:3",), seq_len=7, hidden=6)
    rng = np.random.default_rng(1)
    x = _data(g, 32, 7)
    y = rng.integers(0, 3, 32)
    runs = {}
    for input_lr in (None, 0.0):
        qat = QATModel(g, x, "int8")
        before = {n: p.detach().clone() for n, p in qat.named_parameters()}
        fine_tune(qat, x, y, epochs=1, lr=1e-2, batch=16, input_lr=input_lr, log=lambda s: None)
        runs[input_lr] = {n: not torch.equal(before[n], p) for n, p in qat.named_parameters()}
    first_wx = "layers.0.dirs.0.wx.w"
    assert all(runs[None].values())                          # plain run: every parameter moves
    assert runs[0.0][first_wx] is False                      # lr 0 there: not one bit changes
    assert all(v for n, v in runs[0.0].items() if n != first_wx)   # ... and only there


def test_from_module_reads_a_torch_model_through_the_frontend() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    net = Net().eval()
    x = np.random.default_rng(1).standard_normal((16, 6, 3)).astype(np.float32)
    qat = QATModel.from_module(net, torch.from_numpy(x[:1]), x, "int16", name="net")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = qat(x).detach().numpy()
    assert np.abs(got - ref).max() < 1e-2 * np.abs(ref).max()     # int16 follows float closely
    assert np.array_equal(qat.forward_int(x), run(qat.qmodel(), x))


def test_unsupported_cases_are_one_line_errors() -> None:
    g = make_graph(kind="lstm", proj=3, seq_len=7)
    with pytest.raises(McuNnError, match="projection"):
        QATModel(g, _data(g, 8, 1), "int8")
    g = make_graph(kind="lstm", seq_len=7)
    with pytest.raises(McuNnError, match="int8 or int16"):
        QATModel(g, _data(g, 8, 1), "float32")

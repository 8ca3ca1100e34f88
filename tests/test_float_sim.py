"""run_float against PyTorch modules themselves, for every cell kind and option."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.errors import McuNnError
from mcu_nn.ir import Activation, DirectionWeights, Embedding, FinalHidden, Graph, Linear, Recurrent, SelectLast
from mcu_nn.sim.float_sim import run_float


# ----------------------------------------------------------------------------- helpers shared by
# test_quantize.py and test_accuracy.py: a torch model as parts, its Graph, its torch output.
class TorchChain:
    """embedding? -> rnn -> readout -> head, kept as torch modules so PyTorch computes the
    reference and the same parameters build the Graph (no frontend needed)."""

    def __init__(self, rnn: nn.RNNBase, readout=None, head: Sequence[nn.Module] = (),
                 embedding: Optional[nn.Embedding] = None, seq_len: int = 7):
        self.rnn, self.readout, self.head, self.embedding = rnn.eval(), readout, list(head), embedding
        self.seq_len = seq_len

    def torch_out(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            inp = torch.from_numpy(x)
            if self.embedding is not None:
                inp = self.embedding(inp)
            bf = self.rnn.batch_first
            out, hn = self.rnn(inp if bf else inp.transpose(0, 1))
            out = out if bf else out.transpose(0, 1)
            hn = hn[0] if isinstance(hn, tuple) else hn
            ndir = 2 if self.rnn.bidirectional else 1
            if self.readout is None:
                y = out
            elif self.readout == "last":
                y = out[:, -1]
            else:                                          # ("final", [dirs])
                y = torch.cat([hn[-ndir + d] for d in self.readout[1]], dim=-1)
            for m in self.head:
                y = m(y)
            return y.numpy()

    def graph(self) -> Graph:
        ops: list = []
        if self.embedding is not None:
            ops.append(Embedding(self.embedding.weight.detach().numpy().copy(), source="emb"))
        ops += recurrent_ops(self.rnn)
        if self.readout == "last":
            ops.append(SelectLast())
        elif self.readout is not None:
            ops.append(FinalHidden(list(self.readout[1])))
        for m in self.head:
            if isinstance(m, nn.Linear):
                b = None if m.bias is None else m.bias.detach().numpy().copy()
                ops.append(Linear(m.weight.detach().numpy().copy(), b))
            else:
                ops.append(Activation({nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}[type(m)]))
        tokens = self.embedding is not None
        return Graph(name="t", input_kind="tokens" if tokens else "float",
                     input_size=self.embedding.num_embeddings if tokens else self.rnn.input_size,
                     seq_len=self.seq_len, ops=ops)

    def inputs(self, n: int, seed: int, t: Optional[int] = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        t = t or self.seq_len
        if self.embedding is not None:
            return rng.integers(0, self.embedding.num_embeddings, (n, t)).astype(np.int64)
        return rng.standard_normal((n, t, self.rnn.input_size)).astype(np.float32)


def recurrent_ops(m: nn.RNNBase) -> list[Recurrent]:
    kind = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}[m.mode]
    proj = getattr(m, "proj_size", 0) or 0
    ops = []
    for layer in range(m.num_layers):
        dirs = []
        for sfx in ([""] + (["_reverse"] if m.bidirectional else [])):
            p = {name: getattr(m, f"{name}_l{layer}{sfx}").detach().numpy().copy()
                 for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
                 if hasattr(m, f"{name}_l{layer}{sfx}")}
            dirs.append(DirectionWeights(p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                                         p.get("weight_hr")))
        in_size = m.input_size if layer == 0 else (proj or m.hidden_size) * (2 if m.bidirectional else 1)
        ops.append(Recurrent(kind, in_size, m.hidden_size, proj, m.bidirectional, dirs, source=f"rnn (layer {layer})"))
    return ops


def assert_close(ref: np.ndarray, got: np.ndarray, rel: float = 1e-5) -> None:
    assert ref.shape == got.shape, (ref.shape, got.shape)
    err = float(np.max(np.abs(ref.astype(np.float64) - got)))
    assert err <= rel * max(1.0, float(np.max(np.abs(ref)))), f"max abs error {err}"


def cases() -> dict[str, TorchChain]:
    torch.manual_seed(0)
    return {
        "lstm_2layer_perstep_bf": TorchChain(nn.LSTM(5, 8, num_layers=2, batch_first=True)),
        "lstm_proj_bi_last_head": TorchChain(nn.LSTM(4, 8, proj_size=3, bidirectional=True),
                                             "last", [nn.Linear(6, 5), nn.Tanh()]),
        "lstm_nobias_final": TorchChain(nn.LSTM(3, 6, bias=False, batch_first=True), ("final", [0]),
                                        [nn.Linear(6, 2, bias=False)]),
        "gru_bi_final01": TorchChain(nn.GRU(4, 6, bidirectional=True, batch_first=True), ("final", [0, 1]),
                                     [nn.Linear(12, 3)]),
        "gru_nobias_2layer": TorchChain(nn.GRU(3, 5, num_layers=2, bias=False), "last", [nn.Sigmoid()]),
        "rnn_tanh_bi_2layer_final1": TorchChain(nn.RNN(4, 6, num_layers=2, bidirectional=True),
                                                ("final", [1]), [nn.Linear(6, 4)]),
        "rnn_relu_head": TorchChain(nn.RNN(4, 7, nonlinearity="relu", batch_first=True), None,
                                    [nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2), nn.Sigmoid()]),
        "emb_lstm_last": TorchChain(nn.LSTM(6, 8, batch_first=True), "last", [nn.Linear(8, 4)],
                                    embedding=nn.Embedding(11, 6)),
        "emb_gru_bi_perstep": TorchChain(nn.GRU(5, 4, bidirectional=True, batch_first=True),
                                         embedding=nn.Embedding(9, 5)),
    }


CASES = cases()


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_pytorch(name: str) -> None:
    chain = CASES[name]
    x = chain.inputs(4, seed=1)
    graph = chain.graph()
    got = run_float(graph, x)
    assert got.dtype == np.float32
    assert got.shape == ((4, chain.seq_len, graph.output_size) if graph.output_per_step else (4, graph.output_size))
    assert_close(chain.torch_out(x), got)


def test_other_sequence_length_and_single_step() -> None:
    chain = CASES["gru_bi_final01"]
    for t in (1, 13):
        x = chain.inputs(3, seed=2, t=t)
        assert_close(chain.torch_out(x), run_float(chain.graph(), x))


def test_trace_names_and_shapes() -> None:
    chain = CASES["lstm_proj_bi_last_head"]
    x = chain.inputs(2, seed=3)
    trace: dict = {}
    y = run_float(chain.graph(), x, trace=trace)
    t = chain.seq_len
    assert trace["input"].shape == (2, t, 4)
    assert trace["op0.d0.gates"].shape == (2, t, 32) and trace["op0.d1.gates"].shape == (2, t, 32)
    assert trace["op0.d1.c"].shape == (2, t, 8) and trace["op0.d1.hfull"].shape == (2, t, 8)
    assert trace["op0.d0.h"].shape == (2, t, 3)
    assert trace["op0.out"].shape == (2, t, 6)
    np.testing.assert_array_equal(trace["op1.out"], trace["op0.out"][:, -1])
    np.testing.assert_array_equal(trace["op3.out"], y)
    # the traced pre-activations are what the gates were computed from
    pre = trace["op0.d0.gates"][:, 0]
    c0 = 1 / (1 + np.exp(-pre[:, :8])) * np.tanh(pre[:, 16:24])
    np.testing.assert_allclose(trace["op0.d0.c"][:, 0], c0, rtol=1e-5, atol=1e-6)
    gtrace: dict = {}
    run_float(CASES["gru_bi_final01"].graph(), CASES["gru_bi_final01"].inputs(2, seed=3), trace=gtrace)
    assert gtrace["op0.d1.nx"].shape == (2, 7, 6) and gtrace["op0.d1.nh"].shape == (2, 7, 6)


def test_bad_input_shape_is_one_line_error() -> None:
    graph = CASES["lstm_2layer_perstep_bf"].graph()
    with pytest.raises(McuNnError, match=r"\(N, T, 5\)") as e:
        run_float(graph, np.zeros((2, 3, 4), np.float32))
    assert "\n" not in str(e.value)

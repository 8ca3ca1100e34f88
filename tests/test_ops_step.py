"""The per-step ops people put around an RNN (mcu_nn/ops units): activations, element-wise
add/sub/mul, cat along the features, LayerNorm, BatchNorm1d folded into a Linear.

Each model is written the way people write it, exported through ``export_model`` at int8, int16
and float32 and verified through the host C under ASan/UBSan (0 differing bits; ``_run`` and, for
streaming models, ``_step`` one step at a time); its accuracy is measured against PyTorch on
held-out data. Hand-built QModels push the integer kernels to saturation, zeros and extreme
multipliers, C against the simulator."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

from mcu_nn.codegen import write_export
from mcu_nn.errors import McuNnError
from mcu_nn.pipeline import export_model, quantised_outputs
from mcu_nn.frontend import load_model
from mcu_nn.ir import QModel
from mcu_nn.ops.activations import Pointwise, QPointwise
from mcu_nn.ops.concat import Concat, QConcat
from mcu_nn.ops.elementwise import Elementwise, QElementwise
from mcu_nn.ops.layernorm import LayerNorm, QLayerNorm
from mcu_nn import fixedpoint as fp
from mcu_nn.quant.metrics import snr_db
from mcu_nn.sim import run
from mcu_nn.verify import verify

F, H, T = 4, 8, 10
PRECISIONS = ("int8", "int16", "float32")
MIN_SNR = {"int16": 60.0, "int8": 40.0}
FLOAT_RTOL = 1e-5


def _save(model: nn.Module, tmp: Path) -> Path:
    model.eval()
    path = tmp / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, T, F),)), str(path))
    return path


def export_and_check(model: nn.Module, tmp: Path, precision: str, min_snr: float | None = None):
    """Export, verify C == simulator bit for bit (float32: 1e-5 relative), and measure accuracy
    against PyTorch on held-out sequences. Returns the ExportResult."""
    path = _save(model, tmp)
    calib = np.random.default_rng(0).normal(0, 1, (48, T, F)).astype(np.float32)
    np.savez(tmp / "calib.npz", x=calib)
    out = tmp / f"out_{precision}"
    res = export_model(path, out, precision=precision, calib=str(tmp / "calib.npz"), name="m", log=lambda _: None)
    v = verify(out, cross=False, log=lambda _: None)
    assert v.ok and v.mismatches == 0, v.first_mismatch
    held = np.random.default_rng(1).normal(0, 1, (16, T, F)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(held)).numpy()
    got = quantised_outputs(res.qmodel, held)
    assert got.shape == ref.shape
    if precision == "float32":
        err = np.abs(got.astype(np.float64) - ref)
        assert (err <= FLOAT_RTOL * np.maximum(1.0, np.abs(ref))).all(), float(err.max())
    else:
        snr = snr_db(ref, got)
        assert snr >= (min_snr if min_snr is not None else MIN_SNR[precision]), snr
    return res


def _kinds(res) -> list[str]:
    return [type(op).__name__ for op in res.graph.ops]


# ----------------------------------------------------------------------------- models people write
class ResidualLSTM(nn.Module):
    """Stacked LSTM with a residual connection: out = lstm2(out1)[0] + out1."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm1, self.lstm2 = nn.LSTM(F, H, batch_first=True), nn.LSTM(H, H, batch_first=True)
        self.fc = nn.Linear(H, 3)

    def forward(self, x):
        out1, _ = self.lstm1(x)
        out = self.lstm2(out1)[0] + out1
        return self.fc(out)


class GruLayerNorm(nn.Module):
    """GRU -> LayerNorm -> Linear, per step."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.gru, self.norm, self.fc = nn.GRU(F, H, batch_first=True), nn.LayerNorm(H), nn.Linear(H, 3)
        with torch.no_grad():                      # a trained-looking affine part
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.fc(self.norm(self.gru(x)[0]))


class TwoBranchCat(nn.Module):
    """Two recurrent branches side by side, concatenated, last step classified."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b = nn.LSTM(F, H, batch_first=True), nn.GRU(F, 6, batch_first=True)
        self.fc = nn.Linear(H + 6, 4)

    def forward(self, x):
        both = torch.cat([self.a(x)[0], self.b(x)[0]], dim=-1)
        return self.fc(both[:, -1])


class RecurrentLinearCat(nn.Module):
    """A linear branch on the raw input beside a recurrent one: cat(gru(x), relu(linear(x)))."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin, self.gru, self.fc = nn.Linear(F, 5), nn.GRU(F, H, batch_first=True), nn.Linear(H + 5, 2)

    def forward(self, x):
        side = torch.relu(self.lin(x))
        return self.fc(torch.cat((self.gru(x)[0], side), 2))


class Gated(nn.Module):
    """Gating a * sigmoid(b) and a difference, on an LSTM's output."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.lstm = nn.LSTM(F, H, batch_first=True)
        self.a, self.b, self.c, self.fc = nn.Linear(H, 6), nn.Linear(H, 6), nn.Linear(H, 6), nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        g = self.a(out) * torch.sigmoid(self.b(out))
        return self.fc(g - self.c(out))


class MlpHead(nn.Module):
    """LSTM, last step, an MLP head with GELU and SiLU."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.lstm = nn.LSTM(F, H, batch_first=True)
        self.head = nn.Sequential(nn.Linear(H, 16), nn.GELU(), nn.Linear(16, 8), nn.SiLU(), nn.Linear(8, 3))

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class BatchNormHead(nn.Module):
    """GRU, h_n, Linear + BatchNorm1d (eval) + ReLU, Linear."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.gru = nn.GRU(F, H, batch_first=True)
        self.fc1, self.bn, self.fc2 = nn.Linear(H, 12), nn.BatchNorm1d(12), nn.Linear(12, 3)
        with torch.no_grad():                      # running statistics as training leaves them
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.2, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        _, h = self.gru(x)
        return self.fc2(torch.relu(self.bn(self.fc1(h[-1]))))


class ManyLive(nn.Module):
    """Three tensors live at once (three scratch buffers), a residual over a skip Linear, in the
    streaming path or, bidirectional, in the whole-sequence path."""
    def __init__(self, bidirectional: bool):
        super().__init__()
        torch.manual_seed(7)
        width = 2 * H if bidirectional else H
        self.rnn = nn.GRU(F, H, batch_first=True, bidirectional=bidirectional)
        self.skip = nn.Linear(F, width)
        self.l1, self.l2, self.l3 = nn.Linear(width, 3), nn.Linear(width, 4), nn.Linear(width, 5)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        r = self.rnn(x)[0] + self.skip(x)
        return self.fc(torch.cat([self.l1(r), self.l2(r), self.l3(r)], dim=-1))


MODELS = {
    "residual_lstm": (ResidualLSTM, ["Recurrent", "Recurrent", "Elementwise", "Linear"]),
    "gru_layernorm": (GruLayerNorm, ["Recurrent", "LayerNorm", "Linear"]),
    "two_branch_cat": (TwoBranchCat, ["Recurrent", "Recurrent", "Concat", "SelectLast", "Linear"]),
    "recurrent_linear_cat": (RecurrentLinearCat, ["Linear", "Activation", "Recurrent", "Concat", "Linear"]),
    "gated": (Gated, ["Recurrent", "Linear", "Linear", "Activation", "Elementwise", "Linear", "Elementwise",
                      "Linear"]),
    "mlp_head": (MlpHead, ["Recurrent", "SelectLast", "Linear", "Pointwise", "Linear", "Pointwise", "Linear"]),
    "batchnorm_head": (BatchNormHead, ["Recurrent", "FinalHidden", "Linear", "Activation", "Linear"]),
    "many_live": (lambda: ManyLive(False), ["Recurrent", "Linear", "Elementwise", "Linear", "Linear", "Linear",
                                            "Concat", "Linear"]),
    "many_live_bidir": (lambda: ManyLive(True), ["Recurrent", "Linear", "Elementwise", "Linear", "Linear",
                                                 "Linear", "Concat", "Linear"]),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("key", list(MODELS))
def test_model_exports_verifies_and_matches_pytorch(key, precision, tmp_path):
    make, kinds = MODELS[key]
    res = export_and_check(make(), tmp_path, precision)
    assert _kinds(res) == kinds


def test_batchnorm_is_folded_into_the_linear(tmp_path):
    model = BatchNormHead().eval()
    g = load_model(_save(model, tmp_path))
    lin = g.ops[2]
    bn = model.bn
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    np.testing.assert_allclose(lin.weight, model.fc1.weight.detach().numpy() * a[:, None], rtol=1e-6)
    assert "bn" in lin.source


def test_many_live_tensors_get_a_third_scratch_buffer(tmp_path):
    export_and_check(ManyLive(False), tmp_path, "int8")
    assert "vc[" in (tmp_path / "out_int8" / "m.h").read_text()


# ----------------------------------------------------------------------------- activations
ACTIVATIONS = {
    "LeakyReLU": lambda: nn.LeakyReLU(0.1), "Hardtanh": lambda: nn.Hardtanh(-0.5, 0.75), "ReLU6": nn.ReLU6,
    "Hardsigmoid": nn.Hardsigmoid, "GELU": nn.GELU, "GELU_tanh": lambda: nn.GELU(approximate="tanh"),
    "SiLU": nn.SiLU, "Softsign": nn.Softsign,
    "F.leaky_relu": lambda: _Fn(lambda v: Fn.leaky_relu(v, 0.2)), "F.hardtanh": lambda: _Fn(Fn.hardtanh),
    "F.relu6": lambda: _Fn(Fn.relu6), "F.hardsigmoid": lambda: _Fn(Fn.hardsigmoid),
    "F.gelu": lambda: _Fn(Fn.gelu), "F.silu": lambda: _Fn(Fn.silu), "F.softsign": lambda: _Fn(Fn.softsign),
}


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class ActModel(nn.Module):
    """LSTM -> Linear -> activation -> Linear, per step (the Linear widens the range past the
    activations' interesting parts: ReLU6's 6, Hardtanh's bounds, GELU's dip)."""
    def __init__(self, act: nn.Module):
        super().__init__()
        torch.manual_seed(8)
        self.lstm, self.l1, self.act, self.l2 = nn.LSTM(F, H, batch_first=True), nn.Linear(H, 8), act, nn.Linear(8, 3)
        with torch.no_grad():
            self.l1.weight.mul_(6.0)

    def forward(self, x):
        return self.l2(self.act(self.l1(self.lstm(x)[0])))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name, precision, tmp_path):
    res = export_and_check(ActModel(ACTIVATIONS[name]()), tmp_path, precision)
    assert _kinds(res) == ["Recurrent", "Linear", "Pointwise", "Linear"]


def test_activation_quantisation_rules(tmp_path):
    """Scales the rules promise: leaky/hardtanh keep the input scale, hardsigmoid/softsign give Q15,
    GELU/SiLU a power of two at most one bit coarser than the input."""
    for name, check in [("LeakyReLU", lambda q: q.out_scale == q.in_scale),
                        ("ReLU6", lambda q: q.out_scale == q.in_scale and q.lo == 0
                         and q.hi == min(round(6 / q.in_scale), 32767)),
                        ("Hardsigmoid", lambda q: q.out_scale == 2.0 ** -15 and q.frac == 12),
                        ("Softsign", lambda q: q.out_scale == 2.0 ** -15),
                        ("GELU", lambda q: q.out_scale == 2.0 ** -q.frac and q.in_scale <= q.out_scale < 2 * q.in_scale)]:
        sub = tmp_path / name
        sub.mkdir()
        res = export_and_check(ActModel(ACTIVATIONS[name]()), sub, "int16")
        q = res.qmodel.ops[2]
        assert isinstance(q, QPointwise) and check(q), (name, q)


# ----------------------------------------------------------------------------- frontend messages
class _Broadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.fc = nn.GRU(F, H, batch_first=True), nn.Linear(H, 3)

    def forward(self, x):
        out, h = self.gru(x)
        return self.fc(out + h[-1].unsqueeze(1))


class _BnNotAfterLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.bn, self.fc = nn.GRU(F, H, batch_first=True), nn.BatchNorm1d(H), nn.Linear(H, 3)

    def forward(self, x):
        return self.fc(self.bn(self.gru(x)[0][:, -1]))


class _Divide(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(F, H, batch_first=True)

    def forward(self, x):
        out = self.gru(x)[0]
        return out / out


@pytest.mark.parametrize("model, words", [(_Broadcast, "no broadcasting"), (_BnNotAfterLinear, "right after a Linear"),
                                          (_Divide, "softsign")])
def test_unsupported_forms_say_why(model, words, tmp_path):
    with pytest.raises(McuNnError, match=words):
        load_model(_save(model(), tmp_path))


# ----------------------------------------------------------------------------- C vs simulator edges
def _edge_model() -> QModel:
    """Every integer kernel at its extremes: saturating multipliers, multipliers that round everything
    to zero, frac 0 and 15, LayerNorm of constant vectors and of +-32768, the largest eps."""
    big = (1 << 31) - 1
    x = "input"
    pw = lambda kind, **kw: QPointwise(kind, **{**dict(mult=1, shift=0, frac=0, lo=0, hi=0, in_scale=1.0,
                                                      out_scale=1.0), **kw}, inputs=[x])
    ops = [
        pw("leaky_relu", mult=big, shift=0), pw("leaky_relu", mult=1, shift=62),
        pw("leaky_relu", mult=-big, shift=31), pw("hardtanh", lo=-5, hi=7), pw("hardtanh", lo=-32768, hi=32767),
        pw("hardsigmoid", mult=big, shift=31), pw("hardsigmoid", mult=big, shift=0),
        pw("gelu", frac=0), pw("gelu", frac=15), pw("gelu", frac=11, mult=3, shift=1),
        pw("silu", frac=0), pw("silu", frac=15), pw("softsign", frac=0), pw("softsign", frac=15),
        pw("softsign", frac=7, mult=big, shift=30),
        QElementwise("add", 1 << 30, 1 << 30, 30, [1.0, 1.0], 1.0, inputs=[x, "op0.out"]),
        QElementwise("sub", big, big, 31, [1.0, 1.0], 1.0, inputs=[x, "op2.out"]),
        QElementwise("add", -big, 1, 0, [1.0, 1.0], 1.0, inputs=[x, x]),
        QElementwise("mul", big, 0, 30, [1.0, 1.0], 1.0, inputs=[x, x]),
        QElementwise("mul", 1, 0, 62, [1.0, 1.0], 1.0, inputs=[x, "op8.out"]),
        QElementwise("mul", -big, 0, 0, [1.0, 1.0], 1.0, inputs=[x, "op1.out"]),
        QLayerNorm(1, 15, np.full(F, big), np.full(F, -(1 << 60)), 40, 1.0, 1.0, inputs=[x]),
        QLayerNorm(fp.LN_EPS_MAX, 0, np.array([big, -big, 1, 0]), np.array([0, 1 << 60, -5, 7]), 20, 1.0, 1.0,
                   inputs=[x]),
        QLayerNorm(1000, 12, np.array([1 << 20, 3, -7, 1 << 25]), np.zeros(F, np.int64), 21, 1.0, 1.0,
                   inputs=["op17.out"]),
        QConcat([big, 1], [0, 62], [1.0, 1.0], 1.0, inputs=[x, "op3.out"]),
    ]
    names = [f"op{i}.out" for i in range(len(ops))]
    ops.append(QConcat([1] * len(ops), [0] * len(ops), [1.0] * len(ops), 1.0, inputs=names))
    sizes = [F] * (len(ops) - 2) + [2 * F]
    return QModel(name="edge", precision="int16", input_kind="float", input_size=F, seq_len=T, ops=ops,
                  input_scale=1.0, output_scale=1.0, output_per_step=True, output_size=sum(sizes))


def _edge_inputs() -> np.ndarray:
    rng = np.random.default_rng(2)
    rows = [np.zeros(F), np.full(F, 32767), np.full(F, -32768), np.array([32767, -32768, 32767, -32768]),
            np.array([1, -1, 0, 0]), np.full(F, 5), np.array([-32768, -32768, -32768, 32767]),
            np.array([8, -8, 4096, -4096]), np.array([32767, 0, 0, 0])]
    seqs = []
    for n in range(4):
        steps = [rows[(n + t) % len(rows)] for t in range(T)]
        steps[-1] = rng.integers(-32768, 32768, F)
        seqs.append(steps)
    return np.array(seqs, np.float32)


def test_kernels_match_the_simulator_at_the_edges(tmp_path):
    q = _edge_model()
    x = _edge_inputs()
    expected = run(q, x)
    assert expected.max() == 32767 and expected.min() == -32768      # saturation is reached
    assert (expected == 0).any()
    write_export(q, tmp_path / "edge", x, expected)
    v = verify(tmp_path / "edge", cross=False, log=lambda _: None)
    assert v.ok and v.mismatches == 0, v.first_mismatch


def test_float_graph_of_every_unit_runs_in_c(tmp_path):
    """float32 kernels of the units on a hand-built graph whose ops all read the input."""
    from mcu_nn.ir import Graph
    from mcu_nn.quant import quantize
    x = "input"
    ops = [Pointwise(k, inputs=[x]) for k in ("leaky_relu", "hardtanh", "hardsigmoid", "gelu", "silu", "softsign")]
    ops += [Pointwise("gelu", approximate="tanh", inputs=[x]),
            Elementwise("add", alpha=-0.5, inputs=[x, "op0.out"]), Elementwise("sub", alpha=2.0, inputs=[x, x]),
            Elementwise("mul", inputs=[x, "op4.out"]),
            LayerNorm(F, 1e-3, np.linspace(0.5, 2, F).astype(np.float32), np.linspace(-1, 1, F).astype(np.float32),
                      inputs=[x]),
            LayerNorm(F, 1e-5, inputs=[x])]
    ops.append(Concat(inputs=[f"op{i}.out" for i in range(len(ops))]))
    g = Graph(name="f", input_kind="float", input_size=F, seq_len=T, ops=ops)
    xin = np.random.default_rng(3).normal(0, 4, (3, T, F)).astype(np.float32)
    xin[0, 0] = 0.0                                    # LayerNorm of a constant vector: eps alone
    q = quantize(g, xin, "float32")
    write_export(q, tmp_path / "f", xin, run(q, xin))
    v = verify(tmp_path / "f", cross=False, log=lambda _: None)
    assert v.ok, v.first_mismatch

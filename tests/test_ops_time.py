"""Ops over time around the RNN (mcu_nn/ops): models written the way people write them, exported
at int8/int16/float32 and verified bit for bit (float32: 1e-5 relative) through the host C under
ASan/UBSan, accuracy against PyTorch on held-out data, and _step == _run (the harness runs both)
for the streaming ones."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcu_nn import ir
from mcu_nn.errors import McuNnError
from mcu_nn.pipeline import export_model
from mcu_nn import fixedpoint as fp
from mcu_nn.quant.metrics import snr_db
from mcu_nn.sim import run
from mcu_nn.verify import verify

T, FIN = 16, 4


class KWS(nn.Module):
    """Conv1d+GRU keyword spotter: symmetric padding and a stride-2 pool -> whole sequences."""
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(FIN, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.pool, self.gru, self.fc = nn.MaxPool1d(2), nn.GRU(8, 16, batch_first=True), nn.Linear(16, 3)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        x = x.transpose(1, 2)
        x = F.relu(self.bn(self.conv(x)))
        x = self.pool(x)
        x = x.permute(0, 2, 1)
        out, h = self.gru(x)
        return self.fc(out[:, -1])


class CausalAttention(nn.Module):
    """Depthwise dilated causal Conv1d (F.pad left) -> GRU -> attention pooling (MLP scores): streams."""
    def __init__(self, bmm: bool = False):
        super().__init__()
        self.bmm = bmm
        self.dw = nn.Conv1d(FIN, FIN, 3, dilation=2, groups=FIN)
        self.gru = nn.GRU(FIN, 16, batch_first=True)
        self.a1, self.a2, self.fc = nn.Linear(16, 8), nn.Linear(8, 1), nn.Linear(16, 3)

    def forward(self, x):
        x = F.pad(x.transpose(1, 2), (4, 0))
        x = F.relu(self.dw(x)).transpose(1, 2)
        out, _ = self.gru(x)
        w = torch.softmax(self.a2(torch.tanh(self.a1(out))), dim=1)
        ctx = torch.bmm(w.transpose(1, 2), out).squeeze(1) if self.bmm else torch.sum(w * out, dim=1)
        return self.fc(ctx)


class LinearAttention(nn.Module):
    """Scores = Linear(H, 1) straight on the LSTM outputs."""
    def __init__(self):
        super().__init__()
        self.rnn, self.score, self.fc = nn.LSTM(FIN, 12, batch_first=True), nn.Linear(12, 1), nn.Linear(12, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        w = torch.softmax(self.score(out), dim=1)
        return self.fc(torch.sum(w * out, dim=1))


class AutoEncoder(nn.Module):
    """LSTM autoencoder: h_n[-1] repeated over T -> decoder LSTM -> Linear per step: whole sequences."""
    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.out = nn.LSTM(FIN, 8, batch_first=True), nn.LSTM(8, 8, batch_first=True), \
            nn.Linear(8, FIN)

    def forward(self, x):
        _, (h, _) = self.enc(x)
        z = h[-1].unsqueeze(1).repeat(1, x.shape[1], 1)
        o, _ = self.dec(z)
        return self.out(o)


class GlobalPool(nn.Module):
    """Global pooling over time of the GRU outputs: streams with accumulators in the state."""
    def __init__(self, how: str):
        super().__init__()
        self.how, self.gru, self.fc = how, nn.GRU(FIN, 10, batch_first=True), nn.Linear(10, 2)

    def forward(self, x):
        out, _ = self.gru(x)
        if self.how == "mean":
            v = out.mean(dim=1)
        elif self.how == "max":
            v = torch.max(out, dim=1)[0]
        elif self.how == "sum":
            v = out.sum(dim=1)
        elif self.how == "first":
            v = out[:, 0]
        else:                                   # the last 4 steps, averaged: whole sequences
            v = out[:, -4:].mean(dim=1)
        return self.fc(v)


class ConvSame(nn.Module):
    """padding='same' Conv1d -> AvgPool1d(2) -> LSTM, global mean of the conv (N, C, T) over time."""
    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv1d(FIN, 6, 5, padding="same"), nn.AvgPool1d(2)
        self.rnn, self.fc = nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 2)

    def forward(self, x):
        y = self.pool(torch.tanh(self.conv(x.transpose(1, 2))))
        out, _ = self.rnn(y.transpose(1, 2))
        return self.fc(out[:, -1])


MODELS = {"kws": (KWS, False), "causal_attention": (CausalAttention, True),
          "bmm_attention": (lambda: CausalAttention(bmm=True), True), "linear_attention": (LinearAttention, True),
          "autoencoder": (AutoEncoder, False), "mean": (lambda: GlobalPool("mean"), True),
          "max": (lambda: GlobalPool("max"), True), "sum": (lambda: GlobalPool("sum"), True),
          "first": (lambda: GlobalPool("first"), True), "last4": (lambda: GlobalPool("last4"), False),
          "conv_same": (ConvSame, False)}
MIN_SNR = {"int16": 60.0, "int8": 40.0}


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, T, FIN)).astype(np.float32)


def _export(model: nn.Module, tmp: Path, precision: str):
    torch.manual_seed(0)
    model.eval()
    path = tmp / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, T, FIN),)), str(path))
    np.savez(tmp / "calib.npz", x=_data(128, 0))
    return export_model(path, tmp / precision, precision=precision, calib=str(tmp / "calib.npz"), name="m",
                        log=lambda _: None)


@pytest.mark.parametrize("precision", ["int8", "int16", "float32"])
@pytest.mark.parametrize("which", list(MODELS))
def test_export_verify_accuracy(which, precision, tmp_path):
    make, streams = MODELS[which]
    torch.manual_seed(0)
    model = make().eval()
    res = _export(model, tmp_path, precision)
    assert res.manifest["has_step"] is streams
    header = (tmp_path / precision / "m.h").read_text()
    assert f"#define M_HAS_STEP {int(streams)}" in header
    v = verify(tmp_path / precision, cross=False, log=lambda _: None)   # run, and step when streaming
    assert v.ok and v.mismatches == 0, v.first
    held = _data(32, 1)
    with torch.no_grad():
        ref = model(torch.from_numpy(held)).numpy()
    got = run(res.qmodel, held)
    if precision == "float32":
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    else:
        assert snr_db(ref, fp.dequantize(got, res.qmodel.output_scale)) >= MIN_SNR[precision]


def test_batchnorm_is_folded_into_the_conv(tmp_path):
    res = _export(KWS(), tmp_path, "float32")
    kinds = [type(o).__name__ for o in res.graph.ops]
    assert kinds == ["Conv1d", "Activation", "TimePool", "Recurrent", "SelectLast", "Linear"]


def test_streaming_cut_anywhere_equals_whole_sequence():
    """The simulator over a whole sequence equals _run; here the integer ops' state carried
    across chunks: a causal conv + attention model run on the first k steps gives the prefix
    outputs the chip's _step gives after k steps."""
    torch.manual_seed(3)
    model = CausalAttention().eval()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        res = _export(model, Path(d), "int16")
    x = _data(4, 5)
    for k in (1, 5, T):
        prefix = run(res.qmodel, x[:, :k])
        with torch.no_grad():
            ref = model(torch.from_numpy(x[:, :k])).numpy()
        assert snr_db(ref, fp.dequantize(prefix, res.qmodel.output_scale)) >= 50


def test_saturation_and_zero_inputs_match_c(tmp_path):
    """Edge vectors through C vs simulator: all zeros, inputs far beyond the calibrated range
    (saturating every int16), and a tiny-scale model (calibrated on 1e-3 data)."""
    torch.manual_seed(0)
    model = CausalAttention().eval()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, T, FIN),)), str(path))
    edge = np.concatenate([np.zeros((2, T, FIN)), 1e4 * _data(2, 7), -1e4 * np.abs(_data(2, 8)),
                           1e-3 * _data(2, 9)]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=edge)
    for prec in ("int8", "int16"):
        export_model(path, tmp_path / prec, precision=prec, calib=str(tmp_path / "calib.npz"), name="m",
                     log=lambda _: None)
        v = verify(tmp_path / prec, cross=False, log=lambda _: None)
        assert v.ok and v.mismatches == 0, v.first
    np.savez(tmp_path / "tiny.npz", x=1e-3 * _data(16, 2))
    export_model(path, tmp_path / "tiny", precision="int16", calib=str(tmp_path / "tiny.npz"), name="m",
                 log=lambda _: None)
    v = verify(tmp_path / "tiny", cross=False, log=lambda _: None)
    assert v.ok and v.mismatches == 0, v.first


def test_strided_per_step_output_is_refused(tmp_path):
    class Strided(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(FIN, 4, 2, stride=2)

        def forward(self, x):
            return self.conv(x.transpose(1, 2)).transpose(1, 2)
    with pytest.raises(McuNnError, match="different number of steps"):
        _export(Strided(), tmp_path, "int8")


def test_linear_on_channels_first_is_refused(tmp_path):
    class Wrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(T, 2)

        def forward(self, x):
            return self.fc(x.transpose(1, 2))
    with pytest.raises(McuNnError, match=r"\(N, C, T\) layout"):
        _export(Wrong(), tmp_path, "int8")


def test_conv_geometry_matches_torch():
    """Float Conv1d op over stride/padding/dilation/groups against torch.nn.functional.conv1d."""
    from mcu_nn.ops.conv1d import Conv1d
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 11, 6)).astype(np.float32)
    for stride, pad, dil, groups in [(1, 0, 1, 1), (2, 1, 1, 2), (1, 2, 2, 3), (3, 0, 2, 6)]:
        w = rng.normal(size=(6, 6 // groups, 3)).astype(np.float32)
        b = rng.normal(size=6).astype(np.float32)
        op = Conv1d(stride=stride, pad_left=pad, pad_right=pad, dilation=dil, groups=groups, weight=w, bias=b)
        ref = F.conv1d(torch.from_numpy(x).transpose(1, 2), torch.from_numpy(w), torch.from_numpy(b), stride,
                       pad, dil, groups).transpose(1, 2).numpy()
        got = op.run_float([x])[0]
        assert got.shape == ref.shape and op.out_len(11) == ref.shape[1]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        assert op.bidirectional                 # none of these is causal: whole sequences
    causal = Conv1d(pad_left=4, dilation=2, weight=np.ones((6, 6, 3), np.float32))
    assert not causal.bidirectional and causal.out_len(11) == 11


def test_whole_sequence_flag_in_ir():
    g = ir.Graph("g", "float", FIN, T, [ir.Recurrent("gru", FIN, 4, 0, False, [ir.DirectionWeights(
        np.zeros((12, FIN), np.float32), np.zeros((12, 4), np.float32))])])
    assert not ir.whole_sequence(g)
    from mcu_nn.ops.repeat import Repeat
    assert Repeat.bidirectional

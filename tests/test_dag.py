"""Models that are not a plain chain in PyTorch's graph: ops that compute nothing, zero
initial states built inside forward, and state passed in and returned. Each is exported at
int8 and verified bit for bit through the host C compiler."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.export import export_model
from mcu_nn.verify import verify

F, H, T = 3, 8, 6


def _export_and_verify(model: nn.Module, tmp: Path, example: tuple) -> object:
    model.eval()
    path = tmp / "m.pt2"
    torch.export.save(torch.export.export(model, example), str(path))
    calib = np.random.default_rng(0).normal(0, 1, (16, T, F)).astype(np.float32)
    np.savez(tmp / "calib.npz", x=calib)
    res = export_model(path, tmp / "out", precision="int8", calib=str(tmp / "calib.npz"), name="m",
                       log=lambda _: None)
    v = verify(tmp / "out", cross=False, log=lambda _: None)
    assert v.ok and v.mismatches == 0, v.first
    return res


def _x(n: int = 1) -> torch.Tensor:
    return torch.randn(n, T, F)


class NoOps(nn.Module):
    """Every op here computes nothing for an eval-mode model on CPU float32."""
    def __init__(self, which: str):
        super().__init__()
        torch.manual_seed(0)
        self.which = which
        self.rnn = nn.LSTM(F, H, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(H, 2)

    def forward(self, x):
        w = self.which
        if w == "assert_metadata":
            torch.ops.aten._assert_tensor_metadata(x, dtype=torch.float32)
        if w == "to_device":
            x = x.to(x.device)
        if w == "to_dtype":
            x = x.to(torch.float32)
        if w == "float":
            x = x.float()
        if w == "contiguous":
            x = x.contiguous()
        if w == "clone":
            x = x.clone()
        if w == "detach":
            x = x.detach()
        if w == "view":
            x = x.view(x.shape[0], x.shape[1], F)
        if w == "reshape":
            x = x.reshape(-1, T, F)
        out, _ = self.rnn(x)
        if w == "dropout":
            out = self.drop(out)
        return self.fc(out[:, -1])


@pytest.mark.parametrize("which", ["assert_metadata", "to_device", "to_dtype", "float", "contiguous",
                                   "clone", "detach", "view", "reshape", "dropout"])
def test_ops_that_compute_nothing(which, tmp_path):
    _export_and_verify(NoOps(which), tmp_path, (_x(),))


class ZeroState(nn.Module):
    """The zero initial state built inside forward, in the ways tutorials write it."""
    def __init__(self, how: str, kind: str = "lstm"):
        super().__init__()
        torch.manual_seed(1)
        self.how, self.kind = how, kind
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(F, H, batch_first=True)
        self.fc = nn.Linear(H, 2)

    def init_hidden(self, n: int):
        weight = next(self.parameters())
        h = weight.new(1, n, H).zero_()
        return (h, weight.new(1, n, H).zero_()) if self.kind == "lstm" else h

    def zeros(self, x):
        n = x.shape[0]
        if self.how == "new_zero_":
            return self.init_hidden(n)
        if self.how == "torch_zeros":
            z = lambda: torch.zeros(1, n, H)  # noqa: E731
        elif self.how == "new_zeros":
            z = lambda: x.new_zeros(1, n, H)  # noqa: E731
        else:  # new_empty then zero_
            z = lambda: x.new_empty(1, n, H).zero_()  # noqa: E731
        return (z(), z()) if self.kind == "lstm" else z()

    def forward(self, x):
        out, _ = self.rnn(x, self.zeros(x))
        return self.fc(out[:, -1])


@pytest.mark.parametrize("how", ["new_zero_", "torch_zeros", "new_zeros", "new_empty_zero_"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_zero_state_built_in_forward(how, kind, tmp_path):
    _export_and_verify(ZeroState(how, kind), tmp_path, (_x(),))


class EmptyState(nn.Module):
    """new_empty without zero_: an uninitialised state, which must be refused."""
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(F, H, batch_first=True)

    def forward(self, x):
        out, _ = self.rnn(x, x.new_empty(1, x.shape[0], H))
        return out


def test_uninitialised_state_is_refused(tmp_path):
    from mcu_nn.errors import McuNnError
    with pytest.raises(McuNnError, match="initial state that is not zeros"):
        _export_and_verify(EmptyState(), tmp_path, (_x(),))

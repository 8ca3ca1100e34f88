"""TorchScript files go through torch's private converter (torch._export.converter): a torch
without it gets one clear line that says what to do, not an ImportError traceback."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from mcu_nn.errors import McuNnError
from mcu_nn.frontend import load_model


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.fixture(scope="module")
def ts_file(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.randn(1, 5, 3)
    path = tmp_path_factory.mktemp("ts") / "tiny.ts"
    torch.jit.save(torch.jit.trace(_Tiny().eval(), x), str(path))
    return path


def test_a_torch_without_the_converter_gets_one_line(ts_file, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch._export.converter", None)     # import -> ImportError
    with pytest.raises(McuNnError) as e:
        load_model(ts_file, input_shape=(5, 3))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"this torch ({torch.__version__}) has no TorchScript converter")
    assert "torch.export.save(" in msg and "torch 2.4–2.x" in msg


def test_with_the_converter_the_same_file_loads(ts_file) -> None:
    g = load_model(ts_file, input_shape=(5, 3))
    assert g is not None

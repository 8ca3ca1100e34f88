"""Models that are not a plain chain in PyTorch's graph: ops that compute nothing, zero
initial states built inside forward, and state passed in and returned. Each is exported at
int8 and verified bit for bit through the host C compiler."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.pipeline import export_model
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


class StateInOut(nn.Module):
    """forward(x, (h0, c0)) -> (y, (h, c)), as in PyTorch's docs and the d2l.ai char RNN."""
    def __init__(self, kind: str = "lstm"):
        super().__init__()
        torch.manual_seed(2)
        self.kind = kind
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(F, H, batch_first=True)
        self.fc = nn.Linear(H, 2)

    def forward(self, x, state):
        out, state = self.rnn(x, state)
        return self.fc(out), state


def _state_example(kind: str, n: int = 1, scale: float = 0.0):
    h = torch.randn(1, n, H) * scale
    return (h, torch.randn(1, n, H) * scale) if kind == "lstm" else h


def _flat_state(state, kind: str) -> np.ndarray:
    """torch (h0, c0) of one layer -> ir.state_slots' flat layout: h then c."""
    parts = state if kind == "lstm" else (state,)
    return np.concatenate([p[0].numpy() for p in parts], axis=-1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_state_passed_in_and_returned(kind, tmp_path):
    model = StateInOut(kind)
    res = _export_and_verify(model, tmp_path, (_x(), _state_example(kind)))
    g, q = res.graph, res.qmodel
    names = ["input", "state_0", "state_1"] if kind == "lstm" else ["input", "state"]
    assert g.inputs == names and q.inputs == names
    assert g.ops[0].inputs == names and g.outputs == ["op1.out"] + g.ops[0].outputs[1:]
    import json
    manifest = json.loads((tmp_path / "out" / "model.json").read_text())
    assert manifest["state"]["size"] == (2 * H if kind == "lstm" else H)
    # the float simulator started from a non-zero state follows PyTorch started there
    from mcu_nn.sim.float_sim import run_float_all
    x, st = _x(3), _state_example(kind, 3, 0.5)
    with torch.no_grad():
        y, st_out = model(x, st)
    env = run_float_all(g, x.numpy(), state=_flat_state(st, kind))
    assert np.allclose(env[g.outputs[0]], y.numpy(), atol=1e-5)
    assert np.allclose(env[g.outputs[1]], (st_out[0] if kind == "lstm" else st_out)[0].numpy(), atol=1e-5)


HARNESS = r"""
#include <stdio.h>
#include "m.h"
int main(void)
{
    static m_state_t s;
    int16_t st[M_STATE_SIZE], back[M_STATE_SIZE];
    m_in_t x[%(T)d * M_INPUT_SIZE] = {%(x)s};
    const int16_t init[M_STATE_SIZE] = {%(state)s};
    m_out_t y[%(T)d * M_OUTPUT_SIZE];
    int j;
    m_reset(&s);
    m_set_state(&s, init);
    m_get_state(&s, back);
    for (j = 0; j < M_STATE_SIZE; ++j) if (back[j] != init[j]) return 3;
    m_run(&s, x, %(T)d, y);
    for (j = 0; j < %(T)d * M_OUTPUT_SIZE; ++j) printf("%%d\n", y[j]);
    m_get_state(&s, st);
    for (j = 0; j < M_STATE_SIZE; ++j) printf("%%d\n", st[j]);
    return 0;
}
"""


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_set_state_matches_simulator_from_that_state(kind, tmp_path):
    import shutil
    import subprocess
    from mcu_nn.ir import state_slots
    from mcu_nn.sim.int_sim import quantize_model_input, run_quant_all
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no host C compiler")
    res = _export_and_verify(StateInOut(kind), tmp_path, (_x(), _state_example(kind)))
    q = res.qmodel
    rng = np.random.default_rng(5)
    total = sum(s.size for s in state_slots(q))
    init = rng.integers(-20000, 20000, total)
    xq = quantize_model_input(q, rng.normal(0, 1, (1, T, F)).astype(np.float32))
    env = run_quant_all(q, xq, state=init)
    want_state = np.concatenate([env[n][0] for n in q.ops[0].outputs[1:]])
    src = HARNESS % {"T": T, "x": ", ".join(str(int(v)) for v in xq.ravel()),
                     "state": ", ".join(str(int(v)) for v in init)}
    (tmp_path / "h.c").write_text(src)
    out = tmp_path / "out"
    subprocess.run([cc, "-std=c99", "-I", str(out), str(tmp_path / "h.c"), str(out / "m.c"), str(out / "mcunn_fixedpoint.c"), "-o",
                    str(tmp_path / "h"), "-lm"], check=True)
    got = np.array([int(v) for v in subprocess.run([str(tmp_path / "h")], check=True, capture_output=True,
                                                   text=True).stdout.split()])
    y = env[q.output_names[0]].ravel()
    assert np.array_equal(got[:y.size], y)
    assert np.array_equal(got[y.size:], want_state)
    assert not np.array_equal(y, run_quant_all(q, xq)[q.output_names[0]].ravel())   # the state mattered

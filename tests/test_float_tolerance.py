"""float32 exports: the C is compared with the simulator within a tolerance derived from the
model (the simulator's own float32-vs-float64 drift), so a correct char-level model whose
float32 summation order differs over 35 steps passes, and a wrong weight still fails."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from mcu_nn.compare import FLOAT_RTOL, differing, float_tolerance
from mcu_nn.pipeline import export_model
from mcu_nn.verify import verify


class CharLM(nn.Module):
    """Embedding -> LSTM(256) -> per-step logits: the shape of d2l.ai's char-level models."""

    def __init__(self, vocab: int = 28, hidden: int = 256) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        self.rnn = nn.LSTM(32, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        y, _ = self.rnn(self.emb(x))
        return self.out(y)


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("charlm")
    torch.manual_seed(0)
    m = CharLM().eval()
    with torch.no_grad():                     # trained-looking magnitudes: logits of several units
        for p in m.parameters():
            p.mul_(3.0)
    ids = torch.randint(0, 28, (1, 35))
    torch.export.save(torch.export.export(m, (ids,)), tmp / "lm.pt2")
    np.savez(tmp / "calib.npz", x=np.random.default_rng(0).integers(0, 28, (8, 35)))
    out = tmp / "out"
    export_model(tmp / "lm.pt2", out, precision="float32", calib=str(tmp / "calib.npz"), log=lambda s: None)
    return out


def test_char_level_float32_export_verifies_and_states_its_rule(char_lm):
    logs: list[str] = []
    r = verify(char_lm, cross=False, log=logs.append)
    assert r.ok, r.first_mismatch
    assert "float32-vs-float64 drift" in logs[0] and "host C vs simulator" in logs[0]


def test_a_wrong_weight_is_still_caught(char_lm):
    c_file = char_lm / json.loads((char_lm / "model.json").read_text())["c_sources"][0]
    src = c_file.read_text()
    # scale one recurrent weight by 1.001: a bug far smaller than any real codegen mistake
    m = re.search(r"model_op1_d0_wh\[\d+\]\[\d+\] = \{\n    \{(-?[0-9.e+-]+)f", src) or \
        re.search(r"op1_d0_wh[^=]*= \{\s*\{(-?[0-9.e+-]+)f", src)
    assert m, "weight array not found"
    v = float(m.group(1))
    edited = src[:m.start(1)] + "%.9e" % (v * 1.001 + 1e-3) + src[m.end(1):]
    c_file.write_text(edited)
    try:
        r = verify(char_lm, cross=False, allow_modified=True, log=lambda s: None)
        assert not r.ok and r.mismatches > 0
    finally:
        c_file.write_text(src)


def test_rule_floor_and_drift():
    exp = np.array([[10.0, 0.5]], np.float32)
    assert not differing(exp + np.float32([5e-5, 5e-6]), exp, "float32", np.array([0.0])).any()  # 1e-5 x max(1, |e|)
    assert differing(exp + np.float32([2e-4, 0]), exp, "float32", np.array([0.0])).any()
    assert not differing(exp + np.float32(2e-4), exp, "float32", np.array([3e-5])).any()      # 8 x drift
    assert float_tolerance(exp, None)[0, 1] == FLOAT_RTOL
    assert differing(np.array([[np.nan, 0.5]]), exp, "float32", np.array([1.0])).any()
    assert differing(np.array([[10, 1]]), np.array([[10, 0]]), "int8").tolist() == [[False, True]]

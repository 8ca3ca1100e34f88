"""Signatures of the real-world zoo (tests/realzoo) beyond one sequence in, one tensor out:
state passed in and returned for num_layers > 1 (sliced per layer, returned in PyTorch's
(L*D, N, H) order), pickled whole modules whose forward takes state or lengths, unbatched
pickles, and variable-length (packed) models. Each case is saved the way its project saves it,
exported at int8, int16 and float32, verified through the host C compiler (0 differing bits)
and compared with PyTorch on held-out inputs: PyTorch runs each sequence alone with the case's
own inputs (float32 within 1e-5 relative; int16 >= 60 dB SNR; int8 >= 40 dB)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import realzoo
from realzoo import BY_NAME, ZooCase
from mcu_nn.pipeline import export_model, quantised_outputs
from mcu_nn.quant.metrics import snr_db
from mcu_nn.verify import verify

MIN_SNR = {"int8": 40.0, "int16": 60.0}
PRECISIONS = ("int8", "int16", "float32")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- running the case in PyTorch
def _model_x(x: np.ndarray, layout: str) -> torch.Tensor:
    """One canonical sequence (1, L[, F]) in the model's own input layout (Graph.layout["input"])."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if layout in ("T,F", "T"):
        return t[0]
    if layout in ("T,N,F", "T,N"):
        return t.transpose(0, 1).contiguous()
    return t


def _torch_args(case: ZooCase, data: dict, i: int, length: int, layout: str) -> tuple:
    """forward()'s arguments for sequence ``i`` alone, cut to ``length`` steps."""
    args: list = [_model_x(data["x"][i:i + 1, :length], layout)]
    groups: dict[str, list] = {}
    for key in case.input_names[1:]:
        if key == "lengths":
            args.append(torch.tensor([length]))
            continue
        state = torch.from_numpy(data[key][i]).unsqueeze(1)          # (L*D, H) -> (L*D, 1, H)
        arg = key.split(".")[0]
        if arg not in groups:
            groups[arg] = []
            args.append(groups[arg])
        groups[arg].append(state)
    return tuple(tuple(a) if isinstance(a, list) and len(a) > 1 else (a[0] if isinstance(a, list) else a)
                 for a in args)


def _canonical(y: torch.Tensor, layout: str) -> np.ndarray:
    """The model's main output for one sequence -> mcu-nn's (1, T, O) / (1, O)."""
    y = y.detach().numpy()
    if layout in ("O", "T,O", "T*N,O", "N*T,O"):
        return y[None]
    if layout == "N":
        return y[:, None]
    if layout == "T,N,O":
        return y.transpose(1, 0, 2)
    return y


def _postprocess(y: np.ndarray, kind) -> np.ndarray:
    if kind is None:
        return y
    z = y - y.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True)) if kind == "log_softmax" else \
        np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def _compare(case: ZooCase, res, precision: str, n: int = 12) -> None:
    """mcu-nn's output for each held-out sequence of length L == the model's output for it alone."""
    data = case.heldout(n, 0)
    lengths = data.get("lengths", np.full(n, data["x"].shape[1]))
    model = case.build()
    wants, gots = [], []
    for i, length in enumerate(lengths):
        with torch.no_grad():
            y = model(*_torch_args(case, data, i, int(length), res.graph.layout["input"]))
        want = _canonical(y[0] if isinstance(y, tuple) else y, res.graph.layout["output"])
        if res.graph.output_per_step:
            want = want[:, :length]                      # pad_packed_sequence pads to total_length
        got = _postprocess(quantised_outputs(res.qmodel, data["x"][i:i + 1, :length]), res.qmodel.postprocess)
        assert got.shape == want.shape, (got.shape, want.shape)
        wants.append(want.ravel())
        gots.append(got.ravel())
    want, got = np.concatenate(wants), np.concatenate(gots)
    if precision == "float32":
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    else:
        assert snr_db(want, got) >= MIN_SNR[precision]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(case, format) -> (model path, calibration path), each saved once per module."""
    root = tmp_path_factory.mktemp("zoo")
    made: dict = {}

    def get(name: str, fmt: str) -> tuple[Path, Path]:
        if (name, fmt) not in made:
            case = BY_NAME[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = realzoo.save(case, fmt, root / f"{name}.{fmt}")
            calib = root / f"{name}_calib.npz"
            np.savez(calib, **case.calib(32, 0))
            made[(name, fmt)] = (path, calib)
        return made[(name, fmt)]
    return get


def _export(name: str, fmt: str, precision: str, saved, out: Path):
    case = BY_NAME[name]
    path, calib = saved(name, fmt)
    res = export_model(path, out, precision=precision, calib=str(calib), name="m", allow_pickle=fmt == "pickle",
                       input_shape=None if fmt == "pt2" else case.input_shape(), log=lambda _: None)
    v = verify(out, cross=False, log=lambda _: None)
    assert v.ok and v.mismatches == 0, v.first
    return res


# ----------------------------------------------------------------------------- 1. state in/out, num_layers > 1
STATE_CASES = ("docs_lstm_h0_c0", "docs_bare_gru", "udacity_sentiment_rnn")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name,fmt", [(n, f) for n in STATE_CASES for f in BY_NAME[n].formats])
def test_multilayer_state_exports_verifies_and_matches_pytorch(name: str, fmt: str, precision: str, saved,
                                                               tmp_path: Path) -> None:
    """pt2 (item 1) and, from TorchScript and pickles, the extra inputs read as state (item 2)."""
    res = _export(name, fmt, precision, saved, tmp_path / "out")
    assert len(res.graph.inputs) == 1 + 2 * (2 if name != "docs_bare_gru" else 1)     # 2 layers: h (, c)
    _compare(BY_NAME[name], res, precision)


def test_state_names_follow_pytorch_layer_order(saved) -> None:
    """h0 (L*D, N, H) is read per layer ("h0.l0", "h0.l1"), and the returned h_n, c_n list the
    layers in PyTorch's order, all h before all c."""
    from mcu_nn.frontend import load_model
    g = load_model(saved("docs_lstm_h0_c0", "pt2")[0])
    assert g.inputs == ["input", "h0.l0", "h0.l1", "c0.l0", "c0.l1"]
    assert [op.inputs[1:] for op in g.ops] == [["h0.l0", "c0.l0"], ["h0.l1", "c0.l1"]]
    assert g.outputs == ["op1.out", "op0.h_n", "op1.h_n", "op0.c_n", "op1.c_n"]


def _flat_state(graph, given: dict[str, np.ndarray]) -> np.ndarray:
    """PyTorch's states (model input name -> (L*D, N, H)) -> ir.state_slots' flat (N, total) layout."""
    from mcu_nn.ir import state_slots
    parts = []
    for slot in state_slots(graph):
        name = graph.ops[slot.op_index].inputs[1 if slot.what == "h" else 2]
        base, layer = name.rsplit(".l", 1) if ".l" in name else (name, "0")
        rows = given[base]
        ndir = len(graph.ops[slot.op_index].directions)
        parts.append(rows[int(layer) * ndir + slot.direction])
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("name", ["docs_lstm_h0_c0", "docs_bare_gru"])
def test_nonzero_state_in_and_out_follows_pytorch(name: str, saved) -> None:
    """Started from a non-zero (h0, c0), the float simulator gives PyTorch's output and, layer by
    layer, its h_n (and c_n)."""
    from mcu_nn.frontend import load_model
    from mcu_nn.sim.float_sim import run_float_all
    case = BY_NAME[name]
    g = load_model(saved(name, "pt2")[0])
    rng = np.random.default_rng(3)
    x = case.heldout(4, 0)["x"]
    states = {n.split(".")[0]: rng.normal(0, 0.5, (2, 4, 20)).astype(np.float32) for n in g.inputs[1:]}
    with torch.no_grad():
        y, *rest = case.build()(torch.from_numpy(x).transpose(0, 1), *map(torch.from_numpy, states.values()))
    env = run_float_all(g, x, state=_flat_state(g, states))
    assert np.allclose(env[g.outputs[0]], y.transpose(0, 1).numpy(), atol=1e-5)
    returned = [t for r in rest for t in (r if isinstance(r, tuple) else (r,))]      # h_n[, c_n]
    per_layer = [env[n] for n in g.outputs[1:]]
    assert np.allclose(np.stack(per_layer), torch.cat(returned).numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- 2. unbatched pickles and TorchScript
UNBATCHED = {("tutorial_lstm_tagger", "pickle"): "T", ("unbatched_lstm", "torchscript"): "T,F",
             ("tutorial_lstm_tagger", "pt2"): "T", ("unbatched_lstm", "pt2"): "T,F"}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name,fmt", sorted(UNBATCHED))
def test_unbatched_model_exports_from_its_own_rank(name: str, fmt: str, precision: str, saved,
                                                   tmp_path: Path) -> None:
    """The batched example fails to trace (the tagger's view(len(sentence), 1, -1) reads the batch
    as the length) or to walk (a traced unbatched LSTM unsqueezes its input): the unbatched example
    is used and the layout says so."""
    res = _export(name, fmt, precision, saved, tmp_path / "out")
    assert res.graph.layout["input"] == UNBATCHED[(name, fmt)]
    _compare(BY_NAME[name], res, precision)


def test_pickle_with_state_says_what_it_tried(tmp_path: Path) -> None:
    """A forward input that is neither state nor lengths is refused in one line naming it."""
    from mcu_nn.errors import McuNnError
    from mcu_nn.frontend import load_model

    path = tmp_path / "m.pt"
    torch.save(_TwoSequences().eval(), str(path))
    with pytest.raises(McuNnError, match=r"forward takes 4 inputs \(x, h, c, other\).*no room for 'other'"):
        load_model(path, allow_pickle=True, input_shape=(5, 3))


class _TwoSequences(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4, batch_first=True)

    def forward(self, x, h, c, other):
        return self.rnn(x, (h, c))[0] + other


# ----------------------------------------------------------------------------- 3. packed sequences
# Pickles export (packing folded away: tests/test_lengths.py); PyTorch's TorchScript converter
# cannot convert packing, so those files get one line saying so and what to do.
@pytest.mark.parametrize("fmt", ["torchscript"])
@pytest.mark.parametrize("name", ["packed_lstm_hn", "packed_gru_pad_packed"])
def test_packed_model_is_refused_in_one_line_naming_packing(name: str, fmt: str, saved) -> None:
    from mcu_nn.errors import McuNnError
    from mcu_nn.frontend import load_model
    with pytest.raises(McuNnError) as err:
        load_model(saved(name, fmt)[0], allow_pickle=True, input_shape=BY_NAME[name].input_shape())
    line = str(err.value)
    assert "\n" not in line and "reads those after the sequence as the lengths (1,)" in line
    assert "forward packs its input (pack_padded_sequence)" in line and "--allow-pickle" in line

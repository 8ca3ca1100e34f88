"""Models taken as their authors wrote them: token inputs (nn.Embedding and F.one_hot, batched,
time-major, unbatched sentences), unbatched and time-major float inputs, per-step heads on
out.reshape(-1, H), and state passed in and returned. Each model is written the way the
tutorial it comes from writes it, saved with torch.export, exported at int8, int16 and
float32, verified through the host C compiler (0 differing bits) and compared with PyTorch
on held-out inputs (float32 within 1e-5 relative; int16 >= 60 dB SNR; int8 >= 40 dB)."""
from __future__ import annotations

import copy

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcu_nn.pipeline import export_model, quantised_outputs
from mcu_nn.quant.metrics import snr_db
from mcu_nn.verify import verify

V, E, H, T, FEAT, TAGS = 12, 6, 16, 7, 3, 5
MIN_SNR = {"int8": 40.0, "int16": 60.0}


# ----------------------------------------------------------------------------- the models
class RNNModel(nn.Module):
    """d2l.ai 9.6 "concise" RNN: one-hot of the transposed ids, time-major RNN, a head on
    Y.reshape((-1, Y.shape[-1])), state in and out (begin_state gives zeros)."""
    def __init__(self, rnn_layer, vocab_size, **kwargs):
        super(RNNModel, self).__init__(**kwargs)
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        if not self.rnn.bidirectional:
            self.num_directions = 1
            self.linear = nn.Linear(self.num_hiddens, self.vocab_size)
        else:
            self.num_directions = 2
            self.linear = nn.Linear(self.num_hiddens * 2, self.vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size)
        X = X.to(torch.float32)
        Y, state = self.rnn(X, state)
        output = self.linear(Y.reshape((-1, Y.shape[-1])))
        return output, state

    def begin_state(self, device, batch_size=1):
        if not isinstance(self.rnn, nn.LSTM):
            return torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                               device=device)
        else:
            return (torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                                device=device),
                    torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                                device=device))


class LSTMTagger(nn.Module):
    """PyTorch tutorial "Sequence Models and LSTM Networks": one unbatched sentence (T,)."""
    def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size):
        super(LSTMTagger, self).__init__()
        self.hidden_dim = hidden_dim
        self.word_embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim)
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence):
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        tag_scores = F.log_softmax(tag_space, dim=1)
        return tag_scores


class OneHotClassifier(nn.Module):
    """Batched (N, T) ids one-hot into a batch_first GRU, last step to a classifier."""
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(V, H, batch_first=True)
        self.fc = nn.Linear(H, 3)

    def forward(self, x):
        out, _ = self.gru(F.one_hot(x, V).float())
        return self.fc(out[:, -1, :])


class TimeMajorEmbedding(nn.Module):
    """(T, N) ids, as torchtext-era language models take them: embedding, LSTM (batch_first=False),
    decoder on every step."""
    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(V, E)
        self.rnn = nn.LSTM(E, H)
        self.decoder = nn.Linear(H, V)

    def forward(self, src):
        output, _ = self.rnn(self.encoder(src))
        return self.decoder(output)


class UnbatchedLSTM(nn.Module):
    """nn.LSTM on one (T, F) sequence, the unbatched form it accepts."""
    def __init__(self, batch_first: bool):
        super().__init__()
        self.lstm = nn.LSTM(FEAT, H, batch_first=batch_first)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(out)


class TimeMajorGRU(nn.Module):
    """(T, N, F) into a GRU with batch_first=False; the readout out[-1]."""
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(FEAT, H, num_layers=2)
        self.fc = nn.Linear(H, 4)

    def forward(self, x):
        out, h = self.gru(x)
        return self.fc(out[-1])


class FlatHead(nn.Module):
    """batch_first LSTM with its head on out.reshape(-1, H) (rows n*T + t)."""
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(FEAT, H, batch_first=True)
        self.fc = nn.Linear(H, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out.reshape(-1, H))


# ----------------------------------------------------------------------------- cases
# name -> (model factory, example input builder (N) -> forward args, token input?,
#          call(model, canonical x (N,T[,F]) numpy) -> PyTorch output in mcu-nn's (N, T, O) / (N, O) layout,
#          expected Graph.layout)
def _d2l(cell: type) -> nn.Module:
    return RNNModel(cell(V, H), V)


def _d2l_call(m: RNNModel, x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    y, _ = m(torch.from_numpy(x), m.begin_state("cpu", batch_size=n))
    return y.reshape(x.shape[1], n, -1).transpose(0, 1).numpy()          # rows t*N + n -> (N, T, O)


def _per_sequence(fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
    """PyTorch run on each canonical sequence alone (the model takes one unbatched sequence)."""
    return lambda m, x: np.stack([fn(m, torch.from_numpy(s)).numpy() for s in x])


CASES = {
    "d2l_rnn": (lambda: _d2l(nn.RNN), lambda n: (torch.zeros(n, T, dtype=torch.long), torch.zeros(1, n, H)),
                True, _d2l_call, {"input": "N,T", "output": "T*N,O"}),
    "d2l_gru": (lambda: _d2l(nn.GRU), lambda n: (torch.zeros(n, T, dtype=torch.long), torch.zeros(1, n, H)),
                True, _d2l_call, {"input": "N,T", "output": "T*N,O"}),
    "d2l_lstm": (lambda: _d2l(nn.LSTM),
                 lambda n: (torch.zeros(n, T, dtype=torch.long), (torch.zeros(1, n, H), torch.zeros(1, n, H))),
                 True, _d2l_call, {"input": "N,T", "output": "T*N,O"}),
    "lstm_tagger": (lambda: LSTMTagger(E, H, V, TAGS), lambda n: (torch.zeros(T, dtype=torch.long),), True,
                    _per_sequence(lambda m, s: m(s)), {"input": "T", "output": "T,O"}),
    "one_hot_classifier": (OneHotClassifier, lambda n: (torch.zeros(n, T, dtype=torch.long),), True,
                           lambda m, x: m(torch.from_numpy(x)).numpy(), {"input": "N,T", "output": "N,O"}),
    "time_major_embedding": (TimeMajorEmbedding, lambda n: (torch.zeros(T, n, dtype=torch.long),), True,
                             lambda m, x: m(torch.from_numpy(x.T.copy())).transpose(0, 1).numpy(),
                             {"input": "T,N", "output": "T,N,O"}),
    "unbatched_lstm": (lambda: UnbatchedLSTM(False), lambda n: (torch.zeros(T, FEAT),), False,
                       _per_sequence(lambda m, s: m(s)), {"input": "T,F", "output": "T,O"}),
    "unbatched_lstm_batch_first": (lambda: UnbatchedLSTM(True), lambda n: (torch.zeros(T, FEAT),), False,
                                   _per_sequence(lambda m, s: m(s)), {"input": "T,F", "output": "T,O"}),
    "time_major_gru": (TimeMajorGRU, lambda n: (torch.zeros(T, n, FEAT),), False,
                       lambda m, x: m(torch.from_numpy(x).transpose(0, 1)).numpy(),
                       {"input": "T,N,F", "output": "N,O"}),
    "flat_head": (FlatHead, lambda n: (torch.zeros(n, T, FEAT),), False,
                  lambda m, x: m(torch.from_numpy(x)).reshape(x.shape[0], T, -1).numpy(),
                  {"input": "N,T,F", "output": "N*T,O"}),
}


def _data(tokens: bool, seed: int, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if tokens:
        return rng.integers(0, V, (n, T)).astype(np.int64)
    return rng.normal(0, 1, (n, T, FEAT)).astype(np.float32)


def _postprocess(y: np.ndarray, kind) -> np.ndarray:
    if kind == "log_softmax":
        z = y - y.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return y


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Callable[[str], tuple]:
    """case name -> (model, .pt2 path, calibration path), each saved once per module."""
    root = tmp_path_factory.mktemp("signatures")
    made: dict = {}

    def get(case: str) -> tuple:
        if case not in made:
            factory, example, tokens, _, _ = CASES[case]
            torch.manual_seed(sorted(CASES).index(case))
            model = factory().eval()
            path = root / f"{case}.pt2"
            torch.export.save(torch.export.export(model, example(1)), str(path))
            calib = root / f"{case}_calib.npz"
            np.savez(calib, x=_data(tokens, seed=0))
            made[case] = (model, path, calib)
        return made[case]
    return get


@pytest.mark.parametrize("precision", ["int8", "int16", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_exports_verifies_and_matches_pytorch(case: str, precision: str, saved, tmp_path: Path) -> None:
    model, path, calib = saved(case)
    _, _, tokens, call, layout = CASES[case]
    res = export_model(path, tmp_path / "out", precision=precision, calib=str(calib), name="m",
                       log=lambda _: None)
    assert res.graph.layout == layout
    v = verify(tmp_path / "out", cross=False, log=lambda _: None)
    assert v.ok and v.mismatches == 0, v.first
    held_out = _data(tokens, seed=1)
    with torch.no_grad():
        want = call(model, held_out)
    got = _postprocess(quantised_outputs(res.qmodel, held_out), res.qmodel.postprocess)
    assert got.shape == want.shape
    if precision == "float32":
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    else:
        assert snr_db(want, got) >= MIN_SNR[precision]


def test_one_hot_is_a_column_pick(saved) -> None:
    """The one-hot layer reads token ids and costs no input multiplies; ids past the vocabulary
    give the zero vector in both simulators (one_hot would refuse them, the embedding gives zeros)."""
    from mcu_nn.pipeline import load_data
    from mcu_nn.frontend import load_model
    from mcu_nn.ir import macs_per_step
    from mcu_nn.quant import quantize
    from mcu_nn.sim import run, run_float
    _, path, calib = saved("one_hot_classifier")
    g = load_model(path)
    rec = g.ops[0]
    assert g.input_kind == "tokens" and g.input_size == V and rec.input_ids and rec.input_size == V
    assert macs_per_step(rec) == 3 * H * H
    x = np.array([[V + 3] * T, [-1] * T])
    g0 = copy.deepcopy(g)
    g0.ops[0].directions[0].w_ih = g0.ops[0].directions[0].w_ih * 0
    assert np.array_equal(run_float(g, x), run_float(g0, x))
    q = quantize(g, load_data(g, str(calib), "int8"), "int8")
    q0 = copy.deepcopy(q)
    q0.ops[0].directions[0].wx.w = q0.ops[0].directions[0].wx.w * 0
    assert q.ops[0].input_ids
    assert np.array_equal(run(q, x), run(q0, x))
    assert not np.array_equal(run(q, x), run(q, np.zeros_like(x)))    # id 0 is a real column


# ----------------------------------------------------------------------------- TorchScript with state inputs
class GruWithState(nn.Module):
    """forward(x, h) -> (y, h): the usual streaming signature."""
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(FEAT, H, batch_first=True)
        self.fc = nn.Linear(H, 2)

    def forward(self, x, h):
        out, h = self.rnn(x, h)
        return self.fc(out), h


def test_traced_model_with_state_input_exports(tmp_path: Path) -> None:
    """A traced forward(x, h0): the extra input becomes the initial state (zeros when not set)."""
    torch.manual_seed(3)
    model = GruWithState().eval()
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(model, (torch.zeros(1, T, FEAT), torch.zeros(1, 1, H))), str(path))
    np.savez(tmp_path / "calib.npz", x=_data(False, seed=0))
    res = export_model(path, tmp_path / "out", precision="int16", calib=str(tmp_path / "calib.npz"),
                       input_shape=(T, FEAT), name="m", log=lambda _: None)
    assert len(res.graph.inputs) == 2 and len(res.graph.outputs) == 2
    v = verify(tmp_path / "out", cross=False, log=lambda _: None)
    assert v.ok and v.mismatches == 0, v.first
    x = _data(False, seed=1)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.zeros(1, x.shape[0], H))[0].numpy()
    assert snr_db(want, quantised_outputs(res.qmodel, x)) >= MIN_SNR["int16"]


def test_scripted_model_with_state_input_says_what_it_saw(tmp_path: Path) -> None:
    """The converter fails on scripted recurrent modules given a state; the user reads what mcu-nn
    saw and would do, in one line, and no PyTorch internal assertion."""
    from tests.clitools import mcu_nn, one_error_line
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(GruWithState().eval()), str(path))
    r = mcu_nn("export", str(path), "-o", str(tmp_path / "out"), "--precision", "float32",
               "--input-shape", f"{T},{FEAT}")
    line = one_error_line(r)
    assert "forward takes 2 inputs (x: Tensor, h: Tensor)" in line
    assert f"initial state of 'rnn' (GRU, zeros of shape (1, 1, {H}))" in line
    assert "INTERNAL ASSERT" not in r.stderr and "report a bug" not in r.stderr


class OneHotIntoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(V, H, batch_first=True)
        self.proj = nn.Linear(V, V)

    def forward(self, x):
        out, _ = self.rnn(self.proj(F.one_hot(x, V).float()))
        return out


def test_refused_model_names_op_and_module_in_one_line(tmp_path: Path) -> None:
    from tests.clitools import mcu_nn, one_error_line
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(OneHotIntoLinear().eval(), (torch.zeros(1, T, dtype=torch.long),)),
                      str(path))
    line = one_error_line(mcu_nn("export", str(path), "-o", str(tmp_path / "out"), "--precision", "float32"))
    assert "aten.linear.default (from module 'proj' (Linear)) reads a one-hot vector" in line


# ----------------------------------------------------------------------------- sequences of different lengths
def _ragged(seed: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (t, FEAT)).astype(np.float32) for t in (3, T, 5, 3, 6, T)]


@pytest.mark.parametrize("how", ["padded_with_lengths", "numbered", "savez_list"])
def test_calibration_of_different_lengths_loads(how: str, saved, tmp_path: Path) -> None:
    from mcu_nn.frontend import load_model
    from mcu_nn.quant import load_calibration_set
    seqs = _ragged()
    lengths = np.array([len(s) for s in seqs])
    padded = np.full((len(seqs), T, FEAT), 1e6, np.float32)         # padding must never be read
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    path = tmp_path / "calib.npz"
    if how == "padded_with_lengths":
        np.savez(path, x=padded, lengths=lengths)
    elif how == "numbered":
        np.savez(path, **{f"x{i}": s for i, s in enumerate(seqs)})
    else:
        np.savez(path, *seqs)
    data = load_calibration_set(path, load_model(saved("flat_head")[1]))
    assert np.array_equal(data.lengths, lengths)
    for i, s in enumerate(seqs):
        assert np.array_equal(data.x[i, :len(s)], s) and not data.x[i, len(s):].any()


def test_object_array_calibration_is_refused(saved, tmp_path: Path) -> None:
    from mcu_nn.errors import McuNnError
    from mcu_nn.frontend import load_model
    from mcu_nn.quant import load_calibration_set
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = _ragged()[:2]
    np.savez(tmp_path / "calib.npz", x=ragged)
    with pytest.raises(McuNnError, match="object array .* save sequences of different lengths as separate arrays"):
        load_calibration_set(tmp_path / "calib.npz", load_model(saved("flat_head")[1]))


def test_calibration_ignores_padding(saved, tmp_path: Path) -> None:
    """Ranges from padded sequences with lengths equal the ranges of the sequences run alone, and
    the export reports the lengths it calibrated on."""
    from mcu_nn.frontend import load_model
    from mcu_nn.quant import collect_ranges
    _, path, _ = saved("flat_head")
    graph = load_model(path)
    seqs = _ragged()
    lengths = np.array([len(s) for s in seqs])
    padded = np.full((len(seqs), T, FEAT), 50.0, np.float32)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    got = collect_ranges(graph, padded, method="max", lengths=lengths)
    alone = [collect_ranges(graph, s[None], method="max") for s in seqs]
    for name in ("input", "op0.d0.c", "op0.d0.h", "op1.out"):
        assert got[name]["absmax"] == max(a[name]["absmax"] for a in alone), name
        assert got[name]["count"] == sum(a[name]["count"] for a in alone), name
    np.savez(tmp_path / "calib.npz", x=padded, lengths=lengths)
    res = export_model(path, tmp_path / "out", precision="int8", calib=str(tmp_path / "calib.npz"), name="m",
                       log=lambda _: None)
    assert np.array_equal(res.lengths, lengths)
    assert res.qmodel.input_scale * 32767 < 50.0          # the padding (50.0) did not set the input range

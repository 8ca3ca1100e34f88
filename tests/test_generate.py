"""`mcu-nn generate`: a language model writes on the board (the firmware's GENERATE command runs
the runtime's generation loop) and on the simulator; the texts must be identical, greedy and
sampled. Real exports, real firmware: the emulated Cortex-M4 (QEMU) and the host board under
ASan/UBSan. The sampling primitives' C twins: tests/test_generate_sampling.py."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import mcu_nn, one_error_line
from torch import nn

import qmodels as Q
from mcu_nn import fixedpoint as fp
from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.device import DeviceClient, Emulator
from mcu_nn.onboard import generate
from mcu_nn.errors import McuNnError
from mcu_nn.generate import SimLM, encode, read_vocab, simulate_generation, vocab_bytes
from mcu_nn.qmodel_file import FILE as QMODEL_FILE
from mcu_nn.qmodel_file import load_qmodel, qmodel_bytes
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from test_json import check

VOCAB = list("?abcdefghijklmnopqrstuvwxyz ")
quiet = dict(log=lambda s: None)


class CharLM(nn.Module):
    """d2l.ai 8.6's RNNModel in short: one-hot of inputs.T, a GRU, a Linear per step; forward(inputs, state)."""

    def __init__(self, vocab: int = len(VOCAB), hidden: int = 24) -> None:
        super().__init__()
        self.vocab = vocab
        self.rnn = nn.GRU(vocab, hidden)
        self.linear = nn.Linear(hidden, vocab)

    def forward(self, inputs, state):
        x = nn.functional.one_hot(inputs.T.long(), self.vocab).to(torch.float32)
        y, state = self.rnn(x, state)
        return self.linear(y.reshape((-1, y.shape[-1]))), state


@pytest.fixture(scope="module")
def char_lm_files(tmp_path_factory) -> Path:
    """A random-weight d2l char GRU saved as .pt2, calibration on random ids, the vocabulary as text."""
    d = tmp_path_factory.mktemp("char_lm")
    torch.manual_seed(0)
    m = CharLM().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(m, (torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 1, 24)))
    torch.export.save(ep, str(d / "lm.pt2"))
    ids = np.random.default_rng(0).integers(0, len(VOCAB), (16, 10))
    np.savez(d / "calib.npz", x=ids, state=np.zeros((16, 1, 24), np.float32))
    (d / "vocab.txt").write_text("".join(VOCAB) + "\n")
    return d


@pytest.fixture(scope="module")
def char_lm_export(char_lm_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "lm"
    r = mcu_nn("export", char_lm_files / "lm.pt2", "-o", out, "--calib", char_lm_files / "calib.npz",
               "--name", "charlm", "--vocab", char_lm_files / "vocab.txt")
    assert r.returncode == 0, r.stderr
    assert {"vocab.json", QMODEL_FILE} <= set(json.loads((out / "model.json").read_text())["files"])
    return out


def _texts(stdout: str) -> tuple[str, str]:
    board = stdout.split("--- board", 1)[1].split("\n", 1)[1].split("\n--- simulator ---\n")[0]
    sim = stdout.split("\n--- simulator ---\n", 1)[1].split("\n---\n")[0]
    return board, sim


# ---------------------------------------------------------------- on the emulated board
@pytest.mark.qemu
@pytest.mark.parametrize("extra", [[], ["--temperature", "0.8", "--seed", "7"], ["--temperature", "2", "--seed", "1"]])
def test_cli_generates_on_the_emulated_board_as_the_simulator_does(char_lm_export, extra) -> None:
    r = mcu_nn("generate", char_lm_export, "--prefix", "time traveller", "-n", "300", *extra)
    assert r.returncode == 0, r.stderr
    board, sim = _texts(r.stdout)
    assert board == sim and board.startswith("time traveller") and len(board) == len("time traveller") + 300
    assert "identical: 300 tokens" in r.stdout and "instructions per step" in r.stdout
    if extra:
        assert len(set(board[14:])) > 10               # sampling at these temperatures wanders


@pytest.mark.qemu
def test_cli_json_and_greedy_matches_pytorch_ids(char_lm_export, char_lm_files) -> None:
    r = mcu_nn("generate", char_lm_export, "--prefix", "the ", "-n", "20", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    check(doc, "generate")                                  # docs/json.md's table
    assert doc["ok"] and doc["board"] == doc["simulator"] and doc["temperature"] == 0
    assert doc["board_ids"] == doc["simulator_ids"] and len(doc["board_ids"]) == 20


@pytest.mark.qemu
@pytest.mark.parametrize("kind,precision,kw", [
    ("lstm", "int16", {"input_size": 11, "head": ("linear:11",)}),                     # one-hot float input
    ("gru", "float32", {"input_size": 6, "vocab": 9, "head": ("linear:9",)}),          # embedding, float32
    ("rnn_tanh", "int8", {"input_size": 5, "vocab": 7, "layers": 2, "head": ("linear:16", "relu", "linear:7")}),
])
def test_api_generates_long_prefixes_and_texts_in_chunks(tmp_path, kind, precision, kw) -> None:
    """A prefix longer than one frame and more tokens than one reply: the GENERATE requests chain."""
    g = Q.make_graph(kind, seq_len=8, hidden=12, gain=3.0, **kw)
    v = g.input_size
    x = Q.make_input(g, n=16, seed=3)
    if g.input_kind == "tokens":
        x = np.clip(x, 0, v - 1)
    else:
        x = np.eye(v, dtype=np.float32)[np.random.default_rng(3).integers(0, v, (16, 8))]
    q = quantize(g, x, precision)
    tokens = list("abcdefghijklmnop")[:v]
    d = tmp_path / "lm"
    write_export(q, d, x[:2], run(q, x[:2]), extra_files={"vocab.json": vocab_bytes(tokens)})
    prefix = "".join(tokens[i % v] for i in range(600))
    for temperature in (None, 0.7):
        r = generate(d, prefix, 520, temperature=temperature, seed=11, **quiet)
        assert r.ok and r.board_text == r.sim_text and len(r.board_ids) == 520, r.first_difference()
        assert r.device.board == "qemu-mps2-an386" and r.per_step > 100


# ---------------------------------------------------------------- the server's C under sanitizers
@pytest.fixture(scope="module")
def host_lm(char_lm_export, tmp_path_factory):
    import shutil
    d = tmp_path_factory.mktemp("host") / "lm"
    shutil.copytree(char_lm_export, d, ignore=shutil.ignore_patterns("firmware"))
    r = build_firmware(d, "host", sanitize=True, **quiet)
    return d, r.elf


def test_host_board_generates_under_sanitizers(host_lm) -> None:
    d, _ = host_lm
    for temperature in (None, 1.3):
        r = generate(d, "a time machine", 400, board="host", temperature=temperature, seed=5, **quiet)
        assert r.ok and r.board_text == r.sim_text


def test_generate_requests_the_chip_refuses(host_lm) -> None:
    _, elf = host_lm
    with Emulator(elf, "host", **quiet) as emu, DeviceClient(emu.url) as c:
        c.hello()
        with pytest.raises(McuNnError, match="nothing to continue"):
            c.generate([1], 3, cont=True)
        with pytest.raises(McuNnError, match="outside the vocabulary"):
            c.generate([1, len(VOCAB)], 3)
        with pytest.raises(McuNnError, match="n_prefix"):
            c.generate([], 3)
        ids, _ = c.generate([1, 2, 3], 5)
        again, _ = c.generate([1, 2, 3], 5)               # a new generation resets the state
        more, _ = c.generate(ids[-1:], 4, cont=True)
        both, _ = c.generate([1, 2, 3], 9)
        assert ids == again and ids + more == both
        assert emu.proc.poll() is None


# ---------------------------------------------------------------- one clear line
def test_errors_are_one_line(char_lm_export, char_lm_files, tmp_path) -> None:
    line = one_error_line(mcu_nn("generate", char_lm_export, "--prefix", "Time", "-n", "5"))
    assert "prefix character 'T' (position 0) is not in the vocabulary" in line
    (tmp_path / "v.txt").write_text("abc")
    line = one_error_line(mcu_nn("generate", char_lm_export, "--prefix", "ab", "--vocab", tmp_path / "v.txt"))
    assert "the vocabulary has 3 tokens but model 'charlm' has 28" in line
    line = one_error_line(mcu_nn("generate", char_lm_export, "--prefix", "ab", "--temperature", "-1"))
    assert "--temperature" in line
    # a classifier is no language model; an export without vocabulary says how to give one
    g = Q.make_graph("gru", input_size=4, readout="last", head=("linear:3",))
    x = Q.make_input(g, n=8)
    q = quantize(g, x, "int8")
    write_export(q, tmp_path / "clf", x[:2], run(q, x[:2]))
    line = one_error_line(mcu_nn("generate", tmp_path / "clf", "--prefix", "ab", "--vocab", tmp_path / "v.txt"))
    assert "is not a language model" in line and "3 outputs per step" in line
    line = one_error_line(mcu_nn("generate", tmp_path / "clf", "--prefix", "ab"))
    assert "stores no vocabulary" in line and "--vocab FILE" in line
    # a model without a streaming step
    g = Q.make_graph("gru", input_size=4, bidirectional=True, head=("linear:4",))
    q = quantize(g, Q.make_input(g, n=8), "int8")
    with pytest.raises(McuNnError, match="has no streaming step"):
        SimLM(q)
    line = one_error_line(mcu_nn("export", char_lm_files / "lm.pt2", "-o", tmp_path / "e", "--calib",
                                 char_lm_files / "calib.npz", "--vocab", tmp_path / "v.txt"))
    assert "the vocabulary has 3 tokens" in line


# ---------------------------------------------------------------- the simulator's side
def test_vocabulary_files_and_encoding(tmp_path) -> None:
    (tmp_path / "v.txt").write_text("ab c\n")
    assert read_vocab(tmp_path / "v.txt") == ["a", "b", " ", "c"]
    (tmp_path / "v.json").write_text(json.dumps(["<unk>", "a", "\n"]))
    tokens = read_vocab(tmp_path / "v.json")
    assert encode("a<unk>\na", tokens) == [1, 0, 2, 1]
    (tmp_path / "d.txt").write_text("abca")
    with pytest.raises(McuNnError, match="'a' appears twice"):
        read_vocab(tmp_path / "d.txt")


def test_state_carrying_steps_equal_rerunning_the_history() -> None:
    """SimLM carries the recurrent state between steps; re-running the whole history is the
    definition (what _run computes), and so is a model that must re-run (a state-keeping op)."""
    g = Q.make_graph("lstm", input_size=6, vocab=10, layers=2, proj=4, head=("linear:10",))
    q = quantize(g, np.random.default_rng(0).integers(0, 10, (16, 8)), "int8")
    fast = SimLM(q)
    slow = SimLM(q)
    slow.incremental = False
    assert fast.incremental
    for t in (0, 1000):
        a = simulate_generation(fast, [1, 2, 3], 60, temperature_milli=t, seed=2)
        b = simulate_generation(slow, [1, 2, 3], 60, temperature_milli=t, seed=2)
        assert a.ids == b.ids
    # greedy on the float graph runs the same loop on float logits
    assert len(simulate_generation(g, [1, 2], 10).ids) == 10


def test_qmodel_file_round_trips_bit_exactly() -> None:
    for kind, prec, kw in [("lstm", "int8", {"proj": 3}), ("gru", "int16", {"bidirectional": True, "layers": 2}),
                           ("lstm", "float32", {"head": ("linear:2",)})]:
        g = Q.make_graph(kind, seq_len=8, **kw)
        x = Q.make_input(g, n=8, seed=1)
        q = quantize(g, x, prec)
        assert np.array_equal(run(load_qmodel(qmodel_bytes(q), "t"), x), run(q, x))
    with pytest.raises(McuNnError, match="unreadable"):
        load_qmodel(b"not a zip", "q.npz")


def test_continuing_a_generation_is_one_loop() -> None:
    """What the host's chunked GENERATE requests rely on."""
    step = lambda t: np.array([(t * 7 + k * 3) % 11 for k in range(5)])    # noqa: E731
    s1, s2 = fp.Sampler(99999, 900, 4), fp.Sampler(99999, 900, 4)
    whole = fp.lm_generate(step, s1, [1, 2], 30)
    part = fp.lm_generate(step, s2, [1, 2], 12)
    part += fp.lm_generate(step, s2, part[-1:], 18)
    assert whole == part


# ---------------------------------------------------------------- the worked example
@pytest.mark.qemu
def test_char_lm_example_quick_run(tmp_path) -> None:
    """examples/char_lm in its smoke mode: trains briefly on CPython's own docs text, exports at
    three precisions, and writes on the emulated board (about 20 s)."""
    import subprocess
    import sys
    from clitools import ENV, ROOT
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "char_lm" / "run.py"), "--quick", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["variant"] for row in doc["rows"]] == ["PyTorch float", "float32 export (simulator)",
                                                       "int16 export (simulator)", "int8 export (simulator)"]
    assert 25 <= len(doc["vocab"]) <= 60 and all(1 < row["perplexity"] < 60 for row in doc["rows"])
    assert abs(doc["rows"][1]["perplexity"] - doc["rows"][0]["perplexity"]) < 1e-3
    assert [b["identical"] for b in doc["board"]] == [True, True]
    assert "| int8 export (simulator) |" in (tmp_path / "out" / "results.md").read_text()

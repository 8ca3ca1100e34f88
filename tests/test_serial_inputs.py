"""serial-test with the user's data (issue 12): ragged sequences and labels through the board,
compared with the simulator bit for bit and with the float model saved in the export; the
--json output checked field by field; every bad input one clear line."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import qmodels as Q
import zoo
from clitools import mcu_nn, one_error_line
from test_json import check
from mcu_nn.codegen import write_export
from mcu_nn.device.serial_test import prepare_sequences
from mcu_nn.errors import McuNnError
from mcu_nn.exportdir import open_export, read_float_model, read_qmodel
from mcu_nn.onboard import serial_test
from mcu_nn.qmodel_file import FLOAT_FILE, graph_bytes, load_graph
from mcu_nn.quant import quantize
from mcu_nn.sim import run, run_float

pytestmark = pytest.mark.usefixtures("one_torch_thread")
quiet = dict(log=lambda s: None, progress=False)
CLASSES, FEATURES = 3, 3


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    """A tiny GRU classifier exported by the pipeline (so the export holds float_model.npz), and a
    ragged labelled data set: np.savez(f, *sequences, y=labels)."""
    from mcu_nn.pipeline import export_model
    tmp = tmp_path_factory.mktemp("serial_inputs")
    model = zoo.make_model("gru", input_size=FEATURES, hidden=8, readout="last", head="linear",
                           out_features=CLASSES, postprocess="softmax")
    pt2 = zoo.save_model(model, tmp / "clf.pt2", "pt2", zoo.example_input(model, T=10))
    rng = np.random.default_rng(0)
    np.savez(tmp / "calib.npz", x=rng.standard_normal((32, 10, FEATURES)).astype(np.float32))
    res = export_model(pt2, tmp / "clf", calib=str(tmp / "calib.npz"), name="clf", log=lambda s: None)
    seqs = [rng.standard_normal((int(t), FEATURES)).astype(np.float32) for t in (3, 11, 6, 14, 1, 8, 9, 5)]
    with torch.no_grad():
        torch_class = np.array([int(model(torch.from_numpy(s[None])).argmax()) for s in seqs])
    labels = torch_class.copy()
    labels[:3] = (labels[:3] + 1) % CLASSES          # some wrong, so accuracy is not trivially 1
    np.savez(tmp / "ragged.npz", *seqs, y=labels)
    return dict(dir=tmp / "clf", pt2=pt2, result=res, seqs=seqs, labels=labels, torch_class=torch_class,
                tmp=tmp)


# ----------------------------------------------------------------------------- the float model in the export
def test_float_model_saved_in_the_export_reloads_and_runs_identically(clf):
    ex = open_export(clf["dir"])
    assert FLOAT_FILE in ex.manifest["files"]              # hashed in the manifest like every file
    g = read_float_model(ex)
    x = np.random.default_rng(5).standard_normal((4, 7, FEATURES)).astype(np.float32)
    assert np.array_equal(run_float(g, x), run_float(clf["result"].graph, x))
    from mcu_nn.frontend import load_model
    assert np.array_equal(run_float(g, x), run_float(load_model(clf["pt2"], name="clf"), x))


@pytest.mark.parametrize("kind,kw", [("lstm", {"proj": 3, "readout": "last", "head": ("linear:3", "tanh")}),
                                     ("gru", {"bidirectional": True, "layers": 2}),
                                     ("rnn_tanh", {"vocab": 8, "readout": "final:0", "head": ("linear:2",)})])
def test_float_graph_file_round_trips(kind, kw):
    g = Q.make_graph(kind, seq_len=6, **kw)
    x = Q.make_input(g, n=3)
    if g.input_kind == "tokens":
        x = np.clip(x, 0, g.input_size - 1)
    assert np.array_equal(run_float(load_graph(graph_bytes(g), "f.npz"), x), run_float(g, x))
    with pytest.raises(McuNnError, match="f.npz is unreadable.*re-run mcu-nn export"):
        load_graph(b"not a zip", "f.npz")


# ----------------------------------------------------------------------------- the emulated board, via the CLI
@pytest.mark.qemu
def test_ragged_labelled_inputs_on_the_emulated_board_json(clf):
    r = mcu_nn("serial-test", clf["dir"], "--inputs", clf["tmp"] / "ragged.npz", "--labels", "y", "--json")
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert len(out) == 1, r.stdout                          # the JSON alone on stdout, logs on stderr
    d = json.loads(out[0])
    check(d, "serial-test")                                 # docs/json.md's table, field by field
    for key in ("snr_db", "max_abs_error", "top1_agreement", "labels", "board_accuracy", "float_accuracy",
                "mean_cycles_per_step", "max_cycles_per_step"):
        assert d[key] is not None, key                      # all measured here
    assert d["first_mismatch"] is None
    n = len(clf["seqs"])
    assert d["ok"] and d["board"] == "qemu-mps2-an386" and d["model"] == "clf" and d["precision"] == "int8"
    assert d["sequences"] == d["passed"] == d["labels"] == n and d["rule"] == "0 differing bits"
    assert d["inputs"].endswith("ragged.npz") and d["float_model"] and not d["step_checked"]
    assert d["cycle_unit"] == "instructions" and 0 < d["mean_cycles_per_step"] <= d["max_cycles_per_step"]
    # accuracy from the simulator, sequence by sequence (each run for its own length), computed here
    q = clf["result"].qmodel
    sim_class = np.array([int(np.argmax(run(q, s[None])[0])) for s in clf["seqs"]])
    assert d["board_accuracy"] == pytest.approx(float(np.mean(sim_class == clf["labels"])))
    assert d["float_accuracy"] == pytest.approx(float(np.mean(clf["torch_class"] == clf["labels"])))
    assert d["top1_agreement"] == pytest.approx(float(np.mean(sim_class == clf["torch_class"])))
    assert d["board_accuracy"] < 1.0 and d["snr_db"] > 25 and d["max_abs_error"] < 0.1
    assert f"{n}/{n} sequences passed" in r.stderr and "accuracy on 8 labels: board" in r.stderr
    assert "\r" not in r.stderr                             # no progress bar junk in a log


# ----------------------------------------------------------------------------- bad inputs: one line each
def test_bad_labels_get_one_line(clf):
    tmp, d, data = clf["tmp"], clf["dir"], clf["tmp"] / "ragged.npz"
    np.save(tmp / "short.npy", clf["labels"][:5])
    np.save(tmp / "halves.npy", clf["labels"] + 0.5)
    np.save(tmp / "big.npy", clf["labels"] + CLASSES)
    cases = {("--labels", tmp / "short.npy"): "5 labels for 8 sequences",
             ("--labels", tmp / "halves.npy"): "are not integers",
             ("--labels", tmp / "big.npy"): f"outside the model's {CLASSES} classes",
             ("--labels", "nope"): "is not a key of ragged.npz .* and is not an existing file"}
    for args, msg in cases.items():
        line = one_error_line(mcu_nn("serial-test", d, "--inputs", data, *args))
        assert re.search(msg, line), line
    assert "--labels needs --inputs" in one_error_line(mcu_nn("serial-test", d, "--labels", "y"))


def test_inputs_with_the_wrong_feature_count_get_one_line(clf):
    bad = clf["tmp"] / "five.npz"
    np.savez(bad, *[np.zeros((4, 5), np.float32), np.zeros((2, 5), np.float32)])
    line = one_error_line(mcu_nn("serial-test", clf["dir"], "--inputs", bad, "--json"))
    assert "has 5 features per step, the model takes 3" in line
    assert "does not exist" in one_error_line(mcu_nn("serial-test", clf["dir"], "--inputs", clf["tmp"] / "no.npz"))


def test_sequences_longer_than_the_boards_buffers_are_refused(tmp_path):
    g = Q.make_graph("gru", seq_len=6, bidirectional=True, readout="last", head=("linear:3",))
    calib = Q.make_input(g, n=8)
    q = quantize(g, calib, "int8")
    write_export(q, tmp_path, calib[:2], run(q, calib[:2]))
    with pytest.raises(McuNnError, match="sequence 1 has 9 steps; the board's buffers hold at most 6"):
        prepare_sequences(tmp_path, [calib[0], np.concatenate([calib[0], calib[0][:3]])], log=lambda s: None)
    with pytest.raises(McuNnError, match="not a classifier"):    # per-step outputs have no class per sequence
        g2 = Q.make_graph("gru", seq_len=6)
        q2 = quantize(g2, calib, "int8")
        write_export(q2, tmp_path / "ps", calib[:2], run(q2, calib[:2]))
        prepare_sequences(tmp_path / "ps", calib, labels=np.zeros(8, int), log=lambda s: None)


# ----------------------------------------------------------------------------- the Python side, host board
def test_python_api_with_arrays_on_the_host_board(clf):
    lines: list[str] = []
    r = serial_test(clf["dir"], board="host", inputs=clf["seqs"], labels=clf["labels"], log=lines.append,
                    progress=False)
    assert r.ok and r.passed == r.sequences == 8 and r.inputs == "arrays" and r.labels == 8
    assert r.outputs.shape == (8, CLASSES) and list(r.lengths) == [len(s) for s in clf["seqs"]]
    assert r.float_accuracy == pytest.approx(float(np.mean(clf["torch_class"] == clf["labels"])))
    text = repr(r)
    assert text.startswith("SerialTestResult(") and "8/8 sequences match the simulator" in text
    assert "top-1 agreement" in text and "accuracy on 8 labels" in text
    assert json.dumps(r.as_dict(), allow_nan=False)          # plain JSON values (inf/NaN go through jsonout)
    # the default stays the export's test vectors, now with the float metrics too
    r = serial_test(clf["dir"], board="host", **quiet)
    assert r.ok and r.inputs == "test_vectors" and r.sequences == 8 and r.step_checked and r.float_model


def test_an_export_without_the_float_model_still_checks_the_board(clf, tmp_path):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(clf["dir"], old, ignore=shutil.ignore_patterns("firmware"))
    (old / FLOAT_FILE).unlink()
    m = json.loads((old / "model.json").read_text())
    del m["files"][FLOAT_FILE]                               # as an export of an older mcu-nn
    (old / "model.json").write_text(json.dumps(m))
    assert read_float_model(open_export(old)) is None and read_qmodel(open_export(old)) is not None
    lines: list[str] = []
    r = serial_test(old, board="host", inputs=clf["tmp"] / "ragged.npz", labels="y", log=lines.append,
                    progress=False)
    assert r.ok and not r.float_model and r.snr_db is None and r.float_accuracy is None
    assert r.board_accuracy == pytest.approx(float(np.mean(
        [np.argmax(run(clf["result"].qmodel, s[None])[0]) for s in clf["seqs"]] == clf["labels"])))
    notes = [ln for ln in lines if "float_model.npz" in ln]
    assert len(notes) == 1 and "re-run mcu-nn export" in notes[0]

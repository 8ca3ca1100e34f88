"""The command line as a user drives it: real processes, real files, exit codes, and one
clear line on stderr for every failure."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo

from clitools import CLI, ENV, ROOT, mcu_nn, one_error_line  # noqa: F401 (the CLI as a user runs it)


@pytest.fixture(scope="module")
def lstm_file(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    model = zoo.make_model("lstm", input_size=6, hidden=32, readout="last", head="linear",
                           postprocess="softmax")
    path = zoo.save_model(model, tmp / "har.pt2", "pt2", zoo.example_input(model, T=12))
    rng = np.random.default_rng(0)
    np.savez(tmp / "calib.npz", x=rng.standard_normal((64, 12, 6)).astype(np.float32))
    return path, tmp / "calib.npz"


def test_help_teaches_every_subcommand():
    r = mcu_nn("--help")
    assert r.returncode == 0
    for sub in ("inspect", "export", "verify", "build", "flash", "serial-test", "bench", "demo"):
        assert sub in r.stdout
        h = mcu_nn(sub, "--help")
        assert h.returncode == 0 and "example:" in h.stdout, sub


def test_inspect_prints_layers_and_sizes(lstm_file):
    r = mcu_nn("inspect", lstm_file[0])
    assert r.returncode == 0, r.stderr
    assert "LSTM 6->32" in r.stdout and "Linear 32->4" in r.stdout
    assert "MACs/step" in r.stdout and "int8 model constants B" in r.stdout
    assert str(4 * 32 * (6 + 32)) in r.stdout      # the LSTM's MACs per step


@pytest.mark.parametrize("precision", ["int8", "int16", "float32"])
def test_export_then_verify(lstm_file, tmp_path, precision):
    model, calib = lstm_file
    out = tmp_path / "exp"
    r = mcu_nn("export", model, "-o", out, "--precision", precision, "--calib", calib, "--name", "har")
    assert r.returncode == 0, r.stderr
    assert "SNR" in r.stdout or precision == "float32"
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["name"] == "har" and manifest["precision"] == precision
    v = mcu_nn("verify", out, "--no-cross")
    assert v.returncode == 0, v.stdout + v.stderr


def test_wide_weight_layout_is_a_choice_with_its_flash_cost(lstm_file, tmp_path):
    model, calib = lstm_file
    packed = mcu_nn("export", model, "-o", tmp_path / "p", "--calib", calib)
    assert packed.returncode == 0, packed.stderr
    weights = 4 * 32 * (6 + 32)                              # the LSTM's int8 weights
    assert f"--weight-layout wide would store the recurrent weights as int16: +{weights:,} B" in packed.stdout
    wide = mcu_nn("export", model, "-o", tmp_path / "w", "--calib", calib, "--weight-layout", "wide")
    assert wide.returncode == 0, wide.stderr
    m_p = json.loads((tmp_path / "p" / "model.json").read_text())
    m_w = json.loads((tmp_path / "w" / "model.json").read_text())
    assert m_w["weight_layout"] == "wide" and m_w["flash_bytes"] > m_p["flash_bytes"]
    assert mcu_nn("verify", tmp_path / "w", "--no-cross").returncode == 0


def test_integer_export_without_calibration_is_refused(lstm_file, tmp_path):
    line = one_error_line(mcu_nn("export", lstm_file[0], "-o", tmp_path / "x", "--precision", "int8"))
    assert "--calib" in line


def test_random_calibration_warns(lstm_file, tmp_path):
    r = mcu_nn("export", lstm_file[0], "-o", tmp_path / "x", "--calib", "random")
    assert r.returncode == 0, r.stderr
    assert "mcu-nn: warning:" in r.stderr and "random" in r.stderr


def test_bad_inputs_get_one_line(lstm_file, tmp_path):
    model, _ = lstm_file
    sd = tmp_path / "sd.pt"
    torch.save(zoo.make_model("gru").state_dict(), sd)
    assert "state_dict" in one_error_line(mcu_nn("inspect", sd))
    trunc = tmp_path / "trunc.pt2"
    trunc.write_bytes(model.read_bytes()[:2000])
    one_error_line(mcu_nn("inspect", trunc))
    one_error_line(mcu_nn("inspect", tmp_path / "missing.pt2"))
    bad_calib = tmp_path / "bad.npy"
    np.save(bad_calib, np.zeros((4, 12, 5), np.float32))
    line = one_error_line(mcu_nn("export", model, "-o", tmp_path / "y", "--calib", bad_calib))
    assert "5" in line and "6" in line
    nan_calib = tmp_path / "nan.npy"
    arr = np.zeros((4, 12, 6), np.float32)
    arr[1, 2, 3] = np.nan
    np.save(nan_calib, arr)
    assert "NaN" in one_error_line(mcu_nn("export", model, "-o", tmp_path / "z", "--calib", nan_calib))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 12, 6), np.float32))
    one_error_line(mcu_nn("export", model, "-o", tmp_path / "w", "--calib", empty))
    one_error_line(mcu_nn("verify", tmp_path / "not-an-export"))
    one_error_line(mcu_nn("build", tmp_path / "not-an-export", "--board", "no-such-board"))


@pytest.mark.qemu
def test_whole_flow_with_relative_paths_on_the_emulated_board(lstm_file, tmp_path):
    """What the README tells a user to type, from the directory they work in."""
    import shutil
    if not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")):
        pytest.skip("needs qemu-system-arm and arm-none-eabi-gcc")
    model, calib = lstm_file
    shutil.copy(model, tmp_path / "har.pt2")
    shutil.copy(calib, tmp_path / "calib.npz")
    steps = [("export", "har.pt2", "-o", "build/har", "--calib", "calib.npz", "--name", "har"),
             ("verify", "build/har"), ("build", "build/har"), ("serial-test", "build/har"),
             ("bench", "build/har", "--json")]
    for args in steps:
        r = mcu_nn(*args, cwd=tmp_path)
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    assert "8/8 vectors passed" in mcu_nn("serial-test", "build/har", cwd=tmp_path).stdout
    bench = json.loads(r.stdout)["models"][0]       # stdout holds the JSON only
    assert bench["board"] == "qemu-mps2-an386" and bench["instructions_per_step"] > 0
    assert bench["macs_per_step"] == 4 * 32 * (6 + 32) + 32 * 4


def _lines_as_they_come(args: list, env: dict, timeout: float = 300) -> tuple[list, float]:
    """Run the CLI with stdout and stderr as pipes (a CI log) and note when each line arrives:
    ([(seconds, "out"|"err", bytes line)], seconds at exit). Bytes: a text pipe would turn \r into \n."""
    import threading
    import time
    t0 = time.monotonic()
    p = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=env)
    got: list = []

    def read(stream, name):
        for line in iter(stream.readline, b""):
            got.append((time.monotonic() - t0, name, line))

    readers = [threading.Thread(target=read, args=(p.stdout, "out")),
               threading.Thread(target=read, args=(p.stderr, "err"))]
    for t in readers:
        t.start()
    try:
        p.wait(timeout)
    finally:
        p.kill()
        end = time.monotonic() - t0
        for t in readers:
            t.join()
    assert p.returncode == 0, b"".join(line for _, _, line in got).decode()
    return sorted(got, key=lambda g: g[0]), end


def test_output_piped_into_a_log_arrives_line_by_line(lstm_file, tmp_path):
    """A CI log sees each line of `mcu-nn export` when it is printed, not all of them when the
    command ends (Python block-buffers a piped stdout), and no progress bar's carriage returns:
    stderr is not a terminal, so the bars are off. PYTHONUNBUFFERED (set on some machines) is
    dropped: the CLI must not depend on it."""
    model, _ = lstm_file
    calib = tmp_path / "calib.npz"          # enough sequences that calibrating takes a moment
    np.savez(calib, x=np.random.default_rng(1).standard_normal((1024, 12, 6)).astype(np.float32))
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    got, end = _lines_as_they_come(["export", model, "-o", tmp_path / "e", "--calib", calib, "-v"], env)
    out = [(t, line) for t, name, line in got if name == "out"]
    err = [(t, line) for t, name, line in got if name == "err"]
    assert out[0][1].startswith(b"calibrating ") and out[-1][1].startswith(b"next: mcu-nn verify")
    # the first line is read while the export still works: well before the last one, before the
    # -v timing lines of the stages after it, and before the process exits
    assert out[-1][0] - out[0][0] > 0.25, got
    done = next(t for t, line in err if b"export: done in" in line)
    assert out[0][0] < done - 0.25 and out[0][0] < end - 0.5, got
    assert any(b"calibration: " in line for _, line in err)       # -v: the stages, on stderr
    assert not any(b"\r" in line for _, _, line in got)


def test_quiet_and_verbose_before_or_after_the_subcommand(lstm_file, tmp_path):
    """-q: only warnings, errors and the result; -v: each stage and its time on stderr. Both
    global (before the subcommand) and accepted after it."""
    model, calib = lstm_file
    r = mcu_nn("-q", "export", model, "-o", tmp_path / "q", "--calib", calib)
    assert r.returncode == 0, r.stderr
    assert "calibrating" not in r.stdout + r.stderr and "SNR" in r.stdout and r.stderr == ""
    for args in (("-v", "boards"), ("boards", "--verbose")):
        v = mcu_nn(*args)
        assert v.returncode == 0 and "qemu-mps2-an386" in v.stdout and "boards: done in" in v.stderr, args
    assert "boards: done in" not in mcu_nn("boards").stderr
    both = mcu_nn("-q", "boards", "-v")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_calibration_and_range_search_show_bars_when_bars_are_on(capsys):
    """Where time is spent there is a bar (on a terminal or in a notebook; forced on here)."""
    import qmodels as Q
    from mcu_nn import progress
    from mcu_nn.quant import quantize
    g = Q.make_graph("gru", input_size=3, hidden=8, seq_len=4, name="bars")
    progress.set_enabled(True)
    try:
        quantize(g, Q.make_input(g, n=4), "int8")
    finally:
        progress.set_enabled(None)
    err = capsys.readouterr().err
    assert "calibrating" in err and "choosing ranges (search)" in err and "quantising (int8)" in err
    quantize(g, Q.make_input(g, n=4), "int8")           # off: stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""

"""Hardened inputs (issue 13; the table in docs/reliability.md): every bad input a user can give
gets one line on stderr, the right exit code and no traceback, before any minutes or gigabytes
are spent. Names, export directories, option ranges, Ctrl-C during shutdown, models no board can
hold, and fuzzed model.json / test_vectors.npz. Each test names the exact line the user sees."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import qmodels as Q
import zoo
from clitools import CLI, ENV, mcu_nn, one_error_line
from fixtures.make_standin import make_standin
from mcu_nn import ir
from mcu_nn.boards import BOARDS
from mcu_nn.build import build_firmware, fit_problem, glue_header, server_ram_bytes
from mcu_nn.cli import main
from mcu_nn.codegen import write_export
from mcu_nn.errors import McuNnError, McuNnWarning
from mcu_nn.exportdir import open_export
from mcu_nn.frontend import model_prefix
from mcu_nn.sim import run
from mcu_nn.toolchain import find_cc

quiet = {"log": lambda s: None}


def in_process(*args) -> tuple[int, str, str]:
    """``mcu-nn ARGS`` run by main() in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def the_line(code: int, err: str, *, exit_code: int = 1) -> str:
    """The one stderr line of a failure (and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == exit_code and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny GRU classifier saved as .pt2, and calibration data for it."""
    tmp = tmp_path_factory.mktemp("rel")
    m = zoo.make_model("gru", input_size=4, hidden=8, readout="last", head="linear")
    path = zoo.save_model(m, tmp / "tiny.pt2", "pt2", zoo.example_input(m, T=6))
    np.savez(tmp / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 6, 4)).astype(np.float32))
    return path, tmp / "calib.npz"


# ----------------------------------------------------------------------------- model and calibration files
def test_a_directory_or_an_npz_given_as_the_model_and_a_missing_calibration_file(model, tmp_path):
    path, calib = model
    (tmp_path / "d.pt2").mkdir()
    assert the_line(*in_process("inspect", tmp_path / "d.pt2")[::2]) == (
        f"mcu-nn: error: {tmp_path / 'd.pt2'} is a directory; pass the model file (.pt2, TorchScript .pt, or a "
        "pickled module)")
    assert the_line(*in_process("inspect", calib)[::2]) == (
        f"mcu-nn: error: {calib} is a numpy .npz archive, not a model; pass the PyTorch model file")
    assert the_line(*in_process("export", path, "-o", tmp_path / "o", "--calib", tmp_path / "no.npz")[::2]) == (
        f"mcu-nn: error: calibration file {tmp_path / 'no.npz'} does not exist; pass an existing .npz/.npy/.pt "
        "file or 'random'")


# ----------------------------------------------------------------------------- names
NAME_REFUSALS = {
    "glue": "--name 'glue': the prefix glue_ belongs to the firmware's model glue (mcunn_glue.h: glue_*, GLUE_*); "
            "choose another name (e.g. --name my_glue)",
    "glue_net": "--name 'glue_net': the prefix glue_ belongs to the firmware's model glue (mcunn_glue.h: glue_*, "
                "GLUE_*); choose another name (e.g. --name my_glue_net)",
    "mcunn": "--name 'mcunn': the prefix mcunn_ belongs to the runtime and the firmware (mcunn_fixedpoint.h, "
             "mcunn_glue.h: mcunn_*, MCUNN_*); choose another name (e.g. --name my_mcunn)",
    "mcunn_fixedpoint": "--name 'mcunn_fixedpoint': the prefix mcunn_ belongs to the runtime and the firmware "
                        "(mcunn_fixedpoint.h, mcunn_glue.h: mcunn_*, MCUNN_*); choose another name "
                        "(e.g. --name my_mcunn_fixedpoint)",
    "Board": "--name 'Board': the prefix board_ belongs to the firmware's board layer (board.h: board_*); "
             "choose another name (e.g. --name my_board)",
    "bench": "--name 'bench': the prefix bench_ belongs to the bench firmware (bench.h: bench_*, BENCH_*); "
             "choose another name (e.g. --name my_bench)",
    "stdint": "--name 'stdint': its header stdint.h would hide the C library's <stdint.h> when the export is "
              "compiled; choose another name (e.g. --name my_stdint)",
    "math": "--name 'math': its header math.h would hide the C library's <math.h> when the export is compiled; "
            "choose another name (e.g. --name my_math)",
}


@pytest.mark.parametrize("name", NAME_REFUSALS)
def test_a_name_the_build_uses_itself_is_refused(name):
    with pytest.raises(McuNnError) as e:
        model_prefix(name, default="x", where="x.pt2")
    assert str(e.value) == NAME_REFUSALS[name]


def test_name_glue_is_refused_by_export_in_one_line_before_any_work(model, tmp_path):
    """The issue's case: --name glue exported and verified, then build failed."""
    path, calib = model
    r = mcu_nn("export", path, "-o", tmp_path / "g", "--calib", calib, "--name", "glue")
    assert one_error_line(r) == "mcu-nn: error: " + NAME_REFUSALS["glue"]
    assert r.returncode == 1 and not (tmp_path / "g").exists()


def test_a_file_named_after_a_reserved_prefix_needs_a_name(model, tmp_path):
    path, calib = model
    shutil.copy(path, tmp_path / "glue.pt2")
    line = the_line(*in_process("export", tmp_path / "glue.pt2", "-o", tmp_path / "g", "--calib", calib)[::2])
    assert line == (f"mcu-nn: error: {tmp_path / 'glue.pt2'}: the C prefix 'glue' (from the file name) cannot be "
                    "used: the prefix glue_ belongs to the firmware's model glue (mcunn_glue.h: glue_*, GLUE_*); "
                    "pass --name (e.g. --name my_glue)")
    code, out, err = in_process("inspect", tmp_path / "glue.pt2")      # inspect writes nothing: it needs no name
    assert code == 0 and out.startswith("model my_glue from ") and "Traceback" not in err


def test_the_python_api_refuses_the_same_names(model, tmp_path):
    import mcu_nn
    path, calib = model
    with pytest.raises(McuNnError) as e:
        mcu_nn.export(str(path), calib=str(calib), name="glue", out=tmp_path / "g")
    assert str(e.value) == NAME_REFUSALS["glue"]


def test_a_name_that_is_not_a_c_identifier_is_accepted_and_the_prefix_said(model, tmp_path):
    """CLI: one warning line naming the prefix; the files and symbols use it."""
    path, calib = model
    r = mcu_nn("export", path, "-o", tmp_path / "e", "--calib", calib, "--name", "My-Model", "-q")
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("mcu-nn:")] == [
        "mcu-nn: warning: --name 'My-Model' is not a C identifier; the generated C uses the prefix 'my_model' "
        "(my_model_step, MY_MODEL_INPUT_SIZE, my_model.h)"]
    assert "void my_model_step(" in (tmp_path / "e" / "my_model.h").read_text()


def test_the_python_api_says_the_prefix_as_a_warning(model, tmp_path):
    import mcu_nn
    path, calib = model
    with pytest.warns(McuNnWarning, match=r"--name 'kws net' is not a C identifier; the generated C uses the "
                                          r"prefix 'kws_net'"):
        m = mcu_nn.export(str(path), calib=str(calib), name="kws net", out=tmp_path / "k")
    assert m.manifest["name"] == "kws_net"


@pytest.mark.skipif(find_cc() is None, reason="needs a host C compiler")
def test_a_c_keyword_as_name_exports_verifies_and_builds(model, tmp_path):
    """Keywords are accepted: the prefix never stands alone in the C (int_step, INT_INPUT_SIZE)."""
    path, calib = model
    code, _, err = in_process("export", path, "-o", tmp_path / "int", "--calib", calib, "--name", "int", "-q")
    assert code == 0, err
    code, out, err = in_process("verify", tmp_path / "int", "--no-cross")
    assert code == 0 and "OK" in out, err
    build_firmware(tmp_path / "int", "host", **quiet)


# ----------------------------------------------------------------------------- export directories
def test_o_that_is_a_file_is_refused_before_any_work(model, tmp_path):
    path, calib = model
    (tmp_path / "f").write_text("mine")
    r = mcu_nn("export", path, "-o", tmp_path / "f", "--calib", calib)
    assert one_error_line(r) == f"mcu-nn: error: -o {tmp_path / 'f'} is a file; pass a directory for the export"
    assert (tmp_path / "f").read_text() == "mine"


def test_o_under_a_file_is_refused(model, tmp_path):
    path, calib = model
    (tmp_path / "f").write_text("mine")
    line = the_line(*in_process("export", path, "-o", tmp_path / "f" / "sub", "--calib", calib)[::2])
    assert line == (f"mcu-nn: error: -o {tmp_path / 'f' / 'sub'}: {tmp_path / 'f'} is a file, not a directory; "
                    "pass a directory for the export")


def _unwritable(tmp_path: Path) -> tuple[Path, Path, str]:
    """(a directory nothing can be created in, -o inside it, the reason). As root, permissions do
    not stop writes: /sys, which refuses new entries to anyone, stands in for a read-only place."""
    if os.geteuid() == 0:
        return Path("/sys"), Path("/sys/mcunn-export"), "Operation not permitted"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro, ro / "out", "Permission denied"


def test_o_in_a_read_only_directory_is_refused_before_any_work(model, tmp_path):
    path, calib = model
    where, out, why = _unwritable(tmp_path)
    t0 = time.perf_counter()
    line = the_line(*in_process("export", path, "-o", out, "--calib", calib)[::2])
    assert line == (f"mcu-nn: error: -o {out}: cannot create a directory in {where} ({why}); choose a writable "
                    "place for the export")
    assert time.perf_counter() - t0 < 30 and not out.exists()


# ----------------------------------------------------------------------------- options out of range
OPTION_ERRORS = [
    (["serial-test", "D", "--timeout", "nan"], "serial-test", "argument --timeout: expected seconds above 0 and at most 86400, got 'nan'"),
    (["serial-test", "D", "--timeout", "inf"], "serial-test", "argument --timeout: expected seconds above 0 and at most 86400, got 'inf'"),
    (["serial-test", "D", "--timeout", "-1"], "serial-test", "argument --timeout: expected seconds above 0 and at most 86400, got '-1'"),
    (["serial-test", "D", "--timeout", "0"], "serial-test", "argument --timeout: expected seconds above 0 and at most 86400, got '0'"),
    (["serial-test", "D", "--timeout", "1e9"], "serial-test", "argument --timeout: expected seconds above 0 and at most 86400, got '1e9'"),
    (["serial-test", "D", "--timeout", "soon"], "serial-test", "argument --timeout: expected seconds above 0 and at most 86400, got 'soon'"),
    (["generate", "D", "--prefix", "a", "--timeout", "nan"], "generate", "argument --timeout: expected seconds above 0 and at most 86400, got 'nan'"),
    (["flash", "F", "--listen", "70000"], "flash", "argument --listen: expected a TCP port 1..65535, got '70000'"),
    (["flash", "F", "--listen", "-1"], "flash", "argument --listen: expected a TCP port 1..65535, got '-1'"),
    (["flash", "F", "--listen", "0"], "flash", "argument --listen: expected a TCP port 1..65535, got '0'"),
    (["flash", "F", "--listen", "http"], "flash", "argument --listen: expected a TCP port 1..65535, got 'http'"),
    (["generate", "D", "--prefix", "a", "-n", "-5"], "generate", "argument -n: expected a number of tokens 0..100000, got '-5'"),
    (["generate", "D", "--prefix", "a", "-n", "1000001"], "generate", "argument -n: expected a number of tokens 0..100000, got '1000001'"),
    (["generate", "D", "--prefix", "a", "--temperature", "nan"], "generate", "argument --temperature: expected a temperature 0.001..1000 (0: greedy), got 'nan'"),
    (["generate", "D", "--prefix", "a", "--temperature", "-1"], "generate", "argument --temperature: expected a temperature 0.001..1000 (0: greedy), got '-1'"),
    (["generate", "D", "--prefix", "a", "--temperature", "0.0001"], "generate", "argument --temperature: expected a temperature 0.001..1000 (0: greedy), got '0.0001'"),
    (["generate", "D", "--prefix", "a", "--temperature", "inf"], "generate", "argument --temperature: expected a temperature 0.001..1000 (0: greedy), got 'inf'"),
    (["generate", "D", "--prefix", "a", "--seed", "-1"], "generate", "argument --seed: expected a seed 0..4294967295, got '-1'"),
    (["generate", "D", "--prefix", "a", "--seed", "4294967296"], "generate", "argument --seed: expected a seed 0..4294967295, got '4294967296'"),
    (["export", "M", "-o", "D", "--input-shape", "0,6"], "export", "argument --input-shape: expected T,F (e.g. 128,6) or T for token models, got '0,6'"),
]


@pytest.mark.parametrize("args,command,message", OPTION_ERRORS, ids=[f"{a[0]} {a[-2]} {a[-1]}" for a, _, _ in OPTION_ERRORS])
def test_an_option_out_of_range_is_refused_by_the_parser(args, command, message):
    r = mcu_nn(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "usage:" not in r.stderr
    assert r.stderr.splitlines() == [f"mcu-nn: error: {message} (mcu-nn {command} --help)"]


def test_other_argparse_refusals_are_one_line_too():
    r = mcu_nn("generate", "D")
    assert (r.returncode, r.stderr) == (2, "mcu-nn: error: the following arguments are required: --prefix "
                                           "(mcu-nn generate --help)\n")
    r = mcu_nn("nosuch")
    assert r.returncode == 2 and r.stderr.startswith("mcu-nn: error: argument COMMAND: invalid choice: 'nosuch'")
    assert len(r.stderr.splitlines()) == 1
    r = mcu_nn("boards", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: mcu-nn boards")


# ----------------------------------------------------------------------------- Ctrl-C during shutdown
@pytest.fixture(scope="module")
def host_export(tmp_path_factory) -> Path:
    if find_cc() is None:
        pytest.skip("needs a host C compiler")
    d = tmp_path_factory.mktemp("ctrlc") / "e"
    make_standin(d, steps=5, vectors=3)
    build_firmware(d, "host", **quiet)
    return d


def _interrupt(args: list, trigger: str, delays: list[float], *, group: bool) -> tuple[int, str, str]:
    """Start ``mcu-nn ARGS``, wait for a stdout line containing ``trigger``, then send SIGINT after
    each delay (to the process, or like a terminal's Ctrl-C to its whole group)."""
    p = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV, stdin=subprocess.DEVNULL, start_new_session=True)
    seen = []
    try:
        while True:
            line = p.stdout.readline()
            seen.append(line)
            if not line or trigger in line:
                break
        for d in delays:
            time.sleep(d)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT) if group else p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, "".join(seen) + out, err


def _no_emulator_left(elf: Path) -> bool:
    r = subprocess.run(["pgrep", "-f", str(elf)], capture_output=True, text=True)
    return r.returncode != 0


CTRL_C_MOMENTS = [("booted", [0]), ("booted", [0, 0]), ("booted", [0, 0.003]), ("booted", [0.01, 0.01, 0.01]),
                  ("passed", [0]), ("passed", [0, 0.003]), ("passed", [0, 0.02])]


@pytest.mark.parametrize("group", [False, True], ids=["process", "group"])
@pytest.mark.parametrize("trigger,delays", CTRL_C_MOMENTS, ids=[f"{t}-{d}" for t, d in CTRL_C_MOMENTS])
def test_ctrl_c_at_any_moment_of_serial_test_is_one_line_and_130(host_export, trigger, delays, group):
    """Right after the boot line, during the run, and while the board is being stopped: 130 and
    `mcu-nn: interrupted`, or 0 and nothing if the command had already finished."""
    code, out, err = _interrupt(["serial-test", host_export, "--board", "host"], trigger, delays, group=group)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert (code, err) == (130, "mcu-nn: interrupted\n") or (code == 0 and err == "" and "passed" in out), (code, err)
    assert _no_emulator_left(host_export / "firmware" / "host" / "firmware.elf")


@pytest.mark.parametrize("delays", [[0], [0, 0], [0, 0.001], [0, 0.01], [0, 0, 0, 0]])
def test_ctrl_c_stops_flash_listen_and_a_second_one_during_shutdown_is_130(host_export, delays):
    """flash --listen serves until Ctrl-C, which is its way to stop: `stopped`, exit 0. A second
    Ctrl-C while it is stopping the board: exit 130 and `mcu-nn: interrupted`, never a traceback."""
    elf = host_export / "firmware" / "host" / "firmware.elf"
    code, out, err = _interrupt(["flash", elf, "--board", "host"], "Ctrl-C stops it", delays, group=True)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert (code, err) in ((0, ""), (130, "mcu-nn: interrupted\n")), (code, err)
    assert _no_emulator_left(elf)


@pytest.mark.qemu
@pytest.mark.parametrize("delays", [[0, 0], [0, 0.003], [0, 0.02]])
def test_ctrl_c_during_shutdown_of_the_emulated_board(tmp_path_factory, delays):
    d = tmp_path_factory.mktemp("ctrlcq") / "e"
    make_standin(d, steps=5, vectors=3)
    code, out, err = _interrupt(["serial-test", d], "passed", delays, group=True)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert (code, err) == (130, "mcu-nn: interrupted\n") or (code == 0 and err == ""), (code, err)
    assert _no_emulator_left(d / "firmware" / "qemu-mps2-an386" / "firmware.elf")


@pytest.mark.qemu
@pytest.mark.parametrize("delays", [[0], [0, 0], [0, 0.01]])
def test_ctrl_c_to_flash_listen_on_the_emulated_board(tmp_path_factory, delays):
    d = tmp_path_factory.mktemp("ctrlcf") / "e"
    make_standin(d, steps=5, vectors=3)
    elf = build_firmware(d, "qemu-mps2-an386", **quiet).elf
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code, out, err = _interrupt(["flash", elf, "--listen", port], "Ctrl-C stops it", delays, group=True)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert (code, err) in ((0, ""), (130, "mcu-nn: interrupted\n")), (code, err)
    assert code == 130 or "stopped" in out
    assert _no_emulator_left(elf)


def test_an_interrupt_while_the_emulator_stops_still_stops_it(host_export, monkeypatch):
    """Emulator.stop: a Ctrl-C landing while the board is being terminated waits until it is
    gone, then surfaces as KeyboardInterrupt (the CLI's 130)."""
    from mcu_nn.device.emulator import Emulator
    emu = Emulator(host_export / "firmware" / "host" / "firmware.elf", "host", **quiet)
    emu.start()
    proc = emu.proc
    real_wait = proc.wait

    def wait_interrupted(timeout=None):
        os.kill(os.getpid(), signal.SIGINT)            # Ctrl-C arrives mid-stop
        return real_wait(timeout=timeout)
    monkeypatch.setattr(proc, "wait", wait_interrupted)
    with pytest.raises(KeyboardInterrupt):
        emu.stop()
    assert emu.proc is None and proc.poll() is not None


# ----------------------------------------------------------------------------- models no board can hold
def _huge_lstm_graph(H: int, F: int = 8) -> ir.Graph:
    """An LSTM(F, H) -> last step -> Linear(H, 4) Graph with lazily allocated zero weights: as
    big as the real thing to the size arithmetic, nothing to the clock."""
    G = 4 * H
    d = ir.DirectionWeights(w_ih=np.zeros((G, F), np.float32), w_hh=np.zeros((G, H), np.float32),
                            b_ih=np.zeros(G, np.float32), b_hh=np.zeros(G, np.float32))
    rec = ir.Recurrent(kind="lstm", input_size=F, hidden_size=H, proj_size=0, bidirectional=False,
                       directions=[d], source="rnn")
    ops = [rec, ir.SelectLast(source=""), ir.Linear(weight=np.zeros((4, H), np.float32),
                                                    bias=np.zeros(4, np.float32), source="fc")]
    g = ir.Graph(name="huge", input_kind="float", input_size=F, seq_len=6, ops=ops)
    return g


def test_sizes_of_a_huge_graph_are_arithmetic_and_refused_in_one_line():
    from mcu_nn.report import InspectResult, _estimated_manifests, check_size
    t0 = time.perf_counter()
    g = _huge_lstm_graph(4096)
    with pytest.raises(McuNnError) as e:
        check_size(g, "int8")
    assert str(e.value) == ("model huge (67,289,092 parameters) needs at least 67,256,320 B of model constants at "
                            "int8; the largest board mcu-nn knows, qemu-mps2-an386, has 4,194,304 B of flash: "
                            "export a smaller model (or add a board row with more flash, docs/boards.md)")
    text = InspectResult(g, _estimated_manifests(g)).text()
    assert ("too big for every board in `mcu-nn boards`: even at int8 its weights alone are 67,256,320 B, and the "
            "largest board, qemu-mps2-an386, has 4,194,304 B of flash (sizes computed from the parameters; the code "
            "generator was not run)") in text
    assert "269025280" in text                    # float32: 4 B per weight
    d = InspectResult(g, _estimated_manifests(g)).as_dict()      # inspect --json: the same figures
    assert d["precisions"]["int8"]["model_constants_bytes"] == 67_256_320
    assert d["precisions"]["int8"]["too_big_for"] == [b.name for b in BOARDS.values() if b.flash is not None]
    assert time.perf_counter() - t0 < 5


def test_the_lower_bound_never_exceeds_what_export_writes():
    """The arithmetic is a lower bound of the real model constants, per layer and precision."""
    from mcu_nn.report import constants_lower_bound
    for kind, kw in [("lstm", {"proj": 3}), ("gru", {"bidirectional": True}), ("rnn_tanh", {})]:
        g = Q.make_graph(kind, seq_len=4, head=("linear:3",), readout="last", **kw)
        for precision in ("int8", "int16", "float32"):
            q = Q.quantize_graph(g, precision)
            from mcu_nn.codegen.emit import emit
            e = emit(q)
            real = {}
            for a in e.arrays:
                real[a.op] = real.get(a.op, 0) + a.nbytes
            for i, op in enumerate(g.ops):
                assert constants_lower_bound(op, precision) <= real.get(i, 0), (kind, precision, i)


@pytest.fixture(scope="module")
def huge_pt2(tmp_path_factory) -> Path:
    """An LSTM(8, 2048) -> Linear(2048, 4) saved as .pt2 (67 MB; torch.export takes a few seconds)."""
    import torch

    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(8, 2048, batch_first=True)
            self.fc = torch.nn.Linear(2048, 4)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.fc(y[:, -1])
    path = tmp_path_factory.mktemp("huge") / "big.pt2"
    with torch.no_grad():
        torch.export.save(torch.export.export(Big().eval(), (torch.zeros(1, 6, 8),)), str(path))
    return path


def test_a_huge_pt2_is_refused_by_export_and_sized_by_inspect_in_seconds(huge_pt2, tmp_path):
    """H=2048: export refuses right after loading (it wrote a 312 MB model.c for H=4096 before);
    inspect prints per-precision sizes by arithmetic (it took 5 minutes and 10 GB for H=4096)."""
    t0 = time.perf_counter()
    line = the_line(*in_process("export", huge_pt2, "-o", tmp_path / "x", "--calib", "random")[::2])
    assert line == ("mcu-nn: error: model big (16,867,332 parameters) needs at least 16,850,944 B of model "
                    "constants at int8; the largest board mcu-nn knows, qemu-mps2-an386, has 4,194,304 B of flash: "
                    "export a smaller model (or add a board row with more flash, docs/boards.md)")
    assert not (tmp_path / "x").exists()
    code, out, err = in_process("inspect", huge_pt2)
    assert code == 0 and "too big for every board" in out and "Traceback" not in err
    assert "67403776" in out                       # float32 total, at least
    assert time.perf_counter() - t0 < 60


# ----------------------------------------------------------------------------- fuzzed model.json / test_vectors.npz
@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "base"
    g = Q.make_graph("gru", seq_len=4, seed=0, name="fz", head=("linear:3",), readout="last")
    q = Q.quantize_graph(g, "int8")
    x = Q.make_input(g, n=2)
    write_export(q, d, x, run(q, x))
    return d


def _stages(d: Path, allow_modified: bool = False) -> None:
    """What the later stages read of an export without compiling: the checked manifest and
    vectors, and the firmware glue and fit checks of every board built from them."""
    ex = open_export(d, allow_modified=allow_modified)
    for b in BOARDS.values():
        glue_header(ex.manifest, b, digest=ex.digest)
        fit_problem(ex.manifest, b)
        server_ram_bytes(ex.manifest, b)


TYPES = [None, True, False, -1, 0, 2 ** 70, 1.5, float("inf"), "x", "", "int8", [], {}, [1], {"a": 1}]


def _manifest_mutations(m: dict, rng: random.Random, n_flips: int):
    """(label, bytes of model.json): every field replaced by every type, dropped, and in nested
    objects; then seeded byte flips and truncations of the file."""
    text = json.dumps(m, indent=1).encode()
    for k in m:
        for v in TYPES:
            yield f"{k}={v!r}", json.dumps({**m, k: v}).encode()
        yield f"del {k}", json.dumps({kk: vv for kk, vv in m.items() if kk != k}).encode()
    for k in ("files", "runtime"):
        for kk in m[k]:
            for v in TYPES:
                yield f"{k}.{kk}={v!r}", json.dumps({**m, k: {**m[k], kk: v}}).encode()
    for i in range(n_flips):
        b = bytearray(text)
        for _ in range(rng.choice([1, 1, 2, 8])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        yield f"flip#{i}", bytes(b)
    for i in range(0, len(text), max(1, len(text) // 40)):
        yield f"truncated at {i}", text[:i]


def test_fuzzed_manifests_are_refused_or_harmless_at_every_stage(fuzz_base, tmp_path):
    """Never anything but McuNnError (one line, naming model.json) from the stages; a mutation
    that is accepted changed nothing those stages read."""
    base_m = json.loads((fuzz_base / "model.json").read_text())
    _stages(fuzz_base)
    rng = random.Random(13)
    d = tmp_path / "m"
    shutil.copytree(fuzz_base, d)
    accepted = refused = 0
    for label, data in _manifest_mutations(base_m, rng, n_flips=400):
        (d / "model.json").write_bytes(data)
        try:
            _stages(d)
        except McuNnError as e:
            assert "\n" not in str(e) and "model.json" in str(e), (label, str(e))
            refused += 1
            continue
        except Exception as e:                                         # an internal error
            pytest.fail(f"{label}: {type(e).__name__}: {e}")
        accepted += 1
    assert refused > accepted > 0


def _vector_mutations(d: Path, rng: random.Random, n_flips: int):
    raw = (d / "test_vectors.npz").read_bytes()
    with np.load(d / "test_vectors.npz") as z:
        arrays = {k: z[k] for k in z.files}

    def npz(a: dict) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **a)
        return buf.getvalue()
    for k, a in arrays.items():
        for dt in (np.int8, np.int32, np.int64, np.float16, np.float64, np.bool_, np.complex64, "U3"):
            yield f"{k} as {dt}", npz({**arrays, k: a.astype(dt)})
        yield f"{k} 1-d", npz({**arrays, k: a.reshape(-1)})
        yield f"{k} 0-d", npz({**arrays, k: np.array(a.flat[0])})
        yield f"{k} extra axis", npz({**arrays, k: a[..., None]})
        yield f"{k} empty", npz({**arrays, k: a[:0]})
        yield f"{k} object", npz({**arrays, k: np.array([None, 1], dtype=object)})
        yield f"del {k}", npz({kk: vv for kk, vv in arrays.items() if kk != k})
    yield "lengths 0", npz({**arrays, "lengths": np.zeros(len(arrays["input_q"]), np.int32)})
    yield "lengths too long", npz({**arrays, "lengths": np.full(len(arrays["input_q"]), 99, np.int32)})
    yield "lengths negative", npz({**arrays, "lengths": np.full(len(arrays["input_q"]), -1, np.int32)})
    for i in range(n_flips):
        b = bytearray(raw)
        for _ in range(rng.choice([1, 1, 2, 8])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        yield f"flip#{i}", bytes(b)
    for i in range(0, len(raw), max(1, len(raw) // 40)):
        yield f"truncated at {i}", raw[:i]


def test_fuzzed_test_vectors_are_refused_or_harmless_even_when_modification_is_allowed(fuzz_base, tmp_path):
    d = tmp_path / "v"
    shutil.copytree(fuzz_base, d)
    rng = random.Random(13)
    accepted = refused = 0
    for label, data in _vector_mutations(fuzz_base, rng, n_flips=300):
        (d / "test_vectors.npz").write_bytes(data)
        with pytest.raises(McuNnError, match="test_vectors.npz differs"):
            open_export(d)                         # the manifest's hash catches every byte
        try:
            _stages(d, allow_modified=True)
        except McuNnError as e:
            assert "\n" not in str(e) and "test_vectors.npz" in str(e), (label, str(e))
            refused += 1
            continue
        except Exception as e:
            pytest.fail(f"{label}: {type(e).__name__}: {e}")
        accepted += 1
    assert refused > 0


@pytest.mark.skipif(find_cc() is None, reason="needs a host C compiler")
def test_fuzzed_exports_through_the_command_line(fuzz_base, tmp_path):
    """A seeded sample of the mutations through `mcu-nn verify` (in this process, as main()):
    exit 1 with one `mcu-nn: error:` line, or 0 when nothing verify reads changed; never 2."""
    base_m = json.loads((fuzz_base / "model.json").read_text())
    rng = random.Random(2026)
    cases = [("model.json", lbl, data) for lbl, data in _manifest_mutations(base_m, rng, n_flips=60)]
    cases += [("test_vectors.npz", lbl, data) for lbl, data in _vector_mutations(fuzz_base, rng, n_flips=30)]
    sample = rng.sample(cases, 40)
    d = tmp_path / "c"
    for fname, label, data in sample:
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(fuzz_base, d)
        (d / fname).write_bytes(data)
        extra = ["--allow-modified"] if fname == "test_vectors.npz" else []
        code, out, err = in_process("verify", d, "--no-cross", *extra)
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("mcu-nn: warning:")]
        assert code in (0, 1) and "internal error" not in err and "Traceback" not in err, (label, err)
        if code == 1 and lines:
            assert len(lines) == 1 and lines[0].startswith("mcu-nn: error: ") and fname in lines[0], (label, err)
        elif code == 1:                            # the C ran and differs: a verdict on stdout, not an error
            assert "differ" in out, (label, out)
        else:
            assert "OK" in out, (label, out)

"""The Cortex-M0, M33 and M55 boards (issue 10) end to end: the demo model and an int8 GRU
built for each, serial-tested bit-exact over the emulated UART (RUN and STEP), and benched
(instructions per step, DSP or portable kernels from the core's features, outputs bit-exact);
board rows registered from a folder; a model that cannot fit refused before compiling."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import qmodels as Q
from clitools import mcu_nn
from fixtures.make_standin import make_standin
from mcu_nn.bench import bench_export
from mcu_nn.boards import BOARDS, load_boards
from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.onboard import serial_test
from mcu_nn.errors import McuNnError
from mcu_nn.quant import quantize
from mcu_nn.sim import run

NEW = ["qemu-microbit", "qemu-mps2-an505", "qemu-mps3-an547"]
quiet = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """The demo's model (mcu_nn.demo: LSTM(3->24) + Linear(24->4)), briefly trained, int8."""
    from mcu_nn.demo import train_demo_model
    from mcu_nn.pipeline import export_model
    out = tmp_path_factory.mktemp("demo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # torch.export's notes on nn.LSTM
        model = train_demo_model(out, epochs=1, **quiet)
    export_model(model, out / "har", precision="int8", calib=str(out / "calib.npz"), name="har", **quiet)
    return out / "har"


@pytest.fixture(scope="module")
def gru_export(tmp_path_factory):
    g = Q.make_graph("gru", input_size=6, hidden=16, seq_len=8, gain=1.0, name="g8")
    q = quantize(g, Q.make_input(g, n=16, seed=3), "int8")
    x = Q.make_input(g, n=3, seed=4)
    d = tmp_path_factory.mktemp("gru") / "g8"
    write_export(q, d, x, run(q, x))
    return d


def _end_to_end(export_dir, board: str) -> None:
    r = build_firmware(export_dir, board, **quiet)
    b = BOARDS[board]
    assert r.flash_bytes < b.flash.size and r.ram_bytes + b.stack_bytes <= b.ram.size
    t = serial_test(export_dir, board=board, progress=False, **quiet)
    assert t.ok and t.passed == t.vectors > 0, t.first_mismatch
    assert t.device.board == board and t.cycle_unit == "instructions" and t.mean_cycles_per_step > 100
    br = bench_export(export_dir, board, vectors=2)
    assert br.vectors_checked == 2 and br.instructions_per_step > 100
    # ARMv6-M: "v6m" where every recurrent layer runs the LDRSB + MULS kernels (int8, int32 sums)
    layers = [la for la in json.loads((Path(export_dir) / "model.json").read_text())["layers"] if "dsp_kernel" in la]
    v6m = b.arch.v6m and bool(layers) and all(la.get("v6m_kernel") == "v6m" for la in layers)
    assert br.path == (("mve" if "mve" in b.arch.features else "simd") if b.arch.dsp else "v6m" if v6m else "portable")
    # the serial server's count (coarser shift, step over the link) and the bench's agree closely
    assert abs(t.mean_cycles_per_step - br.instructions_per_step) < 0.2 * br.instructions_per_step


@pytest.mark.qemu
@pytest.mark.parametrize("board", NEW)
def test_demo_model_end_to_end(demo_export, board):
    _end_to_end(demo_export, board)


@pytest.mark.qemu
@pytest.mark.parametrize("board", NEW)
def test_int8_gru_end_to_end(gru_export, board):
    _end_to_end(gru_export, board)


@pytest.mark.qemu
@pytest.mark.parametrize("board", ["qemu-mps3-an547", "qemu-mps2-an505"])
def test_portable_and_dsp_kernels_bit_exact(gru_export, board):
    """Both paths are checked bit for bit against the simulator inside bench_export; the DSP
    one must also be the faster."""
    dsp = bench_export(gru_export, board, vectors=3)
    portable = bench_export(gru_export, board, vectors=3, portable=True)
    assert (dsp.path, portable.path) == ("mve" if board == "qemu-mps3-an547" else "simd", "portable")
    assert dsp.instructions_per_step < portable.instructions_per_step


@pytest.mark.qemu
def test_float32_on_the_cores_with_an_fpu(tmp_path):
    g = Q.make_graph("lstm", input_size=4, hidden=8, seq_len=6, gain=1.0, name="f32")
    q = quantize(g, Q.make_input(g, n=8, seed=2), "float32")
    x = Q.make_input(g, n=2)
    write_export(q, tmp_path / "f", x, run(q, x))
    for board in ("qemu-mps2-an505", "qemu-mps3-an547"):
        assert bench_export(tmp_path / "f", board).instructions_per_step > 50


def test_rows_come_from_the_board_folders():
    assert set(NEW) <= set(BOARDS)
    assert BOARDS["qemu-microbit"].arch.name == "cortex-m0plus" and not BOARDS["qemu-microbit"].arch.dsp
    # ARMv6-M: the row's "v6m" feature selects the MCUNN_V6M kernels, so no -DMCUNN_PORTABLE
    assert BOARDS["qemu-microbit"].arch.v6m and "-DMCUNN_PORTABLE" not in BOARDS["qemu-microbit"].cflags()
    assert BOARDS["qemu-mps3-an547"].arch.dsp and "mve" in BOARDS["qemu-mps3-an547"].arch.features
    assert BOARDS["qemu-microbit"].ram.size == 16 << 10 and BOARDS["qemu-microbit"].payload_max == 256
    assert BOARDS["qemu-mps2-an505"].firmware_dir == "mps2" and BOARDS["qemu-mps2-an505"].defines


def test_a_new_folder_registers_a_board(tmp_path):
    (tmp_path / "myboard").mkdir()
    (tmp_path / "myboard" / "board.toml").write_text(
        '[[board]]\nname = "my-m0"\ndescription = "x"\narch = "cortex-m0plus"\nflash = [0, 0x8000]\n'
        'ram = [0x20000000, 0x2000]\nuart = "u"\ncounter = "cycles"\ncounter_hz = 1\nclock_hz = 1\n'
        'flash_method = "pyocd"\n')
    b = load_boards(tmp_path)["my-m0"]
    assert b.firmware_dir == "myboard" and b.ram.size == 0x2000 and not b.emulated
    (tmp_path / "myboard" / "board.toml").write_text('[[board]]\nname = "x"\ncolour = "red"\n')
    with pytest.raises(McuNnError, match="missing field 'description'"):
        load_boards(tmp_path)


def test_too_big_for_the_microbit_is_refused_before_compiling(tmp_path, monkeypatch):
    make_standin(tmp_path, bidirectional=True, max_steps=3000, features=1)
    monkeypatch.setenv("PATH", str(tmp_path))         # no compiler: the refusal must come first
    with pytest.raises(McuNnError, match=r"do not fit in this board's RAM: at least [\d,]+ B .* "
                                         r"qemu-microbit has 16,384 B") as e:
        build_firmware(tmp_path, "qemu-microbit", **quiet)
    assert "\n" not in str(e.value)


def test_export_and_inspect_say_which_boards_a_model_does_not_fit(tmp_path):
    """The same estimate as build's refusal, said at export time for every board."""
    from mcu_nn.build import fit_line
    from mcu_nn.exportdir import load_manifest
    make_standin(tmp_path, bidirectional=True, max_steps=3000, features=1)
    line = fit_line(load_manifest(tmp_path))
    assert "too big for" in line and "qemu-microbit" in line and "qemu-mps2-an386" not in line
    g = Q.make_graph("gru", input_size=3, hidden=8, seq_len=4, name="small")
    q = quantize(g, Q.make_input(g, n=4), "int8")
    m = write_export(q, tmp_path / "small", Q.make_input(g, n=1), run(q, Q.make_input(g, n=1)))
    assert fit_line(m) == "int8: fits every board in `mcu-nn boards` (with the serial server)" or \
        "qemu-" not in fit_line(m)                      # the Arm and RISC-V boards all hold it


def test_boards_lists_arch_core_emulator_and_memory():
    r = mcu_nn("boards", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["command"] == "boards"
    rows = {row["name"]: row for row in doc["boards"]}
    assert set(rows) == set(BOARDS)
    assert rows["qemu-microbit"]["arch"] == "cortex-m0plus" and rows["qemu-microbit"]["ram"] == [0x20000000, 16384]
    assert rows["qemu-mps3-an547"]["emulator"] == "qemu-system-arm -M mps3-an547"
    text = mcu_nn("boards").stdout
    assert all(name in text for name in BOARDS) and "Cortex-M55" in text and "256K/16K" in text

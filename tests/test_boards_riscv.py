"""The RISC-V board (issue 10): qemu-riscv32, RV32IMAC on QEMU's virt machine. The demo model
and an int8 GRU built, serial-tested bit-exact over the emulated UART (RUN and STEP) and
benched (instructions per step, portable kernels, outputs bit-exact); an int16 model benched
too; the row's architecture entry; a model that cannot fit refused before compiling."""
from __future__ import annotations

import subprocess

import pytest

import qmodels as Q
from fixtures.make_standin import make_standin
from mcu_nn.bench import bench_export
from mcu_nn.boards import BOARDS
from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.errors import McuNnError
from mcu_nn.flash import check_image, image_board
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from test_boards_arm import _end_to_end, demo_export, gru_export  # noqa: F401 (fixtures)

BOARD = "qemu-riscv32"
quiet = dict(log=lambda s: None)


@pytest.mark.riscv
def test_demo_model_end_to_end(demo_export):  # noqa: F811
    _end_to_end(demo_export, BOARD)


@pytest.mark.riscv
def test_int8_gru_end_to_end(gru_export):  # noqa: F811
    _end_to_end(gru_export, BOARD)


@pytest.mark.riscv
def test_int16_lstm_bench(tmp_path):
    g = Q.make_graph("lstm", input_size=4, hidden=8, seq_len=6, gain=1.0, name="l16")
    q = quantize(g, Q.make_input(g, n=8, seed=2), "int16")
    x = Q.make_input(g, n=2)
    write_export(q, tmp_path / "l", x, run(q, x))
    r = bench_export(tmp_path / "l", BOARD)
    assert r.path == "portable" and r.vectors_checked == 2 and r.instructions_per_step > 100


@pytest.mark.riscv
def test_the_image_starts_at_reset_and_fits(tmp_path):
    """_start is the ELF entry and the first thing in flash, the stack tops RAM, gp sits in RAM,
    and the image records its board for mcu-nn flash."""
    make_standin(tmp_path, name="har")
    r = build_firmware(tmp_path, BOARD, **quiet)
    b = BOARDS[BOARD]
    assert 1000 < r.flash_bytes < b.flash.size and 0 < r.ram_bytes < b.ram.size
    out = subprocess.run(["riscv64-unknown-elf-nm", str(r.elf)], capture_output=True, text=True, check=True).stdout
    sym = {p[2]: int(p[0], 16) for p in (ln.split() for ln in out.splitlines()) if len(p) == 3}
    assert sym["_start"] == b.flash.origin and sym["_estack"] == b.ram.origin + b.ram.size
    assert b.ram.origin <= sym["__global_pointer$"] - 0x800 < b.ram.origin + b.ram.size
    hdr = subprocess.run(["riscv64-unknown-elf-readelf", "-h", str(r.elf)], capture_output=True, text=True).stdout
    assert "ELF32" in hdr and f"Entry point address:               {hex(b.flash.origin)}" in hdr
    assert image_board(r.elf, BOARD) == BOARD
    with pytest.raises(McuNnError, match="qemu-riscv32"):
        check_image(r.elf, "qemu-microbit")


def test_the_row_and_its_architecture():
    b = BOARDS[BOARD]
    assert b.arch.name == "rv32imac" and not b.arch.dsp and "fpu" not in b.arch.features
    assert b.arch.toolchain_prefix == "riscv64-unknown-elf-" and "-mabi=ilp32" in b.cflags()
    assert "-DMCUNN_PORTABLE" in b.cflags()
    assert b.emulator.binary == "qemu-system-riscv32" and b.emulator.machine == "virt"
    # mtime at 10 MHz: a tick must be under half an instruction at both shifts (exact counts)
    assert all(1e9 / b.counter_hz / (1 << s) < 0.5 for s in (b.emulator.serve_shift, b.emulator.bench_shift))
    assert b.counter_units(25_600, shift=8) == (10_000, "instructions")


def test_too_big_is_refused_before_compiling(tmp_path, monkeypatch):
    make_standin(tmp_path, bidirectional=True, max_steps=30000, features=2)
    monkeypatch.setenv("PATH", str(tmp_path))         # no compiler: the refusal must come first
    with pytest.raises(McuNnError, match=r"do not fit in this board's RAM: .* qemu-riscv32 has 131,072 B"):
        build_firmware(tmp_path, BOARD, **quiet)


def test_a_missing_emulator_names_its_package(tmp_path, monkeypatch):
    from mcu_nn.launch import emulator_command
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(McuNnError, match=r"qemu-system-riscv32 not found: .*apt install qemu-system-misc"):
        emulator_command(BOARDS[BOARD], tmp_path / "firmware.elf")

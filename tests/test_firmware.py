"""Building firmware: the board table, the generated glue, cross builds for every Cortex-M
board (sizes and symbols of the linked ELF), and clear errors."""
from __future__ import annotations

import os
import subprocess

import pytest

from fixtures.make_standin import make_standin
from mcu_nn.boards import BOARDS, describe_boards, get_board
from mcu_nn.build import build_firmware, glue_header, is_up_to_date, load_manifest
from mcu_nn.errors import McuNnError

arm = pytest.mark.arm                    # skipped without the cross compiler (tests/conftest.py)


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(McuNnError, match="unknown board 'uno'.*qemu-mps2-an386.*nucleo-f411re"):
        get_board("uno")


def test_board_table_is_data():
    assert {"qemu-mps2-an386", "qemu-mps2-an385", "qemu-mps2-an500", "nucleo-f411re", "host"} <= set(BOARDS)
    assert BOARDS["qemu-mps2-an385"].fpu is None and "-mcpu=cortex-m3" in BOARDS["qemu-mps2-an385"].arch_flags
    assert BOARDS["nucleo-f411re"].flash.origin == 0x08000000 and not BOARDS["nucleo-f411re"].emulated
    assert "nucleo-f411re" in describe_boards()


def test_glue_maps_the_prefix_and_carries_the_hash(tmp_path):
    m = make_standin(tmp_path, name="kws", bidirectional=True)
    text = glue_header(load_manifest(tmp_path), get_board("host"))
    assert "#define glue_run kws_run" in text and "glue_step" not in text.split("no glue_step")[0]
    assert "GLUE_HAS_STEP 0" in text and f"0x{m['sha256'][:2]}" in text


def test_missing_export_is_one_clear_line(tmp_path):
    with pytest.raises(McuNnError, match="model.json is missing.*run mcu-nn export"):
        build_firmware(tmp_path, "host")


def test_missing_cross_toolchain_names_the_package(tmp_path, monkeypatch):
    make_standin(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))          # nothing on PATH
    with pytest.raises(McuNnError, match="apt install gcc-arm-none-eabi"):
        build_firmware(tmp_path, "qemu-mps2-an386", log=lambda s: None)


def _symbols(elf) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (ln.split() for ln in out.splitlines()) if len(p) == 3}


@arm
@pytest.mark.parametrize("board", ["qemu-mps2-an386", "qemu-mps2-an385", "qemu-mps2-an500", "nucleo-f411re",
                                   "qemu-microbit", "qemu-mps2-an505", "qemu-mps3-an547"])
def test_cross_build_links_within_the_board_memory(tmp_path, board):
    make_standin(tmp_path, name="har")
    logs = []
    r = build_firmware(tmp_path, board, log=logs.append)
    b = get_board(board)
    assert r.elf == tmp_path / "firmware" / board / "firmware.elf" and r.elf.is_file()
    assert "flash" in logs[-1] and "RAM" in logs[-1]
    assert 1000 < r.flash_bytes < b.flash.size and 0 < r.ram_bytes < b.ram.size
    sym = _symbols(r.elf)
    for name in ("Reset_Handler", "main", "har_run", "har_step", "har_reset", "mcunn_rx_byte", "board_init"):
        assert name in sym, name
    assert b.flash.origin <= sym["Reset_Handler"] < b.flash.origin + b.flash.size
    assert sym["_estack"] == b.ram.origin + b.ram.size
    # the vector table is the first thing in flash and points at Reset_Handler
    # to a file: objcopy may replace its output path by a rename, and /dev/stdout is the machine's
    vectors = tmp_path / "isr_vector.bin"
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".isr_vector", str(r.elf), str(vectors)],
                   capture_output=True, check=True)
    data = vectors.read_bytes()
    assert int.from_bytes(data[4:8], "little") == sym["Reset_Handler"] | 1   # Thumb bit
    if b.emulated:
        assert r.bin is None
    else:
        assert r.bin.stat().st_size > 1000 and r.hex.read_text().startswith(":")
    assert is_up_to_date(tmp_path, board)
    later = r.elf.stat().st_mtime + 10
    os.utime(tmp_path / "har.c", (later, later))      # touched, same bytes: still the same firmware
    assert is_up_to_date(tmp_path, board)
    with open(tmp_path / "har.c", "a") as f:          # edited: a rebuild (and only on purpose)
        f.write("/* edited */\n")
    assert not is_up_to_date(tmp_path, board)
    assert not is_up_to_date(tmp_path, board, allow_modified=True)


@arm
def test_model_too_big_for_ram_is_a_clear_link_error(tmp_path):
    make_standin(tmp_path, bidirectional=True, max_steps=200_000, features=1)   # 2 x 200k x 2 B buffers
    with pytest.raises(McuNnError, match="do not fit in this board's RAM|overflow"):
        build_firmware(tmp_path, "nucleo-f411re", log=lambda s: None)

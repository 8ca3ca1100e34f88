"""Real boards, handled safely: `flash` refuses images built for another board and files that
are no firmware; `--port auto` picks the one known probe from the OS's port list (faked here:
CI has no USB), and a missing port is reported with the ports that exist."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from serial.tools import list_ports

from clitools import mcu_nn, one_error_line
from fixtures.make_standin import make_standin
from mcu_nn import boards, cli
from mcu_nn.build import build_firmware
from mcu_nn.device import Emulator
from mcu_nn.onboard import serial_test
from mcu_nn.device.ports import auto_port, resolve_port
from mcu_nn.errors import McuNnError
from mcu_nn.flash import flash_commands, image_board

quiet = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def host_elf(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hw")
    make_standin(d)
    return build_firmware(d, "host", **quiet).elf


def test_the_elf_records_its_board(host_elf):
    assert image_board(host_elf, "host") == "host"
    notes = subprocess.run(["readelf", "-n", str(host_elf)], capture_output=True, text=True).stdout
    assert "mcu-nn" in notes                        # a standard ELF note, readable by binutils too


@pytest.mark.arm
def test_flash_refuses_an_image_built_for_another_emulated_board(tmp_path):
    make_standin(tmp_path)
    elf = build_firmware(tmp_path, "qemu-mps2-an386", **quiet).elf
    assert image_board(elf, "qemu-mps2-an386") == "qemu-mps2-an386"
    line = one_error_line(mcu_nn("flash", elf, "--board", "qemu-mps2-an385", "--listen", "4999"))
    assert f"{elf} was built for board qemu-mps2-an386, not qemu-mps2-an385" in line
    assert f"mcu-nn build {tmp_path} --board qemu-mps2-an385" in line


def test_flash_refuses_the_host_image_for_a_real_board(host_elf):
    # refused before any flashing tool is looked for
    line = one_error_line(mcu_nn("flash", host_elf, "--board", "nucleo-f411re"))
    assert "was built for board host, not nucleo-f411re" in line


def test_flash_refuses_files_that_are_no_firmware(tmp_path, host_elf):
    board = ("--board", "qemu-mps2-an386", "--listen", "4999")
    assert "does not exist" in one_error_line(mcu_nn("flash", tmp_path / "missing.elf", *board))
    (tmp_path / "empty.elf").write_bytes(b"")
    assert "is empty" in one_error_line(mcu_nn("flash", tmp_path / "empty.elf", *board))
    (tmp_path / "firmware.hex").write_text(":020000040800F2\n")
    assert "is not an ELF file" in one_error_line(mcu_nn("flash", tmp_path / "firmware.hex", *board))
    (tmp_path / "trunc.elf").write_bytes(host_elf.read_bytes()[:40])
    assert "damaged ELF" in one_error_line(mcu_nn("flash", tmp_path / "trunc.elf", *board))
    data = host_elf.read_bytes()
    for n in (5, 52, 64, 500, len(data) // 2, len(data) - 1):     # cut anywhere: one McuNnError
        (tmp_path / "cut.elf").write_bytes(data[:n])
        with pytest.raises(McuNnError):
            image_board(tmp_path / "cut.elf", "host")
    src = tmp_path / "other.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["cc", str(src), "-o", str(tmp_path / "other.elf")], check=True)
    line = one_error_line(mcu_nn("flash", tmp_path / "other.elf", *board))
    assert "does not say which board it was built for" in line


def test_the_flashing_tool_comes_from_the_row_and_a_missing_one_says_how_to_install_it(
        host_elf, monkeypatch):
    uno = dataclasses.replace(boards.get_board("nucleo-f411re"), name="uno", flash_method="avrdude",
                              flash_args=("-p", "atmega328p", "-c", "arduino", "-b", "115200"))
    nucleo = boards.get_board("nucleo-f411re")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(McuNnError, match=r"needs avrdude, which is not installed: apt install avrdude"):
        flash_commands(host_elf, uno, "/dev/null", **quiet)
    with pytest.raises(McuNnError, match=r"needs pyocd.*pip install 'mcu-nn\[hw\]'"):
        flash_commands(host_elf, nucleo, **quiet)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert flash_commands(host_elf, uno, "/dev/null", **quiet) == [
        ["avrdude", "-p", "atmega328p", "-c", "arduino", "-b", "115200", "-P", "/dev/null",
         "-U", f"flash:w:{host_elf}:e"]]
    with pytest.raises(McuNnError, match="needs the board's serial port: pass --port DEVICE or --port auto"):
        flash_commands(host_elf, uno, None, **quiet)
    assert flash_commands(host_elf, nucleo)[0][:4] == ["pyocd", "flash", "-t", "stm32f411retx"]


# ----------------------------------------------------------------------------- --port auto
def _port(device: str, vid=None, pid=None, description: str = "n/a"):
    """What serial.tools.list_ports reports for one port (device, vid, pid, description)."""
    return SimpleNamespace(device=device, vid=vid, pid=pid, description=description)


def _fake_ports(monkeypatch, *ports) -> None:
    monkeypatch.setattr(list_ports, "comports", lambda *a, **k: list(ports))


UART = _port("/dev/ttyS0")
STLINK = _port("/dev/ttyACM0", 0x0483, 0x374B, "STM32 STLink")
CH340 = _port("/dev/ttyUSB0", 0x1A86, 0x7523, "USB Serial")
MOUSE = _port("/dev/ttyACM3", 0x046D, 0xC52B, "Logitech receiver")


def test_port_auto_picks_the_one_known_adapter(monkeypatch):
    _fake_ports(monkeypatch, UART, MOUSE, STLINK)
    assert auto_port() == ("/dev/ttyACM0", "ST-Link/V2-1")
    _fake_ports(monkeypatch, UART, _port("/dev/ttyACM1", 0x1366, 0x1015, "J-Link"))  # any SEGGER product
    assert auto_port() == ("/dev/ttyACM1", "SEGGER J-Link")
    _fake_ports(monkeypatch, _port("COM7", 0x2E8A, 0x000C, "Debug Probe"))
    assert resolve_port("auto", **quiet) == "COM7"


def test_port_auto_refuses_none_or_several(monkeypatch):
    _fake_ports(monkeypatch, UART, MOUSE)
    with pytest.raises(McuNnError, match=r"found no debug probe.*serial ports here: /dev/ttyACM3 "
                                         r"\(Logitech receiver 046D:C52B\), /dev/ttyS0; pass --port"):
        auto_port()
    _fake_ports(monkeypatch)
    with pytest.raises(McuNnError, match="this machine has no serial ports"):
        auto_port()
    _fake_ports(monkeypatch, STLINK, UART, CH340)
    with pytest.raises(McuNnError, match=r"several boards: /dev/ttyACM0 \(ST-Link/V2-1\), "
                                         r"/dev/ttyUSB0 \(CH340\); pass --port with one of them"):
        auto_port()


def test_a_missing_port_lists_the_ports_that_exist(monkeypatch, tmp_path, capsys):
    _fake_ports(monkeypatch, UART, STLINK)
    make_standin(tmp_path)
    assert cli.main(["serial-test", str(tmp_path), "--port", "/dev/ttyNOPE"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcu-nn: error: serial port /dev/ttyNOPE does not exist; serial ports here: "
                          "/dev/ttyACM0 (STM32 STLink 0483:374B), /dev/ttyS0") and "\n" not in err
    assert cli.main(["serial-test", str(tmp_path), "--port", "auto", "--board", "host"]) == 1
    assert "cannot open serial port /dev/ttyACM0" in capsys.readouterr().err      # chosen, then opened
    _fake_ports(monkeypatch, UART)
    assert cli.main(["serial-test", str(tmp_path), "--port", "auto"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--port auto found no debug probe" in err and "\n" not in err
    assert resolve_port("socket://127.0.0.1:4321") == "socket://127.0.0.1:4321"


def test_port_auto_reaches_the_board_it_picked(tmp_path, monkeypatch):
    """The selection feeds a real session: the host board's pty, listed as an ST-Link's port."""
    make_standin(tmp_path)
    elf = build_firmware(tmp_path, "host", **quiet).elf
    lines: list[str] = []
    with Emulator(elf, "host") as emu:
        _fake_ports(monkeypatch, UART, MOUSE, _port(emu.url, 0x0483, 0x374E, "STLINK-V3"))
        r = serial_test(tmp_path, port="auto", log=lines.append, progress=False)
    assert r.ok and r.passed == r.vectors == 4
    assert f"--port auto: {emu.url} (ST-Link/V3)" in lines

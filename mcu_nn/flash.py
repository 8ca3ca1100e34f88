"""``mcu-nn flash``: put firmware on a board. Emulated boards boot in QEMU and serve their
UART on a loopback TCP port until stopped; real boards go through the row's flashing tool
(pyocd or openocd for Arm probes, avrdude for AVR bootloaders, esptool for ESP32 parts).
Every image is checked first: it must be an ELF whose ``.note.mcunn`` names this board."""
from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Optional

from .boards import Board, get_board
from .build import BOARD_NOTE_OWNER
from .errors import McuNnError

NO_PROBE_HINTS = ("no available debug probe", "no connected debug probe", "no probe",
                  "unable to open", "open failed", "no device found", "could not find")
ELF_MAGIC = b"\x7fELF"
# how to get each flashing tool
INSTALL = {"pyocd": "pip install 'mcu-nn[hw]'", "openocd": "apt install openocd",
           "avrdude": "apt install avrdude", "esptool": "pip install esptool"}


def _rebuild_hint(firmware: Path, board: str) -> str:
    # DIR/firmware/<board>/firmware.elf is where build writes; name DIR when the path has that shape
    parts = firmware.parts
    d = str(firmware.parents[2]) if len(parts) >= 3 and parts[-3] == "firmware" else "DIR"
    return f"mcu-nn build {d} --board {board}"


def image_board(firmware: Path, board: str) -> str:
    """The board an image was built for (its ``.note.mcunn``); one clear error for a missing,
    empty, non-ELF, damaged or unmarked file."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    rebuild = _rebuild_hint(firmware, board)
    if not firmware.is_file():
        raise McuNnError(f"firmware {firmware} does not exist; run {rebuild} first")
    with open(firmware, "rb") as f:
        head = f.read(4)
        if not head:
            raise McuNnError(f"{firmware} is empty, not a firmware image; rebuild it: {rebuild}")
        if head != ELF_MAGIC:
            raise McuNnError(f"{firmware} is not an ELF file; pass the firmware.elf that mcu-nn build "
                             f"wrote (not a .bin or .hex), or rebuild it: {rebuild}")
        f.seek(0)
        try:
            notes = [n for sec in ELFFile(f).iter_sections() if sec.name == ".note.mcunn"
                     for n in sec.iter_notes()]
        except (ELFError, ValueError, OSError) as e:     # truncated or corrupt: pyelftools' own words
            raise McuNnError(f"{firmware} is a damaged ELF file ({e}); rebuild it: {rebuild}") from None
    for n in notes:
        if n["n_name"] == BOARD_NOTE_OWNER and isinstance(n["n_desc"], bytes):
            return n["n_desc"].split(b"\0", 1)[0].decode("ascii", "replace")
    raise McuNnError(f"{firmware} does not say which board it was built for (not built by mcu-nn build, "
                     f"or by an older version); rebuild it: {rebuild}")


def check_image(firmware: Path, board: str) -> None:
    """Refuse an image built for another board than ``board``."""
    built_for = image_board(firmware, board)
    if built_for != board:
        raise McuNnError(f"{firmware} was built for board {built_for}, not {board}; flash it with --board "
                         f"{built_for}, or build for {board}: {_rebuild_hint(firmware, board)}")


def flash(firmware: Path, board: str, *, listen: Optional[int] = None, port: Optional[str] = None,
          log: Callable[[str], None] = print) -> int:
    """Flash ``firmware`` (an ELF from mcu-nn build) to ``board``; returns an exit code. ``port``
    (or "auto") is the serial port of boards flashed through a bootloader (avrdude, esptool)."""
    firmware = Path(firmware)
    b = get_board(board)
    check_image(firmware, b.name)
    if b.emulated or b.flash_method == "host":
        return _serve(firmware, b.name, listen, log)
    return _run_flasher(flash_commands(firmware, b, port, log), firmware, b, log)


def _tool(*names: str) -> Optional[str]:
    return next((n for n in names if shutil.which(n)), None)


def _need(tool: str, b: Board, *names: str) -> str:
    found = _tool(*(names or (tool,)))
    if not found:
        raise McuNnError(f"flashing {b.name} needs {tool}, which is not installed: {INSTALL[tool]}")
    return found


def _serial_port(port: Optional[str], b: Board, log: Callable[[str], None]) -> str:
    from .device.ports import resolve_port
    if port is None:
        raise McuNnError(f"flashing {b.name} ({b.flash_method}, through its bootloader) needs the board's "
                         "serial port: pass --port DEVICE or --port auto")
    return resolve_port(port, log)


def flash_commands(firmware: Path, b: Board, port: Optional[str] = None,
                   log: Callable[[str], None] = print) -> list[list[str]]:
    """The command lines that flash ``firmware`` to the real board ``b``, run in order."""
    m = b.flash_method
    if m == "pyocd" and _tool("pyocd"):
        return [["pyocd", "flash", "-t", b.pyocd_target, str(firmware)]]
    if m == "pyocd" and not (_tool("openocd") and b.openocd_config):
        raise McuNnError(f"flashing {b.name} needs pyocd, which is not installed: {INSTALL['pyocd']} "
                         f"(or {INSTALL['openocd']})")
    if m in ("pyocd", "openocd"):
        _need("openocd", b)
        return [["openocd", *b.openocd_config, "-c", f"program {firmware} verify reset exit"]]
    if m == "avrdude":
        tool = _need("avrdude", b)
        return [[tool, *b.flash_args, "-P", _serial_port(port, b, log), "-U", f"flash:w:{firmware}:e"]]
    if m == "esptool":
        tool = _need("esptool", b, "esptool", "esptool.py")
        image = firmware.with_suffix(".esp.bin")
        dev = _serial_port(port, b, log)
        # the ROM loader's image format; written where a bootloader-less app starts (0x0)
        return [[tool, *b.flash_args, "elf2image", "--output", str(image), str(firmware)],
                [tool, *b.flash_args, "--port", dev, "write_flash", "0x0", str(image)]]
    raise McuNnError(f"board {b.name} has no flash method mcu-nn knows ({m})")


def _run_flasher(cmds: list[list[str]], firmware: Path, b: Board, log: Callable[[str], None]) -> int:
    for cmd in cmds:
        log("running " + " ".join(cmd))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise McuNnError(f"{cmd[0]} did not finish in 300 s; unplug and replug the board and retry") from None
        text = (r.stdout + r.stderr).strip()
        if r.returncode != 0:
            last = text.splitlines()[-1] if text else "nothing"
            if b.flash_method in ("pyocd", "openocd") and (any(h in text.lower() for h in NO_PROBE_HINTS)
                                                          or not text):
                raise McuNnError(f"no debug probe found for {b.name}: connect the board's debug USB port "
                                 f"and retry ({cmd[0]} said: {last})")
            raise McuNnError(f"{cmd[0]} failed to flash {b.name}: {last}")
    log(f"flashed {firmware} to {b.name}")
    return 0


def _serve(firmware: Path, board: str, listen: Optional[int], log: Callable[[str], None]) -> int:
    from .device.emulator import Emulator
    b = get_board(board)
    if b.emulated and listen is None:
        raise McuNnError(f"{board} is emulated: pass --listen PORT to serve its UART on 127.0.0.1:PORT")
    emu = Emulator(firmware, board, port=listen, log=log)

    def _stop(signum, frame):      # `kill` and service managers stop us like Ctrl-C does
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, _stop)
    with emu:
        log(f"{board} running {firmware.name}; serial port {emu.url} "
            f"(mcu-nn serial-test DIR --port {emu.url}); Ctrl-C stops it")
        try:
            code = emu.wait()
        except KeyboardInterrupt:
            log("stopped")
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
    return code

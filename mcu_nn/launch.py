"""The one launcher of emulated boards: the command line that boots an ELF on a board's
emulator row, serving its UART (serial-test, generate, flash --listen, demo) or running a
program to its end under semihosting (the bench, the DSP cell test)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .boards import Board
from .errors import McuNnError
from .toolchain import require, run_tool


def emulator_of(board: Board):
    if board.emulator is None:
        raise McuNnError(f"{board.name} is a real board with no emulator: flash it "
                         f"(mcu-nn flash) and pass its serial port with --port")
    return board.emulator


def emulator_command(board: Board, elf: Path, *, serial: Optional[str] = None, semihosting: bool = False,
                     shift: Optional[int] = None) -> list[str]:
    """``serial``: a QEMU chardev for the board's UART ("tcp:…"), None for none. ``shift``:
    the -icount shift (default the row's serving shift)."""
    e = emulator_of(board)
    cmd = [require(e.binary, f"install it (apt install {e.package or e.binary}; scripts/install-deps.sh does it)"),
           "-M", e.machine, "-kernel", str(elf), "-display", "none", "-monitor", "none",
           "-serial", serial or "null",
           "-icount", f"shift={e.serve_shift if shift is None else shift}", *e.args]
    if semihosting:
        cmd += ["-semihosting-config", "enable=on,target=native"]
    return cmd


def run_to_end(board: Board, elf: Path, *, timeout: float = 300) -> str:
    """Boot ``elf`` under semihosting at the row's bench shift; returns what it printed."""
    e = emulator_of(board)
    return run_tool(emulator_command(board, elf, semihosting=True, shift=e.bench_shift),
                    f"{e.binary} -M {e.machine} running {Path(elf).name}", timeout=timeout)
